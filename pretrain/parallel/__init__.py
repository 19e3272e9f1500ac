"""Scale-out building blocks: FSDP2/DDP wrapping, sharded EMA, DCP checkpoints, resumable sampling."""

from dinolab.pretrain.parallel.dcp import TrainingState, load_training_state, save_training_state
from dinolab.pretrain.parallel.fsdp import ema_update_sharded, local_tensor, shard_model, wrap_ddp
from dinolab.pretrain.parallel.sampler import ResumableDistributedSampler

__all__ = [
    "ResumableDistributedSampler",
    "TrainingState",
    "ema_update_sharded",
    "load_training_state",
    "local_tensor",
    "save_training_state",
    "shard_model",
    "wrap_ddp",
]
