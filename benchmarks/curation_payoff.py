"""What curation buys: DINOv2 pretrained at equal steps on the curated shards, the whole lake, a random subset.

The DINOv2 paper's data ablation in small (ViT-g, ImageNet-1k linear: curated LVD-142M 85.8 vs the
uncurated pool 83.3). On the embedded demo lake (:mod:`pipelines.demo_lake`: Fashion-MNIST, off-domain
digits / photo tiles / noise, planted copies and test-set leaks), in one run:

1. ``curate run`` with the main job's configuration (:func:`pipelines.demo.curate_demo_lake`) plus any
   ``--curation`` settings → (a) the curated shards;
2. (b) every pool image and (c) a random subset of the pool as large as (a) (drawn per seed) written
   as shards by the same shard writer (original bytes);
3. the ``fmnist-tiny`` DINOv2 preset trained on each for the **same number of steps** and batch (the
   steps of ``--epochs`` epochs of (a); every epoch-based schedule length is rescaled to those steps so
   warm-ups and cosine decays are identical), once per ``--seeds`` seed, no time budget;
4. Fashion-MNIST test k-NN (k = 10, 20; the 60,000 training images as memory bank) of each teacher.

Printed: per set, its size, the fraction of Fashion-MNIST images in it (training images or copies of
them: the selection's precision for (a)), planted copies that reached it together with their original,
test-set leaks in it, and k-NN top-1 mean ± standard deviation over seeds; then the targets
(a) ≥ (b) + 2 points and (a) > (c). Timings are not the point (steps are fixed), so a busy machine
changes how long it takes, not the numbers.

    .venv/bin/python -m benchmarks.curation_payoff --out outputs/payoff           # 3 seeds, 2 epochs of (a)
    .venv/bin/python -m benchmarks.curation_payoff --out /tmp/p --lake-scale 0.1 --seeds 0 --epochs 0.5
    .venv/bin/python -m benchmarks.curation_payoff --out outputs/payoff-web --fashion 20000 --tiles 60000 --noise 10000 \
        --epochs 5        # a pool that is mostly off-domain, like a web crawl
    .venv/bin/python -m benchmarks.curation_payoff --out outputs/payoff-web --fashion 12000 --tiles 70000 --noise 15000 \
        --steps 3776 --curation sample.min_cluster_hits=2 sample.min_similarity=0.6
                          # 14.3 % in-domain, about LVD-142M's share of its pool (--batch 128: twice the images per step)

A finished run's result is kept in its run folder and reused, so the same command resumes a stopped script.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import statistics
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
from rich.console import Console
from rich.table import Table

from benchmarks._shared.equal_steps import FIXED_LENGTH, equal_step_overrides
from dinolab.curate import tables
from dinolab.curate.shards import ShardSample, image_extension, plan_shards, shard_index, shard_name, write_index, write_shard
from dinolab.pipelines.demo import curate_demo_lake
from dinolab.pipelines.demo_lake import LakeSizes, build_demo_lake, read_truth, set_quality

SHARD_SAMPLES = 5000


def write_set(files: list[Path], out: Path) -> Path:
    """``files`` (original bytes) as shards + ``index.json`` under ``out``, unless written already."""
    index = out / "index.json"
    if index.is_file():
        return out
    out.mkdir(parents=True, exist_ok=True)
    samples = [ShardSample(path.stem, path.read_bytes(), image_extension(path.name, None), {"uri": path.name})
               for path in files]
    plan = plan_shards([s.key for s in samples], [len(s.data) for s in samples], SHARD_SAMPLES, 1 << 30)
    infos = [write_shard(out / shard_name(n), [samples[i] for i in rows]) for n, rows in enumerate(plan)]
    write_index(index, shard_index(infos, name=out.name))
    return out


def set_fingerprint(files: list[Path]) -> str:
    """A short hash of a set's file names: a cached run is reused only for the very same set."""
    return hashlib.sha1("\n".join(sorted(path.name for path in files)).encode()).hexdigest()[:16]


def train(shards: Path, out: Path, seed: int, images: int, reference_images: int, steps: int, batch: int,
          eval_data, fingerprint: str) -> dict:
    """``fmnist-tiny`` for ``steps`` steps of ``batch`` on ``shards`` (no time budget); the final k-NN of its
    teacher. A finished run's result is kept in ``out/result.json`` and reused for the same set (``fingerprint``),
    so a stopped script resumes; a changed curation gives a fresh run."""
    from dinolab.pretrain.train.config import build_config
    from dinolab.pretrain.train.loop import Trainer

    saved = out / "result.json"
    if saved.is_file() and (previous := json.loads(saved.read_text())).get("set") == fingerprint:
        return previous
    base = build_config("fmnist-tiny")
    config = build_config("fmnist-tiny", [*FIXED_LENGTH, f"run.seed={seed}",
                                          *equal_step_overrides(base, images, reference_images, steps, batch)])
    started = time.perf_counter()
    result = Trainer(config, str(shards), out, eval_data=eval_data, progress=False).run()
    if result.steps != steps:
        raise RuntimeError(f"{shards}: ran {result.steps} steps, not {steps}")
    run = {"set": fingerprint, "steps": result.steps, "seconds": time.perf_counter() - started, "skipped": result.skipped_images,
           **{f"knn{k}": v["top1"] for k, v in (result.final_knn or {}).items()}}
    saved.write_text(json.dumps(run))
    return run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=Path("outputs/curation-payoff"))
    parser.add_argument("--lake", type=Path, default=None, help="an existing demo lake (default: OUT/lake)")
    parser.add_argument("--lake-scale", type=float, default=1.0)
    parser.add_argument("--fashion", type=int, help="Fashion-MNIST images in the pool (default: the demo lake's 50,000)")
    parser.add_argument("--tiles", type=int, help="photo tiles in the pool (default: the demo lake's 15,000)")
    parser.add_argument("--noise", type=int, help="noise images in the pool (default: the demo lake's 3,000)")
    parser.add_argument("--epochs", type=float, default=2.0, help="training length, in epochs of the curated set")
    parser.add_argument("--steps", type=int, default=None, help="training length in steps (instead of --epochs)")
    parser.add_argument("--batch", type=int, default=None, help="batch of every run (default: the preset's 64)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--curation", nargs="*", default=[], metavar="SECTION.KEY=VALUE",
                        help="settings added to the main job's curation (e.g. sample.min_cluster_hits=2)")
    parser.add_argument("--workers", type=int, default=None, help="curation workers (default: one per core)")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    console = Console(width=120)
    out = args.out.resolve()
    sizes = LakeSizes().scaled(args.lake_scale)
    sizes = replace(sizes, **{name: value for name in ("fashion", "tiles", "noise")
                              if (value := getattr(args, name)) is not None})
    lake = build_demo_lake(args.lake or out / "lake", sizes)
    console.print(f"lake: {sizes}")
    _, quality = curate_demo_lake(lake, out / "curation", args.workers, console, args.curation)
    truth = read_truth(lake)
    pool = sorted(path for path in lake.pool.iterdir() if path.is_file())
    selection = tables.read_table(out / "curation", "selection").column("uri").to_pylist()
    selected = len(selection)
    sets: dict[str, dict[int, tuple[Path, list[Path]]]] = {"curated": {}, "whole lake": {}, "random subset": {}}
    for seed in args.seeds:
        subset = sorted(np.random.default_rng(1000 + seed).choice(len(pool), size=selected, replace=False).tolist())
        sets["curated"][seed] = (out / "curation" / "shards", [Path(uri) for uri in selection])
        sets["whole lake"][seed] = (write_set(pool, out / "sets" / "whole"), pool)
        sets["random subset"][seed] = (write_set([pool[i] for i in subset], out / "sets" / f"random-{seed}"),
                                       [pool[i] for i in subset])

    from dinolab.pretrain.train.config import build_config
    from dinolab.pretrain.data.eval_splits import fashion_mnist_eval

    base = build_config("fmnist-tiny")
    eval_data = fashion_mnist_eval(base)
    batch = args.batch or base.optim.batch_size
    if selected < batch:
        parser.error(f"the curated set has {selected} images, fewer than one batch of {batch}: use a bigger lake or --batch")
    steps = args.steps or max(1, round(args.epochs * (selected // batch)))
    console.print(f"curated set: {selected:,} images; every run: {steps} steps of batch {batch}")
    results: dict[str, dict] = {}
    for name, by_seed in sets.items():
        runs = []
        for seed, (shards, files) in by_seed.items():
            run = train(shards, out / "runs" / f"{steps}-steps-{batch}" / f"{name.replace(' ', '-')}-{seed}", seed,
                        len(files), selected, steps, batch, eval_data, set_fingerprint(files))
            runs.append({"seed": seed, **set_quality({path.name for path in files}, truth), **run})
            console.print(f"{name}, seed {seed}: k-NN {run.get('knn10', float('nan')):.2f} / "
                          f"{run.get('knn20', float('nan')):.2f} ({run['seconds']:.0f} s)", highlight=False)
        results[name] = {"runs": runs}
    summary = {"steps": steps, "batch": batch, "epochs_of_curated": steps / (selected // batch),
               "curation": quality, "sets": results}
    print_table(console, summary)
    if args.json:
        args.json.write_text(json.dumps(summary, indent=2, default=str))


def _mean_sd(values: list[float]) -> tuple[float, float]:
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def print_table(console: Console, summary: dict) -> None:
    table = Table(title=f"Fashion-MNIST test k-NN after {summary['steps']} steps of batch {summary['batch']}")
    for column in ("set", "images", "Fashion-MNIST", "copies kept", "leaks", "k=10 top-1", "k=20 top-1"):
        table.add_column(column, justify="left" if column == "set" else "right")
    means = {}
    for name, result in summary["sets"].items():
        runs = result["runs"]
        k10, k20 = _mean_sd([r["knn10"] for r in runs]), _mean_sd([r["knn20"] for r in runs])
        means[name] = (k10[0], k20[0])
        first = runs[0]
        table.add_row(name, f"{first['selected']:,}", f"{100 * statistics.fmean(r['precision'] for r in runs):.1f}%",
                      f"{statistics.fmean(r['copies_surviving'] for r in runs):.0f}",
                      f"{statistics.fmean(r['leaks_surviving'] for r in runs):.0f}",
                      f"{k10[0]:.2f} ± {k10[1]:.2f}", f"{k20[0]:.2f} ± {k20[1]:.2f}")
    console.print(table)
    curated, whole, random = means["curated"], means["whole lake"], means["random subset"]
    for k, i in ((10, 0), (20, 1)):
        console.print(f"k={k}: curated − whole lake {curated[i] - whole[i]:+.2f} points (target ≥ +2: "
                      f"{'met' if curated[i] - whole[i] >= 2 else 'not met'}); curated − random subset "
                      f"{curated[i] - random[i]:+.2f} (target > 0: {'met' if curated[i] > random[i] else 'not met'})",
                      highlight=False)


if __name__ == "__main__":
    main()
