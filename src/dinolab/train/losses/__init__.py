"""Pretraining objectives: DINO (image level), iBOT (masked patches), KoLeo (spreading), Sinkhorn-Knopp."""

from dinolab.train.losses.dino import DINOLoss
from dinolab.train.losses.ibot import IBOTPatchLoss
from dinolab.train.losses.koleo import KoLeoLoss
from dinolab.train.losses.sinkhorn import sinkhorn_knopp

__all__ = ["DINOLoss", "IBOTPatchLoss", "KoLeoLoss", "sinkhorn_knopp"]
