"""Planted-duplicate benchmark: precision and recall of the embedding near-duplicate search of
``curate dedup`` (``dedup.descriptor=embeddings``).

A pool of distinct Fashion-MNIST test images gets planted copies of some of them (exact copy,
horizontal flip, small crop, JPEG re-encode at quality 40, brightness/contrast jitter, colour tint).
The pool folder is embedded through the same code path as ``curate embed``; predicted pairs
(flat index, k=16) are compared with the planted pairs at several thresholds. Fashion-MNIST itself
holds a few near-identical images: pairs found among originals count as false positives here.

    python -m benchmarks.curate_duplicates --originals 2000 --copies 600 [--weights CKPT --image-size N]
"""

from __future__ import annotations

import argparse
import io
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageEnhance

from benchmarks._shared.embedding import embed_files, encoders
from dinolab.curate.dedup import near_duplicate_pairs
from dinolab.curate.lakes.sets import list_set
from dinolab.pretrain.data import load_fashion_mnist

TRANSFORMS = ("exact", "hflip", "crop", "jpeg", "jitter", "tint")
THRESHOLDS = (0.8, 0.9, 0.95, 0.97, 0.98, 0.99, 0.995, 0.999)


def planted_copy(image: Image.Image, transform: str, rng: np.random.Generator) -> Image.Image:
    if transform == "exact":
        return image.copy()
    if transform == "hflip":
        return image.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    if transform == "crop":
        left, top = rng.integers(1, 4, size=2)
        return image.crop((left, top, 28 - rng.integers(0, 3), 28 - rng.integers(0, 3))).resize((28, 28))
    if transform == "jpeg":
        buffer = io.BytesIO()
        image.save(buffer, format="JPEG", quality=40)
        return Image.open(io.BytesIO(buffer.getvalue())).convert("RGB")
    if transform == "jitter":
        image = ImageEnhance.Brightness(image).enhance(rng.uniform(0.75, 1.25))
        return ImageEnhance.Contrast(image).enhance(rng.uniform(0.75, 1.25))
    if transform == "tint":
        array = np.asarray(image, dtype=np.float32) * np.array(rng.uniform(0.6, 1.0, size=3), dtype=np.float32)
        return Image.fromarray(array.clip(0, 255).astype(np.uint8))
    raise ValueError(transform)


def make_pool(folder: Path, originals: int, copies: int, seed: int) -> dict[tuple[str, str], str]:
    """Write the pool; return planted pairs (sorted names) -> transform."""
    rng = np.random.default_rng(seed)
    images = load_fashion_mnist("test")[0].numpy()
    chosen = rng.choice(len(images), size=originals, replace=False)
    folder.mkdir(parents=True, exist_ok=True)
    names = []
    for i, index in enumerate(chosen):
        name = f"orig_{i:05d}.png"
        Image.fromarray(images[index]).convert("RGB").save(folder / name)
        names.append(name)
    planted = {}
    for j, source in enumerate(rng.choice(originals, size=copies, replace=False)):
        transform = TRANSFORMS[j % len(TRANSFORMS)]
        copy = planted_copy(Image.open(folder / names[source]).convert("RGB"), transform, rng)
        name = f"copy_{j:05d}_{transform}." + ("jpg" if transform == "jpeg" else "png")
        if transform == "jpeg":
            copy.save(folder / name, quality=95)
        else:
            copy.save(folder / name)
        planted[tuple(sorted((names[source], name)))] = transform
    return planted


def evaluate(embeddings: np.ndarray, names: list[str], planted: dict, center: bool) -> list[dict]:
    if center:
        embeddings = embeddings - embeddings.mean(axis=0, keepdims=True)
    results = []
    for threshold in THRESHOLDS:
        pairs = near_duplicate_pairs(embeddings, threshold, k=16, kind="flat")
        found = {tuple(sorted((names[a], names[b]))) for a, b in zip(pairs.first, pairs.second)}
        hits = found & set(planted)
        per_transform = {
            t: round(sum(1 for p in hits if planted[p] == t) / max(1, sum(1 for v in planted.values() if v == t)), 3)
            for t in TRANSFORMS
        }
        results.append({
            "threshold": threshold,
            "pairs_found": len(found),
            "precision": round(len(hits) / max(1, len(found)), 3),
            "recall": round(len(hits) / len(planted), 3),
            "recall_by_transform": per_transform,
        })
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--originals", type=int, default=2000)
    parser.add_argument("--copies", type=int, default=600)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--weights", help="a trained dinolab checkpoint to evaluate as well")
    parser.add_argument("--image-size", type=int)
    parser.add_argument("--json", type=Path, help="write the results here")
    args = parser.parse_args()
    torch.set_num_threads(2)
    report = {"originals": args.originals, "copies": args.copies, "encoders": []}
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "pool"
        planted = make_pool(folder, args.originals, args.copies, args.seed)
        files = [Path(path).name for path in list_set(str(folder))]
        for label, model, size, mean, std in encoders(args.seed, args.weights, args.image_size):
            start = time.perf_counter()
            embeddings = embed_files(model, folder, files, size, mean, std)
            seconds = time.perf_counter() - start
            for center in (False, True):
                rows = evaluate(embeddings, files, planted, center)
                report["encoders"].append(
                    {"encoder": label, "centred": center, "embed_seconds": round(seconds, 1), "results": rows}
                )
                print(f"\n{label}  (mean-centred: {center}; embedding {len(files)} images took {seconds:.1f}s)")
                print(f"{'thresh':>7}{'pairs':>7}{'prec':>7}{'recall':>7}  " + " ".join(f"{t:>6}" for t in TRANSFORMS))
                for r in rows:
                    print(f"{r['threshold']:>7}{r['pairs_found']:>7}{r['precision']:>7}{r['recall']:>7}  "
                          + " ".join(f"{r['recall_by_transform'][t]:>6}" for t in TRANSFORMS))
    if args.json:
        args.json.write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
