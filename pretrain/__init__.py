"""dinolab: DINO and DINOv2 self-supervised vision, end to end."""

from dinolab.pretrain.checkpoints import load_backbone, save_backbone
from dinolab.pretrain.models import ViTConfig, VisionTransformer, build_vit

__version__ = "0.1.0"

__all__ = ["ViTConfig", "VisionTransformer", "build_vit", "load_backbone", "save_backbone", "__version__"]
