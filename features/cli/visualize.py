"""``features visualize {attention,pca,match}``: pictures of a backbone's attention and patch features.

The backbone comes from ``--weights`` (a checkpoint file or folder, or a released model name) or from
``--arch NAME`` with random weights; the same two options serve ``features segment`` and ``features probe``.
"""

from __future__ import annotations

import argparse
import contextlib
import sys
import warnings
from collections.abc import Iterator
from pathlib import Path

from dinolab.features.cli import UserError


def add_backbone_arguments(parser: argparse.ArgumentParser) -> None:
    """``--weights`` / ``--arch`` (one required) and ``--size`` (shorter image side in pixels)."""
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--weights", metavar="W", help="checkpoint file or folder, or a released model name")
    source.add_argument("--arch", metavar="NAME", help="architecture with RANDOM weights (see `pretrain info`)")
    parser.add_argument(
        "--size", type=int, default=None, metavar="PX",
        help="shorter image side fed to the model, snapped to the patch size (default: the model's input size)",
    )
    parser.add_argument(
        "--seed", type=int, default=0, help="seed for random weights (--arch) and probe initialisation (0)"
    )


def backbone_from_args(args: argparse.Namespace):
    """Load the backbone named on the command line; bad names or files become a :class:`UserError`."""
    import torch

    from dinolab.features.viz.inputs import load_model

    torch.manual_seed(args.seed)
    if args.size is not None and not 14 <= args.size <= 2048:
        raise UserError(f"--size must be between 14 and 2048 pixels, got {args.size}")
    try:
        return load_model(args.weights, args.arch)
    except (ValueError, KeyError, OSError, RuntimeError) as error:
        raise UserError(f"cannot load the backbone {args.weights or args.arch!r}: {error}") from error


def backbone_caption(args: argparse.Namespace) -> str:
    """Caption naming the weights, and saying so when they are random."""
    if args.arch:
        return f"{args.arch}, RANDOM weights (not pretrained)"
    return f"weights: {Path(args.weights).name or args.weights}"


@contextlib.contextmanager
def user_facing_errors() -> Iterator[None]:
    """Turn input problems into one-line errors and print warnings (e.g. a resized mask) plainly."""
    from dinolab.features.viz.inputs import ImageInputError

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            yield
        except ImageInputError as error:
            raise UserError(str(error)) from error
        finally:
            for warning in caught:
                if issubclass(warning.category, (UserWarning, RuntimeWarning)):
                    print(f"dinolab: warning: {warning.message}", file=sys.stderr)


def _image_stem(path: str) -> str:
    return Path(path).stem or "image"


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "visualize", help="pictures: CLS attention, PCA of patch features, patch matches",
        description="Pictures of what a backbone sees. Writes PNG files to --out.",
    )
    kinds = parser.add_subparsers(dest="picture", metavar="PICTURE", required=True)

    attention = kinds.add_parser(
        "attention", help="CLS→patch attention of one block, per head and averaged",
        description="CLS→patch attention of a block per head and averaged, over each image (one PNG each).",
    )
    attention.add_argument("images", nargs="+", metavar="IMG")
    attention.add_argument("--block", type=int, default=-1, help="block index (default: the last, -1)")
    attention.add_argument("--out", required=True, metavar="DIR", help="output folder")
    add_backbone_arguments(attention)
    attention.set_defaults(func=run_attention)

    pca = kinds.add_parser(
        "pca", help="PCA of patch features → RGB, foreground split by the first component",
        description=(
            "Joint PCA over the patches of all images: component 1 thresholded separates the foreground, "
            "then a PCA of the foreground patches gives RGB (DINOv2 Fig. 1). Writes DIR/pca.png."
        ),
    )
    pca.add_argument("images", nargs="+", metavar="IMG")
    pca.add_argument(
        "--threshold", type=float, default=None,
        help="cut on component 1 scaled to [0, 1] (default: Otsu's method)",
    )
    pca.add_argument("--no-foreground", action="store_true", help="colour all patches with one PCA")
    pca.add_argument("--out", required=True, metavar="DIR", help="output folder")
    add_backbone_arguments(pca)
    pca.set_defaults(func=run_pca)

    match = kinds.add_parser(
        "match", help="mutual nearest patches between two images, drawn as lines",
        description="Mutual nearest-neighbour patches by cosine similarity; the --top strongest are drawn.",
    )
    match.add_argument("image_a", metavar="IMG_A")
    match.add_argument("image_b", metavar="IMG_B")
    match.add_argument("--top", type=int, default=40, help="number of matches drawn (default 40)")
    match.add_argument("--out", required=True, metavar="DIR", help="output folder")
    add_backbone_arguments(match)
    match.set_defaults(func=run_match)


def run_attention(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from dinolab.features.viz.attention import cls_attention, render_attention
    from dinolab.features.viz.inputs import image_to_tensor, load_rgb

    model = backbone_from_args(args)
    if not -len(model.blocks) <= args.block < len(model.blocks):
        raise UserError(f"--block {args.block} is outside this model's {len(model.blocks)} blocks")
    out = Path(args.out)
    with user_facing_errors():
        images = [load_rgb(path) for path in args.images]
        for path, image in zip(tqdm(args.images, desc="attention", disable=len(args.images) < 3), images):
            attention = cls_attention(model, image_to_tensor(image, model, args.size), args.block)
            caption = f"CLS attention, block {args.block % len(model.blocks)} — {backbone_caption(args)}"
            saved = render_attention(image, attention, out / f"{_image_stem(path)}_attention.png", caption)
            print(saved)
    return 0


def _patch_features(model, images, size):
    import torch

    from dinolab.features.viz.inputs import image_to_tensor

    features, grids = [], []
    with torch.no_grad():
        for image in images:
            output = model.forward_features(image_to_tensor(image, model, size))
            features.append(output.patch_tokens[0])
            grids.append(output.grid_hw)
    return features, grids


def run_pca(args: argparse.Namespace) -> int:
    from dinolab.features.viz.inputs import load_rgb
    from dinolab.features.viz.pca import pca_of_patches, render_pca

    if args.threshold is not None and not 0 <= args.threshold <= 1:
        raise UserError(f"--threshold must be in [0, 1], got {args.threshold}")
    model = backbone_from_args(args)
    with user_facing_errors():
        images = [load_rgb(path) for path in args.images]
        features, grids = _patch_features(model, images, args.size)
        try:
            result = pca_of_patches(features, grids, args.threshold, not args.no_foreground)
        except ValueError as error:
            raise UserError(str(error)) from error
        print(render_pca(images, result, Path(args.out) / "pca.png", f"patch PCA — {backbone_caption(args)}"))
    return 0


def run_match(args: argparse.Namespace) -> int:
    from dinolab.features.viz.inputs import load_rgb
    from dinolab.features.viz.match import mutual_nearest_patches, render_matches

    if args.top < 1:
        raise UserError(f"--top must be at least 1, got {args.top}")
    model = backbone_from_args(args)
    with user_facing_errors():
        images = [load_rgb(args.image_a), load_rgb(args.image_b)]
        (features_a, features_b), (grid_a, grid_b) = _patch_features(model, images, args.size)
        matches = mutual_nearest_patches(features_a, features_b)
        shown = matches[: args.top]
        caption = f"{len(shown)} of {len(matches)} mutual nearest patches — {backbone_caption(args)}"
        name = f"match_{_image_stem(args.image_a)}_{_image_stem(args.image_b)}.png"
        print(render_matches(images[0], grid_a, images[1], grid_b, shown, Path(args.out) / name, caption))
    return 0
