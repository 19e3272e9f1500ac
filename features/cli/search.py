"""``features search``: the nearest indexed images of query images, as a table, JSON and a contact sheet."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from dinolab.features.cli import UserError

EXAMPLES = """examples:
  features search --index photos.index query.jpg -k 5
  features search --index photos.index a.jpg b.png -k 8 --sheet neighbours.png --json hits.json
"""


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "search",
        help="find the nearest indexed images of query images",
        description="Embed each query image with the model that built --index (same preprocessing), and "
        "print its k nearest indexed images with cosine similarity.",
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("queries", nargs="+", type=Path, metavar="IMG", help="query image file(s)")
    parser.add_argument("--index", required=True, type=Path, help="directory written by `features index build`")
    parser.add_argument("-k", "--k", type=int, default=5, help="neighbours per query (default 5)")
    parser.add_argument("--sheet", type=Path, metavar="PNG", help="write a contact sheet of queries and neighbours")
    parser.add_argument("--json", dest="json_out", metavar="FILE", help="write the hits as JSON ('-' = stdout)")
    parser.add_argument("--weights", help="load the model from here instead of the path stored in the index "
                                          "(it must be the same model)")
    parser.add_argument("--nprobe", type=int, help="ivf: lists visited per query (more = better recall)")
    parser.add_argument("--ef-search", type=int, help="hnsw: candidate list size (more = better recall)")
    parser.add_argument("--device", help="torch device (default: cuda if available, else cpu)")
    parser.set_defaults(func=run)


def embed_queries(model, transform, paths: list[Path], device) -> "torch.Tensor":  # noqa: F821
    """CLS embeddings ``[Q, D]`` of the query images; an unreadable query is a UserError."""
    import torch

    from dinolab.pretrain.data import ImageDecodeError, load_image

    images = []
    for path in paths:
        try:
            images.append(transform(load_image(path)))
        except ImageDecodeError as error:
            raise UserError(f"query {path}: {error.reason}") from error
    autocast = torch.autocast("cuda", dtype=torch.bfloat16, enabled=device.type == "cuda")
    with torch.inference_mode(), autocast:
        return model(torch.stack(images).to(device)).float().cpu()


def run(args: argparse.Namespace) -> int:
    from dinolab.features.cli.frozen_features import check_positive, load_model, make_transform, resolve_device
    from dinolab.features.eval.feature_cache import model_fingerprint
    from dinolab.features.retrieval import FeatureIndex, RetrievalIndexError

    check_positive(args, "k", "nprobe", "ef_search")
    try:
        index = FeatureIndex.load(args.index)
    except RetrievalIndexError as error:
        raise UserError(str(error)) from error
    described = index.model_description
    weights = args.weights or described.get("weights")
    if not weights:
        raise UserError(f"{args.index} does not say which model built it; pass --weights")
    device = resolve_device(args.device)
    model = load_model(weights, device)
    if described.get("fingerprint") and model_fingerprint(model) != described["fingerprint"]:
        raise UserError(
            f"the model from {weights} is not the one that built {args.index} (weights differ); "
            "search with the same weights, or rebuild the index"
        )
    pre = described.get("preprocessing", {})
    transform, _ = make_transform(model, pre.get("input_size"), pre.get("resize_size"))
    index.set_search_parameters(args.nprobe, args.ef_search)
    try:
        hits = index.search(embed_queries(model, transform, args.queries, device), args.k)
    except RetrievalIndexError as error:
        raise UserError(str(error)) from error
    for query, row in zip(args.queries, hits):
        print(f"query {query}")
        print(f"{'rank':>6}{'score':>9}  name")
        for hit in row:
            print(f"{hit.rank + 1:>6}{hit.score:>9.4f}  {hit.name}")
    payload = [
        {"query": str(query), "neighbours": [{"rank": h.rank + 1, "name": h.name, "score": h.score} for h in row]}
        for query, row in zip(args.queries, hits)
    ]
    if args.json_out == "-":
        json.dump(payload, sys.stdout, indent=2)
        print()
    elif args.json_out:
        Path(args.json_out).write_text(json.dumps(payload, indent=2))
    if args.sheet:
        write_sheet(args.sheet, args.queries, hits, Path(described.get("images_root", ".")))
        print(f"contact sheet: {args.sheet}", file=sys.stderr)
    return 0


def write_sheet(path: Path, queries: list[Path], hits, images_root: Path) -> None:
    """Contact sheet PNG; indexed images that moved or became unreadable show as grey tiles."""
    from dinolab.pretrain.data import ImageDecodeError, load_image
    from dinolab.core.contact_sheet import contact_sheet

    def thumbnail(file: Path):
        try:
            return load_image(file, max_side=512)
        except ImageDecodeError:
            return None

    rows = [
        (load_image(query, max_side=512), query.name, [(thumbnail(images_root / h.name), h.name, h.score) for h in row])
        for query, row in zip(queries, hits)
    ]
    path.parent.mkdir(parents=True, exist_ok=True)
    contact_sheet(rows).save(path)
