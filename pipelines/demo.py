"""The main job on the embedded default data: demo lake → ``curate run`` on a LocalCluster → DINOv2 on the shards.

1. builds the demo lake once (:mod:`pipelines.demo_lake`: Fashion-MNIST plus digits, photo tiles, noise,
   planted copies and test-set leaks);
2. curates it with a seed set of 1,000 Fashion-MNIST training images as the retrieval queries and the
   Fashion-MNIST test split as the evaluation set (no label is used): ingest, embed (raw pixels: no
   weights exist before this run), dedup, cluster, cluster-based retrieval, shard, report;
3. pretrains the ``fmnist-tiny`` DINOv2 preset on the shards (in this process, after the cluster is
   closed: the trainer never runs inside a Dask task);
4. prints one table (images in and out and seconds per stage), the curation's precision against the
   lake's ground truth, and Fashion-MNIST test k-NN of the learned features next to raw pixels.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from rich.console import Console
from rich.table import Table

from dinolab.curate.lakes.sets import name_sets
from dinolab.pipelines.demo_lake import DemoLake, LakeSizes, build_demo_lake, curation_quality
from dinolab.pipelines.dispatch import dask_executor
from dinolab.pipelines.named_configs import resolve_config
from dinolab.pipelines.run import run_curation
from dinolab.schemas.config import load_config

CURATION = [
    "sample.retrieval=clusters",  # a small curated set: the paper's cluster-based retrieval
    "sample.per_cluster=1000",
    "cluster.ks=[1000, 100]",
    "embed.pixel_grid=14",
]


def run_demo(out: Path, minutes: float, workers: int | None, sizes: LakeSizes, console: Console,
             overrides: list[str] = (), progress: bool = True) -> dict:
    """Every step of the main job; returns the summary written to ``OUT/summary.json``."""
    started = time.perf_counter()
    lake = build_demo_lake(out / "lake", sizes)
    lake_seconds = time.perf_counter() - started
    console.print(f"demo lake: {lake.root} ({lake_seconds:.0f} s)")

    curation_out = out / "curation"
    records, quality = curate_demo_lake(lake, curation_out, workers, console, overrides)

    pretrain_started = time.perf_counter()
    knn, raw, pretrain_summary = pretrain_on_shards(curation_out / "shards", out / "pretrain", minutes, progress)
    records.append({"stage": "pretrain", "images_in": quality["selected"], "images_out": None,
                    "seconds": time.perf_counter() - pretrain_started})
    summary = {"stages": records, "lake_seconds": lake_seconds, "curation": quality, "knn_pretrained": knn,
               "knn_raw_pixels": raw, "pretrain": pretrain_summary,
               "total_minutes": (time.perf_counter() - started) / 60}
    (out / "summary.json").write_text(json.dumps(summary, indent=2, default=str))
    print_summary(console, summary)
    return summary


def curate_demo_lake(lake: DemoLake, out: Path, workers: int | None, console: Console,
                     overrides: list[str] = ()) -> tuple[list[dict], dict]:
    """``curate run`` over the demo lake into ``out`` on a LocalCluster; per-stage records and the quality."""
    config = load_config(resolve_config("demo"), CURATION + list(overrides))
    taken: set[str] = set()
    sets = (name_sets([str(lake.pool)], "pool", taken) + name_sets([str(lake.seeds)], "curated", taken)
            + name_sets([str(lake.evaluation)], "eval", taken))
    records = run_curation(out, sets, config, dask_executor(console, workers=workers), console,
                           holder=f"curate demo --out {out}")
    return records, curation_quality(lake, out)


def pretrain_on_shards(shards: Path, out: Path, minutes: float, progress: bool) -> tuple[dict, dict, dict]:
    """Train ``fmnist-tiny`` for ``minutes`` on ``shards``; k-NN of the teacher and of raw pixels."""
    from dinolab.pretrain.data.eval_splits import fashion_mnist_eval
    from dinolab.pretrain.train.config import build_config
    from dinolab.pretrain.train.embeddings_plot import plot_embeddings
    from dinolab.pretrain.train.export import export_teacher
    from dinolab.pretrain.train.knn_eval import backbone_features, raw_pixel_knn
    from dinolab.pretrain.train.loop import Trainer

    config = build_config("fmnist-tiny", [f"run.minutes={minutes}"])
    eval_data = fashion_mnist_eval(config)
    raw = raw_pixel_knn(*eval_data.final)
    trainer = Trainer(config, str(shards), out, resume=(out / "checkpoint.pth").is_file(), eval_data=eval_data,
                      progress=progress)
    result = trainer.run()
    teacher = trainer.model.teacher["backbone"]
    export_teacher(teacher, out)
    test = eval_data.final[1]
    plot_embeddings(backbone_features(teacher, test.images[:3000], config.run.knn_feature), test.images[:3000],
                    test.labels[:3000], out / "embeddings.png")
    epochs = result.steps / trainer.steps_per_epoch
    details = {"steps": result.steps, "epochs": epochs, "images_per_second": result.images_per_second,
               "train_minutes": result.train_minutes, "skipped_samples": result.skipped_images,
               "data": trainer.data.description}
    return ({str(k): v for k, v in (result.final_knn or {}).items()}, {str(k): v for k, v in raw.items()}, details)


def print_summary(console: Console, summary: dict) -> None:
    table = Table(title="dinolab demo: lake → curate run → DINOv2 on the shards")
    for column in ("stage", "images in", "images out", "seconds"):
        table.add_column(column, justify="left" if column == "stage" else "right")
    table.add_row("build lake", "-", "-", f"{summary['lake_seconds']:.1f}")
    for record in summary["stages"]:
        seconds = record.get("seconds")
        table.add_row(record["stage"], _count(record.get("images_in")), _count(record.get("images_out")),
                      "-" if seconds is None else f"{seconds:.1f}")
    console.print(table)
    quality = summary["curation"]
    console.print(
        f"curation: {quality['selected']:,} images selected, {100 * quality['precision']:.1f}% Fashion-MNIST; "
        f"planted copies with their original in the shards: {quality['copies_surviving']} of "
        f"{quality['copies_planted']}; test-set leaks in the shards: {quality['leaks_surviving']} of "
        f"{quality['leaks_planted']}"
    )
    knn, raw = summary["knn_pretrained"], summary["knn_raw_pixels"]
    pretrain = summary["pretrain"]
    console.print(f"Fashion-MNIST test k-NN after {pretrain['epochs']:.2f} epochs on the shards "
                  f"({pretrain['images_per_second']:.0f} images/s, {summary['total_minutes']:.1f} min in all):")
    for k in raw:
        console.print(f"  k={k}: learned features {knn.get(k, {}).get('top1', float('nan')):.2f}%   "
                      f"raw pixels {raw[k]['top1']:.2f}%")


def _count(value) -> str:
    return "-" if value is None else f"{value:,}"
