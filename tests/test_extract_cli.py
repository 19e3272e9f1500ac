"""``features extract`` end to end on a tiny random backbone: odd images skipped, never a crash."""

import argparse
import gzip
import struct

import numpy as np
import pytest
import torch
from PIL import Image

from dinolab.features.cli import UserError
from dinolab.features.cli import extract as extract_cli
from dinolab.features import load_features

PICO = ["--arch", "vit_pico", "--patch-size", "4", "--size", "28", "--resize-size", "28", "--quiet"]


def run_cli(argv):
    """Parse and run like ``features.cli.main`` does (exit 2 and one line on a user error)."""
    parser = argparse.ArgumentParser(prog="features")
    extract_cli.add_parser(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["extract", *argv])
    try:
        return args.func(args)
    except UserError as error:
        print(f"features extract: error: {error}")
        return 2


def _odd_folder(root):
    root.mkdir(exist_ok=True)
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 256, (40, 50, 3), dtype=np.uint8)).save(root / "good.jpg")
    Image.fromarray(rng.integers(0, 65536, (30, 30), dtype=np.uint16)).save(root / "deep16.png")
    Image.fromarray(rng.integers(0, 256, (32, 32), dtype=np.uint8)).save(root / "gray.png")
    Image.new("RGBA", (33, 31), (0, 128, 255, 100)).save(root / "alpha.png")
    Image.new("RGB", (2, 2)).save(root / "tiny.png")
    (root / "notes.jpg").write_text("plain text with an image suffix")
    jpeg = (root / "good.jpg").read_bytes()
    (root / "cut.JPG").write_bytes(jpeg[: len(jpeg) // 3])
    return root


def test_folder_with_odd_files_skips_and_counts(tmp_path, capsys):
    images = _odd_folder(tmp_path / "imgs")
    out = tmp_path / "feats.safetensors"
    assert run_cli([*PICO, "--images", str(images), "--out", str(out), "--patch-mean", "--batch-size", "2"]) == 0
    err = capsys.readouterr().err
    assert "skipped 3 unreadable images" in err and "notes.jpg" in err and "tiny.png" in err and "cut.JPG" in err
    features = load_features(out)
    assert features.names == ["alpha.png", "deep16.png", "good.jpg", "gray.png"]
    assert sorted(name for name, _ in features.skipped) == ["cut.JPG", "notes.jpg", "tiny.png"]
    assert features.cls.shape == features.patch_mean.shape == (4, 64) and torch.isfinite(features.cls).all()
    assert features.labels is None
    assert features.info["model"]["arch"] == "vit_pico" and features.info["model"]["config"]["patch_size"] == 4
    assert features.info["preprocessing"]["input_size"] == 28


def test_fashion_mnist_folder_argument_and_limit(tmp_path):
    images = np.random.default_rng(1).integers(0, 256, (6, 28, 28)).astype(np.uint8)
    labels = np.array([1, 2, 3, 4, 5, 6], dtype=np.uint8)
    for name, array in (("t10k-images-idx3-ubyte.gz", images), ("t10k-labels-idx1-ubyte.gz", labels)):
        with gzip.open(tmp_path / name, "wb") as handle:
            handle.write(bytes([0, 0, 8, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape) + array.tobytes())
    out = tmp_path / "fm.safetensors"
    argv = [*PICO, "--images", "fashion-mnist", "--split", "test", "--fashion-mnist-dir", str(tmp_path)]
    assert run_cli([*argv, "--limit", "4", "--out", str(out)]) == 0
    features = load_features(out)
    assert features.names == ["test/0", "test/1", "test/2", "test/3"] and features.labels.tolist() == [1, 2, 3, 4]
    assert features.info["dataset"]["classes"][1] == "Trouser"


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--size", "30"], "not a multiple of the patch size 4"),
        (["--batch-size", "0"], "--batch-size must be a positive integer"),
        (["--device", "quantum"], "unknown --device"),
    ],
)
def test_bad_options_are_user_errors(tmp_path, capsys, extra, message):
    images = _odd_folder(tmp_path)
    assert run_cli([*PICO, "--images", str(images), "--out", str(tmp_path / "f.safetensors"), *extra]) == 2
    assert message in capsys.readouterr().out
    assert not (tmp_path / "f.safetensors").exists()


def test_bad_sources_are_user_errors(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    out = str(tmp_path / "f.safetensors")
    assert run_cli([*PICO, "--images", str(tmp_path / "empty"), "--out", out]) == 2
    assert "holds no images" in capsys.readouterr().out
    assert run_cli([*PICO, "--images", "fashion-mnist", "--fashion-mnist-dir", str(tmp_path), "--out", out]) == 2
    assert "apt-get install dataset-fashion-mnist" in capsys.readouterr().out
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "x.png").write_text("nope")
    assert run_cli([*PICO, "--images", str(tmp_path / "bad"), "--out", out]) == 2
    assert "no image could be read" in capsys.readouterr().out
    assert run_cli(["--arch", "vit_nonexistent", "--images", str(tmp_path / "bad"), "--out", out]) == 2
    assert "unknown architecture" in capsys.readouterr().out


def test_weights_go_through_load_backbone(tmp_path, capsys):
    checkpoints = pytest.importorskip("dinolab.pretrain.checkpoints")
    from dinolab.pretrain.models import Preprocessing, build_vit

    model = build_vit("vit_pico", patch_size=4, img_size=28, preprocessing=Preprocessing(input_size=28, resize_size=28))
    weights = checkpoints.save_backbone(model, tmp_path / "pico.safetensors")
    images = _odd_folder(tmp_path / "imgs")
    out = tmp_path / "w.safetensors"
    assert run_cli(["--weights", str(weights), "--images", str(images), "--out", str(out), "--quiet"]) == 0
    features = load_features(out)
    loaded = checkpoints.load_backbone(weights)
    from dinolab.pretrain.data import eval_transform, load_image

    batch = torch.stack([eval_transform(loaded.preprocessing, patch_size=4)(load_image(images / n)) for n in features.names])
    with torch.no_grad():
        torch.testing.assert_close(features.cls, loaded(batch), atol=1e-5, rtol=1e-5)
    assert features.info["model"]["weights"] == str(weights.resolve())
    (tmp_path / "junk.pth").write_text("not a checkpoint")
    assert run_cli(["--weights", str(tmp_path / "junk.pth"), "--images", str(images), "--out", str(out)]) == 2
    assert "cannot load a backbone" in capsys.readouterr().out
