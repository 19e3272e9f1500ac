"""Pretraining runs compared at equal steps: the same step count and warm-ups on sets of different sizes
(curation_payoff compares sets, batch_throughput times batch sizes)."""

from __future__ import annotations

FIXED_LENGTH = ["run.minutes=null", "run.checkpoint_every_steps=1000000", "run.checkpoint_every_minutes=100000"]
"""Overrides for a run whose length is its step count alone: no time budget, no checkpoints on the way."""


def equal_step_overrides(base, images: int, reference_images: int, steps: int, batch: int) -> list[str]:
    """Overrides that make a run on ``images`` images last ``steps`` steps of ``batch``, with every warm-up as
    long in steps as the preset's warm-ups on the reference (curated) set: epoch lengths scaled by batches ratio."""
    scale = (reference_images // batch) / (images // batch)
    warmups = {"optim.warmup_epochs": base.optim.warmup_epochs,
               "optim.freeze_last_layer_epochs": base.optim.freeze_last_layer_epochs,
               "loss.warmup_teacher_temp_epochs": base.loss.warmup_teacher_temp_epochs}
    epochs = (steps - 0.5) / (images // batch)  # the trainer runs ceil(epochs * batches) == steps
    return [f"optim.batch_size={batch}", f"optim.epochs={epochs!r}",
            *(f"{name}={value * scale!r}" for name, value in warmups.items())]
