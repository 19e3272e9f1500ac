"""``features segment``: one-shot segmentation of target images from a reference image and its mask."""

from __future__ import annotations

import argparse
from pathlib import Path

from dinolab.features.cli import UserError
from dinolab.features.cli.visualize import add_backbone_arguments, backbone_caption, backbone_from_args, user_facing_errors


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "segment", help="segment targets like the masked object of a reference image (no training)",
        description=(
            "Mean foreground patch feature of the reference (mask pooled onto the patch grid by area), cosine "
            "similarity to every target patch, upsampled and thresholded. --method fgbg assigns each patch to "
            "the nearer of the foreground and background prototypes instead. Writes DIR/<target>_segment.png "
            "(overlay) and DIR/<target>_mask.png; prints IoU for targets with a --target-mask."
        ),
    )
    parser.add_argument("--ref", required=True, metavar="IMG", help="reference image")
    parser.add_argument("--ref-mask", required=True, metavar="MASK", help="binary mask of the reference object")
    parser.add_argument("--target", required=True, nargs="+", metavar="IMG", help="images to segment")
    parser.add_argument(
        "--target-mask", nargs="+", metavar="MASK", default=None,
        help="ground-truth masks, one per --target in the same order, to print IoU",
    )
    parser.add_argument("--method", choices=("similarity", "fgbg"), default="similarity")
    parser.add_argument(
        "--threshold", type=float, default=None,
        help="similarity method: cut as a fraction of the score range in [0, 1] (default: Otsu's method)",
    )
    parser.add_argument("--out", required=True, metavar="DIR", help="output folder")
    add_backbone_arguments(parser)
    parser.set_defaults(func=run)


def _features(model, image, size):
    import torch

    from dinolab.features.viz.inputs import image_to_tensor

    with torch.no_grad():
        output = model.forward_features(image_to_tensor(image, model, size))
    return output.patch_tokens[0], output.grid_hw


def run(args: argparse.Namespace) -> int:
    import numpy as np
    from PIL import Image
    from tqdm import tqdm

    from dinolab.features.segment import intersection_over_union, patch_coverage, prototypes, segment_target
    from dinolab.features.segment.picture import render_segmentation
    from dinolab.features.viz.inputs import load_mask, load_rgb, resize_mask

    if args.target_mask is not None and len(args.target_mask) != len(args.target):
        raise UserError(f"{len(args.target)} --target image(s) but {len(args.target_mask)} --target-mask file(s)")
    if args.threshold is not None and not 0 <= args.threshold <= 1:
        raise UserError(f"--threshold must be in [0, 1], got {args.threshold}")
    if args.threshold is not None and args.method == "fgbg":
        raise UserError("--threshold applies to --method similarity; fgbg cuts where both prototypes are equal")
    model = backbone_from_args(args)
    out = Path(args.out)
    ious = []
    with user_facing_errors():
        reference = load_rgb(args.ref)
        reference_mask = resize_mask(load_mask(args.ref_mask), reference.shape[:2], args.ref_mask)
        features, grid = _features(model, reference, args.size)
        try:
            foreground, background = prototypes(features, patch_coverage(reference_mask, grid))
        except ValueError as error:
            raise UserError(f"{args.ref_mask}: {error}") from error
        truths = args.target_mask or [None] * len(args.target)
        for path, truth_path in zip(tqdm(args.target, desc="segment", disable=len(args.target) < 3), truths):
            target = load_rgb(path)
            truth = None if truth_path is None else resize_mask(load_mask(truth_path), target.shape[:2], truth_path)
            features, grid = _features(model, target, args.size)
            result = segment_target(
                features, grid, foreground, background, target.shape[:2], args.method, args.threshold
            )
            iou = None if truth is None else intersection_over_union(result.mask, truth)
            stem = Path(path).stem
            out.mkdir(parents=True, exist_ok=True)
            Image.fromarray((result.mask * 255).astype(np.uint8)).save(out / f"{stem}_mask.png")
            caption = f"one-shot segmentation ({args.method}) — {backbone_caption(args)}"
            picture = render_segmentation(
                reference, reference_mask, target, result, out / f"{stem}_segment.png", truth, iou, caption
            )
            line = f"{path}: foreground {result.mask.mean():.1%} of pixels"
            if iou is not None:
                ious.append(iou)
                line += f", IoU {iou:.3f}"
            print(f"{line} -> {picture}")
    if len(ious) > 1:
        print(f"mean IoU over {len(ious)} targets: {np.mean(ious):.3f}")
    return 0
