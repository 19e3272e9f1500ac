"""Projection heads of DINO / DINOv2 (DINO §3.1, DINOv2 §4 "image-level objective").

The head maps a backbone token to ``K`` prototype logits: an MLP ``in → hidden → hidden → bottleneck``
with GELU, an L2 normalisation, and a weight-normalised linear layer without bias whose per-prototype
magnitude ``weight_g`` is fixed to 1, so the logits are cosine similarities to the prototypes.

Example::

    head = DINOHead(384, out_dim=65536)
    logits = head(cls_tokens)            # [B, 65536]
    frozen = head.last_layer_parameters()
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class WeightNormLinear(nn.Module):
    """``Linear(in_dim, out_dim, bias=False)`` with weight ``g · v / ‖v‖`` normalised row-wise.

    ``weight_v`` is the trained direction; ``weight_g`` ``[out_dim, 1]`` is a buffer filled with 1 (the
    DINO "norm_last_layer" setting), so it is saved under the released key but never optimised.
    """

    def __init__(self, in_dim: int, out_dim: int) -> None:
        super().__init__()
        self.weight_v = nn.Parameter(torch.empty(out_dim, in_dim))
        self.register_buffer("weight_g", torch.ones(out_dim, 1))
        nn.init.trunc_normal_(self.weight_v, std=0.02)

    @property
    def weight(self) -> Tensor:
        # torch's fused weight-norm kernel (one pass forward and backward over the [K, d] matrix).
        return torch._weight_norm(self.weight_v, self.weight_g, 0)

    def forward(self, x: Tensor) -> Tensor:
        return F.linear(x, self.weight)


def _build_mlp(nlayers: int, in_dim: int, hidden_dim: int, bottleneck_dim: int) -> nn.Module:
    if nlayers == 1:
        return nn.Linear(in_dim, bottleneck_dim)
    layers: list[nn.Module] = [nn.Linear(in_dim, hidden_dim), nn.GELU()]
    for _ in range(nlayers - 2):
        layers += [nn.Linear(hidden_dim, hidden_dim), nn.GELU()]
    layers.append(nn.Linear(hidden_dim, bottleneck_dim))
    return nn.Sequential(*layers)


class DINOHead(nn.Module):
    """DINO / iBOT projection head; state-dict keys ``mlp.{0,2,4}.*``, ``last_layer.weight_{g,v}``."""

    def __init__(
        self,
        in_dim: int,
        out_dim: int,
        hidden_dim: int = 2048,
        bottleneck_dim: int = 256,
        nlayers: int = 3,
    ) -> None:
        super().__init__()
        if nlayers < 1:
            raise ValueError(f"nlayers must be >= 1, got {nlayers}")
        self.mlp = _build_mlp(nlayers, in_dim, hidden_dim, bottleneck_dim)
        self.last_layer = WeightNormLinear(bottleneck_dim, out_dim)
        for module in self.mlp.modules():
            if isinstance(module, nn.Linear):
                nn.init.trunc_normal_(module.weight, std=0.02)
                nn.init.zeros_(module.bias)

    def forward(self, x: Tensor) -> Tensor:
        """``x [..., in_dim]`` → prototype logits ``[..., out_dim]``."""
        z = self.mlp(x)
        eps = 1e-6 if z.dtype in (torch.float16, torch.bfloat16) else 1e-12
        z = F.normalize(z, dim=-1, eps=eps)
        return self.last_layer(z)

    def last_layer_parameters(self) -> list[nn.Parameter]:
        """Parameters of the prototype layer (frozen during the first epoch, DINO §A / DINOv2 recipe)."""
        return list(self.last_layer.parameters())
