"""High-resolution adaptation phase: starts from an earlier checkpoint's weights (not its optimiser
or step), trains at the larger crops, and resumes exactly after an interruption."""

import pytest
import torch
from pretrain_tiny import TINY_OVERRIDES

from dinolab.pretrain.cli import main
from dinolab.pretrain.train.checkpoint import TrainingCheckpointError
from dinolab.pretrain.train.config import build_config
from dinolab.pretrain.train.loop import Trainer
from dinolab.pretrain.train.phases import high_res_config

# 32 images, batch 16: 2 steps per epoch; the base run takes 2 steps, the phase 3.
BASE = [*TINY_OVERRIDES, "optim.batch_size=16", "run.eval_every_steps=0", "run.checkpoint_every_steps=2"]
PHASE = [*BASE, "optim.epochs=1.5"]


class Interrupt(RuntimeError):
    pass


def _trainer(out, overrides, **options):
    config = build_config("fmnist-tiny", overrides)
    return Trainer(config, "fashion-mnist", out, data_limit=32, evaluate=False, progress=False, **options)


@pytest.fixture(autouse=True)
def one_thread():
    """One thread (after conftest's two): tiny models run faster without thread contention."""
    torch.set_num_threads(1)


@pytest.fixture(scope="module")
def base_run(tmp_path_factory):
    torch.set_num_threads(1)
    out = tmp_path_factory.mktemp("base")
    _trainer(out, BASE).run()
    return out


def test_high_res_config_sizes():
    config = build_config("fmnist-tiny", TINY_OVERRIDES)
    high = high_res_config(config)
    assert (high.crops.global_size, high.crops.local_size, high.crops.storage_size) == (56, 28, 56)
    vits14 = high_res_config(build_config("dinov2-vits14"))
    assert (vits14.crops.global_size, vits14.crops.local_size) == (518, 224)  # 98 * 518/224 = 226.6 -> 16*14
    vits16 = high_res_config(build_config("dino-vits16"))
    assert (vits16.crops.global_size, vits16.crops.local_size) == (512, 224)  # 96 * 512/224 = 219.4 -> 14*16
    assert high_res_config(config, 42).crops.global_size == 42


def test_phase_starts_from_checkpoint_weights_not_its_step(base_run, tmp_path):
    saved = torch.load(base_run / "checkpoint.pth", weights_only=True)
    config = high_res_config(build_config("fmnist-tiny", PHASE))
    trainer = Trainer(config, "fashion-mnist", tmp_path, data_limit=32, evaluate=False, progress=False,
                      init_from=base_run)
    assert trainer.step == 0 and trainer.total_steps == 3
    assert all(not state for state in trainer.optimizer.state.values())  # a fresh optimiser
    for part in ("student", "teacher"):
        current = getattr(trainer.model, part).state_dict()
        for key, value in saved[part].items():
            assert torch.equal(current[key], value), f"{part}.{key}"
    images = next(trainer.data.batches(0))
    assert images.shape[-2:] == (56, 56)  # stored at the phase's size
    crops, _ = trainer._crops_and_masks(images, 0)
    assert crops.global_crops.shape[-2:] == (56, 56) and crops.local_crops.shape[-2:] == (28, 28)
    # the position table keeps its size (interpolated at forward time), so the weights fit unchanged
    assert trainer.model.student["backbone"].pos_embed.shape == saved["student"]["backbone.pos_embed"].shape


def test_phase_resumes_exactly(base_run, tmp_path):
    config = high_res_config(build_config("fmnist-tiny", PHASE))

    def run(out, **options):
        return Trainer(config, "fashion-mnist", out, data_limit=32, evaluate=False, progress=False,
                       init_from=base_run, **options)

    reference = run(tmp_path / "reference")
    reference.run()

    def stop_at_step_2(step, output):
        if step == 2:
            raise Interrupt

    with pytest.raises(Interrupt):
        run(tmp_path / "phase", step_hook=stop_at_step_2).run()
    resumed = run(tmp_path / "phase", resume=True)
    assert resumed.step == 2  # the phase's own checkpoint wins over --init-from
    resumed.run()
    expected = torch.load(tmp_path / "reference" / "checkpoint.pth", weights_only=True)
    actual = torch.load(tmp_path / "phase" / "checkpoint.pth", weights_only=True)
    assert actual["step"] == expected["step"] == 3
    assert actual["dinolab"]["config"]["crops"]["global_size"] == 56
    for part in ("teacher", "student"):
        for key, value in expected[part].items():
            torch.testing.assert_close(actual[part][key], value, rtol=0, atol=1e-6, msg=f"{part}.{key}")
    base = torch.load(base_run / "checkpoint.pth", weights_only=True)
    assert not torch.equal(actual["teacher"]["backbone.blocks.0.attn.qkv.weight"],
                           base["teacher"]["backbone.blocks.0.attn.qkv.weight"])  # the phase trained


def test_init_from_checkpoint_of_another_model_is_refused(base_run, tmp_path):
    with pytest.raises(TrainingCheckpointError, match="do not fit"):
        _trainer(tmp_path, [*PHASE, "model.embed_dim=16"], init_from=base_run)


def test_cli_high_res_phase(base_run, tmp_path, capsys):
    command = ["train", "--data", "fashion-mnist", "--limit", "32", "--out", str(tmp_path), "--no-eval",
               "--no-progress", "--init-from", str(base_run), "--high-res", *BASE]
    assert main(command) == 0
    assert "global crops 56 px" in capsys.readouterr().out
    saved = torch.load(tmp_path / "checkpoint.pth", weights_only=True)
    assert saved["step"] == 2 and saved["dinolab"]["config"]["crops"]["local_size"] == 28
    assert main([*command, "--high-res-size", "42"]) == 0  # no --resume: a new phase from --init-from
    assert torch.load(tmp_path / "checkpoint.pth", weights_only=True)["dinolab"]["config"]["crops"]["global_size"] == 42
    assert main([arg for arg in command if arg not in ("--init-from", str(base_run))]) == 2
    assert "--init-from" in capsys.readouterr().err


def test_phase_from_a_headless_backbone_file(base_run, tmp_path):
    """A backbone without heads (as released checkpoints ship): both backbones start from it, the heads
    start from scratch; then the phase trains."""
    from dinolab.pretrain.checkpoints import save_backbone
    from dinolab.pretrain.train.ssl_model import build_backbone

    config = build_config("fmnist-tiny", PHASE)
    backbone = build_backbone(config)
    path = save_backbone(backbone, tmp_path / "released.safetensors", fmt="safetensors")
    trainer = Trainer(config, "fashion-mnist", tmp_path / "run", data_limit=32, evaluate=False, progress=False,
                      init_from=path)
    for network in (trainer.model.student, trainer.model.teacher):
        for key, value in backbone.state_dict().items():
            assert torch.equal(network["backbone"].state_dict()[key], value), key
    trainer.run()
    with pytest.raises(TrainingCheckpointError, match="does not fit"):
        _trainer(tmp_path / "other", [*PHASE, "model.embed_dim=16"], init_from=path)
