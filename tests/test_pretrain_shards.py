"""Shard-fed training: resolving SHARDS, the tar reader, decode parity with the folder path, rank splits
on uneven shards, bad samples skipped and counted, exact SIGKILL resume, one-line errors."""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from pretrain_tiny import TINY_OVERRIDES
from shard_sets import CORRUPT, fashion_mnist_pngs, write_shards
from torchvision.transforms import InterpolationMode, v2

from dinolab.pretrain import distributed
from dinolab.pretrain.cli import main as pretrain_main
from dinolab.pretrain.data.errors import DatasetError
from dinolab.pretrain.data.shards import (
    SampleReadError,
    ShardReader,
    expand_braces,
    group_samples,
    is_shard_spec,
    read_tar_members,
    resolve_shards,
    windowed_order,
)
from dinolab.pretrain.train.data import FolderImages, ShardImages, open_training_data, storage_tensor

UNEVEN = [30, 2, 25, 7]  # 64 samples in 4 shards of very different sizes


def _photos() -> list[tuple[str, bytes, str]]:
    """Three real photos of other sizes and aspect ratios (JPEG), so storage resizing is exercised."""
    import skimage.data

    photos = []
    for name, size in (("astronaut", (60, 60)), ("chelsea", (75, 50)), ("coffee", (41, 64))):
        buffer = io.BytesIO()
        Image.fromarray(getattr(skimage.data, name)()).convert("RGB").resize(size).save(buffer, "JPEG", quality=90)
        photos.append((f"photo_{name}", buffer.getvalue(), "jpg"))
    return photos


@pytest.fixture(scope="module")
def image_set(tmp_path_factory):
    """The same 64 images (60 Fashion-MNIST PNGs, 3 photos, 1 corrupt file) as a folder and as uneven shards."""
    root = tmp_path_factory.mktemp("set")
    samples = [(key, data, "png") for key, data in fashion_mnist_pngs(60)] + _photos()
    samples.append(("zz_broken", CORRUPT, "png"))
    samples.sort()
    folder = root / "folder"
    folder.mkdir()
    for key, data, ext in samples:
        (folder / f"{key}.{ext}").write_bytes(data)
    index = write_shards(root / "shards", samples, UNEVEN)
    return folder, index


def _batches(data) -> list[torch.Tensor]:
    return list(data.batches(epoch=0))


# ------------------------------------------------------------------------------- SHARDS forms
def test_folder_index_and_brace_pattern_name_the_same_shards(image_set):
    _, index = image_set
    shards = index.parent
    pattern = str(shards / "shard-{000000..000003}.tar")
    forms = [str(shards), str(index), pattern, f"file://{index}", str(shards.parent)]  # parent: curate's OUT
    assert all(is_shard_spec(form) for form in forms)
    lists = [resolve_shards(form) for form in forms]
    assert all([s.path for s in lst.shards] == [s.path for s in lists[0].shards] for lst in lists)
    assert all(lst.counts == UNEVEN for lst in lists)  # the pattern's counts come from the tar headers
    assert lists[0].locate(0) == (0, 0) and lists[0].locate(31) == (1, 1) and lists[0].locate(63) == (3, 6)
    batches = [_batches(ShardImages(form, 28, 8, seed=0, cache_bytes=cache))
               for form, cache in ((str(index), 0), (pattern, 1 << 30))]
    assert all(torch.equal(a, b) for a, b in zip(*batches))
    assert not is_shard_spec(str(image_set[0])) and not is_shard_spec("fashion-mnist")
    assert isinstance(open_training_data(str(shards), 28, 8, 0), ShardImages)
    assert isinstance(open_training_data(str(image_set[0]), 28, 8, 0), FolderImages)


def test_expand_braces():
    assert expand_braces("s-{000..002}.tar") == ["s-000.tar", "s-001.tar", "s-002.tar"]
    assert expand_braces("{a,b}-{8..10}.tar") == ["a-8.tar", "a-9.tar", "a-10.tar", "b-8.tar", "b-9.tar", "b-10.tar"]
    assert expand_braces("plain.tar") == ["plain.tar"]


# ------------------------------------------------------------------------------- decoding
@pytest.mark.parametrize("cache_bytes, workers", [(1 << 30, 0), (0, 0), (0, 2)])
def test_shards_decode_like_the_folder_path_and_skip_the_corrupt_sample(image_set, cache_bytes, workers):
    folder, index = image_set
    from_folder = FolderImages(folder, 28, 8, seed=3)
    from_shards = ShardImages(str(index), 28, 8, seed=3, num_workers=workers, cache_bytes=cache_bytes)
    assert ("decoded once" in from_shards.description) == bool(cache_bytes)
    assert from_shards.num_images == from_folder.num_images == 64
    assert from_shards.batches_per_epoch == from_folder.batches_per_epoch == 8
    folder_batches, shard_batches = _batches(from_folder), _batches(from_shards)
    assert len(folder_batches) == len(shard_batches) == 8
    assert int(torch.cat(folder_batches).float().std(dim=1).flatten(1).amax(1).gt(0).sum()) == 3  # the photos
    for a, b in zip(folder_batches, shard_batches):  # one shard window: the same order as the folder's
        assert a.dtype == b.dtype == torch.uint8 and a.shape[1:] == (3, 28, 28)
        colour = bool(a.float().std(dim=1).amax() > 0)
        assert b.shape[1] == (3 if colour else 1)  # a gray batch comes as one channel
        assert torch.equal(a, b.expand_as(a))
    assert sorted(b.shape[0] for b in shard_batches) == [7] + [8] * 7
    assert from_shards.skipped.count == from_folder.skipped.count == 1
    assert from_shards.skipped.examples[0].startswith("shard-000003.tar/zz_broken.png: ")
    assert "not an image file Pillow can identify" in from_shards.skipped.examples[0]


def test_storage_tensor_equals_the_torchvision_transform():
    transform = v2.Compose([v2.Resize(28, interpolation=InterpolationMode.BICUBIC, antialias=True),
                            v2.CenterCrop(28), v2.PILToTensor()])
    rng = np.random.default_rng(0)
    for width, height in ((28, 28), (40, 30), (30, 61), (29, 28), (100, 100), (13, 50)):
        image = Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8))
        assert torch.equal(storage_tensor(image, 28), transform(image)), (width, height)


# ------------------------------------------------------------------------------- order and ranks
def test_windowed_order_is_a_seeded_permutation_with_locality():
    counts = [10, 3, 7, 10, 1, 9, 10, 6]
    starts = np.cumsum([0, *counts])
    order = windowed_order(counts, seed=1, epoch=0, shards_per_window=2)
    assert sorted(order.tolist()) == list(range(sum(counts)))
    assert torch.equal(order, windowed_order(counts, seed=1, epoch=0, shards_per_window=2))
    assert not torch.equal(order, windowed_order(counts, seed=1, epoch=1, shards_per_window=2))
    assert not torch.equal(order, windowed_order(counts, seed=2, epoch=0, shards_per_window=2))
    shard_of = np.searchsorted(starts, order.numpy(), side="right") - 1
    position, windows = 0, []
    while position < len(shard_of):  # the order is a run of windows, each of exactly 2 shards
        first = shard_of[position]
        window = {first}
        end = position
        while end < len(shard_of) and (shard_of[end] in window or len(window) < 2):
            window.add(shard_of[end])
            end += 1
        assert end - position == sum(counts[s] for s in window)
        windows.append(window)
        position = end
    assert len(windows) == 4 and set().union(*windows) == set(range(8))
    # No more shards than one window: exactly the in-memory/folder order of the same (seed, epoch).
    generator = torch.Generator().manual_seed(1 * 1_000_003 + 0)
    assert torch.equal(windowed_order(counts, 1, 0, shards_per_window=8), torch.randperm(56, generator=generator))


@pytest.mark.parametrize("world", [1, 2, 3, 5])
def test_every_rank_gets_the_same_number_of_batches_on_uneven_shards(image_set, monkeypatch, world):
    _, index = image_set
    monkeypatch.setattr(distributed, "world_size", lambda: world)
    per_rank, seen = [], []
    global_order = windowed_order(UNEVEN, seed=0, epoch=0, shards_per_window=2)
    for rank in range(world):
        monkeypatch.setattr(distributed, "rank", lambda rank=rank: rank)
        data = ShardImages(str(index), 28, 4, seed=0, shards_per_window=2)
        assert torch.equal(data.order(0), global_order[rank::world])  # global batch b = positions [4bW, 4(b+1)W)
        batches = _batches(data)
        per_rank.append(len(batches))
        seen.extend(data.order(0)[: len(batches) * 4].tolist())
    assert per_rank == [64 // world // 4] * world
    assert len(seen) == len(set(seen))  # ranks never share a sample


# ------------------------------------------------------------------------------- tars and bad data
def _tar_of(members: dict[str, bytes], format: int) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=format) as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


@pytest.mark.parametrize("format", [tarfile.USTAR_FORMAT, tarfile.PAX_FORMAT, tarfile.GNU_FORMAT])
def test_tar_reader_matches_tarfile_on_long_names(tmp_path, format):
    deep = "/".join(["folder"] * 12)  # > 100 bytes: USTAR prefix, PAX path record or GNU long name
    members = {f"{deep}/a.png": b"x" * 700, f"{deep}/a.json": b"{}", f"{deep}/b.seg.PNG": b"y" * 3,
               f"{deep}/b.jpg": b"z" * 512, "c.txt": b"no image"}
    path = tmp_path / "t.tar"
    path.write_bytes(_tar_of(members, format))
    with tarfile.open(path) as tar:
        expected = [(m.name, m.offset_data, m.size) for m in tar.getmembers() if m.isfile()]
    with open(path, "rb") as stream:
        got, problem = read_tar_members(stream.read())
    assert problem is None and got == expected
    samples = group_samples(got)
    assert [(s.key, s.member) for s in samples] == [(f"{deep}/a", f"{deep}/a.png"), (f"{deep}/b", f"{deep}/b.jpg"),
                                                    ("c", None)]


def test_truncated_shard_and_stale_index_skip_samples_not_the_run(image_set, tmp_path):
    _, index = image_set
    samples = [(key, data) for key, data in fashion_mnist_pngs(20)]
    broken = write_shards(tmp_path / "broken", samples, [10, 10])
    shard = broken.parent / "shard-000001.tar"
    with tarfile.open(shard) as tar:
        cut = tar.getmembers()[7].offset_data + 1  # inside the 4th sample's json: its image is whole
    shard.write_bytes(shard.read_bytes()[:cut])
    with pytest.raises(DatasetError, match=f"shard-000001.tar holds {cut} bytes but the index says"):
        resolve_shards(str(broken))
    pattern = resolve_shards(str(broken.parent / "shard-{000000..000001}.tar"))
    assert pattern.counts == [10, 4]  # the samples whose image is before the damage
    entry = json.loads(broken.read_text())
    del entry["shardlist"][1]["filesize"]  # an index that does not say the size: samples past the damage skip
    broken.write_text(json.dumps(entry))
    reader = ShardReader(resolve_shards(str(broken)))
    assert reader.read(13)[0] == "shard-000001.tar/fm_00013.png"
    with pytest.raises(SampleReadError, match=r"shard-000001.tar#4: truncated tar"):
        reader.read(14)
    for cache_bytes in (0, 1 << 30):
        data = ShardImages(str(broken), 28, 4, seed=0, cache_bytes=cache_bytes)
        images = torch.cat(_batches(data))
        assert images.shape[0] == 14 and data.skipped.count == 6


def test_random_damage_to_a_shard_never_stops_reading(tmp_path):
    samples = fashion_mnist_pngs(24)
    index = write_shards(tmp_path / "shards", samples, [24])
    shard = tmp_path / "shards" / "shard-000000.tar"
    original = shard.read_bytes()
    entry = json.loads(index.read_text())
    del entry["shardlist"][0]["filesize"]
    index.write_text(json.dumps(entry))
    rng = np.random.default_rng(0)
    for trial in range(40):
        damaged = bytearray(original)
        for position in rng.integers(0, len(original), size=int(rng.integers(1, 40))):
            damaged[position] = int(rng.integers(0, 256))
        shard.write_bytes(bytes(damaged[: int(rng.integers(512, len(original) + 1))] if trial % 2 else damaged))
        data = ShardImages(str(index), 28, 4, seed=trial, cache_bytes=0)
        images = _batches(data)
        assert sum(batch.shape[0] for batch in images) + data.skipped.count == 24, trial


# ------------------------------------------------------------------------------- errors
def _train_cli(data: str, out: Path, capsys) -> tuple[int, str]:
    code = pretrain_main(["train", "--data", data, "--out", str(out), "--no-eval", "--no-progress", *TINY_OVERRIDES])
    return code, capsys.readouterr().err


def test_missing_empty_and_corrupt_indexes_are_one_line_exit_2_errors(image_set, tmp_path, capsys):
    _, good = image_set
    cases = {"missing/index.json": (None, "no such shard index"),
             "empty.json": ({"__kind__": "wids-shard-index-v1", "shardlist": []}, "lists no shards"),
             "corrupt.json": ("{not json", "corrupt shard index, not JSON"),
             "other.json": ({"files": []}, "not a wids shard index"),
             "nocount.json": ({"shardlist": [{"url": "shard-000000.tar"}]}, "entry 0 needs a 'url' and an 'nsamples'"),
             "zero.json": ({"shardlist": [{"url": str(good.parent / "shard-000000.tar"), "nsamples": 0}]},
                           "the shards hold no samples"),
             "gone.json": ({"shardlist": [{"url": "shard-000009.tar", "nsamples": 3}]},
                           "lists shard-000009.tar, which does not exist"),
             "memory://nowhere/shards/index.json": (None, "no such shard index"),
             "memory://nowhere/shards": (None, "no index.json under this prefix"),
             str(good.parent / "shard-{000000..000007}.tar"): (None, "no such shard"),
             }
    for name, (content, message) in cases.items():
        spec = name if "/" in name and not name.startswith("missing") else str(tmp_path / name)
        if content is not None:
            Path(spec).write_text(content if isinstance(content, str) else json.dumps(content))
        code, err = _train_cli(spec, tmp_path / "run", capsys)
        assert code == 2, (name, err)
        assert err.count("\n") == 1 and err.startswith("pretrain train: error: ") and message in err, (name, err)
    tars_only = tmp_path / "tars"
    tars_only.mkdir()
    for number in (0, 1):
        (tars_only / f"shard-00000{number}.tar").write_bytes((good.parent / f"shard-00000{number}.tar").read_bytes())
    (tars_only / "00000.parquet").write_bytes(b"metadata beside the tars, as img2dataset writes it")
    (tars_only / "00000_stats.json").write_text("{}")
    assert is_shard_spec(str(tars_only))  # a folder of tars without an index is read like a brace pattern
    found = resolve_shards(str(tars_only))
    assert [shard.path.name for shard in found.shards] == ["shard-000000.tar", "shard-000001.tar"]
    assert found.counts == resolve_shards(str(good.parent / "shard-{000000..000001}.tar")).counts
    empty = tmp_path / "empty"
    empty.mkdir()
    code, err = _train_cli(str(empty), tmp_path / "run", capsys)
    assert code != 0


# ------------------------------------------------------------------------------- exact resume
# 256 samples (255 Fashion-MNIST + 1 corrupt) in uneven shards: 8 steps of 32 per epoch, 2 epochs,
# checkpoints every 5 steps; the kill at step 7 resumes mid-epoch. The reference decodes the set once;
# the killed and resumed parts decode per batch in 2 and 1 DataLoader workers: the batches depend only
# on (seed, epoch, batch index).
RESUME_OVERRIDES = [*TINY_OVERRIDES, "optim.epochs=2", "run.checkpoint_every_steps=5", "run.eval_every_steps=0",
                    "model.drop_path_rate=0.1"]  # stochastic depth draws from the global RNG: loaders must not

KILLED_RUN = """
import os, signal, sys
import torch
torch.set_num_threads(1)
from dinolab.pretrain.train.config import build_config
from dinolab.pretrain.train.loop import Trainer

def kill_at_step_7(step, output):
    if step == 7:
        os.kill(os.getpid(), signal.SIGKILL)

config = build_config("fmnist-tiny", sys.argv[3:])
Trainer(config, sys.argv[2], sys.argv[1], evaluate=False, progress=False, step_hook=kill_at_step_7).run()
"""


def _cli(data: Path, out: Path, *flags: str) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "dinolab.pretrain", "train", "--data", str(data), "--out", str(out), "--no-eval",
               "--no-progress", *flags, *RESUME_OVERRIDES]
    return subprocess.run(command, capture_output=True, text=True, timeout=300)


def test_sigkill_then_resume_on_shards_matches_uninterrupted_run(tmp_path):
    samples = fashion_mnist_pngs(255)
    samples.insert(77, ("fm_00076b", CORRUPT))
    index = write_shards(tmp_path / "shards", samples, [100, 7, 90, 59])
    pattern = tmp_path / "shards" / "shard-{000000..000003}.tar"
    reference = _cli(index, tmp_path / "reference", "run.num_workers=0")  # decoded once (default)
    assert reference.returncode == 0, reference.stderr
    assert "256 samples in 4 shards" in reference.stdout and "8 steps/epoch, 16 steps in all" in reference.stdout
    assert "skipped 1 unreadable image(s): shard-000000.tar/fm_00076b.png" in reference.stdout

    killed = subprocess.run([sys.executable, "-c", KILLED_RUN, str(tmp_path / "resumed"), str(pattern),
                             *RESUME_OVERRIDES, "run.num_workers=2", "run.shard_cache_gb=0"],
                            capture_output=True, text=True, timeout=300)
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    assert torch.load(tmp_path / "resumed" / "checkpoint.pth", weights_only=True)["step"] == 5

    resumed = _cli(tmp_path / "shards", tmp_path / "resumed", "--resume", "run.num_workers=1", "run.shard_cache_gb=0")
    assert resumed.returncode == 0, resumed.stderr
    assert "resuming at step 5" in resumed.stdout and "skipped 1 unreadable image(s)" in resumed.stdout

    expected = torch.load(tmp_path / "reference" / "checkpoint.pth", weights_only=True)
    actual = torch.load(tmp_path / "resumed" / "checkpoint.pth", weights_only=True)
    assert actual["step"] == expected["step"] == 16
    assert actual["data_position"] == expected["data_position"] == {"epoch": 2, "batch": 0}
    for part in ("teacher", "student"):
        assert actual[part].keys() == expected[part].keys()
        for key, value in expected[part].items():
            torch.testing.assert_close(actual[part][key], value, rtol=0, atol=1e-6, msg=f"{part}.{key}")
    torch.testing.assert_close(actual["dino_center"], expected["dino_center"], rtol=0, atol=1e-6)


def test_pretrain_never_imports_curation():
    code = ("import sys, dinolab.pretrain.train.loop, dinolab.pretrain.train.data, dinolab.pretrain.data.shards, "
            "dinolab.pretrain.cli.train; "
            "print(sorted(m for m in sys.modules if m.split('.')[0] == 'wids' or m.split('.')[:2] in "
            "(['dinolab', 'curate'], ['dinolab', 'pipelines'], ['dinolab', 'schemas'])))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                            env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parent.parent)})
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"
