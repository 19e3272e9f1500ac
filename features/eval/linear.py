"""Linear probing on frozen features with a grid of heads trained in one pass (DINOv2, Sec. 7 / App. B).

The DINOv2 protocol trains one linear head per (feature variant, learning rate) pair on the same
frozen features and keeps the pair that is best on a validation split. Feature variants are the class
token of the last 1 or last 4 blocks, each with or without the average-pooled patch tokens of the last
block. Here all heads live in one tensor ``[V, L, F_max, C]`` (variants × learning rates × padded input
dim × classes): a single batched matmul computes every head's logits, and SGD with momentum 0.9 and a
cosine schedule updates each head with its own learning rate. Padding rows see zero inputs, so they
receive zero gradient and never influence a head.

Example::

    variants = {"cls1": train_cls, "cls1+avg": torch.cat([train_cls, train_patch_mean], 1)}
    result = linear_probe(variants, train_labels, test_variants, test_labels, epochs=10)
    result.best_variant, result.best_lr, result.test_top1
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor
from tqdm.auto import tqdm

# DINOv2 linear-evaluation learning rates (1e-5 … 0.1, for batch size 256; scaled linearly with the
# batch size), extended up to 1.0: short runs on small datasets (a few hundred steps, where DINOv2 runs
# 12,500) pick the top of the original grid. Extra heads cost little since all train in one pass.
DEFAULT_LEARNING_RATES: tuple[float, ...] = (
    1e-5, 2e-5, 5e-5, 1e-4, 2e-4, 5e-4, 1e-3, 2e-3, 5e-3, 1e-2, 2e-2, 5e-2, 1e-1, 2e-1, 5e-1, 1.0,
)  # fmt: skip
MOMENTUM = 0.9

# Feature variants of the protocol: name → (number of last blocks whose CLS is used, add patch mean).
FEATURE_VARIANTS: dict[str, tuple[int, bool]] = {
    "cls1": (1, False),
    "cls1+avg": (1, True),
    "cls4": (4, False),
    "cls4+avg": (4, True),
}


def variant_features(cls_layers: Tensor, patch_mean: Tensor | None, variant: str) -> Tensor:
    """Linear-probe input ``[N, F]`` from the CLS of the last blocks ``[N, L, D]`` and the patch mean."""
    num_blocks, with_patch_mean = FEATURE_VARIANTS[variant]
    if cls_layers.shape[1] < num_blocks:
        raise ValueError(f"variant {variant!r} needs {num_blocks} blocks, features hold {cls_layers.shape[1]}")
    parts = [cls_layers[:, -num_blocks:].flatten(1)]
    if with_patch_mean:
        if patch_mean is None:
            raise ValueError(f"variant {variant!r} needs average-pooled patch tokens")
        parts.append(patch_mean)
    return torch.cat(parts, dim=1)


def cosine_factor(step: int, total_steps: int) -> float:
    """Cosine decay from 1 to 0 over ``total_steps`` (learning-rate multiplier at ``step``)."""
    return 0.5 * (1.0 + math.cos(math.pi * step / total_steps))


def batch_order(num_samples: int, batch_size: int, epochs: int, seed: int) -> Iterator[Tensor]:
    """Index batches of ``epochs`` shuffled passes (last batch of a pass may be smaller)."""
    generator = torch.Generator().manual_seed(seed)
    for _ in range(epochs):
        permutation = torch.randperm(num_samples, generator=generator)
        yield from permutation.split(batch_size)


class LinearHeadGrid:
    """``V × L`` linear heads: one per (feature variant, learning rate), stored as stacked tensors.

    Weights start as N(0, 0.01²) and biases at zero (DINOv2's linear classifier initialisation).
    """

    def __init__(
        self,
        input_dims: Sequence[int],
        learning_rates: Sequence[float],
        num_classes: int,
        seed: int = 0,
        device: torch.device | str | None = None,
    ) -> None:
        self.input_dims = list(input_dims)
        self.learning_rates = torch.tensor(list(learning_rates), dtype=torch.float32, device=device)
        self.num_classes = num_classes
        max_dim = max(self.input_dims)
        num_variants, num_lrs = len(self.input_dims), len(learning_rates)
        generator = torch.Generator().manual_seed(seed)
        weight = torch.zeros(num_variants, num_lrs, max_dim, num_classes)
        for v, dim in enumerate(self.input_dims):
            for lr_index in range(num_lrs):
                weight[v, lr_index, :dim] = torch.randn(dim, num_classes, generator=generator) * 0.01
        self.weight = weight.to(device)
        self.bias = torch.zeros(num_variants, num_lrs, num_classes, device=device)
        self._momentum = [torch.zeros_like(self.weight), torch.zeros_like(self.bias)]
        self._steps = 0

    def pack(self, variants: Sequence[Tensor]) -> Tensor:
        """Per-variant inputs ``[B, F_v]`` → zero-padded stack ``[V, B, F_max]``."""
        if [x.shape[1] for x in variants] != self.input_dims:
            raise ValueError(f"input dims {[x.shape[1] for x in variants]} != heads' {self.input_dims}")
        max_dim = self.weight.shape[2]
        return torch.stack([F.pad(x.float(), (0, max_dim - x.shape[1])) for x in variants])

    def logits(self, packed: Tensor, weight: Tensor | None = None, bias: Tensor | None = None) -> Tensor:
        """Logits ``[V, L, B, C]`` of every head: one batched matmul."""
        weight = self.weight if weight is None else weight
        bias = self.bias if bias is None else bias
        return packed.unsqueeze(1) @ weight + bias.unsqueeze(2)

    def train_step(self, packed: Tensor, labels: Tensor, lr_factor: float) -> Tensor:
        """One SGD-momentum step of every head on its own cross-entropy; returns losses ``[V, L]``."""
        weight = self.weight.detach().requires_grad_(True)
        bias = self.bias.detach().requires_grad_(True)
        logits = self.logits(packed, weight, bias)
        num_variants, num_lrs, batch, classes = logits.shape
        losses = F.cross_entropy(
            logits.reshape(-1, classes), labels.repeat(num_variants * num_lrs), reduction="none"
        ).view(num_variants, num_lrs, batch).mean(dim=2)
        weight_grad, bias_grad = torch.autograd.grad(losses.sum(), (weight, bias))
        lr = self.learning_rates * lr_factor
        with torch.no_grad():
            for param, grad, buffer in zip(
                (self.weight, self.bias), (weight_grad, bias_grad), self._momentum
            ):
                # torch.optim.SGD semantics: the first step fills the buffer with the gradient.
                buffer.mul_(MOMENTUM if self._steps else 0.0).add_(grad)
                shape = (1, -1) + (1,) * (param.ndim - 2)
                param.sub_(lr.view(shape) * buffer)
        self._steps += 1
        return losses.detach()

    @torch.no_grad()
    def predict_topk(self, variants: Sequence[Tensor], k: int, chunk_size: int = 4096) -> Tensor:
        """Top-``k`` class indices ``[V, L, N, k]`` of every head."""
        device = self.weight.device
        outputs = []
        for start in range(0, variants[0].shape[0], chunk_size):
            chunk = [x[start : start + chunk_size].to(device) for x in variants]
            outputs.append(self.logits(self.pack(chunk)).topk(k, dim=3).indices)
        return torch.cat(outputs, dim=2)


def train_head_grid(
    variants: Sequence[Tensor],
    labels: Tensor,
    num_classes: int,
    learning_rates: Sequence[float],
    epochs: int = 10,
    batch_size: int = 256,
    seed: int = 0,
    device: torch.device | str | None = None,
    progress: bool = False,
) -> LinearHeadGrid:
    """Train every (variant, lr) head together for ``epochs`` passes with a cosine schedule."""
    num_samples = labels.shape[0]
    if any(x.shape[0] != num_samples for x in variants):
        raise ValueError("every feature variant must have one row per label")
    device = torch.device(device) if device is not None else variants[0].device
    grid = LinearHeadGrid([x.shape[1] for x in variants], learning_rates, num_classes, seed, device)
    total_steps = epochs * math.ceil(num_samples / batch_size)
    labels = labels.long()
    bar = tqdm(total=total_steps, desc="linear heads", unit="step", disable=not progress)
    for step, index in enumerate(batch_order(num_samples, batch_size, epochs, seed)):
        packed = grid.pack([x[index].to(device) for x in variants])
        losses = grid.train_step(packed, labels[index].to(device), cosine_factor(step, total_steps))
        bar.update()
        if step % 50 == 0:
            bar.set_postfix(best_loss=f"{losses.min().item():.3f}")
    bar.close()
    return grid


@dataclass
class LinearProbeResult:
    """Outcome of :func:`linear_probe`: the chosen head and the validation accuracy of every head."""

    best_variant: str
    best_lr: float
    val_top1: float
    test_top1: float
    test_top5: float
    val_grid: dict[str, dict[float, float]] = field(default_factory=dict)  # variant → lr → val top-1

    def to_dict(self) -> dict:
        return {
            "best_variant": self.best_variant,
            "best_lr": self.best_lr,
            "val_top1": self.val_top1,
            "test_top1": self.test_top1,
            "test_top5": self.test_top5,
            "val_grid": {v: {str(lr): acc for lr, acc in row.items()} for v, row in self.val_grid.items()},
        }


def split_train_val(num_samples: int, val_fraction: float, seed: int) -> tuple[Tensor, Tensor]:
    """Seeded random split of ``range(num_samples)`` into fit and validation indices."""
    num_val = max(1, round(num_samples * val_fraction))
    if num_val >= num_samples:
        raise ValueError(f"cannot carve a {val_fraction:.0%} validation split from {num_samples} samples")
    permutation = torch.randperm(num_samples, generator=torch.Generator().manual_seed(seed))
    return permutation[num_val:], permutation[:num_val]


def linear_probe(
    train_variants: Mapping[str, Tensor],
    train_labels: Tensor,
    test_variants: Mapping[str, Tensor],
    test_labels: Tensor,
    learning_rates: Sequence[float] | None = None,
    epochs: int = 10,
    batch_size: int = 256,
    val_fraction: float = 0.1,
    seed: int = 0,
    device: torch.device | str | None = None,
    progress: bool = False,
) -> LinearProbeResult:
    """DINOv2 linear probe: fit all heads on train minus a validation split, pick the best, test it.

    ``learning_rates`` defaults to :data:`DEFAULT_LEARNING_RATES` scaled by ``batch_size / 256``.
    Accuracies are percentages.
    """
    names = list(train_variants)
    if set(test_variants) != set(names):
        raise ValueError(f"train variants {names} differ from test variants {list(test_variants)}")
    for name in names:
        if train_variants[name].shape[1] != test_variants[name].shape[1]:
            raise ValueError(
                f"variant {name!r}: train features have dim {train_variants[name].shape[1]}, "
                f"test features {test_variants[name].shape[1]}"
            )
    if learning_rates is None:
        learning_rates = [lr * batch_size / 256 for lr in DEFAULT_LEARNING_RATES]
    num_classes = int(max(train_labels.max(), test_labels.max())) + 1
    fit_index, val_index = split_train_val(train_labels.shape[0], val_fraction, seed)
    grid = train_head_grid(
        [train_variants[n][fit_index] for n in names],
        train_labels[fit_index],
        num_classes,
        learning_rates,
        epochs,
        batch_size,
        seed,
        device,
        progress,
    )
    val_pred = grid.predict_topk([train_variants[n][val_index] for n in names], 1)[..., 0].cpu()
    val_acc = 100.0 * (val_pred == train_labels[val_index].long()).float().mean(dim=2)  # [V, L]
    best = int(val_acc.flatten().argmax())
    best_v, best_l = divmod(best, len(learning_rates))
    k = min(5, num_classes)
    test_top = grid.predict_topk([test_variants[n] for n in names], k)[best_v, best_l].cpu()
    hits = test_top == test_labels.long()[:, None]
    return LinearProbeResult(
        best_variant=names[best_v],
        best_lr=float(learning_rates[best_l]),
        val_top1=val_acc[best_v, best_l].item(),
        test_top1=100.0 * hits[:, 0].float().mean().item(),
        test_top5=100.0 * hits.any(dim=1).float().mean().item(),
        val_grid={
            name: {float(lr): val_acc[v, i].item() for i, lr in enumerate(learning_rates)}
            for v, name in enumerate(names)
        },
    )
