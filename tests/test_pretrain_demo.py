"""`pretrain demo` end to end with a tiny model and a few steps: table, summary, picture, backbone."""

import json

from pretrain_tiny import TINY_OVERRIDES

from dinolab.pretrain.checkpoints import load_backbone
from dinolab.pretrain.cli import main


def test_demo_runs_and_reports_against_raw_pixels(tmp_path, capsys):
    out = tmp_path / "demo"
    code = main(["demo", "--out", str(out), "--epochs", "0.005", "--no-progress", "--threads", "1",
                 *TINY_OVERRIDES, "optim.epochs=0.005"])
    printed = capsys.readouterr().out
    assert code == 0
    assert "raw-pixel k-NN on the test split: k=10 top-1" in printed
    assert "pretrained dinov2 ViT (cls+avgpool)" in printed or "pretrained dinov2 ViT (cls)" in printed
    summary = json.loads((out / "summary.json").read_text())
    assert summary["steps"] == 10  # 0.005 epochs of 60000 / 32 = 1875 steps, rounded up
    for table in ("knn_pretrained", "knn_raw_pixels"):
        assert set(summary[table]) == {"10", "20"}
        assert 0 <= summary[table]["20"]["top1"] <= 100
    assert (out / "embeddings.png").stat().st_size > 10_000
    assert load_backbone(out / "teacher_backbone.safetensors").embed_dim == 32


def test_demo_rejects_bad_options(tmp_path, capsys):
    assert main(["demo", "--out", str(tmp_path), "--minutes", "0"]) == 2
    assert "--minutes must be positive" in capsys.readouterr().err
    assert main(["demo", "--out", str(tmp_path), "optim.nope=1"]) == 2
    assert "nope" in capsys.readouterr().err
