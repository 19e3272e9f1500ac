"""Planted off-domain pool: precision of retrieval-based selection (``curate sample``).

Curated set: Fashion-MNIST training images. Pool: held-out Fashion-MNIST test images (in-domain)
mixed with off-domain images — sklearn ``load_digits`` (8x8 upscaled), random crops of the
scikit-image sample photos and textures, and noise. Both sets go through the embed code path; then
sample-based retrieval (``neighbours``) and cluster-based retrieval (``clusters``, on a k-means of the
pool) select images. Precision = in-domain fraction of the selection; the pool's in-domain fraction is
the precision of selecting at random.

    python -m benchmarks.curate_selection [--weights CKPT]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from benchmarks._shared.embedding import embed_files, encoders
from dinolab.curate.lakes.sets import list_set
from dinolab.curate.kmeans import hierarchical_kmeans
from dinolab.curate.sample import retrieve_from_clusters, retrieve_nearest
from dinolab.pretrain.data import load_fashion_mnist

PHOTOS = ("astronaut", "brick", "camera", "cat", "coffee", "coins", "grass", "gravel", "horse",
          "immunohistochemistry", "moon", "page", "rocket", "text", "clock")


def off_domain(counts: dict[str, int], rng: np.random.Generator) -> dict[str, list[np.ndarray]]:
    """28x28 uint8 RGB images per source."""
    import skimage.data
    from sklearn.datasets import load_digits

    digits = load_digits().images
    picks = rng.choice(len(digits), size=counts["digits"], replace=False)
    out = {"digits": [np.asarray(Image.fromarray((digits[i] * 16).clip(0, 255).astype(np.uint8))
                                 .resize((28, 28), Image.Resampling.BILINEAR).convert("RGB")) for i in picks]}
    photos = [np.asarray(Image.fromarray(getattr(skimage.data, name)()).convert("RGB")) for name in PHOTOS]
    crops = []
    for _ in range(counts["photos"]):
        photo = photos[rng.integers(len(photos))]
        side = int(rng.integers(48, min(photo.shape[:2])))
        top, left = rng.integers(0, photo.shape[0] - side + 1), rng.integers(0, photo.shape[1] - side + 1)
        crop = Image.fromarray(photo[top : top + side, left : left + side]).resize((28, 28), Image.Resampling.BICUBIC)
        crops.append(np.asarray(crop))
    out["photos"] = crops
    out["noise"] = [(rng.random((28, 28, 3)) * 255 * rng.uniform(0.2, 1)).astype(np.uint8)
                    for _ in range(counts["noise"])]
    return out


def write(folder: Path, prefix: str, images) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for i, image in enumerate(images):
        Image.fromarray(image).convert("RGB").save(folder / f"{prefix}_{i:05d}.png")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--curated", type=int, default=300)
    parser.add_argument("--in-domain", type=int, default=1000)
    parser.add_argument("--digits", type=int, default=500)
    parser.add_argument("--photos", type=int, default=300)
    parser.add_argument("--noise", type=int, default=200)
    parser.add_argument("--per-query", type=int, default=4)
    parser.add_argument("--clusters", type=int, default=40)
    parser.add_argument("--per-cluster", type=int, default=20)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--weights")
    parser.add_argument("--image-size", type=int)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    torch.set_num_threads(2)
    rng = np.random.default_rng(args.seed)
    train = load_fashion_mnist("train")[0].numpy()
    test = load_fashion_mnist("test")[0].numpy()
    results = {"pool": {"fashion": args.in_domain, "digits": args.digits, "photos": args.photos,
                        "noise": args.noise}, "curated": args.curated, "methods": []}
    with tempfile.TemporaryDirectory() as tmp:
        pool_dir, curated_dir = Path(tmp) / "pool", Path(tmp) / "curated"
        write(curated_dir, "curated", train[rng.choice(len(train), args.curated, replace=False)])
        write(pool_dir, "fashion", test[rng.choice(len(test), args.in_domain, replace=False)])
        for source, images in off_domain(
            {"digits": args.digits, "photos": args.photos, "noise": args.noise}, rng
        ).items():
            write(pool_dir, source, images)
        pool_files, curated_files = ([Path(path).name for path in list_set(str(folder))] for folder in (pool_dir, curated_dir))
        source_of = np.array([name.split("_")[0] for name in pool_files])
        base_rate = float(np.mean(source_of == "fashion"))
        print(f"pool: {len(pool_files)} images, in-domain fraction {base_rate:.3f}; curated: {len(curated_files)}")
        for label, model, size, mean, std in encoders(args.seed, args.weights, args.image_size):
            start = time.perf_counter()
            pool, curated = (embed_files(model, folder, files, size, mean, std)
                             for folder, files in ((pool_dir, pool_files), (curated_dir, curated_files)))
            tree = hierarchical_kmeans(pool, [args.clusters], seed=args.seed)
            selections = {
                f"neighbours (N={args.per_query})": retrieve_nearest(
                    curated, pool, args.per_query),
                f"clusters (k={args.clusters}, M={args.per_cluster})": retrieve_from_clusters(
                    curated, pool, tree.labels(1), tree.centroids[0], args.per_cluster,
                    seed=args.seed),
            }
            seconds = time.perf_counter() - start
            for method, selection in selections.items():
                sources = source_of[selection.pool_index]
                row = {
                    "encoder": label, "method": method, "selected": len(selection),
                    "precision": round(float(np.mean(sources == "fashion")), 3) if len(selection) else None,
                    "in_domain_recall": round(float(np.sum(sources == "fashion") / args.in_domain), 3),
                    "off_domain_selected": {s: int(np.sum(sources == s)) for s in ("digits", "photos", "noise")},
                    "seconds": round(seconds, 1),
                }
                results["methods"].append(row)
                print(json.dumps(row))
    results["random_selection_precision"] = round(base_rate, 3)
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
