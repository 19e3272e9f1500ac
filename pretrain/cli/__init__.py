"""The ``dinolab`` command line: one module per subcommand, each exposing ``add_parser(subparsers)``.

A subcommand module registers its parser and sets ``func`` (called with the parsed namespace, returning
an exit code). Keep imports of heavy libraries inside ``func`` so that ``dinolab --help`` stays fast.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

SUBCOMMAND_MODULES: tuple[str, ...] = (
    "pretrain.cli.info",
    "pretrain.cli.convert",
    "pretrain.cli.train",
    "pretrain.cli.distill",
    "pretrain.cli.demo",
    "pretrain.cli.knn",
    "pretrain.cli.linear",
    "pretrain.cli.finetune",
    "pretrain.cli.index",
    "pretrain.cli.search",
    "pretrain.cli.visualize",
    "pretrain.cli.segment",
    "pretrain.cli.probe",
    "pretrain.cli.extract",
)


class UserError(Exception):
    """A problem with the user's input: printed as one clear line, exit code 2, no traceback."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="pretrain",
        description="DINO and DINOv2 self-supervised vision: backbones, pretraining, features, curation.",
    )
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for module_name in SUBCOMMAND_MODULES:
        importlib.import_module(module_name).add_parser(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except UserError as error:
        print(f"pretrain {args.command}: error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"pretrain {args.command}: interrupted", file=sys.stderr)
        return 130
