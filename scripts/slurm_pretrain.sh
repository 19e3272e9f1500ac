#!/bin/bash
# Multi-node `pretrain train` on SLURM: one srun task per node; on each node torchrun starts one process
# per GPU, and the nodes meet through torchrun's c10d rendezvous on the first node of the allocation.
#
#   DATA=/datasets/imagenet/train OUT=runs/vitl sbatch --nodes 4 scripts/slurm_pretrain.sh \
#       --preset dinov2-vitl14 optim.batch_size=32
#
# optim.batch_size is per process (global batch = nodes x GPUs per node x batch_size). Extra arguments
# go to `pretrain train` (options first, then KEY=VALUE overrides). Resubmitting with the same OUT
# resumes from its newest checkpoint, also with another number of nodes as long as the global batch
# stays the same (see docs/scale.md). PARALLEL=ddp replicates the model instead of sharding it (FSDP2).
#SBATCH --job-name=dinolab-pretrain
#SBATCH --nodes=2
#SBATCH --ntasks-per-node=1
#SBATCH --gpus-per-node=8
#SBATCH --cpus-per-task=64
#SBATCH --time=48:00:00
#SBATCH --output=%x-%j.out
set -euo pipefail

DATA="${DATA:?set DATA to the image folder or file list}"
OUT="${OUT:-runs/${SLURM_JOB_NAME}-${SLURM_JOB_ID}}"
PARALLEL="${PARALLEL:-fsdp}"
GPUS_PER_NODE="${GPUS_PER_NODE:-${SLURM_GPUS_ON_NODE:-8}}"
RDZV_PORT="${RDZV_PORT:-29500}"
HEAD_NODE="$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1)"

export OMP_NUM_THREADS="${OMP_NUM_THREADS:-8}"
srun --kill-on-bad-exit=1 torchrun \
    --nnodes "$SLURM_NNODES" \
    --nproc-per-node "$GPUS_PER_NODE" \
    --rdzv-id "$SLURM_JOB_ID" \
    --rdzv-backend c10d \
    --rdzv-endpoint "$HEAD_NODE:$RDZV_PORT" \
    -m dinolab.pretrain train --data "$DATA" --out "$OUT" --resume --no-progress "$@" "run.parallel=$PARALLEL"
