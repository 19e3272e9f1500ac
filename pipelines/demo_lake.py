"""The embedded default lake: Fashion-MNIST, images that do not belong, planted copies and leaks, as files.

Built once under a folder (a marker file says it is complete) from data that installs offline:
Debian's Fashion-MNIST, scikit-learn's digits, tiles of scikit-image's photos and textures, and noise.
File names are random hex, so nothing in a name tells what an image is; ``truth.parquet`` beside the
lake records it (source, Fashion-MNIST index, which image a copy copies) for measuring the curation::

    lake = build_demo_lake(Path("outputs/demo/lake"))
    lake.pool, lake.seeds, lake.evaluation   # --lake, --curated, --eval
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image, ImageDraw, ImageOps

from dinolab.pipelines.lake_writer import save_image

PHOTOS = ("astronaut", "brick", "camera", "cat", "coffee", "coins", "grass", "gravel", "horse",
          "immunohistochemistry", "moon", "page", "rocket", "text", "clock", "chelsea", "hubble_deep_field")
COPY_KINDS = ("exact", "jpeg", "flip", "crop", "overlay")
MARKER = ".complete"


@dataclass(frozen=True)
class DemoLake:
    root: Path

    @property
    def pool(self) -> Path:
        return self.root / "pool"

    @property
    def seeds(self) -> Path:
        return self.root / "seeds"

    @property
    def evaluation(self) -> Path:
        return self.root / "fashion-mnist-test"

    @property
    def truth(self) -> Path:
        return self.root / "truth.parquet"


@dataclass(frozen=True)
class LakeSizes:
    fashion: int = 50_000
    """Fashion-MNIST training images in the pool (indices after the seeds')."""
    seeds: int = 1_000
    """Fashion-MNIST training images given as the curated seed set (not in the pool)."""
    tiles: int = 15_000
    noise: int = 3_000
    copies_per_kind: int = 500
    leaks: int = 300
    """Fashion-MNIST test images planted in the pool (the evaluation set must take them out)."""
    evaluation: int = 10_000

    def scaled(self, factor: float) -> "LakeSizes":
        """Every count times ``factor`` (at least 1), for a quick look or a test."""
        if factor == 1.0:
            return self
        return LakeSizes(**{name: max(1, round(value * factor)) for name, value in self.__dict__.items()})


def off_domain_images(tiles: int, noise: int, rng: np.random.Generator) -> dict[str, list[np.ndarray]]:
    """28×28 RGB images that are not Fashion-MNIST: every sklearn digit, photo/texture tiles, noise."""
    import skimage.data
    from sklearn.datasets import load_digits

    digits = [np.asarray(Image.fromarray((d * 16).clip(0, 255).astype(np.uint8)).resize((28, 28), Image.Resampling.BILINEAR))
              for d in load_digits().images]
    photos = [np.asarray(Image.fromarray(np.asarray(getattr(skimage.data, name)())).convert("RGB")) for name in PHOTOS]
    crops = []
    for _ in range(tiles):
        photo = photos[rng.integers(len(photos))]
        side = int(rng.integers(32, min(photo.shape[:2]) // 2))
        top, left = rng.integers(0, photo.shape[0] - side + 1), rng.integers(0, photo.shape[1] - side + 1)
        crop = Image.fromarray(photo[top : top + side, left : left + side]).resize((28, 28), Image.Resampling.BICUBIC)
        crops.append(np.asarray(crop))
    noises = [(rng.random((28, 28, 3)) * 255 * rng.uniform(0.2, 1)).astype(np.uint8) for _ in range(noise)]
    return {"digits": digits, "tiles": crops, "noise": noises}


def planted_copy(image: Image.Image, kind: str, rng: np.random.Generator) -> tuple[Image.Image, str]:
    """A copy of ``image`` and the format to save it in."""
    if kind == "exact":
        return image, "PNG"
    if kind == "jpeg":
        return image, "JPEG"
    if kind == "flip":
        return ImageOps.mirror(image), "PNG"
    if kind == "crop":
        side = int(rng.integers(22, 26))
        left, top = rng.integers(0, 28 - side + 1, size=2)
        return image.crop((left, top, left + side, top + side)).resize((28, 28), Image.Resampling.BICUBIC), "PNG"
    overlaid = image.convert("RGB")
    ImageDraw.Draw(overlaid).text((int(rng.integers(0, 8)), int(rng.integers(0, 18))), "sale", fill=(255, 0, 0))
    return overlaid, "PNG"


def build_demo_lake(root: Path, sizes: LakeSizes = LakeSizes(), seed: int = 0) -> DemoLake:
    """Write the lake under ``root`` unless a complete one is there already."""
    from dinolab.pretrain.data.fashion_mnist import load_fashion_mnist

    lake = DemoLake(Path(root))
    if (lake.root / MARKER).is_file():
        return lake
    shutil.rmtree(lake.root, ignore_errors=True)
    for folder in (lake.pool, lake.seeds, lake.evaluation):
        folder.mkdir(parents=True)
    rng = np.random.default_rng(seed)
    digits = 1797  # every scikit-learn digit
    needed = (sizes.seeds + sizes.fashion + digits + sizes.tiles + sizes.noise
              + sizes.copies_per_kind * len(COPY_KINDS) + sizes.leaks)
    # (the first term keeps the default lake's names, and so its random tiles, as they were)
    names = iter(f"{value:012x}" for value in rng.choice(2**48, size=max(sizes.fashion * 2 + 200_000, needed), replace=False))
    train, _ = load_fashion_mnist("train", limit=sizes.seeds + sizes.fashion)
    test, _ = load_fashion_mnist("test", limit=max(sizes.evaluation, sizes.leaks))
    train, test = train.numpy(), test.numpy()
    truth: dict[str, list] = {"file": [], "source": [], "index": [], "copy_of": []}

    def record(file: str, source: str, index: int, copy_of: str | None = None) -> None:
        for column, value in zip(truth, (file, source, index, copy_of)):
            truth[column].append(value)

    for i in range(sizes.seeds):
        save_image(lake.seeds, f"seed_{next(names)}", Image.fromarray(train[i]))
    for i in range(sizes.evaluation):
        save_image(lake.evaluation, f"test_{i:05d}", Image.fromarray(test[i]))
    fashion_files = []
    for i in range(sizes.seeds, sizes.seeds + sizes.fashion):
        fashion_files.append(save_image(lake.pool, next(names), Image.fromarray(train[i])))
        record(fashion_files[-1], "fashion", i)
    for source, images in off_domain_images(sizes.tiles, sizes.noise, rng).items():
        for i, array in enumerate(images):
            record(save_image(lake.pool, next(names), Image.fromarray(array)), source, i)
    originals = rng.choice(len(fashion_files), size=sizes.copies_per_kind * len(COPY_KINDS), replace=False)
    for n, original in enumerate(originals):
        kind = COPY_KINDS[n % len(COPY_KINDS)]
        image, fmt = planted_copy(Image.fromarray(train[sizes.seeds + original]), kind, rng)
        record(save_image(lake.pool, next(names), image, fmt), f"copy:{kind}", sizes.seeds + int(original), fashion_files[original])
    for i in range(sizes.leaks):
        record(save_image(lake.pool, next(names), Image.fromarray(test[i])), "leak", i, f"test_{i:05d}.png")
    pq.write_table(pa.table(truth), lake.truth)
    (lake.root / MARKER).write_text("complete\n")
    return lake


def curation_quality(lake: DemoLake, out: Path) -> dict[str, float | int]:
    """How the curation of the demo lake went: :func:`set_quality` of the selected (sharded) images."""
    from dinolab.curate import tables

    selected = {Path(uri).name for uri in tables.read_table(out, "selection").column("uri").to_pylist()}
    return set_quality(selected, read_truth(lake))


def read_truth(lake: DemoLake) -> dict[str, dict]:
    """``truth.parquet`` rows by file name."""
    return {row["file"]: row for row in pq.read_table(lake.truth).to_pylist()}


def set_quality(names: set[str], truth: dict[str, dict]) -> dict[str, float | int]:
    """What a set of pool file ``names`` holds, against the lake's ``truth`` (:func:`read_truth`).

    ``precision``: fraction that are Fashion-MNIST training images or copies of them; ``copies_surviving``:
    planted copies whose original is in the set too; ``leaks_surviving``: Fashion-MNIST test images planted
    in the pool that are in the set.
    """
    sources = [truth[name]["source"] for name in names if name in truth]
    fashion = sum(source == "fashion" or source.startswith("copy:") for source in sources)
    copies = [row for row in truth.values() if row["source"].startswith("copy:")]
    return {
        "selected": len(names),
        "precision": fashion / max(len(names), 1),
        "off_domain_selected": sum(source in ("digits", "tiles", "noise") for source in sources),
        "copies_planted": len(copies),
        "copies_surviving": sum(row["file"] in names and row["copy_of"] in names for row in copies),
        "leaks_planted": sum(row["source"] == "leak" for row in truth.values()),
        "leaks_surviving": sum(source == "leak" for source in sources),
    }
