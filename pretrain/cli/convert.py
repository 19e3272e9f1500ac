"""``pretrain convert``: rewrite a backbone checkpoint as released hub ``.pth``, Hugging Face or safetensors.

The input may be any source :func:`pretrain.checkpoints.load_backbone` accepts: a released ``.pth``
(flat, block-chunked or a training checkpoint with a teacher), a dinolab pretraining checkpoint, a
dinolab ``.safetensors`` file, a Hugging Face model directory, or an architecture name (random weights).
"""

from __future__ import annotations

import argparse
from pathlib import Path

EPILOG = """formats:
  hub          one .pth state dict in the released torch-hub layout (the release's code loads it strictly)
  hf           a directory for transformers.AutoModel.from_pretrained (config.json + model.safetensors)
  safetensors  one .safetensors file with the dinolab config in its metadata

examples:
  pretrain convert dinov2_vits14_pretrain.pth vits14_hf --to hf
  pretrain convert vits14_hf vits14.safetensors --to safetensors
  pretrain convert runs/pico/checkpoint.pth pico_teacher.pth --to hub
  pretrain convert tiny_hub.pth tiny.safetensors --to safetensors --num-heads 3
"""


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "convert",
        help="convert a backbone checkpoint between hub .pth, Hugging Face and safetensors",
        description=__doc__,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("source", metavar="IN", help="checkpoint file, Hugging Face directory or architecture name")
    parser.add_argument("output", metavar="OUT", type=Path, help="file (hub, safetensors) or directory (hf) to write")
    parser.add_argument("--to", dest="fmt", required=True, choices=("hub", "hf", "safetensors"),
                        help="output format")
    parser.add_argument("--num-heads", type=int, default=None,
                        help="attention heads, for hub-layout inputs of non-released widths "
                             "(default: width / 64, the released rule)")
    parser.add_argument("--interpolation", default=None,
                        help="position-embedding rule stored with the model: released, hf, offset, "
                             "antialias or size (default: keep the input's)")
    parser.add_argument("--force", action="store_true", help="replace OUT if it exists")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from dinolab.pretrain.checkpoints import CheckpointError, load_backbone, save_backbone
    from dinolab.pretrain.cli import UserError

    if args.num_heads is not None and args.num_heads <= 0:
        raise UserError(f"--num-heads must be positive, got {args.num_heads}")
    if args.output.exists() and not args.force:
        raise UserError(f"{args.output} exists; pass --force to replace it")
    if args.output.resolve() == Path(args.source).resolve():
        raise UserError("OUT must differ from IN")
    try:
        model = load_backbone(args.source, interpolation=args.interpolation, num_heads=args.num_heads)
        written = save_backbone(model, args.output, args.fmt, overwrite=args.force)
    except (CheckpointError, FileExistsError) as error:
        raise UserError(str(error)) from error
    except ValueError as error:  # bad --interpolation, bad head count for the width
        raise UserError(str(error)) from error
    config = model.config
    params = sum(p.numel() for p in model.parameters())
    print(
        f"wrote {written} ({args.fmt}): width {config.embed_dim}, depth {config.depth}, "
        f"heads {config.num_heads}, registers {config.num_register_tokens}, ffn {config.ffn}, "
        f"patch {config.patch_size}, position table {config.img_size}px, {params / 1e6:.1f}M parameters"
    )
    return 0
