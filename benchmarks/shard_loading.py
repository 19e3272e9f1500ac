"""Shard-fed training: is the loader fast enough? One run prints four measurements.

1. Random access to image bytes in the training order (shard-windowed shuffle) over Fashion-MNIST
   written as webdataset shards by the curate writer: dinolab's ``ShardReader`` (tar headers indexed
   once per shard, one ``pread`` a sample) against ``wids.ShardListDataset`` (no copies: local names
   are the shard paths; LRU of 10 shards, its default, and of 64), and webdataset streaming the same
   tars in order (no shuffle; the ceiling of sequential reading).
2. Decode per DataLoader worker: read + ``decode_image`` + resize/crop to the storage size, 28-px PNGs.
3. The demo preset (``fmnist-tiny``) trained for ``--steps`` steps from the in-memory Fashion-MNIST
   tensor and from its shards — decoded once at start-up (the default for a set that fits in
   ``run.shard_cache_gb``) and decoded per batch (``run.shard_cache_gb=0``, 0 and 1 DataLoader
   workers) — interleaved ``--repeats`` times; images/s as the trainer reports them, and the median
   ratio shards / in-memory.
4. ViT-S/14 multi-crop on CPU (``dinov2-vits14``: 2 × 224 + 8 × 98 crops, K = 65536): decode of
   500 × 375 JPEG photos to 258-px storage per DataLoader worker, multi-crop augmentation per image, and
   the training step's images/s — the loader must not be the bottleneck.

    python -m benchmarks.shard_loading                     # ~4 min on 2 cores
    python -m benchmarks.shard_loading --steps 60 --repeats 1 --skip-vits   # quick check
"""

from __future__ import annotations

import argparse
import io
import resource
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from dinolab.curate.shards import ShardSample, shard_index, shard_name, write_index, write_shard
from dinolab.pretrain.data.fashion_mnist import load_fashion_mnist
from dinolab.pretrain.data.shards import ShardReader, resolve_shards, windowed_order
from dinolab.pretrain.train.config import build_config
from dinolab.pretrain.train.data import ShardImages
from dinolab.pretrain.train.loop import Trainer, seconds_per_step
from dinolab.pretrain.train.tensor_augment import TensorMultiCrop


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=60000, help="Fashion-MNIST training images in the shards")
    parser.add_argument("--per-shard", type=int, default=5000, help="samples per shard (demo config: 5000)")
    parser.add_argument("--steps", type=int, default=100, help="training steps per fmnist-tiny run")
    parser.add_argument("--repeats", type=int, default=5, help="interleaved repetitions of the training runs")
    parser.add_argument("--skip-vits", action="store_true", help="skip the ViT-S/14 part")
    parser.add_argument("--threads", type=int, help="torch threads (default: torch's own; 1 suits a busy machine)")
    parser.add_argument("--work", type=Path, help="folder for the shards (default: a temporary one)")
    return parser.parse_args()


def write_set(folder: Path, samples: list[tuple[str, bytes, str]], per_shard: int) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    infos = []
    for number, start in enumerate(range(0, len(samples), per_shard)):
        chunk = [ShardSample(key, data, ext, {"uri": f"/lake/{key}.{ext}"}) for key, data, ext in
                 samples[start : start + per_shard]]
        infos.append(write_shard(folder / shard_name(number), chunk))
    write_index(folder / "index.json", shard_index(infos, name="bench"))
    return folder / "index.json"


def fashion_mnist_shards(folder: Path, count: int, per_shard: int) -> Path:
    images, _ = load_fashion_mnist("train", limit=count)
    samples = []
    for i, array in enumerate(images.numpy()):
        buffer = io.BytesIO()
        Image.fromarray(array).save(buffer, format="PNG")
        samples.append((f"fm_{i:05d}", buffer.getvalue(), "png"))
    return write_set(folder, samples, per_shard)


def photo_shards(folder: Path, count: int) -> Path:
    """``count`` 500 × 375 JPEGs (q 90): shifted, flipped crops of scikit-image's and scikit-learn's photos."""
    import skimage.data
    from sklearn.datasets import load_sample_images

    sources = [np.asarray(Image.fromarray(getattr(skimage.data, n)()).convert("RGB"))
               for n in ("astronaut", "chelsea", "coffee", "rocket")]
    sources += list(load_sample_images().images)
    rng = np.random.default_rng(0)
    samples = []
    for i in range(count):
        photo = Image.fromarray(sources[i % len(sources)])
        w, h = photo.size
        left, top = int(rng.integers(0, w // 5)), int(rng.integers(0, h // 5))
        crop = photo.crop((left, top, left + 4 * w // 5, top + 4 * h // 5)).resize((500, 375), Image.Resampling.BICUBIC)
        if i % 2:
            crop = crop.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        buffer = io.BytesIO()
        crop.save(buffer, "JPEG", quality=90)
        samples.append((f"photo_{i:05d}", buffer.getvalue(), "jpg"))
    return write_set(folder, samples, per_shard=count // 2)


def access_rates(index: Path, order: list[int]) -> None:
    shards = resolve_shards(str(index))
    reader = ShardReader(shards)
    start = time.perf_counter()
    for number in range(len(shards.shards)):
        reader._shard(number)
    index_s = (time.perf_counter() - start) / len(shards.shards)
    start = time.perf_counter()
    for i in order:
        reader.read(i)
    ours = (time.perf_counter() - start) / len(order) * 1e6
    print(f"  ShardReader (pread by tar offset)   {ours:7.1f} us/sample   index {index_s * 1e3:6.1f} ms/shard")

    import wids

    for lru, reads in ((10, order[:2000]), (64, order)):
        dataset = wids.ShardListDataset(str(index), localname=lambda url: url, transformations=[], lru_size=lru)
        start = time.perf_counter()
        for i in reads:
            dataset[i][".png"].getvalue()
        rate = (time.perf_counter() - start) / len(reads) * 1e6
        accesses, misses = dataset.get_stats()
        print(f"  wids ShardListDataset, LRU {lru:2d}       {rate:7.1f} us/sample   ({misses} shard opens "
              f"in {accesses} reads)")
        dataset.close()

    import webdataset as wds

    urls = [str(shard.path) for shard in shards.shards]
    start = time.perf_counter()
    count = sum(1 for _ in wds.WebDataset(urls, shardshuffle=False, empty_check=False))
    stream = (time.perf_counter() - start) / count * 1e6
    print(f"  webdataset streaming, in order      {stream:7.1f} us/sample   (no shuffle: sequential ceiling)")


def decode_rate(index: Path, storage: int, count: int) -> float:
    """Seconds per sample of read + decode + storage resize in one process (= one DataLoader worker)."""
    data = ShardImages(str(index), storage, 64, seed=0)
    order = data.order(0)[:count].tolist()
    for i in order[:20]:
        data.dataset[i]
    start = time.perf_counter()
    for i in order:
        item = data.dataset[i]
        assert item.image.shape == (3, storage, storage), item
    return (time.perf_counter() - start) / len(order)


def cpu_seconds() -> float:
    """CPU time of this process and of its finished children (DataLoader workers), user + system."""
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def train_rate(data: str, steps: int, extra: list[str], out: Path) -> tuple[float, float, float, float]:
    """A ``steps``-step fmnist-tiny run: images/s as the trainer reports it (whole run), images/s from
    the median time between steps (data + step; robust to a busy spell of the machine), CPU ms per
    image, and the trainer's start-up seconds (data opened, model built)."""
    overrides = ["run.minutes=null", f"optim.epochs={steps / (60000 // 64)}", "run.checkpoint_every_steps=100000",
                 "run.checkpoint_every_minutes=1000", *extra]
    stamps: list[float] = []
    start = time.perf_counter()
    trainer = Trainer(build_config("fmnist-tiny", overrides), data, out, evaluate=False, progress=False,
                      step_hook=lambda step, output: stamps.append(time.perf_counter()))
    startup = time.perf_counter() - start
    cpu = cpu_seconds()
    result = trainer.run()
    cpu = cpu_seconds() - cpu
    shutil.rmtree(out, ignore_errors=True)
    median_step = statistics.median(b - a for a, b in zip(stamps, stamps[1:]))
    return result.images_per_second, 64 / median_step, cpu / (result.steps * 64) * 1e3, startup


def main() -> None:
    args = parse_args()
    torch.manual_seed(0)
    if args.threads:
        torch.set_num_threads(args.threads)
    work = args.work or Path(tempfile.mkdtemp(prefix="shard_loading_"))
    print(f"torch threads {torch.get_num_threads()}, work folder {work}")

    start = time.perf_counter()
    index = fashion_mnist_shards(work / "fmnist", args.images, args.per_shard)
    shards = resolve_shards(str(index))
    size = sum(shard.path.stat().st_size for shard in shards.shards)
    print(f"\nshards: {shards.num_samples} Fashion-MNIST PNGs in {len(shards.shards)} shards "
          f"({size / 1e6:.1f} MB), written in {time.perf_counter() - start:.1f} s")

    print("\n1. random access to image bytes, training order (windowed shuffle, 16 shards a window)")
    order = windowed_order(shards.counts, seed=0, epoch=0).tolist()
    access_rates(index, order[:20000])

    print("\n2. decode per DataLoader worker (read + decode_image + storage resize)")
    fm_decode = decode_rate(index, 28, 5000)
    print(f"  Fashion-MNIST PNG -> 28 px   {fm_decode * 1e6:6.1f} us/image = {1 / fm_decode:7.0f} images/s per worker")

    print(f"\n3. fmnist-tiny training, {args.steps} steps of 64, images/s as the trainer reports them")
    setups = {"in-memory": ("fashion-mnist", []),
              "shards, decoded once": (str(index), []),
              "per batch, 0 workers": (str(index), ["run.shard_cache_gb=0", "run.num_workers=0"]),
              "per batch, 1 worker": (str(index), ["run.shard_cache_gb=0", "run.num_workers=1"])}
    runs: dict[str, list[tuple[float, float, float, float]]] = {name: [] for name in setups}
    for repeat in range(args.repeats):  # interleaved, so a busy spell of the machine hits every setup
        for name, (data, extra) in setups.items():
            runs[name].append(train_rate(data, args.steps, extra, work / "run"))
        print(f"  repeat {repeat + 1}: " + ", ".join(f"{name} {values[-1][0]:.0f} ({values[-1][1]:.0f})"
                                                      for name, values in runs.items()))
    print("  (whole-run images/s, in brackets from the median time between steps)")
    base = runs["in-memory"]
    for name, values in runs.items():
        whole = [value[0] / reference[0] for value, reference in zip(values, base)]
        steady = [value[1] / reference[1] for value, reference in zip(values, base)]
        print(f"  {name:20s} {statistics.median(v[0] for v in values):4.0f} images/s "
              f"({statistics.median(v[1] for v in values):4.0f}), CPU {statistics.median(v[2] for v in values):.2f} "
              f"ms/image, start-up {statistics.median(v[3] for v in values):4.1f} s; ratio to in-memory, "
              f"median of pairs: {statistics.median(whole):.3f} ({statistics.median(steady):.3f})")

    if args.skip_vits:
        return
    print("\n4. ViT-S/14 multi-crop (dinov2-vits14: 2 x 224 + 8 x 98 crops, K = 65536), CPU")
    photos = photo_shards(work / "photos", 256)
    config = build_config("dinov2-vits14", ["optim.batch_size=4", "run.minutes=null",
                                            "run.checkpoint_every_steps=100000"])
    storage = config.crops.storage_size or round(config.crops.global_size * 1.15)
    photo_decode = decode_rate(photos, storage, 256)
    print(f"  decode 500x375 JPEG -> {storage} px  {photo_decode * 1e3:6.2f} ms/image = "
          f"{1 / photo_decode:6.0f} images/s per worker")
    data = ShardImages(str(photos), storage, 32, seed=0)
    batch = next(data.batches(0))
    augment = TensorMultiCrop(config.crops)
    augment(batch, torch.Generator().manual_seed(0))
    start = time.perf_counter()
    for seed in range(3):
        augment(batch, torch.Generator().manual_seed(seed))
    augment_s = (time.perf_counter() - start) / 3 / batch.shape[0]
    print(f"  multi-crop augment (main process)    {augment_s * 1e3:6.2f} ms/image = {1 / augment_s:6.0f} images/s")
    print(f"  decode + augment                     {(photo_decode + augment_s) * 1e3:6.2f} ms/image = "
          f"{1 / (photo_decode + augment_s):6.0f} images/s per core")
    trainer = Trainer(config, str(photos), work / "vits", evaluate=False, progress=False)
    images = next(trainer.data.batches(0))
    step_s = seconds_per_step(trainer.train_step, images, timed=2)
    step_rate = images.shape[0] / step_s
    print(f"  training step, batch {images.shape[0]}              {step_s:6.2f} s/step  = {step_rate:6.2f} images/s")
    print(f"  loader headroom: one worker decodes {1 / photo_decode / step_rate:.0f}x what the step consumes; "
          f"augmentation is {augment_s * step_rate * 100:.1f}% of the step")
    if args.work is None:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
