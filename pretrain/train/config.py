"""Typed, frozen training configuration: presets plus ``key=value`` overrides.

A run is described by one :class:`TrainConfig`, a typed config of :mod:`core.config` as the pipeline's
is: its numbers declare their ranges (``optim.base_lr`` > 0, ``optim.batch_size`` >= 2, probabilities in
[0, 1] ...). It is built once from a preset and the user's overrides (merged and typed by OmegaConf:
unknown keys and wrong types are errors), checked against those ranges and never mutated; every problem
is a :class:`~core.config.ConfigError` naming the key. Derived values (scaled lr, schedule lengths) are
computed where they are needed.

Example::

    config = build_config("fmnist-tiny", ["optim.epochs=2", "recipe=dino"])
    config.optim.batch_size, config.recipe  # 128, 'dino'
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields, is_dataclass, replace
from typing import Any, Optional

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from dinolab.core.config import ConfigError, at_least, check, fraction, positive

RECIPES = ("dino", "dinov2")


@dataclass(frozen=True)
class ModelConfig:
    """Backbone: a named architecture (``pretrain.models.presets``) with field overrides."""

    arch: str = "vit_small"
    patch_size: int = at_least(14, 1)
    img_size: int = at_least(224, 1)  # position table size; crops of other sizes interpolate it
    embed_dim: Optional[int] = at_least(None, 1)  # None: the architecture's own value
    depth: Optional[int] = at_least(None, 1)
    num_heads: Optional[int] = at_least(None, 1)
    mlp_ratio: Optional[float] = positive(None)
    num_register_tokens: int = at_least(0, 0)
    layerscale_init: Optional[float] = at_least(1e-5, 0)
    drop_path_rate: float = fraction(0.0)


@dataclass(frozen=True)
class CropConfig:
    """Multi-crop augmentation (DINO Sec. 3.1): sizes, scales and counts, photometric strengths."""

    global_size: int = at_least(224, 1)
    local_size: int = at_least(98, 1)
    num_local: int = at_least(8, 0)
    global_scale: tuple[float, float] = fraction((0.32, 1.0), open_low=True)
    local_scale: tuple[float, float] = fraction((0.05, 0.32), open_low=True)
    flip_prob: float = fraction(0.5)
    jitter_prob: float = fraction(0.8)
    brightness: float = at_least(0.4, 0)
    contrast: float = at_least(0.4, 0)
    saturation: float = at_least(0.2, 0)
    grayscale_prob: float = fraction(0.2)
    blur_prob_global: tuple[float, float] = fraction((1.0, 0.1))
    blur_prob_local: float = fraction(0.5)
    blur_sigma: tuple[float, float] = at_least((0.1, 2.0), 0)
    solarize_prob: float = fraction(0.2)  # second global crop only
    storage_size: Optional[int] = at_least(None, 1)  # images are decoded once to this square size (None: 1.15 x global)


@dataclass(frozen=True)
class HeadConfig:
    """DINO / iBOT projection heads (DINO Sec. 3.1: MLP, L2 bottleneck, weight-normalised prototypes)."""

    out_dim: int = at_least(65536, 2)
    hidden_dim: int = at_least(2048, 1)
    bottleneck_dim: int = at_least(256, 1)
    nlayers: int = at_least(3, 1)
    separate_ibot_head: bool = False
    ibot_out_dim: Optional[int] = at_least(None, 2)  # None: out_dim


@dataclass(frozen=True)
class LossConfig:
    """Loss weights and temperatures (DINO Eq. 1-2; DINOv2 Sec. 4)."""

    student_temp: float = positive(0.1)
    teacher_temp: float = positive(0.07)
    warmup_teacher_temp: float = positive(0.04)
    warmup_teacher_temp_epochs: float = at_least(30.0, 0)
    center_momentum: float = fraction(0.9)
    centering: str = "sinkhorn"  # "sinkhorn" (DINOv2) or "softmax" (DINO)
    dino_weight: float = at_least(1.0, 0)
    ibot_weight: float = at_least(1.0, 0)
    koleo_weight: float = at_least(0.1, 0)
    mask_probability: float = fraction(0.5)
    mask_ratio: tuple[float, float] = fraction((0.1, 0.5))


@dataclass(frozen=True)
class OptimConfig:
    """AdamW with warm-up + cosine lr, cosine weight decay and teacher momentum (DINOv2 Sec. 4)."""

    epochs: float = positive(100.0)
    batch_size: int = at_least(64, 2)  # per process
    base_lr: float = positive(0.004)
    lr_scaling: str = "sqrt"  # lr = base_lr * f(global_batch / 1024)
    min_lr: float = at_least(1e-6, 0)
    warmup_epochs: float = at_least(10.0, 0)
    weight_decay: float = at_least(0.04, 0)
    weight_decay_end: float = at_least(0.4, 0)
    teacher_momentum: float = fraction(0.992, open_low=True)
    teacher_momentum_end: float = fraction(1.0, open_low=True)
    clip_grad: float = at_least(3.0, 0)  # 0: no clipping
    layer_decay: float = fraction(0.9, open_low=True)
    patch_embed_lr_mult: float = at_least(0.2, 0)
    freeze_last_layer_epochs: float = at_least(1.0, 0)
    beta1: float = fraction(0.9)
    beta2: float = fraction(0.999)


@dataclass(frozen=True)
class RunConfig:
    """Run control: seed, time budget, logging, checkpoints, evaluation, export."""

    seed: int = at_least(0, 0)
    minutes: Optional[float] = positive(None)  # wall-clock budget for the training steps (schedules fitted to it)
    log_every: int = at_least(10, 1)
    checkpoint_every_steps: int = at_least(500, 1)
    checkpoint_every_minutes: float = at_least(10.0, 0)
    eval_every_steps: int = at_least(0, 0)  # 0: only at the end
    eval_train_subset: int = at_least(10000, 1)  # periodic k-NN uses this many training images ...
    eval_test_subset: int = at_least(2000, 1)  # ... and this many test images
    final_eval_train_limit: Optional[int] = at_least(None, 1)  # None: the final k-NN uses the whole train split ...
    final_eval_test_limit: Optional[int] = at_least(None, 1)  # ... and the whole test split
    threads: Optional[int] = at_least(None, 1)  # torch CPU threads (None: torch's default); 1 is faster on a busy machine
    knn_feature: str = "cls"  # "cls" or "cls+avgpool" (CLS concatenated with the mean patch token)
    num_workers: int = at_least(0, 0)
    shard_cache_gb: float = at_least(1.0, 0)  # shards: decode the whole set once at start-up when it fits in this many GB (0: per batch)
    compile: bool = False  # torch.compile the attention and MLP branches of every block (student and teacher)
    compile_backend: str = "inductor"  # torch.compile backend ("eager"/"aot_eager" only check the tracing)
    export_hf: bool = False
    parallel: str = "ddp"  # under torchrun with 2+ processes: "ddp" (replicated) or "fsdp" (FSDP2 sharding)
    packing: bool = False  # student forward with all crop sizes packed in one sequence per block
    activation_checkpointing: bool = False  # recompute each block's branches in backward (less memory)


@dataclass(frozen=True)
class TrainConfig:
    """Everything one pretraining run needs; ``to_dict``/``from_dict`` round-trip through checkpoints."""

    recipe: str = "dinov2"  # "dino": DINO loss, softmax centring; "dinov2": + iBOT + KoLeo, Sinkhorn
    model: ModelConfig = field(default_factory=ModelConfig)
    crops: CropConfig = field(default_factory=CropConfig)
    head: HeadConfig = field(default_factory=HeadConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    run: RunConfig = field(default_factory=RunConfig)

    @property
    def uses_ibot(self) -> bool:
        return self.recipe == "dinov2" and self.loss.ibot_weight > 0

    @property
    def uses_koleo(self) -> bool:
        return self.recipe == "dinov2" and self.loss.koleo_weight > 0

    def to_dict(self) -> dict[str, Any]:
        """Plain nested dict (tuples become lists) for checkpoints and logs."""
        return OmegaConf.to_container(OmegaConf.structured(self), resolve=True)  # type: ignore[return-value]

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "TrainConfig":
        return _merge(TrainConfig(), OmegaConf.create(data))


# ------------------------------------------------------------------ presets
def _fmnist_tiny() -> TrainConfig:
    """Fashion-MNIST on CPU: 28-px globals, 2 14-px locals, a 4-block 128-d ViT with patch 14, K = 256.

    Measured choices (docs/pretraining.md): a 2 × 2 patch grid learns faster per image than 4 × 4 or
    7 × 7 and costs a quarter of the compute; iBOT is off (``loss.ibot_weight=0``) because masking
    half of a 4-patch crop hides half of the student's image and cost 4 k-NN points; Sinkhorn-Knopp
    centring and KoLeo stay on (the DINOv2 recipe beat DINO's softmax centring by 3 points).
    """
    return TrainConfig(
        recipe="dinov2",
        model=ModelConfig(arch="vit_tiny", patch_size=14, img_size=28, embed_dim=128, depth=4,
                          num_heads=2, layerscale_init=None),
        crops=CropConfig(global_size=28, local_size=14, num_local=2, global_scale=(0.4, 1.0),
                         local_scale=(0.1, 0.4), jitter_prob=0.8, brightness=0.4, contrast=0.4,
                         saturation=0.0, grayscale_prob=0.0, blur_prob_global=(0.5, 0.1),
                         blur_prob_local=0.2, blur_sigma=(0.1, 1.0), solarize_prob=0.2,
                         storage_size=28),
        head=HeadConfig(out_dim=256, hidden_dim=512, bottleneck_dim=128),
        loss=LossConfig(teacher_temp=0.04, warmup_teacher_temp=0.04, warmup_teacher_temp_epochs=0.3,
                        ibot_weight=0.0),
        optim=OptimConfig(epochs=10.0, batch_size=64, base_lr=0.0025, min_lr=1e-5, warmup_epochs=0.2,
                          teacher_momentum=0.95, freeze_last_layer_epochs=0.05, layer_decay=1.0),
        run=RunConfig(minutes=11.0, log_every=10, checkpoint_every_steps=100, eval_every_steps=0,
                      eval_train_subset=10000, eval_test_subset=2000, final_eval_train_limit=None,
                      knn_feature="cls+avgpool"),
    )


def _fmnist_tiny_dino() -> TrainConfig:
    base = _fmnist_tiny()
    return replace(base, recipe="dino", loss=replace(base.loss, centering="softmax"))


def _dino_vits16() -> TrainConfig:
    """DINO v1 ViT-S/16 (DINO Sec. 4 / App.): softmax centring, teacher momentum 0.996 → 1."""
    return TrainConfig(
        recipe="dino",
        model=ModelConfig(arch="vit_small", patch_size=16, img_size=224, drop_path_rate=0.1,
                          layerscale_init=None),
        crops=CropConfig(global_size=224, local_size=96, num_local=8, global_scale=(0.4, 1.0),
                         local_scale=(0.05, 0.4)),
        loss=LossConfig(centering="softmax", teacher_temp=0.04, warmup_teacher_temp=0.04,
                        warmup_teacher_temp_epochs=0.0),
        optim=OptimConfig(epochs=100.0, batch_size=64, base_lr=5e-4 * 4, lr_scaling="linear",
                          warmup_epochs=10.0, teacher_momentum=0.996, clip_grad=3.0, layer_decay=1.0,
                          patch_embed_lr_mult=1.0),
    )


def _dinov2(arch: str, **optim: Any) -> TrainConfig:
    return TrainConfig(
        recipe="dinov2",
        model=ModelConfig(arch=arch, patch_size=14, img_size=518, drop_path_rate=0.3),
        crops=CropConfig(global_size=224, local_size=98),
        optim=replace(OptimConfig(), **optim),
    )


PRESETS = {
    "fmnist-tiny": _fmnist_tiny,
    "fmnist-tiny-dino": _fmnist_tiny_dino,
    "dino-vits16": _dino_vits16,
    "dinov2-vits14": lambda: _dinov2("vit_small"),
    "dinov2-vitl14": lambda: replace(
        _dinov2("vit_large", layer_decay=1.0),
        head=HeadConfig(out_dim=131072, bottleneck_dim=384, separate_ibot_head=True),
    ),
}


# --------------------------------------------------------------- building
def preset(name: str) -> TrainConfig:
    if name not in PRESETS:
        raise ConfigError(f"unknown preset {name!r}; choose one of {', '.join(PRESETS)}")
    return PRESETS[name]()


def build_config(preset_name: str, overrides: list[str] | tuple[str, ...] = ()) -> TrainConfig:
    """The preset with ``section.key=value`` overrides applied, type-checked and validated."""
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override {item!r} is not of the form section.key=value")
    return _merge(preset(preset_name), OmegaConf.from_dotlist(list(overrides)))


def _merge(base: TrainConfig, updates: Any) -> TrainConfig:
    try:
        schema = OmegaConf.structured(base)
        _make_writable(schema)
        config = _lists_to_tuples(OmegaConf.to_object(OmegaConf.merge(schema, updates)))
    except OmegaConfBaseException as error:
        raise ConfigError(_short(error)) from None
    assert isinstance(config, TrainConfig)
    validate(config)
    return config


def _make_writable(node: Any) -> None:
    """Clear the read-only flag that OmegaConf < 2.4 puts on every frozen-dataclass node.

    The dataclasses stay frozen; only the temporary OmegaConf tree must accept the overrides.
    """
    node._set_flag("readonly", None)
    if isinstance(node, DictConfig):
        for key in node:
            _make_writable(node._get_node(key))


def _lists_to_tuples(config: Any) -> Any:
    """Tuple fields come back as lists from OmegaConf < 2.4: restore them (every sequence field is a tuple)."""
    if not is_dataclass(config):
        return tuple(config) if isinstance(config, list) else config
    values = {f.name: _lists_to_tuples(getattr(config, f.name)) for f in fields(config)}
    return replace(config, **values)


def _short(error: OmegaConfBaseException) -> str:
    message = str(error).splitlines()[0]
    key = getattr(error, "full_key", None)
    return f"{message} (key: {key})" if key and key not in message else message


def validate(config: TrainConfig) -> None:
    """Reject values that type-check but make no sense (outside a field's declared range, or not fitting
    together), with a message naming the key."""
    check(config)
    checks = [
        (config.recipe in RECIPES, f"recipe must be one of {RECIPES}, got {config.recipe!r}"),
        (config.loss.centering in ("softmax", "sinkhorn"), "loss.centering must be softmax or sinkhorn"),
        (config.optim.lr_scaling in ("sqrt", "linear"), "optim.lr_scaling must be sqrt or linear"),
        (config.run.knn_feature in ("cls", "cls+avgpool"), "run.knn_feature must be cls or cls+avgpool"),
        (config.run.parallel in ("ddp", "fsdp"), "run.parallel must be ddp or fsdp"),
        (not (config.run.packing and config.run.parallel == "fsdp"),
         "run.packing=true needs run.parallel=ddp (packed blocks bypass the FSDP2 gather hooks)"),
    ]
    for size_key in ("global_size", "local_size"):
        size = getattr(config.crops, size_key)
        if size % config.model.patch_size:
            checks.append((False, f"crops.{size_key}={size} is not a multiple of model.patch_size="
                                  f"{config.model.patch_size}"))
    for scale_key in ("global_scale", "local_scale"):
        low, high = getattr(config.crops, scale_key)
        checks.append((low <= high, f"crops.{scale_key} must satisfy 0 < low <= high <= 1"))
    for ok, message in checks:
        if not ok:
            raise ConfigError(message)

