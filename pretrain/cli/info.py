"""``pretrain info``: list the known architectures and released model names with their shapes."""

from __future__ import annotations

import argparse


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("info", help="list architectures and released model names")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from dinolab.pretrain.models import ARCHITECTURES, RELEASED_NAMES, config_for

    print(f"{'name':<22}{'dim':>6}{'depth':>7}{'heads':>7}{'regs':>6}  ffn")
    for name in list(ARCHITECTURES) + list(RELEASED_NAMES):
        cfg = config_for(name)
        print(
            f"{name:<22}{cfg.embed_dim:>6}{cfg.depth:>7}{cfg.num_heads:>7}"
            f"{cfg.num_register_tokens:>6}  {cfg.ffn}"
        )
    return 0
