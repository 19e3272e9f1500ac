"""Training configuration: presets, typed overrides, clear errors, round trip through plain dicts."""

import dataclasses

import pytest

from dinolab.pretrain.train.config import PRESETS, ConfigError, TrainConfig, build_config


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_every_preset_builds_and_round_trips(name):
    config = build_config(name)
    assert TrainConfig.from_dict(config.to_dict()) == config


def test_overrides_are_typed_and_nested():
    config = build_config("fmnist-tiny", ["optim.epochs=2", "recipe=dino", "crops.global_scale=[0.5,1.0]",
                                          "run.minutes=null", "head.out_dim=256"])
    assert config.optim.epochs == 2.0 and isinstance(config.optim.epochs, float)
    assert config.recipe == "dino" and config.crops.global_scale == (0.5, 1.0)
    assert config.run.minutes is None and config.head.out_dim == 256
    assert not config.uses_ibot and not config.uses_koleo


def test_recipes_differ_in_losses_and_centring():
    dinov2, dino = build_config("fmnist-tiny"), build_config("fmnist-tiny-dino")
    assert dinov2.uses_koleo and dinov2.loss.centering == "sinkhorn"
    assert not dino.uses_ibot and not dino.uses_koleo and dino.loss.centering == "softmax"
    # iBOT is part of the DINOv2 recipe; the 28-px preset turns it off (a 2 x 2 patch grid, see its docstring)
    assert build_config("dinov2-vits14").uses_ibot and not dinov2.uses_ibot
    assert build_config("fmnist-tiny", ["loss.ibot_weight=1"]).uses_ibot


def test_config_is_frozen():
    config = build_config("fmnist-tiny")
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.optim.base_lr = 1.0  # type: ignore[misc]


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["optim.lr=1"], "Key 'lr' not in 'OptimConfig'"),
        (["optim.epochs=abc"], "could not be converted"),
        (["recipe=byol"], "recipe must be one of"),
        (["epochs"], "not of the form"),
        (["model.patch_size=5"], "not a multiple of model.patch_size"),
        (["crops.local_scale=[0.5,0.1]"], "crops.local_scale"),
        (["optim.batch_size=1"], "batch_size"),
        (["nosuchsection.x=1"], "nosuchsection"),
    ],
)
def test_bad_overrides_give_clear_errors(overrides, message):
    with pytest.raises(ConfigError, match=message):
        build_config("fmnist-tiny", overrides)


def test_unknown_preset():
    with pytest.raises(ConfigError, match="unknown preset 'nope'; choose one of fmnist-tiny"):
        build_config("nope")
