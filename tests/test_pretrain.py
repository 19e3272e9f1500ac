"""`pretrain train` end to end on tiny models: Fashion-MNIST subset (both recipes), an image folder
with a corrupt file, checkpoint contract, NaN stop, collapse monitor and the exported backbone."""

import json

import numpy as np
import pytest
import torch
from PIL import Image
from pretrain_tiny import TINY_OVERRIDES

from dinolab.pretrain.checkpoints import load_backbone
from dinolab.pretrain.cli import main
from dinolab.pretrain.train.config import build_config
from dinolab.pretrain.train.loop import Trainer, TrainingDiverged
from dinolab.pretrain.train.monitor import CollapseMonitor, collapse_metrics


def _pretrain(tmp_path, *extra):
    return main(["train", "--data", "fashion-mnist", "--limit", "256", "--out", str(tmp_path / "run"),
                 "--no-progress", *extra, *TINY_OVERRIDES])


@pytest.mark.parametrize("recipe", ["dino", "dinov2"])
def test_pretrain_fashion_mnist_subset(tmp_path, capsys, recipe):
    assert _pretrain(tmp_path, "--recipe", recipe) == 0
    out = capsys.readouterr().out
    assert f"{recipe} recipe" in out and "k-NN on the test split: k=10 top-1" in out
    # no terminal: one plain line per report (8 steps, a report every 2), no carriage-return bar
    steps = [line.split(":")[0] for line in out.splitlines() if line.startswith("pretrain step")]
    assert steps == [f"pretrain step {s}/8" for s in (2, 4, 6, 8)] and "\r" not in out
    run = tmp_path / "run"
    records = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
    train = [r for r in records if r["kind"] == "train"]
    assert [r["step"] for r in train] == [2, 4, 6, 8]
    expected_terms = {"dino", "total"} | ({"ibot", "koleo"} if recipe == "dinov2" else set())
    assert expected_terms <= set(train[0]) and not ({"ibot", "koleo"} - expected_terms) & set(train[0])
    assert all(np.isfinite(r["total"]) for r in train)
    for key in ("teacher_entropy", "teacher_kl_uniform", "feature_std", "lr", "images_per_second"):
        assert key in train[-1]
    assert {r["kind"] for r in records} >= {"knn_periodic", "knn_final"}
    assert any(path.name.startswith("events.out.tfevents") for path in (run / "tensorboard").iterdir())

    # the checkpoint contract: plain types only, loadable with weights_only=True
    state = torch.load(run / "checkpoint.pth", weights_only=True)
    assert state["dinolab"]["kind"] == "pretrain" and state["dinolab"]["version"] == 1
    assert state["dinolab"]["config"]["recipe"] == recipe and state["step"] == 8
    assert state["dinolab"]["arch"]["embed_dim"] == 32
    assert {k.split(".")[0] for k in state["teacher"]} == {"backbone", "dino_head"}
    assert state["teacher"].keys() == state["student"].keys()
    assert state["data_position"] == {"epoch": 1, "batch": 0}
    assert state["dino_center"].shape == (1, 64)
    if recipe == "dino":  # softmax centring moved the centre; Sinkhorn does not use it
        assert state["dino_center"].abs().sum() > 0

    # the exported teacher backbone equals the checkpoint's teacher and loads through pretrain.checkpoints
    for backbone in (load_backbone(run / "teacher_backbone.safetensors"),
                     load_backbone(run / "teacher_backbone.pth", num_heads=2)):
        assert backbone.patch_size == 7 and backbone.embed_dim == 32
        for key, value in backbone.state_dict().items():
            torch.testing.assert_close(value, state["teacher"][f"backbone.{key}"], rtol=0, atol=0)


def test_pretrain_folder_with_a_corrupt_file(tmp_path, capsys):
    folder = tmp_path / "images"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for index in range(39):  # + 1 corrupt file = 40 = 5 batches of 8, so every file is read
        size = (int(rng.integers(30, 60)), int(rng.integers(30, 60)))
        mode = "L" if index % 5 == 0 else "RGB"
        shape = size[::-1] if mode == "L" else (*size[::-1], 3)
        Image.fromarray(rng.integers(0, 255, shape, dtype=np.uint8), mode).save(folder / f"{index:02d}.png")
    (folder / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    code = main(["train", "--data", str(folder), "--out", str(tmp_path / "run"), "--no-progress",
                 *TINY_OVERRIDES, "optim.batch_size=8", "optim.epochs=2"])
    out = capsys.readouterr().out
    assert code == 0
    assert "skipped 1 unreadable image(s): broken.jpg" in out
    assert "k-NN" not in out  # no labelled validation set for a plain folder
    assert torch.load(tmp_path / "run" / "checkpoint.pth", weights_only=True)["step"] == 10


def test_pretrain_clear_errors(tmp_path, capsys):
    assert main(["train", "--data", str(tmp_path / "missing"), "--out", str(tmp_path / "o")]) == 2
    assert "no such folder or file list" in capsys.readouterr().err
    (tmp_path / "empty").mkdir()
    assert main(["train", "--data", str(tmp_path / "empty"), "--out", str(tmp_path / "o")]) == 2
    assert "holds no images" in capsys.readouterr().err
    assert main(["train", "--data", "fashion-mnist", "--out", str(tmp_path / "o"), "optim.lr=3"]) == 2
    assert "Key 'lr' not in 'OptimConfig'" in capsys.readouterr().err


def test_nan_loss_stops_and_keeps_last_good_checkpoint(tmp_path):
    config = build_config("fmnist-tiny", TINY_OVERRIDES)

    def inject_nan(step, output):
        if step == 6:
            output.losses["total"] = output.losses["total"] * float("nan")

    trainer = Trainer(config, "fashion-mnist", tmp_path, data_limit=256, evaluate=False, progress=False,
                      step_hook=inject_nan)
    with pytest.raises(TrainingDiverged, match="loss is not finite at step 6"):
        trainer.run()
    state = torch.load(tmp_path / "checkpoint.pth", weights_only=True)
    assert state["step"] == 4
    assert all(torch.isfinite(v).all() for v in state["teacher"].values())


def test_huge_learning_rate_stops_with_message(tmp_path, capsys):
    code = _pretrain(tmp_path, "optim.base_lr=1e30", "optim.clip_grad=0", "run.checkpoint_every_steps=1")
    out = capsys.readouterr().out
    assert code == 3 and "stopped:" in out and "not finite" in out and "Lower optim.base_lr" in out
    # the very first update already overflowed, so no checkpoint holding those weights was written
    assert not (tmp_path / "run" / "checkpoint.pth").exists()


def test_collapse_monitor_warns_on_collapsed_outputs_only():
    monitor = CollapseMonitor()
    torch.manual_seed(0)
    healthy_probs = torch.softmax(torch.randn(64, 128) * 5, dim=1)
    healthy = collapse_metrics(healthy_probs, torch.randn(64, 32))
    assert monitor.check(healthy) is None

    one_prototype = torch.zeros(64, 128)
    one_prototype[:, 3] = 1.0
    same_features = torch.ones(64, 32) + 1e-4 * torch.randn(64, 32)
    collapsed = collapse_metrics(one_prototype, same_features)
    assert collapsed["teacher_kl_uniform"] == pytest.approx(np.log(128), rel=1e-4)
    assert collapsed["feature_std"] < 0.01
    warning = monitor.check(collapsed)
    assert warning is not None
    assert "one prototype dominates" in warning and "collapsed features" in warning
    assert "lower teacher temperature" in warning and "teacher momentum" in warning

    uniform = collapse_metrics(torch.full((64, 128), 1 / 128), torch.randn(64, 32))
    assert uniform["teacher_entropy"] == pytest.approx(np.log(128), rel=1e-4)
    assert "uniform outputs" in monitor.check(uniform)


def test_resume_from_a_corrupt_checkpoint_is_a_clear_error(tmp_path, capsys):
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "checkpoint.pth").write_bytes(b"not a checkpoint")
    assert _pretrain(tmp_path, "--resume") == 2
    assert "not a readable checkpoint" in capsys.readouterr().err
    assert (tmp_path / "run" / "checkpoint.pth").read_bytes() == b"not a checkpoint"  # nothing lost
