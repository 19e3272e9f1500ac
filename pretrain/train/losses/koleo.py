"""KoLeo regulariser (Kozachenko–Leonenko entropy estimator; Sablayrolles et al. 2019; DINOv2 §4).

``L = −(1/B) Σ_i log(‖x_i − x_{nn(i)}‖ + ε)`` on L2-normalised features, where ``nn(i)`` is the
nearest other sample in the batch. Minimising it spreads the features uniformly on the sphere. DINOv2
applies it (weight 0.1) to the student's pre-head CLS token of each global crop separately.

Example::

    koleo = KoLeoLoss()
    loss = sum(koleo(cls) for cls in student_cls.chunk(2))
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class KoLeoLoss(nn.Module):
    """Nearest-neighbour log-distance loss; finite for ``B = 1`` (0), ``B = 2`` and duplicates."""

    def __init__(self, eps: float = 1e-8) -> None:
        super().__init__()
        self.eps = eps

    def forward(self, x: Tensor) -> Tensor:
        """``x [B, D]`` → scalar."""
        if x.shape[0] < 2:
            return x.sum() * 0.0
        z = F.normalize(x.float(), dim=-1, eps=self.eps)
        with torch.no_grad():
            similarity = z @ z.t()
            similarity.fill_diagonal_(-3.0)  # below any cosine: never pick yourself
            neighbour = similarity.argmax(dim=1)
        distance = F.pairwise_distance(z, z[neighbour], p=2, eps=self.eps)
        return -torch.log(distance + self.eps).mean()
