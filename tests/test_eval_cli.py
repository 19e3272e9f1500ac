"""`features knn`, `linear` and `finetune` end to end on a tiny saved model and tiny data."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from dinolab.features.cli import main
from dinolab.pretrain.data.fashion_mnist import DatasetFilesError, split_files
from dinolab.pretrain.models import build_vit


@pytest.fixture(autouse=True)
def _only_evaluation_commands(monkeypatch):
    """Parse with the commands under test only, so an unrelated broken subcommand cannot interfere."""
    import dinolab.features.cli

    monkeypatch.setattr(dinolab.features.cli, "SUBCOMMAND_MODULES", ("dinolab.features.cli.knn", "dinolab.features.cli.linear", "dinolab.features.cli.finetune"))


def _fashion_mnist_available() -> bool:
    try:
        split_files("train"), split_files("test")
    except DatasetFilesError:
        return False
    return True


@pytest.fixture(scope="module")
def weights(tmp_path_factory) -> Path:
    from dinolab.pretrain.checkpoints import save_backbone

    torch.manual_seed(0)
    # LayerScale 1 (as in the released models): with the 1e-5 training init a random CLS ignores the image.
    model = build_vit("vit_pico", patch_size=7, img_size=28, layerscale_init=1.0)
    path = tmp_path_factory.mktemp("model") / "pico.safetensors"
    save_backbone(model, path, fmt="safetensors")
    return path


def _write_class_folder(root: Path, classes: dict[str, tuple[int, int, int]], per_class: int, seed: int) -> None:
    """Images of each class share a base colour; noise makes every file different."""
    rng = np.random.default_rng(seed)
    for name, colour in classes.items():
        (root / name).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            pixels = np.clip(np.array(colour) + rng.normal(0, 20, (32, 32, 3)), 0, 255).astype(np.uint8)
            Image.fromarray(pixels).save(root / name / f"{i}.png")


COLOURS = {"blue": (20, 40, 220), "red": (220, 30, 30), "yellow": (230, 220, 40)}


@pytest.fixture(scope="module")
def folders(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("folders")
    _write_class_folder(root / "train", COLOURS, 8, seed=0)
    _write_class_folder(root / "val", {"red": COLOURS["red"], "yellow": COLOURS["yellow"]}, 4, seed=1)
    (root / "train" / "red" / "broken.jpg").write_text("not an image")
    return root


def _common(weights, cache) -> list[str]:
    return ["--weights", str(weights), "--size", "28", "--batch-size", "16", "--cache-dir", str(cache)]


@pytest.mark.skipif(not _fashion_mnist_available(), reason="Fashion-MNIST files not installed")
def test_knn_fashion_mnist_matches_python_api_and_uses_cache(weights, tmp_path, capsys):
    from dinolab.pretrain.checkpoints import load_backbone
    from dinolab.pretrain.data import eval_transform, load_fashion_mnist
    from dinolab.pretrain.train.knn import knn_accuracy

    out = tmp_path / "knn.json"
    argv = ["knn", *_common(weights, tmp_path / "cache"), "--train", "fashion-mnist", "--val", "fashion-mnist",
            "--train-limit", "300", "--val-limit", "60", "-k", "5", "20", "--json", str(out)]  # fmt: skip
    assert main(argv) == 0
    first = json.loads(out.read_text())
    assert first["num_train"] == 300 and first["num_val"] == 60
    assert "cached" not in capsys.readouterr().err
    assert main(argv) == 0
    assert capsys.readouterr().err.count("cached features") == 2  # second run: no extraction
    assert json.loads(out.read_text())["results"] == first["results"]

    model = load_backbone(str(weights))
    transform = eval_transform(model.preprocessing, size=28, patch_size=7)  # the CLI's --size 28

    def embed(split, limit):
        images, labels = load_fashion_mnist(split, limit=limit)
        with torch.no_grad():
            return model(transform(images.unsqueeze(1).expand(-1, 3, -1, -1))), labels

    (train_x, train_y), (val_x, val_y) = embed("train", 300), embed("test", 60)
    expected = knn_accuracy(train_x, train_y, val_x, val_y, ks=(5, 20))
    for k in (5, 20):
        assert first["results"][str(k)]["top1"] == pytest.approx(expected[k]["top1"], abs=1e-6)


def test_knn_image_folders_with_skipped_file_and_class_alignment(weights, folders, tmp_path, capsys):
    from dinolab.pretrain.checkpoints import load_backbone, save_backbone

    released = save_backbone(load_backbone(str(weights)), tmp_path / "released.pth", fmt="hub")  # hub layout
    out = tmp_path / "knn.json"
    argv = ["knn", *_common(released, tmp_path / "cache"), "--train", str(folders / "train"),
            "--val", str(folders / "val"), "-k", "3", "--retrieval", "--json", str(out)]  # fmt: skip
    assert main(argv) == 0
    assert "skipped 1 unreadable images (red/broken.jpg" in capsys.readouterr().err
    result = json.loads(out.read_text())
    assert result["num_train"] == 24 and result["num_val"] == 8
    # val has only red/yellow (indices 0, 1 there, 1, 2 in train): right only if labels were re-indexed
    assert result["results"]["3"]["top1"] == 100.0
    assert result["retrieval"]["recall@1"] == 100.0 and result["retrieval"]["queries"] == 8


def test_linear_sgd_and_logreg_on_folders(weights, folders, tmp_path):
    for method in ("sgd", "logreg"):
        out = tmp_path / f"{method}.json"
        argv = ["linear", *_common(weights, tmp_path / "cache"), "--train", str(folders / "train"),
                "--val", str(folders / "val"), "--method", method, "--epochs", "10", "--probe-batch-size", "8",
                "--val-fraction", "0.25", "--lrs", "1e-6", "0.01", "0.1", "--c-grid", "1", "--json", str(out)]  # fmt: skip
        assert main(argv) == 0
        result = json.loads(out.read_text())
        assert result["test_top1"] == 100.0, result
        if method == "sgd":  # vit_pico has 2 blocks: the 4-block variants are dropped
            assert set(result["val_grid"]) == {"cls1", "cls1+avg"}
            assert len(result["val_grid"]["cls1"]) == 3 and result["best_lr"] > 1e-6


def test_bad_inputs_are_one_line_errors(weights, folders, tmp_path, capsys):
    from dinolab.features.store import Features, save_features

    empty = tmp_path / "empty"
    empty.mkdir()
    unlabelled = tmp_path / "flat"
    unlabelled.mkdir()
    Image.new("RGB", (32, 32)).save(unlabelled / "a.png")
    base = ["knn", *_common(weights, tmp_path / "cache")]
    cases = {
        "holds no images": base + ["--train", str(empty), "--val", str(folders / "val")],
        "no label": base + ["--train", str(unlabelled), "--val", str(folders / "val")],
        "do not exist in the training data": base + ["--train", str(folders / "val"), "--val", str(folders / "train")],
        "cannot load --weights": ["knn", "--weights", str(folders / "train" / "red" / "0.png"),
                                  "--train", str(folders / "train"), "--val", str(folders / "val")],
    }  # fmt: skip
    labelled = Features(torch.randn(4, 8), list("abcd"), labels=torch.tensor([0, 1, 0, 1]))
    save_features(tmp_path / "a.safetensors", labelled)
    save_features(tmp_path / "b.safetensors", Features(torch.randn(4, 6), list("abcd"), labels=torch.tensor([0, 1, 0, 1])))
    save_features(tmp_path / "c.safetensors", Features(torch.randn(4, 8), list("abcd")))
    features = ["knn", "--train-features", str(tmp_path / "a.safetensors"), "--val-features"]
    cases["different dims"] = features + [str(tmp_path / "b.safetensors")]
    cases["labels are missing"] = features + [str(tmp_path / "c.safetensors")]
    for message, argv in cases.items():
        assert main(argv) == 2, message
        err = capsys.readouterr().err
        assert message in err and err.count("\n") == 1, err
    assert main(features + [str(tmp_path / "a.safetensors"), "-k", "1"]) == 0  # feature files work


def test_finetune_cli_saves_a_loadable_backbone(weights, folders, tmp_path, capsys):
    from dinolab.pretrain.checkpoints import load_backbone

    out = tmp_path / "ft"
    argv = ["finetune", *_common(weights, tmp_path / "cache")[:-2], "--train", str(folders / "train"),
            "--val", str(folders / "val"), "--epochs", "2", "--batch-size", "8", "--lr", "1e-3", "--out", str(out)]  # fmt: skip
    assert main(argv) == 0
    result = json.loads((out / "result.json").read_text())
    assert result["classes"] == ["blue", "red", "yellow"] and 0.0 <= result["val_top1"] <= 100.0
    tuned, original = load_backbone(str(out / "backbone.safetensors")), load_backbone(str(weights))
    assert tuned.config == original.config
    assert not torch.equal(tuned.blocks[0].attn.qkv.weight, original.blocks[0].attn.qkv.weight)
    assert "skipped" not in capsys.readouterr().out


def test_pretrain_checkpoint_has_the_same_features_as_its_exported_weights(weights, folders, tmp_path, capsys):
    """A `pretrain train` checkpoint (teacher backbone inside) and a safetensors export of the same
    weights share one cache entry: the cache key hashes the weights, not the file."""
    from dinolab.pretrain.checkpoints import load_backbone
    from dinolab.pretrain.train.checkpoint import save_atomic

    model = load_backbone(str(weights))
    teacher = {f"backbone.{key}": value for key, value in model.state_dict().items()}
    checkpoint = save_atomic(
        {"dinolab": {"kind": "pretrain", "arch": model.config.to_dict()}, "teacher": teacher},
        tmp_path / "checkpoint.pth",
    )
    data = ["--train", str(folders / "train"), "--val", str(folders / "val"), "-k", "3"]
    assert main(["knn", *_common(weights, tmp_path / "cache"), *data]) == 0
    first = capsys.readouterr()
    assert main(["knn", *_common(checkpoint, tmp_path / "cache"), *data]) == 0
    second = capsys.readouterr()
    assert second.err.count("cached features") == 2
    assert second.out == first.out


@pytest.mark.parametrize("command", ["knn", "linear", "finetune", "index", "search", "visualize", "segment", "probe",
                                     "extract"])
def test_pretrain_names_the_features_command_for_a_moved_subcommand(command, capsys):
    from dinolab.pretrain.cli import main as pretrain_main

    assert pretrain_main([command, "--weights", "w.pth"]) == 2
    assert capsys.readouterr().err.strip() == (
        f"pretrain {command}: error: moved to the features command: run `features {command} ...`")


def test_features_command_runs_as_a_module():
    import subprocess
    import sys

    result = subprocess.run([sys.executable, "-m", "dinolab.features", "--help"], capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("usage: features ")
    for command in ("knn", "linear", "finetune", "index", "search", "visualize", "segment", "probe", "extract"):
        assert command in result.stdout
