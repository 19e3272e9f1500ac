"""Self-supervised pretraining: heads, losses, masking, schedules, optimiser groups, EMA and multi-crop."""
