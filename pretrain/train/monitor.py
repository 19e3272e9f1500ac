"""Training monitoring: collapse statistics with a warning and advice, jsonl and TensorBoard logs.

DINO can collapse in two ways (DINO Sec. 5.3): every image maps to the same prototype (the batch-mean
teacher distribution is far from uniform: high KL to uniform) or every image maps to the uniform
distribution (per-image teacher entropy near ``log K``). Both leave the features without information,
visible as a near-zero spread of the L2-normalised class tokens across the batch.

Example::

    metrics = collapse_metrics(teacher_probs, student_cls)
    warning = CollapseMonitor(out_dim=1024).check(metrics)
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

COLLAPSE_ADVICE = (
    "try a lower teacher temperature (loss.teacher_temp), a higher teacher momentum "
    "(optim.teacher_momentum 0.996-0.9995), a bigger batch (optim.batch_size) or fewer prototypes "
    "(head.out_dim)"
)


@torch.no_grad()
def collapse_metrics(teacher_probs: Tensor, student_features: Tensor) -> dict[str, float]:
    """Entropy of the teacher targets, KL of their batch mean to uniform, spread of the features.

    ``teacher_probs`` ``[N, K]`` (rows sum to 1), ``student_features`` ``[N, D]`` (before the head).
    ``feature_std`` is the per-dimension std of the L2-normalised features, times ``sqrt(D)`` (about 1
    for well-spread features, 0 for collapsed ones).
    """
    probs = teacher_probs.float().clamp_min(1e-12)
    num_prototypes = probs.shape[1]
    entropy = -(probs * probs.log()).sum(1).mean()
    mean_probs = probs.mean(0)
    kl_to_uniform = (mean_probs * (mean_probs * num_prototypes).log()).sum()
    normalised = F.normalize(student_features.float(), dim=1)
    feature_std = normalised.std(0).mean() * math.sqrt(normalised.shape[1])
    return {
        "teacher_entropy": float(entropy),
        "teacher_kl_uniform": float(kl_to_uniform),
        "feature_std": float(feature_std),
        "log_k": math.log(num_prototypes),
    }


class CollapseMonitor:
    """Turns collapse statistics into a warning message (or None) with advice on what to change."""

    def __init__(self, feature_std_min: float = 0.05, entropy_max_fraction: float = 0.98,
                 kl_max_fraction: float = 0.9) -> None:
        self.feature_std_min = feature_std_min
        self.entropy_max_fraction = entropy_max_fraction
        self.kl_max_fraction = kl_max_fraction

    def check(self, metrics: dict[str, float]) -> str | None:
        log_k = metrics["log_k"]
        problems = []
        if metrics["feature_std"] < self.feature_std_min:
            problems.append(f"feature spread {metrics['feature_std']:.3f} (collapsed features)")
        if metrics["teacher_entropy"] > self.entropy_max_fraction * log_k:
            problems.append(
                f"teacher entropy {metrics['teacher_entropy']:.2f} of max {log_k:.2f} (uniform outputs)"
            )
        if metrics["teacher_kl_uniform"] > self.kl_max_fraction * log_k:
            problems.append(
                f"teacher KL to uniform {metrics['teacher_kl_uniform']:.2f} of max {log_k:.2f} "
                "(one prototype dominates)"
            )
        if not problems:
            return None
        return "representation collapse suspected: " + "; ".join(problems) + ". " + COLLAPSE_ADVICE


class ScalarLog:
    """Scalars to ``<out>/log.jsonl`` (one JSON object per record) and TensorBoard (``<out>/tensorboard``)."""

    def __init__(self, out_dir: str | Path, tensorboard: bool = True) -> None:
        self.out_dir = Path(out_dir)
        self.out_dir.mkdir(parents=True, exist_ok=True)
        self.jsonl = open(self.out_dir / "log.jsonl", "a", encoding="utf-8")
        self.writer = None
        if tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            self.writer = SummaryWriter(str(self.out_dir / "tensorboard"))

    def log(self, step: int, scalars: dict[str, Any], kind: str = "train") -> None:
        record = {"kind": kind, "step": step, **scalars}
        self.jsonl.write(json.dumps(record) + "\n")
        self.jsonl.flush()
        if self.writer is not None:
            for name, value in scalars.items():
                if isinstance(value, (int, float)) and not isinstance(value, bool):
                    self.writer.add_scalar(f"{kind}/{name}", value, step)

    def close(self) -> None:
        self.jsonl.close()
        if self.writer is not None:
            self.writer.close()
