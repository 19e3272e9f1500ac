"""Pretraining objectives: DINO (image level), iBOT (masked patches), KoLeo (spreading), Sinkhorn-Knopp."""

from dinolab.pretrain.train.losses.dino import DINOLoss
from dinolab.pretrain.train.losses.ibot import IBOTPatchLoss
from dinolab.pretrain.train.losses.koleo import KoLeoLoss
from dinolab.pretrain.train.losses.sinkhorn import sinkhorn_knopp

__all__ = ["DINOLoss", "IBOTPatchLoss", "KoLeoLoss", "sinkhorn_knopp"]
