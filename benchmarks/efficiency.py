"""Speed and memory of the DINOv2 efficiency techniques, one forward+backward per training step.

Two tables from one run, each variant measured in a fresh process (so its peak memory is its own):

1. A multi-crop student step, ``B`` images × (2 global 224 px + 8 local 98 px crops):
   ``separate`` (baseline: one forward per crop size), ``packed`` (all crops in one sequence with a
   block-diagonal mask, DINOv2 Sec. 5), ``drop_path`` (efficient stochastic depth at rate 0.4),
   ``compile`` (``torch.compile`` of every block; compile time reported apart) and ``checkpoint``
   (activation checkpointing per block).
2. Stochastic depth at rate 0.4 on one batch of 224 px images: the branch computed on the kept
   subset (``dp_subset``) vs computed on every sample and masked (``dp_masking``).

Times are medians over the timed steps: wall-clock ``step s`` (images/s) and the process's CPU time
``CPU s`` (all its threads). On a shared machine prefer ``--threads 1`` and the CPU time: it is then
the process's own computation, whereas with several threads it includes spinning while a partner
thread waits for a core. Time ratios are speed-ups over the baseline (> 1 is faster); the memory ratio
is variant / baseline. Peak memory: ``torch.cuda.max_memory_allocated`` on CUDA; on CPU the growth of
the peak resident set (``ru_maxrss``) over the resident set just before the first step.

    python -m benchmarks.efficiency --arch vit_small --batch-size 2 --steps 3
    python -m benchmarks.efficiency --arch vit_pico --batch-size 2 --steps 2 --dp-batch-size 8  # quick
"""

from __future__ import annotations

import argparse
import concurrent.futures
import multiprocessing
import resource
import statistics
import time
from dataclasses import dataclass

import torch
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from dinolab.pretrain.models import build_vit
from dinolab.pretrain.models.layers import Block
from dinolab.pretrain.models.packing import forward_features_packed

MULTI_CROP_VARIANTS = ("separate", "packed", "drop_path", "compile", "checkpoint")
DROP_PATH_VARIANTS = ("dp_masking", "dp_subset")
DROP_RATE = 0.4


@dataclass(frozen=True)
class Settings:
    arch: str
    batch_size: int
    dp_batch_size: int
    steps: int
    warmup: int
    device: str
    threads: int


class CheckpointedBlock(nn.Module):
    """Recomputes its block's activations in backward instead of storing them."""

    def __init__(self, block: Block) -> None:
        super().__init__()
        self.block = block

    def forward(self, x: Tensor, attn_mask: Tensor | None = None) -> Tensor:
        return checkpoint(self.block, x, attn_mask, use_reentrant=False)


class MaskedDropPathBlock(nn.Module):
    """Classic stochastic depth: branches computed on every sample, then zeroed per sample."""

    def __init__(self, block: Block, rate: float) -> None:
        super().__init__()
        self.block = block
        self.keep = 1.0 - rate

    def _masked(self, x: Tensor, branch) -> Tensor:
        mask = x.new_empty(x.shape[0], 1, 1).bernoulli_(self.keep)
        return x + branch(x) * mask / self.keep

    def forward(self, x: Tensor, attn_mask: Tensor | None = None) -> Tensor:
        x = self._masked(x, self.block._attn_branch)
        return self._masked(x, self.block._ffn_branch)


def _rss_bytes() -> int:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * resource.getpagesize()


def _build(variant: str, settings: Settings) -> nn.Module:
    rate = DROP_RATE if variant in ("drop_path", "dp_subset", "dp_masking") else 0.0
    model = build_vit(settings.arch, drop_path_rate=rate).to(settings.device).train()
    if variant == "compile":
        for block in model.blocks:
            block.compile()
    elif variant == "checkpoint":
        model.blocks = nn.ModuleList(CheckpointedBlock(block) for block in model.blocks)
    elif variant == "dp_masking":
        model.blocks = nn.ModuleList(MaskedDropPathBlock(block, DROP_RATE) for block in model.blocks)
    return model


def _inputs(variant: str, settings: Settings) -> list[Tensor]:
    make = lambda n, size: torch.randn(n, 3, size, size, device=settings.device)  # noqa: E731
    if variant in DROP_PATH_VARIANTS:
        return [make(settings.dp_batch_size, 224)]
    return [make(2 * settings.batch_size, 224), make(8 * settings.batch_size, 98)]


def _step(model: nn.Module, variant: str, crops: list[Tensor]) -> None:
    with torch.autocast(crops[0].device.type, dtype=torch.bfloat16, enabled=crops[0].is_cuda):
        if variant == "packed":
            outputs = forward_features_packed(model, crops)
        else:
            outputs = model.forward_features(crops)
        loss = sum(o.cls_token.float().square().mean() + o.patch_tokens.float().square().mean() for o in outputs)
    loss.backward()
    model.zero_grad(set_to_none=True)


def _synchronize(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def measure(variant: str, settings: Settings) -> dict[str, float]:
    """Images/s and peak step memory of one variant (run in its own process)."""
    torch.set_num_threads(settings.threads)
    torch.manual_seed(0)
    model = _build(variant, settings)
    crops = _inputs(variant, settings)
    images = crops[0].shape[0] if variant in DROP_PATH_VARIANTS else settings.batch_size
    on_cuda = settings.device.startswith("cuda")
    if on_cuda:
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
    else:
        base = _rss_bytes()
    start = time.perf_counter()
    for _ in range(settings.warmup):
        _step(model, variant, crops)
    _synchronize(settings.device)
    warmup_s = time.perf_counter() - start
    wall, cpu = [], []
    for _ in range(settings.steps):
        start, start_cpu = time.perf_counter(), time.process_time()
        _step(model, variant, crops)
        _synchronize(settings.device)
        wall.append(time.perf_counter() - start)
        cpu.append(time.process_time() - start_cpu)
    if on_cuda:
        peak = torch.cuda.max_memory_allocated()
    else:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # KiB on Linux
    step_s = statistics.median(wall)
    return {
        "images_per_s": images / step_s,
        "step_s": step_s,
        "cpu_s": statistics.median(cpu),
        "peak_mib": (peak - base) / 2**20,
        "warmup_s": warmup_s,
    }


def _run_isolated(variant: str, settings: Settings) -> dict[str, float]:
    context = multiprocessing.get_context("spawn")
    with concurrent.futures.ProcessPoolExecutor(max_workers=1, mp_context=context) as pool:
        result = pool.submit(measure, variant, settings).result()
    print(f"  {variant}: {result['step_s']:.2f} s/step, {result['peak_mib']:.0f} MiB", flush=True)
    return result


def _print_table(title: str, results: dict[str, dict[str, float]], baseline: str) -> None:
    print(f"\n{title}")
    header = ("variant", "images/s", "× base", "step s", "CPU s", "× base", "peak MiB", "× base", "warm-up s")
    print("{:<12} {:>9} {:>7} {:>7} {:>7} {:>7} {:>9} {:>7} {:>9}".format(*header))
    base = results[baseline]
    for name, r in results.items():
        print(
            f"{name:<12} {r['images_per_s']:>9.2f} {r['images_per_s'] / base['images_per_s']:>7.2f} "
            f"{r['step_s']:>7.2f} {r['cpu_s']:>7.2f} {base['cpu_s'] / r['cpu_s']:>7.2f} "
            f"{r['peak_mib']:>9.0f} {r['peak_mib'] / base['peak_mib']:>7.2f} {r['warmup_s']:>9.1f}"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--arch", default="vit_small", help="backbone preset (vit_pico for a quick check)")
    parser.add_argument("--batch-size", type=int, default=2, help="images per step (each 2×224 + 8×98 crops)")
    parser.add_argument("--dp-batch-size", type=int, default=32, help="224 px images per drop-path step")
    parser.add_argument("--steps", type=int, default=3, help="timed steps per variant")
    parser.add_argument("--warmup", type=int, default=1, help="untimed steps first (compilation happens here)")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads(), help="CPU threads")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument(
        "--variants",
        nargs="+",
        default=list(MULTI_CROP_VARIANTS + DROP_PATH_VARIANTS),
        choices=MULTI_CROP_VARIANTS + DROP_PATH_VARIANTS,
    )
    args = parser.parse_args()
    settings = Settings(
        args.arch, args.batch_size, args.dp_batch_size, args.steps, args.warmup, args.device, args.threads
    )
    print(
        f"{args.arch} on {args.device} ({args.threads} threads), torch {torch.__version__}; "
        f"fp32 on CPU, bf16 autocast on CUDA; {args.steps} timed steps after {args.warmup} warm-up"
    )
    multi = {v: _run_isolated(v, settings) for v in args.variants if v in MULTI_CROP_VARIANTS}
    if multi:
        baseline = "separate" if "separate" in multi else next(iter(multi))
        _print_table(
            f"multi-crop step, forward+backward, {args.batch_size} images × (2×224 + 8×98 px), "
            f"baseline '{baseline}'",
            multi,
            baseline,
        )
    drop = {v: _run_isolated(v, settings) for v in args.variants if v in DROP_PATH_VARIANTS}
    if drop:
        baseline = "dp_masking" if "dp_masking" in drop else next(iter(drop))
        _print_table(
            f"stochastic depth rate {DROP_RATE}, forward+backward, {args.dp_batch_size} × 224 px, "
            f"baseline '{baseline}'",
            drop,
            baseline,
        )


if __name__ == "__main__":
    main()
