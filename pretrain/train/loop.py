"""The pretraining loop, readable top to bottom: build → for each step (data, crops, forward, losses,
backward, clip, optimiser step, centre update, EMA teacher, log, checkpoint, k-NN) → export.

Single process by default. Under ``torchrun`` (2+ processes) ``run.parallel`` picks DDP (the whole
model replicated; teacher parameters need no gradients, so DDP leaves them alone) or FSDP2 (student and
teacher sharded per transformer block, bf16 parameters on CUDA, the optimiser built on the shards, the
EMA teacher updated shard by shard). CUDA runs under bf16 autocast, CPU in fp32.

Every random draw of a step (crops, masks) comes from a generator seeded by ``(seed, step)`` and the
image order from ``(seed, epoch)``, so ``resume=True`` continues exactly where the checkpoint stopped.
With ``W`` processes each holds rows ``rank::W`` of the global batch and keeps those rows of draws made
for the whole global batch, so the same global batch trains the same way at any world size (up to
floating-point reduction order; KoLeo and stochastic depth are per process). Decisions that end or
checkpoint the run (time budget, divergence, time-based checkpoints) are taken jointly by all ranks.

Checkpoints: ``checkpoint.pth`` for one process; ``checkpoint.dcp/`` (DCP, any world size) under
torchrun, plus a consolidated ``checkpoint.pth`` at the end. Resuming reads the newer of the two; both are
written and read by :mod:`pretrain.train.checkpoint`.

Example::

    result = train(build_config("fmnist-tiny"), data="fashion-mnist", out_dir="runs/fmnist")
    result.final_knn[20]["top1"]
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from dinolab.pretrain import distributed
from dinolab.pretrain.data.eval_splits import EvalData, LabelledSplit, fashion_mnist_eval
from dinolab.pretrain.train.checkpoint import (
    CHECKPOINT_NAME,
    check_same_config,
    is_dcp_checkpoint,
    load_checkpoint,
    load_optimizer_state,
    newest_checkpoint,
    optimizer_parameter_names,
    restore_dcp,
    restore_rng_state,
    restore_single_file,
    rng_state,
    run_progress,
    save_atomic,
    save_consolidated,
    save_dcp,
    training_state,
)
from dinolab.pretrain.train.config import TrainConfig
from dinolab.pretrain.train.data import FASHION_MNIST, TrainingImages, open_training_data
from dinolab.pretrain.train.ema import update_teacher
from dinolab.pretrain.train.knn_eval import knn_evaluate
from dinolab.pretrain.train.masking import sample_ibot_masks
from dinolab.pretrain.train.monitor import CollapseMonitor, ScalarLog, collapse_metrics
from dinolab.pretrain.train.param_groups import apply_schedules, build_param_groups
from dinolab.pretrain.train.phases import init_from_source
from dinolab.pretrain.train.schedules import TrainingSchedules, scaled_lr
from dinolab.pretrain.train.ssl_model import SSLModel, SSLStepOutput, apply_block_options, build_backbone
from dinolab.pretrain.train.tensor_augment import BatchRows, MultiCropBatch, TensorMultiCrop

StepHook = Callable[[int, SSLStepOutput], None]


class TrainingDiverged(RuntimeError):
    """The loss became NaN or infinite; the last good checkpoint is left untouched."""


@dataclass
class TrainResult:
    out_dir: Path
    steps: int
    total_steps: int
    images_per_second: float
    train_minutes: float
    final_knn: dict[int, dict[str, float]] | None = None
    knn_history: list[dict[str, Any]] = field(default_factory=list)
    skipped_images: int = 0
    stopped_early: bool = False


def step_generator(seed: int, step: int) -> torch.Generator:
    """The generator of all crop and mask draws of one step (so a resumed step draws the same)."""
    return torch.Generator().manual_seed(seed * 1_000_003 + step + 1)


def crops_and_masks(config: TrainConfig, augment: TensorMultiCrop, images: torch.Tensor, step: int,
                    device: torch.device, rows: BatchRows | None = None) -> tuple[MultiCropBatch, torch.Tensor | None]:
    """The multi-crop batch of one step and, for iBOT, the global crops' patch masks (seeded by step).

    ``rows``: which rows of the global batch ``images`` are (default: the whole batch). Masks are
    drawn for the global batch's ``2·total`` global crops and this process's rows kept.
    """
    rows = rows or BatchRows(images.shape[0])
    generator = step_generator(config.run.seed, step)
    crops = augment(images.to(device, non_blocking=True), generator, rows)
    masks = None
    if config.uses_ibot:
        grid = config.crops.global_size // config.model.patch_size
        masks = sample_ibot_masks(2 * rows.total, (grid, grid),
                                  mask_probability=config.loss.mask_probability,
                                  ratio_range=tuple(config.loss.mask_ratio), generator=generator)
        masks = rows.repeat(2).select(masks).to(device)
    return crops, masks


def seconds_per_step(train_step: Callable[[torch.Tensor, int], object], images: torch.Tensor, timed: int = 3) -> float:
    """Mean wall time of ``timed`` calls ``train_step(images, step)`` after one warm-up call.

    Used to fit a run to ``run.minutes``; the global random state is restored afterwards, so the
    probe leaves no trace in the run that follows.
    """
    saved_rng = rng_state()
    train_step(images, 0)  # warm-up
    start = time.monotonic()
    for index in range(timed):
        train_step(images, index + 1)
    seconds = (time.monotonic() - start) / timed
    restore_rng_state(saved_rng)
    return seconds


def build_optimizer(config: TrainConfig, model: SSLModel) -> torch.optim.Optimizer:
    """AdamW over fused parameter groups (layer-wise lr decay, patch-embed lr multiplier, no wd on norms)."""
    groups = build_param_groups(dict(model.student.items()), layer_decay=config.optim.layer_decay,
                                patch_embed_lr_mult=config.optim.patch_embed_lr_mult)
    return torch.optim.AdamW(groups, betas=(config.optim.beta1, config.optim.beta2))


def build_schedules(config: TrainConfig, total_steps: int, steps_per_epoch: int, global_batch: int) -> TrainingSchedules:
    """lr / wd / momentum / teacher-temperature schedules over ``total_steps``.

    Warm-ups are capped to a share of the run (lr 10%, teacher temperature 30%, frozen last layer 5%)
    so that a run shortened by a time budget still spends most of its steps after them.
    """
    optim, loss = config.optim, config.loss
    run_epochs = total_steps / steps_per_epoch
    return TrainingSchedules.build(
        total_iters=total_steps, iters_per_epoch=steps_per_epoch,
        lr=scaled_lr(optim.base_lr, global_batch, rule=optim.lr_scaling), min_lr=optim.min_lr,
        warmup_epochs=min(optim.warmup_epochs, 0.1 * run_epochs),
        wd=optim.weight_decay, wd_end=optim.weight_decay_end,
        momentum=optim.teacher_momentum, momentum_end=optim.teacher_momentum_end,
        teacher_temp=loss.warmup_teacher_temp, teacher_temp_end=loss.teacher_temp,
        teacher_temp_warmup_epochs=min(loss.warmup_teacher_temp_epochs, 0.3 * run_epochs),
        freeze_last_layer_epochs=min(optim.freeze_last_layer_epochs, 0.05 * run_epochs),
    )


LOG_LINES = 20
"""Without a progress bar (``progress=False``: no terminal), about this many one-line reports per run."""


class Trainer:
    """One pretraining run: owns the model, optimiser, data and logs; :meth:`run` trains to the end."""

    def __init__(self, config: TrainConfig, data: str, out_dir: str | Path, *, resume: bool = False,
                 evaluate: bool = True, eval_data: EvalData | None = None, data_limit: int | None = None,
                 progress: bool = True, step_hook: StepHook | None = None,
                 init_from: str | Path | None = None, storage_options: Mapping[str, Any] | None = None) -> None:
        """``storage_options`` reach shards behind fsspec URLs (kept out of the config and checkpoints)."""
        distributed.init_from_env()
        self.config = config
        self.out_dir = Path(out_dir)
        self.checkpoint_path = self.out_dir / CHECKPOINT_NAME
        self.rank, self.world = distributed.rank(), distributed.world_size()
        self.sharded = distributed.is_distributed() and config.run.parallel == "fsdp"
        self.device = torch.device("cuda", torch.cuda.current_device()) if torch.cuda.is_available() else torch.device("cpu")
        self.progress = progress and distributed.is_main_process()
        self.step_hook = step_hook
        if eval_data is None and evaluate and data == FASHION_MNIST:
            eval_data = fashion_mnist_eval(config)
        self.eval_data = eval_data if evaluate else None

        torch.manual_seed(config.run.seed)
        self.data: TrainingImages = open_training_data(
            data, config.crops.storage_size or round(config.crops.global_size * 1.15),
            config.optim.batch_size, config.run.seed, config.run.num_workers, limit=data_limit,
            cache_bytes=int(config.run.shard_cache_gb * 2**30), storage_options=storage_options)
        self.augment = TensorMultiCrop(config.crops)
        self.model = SSLModel(config).to(self.device)
        self.steps_per_epoch = self.data.batches_per_epoch
        self.step = 0
        self.total_steps = max(1, math.ceil(config.optim.epochs * self.steps_per_epoch))
        self.knn_history: list[dict[str, Any]] = []
        source = newest_checkpoint(self.out_dir) if resume else None
        saved_optimizer = None
        if source is not None and not is_dcp_checkpoint(source):
            state = load_checkpoint(source)
            check_same_config(state["dinolab"]["config"], int(state.get("world_size", 1)), config, self.world, source)
            self._resume_from(restore_single_file(self.model, state))
            saved_optimizer = state["optimizer"]
        elif source is None:
            if init_from is not None:  # a new phase (e.g. high resolution): weights only
                init_from_source(self.model, init_from)
            if config.run.minutes is not None:  # every rank probes (losses reduce); rank 0 decides
                budget_steps = min(self.total_steps, self._steps_in_budget(config.run.minutes))
                self.total_steps = distributed.broadcast_from_main(budget_steps)
        for network in (self.model.student, self.model.teacher):
            apply_block_options(network["backbone"], compile=config.run.compile,
                                compile_backend=config.run.compile_backend,
                                activation_checkpointing=config.run.activation_checkpointing)
        self.forward_model = self._parallelise()
        self.optimizer = build_optimizer(config, self.model)  # after sharding: on the shards
        self.optimizer_names = optimizer_parameter_names(self.optimizer, self.model.student)
        self.student_params = list(self.model.student.parameters())
        self.teacher_params = list(self.model.teacher.parameters())
        if saved_optimizer is not None:
            load_optimizer_state(self.model, self.optimizer, saved_optimizer, self.optimizer_names, self.sharded)
        if source is not None and is_dcp_checkpoint(source):
            self._resume_from(restore_dcp(source, config, self.model, self.optimizer, self._checkpoint_progress()))
        self.schedules = build_schedules(config, self.total_steps, self.steps_per_epoch,
                                    config.optim.batch_size * self.world)

    def _parallelise(self) -> torch.nn.Module:
        """The module to call for a step: the model itself, DDP around it, or it with FSDP2 shards."""
        if not distributed.is_distributed():
            return self.model
        if not self.sharded:
            return torch.nn.parallel.DistributedDataParallel(
                self.model, broadcast_buffers=False, find_unused_parameters=not self.config.uses_ibot)
        from torch.distributed.device_mesh import init_device_mesh

        from dinolab.pretrain.parallel import shard_model

        mesh = init_device_mesh(self.device.type, (self.world,))
        for network, inference_only in ((self.model.student, False), (self.model.teacher, True)):
            for name, part in network.items():  # each part is called on its own: its own FSDP root
                shard_model(part, mixed_precision=True, inference_only=inference_only, mesh=mesh,
                            forward_methods=("forward_features",) if name == "backbone" else ())
        return self.model

    # ------------------------------------------------------------ one step
    def _rows(self, images: torch.Tensor) -> BatchRows:
        """This process's rows of the global batch (``rank::world``, as ``epoch_order`` deals them)."""
        return BatchRows(self.world * images.shape[0], self.rank, self.world)

    def _crops_and_masks(self, images: torch.Tensor, step: int) -> tuple[MultiCropBatch, torch.Tensor | None]:
        return crops_and_masks(self.config, self.augment, images, step, self.device, self._rows(images))

    def _say(self, message: str, bar: tqdm | None = None) -> None:
        if distributed.is_main_process():
            (bar.write if bar is not None else tqdm.write)(message)

    def _any_rank(self, *flags: bool) -> list[bool]:
        return distributed.any_rank(list(flags), device=self.device)

    def _update_teacher(self, momentum: float) -> None:
        if self.sharded:
            from dinolab.pretrain.parallel import ema_update_sharded

            ema_update_sharded(self.model.teacher, self.model.student, momentum)
        else:
            update_teacher(self.student_params, self.teacher_params, momentum)

    def train_step(self, images: torch.Tensor, step: int) -> SSLStepOutput:
        """Forward, loss, backward, clip, AdamW step, centre update and EMA teacher update."""
        values = self.schedules.at(step)
        apply_schedules(self.optimizer, values["lr"], values["weight_decay"], values["last_layer_lr"])
        crops, masks = self._crops_and_masks(images, step)
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.device.type == "cuda"):
            output = self.forward_model(crops, masks, values["teacher_temp"])
        if self.step_hook is not None:  # tests inject failures here
            self.step_hook(step, output)
        total = output.losses["total"]
        if self._any_rank(not bool(torch.isfinite(total).all()))[0]:
            terms = ", ".join(f"{k}={float(v.detach()):.4g}" for k, v in output.losses.items())
            raise TrainingDiverged(
                f"loss is not finite at step {step} ({terms}); stopped, the last good checkpoint "
                f"({self.checkpoint_path}) is kept. Lower optim.base_lr, raise optim.warmup_epochs "
                "or lower optim.clip_grad."
            )
        self.optimizer.zero_grad(set_to_none=True)
        total.backward()
        if self.config.optim.clip_grad > 0:
            torch.nn.utils.clip_grad_norm_(self.student_params, self.config.optim.clip_grad)
        self.optimizer.step()
        self.model.update_centers(output)
        self._update_teacher(values["teacher_momentum"])
        return output

    # ------------------------------------------------------------ the run
    def run(self) -> TrainResult:
        config = self.config
        start_step = self.step
        log = ScalarLog(self.out_dir, tensorboard=True) if distributed.is_main_process() else None
        monitor = CollapseMonitor()
        bar = tqdm(total=self.total_steps, initial=start_step, disable=not self.progress,
                   desc="pretrain", unit="step", dynamic_ncols=True)
        started = last_checkpoint = last_log_time = time.monotonic()
        budget_s = config.run.minutes * 60 if config.run.minutes is not None else None
        images_seen = 0
        last_log_images = 0
        last_warning_step = -10**9
        stopped_early = False
        self.model.train()
        while self.step < self.total_steps:
            epoch, batch_index = divmod(self.step, self.steps_per_epoch)
            for images in self.data.batches(epoch, batch_index):
                if self.step >= self.total_steps:
                    break
                if self._any_rank(images.shape[0] < 2)[0]:  # a batch made of unreadable files
                    self.step += 1
                    continue
                output = self.train_step(images, self.step)
                self.step += 1
                images_seen += images.shape[0]
                bar.update(1)

                if self.step % config.run.log_every == 0 or self.step == self.total_steps:
                    now = time.monotonic()
                    rate = (images_seen - last_log_images) * distributed.world_size() / max(now - last_log_time, 1e-9)
                    last_log_time, last_log_images = now, images_seen
                    values = self.schedules.at(self.step - 1)
                    teacher_probs = torch.cat(output.teacher.cls_probs)
                    scalars = self._mean_losses(output)
                    scalars.update(collapse_metrics(teacher_probs, output.student_cls))
                    scalars.update(lr=values["lr"], weight_decay=values["weight_decay"],
                                   teacher_momentum=values["teacher_momentum"],
                                   teacher_temp=values["teacher_temp"], images_per_second=rate,
                                   epoch=self.step / self.steps_per_epoch)
                    shown = ({k: f"{scalars[k]:.3f}" for k in ("total", "dino", "ibot", "koleo") if k in scalars}
                             | {"lr": f"{values['lr']:.2e}", "img/s": f"{rate:.0f}"})
                    bar.set_postfix(shown)
                    if not self.progress and self.step % max(1, self.total_steps // LOG_LINES) < config.run.log_every:
                        self._say(f"pretrain step {self.step}/{self.total_steps}: "
                                  + ", ".join(f"{k} {v}" for k, v in shown.items()))
                    if log is not None:
                        log.log(self.step, scalars)
                    warning = monitor.check(scalars)
                    if warning and self.step - last_warning_step >= 10 * config.run.log_every:
                        last_warning_step = self.step
                        self._say(f"WARNING (step {self.step}): {warning}", bar)
                        if log is not None:
                            log.log(self.step, {"message": warning}, kind="warning")

                now = time.monotonic()
                checkpoint_due, over_budget = self._any_rank(  # one decision for all ranks
                    now - last_checkpoint > config.run.checkpoint_every_minutes * 60,
                    budget_s is not None and now - started > 1.1 * budget_s)
                if self.step % config.run.checkpoint_every_steps == 0 or checkpoint_due:
                    self.save()
                    last_checkpoint = now
                if (config.run.eval_every_steps and self.eval_data is not None
                        and self.step % config.run.eval_every_steps == 0 and self.step < self.total_steps):
                    self._evaluate(self.eval_data.periodic, log, bar, kind="knn_periodic")
                if over_budget and self.step < self.total_steps:
                    self._say(f"time budget of {config.run.minutes} min exceeded by 10%: stopping at step "
                              f"{self.step} of {self.total_steps}", bar)
                    stopped_early = True
                    break
            if stopped_early:
                break
        bar.close()
        train_seconds = time.monotonic() - started
        self.save()
        if distributed.is_distributed():
            self.save_consolidated()
        final = None
        if self.eval_data is not None:
            final = self._evaluate(self.eval_data.final, log, None, kind="knn_final")
        if log is not None:
            log.close()
        return TrainResult(
            out_dir=self.out_dir, steps=self.step, total_steps=self.total_steps,
            images_per_second=images_seen * distributed.world_size() / max(train_seconds, 1e-9),
            train_minutes=train_seconds / 60, final_knn=final, knn_history=self.knn_history,
            skipped_images=self.data.skipped.count, stopped_early=stopped_early,
        )

    # ----------------------------------------------------------- helpers
    def _evaluate(self, splits: tuple[LabelledSplit, LabelledSplit], log: ScalarLog | None,
                  bar: tqdm | None, kind: str) -> dict[int, dict[str, float]]:
        accuracy = knn_evaluate(self.model.teacher["backbone"], *splits, feature=self.config.run.knn_feature)
        record = {f"top1_k{k}": v["top1"] for k, v in accuracy.items()}
        self.knn_history.append({"step": self.step, "kind": kind, **record})
        message = f"k-NN ({kind}, step {self.step}): " + ", ".join(
            f"k={k} top-1 {v['top1']:.2f}%" for k, v in accuracy.items())
        self._say(message, bar)
        if log is not None:
            log.log(self.step, record, kind=kind)
        return accuracy

    def _mean_losses(self, output: SSLStepOutput) -> dict[str, float]:
        """The step's losses as floats, averaged over processes (the global-batch values)."""
        names = list(output.losses)
        values = torch.stack([output.losses[name].detach().float() for name in names])
        return dict(zip(names, distributed.all_reduce_mean(values).tolist()))

    def _steps_in_budget(self, minutes: float) -> int:
        """How many steps fit in ``minutes``: time a few steps of a throwaway copy (RNG state kept).

        Runs before wrapping or sharding, on an unwrapped copy (with the process group's reductions of
        the losses but without gradient communication), so under torchrun it is an estimate.
        """
        probe_model = copy.deepcopy(self.model)
        probe = Trainer.__new__(Trainer)
        probe.__dict__.update(self.__dict__)
        probe.model = probe.forward_model = probe_model
        probe.sharded = False
        probe.optimizer = build_optimizer(self.config, probe_model)
        probe.student_params = list(probe_model.student.parameters())
        probe.teacher_params = list(probe_model.teacher.parameters())
        probe.schedules = build_schedules(self.config, self.total_steps, self.steps_per_epoch,
                                     self.config.optim.batch_size * self.world)
        probe.step_hook = None
        images = next(self.data.batches(0, 0))
        seconds = seconds_per_step(probe.train_step, images)  # leaves the global RNG state as it was
        return max(1, int(minutes * 60 / seconds))

    # ------------------------------------------------- checkpoints (pretrain.train.checkpoint does the work)
    def _checkpoint_progress(self) -> dict[str, Any]:
        return run_progress(self.step, self.total_steps, self.steps_per_epoch, self.world, self.knn_history)

    def _resume_from(self, progress: dict[str, Any]) -> None:
        self.step, self.total_steps, self.knn_history = progress["step"], progress["total_steps"], progress["knn_history"]

    def state(self) -> dict[str, Any]:
        """The single-file checkpoint of a one-process run (see :mod:`pretrain.train.checkpoint`)."""
        return training_state(self.config, self.model, self._checkpoint_progress(), self.model.student.state_dict(),
                              self.model.teacher.state_dict(), self.optimizer.state_dict())

    def save(self) -> None:
        """Write the checkpoint atomically (DCP under torchrun); refuses (TrainingDiverged) when weights
        are not finite."""
        from dinolab.pretrain.parallel import local_tensor

        finite = all(bool(torch.isfinite(local_tensor(p.detach())).all()) for p in self.model.student.parameters())
        if self._any_rank(not finite)[0]:
            raise TrainingDiverged(
                f"student weights are not finite at step {self.step}; stopped without saving, the last "
                f"good checkpoint in {self.out_dir} is kept. Lower optim.base_lr or optim.clip_grad."
            )
        if distributed.is_distributed():
            save_dcp(self.out_dir, self.config, self.model, self.optimizer, self._checkpoint_progress())
        else:
            save_atomic(self.state(), self.checkpoint_path)

    def save_consolidated(self) -> None:
        """``checkpoint.pth`` with the full weights and optimiser state, written by rank 0 (collective)."""
        save_consolidated(self.checkpoint_path, self.config, self.model, self.optimizer, self.optimizer_names,
                          self._checkpoint_progress())

    def export_teacher(self, hf: bool = False) -> list[Path]:
        """Write the teacher backbone exports (:mod:`pretrain.train.export`) from rank 0 (collective)."""
        from dinolab.pretrain.train.export import export_teacher

        backbone = self.model.teacher["backbone"]
        if not distributed.is_distributed():
            return export_teacher(backbone, self.out_dir, hf=hf)
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

        weights = get_model_state_dict(backbone, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
        written = []
        if distributed.is_main_process():
            plain = build_backbone(self.config)
            plain.load_state_dict(weights)
            written = export_teacher(plain, self.out_dir, hf=hf)
        distributed.barrier()
        return written


def train(config: TrainConfig, data: str, out_dir: str | Path, **options: Any) -> TrainResult:
    """Build a :class:`Trainer` and run it to the end (see module docstring)."""
    return Trainer(config, data, out_dir, **options).run()
