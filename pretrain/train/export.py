"""Export the teacher backbone of a finished run so ``features extract`` and ``transformers`` can use it.

Example::

    paths = export_teacher(trainer.model.teacher["backbone"], "runs/fmnist", hf=True)
"""

from __future__ import annotations

from pathlib import Path

from dinolab.pretrain.checkpoints import save_backbone
from dinolab.pretrain.models.vit import VisionTransformer

TEACHER_BACKBONE_NAME = "teacher_backbone.pth"
TEACHER_SAFETENSORS_NAME = "teacher_backbone.safetensors"
HF_FOLDER_NAME = "teacher_backbone_hf"


def export_teacher(backbone: VisionTransformer, out_dir: str | Path, hf: bool = False) -> list[Path]:
    """Write ``teacher_backbone.pth`` (released torch-hub layout), ``teacher_backbone.safetensors``
    (with the full architecture in its metadata, e.g. a head count the released rule cannot infer)
    and, if asked, a Hugging Face folder."""

    out_dir = Path(out_dir)
    written = [
        save_backbone(backbone, out_dir / TEACHER_BACKBONE_NAME, fmt="hub", overwrite=True),
        save_backbone(backbone, out_dir / TEACHER_SAFETENSORS_NAME, fmt="safetensors", overwrite=True),
    ]
    if hf:
        written.append(save_backbone(backbone, out_dir / HF_FOLDER_NAME, fmt="hf", overwrite=True))
    return written
