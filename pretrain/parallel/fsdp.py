"""Data parallelism: FSDP2 sharding per transformer block, DDP, and an EMA that works on shards.

FSDP2 (:func:`torch.distributed.fsdp.fully_shard`) shards every parameter along dim 0 across ranks
as a ``DTensor``. Each transformer block is its own unit (its parameters are gathered just before it
runs and freed after), then the root takes what is left (embeddings, final norm, heads). On CUDA,
``mixed_precision=True`` computes in bf16 and reduces gradients in fp32; CPU runs stay fp32.

The EMA teacher is sharded like the student, so its update is local to each rank's shards: no
communication, one fused ``_foreach`` call (DINO Eq. 2: θ_t ← m·θ_t + (1 − m)·θ_s).

Example::

    student, teacher = shard_model(student), shard_model(teacher)
    ...; loss.backward(); optimizer.step()
    ema_update_sharded(teacher, student, momentum=0.996)
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.distributed as dist
from torch import Tensor, nn
from torch.distributed.fsdp import FSDPModule
from torch.distributed.device_mesh import DeviceMesh
from torch.distributed.tensor import DTensor

from dinolab.pretrain.models.layers import Block


def _device_of(module: nn.Module) -> torch.device:
    return next(module.parameters()).device


def shard_model(model: nn.Module, mixed_precision: bool = False, inference_only: bool = False,
                mesh: DeviceMesh | None = None, forward_methods: Sequence[str] = ()) -> nn.Module:
    """Apply FSDP2 to every transformer :class:`Block` inside ``model``, then to ``model`` itself.

    Needs an initialised process group; parameters must already be on their device. Returns the same
    module (FSDP2 changes it in place). ``mixed_precision`` takes effect on CUDA only.
    ``inference_only`` (the EMA teacher): the root reshards after forward too, since no backward
    follows (by default FSDP2 keeps the root's parameters gathered between forward and backward).
    ``mesh``: share one 1-D mesh between several sharded modules (default: a new one over all ranks).
    ``forward_methods``: methods other than ``forward`` that callers use as an entry point (e.g. a
    backbone's ``forward_features``); they gather and free the root's parameters like ``forward``.
    """
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard, register_fsdp_forward_method

    device = _device_of(model)
    if mesh is None:
        mesh = init_device_mesh(device.type, (dist.get_world_size(),))
    if mixed_precision and device.type == "cuda":
        policy = MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32)
    else:
        policy = MixedPrecisionPolicy()
    for module in model.modules():
        if isinstance(module, Block):
            fully_shard(module, mesh=mesh, mp_policy=policy)
    fully_shard(model, mesh=mesh, mp_policy=policy, reshard_after_forward=True if inference_only else None)
    for name in forward_methods:
        register_fsdp_forward_method(model, name)
    return model


def wrap_ddp(model: nn.Module, find_unused_parameters: bool = False) -> nn.parallel.DistributedDataParallel:
    """Replicate ``model`` with gradient all-reduce (DDP) on the device its parameters are on.

    Set ``find_unused_parameters`` when some parameters get no gradient in a step (for instance the
    backbone's ``mask_token`` when no crop is masked).
    """
    device = _device_of(model)
    device_ids = [device] if device.type == "cuda" else None
    return nn.parallel.DistributedDataParallel(
        model, device_ids=device_ids, find_unused_parameters=find_unused_parameters
    )


def local_tensor(tensor: Tensor) -> Tensor:
    """This rank's shard of a ``DTensor`` (a view sharing storage), or the tensor itself."""
    return tensor.to_local() if isinstance(tensor, DTensor) else tensor


@torch.no_grad()
def ema_update_sharded(teacher: nn.Module, student: nn.Module, momentum: float) -> None:
    """``teacher ← momentum · teacher + (1 − momentum) · student`` on this rank's parameter shards.

    Works for plain, DDP-wrapped (pass ``ddp.module``) and FSDP2-sharded models; both must be sharded
    the same way and list their parameters in the same order. FSDP2 modules still holding gathered
    parameters (a root after a forward) are resharded first, so the update reads and writes shards.
    """
    for module in (*teacher.modules(), *student.modules()):
        if isinstance(module, FSDPModule):
            module.reshard()
    teacher_params = [local_tensor(p) for p in teacher.parameters()]
    student_params = [local_tensor(p) for p in student.parameters()]
    if len(teacher_params) != len(student_params):
        raise ValueError(
            f"teacher has {len(teacher_params)} parameters, student {len(student_params)}: not EMA twins"
        )
    for t, s in zip(teacher_params, student_params):
        if t.shape != s.shape:
            raise ValueError(f"teacher shard {tuple(t.shape)} and student shard {tuple(s.shape)} differ")
    torch._foreach_mul_(teacher_params, momentum)
    torch._foreach_add_(teacher_params, student_params, alpha=1.0 - momentum)
