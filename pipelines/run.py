"""Run the stages as Dask tasks over one output folder, skipping what is done, recording what each took.

Per-partition stages submit one task per pending partition; global stages one task; the shard stage a
planning task, one task per shard, then the index. Every task writes its outputs under deterministic
names (temporary name, then rename; one put on an object store), so a task rescheduled after a worker
died, or a rerun after the client was killed, produces the same files as an uninterrupted run. The
output folder may be an object-store prefix (:class:`curate.output.RemotePath`): it travels in every
task's arguments with its storage options::

    with connect(workers=2) as client:
        Pipeline(client, out, config, console).run(until="report")
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Callable
from contextlib import nullcontext
from pathlib import Path

import pyarrow as pa
from distributed import Client, performance_report
from rich.console import Console

from curate import output, stages, tables
from curate.lake import ImageSet, files_table
from curate.lakes import listing as lake_listing
from curate.output import Location
from pipelines import tasks
from pipelines.cluster import worker_has_gpu
from pipelines.listing import list_lake
from pipelines.plugins import PLUGIN_NAME, EmbedderPlugin
from pipelines.progress import track
from schemas.config import PipelineConfig

TIMINGS_FILE = "timings.json"
TASK_RETRIES = 1
"""Retries of a task that raised (a worker that died is rescheduled by the scheduler on its own)."""


def write_listing(out: Location, sets: list[ImageSet], config: PipelineConfig, listing: pa.Table | None = None,
                  pipeline: Pipeline | None = None) -> int:
    """The ``files`` table (``listing``, or listed now), one part per partition, unless it exists.

    Local folder sets are listed here; any other set (URLs, tar files, parquet files) is listed by tasks
    of ``pipeline`` (:mod:`pipelines.listing`). Returns the number of partitions.
    """
    done = tables.done_parts(out, "files")
    if done and not lake_listing.in_progress(out):
        return len(done)
    if listing is None and not all(lake_listing.listed_by_client(image_set) for image_set in sets):
        if pipeline is None:
            raise ValueError("listing URLs, tar or parquet lakes needs a pipeline to run its tasks")
        return list_lake(pipeline, sets)
    if listing is None:
        listing = files_table(sets, config.ingest.partition_size, config.ingest.follow_links)
    partition = listing.column("partition").to_numpy()
    parts = sorted(set(partition.tolist()))
    for number in parts:
        tables.write_part(out, "files", number, listing.filter(partition == number))
    return len(parts)


def _load_stage_code() -> None:
    import curate.stages  # noqa: F401  (torch, faiss and pyarrow come with it)


class Pipeline:
    """The stages of one run over ``out``, submitted to ``client``."""

    def __init__(self, client: Client, out: Location, config: PipelineConfig, console: Console) -> None:
        self.client, self.out, self.config, self.console = client, out, config, console
        self.run_id = uuid.uuid4().hex[:8]
        client.run(_load_stage_code)  # part of starting the workers, not of the first stage's time

    def run(self, sets: list[ImageSet], until: str = "report", report_file: Path | None = None,
            after_stage: Callable[[str], None] | None = None) -> list[dict]:
        """Run every stage up to ``until``; returns one record per stage (images in/out, seconds).

        ``after_stage(name)`` is called when a stage is complete (e.g. to check its output).
        """
        last = stages.ORDER.index(until)
        with performance_report(filename=str(report_file)) if report_file else nullcontext():
            for name in stages.ORDER[: last + 1]:
                start = time.perf_counter()
                if name == "ingest":
                    write_listing(self.out, sets, self.config, pipeline=self)
                ran = self._run_stage(name)
                if ran:
                    self._record_time(name, time.perf_counter() - start, ran)
                if after_stage is not None:
                    after_stage(name)
        return self.records(stages.ORDER[: last + 1])

    def _run_stage(self, name: str) -> int:
        """Submit what is left of stage ``name``; returns the number of tasks run (0: already done)."""
        if name != "report" and stages.is_done(self.out, name):
            self.console.print(f"{name}: done already, skipped", highlight=False)
            return 0
        if name == "ingest":
            return self._per_partition(name, stages.ingest)
        if name == "embed":
            self.client.register_plugin(EmbedderPlugin(self.config.embed), name=PLUGIN_NAME)
            resources = {"GPU": 1} if worker_has_gpu(self.client) else None
            return self._per_partition(name, tasks.embed, resources)
        if name == "shard":
            return self._shards()
        if name == "report":
            records = self.records(stages.ORDER[:-1])
            self._gather([self._submit("report", stages.report, self.out, self.config, records)], "report")
            return 1
        if name == "dedup":
            self._say_dedup_rule()
        function = {"dedup": stages.dedup, "cluster": stages.cluster, "sample": stages.sample}[name]
        self._gather([self._submit(name, function, self.out, self.config)], name)
        return 1

    def _say_dedup_rule(self) -> None:
        rule = stages.dedup_rule(self.config)
        pool = stages.pool_size(self.out)
        described = {"local": "local features, lake templates discounted, verification",
                     "embeddings": "cosine on the embeddings (dedup.descriptor=embeddings)"}
        self.console.print(f"dedup: {described.get(rule, f'copy descriptor {rule} + verification')} "
                           f"({pool:,} pool images)", highlight=False)

    def _submit(self, label: str, function, *args, resources: dict | None = None):
        return self.client.submit(function, *args, key=f"{label}-{self.run_id}-{uuid.uuid4().hex[:6]}",
                                  pure=False, retries=TASK_RETRIES, resources=resources)

    def _gather(self, futures: list, label: str) -> list:
        results = []
        for future in track(futures, label, self.console):
            results.append(future.result())
        return results

    def _per_partition(self, name: str, function, resources: dict | None = None) -> int:
        todo = stages.pending(self.out, name)
        futures = [self._submit(f"{name}-{p:05d}", function, self.out, p, self.config, resources=resources) for p in todo]
        self._gather(futures, f"{name} ({len(todo)} partitions)")
        return len(todo)

    def _shards(self) -> int:
        [count] = self._gather([self._submit("shard-plan", stages.plan, self.out, self.config)], "shard plan")
        futures = [self._submit(f"shard-{n:06d}", stages.shard, self.out, n, self.config) for n in range(count)]
        infos = sorted(self._gather(futures, f"shard ({count} shards)"), key=lambda info: info["name"])
        self._gather([self._submit("shard-index", stages.finish_shards, self.out, infos)], "shard index")
        return count + 2

    def _record_time(self, name: str, seconds: float, task_count: int) -> None:
        timings = self._timings()
        timings[name] = {"seconds": round(seconds, 3), "tasks": task_count}
        output.write_bytes(self.out / TIMINGS_FILE, json.dumps(timings, indent=1, sort_keys=True).encode())

    def _timings(self) -> dict:
        path = self.out / TIMINGS_FILE
        return json.loads(output.read_bytes(path)) if output.is_file(path) else {}

    def records(self, names) -> list[dict]:
        """Per stage: images in and out (from the tables) and the seconds its tasks took when it ran."""
        timings = self._timings()
        return [
            {"stage": name, **stages.counts(self.out, name), **timings.get(name, {"seconds": None, "tasks": 0})}
            for name in names
        ]
