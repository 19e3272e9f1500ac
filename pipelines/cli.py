"""The ``curate`` command: the whole pipeline (``curate run``), one stage and what it needs, or a run's status."""

from __future__ import annotations

import os
import sys
from dataclasses import replace
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console
from rich.table import Table

from dinolab.curate import output, stages
from dinolab.curate.lakes.sets import ImageSet, LakeError, files_table, name_sets
from dinolab.curate.lakes import listing as lake_listing
from dinolab.curate.output import Location
from dinolab.pipelines import pretrain_stage
from dinolab.pipelines.cluster import ClusterError
from dinolab.pipelines.copy_detector_cli import train_copy_detector
from dinolab.pipelines.dispatch import dask_executor
from dinolab.pipelines.named_configs import DEFAULT_CONFIG, named_configs, resolve_config
from dinolab.pipelines.run import run_curation
from dinolab.pipelines.state import RunError, check, recorded_sets, status
from dinolab.pretrain.checkpoints.safe_io import CheckpointError
from dinolab.schemas.config import ConfigError, LakeConfig, PipelineConfig, load_config
from dinolab.schemas.storage import StorageOptionError, parse_storage_options
from dinolab.schemas.tables import SchemaError

USER_ERRORS = (LakeError, ConfigError, RunError, ClusterError, SchemaError, StorageOptionError, CheckpointError)

app = typer.Typer(
    name="curate",
    help=f"Curate an image lake the way DINOv2 built LVD-142M: {', '.join(stages.ORDER)} — as Dask tasks that "
         "write webdataset shards.",
    no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False,
)


Lakes = Annotated[Optional[list[str]], typer.Option("--lake", help="pool to curate: a folder (recursive) or a glob, an fsspec URL prefix (s3://bucket/lake/), tar files (shards/*.tar) or parquet files; repeatable")]
Curated = Annotated[Optional[list[str]], typer.Option("--curated", help="curated set: retrieval queries (ImageNet-22k's role); repeatable")]
Evals = Annotated[Optional[list[str]], typer.Option("--eval", help="evaluation set whose near-copies leave the pool; repeatable")]
Out = Annotated[str, typer.Option("--out", help="output folder, or an fsspec URL prefix (s3://bucket/run; reached with the --storage-option settings): tables/, shards/, report/ (a rerun resumes it)")]
Scheduler = Annotated[Optional[str], typer.Option("--scheduler", help="address of a running Dask scheduler, tcp://HOST:PORT")]
Workers = Annotated[Optional[int], typer.Option("--workers", min=1, help="local worker processes (default: one per core)")]
Embedder = Annotated[Optional[str], typer.Option("--embedder", help="'pixels', an architecture name, or backbone weights (shortcut for embed.embedder=...)")]
ConfigOption = Annotated[str, typer.Option("--config", help=f"named config ({', '.join(named_configs())}) or a YAML file")]
PerfReport = Annotated[Optional[Path], typer.Option("--performance-report", help="write Dask's HTML performance report here")]
MemoryLimit = Annotated[Optional[str], typer.Option("--memory-limit", help="memory limit per local worker, e.g. 2GiB")]
Overrides = Annotated[Optional[list[str]], typer.Argument(help="config overrides section.key=value, e.g. dedup.threshold=0.7")]
StorageOptions = Annotated[Optional[list[str]], typer.Option("--storage-option", metavar="KEY=VALUE", help="fsspec option of the remote URLs (endpoint_url=..., anon=true, client_kwargs.region_name=...); credentials best from the environment; secrets are never written; repeatable")]
ClusterKind = Annotated[str, typer.Option("--cluster", help="where workers run without --scheduler: 'local' processes or 'slurm' jobs (settings: slurm.* overrides)")]
PretrainPreset = Annotated[Optional[str], typer.Option("--pretrain", metavar="PRESET", help="after the report, pretrain on OUT/shards with this preset (pretrain train --preset; e.g. fmnist-tiny) into OUT/pretrain, as its own process, resumed by a rerun")]
PretrainArgs = Annotated[Optional[list[str]], typer.Option("--pretrain-arg", metavar="KEY=VALUE", help="pretraining override for --pretrain, e.g. optim.epochs=2 or run.num_workers=2; repeatable")]
PretrainOut = Annotated[Optional[Path], typer.Option("--pretrain-out", help="with --pretrain: the trainer's local output folder (default OUT/pretrain; needed when --out is a URL)")]
Verify = Annotated[bool, typer.Option("--verify", help="also read every recorded output and compare its MD5 digest (a rerun always finds missing and truncated ones)")]
PretrainNproc = Annotated[int, typer.Option("--pretrain-nproc", min=1, help="with --pretrain: processes (>1 runs torchrun --standalone --nproc-per-node N)")]


def _fail(command: str, error: Exception) -> None:
    message = str(error).splitlines()[0] if str(error) else type(error).__name__
    print(f"curate {command}: error: {message}", file=sys.stderr)
    raise typer.Exit(2)


def _sets(out: Location, lakes: list[str], curated: list[str], evals: list[str]) -> list[ImageSet]:
    if not lakes:
        if curated or evals:
            raise LakeError("--curated and --eval need a --lake to curate")
        return recorded_sets(out)
    taken: set[str] = set()
    return name_sets(lakes, "pool", taken) + name_sets(curated, "curated", taken) + name_sets(evals, "eval", taken)


def _check_curated(out: Location, sets: list[ImageSet], min_side: int) -> None:
    """Refuse a curated set none of whose images could be read (it would retrieve nothing), saying why."""
    import pyarrow.compute as pc

    from dinolab.curate import tables

    images = [row for part in tables.read_columns(out, "images", ["set", "role", "status", "width", "height"])
              for row in part.filter(pc.equal(part["role"], "curated")).to_pylist()]  # the pool stays in Arrow
    for image_set in sets:
        rows = [row for row in images if row["set"] == image_set.name and row["role"] == "curated"]
        if image_set.role != "curated" or any(row["status"] == "ok" for row in rows):
            continue
        sides = [min(row["width"], row["height"]) for row in rows
                 if row["status"] == "filtered" and row["width"] and row["height"]]
        if sides:
            raise LakeError(f"curated set {image_set.uri}: none of its images could be used: {len(sides)} of "
                            f"{len(rows)} were filtered as smaller than ingest.min_side={min_side} px; lower it "
                            f"(ingest.min_side={min(sides)} keeps them) or use --config demo for tiny images")
        raise LakeError(f"curated set {image_set.uri}: none of its images could be read (see the images table)")


def with_storage_options(config: PipelineConfig, pairs: list[str]) -> PipelineConfig:
    """``config`` with ``--storage-option KEY=VALUE`` pairs over the ``lake.storage_options`` it has."""
    if not pairs:
        return config
    return replace(config, lake=LakeConfig({**config.lake.storage_options, **parse_storage_options(pairs)}))


def output_location(out: str, storage_options: dict) -> Location:
    """``--out`` as a resolved local folder, or a :class:`~curate.output.RemotePath` with the storage options;
    :class:`RunError` for a local path that is not (and cannot become) a writable folder."""
    found = output.location(out, storage_options)
    if isinstance(found, output.RemotePath):
        return found
    found = found.expanduser().resolve()
    existing = next(path for path in (found, *found.parents) if path.exists())
    if not existing.is_dir():
        raise RunError(f"--out {out}: {existing} is not a folder; give a folder (new or an earlier run's)")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise RunError(f"--out {out}: {existing} is not writable")
    return found


def check_embedder(config: PipelineConfig) -> None:
    """Refuse an ``embed.embedder`` that is neither ``pixels``, an architecture name nor readable weights,
    before any stage runs (the weights are read with ``weights_only``; their model is not built here)."""
    if config.embed.embedder != "pixels":
        from dinolab.pretrain.checkpoints import read_backbone

        read_backbone(config.embed.embedder)


def execute(command: str, until: str, lakes, curated, evals, out: str, scheduler, workers, embedder, config_name,
            performance_report, memory_limit, overrides, storage_options=None, cluster: str = "local",
            verify: bool = False) -> Location:
    """Run the stages up to ``until`` holding ``OUT``'s lock (damaged outputs redone first); returns where
    the run's output is."""
    console = Console(highlight=False)
    try:
        extra = list(overrides or []) + ([f"embed.embedder={embedder}"] if embedder else [])
        config: PipelineConfig = with_storage_options(load_config(resolve_config(config_name), extra),
                                                      list(storage_options or []))
        if stages.ORDER.index(until) > stages.ORDER.index("ingest"):
            check_embedder(config)
        out = output_location(out, config.lake.storage_options)
        for uri in [*(lakes or []), *(curated or []), *(evals or [])]:
            lake_listing.check_uri(uri)
        sets = _sets(out, lakes or [], curated or [], evals or [])
        here = all(lake_listing.listed_by_client(image_set) for image_set in sets)  # else listed by tasks
        listing = (files_table(sets, config.ingest.partition_size, config.ingest.follow_links)
                   if check(out, sets) is None and here else None)  # a bad local lake fails before the cluster starts
        executor = dask_executor(console, scheduler, workers, memory_limit, cluster, config.slurm, performance_report)
        records = run_curation(out, sets, config, executor, console, until=until,
                               holder=f"curate {command} --out {out}", listing=listing, verify=verify,
                               after_stage=lambda name: _check_curated(out, sets, config.ingest.min_side)
                               if name == "ingest" else None)
    except USER_ERRORS as error:
        _fail(command, error)
    _print_records(console, records)
    if until == "report":
        console.print(f"report: {out / 'report' / 'report.html'}")
    return out


def _print_records(console: Console, records: list[dict]) -> None:
    table = Table(title="curate", show_lines=False)
    for column in ("stage", "images in", "images out", "seconds"):
        table.add_column(column, justify="left" if column == "stage" else "right")
    for record in records:
        seconds = record.get("seconds")
        table.add_row(record["stage"], _count(record["images_in"]), _count(record["images_out"]),
                      "-" if seconds is None else f"{seconds:.1f}")
    console.print(table)


def _count(value) -> str:
    return "-" if value is None else f"{value:,}"


def _stage_command(stage: str, help_text: str):
    def command(
        out: Out, lake: Lakes = None, curated: Curated = None, eval_: Evals = None, scheduler: Scheduler = None,
        workers: Workers = None, embedder: Embedder = None, config: ConfigOption = DEFAULT_CONFIG,
        performance_report: PerfReport = None, memory_limit: MemoryLimit = None, overrides: Overrides = None,
        storage_option: StorageOptions = None, cluster: ClusterKind = "local", verify: Verify = False,
    ) -> None:
        execute(stage, stage, lake, curated, eval_, out, scheduler, workers, embedder, config, performance_report,
                memory_limit, overrides, storage_option, cluster, verify)

    command.__doc__ = help_text
    return command


for _stage in stages.ORDER:
    _before = "" if _stage == stages.ORDER[0] else "; runs the stages before it first when they are not done"
    app.command(_stage, help=f"{stages.STAGES[_stage].doc}{_before}.")(_stage_command(_stage, stages.STAGES[_stage].doc))


@app.command("run")
def run(
    out: Out, lake: Lakes = None, curated: Curated = None, eval_: Evals = None, scheduler: Scheduler = None,
    workers: Workers = None, embedder: Embedder = None, config: ConfigOption = DEFAULT_CONFIG,
    performance_report: PerfReport = None, memory_limit: MemoryLimit = None, overrides: Overrides = None,
    pretrain: PretrainPreset = None, pretrain_arg: PretrainArgs = None, pretrain_nproc: PretrainNproc = 1,
    storage_option: StorageOptions = None, cluster: ClusterKind = "local", pretrain_out: PretrainOut = None,
    verify: Verify = False,
) -> None:
    """The whole pipeline: list, ingest, embed, dedup, cluster, sample, shard, report (then, with --pretrain,
    the trainer on the new shards). A rerun on the same --out resumes."""
    if pretrain is not None:  # a bad preset or override fails now, not after the curation
        try:
            pretrain_stage.check_request(pretrain, pretrain_arg or [], pretrain_nproc)
            pretrain_stage.trainer_dir(output.location(out), pretrain_out)
        except pretrain_stage.PretrainStageError as error:
            _fail("run", error)
    where = execute("run", "report", lake, curated, eval_, out, scheduler, workers, embedder, config,
                    performance_report, memory_limit, overrides, storage_option, cluster, verify)
    if pretrain is not None:
        trainer_out = pretrain_out.expanduser().resolve() if pretrain_out is not None else None
        command = pretrain_stage.pretrain_command(where, pretrain, pretrain_arg or [], pretrain_nproc,
                                                  pretrain_out=trainer_out)
        try:
            code = pretrain_stage.run_pretrain(where, command, print, trainer_out)
        except pretrain_stage.PretrainStageError as error:
            _fail("run", error)
        if code != 0:
            print(f"curate run: error: the pretraining stage exited with {code}", file=sys.stderr)
            raise typer.Exit(code)


@app.command("slurm-script")
def slurm_script(config: ConfigOption = DEFAULT_CONFIG, overrides: Overrides = None) -> None:
    """Print the batch script each SLURM worker job of --cluster slurm is submitted with (slurm.* overrides); submits nothing."""
    from dinolab.pipelines.slurm import job_script

    try:
        print(job_script(load_config(resolve_config(config), list(overrides or [])).slurm))
    except USER_ERRORS as error:
        _fail("slurm-script", error)


@app.command("demo")
def demo_command(
    out: Annotated[Path, typer.Option("--out", help="where the lake, the curation, the checkpoint and the report go")] = Path("outputs/demo"),
    minutes: Annotated[float, typer.Option("--minutes", min=0.1, help="pretraining time budget")] = 9.0,
    workers: Workers = None,
    lake_scale: Annotated[float, typer.Option("--lake-scale", min=0.001, max=1.0, help="fraction of the full demo lake (1.0: 72,800 pool images)")] = 1.0,
    overrides: Overrides = None,
) -> None:
    """The main job on the embedded default data: build the demo lake (Fashion-MNIST + images that do not
    belong + planted copies and test-set leaks), curate it on a LocalCluster, pretrain DINOv2 on the shards,
    and print per-stage counts and times, the curation's precision and k-NN against raw pixels."""
    from dinolab.pipelines.demo import run_demo
    from dinolab.pipelines.demo_lake import LakeSizes

    console = Console(highlight=False)
    try:
        run_demo(out.expanduser().resolve(), minutes, workers, LakeSizes().scaled(lake_scale), console,
                 list(overrides or []), progress=console.is_terminal)
    except USER_ERRORS as error:
        _fail("demo", error)


@app.command("status")
def status_command(out: Annotated[str, typer.Argument(help="the output folder (or URL prefix) of a run")],
                   storage_option: StorageOptions = None,
                   verify: Annotated[bool, typer.Option("--verify", help="also read every recorded output and compare its MD5 digest; exit code 1 when a unit is damaged")] = False) -> None:
    """What is done and what is left in a run's output folder, and which units are damaged (a recorded
    output missing or of another size; with --verify, of another digest)."""
    console = Console(highlight=False)
    try:
        out = output.location(out, parse_storage_options(storage_option or []))
        sets = recorded_sets(out)
        rows = status(out, deep=verify)
    except USER_ERRORS as error:
        _fail("status", error)
    for image_set in sets:
        console.print(f"{image_set.role:8} {image_set.name}: {image_set.uri}")
    table = Table(title=str(out))
    for column in ("stage", "state", "detail"):
        table.add_column(column)
    for row in rows:
        table.add_row(row["stage"], row["state"], row["detail"])
    console.print(table)
    problems = [f"{row['stage']} {problem}" for row in rows for problem in row["problems"]]
    for problem in problems:
        console.print(f"damaged: {problem}", soft_wrap=True)
    if problems:
        console.print("a rerun of curate run on this --out redoes the damaged units and what depends on them")
        if verify:
            raise typer.Exit(1)


app.command("train-copy-detector")(train_copy_detector)


def main() -> None:
    app()
