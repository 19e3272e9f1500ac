"""dinolab curate: LVD-142M-style data curation - embed, dedup, cluster, select, report, or run all.

Every step reads and writes plain files in one work folder (layout in curate.pipeline) and can
be rerun: finished embedding chunks and finished steps are skipped unless --force.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

DEFAULT_DUP_THRESHOLD = 0.95

EPILOG = """examples:
  dinolab curate embed --images data/pool --name pool --out work --weights ckpt.pth
  torchrun --nproc-per-node 4 -m pretrain curate embed --images data/pool --name pool --out work ...
  dinolab curate dedup --out work --threshold 0.95 --against curated eval_set
  dinolab curate cluster --out work --levels 3 --k 1000,100,10 --resampling-steps 1
  dinolab curate select --out work --method auto --per-query 4
  dinolab curate report --out work
  dinolab curate run --pool data/pool --curated data/curated --out work --arch vit_pico
"""


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "curate",
        help="curate an image pool: embed, dedup, cluster, select, report",
        description=__doc__,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    steps = parser.add_subparsers(dest="step", metavar="STEP", required=True)

    embed = steps.add_parser("embed", help="embed an image folder in resumable chunks (torchrun-shardable)")
    embed.add_argument("--images", type=Path, required=True, help="folder of images (searched recursively)")
    embed.add_argument("--name", default="pool", help="set name: pool, curated, or an evaluation set name")
    _add_work(embed)
    _add_embed_options(embed)
    embed.set_defaults(func=run_embed)

    dedup = steps.add_parser("dedup", help="remove near-duplicates in the pool and leaks of other sets")
    _add_work(dedup)
    _add_dedup_options(dedup)
    dedup.set_defaults(func=run_dedup)

    cluster = steps.add_parser("cluster", help="hierarchical k-means of the deduplicated pool")
    _add_work(cluster)
    _add_cluster_options(cluster)
    cluster.set_defaults(func=run_cluster)

    select = steps.add_parser("select", help="retrieve pool images near the curated set, or balanced sampling")
    _add_work(select)
    _add_select_options(select)
    select.set_defaults(func=run_select)

    report = steps.add_parser("report", help="counts, cluster-size histogram and contact sheets")
    _add_work(report)
    _add_report_options(report)
    report.set_defaults(func=run_report)

    everything = steps.add_parser("run", help="all steps: embed pool+curated(+eval), dedup, cluster, select, report")
    everything.add_argument("--pool", type=Path, required=True, help="folder of uncurated images")
    everything.add_argument("--curated", type=Path, help="folder of curated images (retrieval queries)")
    everything.add_argument(
        "--eval", type=Path, nargs="*", default=[], metavar="DIR",
        help="evaluation image folders: pool images duplicating them are removed",
    )
    _add_work(everything)
    _add_embed_options(everything)
    _add_dedup_options(everything, with_against=False)
    _add_cluster_options(everything)
    _add_select_options(everything)
    _add_report_options(everything)
    everything.set_defaults(func=run_all)


def _add_work(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", type=Path, required=True, help="work folder shared by all steps")
    parser.add_argument("--force", action="store_true", help="redo the step instead of skipping finished work")
    parser.add_argument("--seed", type=int, default=0, help="seed for random weights, k-means and sampling")


def _add_embed_options(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("embedding")
    group.add_argument(
        "--arch", help="architecture name (vit_small, dinov2_vits14_reg, ...; random weights unless --weights), "
        "or 'pixels' for a raw-pixel baseline",
    )
    group.add_argument("--weights", help="checkpoint: released .pth, HF folder or dinolab training checkpoint")
    group.add_argument("--image-size", type=int, help="square input side (default: the model's input size)")
    group.add_argument("--chunk-size", type=int, default=1024, help="images per chunk file (default 1024)")
    group.add_argument("--batch-size", type=int, default=64)
    group.add_argument("--num-workers", type=int, default=0, help="image decoding processes")
    group.add_argument("--device", default=None, help="cpu, cuda, cuda:1 (default: cuda:LOCAL_RANK if any)")


def _add_dedup_options(parser: argparse.ArgumentParser, with_against: bool = True) -> None:
    group = parser.add_argument_group("dedup")
    group.add_argument(
        "--threshold", type=float, default=DEFAULT_DUP_THRESHOLD,
        help=f"cosine similarity at or above which two images are copies (default {DEFAULT_DUP_THRESHOLD})",
    )
    group.add_argument("--neighbours", type=int, default=16, help="neighbours searched per image (default 16)")
    group.add_argument("--index", choices=("auto", "flat", "ivf", "hnsw"), default="auto",
                       help="faiss index: exact flat up to 100k images, IVF above (auto)")
    group.add_argument("--nprobe", type=int, default=16, help="IVF lists searched per image (default 16)")
    group.add_argument("--keep", choices=("first", "resolution"), default="first",
                       help="which image of a duplicate group stays: first name, or most pixels")
    group.add_argument("--center", action="store_true",
                       help="subtract the pool's mean embedding before comparing (helps weak backbones)")
    if with_against:
        group.add_argument(
            "--against", nargs="*", default=None, metavar="SET",
            help="embedded sets (names in the work folder or set folders) whose copies leave the pool "
            "(default: curated, when embedded)",
        )


def _add_cluster_options(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("cluster")
    group.add_argument("--levels", type=int, help="levels of hierarchical k-means (default 3, or len(--k))")
    group.add_argument("--k", "--ks", dest="ks", type=_int_list,
                       help="clusters per level, finest first, e.g. 1000,200,50,10 "
                       "(default: pool size / 50, then /10, /5 ...)")
    group.add_argument("--niter", type=int, default=20, help="k-means iterations")
    group.add_argument("--resampling-steps", type=int, default=0, help="resampling refinements per level")


def _add_select_options(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("select")
    group.add_argument("--method", choices=("auto", "neighbours", "clusters", "balanced"), default="auto",
                       help="auto: neighbours for a large curated set, clusters for a small one")
    group.add_argument("--per-query", type=int, default=4, help="neighbours: pool images per curated image")
    group.add_argument("--per-cluster", type=int, default=100, help="clusters: pool images per hit cluster")
    group.add_argument("--min-similarity", type=float, default=-1.0,
                       help="drop retrieved images less similar than this to their curated image")
    group.add_argument("--count", type=int, help="balanced: number of images to select")
    group.add_argument("--large-query-set", type=int, default=1000,
                       help="auto uses neighbours from this many curated images up (default 1000)")


def _add_report_options(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("report")
    group.add_argument("--examples", type=int, default=8, help="rows in each contact sheet")


def _int_list(text: str) -> list[int]:
    try:
        values = [int(part) for part in text.split(",") if part.strip()]
    except ValueError as error:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from error
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"cluster counts must be positive integers, got {text!r}")
    return values


def _user_errors(function):
    """Turn missing inputs and bad values from the library into one-line user errors."""

    def wrapped(args: argparse.Namespace) -> int:
        from pretrain.cli import UserError

        try:
            return function(args)
        except (FileNotFoundError, ValueError) as error:
            raise UserError(str(error)) from error

    return wrapped


@_user_errors
def run_embed(args: argparse.Namespace) -> int:
    from curate.embed import shard_from_environment

    rank, world_size = shard_from_environment()
    _embed_set(args, args.images, args.name, rank, world_size)
    _barrier(world_size)
    return 0


def _embed_set(args: argparse.Namespace, images: Path, name: str, rank: int, world_size: int) -> None:
    import shutil

    from pretrain.cli import UserError
    from curate.embed import embed_folder, list_images
    from curate.manifest import read_json, read_lines, write_json, write_lines
    from curate.pipeline import invalidate_after

    if not images.is_dir():
        raise UserError(f"not a folder: {images}")
    files = list_images(images)
    if not files:
        from pretrain.data import IMAGE_SUFFIXES

        raise UserError(f"no images ({', '.join(sorted(IMAGE_SUFFIXES))}) found under {images}")
    model, model_id, image_size, mean, std = _load_encoder(args)
    directory = args.out / name
    settings = {
        "root": str(images.resolve()), "model": model_id, "image_size": image_size,
        "chunk_size": args.chunk_size, "mean": list(mean), "std": list(std),
    }
    if args.force:
        if rank == 0 and directory.exists():
            shutil.rmtree(directory)
            invalidate_after(args.out, "embed")
        _barrier(world_size)  # no rank writes before the old chunks are gone
    if (directory / "embed.json").is_file():
        previous = read_json(directory / "embed.json")
        if previous != settings:
            changed = sorted(k for k in settings if previous.get(k) != settings[k])
            raise UserError(f"{directory} was embedded with other settings ({', '.join(changed)}); add --force")
        if read_lines(directory / "files.txt") != files:
            raise UserError(f"the files under {images} changed since {directory} was embedded; add --force")
    write_lines(directory / "files.txt", files)
    write_json(directory / "embed.json", settings)
    device = _device(args)
    model.to(device).eval()
    from curate.embed import cls_encoder

    plan = embed_folder(
        cls_encoder(model), images, files, directory / "embeddings", image_size, mean, std, device,
        args.chunk_size, args.batch_size, args.num_workers, rank, world_size,
    )
    print(f"{name}: {len(files)} images; rank {rank}/{world_size} embedded {len(plan.todo)} chunks, "
          f"skipped {len(plan.done)} finished ones -> {directory / 'embeddings'}", file=sys.stderr)


def _load_encoder(args: argparse.Namespace):
    """(model, identifier, image size, mean, std) from --arch / --weights."""
    import torch

    from pretrain.cli import UserError

    if args.arch == "pixels":
        from curate.embed import PixelEncoder

        size = args.image_size or 64
        return PixelEncoder(), "pixels", size, (0.0, 0.0, 0.0), (1.0, 1.0, 1.0)
    if args.weights:
        from pretrain.checkpoints import load_backbone

        try:
            model = load_backbone(args.weights)
        except (FileNotFoundError, ValueError, KeyError, RuntimeError) as error:
            raise UserError(f"cannot load backbone from {args.weights}: {error}") from error
        model_id = f"weights:{Path(args.weights).resolve() if Path(args.weights).exists() else args.weights}"
    elif args.arch:
        from pretrain.models import build_vit

        torch.manual_seed(args.seed)  # every rank builds the same random backbone
        try:
            model = build_vit(args.arch)
        except ValueError as error:
            raise UserError(str(error)) from error
        model_id = f"random:{args.arch}:seed{args.seed}"
        print(f"warning: {args.arch} has random weights (no --weights given)", file=sys.stderr)
    else:
        raise UserError("give --weights CHECKPOINT or --arch NAME (or --arch pixels)")
    pre = model.preprocessing
    size = args.image_size or pre.input_size
    if size % model.patch_size:
        raise UserError(f"--image-size {size} is not a multiple of the patch size {model.patch_size}")
    return model, model_id, size, pre.mean, pre.std


def _device(args: argparse.Namespace):
    import os

    import torch

    if args.device:
        return torch.device(args.device)
    if torch.cuda.is_available():
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
    return torch.device("cpu")


def _barrier(world_size: int) -> None:
    """Wait for every torchrun rank (gloo), so rank 0 continues only once all chunks exist."""
    if world_size <= 1:
        return
    import torch.distributed as dist

    if not dist.is_initialized():
        dist.init_process_group("gloo")
    dist.barrier()


def _print(summary: dict) -> None:
    print(json.dumps(summary, indent=2))


@_user_errors
def run_dedup(args: argparse.Namespace) -> int:
    from curate.pipeline import run_dedup as dedup

    against = args.against
    if against is None:
        against = ["curated"] if (args.out / "curated" / "embed.json").is_file() else []
    _print(dedup(args.out, args.threshold, args.neighbours, args.index, args.keep, against, args.force, args.center, args.nprobe))
    return 0


@_user_errors
def run_cluster(args: argparse.Namespace) -> int:
    from curate.pipeline import run_cluster as cluster

    if args.ks and args.levels and len(args.ks) != args.levels:
        raise ValueError(f"--k has {len(args.ks)} values but --levels is {args.levels}")
    levels = len(args.ks) if args.ks else (args.levels or 3)
    _print(cluster(args.out, args.ks, levels, args.niter, args.resampling_steps, args.seed, args.force))
    return 0


@_user_errors
def run_select(args: argparse.Namespace) -> int:
    from curate.pipeline import run_select as select

    _print(select(
        args.out, args.method, args.per_query, args.per_cluster, args.min_similarity, args.count,
        args.large_query_set, args.seed, args.force,
    ))
    return 0


@_user_errors
def run_report(args: argparse.Namespace) -> int:
    from curate.report import markdown_summary, write_report

    counts = write_report(args.out, seed=args.seed, examples=args.examples)
    print(markdown_summary(counts))
    print(f"report written to {args.out / 'report'}", file=sys.stderr)
    return 0


@_user_errors
def run_all(args: argparse.Namespace) -> int:
    from curate.embed import shard_from_environment

    if args.method != "balanced" and not args.curated:
        raise ValueError("retrieval needs --curated; without it use --method balanced --count N")
    rank, world_size = shard_from_environment()
    sets = [(args.pool, "pool")]
    if args.curated:
        sets.append((args.curated, "curated"))
    sets += [(folder, f"eval_{folder.name}") for folder in args.eval]
    for folder, name in sets:
        _embed_set(args, folder, name, rank, world_size)
    _barrier(world_size)
    if rank != 0:
        return 0
    args.against = [name for _, name in sets[1:]]
    for step in (run_dedup, run_cluster, run_select, run_report):
        step(args)
    return 0
