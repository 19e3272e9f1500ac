"""``dinolab curate`` end to end on tiny folders: outputs, reasons, report figures, resume, errors."""

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import pretrain.cli
from pretrain.cli import main
from curate.manifest import read_csv, read_jsonl, read_lines

RED, BLUE = (250, 10, 10), (10, 10, 250)


@pytest.fixture(autouse=True)
def _only_curate_subcommand(monkeypatch):
    """Test through the real entry point without depending on other subcommands' modules."""
    monkeypatch.setattr(pretrain.cli, "SUBCOMMAND_MODULES", ("pretrain.cli.curate",))


def _noise(rng: np.random.Generator, height: int = 30, width: int = 34) -> Image.Image:
    return Image.fromarray((rng.random((height, width, 3)) * 255).astype(np.uint8))


def _red_blue() -> Image.Image:
    pixels = np.zeros((32, 32, 3), np.uint8)
    pixels[:16], pixels[16:] = RED, BLUE
    return Image.fromarray(pixels)


@pytest.fixture
def folders(tmp_path: Path) -> tuple[Path, Path]:
    """Pool: 14 noise images, 2 copies of the red/blue image, a copy of curated c0, a broken file,
    a grayscale and a 16-bit image. Curated: 3 noise images."""
    rng = np.random.default_rng(0)
    pool, curated = tmp_path / "pool", tmp_path / "curated"
    pool.mkdir(), curated.mkdir()
    for i in range(14):
        _noise(rng).save(pool / f"n{i:02d}.png")
    _red_blue().save(pool / "rb_a.png")
    _red_blue().resize((64, 64), Image.Resampling.NEAREST).save(pool / "rb_b.png")
    for i in range(3):
        _noise(rng).save(curated / f"c{i}.png")
    Image.open(curated / "c0.png").save(pool / "leak_of_c0.png")
    (pool / "broken.png").write_bytes(b"\x89PNG but truncated")
    Image.fromarray((rng.random((30, 30)) * 255).astype(np.uint8)).save(pool / "gray.png")
    Image.fromarray((rng.random((30, 30)) * 65535).astype(np.uint16)).save(pool / "deep16.png")
    return pool, curated


def _run(folders, work: Path, *extra: str) -> int:
    pool, curated = folders
    return main([
        "curate", "run", "--pool", str(pool), "--curated", str(curated), "--out", str(work),
        "--image-size", "28", "--chunk-size", "8", "--k", "4,2", "--method", "clusters",
        "--per-cluster", "3", "--examples", "3", *extra,
    ])


def test_run_with_pixels_removes_planted_copies_and_writes_everything(folders, tmp_path, capsys):
    work = tmp_path / "work"
    assert _run(folders, work, "--arch", "pixels", "--threshold", "0.95") == 0
    removed = {row["name"]: row for row in read_csv(work / "dedup" / "removed.csv")}
    assert set(removed) == {"rb_b.png", "leak_of_c0.png"}
    assert removed["rb_b.png"]["reason"] == "duplicate" and removed["rb_b.png"]["matched"] == "rb_a.png"
    assert removed["leak_of_c0.png"]["reason"] == "leak:curated"
    assert removed["leak_of_c0.png"]["matched"] == "c0.png"
    kept = read_lines(work / "dedup" / "kept.txt")
    assert len(kept) == 20 - 1 - 2  # 20 files, broken.png undecodable, 2 removed

    selected = read_lines(work / "select" / "selected.txt")
    manifest = read_jsonl(work / "select" / "manifest.jsonl")
    assert [m["name"] for m in manifest] == selected and set(selected) <= set(kept)
    assert all(m["query"] in {"c0.png", "c1.png", "c2.png"} and m["cluster"] in range(4) for m in manifest)

    report = json.loads((work / "report" / "report.json").read_text())
    assert report["sets"]["pool"]["files"] == 20 and report["dedup"]["undecodable"] == 1
    assert report["dedup"]["removed"] == {"duplicate": 1, "leak:curated": 1}
    assert report["cluster"]["k"] == [4, 2] and report["select"]["selected"] == len(selected)
    assert "| dedup: kept | 17 |" in (work / "report" / "report.md").read_text()

    # Duplicate contact sheet: one row (the red/blue group) whose thumbnails show exact red and blue.
    sheet = np.asarray(Image.open(work / "report" / "duplicates.png").convert("RGB"))
    assert sheet.shape == (68, 120 + 2 * 68, 3)
    for colour in (RED, BLUE):
        assert (sheet == colour).all(axis=2).sum() >= 2 * 64 * 20
    # Cluster sheet: 3 rows, each with at least one non-white thumbnail after the label column.
    clusters = np.asarray(Image.open(work / "report" / "cluster_examples.png").convert("RGB"))
    assert clusters.shape[0] == 3 * 68
    for row in range(3):
        assert (clusters[row * 68 : row * 68 + 64, 120:] < 245).any()
    histogram = np.asarray(Image.open(work / "report" / "cluster_sizes.png").convert("RGB"))
    assert histogram.shape == (350, 600, 3)
    bar_blue = np.array([0x3B, 0x6E, 0xA5])
    assert (np.abs(histogram.astype(int) - bar_blue).sum(axis=2) < 10).sum() > 100  # bars are drawn


def test_run_with_tiny_vit_and_rerun_skips_every_step(folders, tmp_path, capsys):
    work = tmp_path / "work"
    args = ("--arch", "vit_pico", "--threshold", "0.9999", "--center")
    assert _run(folders, work, *args) == 0
    removed = {row["name"]: row["reason"] for row in read_csv(work / "dedup" / "removed.csv")}
    # Exact pixel copies give identical embeddings, so they are found at any threshold below 1.
    assert removed["leak_of_c0.png"] == "leak:curated"
    chunk = work / "pool" / "embeddings" / "chunk_00000.safetensors"
    stamps = {p: p.stat().st_mtime_ns for p in (chunk, work / "dedup" / "summary.json")}
    capsys.readouterr()
    assert _run(folders, work, *args) == 0
    assert "skipped 3 finished ones" in capsys.readouterr().err
    assert all(p.stat().st_mtime_ns == stamp for p, stamp in stamps.items())


def test_steps_one_by_one_with_balanced_selection(folders, tmp_path, capsys):
    pool, _ = folders
    work = str(tmp_path / "work")
    common = ["--out", work]
    assert main(["curate", "embed", "--images", str(pool), "--arch", "pixels", "--image-size", "16", *common]) == 0
    assert main(["curate", "dedup", "--threshold", "0.95", *common]) == 0
    assert main(["curate", "cluster", "--k", "3", *common]) == 0
    assert main(["curate", "select", "--method", "balanced", "--count", "6", *common]) == 0
    manifest = read_jsonl(tmp_path / "work" / "select" / "manifest.jsonl")
    assert len(manifest) == 6 and all(m["method"] == "balanced" and m["query"] is None for m in manifest)
    assert np.bincount([m["cluster"] for m in manifest], minlength=3).tolist() == [2, 2, 2]
    # Redoing dedup deletes the clusters and selection computed from its old output.
    assert main(["curate", "dedup", "--threshold", "0.99", "--force", *common]) == 0
    assert not (tmp_path / "work" / "cluster").exists() and not (tmp_path / "work" / "select").exists()
    assert main(["curate", "select", "--method", "balanced", "--count", "6", *common]) == 2
    assert "run 'dinolab curate cluster' first" in capsys.readouterr().err


def test_clear_errors(folders, tmp_path, capsys):
    pool, _ = folders
    empty = tmp_path / "empty"
    empty.mkdir()
    work = str(tmp_path / "work")
    garbage = tmp_path / "garbage.pth"
    garbage.write_bytes(b"this is not a checkpoint")
    cases = [
        (["curate", "embed", "--images", str(pool), "--weights", str(garbage), "--out", work],
         "cannot load backbone"),
        (["curate", "embed", "--images", str(empty), "--arch", "pixels", "--out", work], "no images"),
        (["curate", "embed", "--images", str(pool), "--out", work], "--weights"),
        (["curate", "embed", "--images", str(pool), "--arch", "vit_nope", "--out", work], "unknown architecture"),
        (["curate", "embed", "--images", str(pool), "--arch", "vit_pico", "--image-size", "30", "--out", work],
         "multiple of the patch size"),
        (["curate", "cluster", "--out", work], "curate embed"),
        (["curate", "run", "--pool", str(pool), "--out", work, "--arch", "pixels"], "--curated"),
    ]
    for argv, message in cases:
        assert main(argv) == 2, argv
        assert message in capsys.readouterr().err
    assert main(["curate", "embed", "--images", str(pool), "--arch", "pixels", "--out", work]) == 0
    assert main(["curate", "embed", "--images", str(pool), "--arch", "pixels", "--image-size", "32",
                 "--out", work]) == 2
    assert "add --force" in capsys.readouterr().err
    assert main(["curate", "select", "--out", work, "--method", "clusters"]) == 2
    assert "curate embed" in capsys.readouterr().err  # no curated set embedded
