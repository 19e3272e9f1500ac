"""Pretraining objectives: DINO (image level), iBOT (masked patches), KoLeo (spreading), Sinkhorn-Knopp."""

from pretrain.train.losses.dino import DINOLoss
from pretrain.train.losses.ibot import IBOTPatchLoss
from pretrain.train.losses.koleo import KoLeoLoss
from pretrain.train.losses.sinkhorn import sinkhorn_knopp

__all__ = ["DINOLoss", "IBOTPatchLoss", "KoLeoLoss", "sinkhorn_knopp"]
