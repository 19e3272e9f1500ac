"""The ``features`` command line: uses of a trained backbone, one module per subcommand.

Evaluation (knn, linear, finetune), retrieval (index, search), pictures (visualize, segment, probe) and
feature files (extract). It shares the dispatcher and :class:`UserError` of :mod:`pretrain.cli`;
pretrain never imports this package.
"""

from __future__ import annotations

from collections.abc import Sequence

from dinolab.pretrain.cli import UserError, build_parser, run_command_line

SUBCOMMAND_MODULES: tuple[str, ...] = (
    "dinolab.features.cli.knn",
    "dinolab.features.cli.linear",
    "dinolab.features.cli.finetune",
    "dinolab.features.cli.index",
    "dinolab.features.cli.search",
    "dinolab.features.cli.visualize",
    "dinolab.features.cli.segment",
    "dinolab.features.cli.probe",
    "dinolab.features.cli.extract",
)
DESCRIPTION = "Uses of a DINO/DINOv2 backbone: k-NN, linear and fine-tuning evaluation, retrieval, pictures, features."

__all__ = ["SUBCOMMAND_MODULES", "UserError", "main"]


def main(argv: Sequence[str] | None = None) -> int:
    return run_command_line(build_parser("features", DESCRIPTION, SUBCOMMAND_MODULES, epilog=None), argv)
