"""The ``pretrain`` command line: one module per subcommand, each exposing ``add_parser(subparsers)``.

A subcommand module registers its parser and sets ``func`` (called with the parsed namespace, returning
an exit code). Keep imports of heavy libraries inside ``func`` so that ``pretrain --help`` stays fast.
:func:`run_command_line` is the dispatcher that the ``features`` command line shares.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

SUBCOMMAND_MODULES: tuple[str, ...] = (
    "dinolab.pretrain.cli.info",
    "dinolab.pretrain.cli.convert",
    "dinolab.pretrain.cli.train",
    "dinolab.pretrain.cli.distill",
    "dinolab.pretrain.cli.demo",
)
DESCRIPTION = "DINO and DINOv2 self-supervised vision: backbones, pretraining, distillation."
MOVED_TO_FEATURES = frozenset({"knn", "linear", "finetune", "index", "search", "visualize", "segment", "probe",
                               "extract"})
"""Former ``pretrain`` subcommands that are uses of a backbone: now ``features COMMAND``."""


class UserError(Exception):
    """A problem with the user's input: printed as one clear line, exit code 2, no traceback."""


EPILOG = "uses of a trained backbone (knn, linear, finetune, index, search, visualize, segment, probe, extract): " \
         "the features command, e.g. `features knn --help`"


def build_parser(prog: str = "pretrain", description: str = DESCRIPTION, modules: Sequence[str] | None = None,
                 epilog: str | None = EPILOG) -> argparse.ArgumentParser:
    """The parser of ``prog`` with the subcommands of ``modules`` (default: :data:`SUBCOMMAND_MODULES`)."""
    parser = argparse.ArgumentParser(prog=prog, description=description, epilog=epilog)
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for module_name in SUBCOMMAND_MODULES if modules is None else modules:
        importlib.import_module(module_name).add_parser(subparsers)
    return parser


def run_command_line(parser: argparse.ArgumentParser, argv: Sequence[str] | None) -> int:
    """Parse ``argv`` and run the chosen subcommand; a :class:`UserError` becomes one line and exit code 2."""
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except UserError as error:
        print(f"{parser.prog} {args.command}: error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"{parser.prog} {args.command}: interrupted", file=sys.stderr)
        return 130


def main(argv: Sequence[str] | None = None) -> int:
    words = list(sys.argv[1:] if argv is None else argv)
    if words and words[0] in MOVED_TO_FEATURES:
        print(f"pretrain {words[0]}: error: moved to the features command: run `features {words[0]} ...`",
              file=sys.stderr)
        return 2
    return run_command_line(build_parser(), words)
