"""The ``curate`` command: the whole pipeline (``curate run``), one stage and what it needs, or a run's status."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console
from rich.table import Table

from curate import stages
from curate.lake import ImageSet, LakeError, files_table, name_sets
from pipelines.cluster import ClusterError, connect
from pipelines.run import Pipeline, write_listing
from pipelines.state import RunError, check, prepare, recorded_sets, status
from schemas.config import ConfigError, PipelineConfig, load_config
from schemas.tables import SchemaError

CONFIG_DIR = Path(__file__).resolve().parent / "configs"
DEFAULT_CONFIG = "lvd"
USER_ERRORS = (LakeError, ConfigError, RunError, ClusterError, SchemaError)

app = typer.Typer(
    name="curate",
    help="Curate an image lake the way DINOv2 built LVD-142M: ingest, embed, dedup, cluster, sample, shard, "
         "report — as Dask tasks that write webdataset shards.",
    no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False,
)


def named_configs() -> list[str]:
    return sorted(path.stem for path in CONFIG_DIR.glob("*.yaml"))


def resolve_config(name_or_path: str) -> Path:
    """A named config (``pipelines/configs/NAME.yaml``) or a YAML file."""
    named = CONFIG_DIR / f"{name_or_path}.yaml"
    if named.is_file():
        return named
    path = Path(name_or_path)
    if not path.is_file():
        raise ConfigError(f"no config {name_or_path!r}: give a YAML file or one of {', '.join(named_configs())}")
    return path


Lakes = Annotated[Optional[list[str]], typer.Option("--lake", help="pool to curate: a folder (recursive) or a glob; repeatable")]
Curated = Annotated[Optional[list[str]], typer.Option("--curated", help="curated set: retrieval queries (ImageNet-22k's role); repeatable")]
Evals = Annotated[Optional[list[str]], typer.Option("--eval", help="evaluation set whose near-copies leave the pool; repeatable")]
Out = Annotated[Path, typer.Option("--out", help="output folder: tables/, shards/, report/ (a rerun resumes it)")]
Scheduler = Annotated[Optional[str], typer.Option("--scheduler", help="address of a running Dask scheduler, tcp://HOST:PORT")]
Workers = Annotated[Optional[int], typer.Option("--workers", min=1, help="local worker processes (default: one per core)")]
Embedder = Annotated[Optional[str], typer.Option("--embedder", help="'pixels', an architecture name, or backbone weights (shortcut for embed.embedder=...)")]
ConfigOption = Annotated[str, typer.Option("--config", help=f"named config ({', '.join(named_configs())}) or a YAML file")]
PerfReport = Annotated[Optional[Path], typer.Option("--performance-report", help="write Dask's HTML performance report here")]
MemoryLimit = Annotated[Optional[str], typer.Option("--memory-limit", help="memory limit per local worker, e.g. 2GiB")]
Overrides = Annotated[Optional[list[str]], typer.Argument(help="config overrides section.key=value, e.g. dedup.threshold=0.7")]


def _fail(command: str, error: Exception) -> None:
    message = str(error).splitlines()[0] if str(error) else type(error).__name__
    print(f"curate {command}: error: {message}", file=sys.stderr)
    raise typer.Exit(2)


def _sets(out: Path, lakes: list[str], curated: list[str], evals: list[str]) -> list[ImageSet]:
    if not lakes:
        if curated or evals:
            raise LakeError("--curated and --eval need a --lake to curate")
        return recorded_sets(out)
    taken: set[str] = set()
    return name_sets(lakes, "pool", taken) + name_sets(curated, "curated", taken) + name_sets(evals, "eval", taken)


def _check_curated(out: Path, sets: list[ImageSet]) -> None:
    """Refuse a curated set none of whose images could be read (it would retrieve nothing)."""
    from curate import tables

    images = tables.read_table(out, "images").select(["set", "role", "status"]).to_pylist()
    for image_set in sets:
        if image_set.role == "curated" and not any(
            row["set"] == image_set.name and row["status"] == "ok" for row in images
        ):
            raise LakeError(f"curated set {image_set.uri}: none of its images could be read (see the images table)")


def execute(command: str, until: str, lakes, curated, evals, out: Path, scheduler, workers, embedder, config_name,
            performance_report, memory_limit, overrides) -> None:
    console = Console(highlight=False)
    try:
        extra = list(overrides or []) + ([f"embed.embedder={embedder}"] if embedder else [])
        config: PipelineConfig = load_config(resolve_config(config_name), extra)
        out = out.expanduser().resolve()
        sets = _sets(out, lakes or [], curated or [], evals or [])
        listing = files_table(sets, config.ingest.partition_size) if check(out, sets) is None else None
        with connect(scheduler, workers, memory_limit) as client:
            if client.dashboard_link and "None" not in client.dashboard_link:
                console.print(f"dask dashboard: {client.dashboard_link}")
            redo = prepare(out, sets, config)
            if redo:
                console.print(f"config changed: redoing {', '.join(redo)}")
            if listing is not None:
                write_listing(out, sets, config, listing)
            pipeline = Pipeline(client, out, config, console)
            records = pipeline.run(sets, until=until, report_file=performance_report,
                                   after_stage=lambda name: _check_curated(out, sets) if name == "ingest" else None)
    except USER_ERRORS as error:
        _fail(command, error)
    _print_records(console, records)
    if until == "report":
        console.print(f"report: {out / 'report' / 'report.html'}")


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
    ) -> None:
        execute(stage, stage, lake, curated, eval_, out, scheduler, workers, embedder, config, performance_report,
                memory_limit, overrides)

    command.__doc__ = help_text
    return command


for _stage in stages.ORDER:
    app.command(_stage, help=f"{stages.STAGES[_stage].doc}; runs the stages before it first when they are not done.")(
        _stage_command(_stage, stages.STAGES[_stage].doc))


@app.command("run")
def run(
    out: Out, lake: Lakes = None, curated: Curated = None, eval_: Evals = None, scheduler: Scheduler = None,
    workers: Workers = None, embedder: Embedder = None, config: ConfigOption = DEFAULT_CONFIG,
    performance_report: PerfReport = None, memory_limit: MemoryLimit = None, overrides: Overrides = None,
) -> None:
    """The whole pipeline: ingest, embed, dedup, cluster, sample, shard, report. A rerun on the same --out resumes."""
    execute("run", "report", lake, curated, eval_, out, scheduler, workers, embedder, config, performance_report,
            memory_limit, overrides)


@app.command("status")
def status_command(out: Annotated[Path, typer.Argument(help="the output folder of a run")]) -> None:
    """What is done and what is left in a run's output folder."""
    console = Console(highlight=False)
    try:
        sets = recorded_sets(out)
        rows = status(out)
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


def main() -> None:
    app()
