"""``features index build``: embed a folder of images and save a faiss nearest-neighbour index."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from dinolab.features.cli import UserError
from dinolab.features.cli.frozen_features import add_model_arguments

EXAMPLES = """examples:
  features index build --weights dinov2_vits14.pth --images photos/ --out photos.index
  features index build --weights run/checkpoint.pth --images big/ --out big.index --kind hnsw
then: features search --index photos.index query.jpg -k 5 --sheet neighbours.png
"""


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    from dinolab.features.retrieval import INDEX_KINDS

    parser = subparsers.add_parser("index", help="build a nearest-neighbour index over image embeddings")
    actions = parser.add_subparsers(dest="index_command", metavar="ACTION", required=True)
    build = actions.add_parser(
        "build",
        help="embed the images of a folder and save an index",
        description="Embed every image under --images with the model's CLS token, L2-normalise, and save a "
        "faiss inner-product (= cosine) index with the file names and the model description to --out. "
        "Unreadable images are skipped and counted.",
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_model_arguments(build)
    build.add_argument("--images", required=True, type=Path, help="folder (searched recursively) or file list")
    build.add_argument("--out", required=True, type=Path, help="index directory to write")
    build.add_argument("--kind", choices=INDEX_KINDS, default="flat",
                       help="flat: exact (default; fine up to ~1M vectors on a GPU, ~100k on CPU); "
                            "ivf: inverted lists, trained by k-means; hnsw: graph search")
    build.add_argument("--nlist", type=int, help="ivf lists (default ≈ 4·sqrt(N), at most N/39)")
    build.add_argument("--hnsw-m", type=int, default=32, help="hnsw links per node (default 32)")
    build.add_argument("--limit", type=int, help="index only the first N images")
    build.add_argument("--overwrite", action="store_true", help="replace an existing index in --out")
    build.set_defaults(func=run_build)


def model_description(weights: str, model, preprocessing: dict, images_root: Path) -> dict:
    """What search needs to embed queries exactly like the indexed images."""
    from dinolab.features.eval.feature_cache import model_fingerprint

    weights_path = Path(weights)
    return {
        "weights": str(weights_path.resolve()) if weights_path.exists() else weights,
        "fingerprint": model_fingerprint(model),
        "arch": model.config.to_dict(),
        "preprocessing": preprocessing,
        "images_root": str(images_root.resolve()),
    }


def run_build(args: argparse.Namespace) -> int:
    from torch.utils.data import Subset

    from dinolab.features.cli.frozen_features import check_positive, load_model, make_transform, resolve_device
    from dinolab.pretrain.data import DatasetError, ImageFolder
    from dinolab.features.extract import extract_features
    from dinolab.features.retrieval import FeatureIndex, RetrievalIndexError

    if args.out.exists() and any(args.out.iterdir()) and not args.overwrite:
        raise UserError(f"{args.out} exists and is not empty; pass --overwrite to replace it")
    check_positive(args, "limit", "batch_size", "size", "resize_size", "nlist", "hnsw_m")
    device = resolve_device(args.device)
    model = load_model(args.weights, device)
    transform, preprocessing = make_transform(model, args.size, args.resize_size)
    try:
        dataset = ImageFolder(args.images, transform=transform)
    except DatasetError as error:
        raise UserError(str(error)) from error
    data = dataset if args.limit is None else Subset(dataset, range(min(args.limit, len(dataset))))
    features = extract_features(model, data, args.batch_size, device=device, num_workers=args.num_workers)
    if features.skipped:
        shown = ", ".join(name for name, _ in features.skipped[:3])
        print(f"skipped {len(features.skipped)} unreadable images ({shown}...)", file=sys.stderr)
    if len(features) == 0:
        raise UserError(f"{args.images}: none of the images could be read")
    root = dataset.root
    try:
        index = FeatureIndex.build(
            features.cls, features.names, model_description(args.weights, model, preprocessing, root),
            kind=args.kind, nlist=args.nlist, hnsw_m=args.hnsw_m,
        )  # fmt: skip
    except (RetrievalIndexError, RuntimeError) as error:
        raise UserError(f"cannot build a {args.kind} index: {error}") from error
    index.save(args.out)
    print(f"indexed {len(index)} images ({index.dim}-d, {args.kind}) in {args.out}")
    return 0
