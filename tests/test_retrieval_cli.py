"""`features index build` + `features search` end to end on a tiny saved model and a folder of images."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from dinolab.features.cli import main
from dinolab.pretrain.models import build_vit


@pytest.fixture(autouse=True)
def _only_retrieval_commands(monkeypatch):
    """Parse with the commands under test only, so an unrelated broken subcommand cannot interfere."""
    import dinolab.features.cli

    monkeypatch.setattr(dinolab.features.cli, "SUBCOMMAND_MODULES", ("dinolab.features.cli.index", "dinolab.features.cli.search"))


def _save_model(path: Path, seed: int) -> Path:
    from dinolab.pretrain.checkpoints import save_backbone

    torch.manual_seed(seed)
    save_backbone(build_vit("vit_pico", patch_size=7, img_size=28, layerscale_init=1.0), path, fmt="safetensors")
    return path


@pytest.fixture(scope="module")
def gallery(tmp_path_factory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("retrieval")
    images = root / "images"
    (images / "sub").mkdir(parents=True)
    rng = np.random.default_rng(0)
    for i in range(12):
        pixels = rng.integers(0, 256, (4, 4, 3), dtype=np.uint8).repeat(10, 0).repeat(10, 1)  # blocky, distinct
        Image.fromarray(pixels).save(images / ("sub" if i % 3 == 0 else ".") / f"img{i:02d}.png")
    (images / "corrupt.png").write_bytes(b"\x89PNG broken")
    return images, _save_model(root / "model.safetensors", seed=0)


def test_build_then_search_finds_the_image_itself(gallery, tmp_path, capsys):
    images, weights = gallery
    index_dir = tmp_path / "idx"
    build = ["index", "build", "--weights", str(weights), "--images", str(images), "--out", str(index_dir),
             "--size", "28", "--batch-size", "5"]  # fmt: skip
    assert main(build) == 0
    assert "skipped 1 unreadable images (corrupt.png" in capsys.readouterr().err
    meta = json.loads((index_dir / "index.json").read_text())
    assert meta["count"] == 12 and meta["model"]["preprocessing"]["input_size"] == 28

    sheet, hits_file = tmp_path / "sheet.png", tmp_path / "hits.json"
    queries = [str(images / "sub" / "img03.png"), str(images / "img07.png")]
    argv = ["search", "--index", str(index_dir), *queries, "-k", "4", "--sheet", str(sheet), "--json", str(hits_file)]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert "sub/img03.png" in printed and "img07.png" in printed
    hits = json.loads(hits_file.read_text())
    assert [h["neighbours"][0]["name"] for h in hits] == ["sub/img03.png", "img07.png"]
    assert all(h["neighbours"][0]["score"] == pytest.approx(1.0, abs=1e-4) for h in hits)
    assert all(len(h["neighbours"]) == 4 for h in hits)
    scores = [n["score"] for n in hits[0]["neighbours"]]
    assert scores == sorted(scores, reverse=True)

    # contact sheet: 2 rows x (1 + 4) tiles of 160 px (+ 2*4 margin, + 28 caption); query tiles hold the query
    png = Image.open(sheet)
    assert png.size == (5 * 168, 2 * 196)
    pixels = np.asarray(png.convert("RGB")).astype(int)
    query = np.asarray(Image.open(queries[0]).convert("RGB")).astype(int)
    tile = pixels[4 : 4 + 160, 4 : 4 + 160]  # 40x40 query upscaled x4 to 160x160: block (0,0) = 40x40 px
    assert np.abs(tile[20, 20] - query[5, 5]).max() <= 8
    assert np.abs(tile[140, 140] - query[35, 35]).max() <= 8
    first_neighbour = pixels[4 : 4 + 160, 168 + 4 : 168 + 164]
    assert np.abs(first_neighbour - tile).mean() < 2  # the best hit is the query image itself


@pytest.mark.parametrize("kind", ["ivf", "hnsw"])
def test_approximate_index_kinds_build_and_search(gallery, tmp_path, capsys, kind):
    images, weights = gallery
    index_dir = tmp_path / kind
    extra = ["--nlist", "2"] if kind == "ivf" else []
    build = ["index", "build", "--weights", str(weights), "--images", str(images), "--out", str(index_dir),
             "--size", "28", "--kind", kind, *extra]  # fmt: skip
    assert main(build) == 0
    assert main(["search", "--index", str(index_dir), str(images / "img05.png"), "-k", "3", "--json", "-"]) == 0
    out = capsys.readouterr().out
    hits = json.loads(out[out.index("[") :])
    assert hits[0]["neighbours"][0]["name"] == "img05.png"


def test_search_errors(gallery, tmp_path, capsys):
    images, weights = gallery
    index_dir = tmp_path / "idx"
    assert main(["index", "build", "--weights", str(weights), "--images", str(images), "--out", str(index_dir),
                 "--size", "28"]) == 0  # fmt: skip
    other = _save_model(tmp_path / "other.safetensors", seed=1)
    not_an_image = tmp_path / "notes.png"
    not_an_image.write_text("hello")
    empty = tmp_path / "empty"
    empty.mkdir()
    cases = {
        "not the one that built": ["search", "--index", str(index_dir), str(images / "img01.png"), "--weights", str(other)],
        "query": ["search", "--index", str(index_dir), str(not_an_image)],
        "not an index directory": ["search", "--index", str(empty), str(images / "img01.png")],
        "holds no images": ["index", "build", "--weights", str(weights), "--images", str(empty), "--out", str(tmp_path / "x")],
        "not empty": ["index", "build", "--weights", str(weights), "--images", str(images), "--out", str(index_dir)],
    }  # fmt: skip
    capsys.readouterr()
    for message, argv in cases.items():
        assert main(argv) == 2, message
        err = capsys.readouterr().err
        assert message in err and "Traceback" not in err, err
