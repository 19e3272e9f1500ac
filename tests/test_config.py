"""One config layer (core.config): the pipeline's and pretraining's configs declare ranges the same way and
refuse a value outside them with the same ConfigError, naming the key."""

import dataclasses
import typing
from dataclasses import dataclass

import pytest

from dinolab.core import config as core_config
from dinolab.core.config import ConfigError, at_least, build, check, fraction, one_of
from dinolab.pretrain.train.config import TrainConfig, build_config
from dinolab.schemas.config import PipelineConfig, load_config


@dataclass(frozen=True)
class Section:
    k: int = at_least(4, 1)
    threshold: float = fraction(0.6, open_low=True)
    index: str = one_of("auto", "flat")
    sizes: tuple[float, float] = fraction((0.1, 0.5))


@dataclass(frozen=True)
class Whole:
    dedup: Section = dataclasses.field(default_factory=Section)


@pytest.mark.parametrize("data, message", [
    ({"dedup": {"threshold": -0.1}}, r"dedup.threshold=-0.1: must be in \(0, 1\]"),
    ({"dedup": {"threshold": 1.5}}, r"dedup.threshold=1.5: must be in \(0, 1\]"),
    ({"dedup": {"k": 0}}, "dedup.k=0: must be >= 1"),
    ({"dedup": {"k": "many"}}, "dedup.k='many': expected an integer"),
    ({"dedup": {"index": "ivf"}}, "dedup.index='ivf': choose one of auto, flat"),
    ({"dedup": {"sizes": [0.1, 2]}}, r"dedup.sizes=\[0.1, 2.0\]: must be in \[0, 1\] \(each item\)"),
    ({"dedup": {"nope": 1}}, "unknown config key dedup.nope"),
    ({"nope": {}}, "unknown config section 'nope'"),
    ({"dedup": 3}, "section 'dedup' must be a mapping"),
])
def test_build_types_and_checks_with_the_key_named(data, message):
    with pytest.raises(ConfigError, match=message):
        build(Whole, data)


def test_valid_data_builds_a_frozen_config():
    built = build(Whole, {"dedup": {"threshold": 1, "sizes": [0, 1]}})
    assert built == Whole(Section(threshold=1.0, sizes=(0.0, 1.0)))
    check(Whole())  # the defaults are in range


@pytest.mark.parametrize("override", ["dedup.threshold=-0.5", "dedup.threshold=1.01"])
def test_the_pipeline_refuses_a_threshold_outside_0_1_with_the_shared_error(override):
    with pytest.raises(core_config.ConfigError, match=r"dedup.threshold=.*: must be in \(0, 1\]"):
        load_config(None, [override])


@pytest.mark.parametrize("override, message", [
    ("optim.base_lr=-0.001", r"optim.base_lr=-0.001: must be > 0"),
    ("optim.batch_size=0", r"optim.batch_size=0: must be >= 2"),
    ("loss.mask_probability=1.5", r"loss.mask_probability=1.5: must be in \[0, 1\]"),
    ("optim.teacher_momentum=-0.1", r"optim.teacher_momentum=-0.1: must be in \(0, 1\]"),
    ("crops.flip_prob=2", r"crops.flip_prob=2.0: must be in \[0, 1\]"),
    ("run.threads=0", r"run.threads=0: must be >= 1"),
    ("loss.mask_ratio=[0.1,1.5]", r"loss.mask_ratio=\[0.1, 1.5\]: must be in \[0, 1\] \(each item\)"),
])
def test_pretraining_refuses_out_of_range_numbers_with_the_shared_error(override, message):
    with pytest.raises(core_config.ConfigError, match=message):
        build_config("fmnist-tiny", [override])


def test_pretraining_keeps_none_where_a_number_is_optional():
    assert build_config("fmnist-tiny", ["run.minutes=null", "run.threads=null"]).run.minutes is None


def _numeric(hint) -> bool:
    args = [a for a in typing.get_args(hint) if a is not type(None)]
    if typing.get_origin(hint) is typing.Union:
        return len(args) == 1 and _numeric(args[0])
    return hint in (int, float) or (typing.get_origin(hint) is tuple and typing.get_args(hint)[0] in (int, float))


@pytest.mark.parametrize("root", [TrainConfig, PipelineConfig])
def test_every_number_of_both_configs_declares_its_range(root):
    missing = []
    for section in dataclasses.fields(root):
        hints = typing.get_type_hints(root)
        if not dataclasses.is_dataclass(hints[section.name]):
            continue
        section_hints = typing.get_type_hints(hints[section.name])
        missing += [f"{section.name}.{item.name}" for item in dataclasses.fields(hints[section.name])
                    if _numeric(section_hints[item.name]) and "range" not in item.metadata]
    assert missing == []
    check(root())


def test_one_error_type_for_both():
    from dinolab.pretrain.train import config as train_config
    from dinolab.schemas import config as pipeline_config

    assert train_config.ConfigError is pipeline_config.ConfigError is core_config.ConfigError
