"""Code that two or more benchmarks share, one module per job: :mod:`.flops` (FLOP counting and the
matmul peak, for MFU), :mod:`.copy_planting` (planted copies of real photos), :mod:`.jobs` (measurements
in fresh processes), :mod:`.equal_steps` (pretraining runs of equal length) and :mod:`.embedding` (image
files through the embed stage's code); for ``benchmarks.scale_run``: :mod:`.mixture_lake` (a
precomputed-embeddings lake with planted answers), :mod:`.worker_memory` (RSS, CPU and restarts of a
cluster's workers) and :mod:`.task_memory` (per-task memory of the dedup, cluster and sample steps)."""
