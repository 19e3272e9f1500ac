"""The pipeline's stages as plain functions over an output folder: what each reads, writes and counts.

``out`` is a local :class:`~pathlib.Path` or a :class:`curate.output.RemotePath` (an object-store
prefix carrying its storage options); every read and write goes through :mod:`curate.output`.

Each stage is declared once (:class:`Stage`, in :data:`STAGES`): the tables it reads and writes, every file
it writes, its counts and its shape, a tuple of steps (:mod:`curate.steps`): the list stage writes the lake
listing (the ``files`` table: :mod:`curate.listing_steps`, then a step that records it), per-partition stages
(ingest, embed) are one step whose units are the partitions of that listing, dedup, cluster, sample and report
one step of one unit, and the shard stage plan → one unit per shard → index. Every unit reads validated tables,
writes its outputs atomically under deterministic names, records their sizes and digests
(:mod:`curate.manifest`, to find damage later) and returns small results (counts); a unit whose output
exists is done. Orchestrators (``pipelines/``: Dask tasks, or a plain loop) run the declared steps and decide
where units run — nothing here knows::

    for step in STAGES["ingest"].steps:
        for unit in step.units(out, config, []):
            step.run(out, config, unit, [])
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from dinolab.core.storage import SHARD_DIR
from dinolab.curate import (cluster_steps, fetched, knn_dedup, listing_steps, manifest, output, sample_steps,
                            shard_steps, tables)
from dinolab.curate.copydetect import steps as copy_steps
from dinolab.curate.embed import Embedder, embed_partition, load_embedder
from dinolab.curate.ingest import ingest_partition
from dinolab.curate.kmeans import clusters_table
from dinolab.curate.lakes import embeddings as lake_embeddings
from dinolab.curate.lakes import listing as lake_listing
from dinolab.curate.lakes.uris import is_url
from dinolab.curate.output import Location
from dinolab.curate.sample import selection_table
from dinolab.curate.shards import (ShardSample, image_extension, plan_shards, sample_meta, shard_index, shard_name, write_index,
                           write_shard)
from dinolab.curate.steps import Shape, Step
from dinolab.schemas.config import PipelineConfig
from dinolab.schemas.tables import utc_now


@dataclass(frozen=True)
class Stage:
    """A stage's contract: the tables it reads, the table it writes, how its work is shaped and everything it writes.

    ``steps`` is its shape (:mod:`curate.steps`): one step over the lake's partitions (ingest, embed), one
    step of one unit (dedup, cluster, sample, report), or a graph of steps (shard: plan → shards → index).
    ``unit_files`` are the files one unit writes (``{unit}`` is its partition or shard number), ``files``
    the ones the stage writes once (both relative to ``OUT``, glob patterns allowed) and ``caches`` files that
    depend on the earlier stages' outputs alone (kept when only this stage's config changes; each part
    records the rows it was built from). Nothing else in ``OUT`` is the stage's: only these are removed.
    ``counts(out)`` gives the images into and out of it (from its tables), ``complete(out)`` whether its
    whole output exists (default: every partition's part, or part 0 of a global stage's table), and
    ``announce(out, config)`` a line the run prints before the stage runs (``None``: nothing to say).
    ``settings`` are the config sections its output depends on (default: the section of its own name); a
    rerun whose config changed in one of them redoes it and every stage after it.
    """

    name: str
    reads: tuple[str, ...]
    writes: str
    per_partition: bool
    doc: str
    steps: Shape = ()
    unit_files: tuple[str, ...] = ()
    files: tuple[str, ...] = ()
    caches: tuple[str, ...] = ()
    counts: Callable[[Location], tuple[int | None, int | None]] | None = None
    complete: Callable[[Location], bool] | None = None
    announce: Callable[[Location, PipelineConfig], str | None] | None = None
    settings: tuple[str, ...] = ()

    def config_sections(self) -> tuple[str, ...]:
        return self.settings or (self.name,)


def _part(table: str, suffix: str = ".parquet") -> str:
    return f"tables/{table}/part-{{unit:05d}}{suffix}"


def unit_paths(out: Location, stage: str, unit: int) -> list[Location]:
    """The files unit ``unit`` of ``stage`` writes."""
    return [output.join(out, *pattern.format(unit=unit).split("/")) for pattern in STAGES[stage].unit_files]


def output_patterns(stage: str, caches: bool = True) -> list[str]:
    """Glob patterns (relative to ``OUT``) of everything ``stage`` writes, its caches unless ``caches`` is false."""
    units = [re.sub(r"\{unit[^}]*\}", "*", pattern) for pattern in STAGES[stage].unit_files]
    return units + list(STAGES[stage].files) + (list(STAGES[stage].caches) if caches else [])


def unit_name(stage: str, unit: int) -> str:
    """A unit's name in its record (:mod:`curate.manifest`): ``part-00003``, or ``shard-000003`` for a shard."""
    return f"shard-{unit:06d}" if stage == "shard" else f"part-{unit:05d}"


def record_unit(out: Location, stage: str, unit: int, known: dict[str, dict] | None = None) -> None:
    """Record the sizes and digests of what unit ``unit`` of ``stage`` wrote (after it wrote it)."""
    manifest.record(out, stage, unit_name(stage, unit), unit_paths(out, stage, unit), known)


def partitions(out: Location) -> list[int]:
    """Partition numbers of the lake listing (``files`` table parts)."""
    return sorted(tables.done_parts(out, "files"))


def remove_outputs(out: Location, stage: str, caches: bool = True) -> None:
    """Delete everything ``stage`` declares it writes (its caches too unless ``caches`` is false) and its records."""
    for pattern in output_patterns(stage, caches):
        output.remove_matching(out, pattern)
    manifest.forget(out, stage)


def remove_units(out: Location, stage: str, units: list[int]) -> None:
    """Delete the declared files of ``units`` (partition or shard numbers) of ``stage`` and their records."""
    for unit in units:
        for path in unit_paths(out, stage, unit):
            output.remove(path)
    manifest.forget(out, stage, [unit_name(stage, unit) for unit in units])


def pending(out: Location, stage: str) -> list[int]:
    """Partitions of a per-partition stage whose output part does not exist yet."""
    done = tables.done_parts(out, STAGES[stage].writes)
    return [p for p in partitions(out) if p not in done]


def is_done(out: Location, stage: str) -> bool:
    """Whether a stage's whole output exists (every partition, or the single global part / the report)."""
    declared = STAGES[stage]
    if declared.complete is not None:
        return declared.complete(out)
    if declared.per_partition:
        return bool(partitions(out)) and not pending(out, stage)
    return 0 in tables.done_parts(out, declared.writes)


# -- per-partition stages ---------------------------------------------------------------------------


def ingest(out: Location, partition: int, config: PipelineConfig) -> dict[str, int]:
    files = tables.read_part(out, "files", partition)
    remote: dict[str, bytes] = {}
    images = ingest_partition(files, config.ingest, config.lake.storage_options,
                              on_read=lambda uri, data: remote.update({uri: data}) if fetched.is_remote(uri) else None)
    fetched.keep(out, partition, remote)  # before the images part, which marks the partition done
    tables.write_part(out, "images", partition, images)
    record_unit(out, "ingest", partition)
    return {"in": len(files), "out": int(pc.sum(pc.equal(images["status"], "ok")).as_py() or 0)}


def embed(out: Location, partition: int, config: PipelineConfig, embedder: Embedder) -> dict[str, int]:
    images = tables.read_part(out, "images", partition)
    rows, vectors = embed_partition(images, embedder, config.ingest.max_pixels, config.embed.batch_size,
                                    read=fetched.reader(out, config.lake.storage_options, [partition]))
    metadata = pa.table({"key": rows["key"], "image_path": _lookup(images, rows["key"].to_pylist(), ["uri"])["uri"],
                         "set": rows["set"].cast(pa.string()), "role": rows["role"].cast(pa.string())})
    tables.write_array(out, "embeddings", partition, vectors, metadata)  # the matrix first: the part marks it done
    tables.write_part(out, "embeddings", partition, rows)
    record_unit(out, "embed", partition)
    return {"in": len(images), "out": len(rows)}


# -- global stages ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Vectors:
    """Embedded images in key order: their ``embeddings`` rows and the matching ``[n, dim]`` matrix."""

    rows: pa.Table
    matrix: np.ndarray

    def where(self, mask: np.ndarray | pa.Array) -> "Vectors":
        mask = np.asarray(mask, dtype=bool)
        return Vectors(self.rows.filter(pa.array(mask)), self.matrix[mask])

    def keys(self) -> list[str]:
        return self.rows.column("key").to_pylist()


def read_vectors(out: Location) -> Vectors:
    """Every embedding of every set, sorted by key."""
    parts, matrices = [], []
    for partition in sorted(tables.done_parts(out, "embeddings")):
        part = tables.read_part(out, "embeddings", partition)
        matrix = tables.read_array(out, "embeddings", partition)
        parts.append(part)
        matrices.append(np.asarray(matrix[part.column("row").to_numpy()], dtype=np.float32))
    if not parts:
        raise tables.SchemaError(f"{tables.table_dir(out, 'embeddings')}: no embeddings yet; run the embed stage")
    rows = pa.concat_tables(parts).unify_dictionaries()
    matrix = np.concatenate(matrices)
    order = np.argsort(np.array(rows.column("key").to_pylist(), dtype=object), kind="stable")
    return Vectors(rows.take(pa.array(order)), matrix[order])


def _lookup(table: pa.Table, keys: list[str], columns: list[str]) -> dict[str, list]:
    """``columns`` of ``table`` for ``keys`` (in that order), matched on ``key``."""
    index = pc.index_in(pa.array(keys, pa.string()), value_set=table.column("key"))
    taken = table.take(index)
    return {name: taken.column(name).to_pylist() for name in columns}


def pool_size(out: Location) -> int:
    """Readable pool images of the ``images`` table."""
    return sum(int(pc.sum(pc.and_(pc.equal(part["status"], "ok"), pc.equal(part["role"], "pool"))).as_py() or 0)
               for part in tables.read_columns(out, "images", ["status", "role"]))


def precomputed_pool(out: Location) -> bool:
    """Whether the pool holds precomputed embeddings (:mod:`curate.lakes.embeddings`), whose images are not read."""
    for part in tables.read_columns(out, "images", ["role", "uri"]):  # called once a step: one part at a time
        pool = part.filter(pc.equal(part["role"], "pool"))
        if len(pool) and pc.any(pc.starts_with(pool["uri"], lake_embeddings.EMB)).as_py():
            return True
    return False


def dedup_rule(config: PipelineConfig, precomputed: bool = False) -> str:
    """``local``, ``embeddings`` or a checkpoint path (``dedup.descriptor``): one rule whatever the pool size;
    always ``embeddings`` for a pool of ``precomputed`` embeddings (its images are never read)."""
    if precomputed:
        return "embeddings"
    return config.dedup.descriptor


def resolved_dedup_rule(out: Location, config: PipelineConfig) -> str:
    """:func:`dedup_rule` for the run in ``out`` (whether its embeddings were precomputed; the ``images`` table
    is read only when that can change the rule, as every step of the dedup stage asks)."""
    if config.dedup.descriptor == "embeddings":
        return "embeddings"
    return dedup_rule(config, precomputed_pool(out))


def dedup(out: Location, config: PipelineConfig) -> dict[str, int]:
    """The whole dedup stage in this process (the declared steps, :data:`DEDUP_STEPS`, spread it over tasks)."""
    if not uses_knn(out, config):
        found = copy_steps.run_all(out, config, record_dedup_part)
        return found
    result = knn_dedup.run_all(out, config)
    for partition in knn_dedup.partitions(out):
        record_unit(out, "dedup", partition)
    knn_dedup.clean(out)
    return result


def _kept_pool(out: Location, vectors: Vectors) -> Vectors:
    duplicates = tables.read_table(out, "duplicates")
    kept = set(duplicates.filter(duplicates["kept"]).column("key").to_pylist())
    return vectors.where(np.array([key in kept for key in vectors.keys()], dtype=bool))


# The single-task cluster and sample (every vector in one process): the reference that curate.cluster_steps
# and curate.sample_steps, which the stages run, are tested and benchmarked against.


def cluster(out: Location, config: PipelineConfig) -> dict[str, int]:
    pool = _kept_pool(out, read_vectors(out))
    images = tables.read_table(out, "images")
    uris = _lookup(images, pool.keys(), ["uri"])["uri"]
    clusters = clusters_table(pool.keys(), uris, pool.matrix, config.cluster)
    tables.write_part(out, "clusters", 0, clusters)
    record_unit(out, "cluster", 0)
    return {"in": len(pool.keys()), "out": len(pool.keys())}


def sample(out: Location, config: PipelineConfig) -> dict[str, int]:
    vectors = read_vectors(out)
    clusters = tables.read_table(out, "clusters")
    in_pool = set(clusters.column("key").to_pylist())
    pool = vectors.where(np.array([key in in_pool for key in vectors.keys()], dtype=bool))
    info = _lookup(clusters, pool.keys(), ["uri", "levels"])
    curated = vectors.where(pc.equal(vectors.rows.column("role"), "curated"))
    levels = np.array(info["levels"], dtype=np.int64).reshape(len(pool.keys()), -1)
    selection = selection_table(pool.keys(), info["uri"], pool.matrix, levels, curated.keys(), curated.matrix, config.sample)
    tables.write_part(out, "selection", 0, selection)
    record_unit(out, "sample", 0)
    return {"in": len(pool.keys()), "out": len(selection)}


# -- the single-task shard plan: the reference curate.shard_steps is tested against ------------------------

PLAN_FILE = ".plan.json"
INDEX_UNIT = "index"
"""The shard stage's last unit (``shards/index.json`` and the ``shards`` table), as recorded."""
INDEX_NAME = shard_steps.DATASET_NAME


def plan(out: Location, config: PipelineConfig) -> int:
    """Split the selection (key order) into shards by image format, ``shard.max_samples`` and ``shard.max_bytes``.

    Each sample is ``{key, uri, partition, ext, meta}``; the plan is written to ``shards/.plan.json`` so every
    shard unit reads its own samples from disk rather than from its arguments. A selected precomputed
    embedding whose metadata names no image, or a local file that is not there, has no sample. Returns the
    number of shards.
    """
    selection = tables.read_table(out, "selection")
    images_table = tables.read_table(out, "images")
    uris = _lookup(images_table, selection.column("key").to_pylist(), ["uri"])["uri"]
    named = lake_embeddings.images([uri for uri in uris if lake_embeddings.is_row(uri)])
    files = {uri: path for uri, path in named.items()
             if path is not None and (is_url(path) or output.is_file(output.location(path)))}
    selection = selection.filter(pa.array([uri not in named or uri in files for uri in uris]))
    keys = selection.column("key").to_pylist()
    images = _lookup(images_table, keys,
                     ["uri", "bytes", "sha256", "width", "height", "format", "provenance", "partition"])
    images["bytes"] = [size if size is not None or uri not in files else output.size(output.location(files[uri])) or 0
                       for uri, size in zip(images["uri"], images["bytes"])]
    duplicates = _lookup(tables.read_table(out, "duplicates"), keys, ["group"])
    chosen = selection.to_pylist()
    samples = [
        {
            "key": key,
            "uri": images["uri"][i],
            "partition": images["partition"][i],
            "ext": image_extension(files.get(images["uri"][i], images["uri"][i]), images["format"][i]),
            "meta": sample_meta(
                key=key, uri=images["uri"][i], sha256=images["sha256"][i], width=images["width"][i],
                height=images["height"][i], format=images["format"][i], group=duplicates["group"][i],
                cluster=chosen[i]["cluster"], method=chosen[i]["method"], query_key=chosen[i]["query_key"],
                similarity=chosen[i]["similarity"], provenance=images["provenance"][i],
            ),
        }
        for i, key in enumerate(keys)
    ]
    groups = plan_shards(keys, images["bytes"], config.shard.max_samples, config.shard.max_bytes,
                         kinds=[sample["ext"] for sample in samples])
    shards = [[samples[i] for i in group] for group in groups]
    output.write_bytes(out / SHARD_DIR / PLAN_FILE, json.dumps(shards, sort_keys=True).encode())
    return len(shards)


def read_plan(out: Location) -> list[list[dict]]:
    return json.loads(output.read_bytes(out / SHARD_DIR / PLAN_FILE))


def shard(out: Location, number: int, config: PipelineConfig | None = None) -> dict:
    """Write shard ``number`` of the plan (original bytes, deterministic tar); returns its index entry.

    A shard already published (by an earlier, interrupted run) is kept: shards are deterministic. Each
    container of the lake (tar, parquet file) is opened once per shard; ``config.lake`` gives the storage options.
    """
    path = out / SHARD_DIR / shard_name(number)
    if output.is_file(path):
        data = output.read_bytes(path)
        info = {"name": path.name, "nsamples": len(read_plan(out)[number]), "filesize": len(data),
                "md5sum": hashlib.md5(data).hexdigest()}
        _record_shard(out, number, info)
        return info
    planned = read_plan(out)[number]
    options = config.lake.storage_options if config is not None else None
    contents = {}
    parts = {s.get("partition") for s in planned}  # the remote bytes ingest kept (:mod:`curate.fetched`)
    for uri, data in fetched.read(out, [s["uri"] for s in planned], options, None if None in parts else parts):
        if isinstance(data, BaseException):
            raise OSError(f"shard {number}: cannot read {uri} ({type(data).__name__}: {data})") from data
        contents[uri] = data
    samples = [ShardSample(s["key"], contents[s["uri"]], s["ext"], s["meta"]) for s in planned]
    info = write_shard(path, samples)
    found = {"name": info.name, "nsamples": info.nsamples, "filesize": info.filesize, "md5sum": info.md5sum}
    _record_shard(out, number, found)
    return found


def _record_shard(out: Location, number: int, info: dict) -> None:
    record_unit(out, "shard", number, {f"{SHARD_DIR}/{info['name']}": {"size": info["filesize"], "md5": info["md5sum"]}})


def finish_shards(out: Location, infos: list[dict]) -> dict[str, int]:
    """``shards/index.json`` (wids) and the ``shards`` table, from the plan and the written shards."""
    from dinolab.curate.shards import ShardInfo

    shards = read_plan(out)
    index = shard_index([ShardInfo(**info) for info in infos], name=INDEX_NAME)
    write_index(out / SHARD_DIR / "index.json", index)
    rows = {"key": [], "shard": [], "member": [], "index": []}
    for number, samples in enumerate(shards):
        for position, sample in enumerate(samples):
            rows["key"].append(sample["key"])
            rows["shard"].append(shard_name(number))
            rows["member"].append(f"{sample['key']}.{sample['ext']}")
            rows["index"].append(position)
    rows["written_at"] = [utc_now()] * len(rows["key"])  # in the table only: the tars stay byte-identical
    tables.write_part(out, "shards", 0, pa.table(rows))
    output.remove(out / SHARD_DIR / PLAN_FILE)
    manifest.record(out, "shard", INDEX_UNIT, [out / SHARD_DIR / "index.json", tables.part_path(out, "shards", 0)])
    return {"in": sum(len(s) for s in shards), "out": sum(info["nsamples"] for info in infos)}


def report(out: Location, config: PipelineConfig, stage_records: list[dict]) -> dict[str, int]:
    from dinolab.curate.report import write_report

    summary = write_report(out, config.report, stage_records, config.lake.storage_options,
                           read=fetched.reader(out, config.lake.storage_options))
    written = [path for pattern in STAGES["report"].files if output.is_file(path := output.join(out, *pattern.split("/")))]
    manifest.record(out, "report", "report", written)
    return {"in": 0, "out": 0, "summary": summary}


def counts(out: Location, stage: str) -> dict[str, int | None]:
    """Images into and out of ``stage``, read from its tables (``None`` where a table is missing)."""
    declared = STAGES[stage].counts
    images_in, images_out = declared(out) if declared is not None else (None, None)
    return {"images_in": images_in, "images_out": images_out}


TIMINGS_FILE = "timings.json"
"""``OUT/timings.json``: per stage, the seconds and tasks of the run that did it (written by the orchestrator)."""


def timings(out: Location) -> dict[str, dict]:
    path = output.join(out, TIMINGS_FILE)
    return json.loads(output.read_bytes(path)) if output.is_file(path) else {}


def stage_records(out: Location, names: Iterable[str]) -> list[dict]:
    """Per stage: images in and out (from the tables) and the seconds its tasks took when it ran."""
    recorded = timings(out)
    return [{"stage": name, **counts(out, name), **recorded.get(name, {"seconds": None, "tasks": 0})} for name in names]


def _rows(out: Location, name: str, where: tuple[str, object] | None = None) -> int | None:
    if not tables.done_parts(out, name):
        return None
    if where is None:
        return tables.row_count(out, name)
    column, value = where  # one part's column at a time: counted in the client, whatever the lake's size
    return sum(int(pc.sum(pc.equal(part[column], value)).as_py() or 0) for part in tables.read_columns(out, name, [column]))


def _ok_images(out: Location) -> int | None:
    return _rows(out, "images", ("status", "ok"))


def _kept(out: Location) -> int | None:
    return _rows(out, "duplicates", ("kept", True))


# -- the declarations: each stage's steps (:mod:`curate.steps`) ----------------------------------------------


def partition_units(out: Location, config: PipelineConfig, previous: list) -> list[int]:
    """The units of a per-partition step: the partitions of the lake listing."""
    return partitions(out)


def parts_done(table: str) -> Callable[[Location, PipelineConfig, list], dict[int, dict]]:
    """The ``done`` of a per-partition step: partitions whose part of ``table`` exists (one listing)."""

    def done(out: Location, config: PipelineConfig, units: list) -> dict[int, dict]:
        return {unit: {} for unit in set(units) & tables.done_parts(out, table)}

    return done


@dataclass(frozen=True)
class Whole:
    """The step of a stage that is one function ``function(out, config)`` run once."""

    function: Callable[[Location, PipelineConfig], dict]

    def __call__(self, out: Location, config: PipelineConfig, unit: None, previous: list) -> dict:
        return self.function(out, config)


def relisted(out: Location, before: dict[str, dict] | None) -> None:
    """After the lake was listed again over a listing recorded as ``before``: redo the partitions whose
    ``files`` part changed (all of them when the lake changed since), and record the new listing."""
    listing_steps.record_listing(out)
    after = listing_steps.listing_record(out) or {}
    if before is None:
        return
    changed = {tables.part_number(name) for name in set(before) | set(after) if before.get(name) != after.get(name)}
    changed -= {None}
    for number in sorted(changed):
        if tables.part_path(out, "files", number).name not in {name.rsplit("/", 1)[-1] for name in after}:
            output.remove(tables.part_path(out, "files", number))  # a partition the lake no longer has
    if changed:
        for stage in ORDER[ORDER.index(listing_steps.STAGE) + 1:]:
            if STAGES[stage].per_partition:
                remove_units(out, stage, sorted(changed))
            else:
                remove_outputs(out, stage, caches=False)
        listing_steps.record_listing(out)


def list_finish(out: Location, config: PipelineConfig, unit: None, previous: list) -> dict:
    """The list stage's last step: record the published parts and redo the partitions whose part changed
    since the listing recorded before (:func:`relisted`), then drop the staged units: the listing is complete."""
    relisted(out, listing_steps.listing_record(out))
    lake_listing.finish(out)
    return {"parts": len(partitions(out))}


def ingest_step(out: Location, config: PipelineConfig, unit: int, previous: list) -> dict[str, int]:
    return ingest(out, unit, config)


def embed_step(out: Location, config: PipelineConfig, unit: int, previous: list, *, shared: Embedder) -> dict[str, int]:
    return embed(out, unit, config, shared)


def embedder(config: PipelineConfig) -> Embedder:
    """What every process running embed units loads once: the model."""
    return load_embedder(config.embed)


def report_step(out: Location, config: PipelineConfig, unit: None, previous: list) -> dict:
    return report(out, config, stage_records(out, ORDER[:-1]))


def dedup_announcement(out: Location, config: PipelineConfig) -> str:
    """Which duplicate rule the dedup stage applies, and why when ``auto`` chose it."""
    if precomputed_pool(out):
        return ("dedup: kNN cosine on the precomputed embeddings (their images are not read; for copy detection "
                "give copy descriptors, e.g. SSCD's, as the lake's embeddings)")
    rule = dedup_rule(config)
    described = {"local": "local features, lake templates discounted, verification",
                 "embeddings": "cosine on the embeddings (dedup.descriptor=embeddings)"}
    return f"dedup: {described.get(rule, f'copy descriptor {rule} + verification')} ({pool_size(out):,} pool images)"


# -- the dedup stage: the copy-detection steps of curate.copydetect.steps, or the kNN steps of curate.knn_dedup --


def uses_knn(out: Location, config: PipelineConfig) -> bool:
    """Whether dedup runs the kNN steps (rule ``embeddings``) rather than copy detection."""
    return resolved_dedup_rule(out, config) == "embeddings"


def uses_copy_detection(out: Location, config: PipelineConfig) -> bool:
    return not uses_knn(out, config)


def record_dedup_part(out: Location, partition: int) -> None:
    record_unit(out, "dedup", partition)


@dataclass(frozen=True)
class KnnStep:
    """A step of :mod:`curate.knn_dedup` as the dispatcher runs it: ``function(out, config[, unit])``, its units
    (none unless :func:`uses_knn`) and the units whose last file exists."""

    name: str
    function: Callable[..., dict]
    find: Callable[[Location], Iterable] | None = None

    def __call__(self, out: Location, config: PipelineConfig, unit, previous: list) -> dict:
        return self.function(out, config) if unit is None else self.function(out, config, unit)

    def units(self, out: Location, config: PipelineConfig, previous: list) -> list:
        if not uses_knn(out, config):
            return []
        return [None] if self.find is None else list(self.find(out))

    def done(self, out: Location, config: PipelineConfig, units: list) -> dict:
        return {unit: {} for unit in knn_dedup.done_units(self.name, out, units)}

    def step(self, resources: dict | None = None) -> Step:
        return Step(self.name, self, self.units, self.done if self.name in knn_dedup.STEP_FILES else None,
                    resources or {})


def knn_write(out: Location, config: PipelineConfig, partition: int) -> dict[str, int]:
    """The ``duplicates`` part of one partition, recorded."""
    found = knn_dedup.write(out, config, partition)
    record_unit(out, "dedup", partition)
    return found


def knn_clean(out: Location, config: PipelineConfig) -> dict[str, int]:
    knn_dedup.clean(out)
    return {}


_KNN_WRITE = KnnStep("write", knn_write, knn_dedup.partitions)

COPY_STEPS: Shape = copy_steps.declared(uses_copy_detection, record_dedup_part)
"""The copy-detection rules' steps (``local`` or a copy-descriptor checkpoint), :mod:`curate.copydetect.steps`."""
KNN_STEPS: Shape = (
    KnnStep("prepare", knn_dedup.prepare, knn_dedup.partitions).step(),
    KnnStep("train", knn_dedup.train).step(),
    KnnStep("assign", knn_dedup.assign, knn_dedup.assign_units).step(),
    KnnStep("add", knn_dedup.add, knn_dedup.add_units).step(),
    KnnStep("search", knn_dedup.search, knn_dedup.search_units).step({"GPU": 1}),
    KnnStep("exact", knn_dedup.exact, knn_dedup.exact_units).step(),  # after search: it gets few results
    KnnStep("merge", knn_dedup.merge, knn_dedup.merge_units).step(),
    KnnStep("components", knn_dedup.components).step(),
    Step("write", _KNN_WRITE, _KNN_WRITE.units, parts_done("duplicates")),
    KnnStep("clean", knn_clean).step(),
)
"""The ``embeddings`` rule's steps, :mod:`curate.knn_dedup`."""
DEDUP_STEPS: Shape = COPY_STEPS + KNN_STEPS
"""The dedup stage: the copy-detection steps (each task one or two partitions' features plus one index;
:mod:`curate.copydetect.steps`) or, for the ``embeddings`` rule, the kNN steps (each task one partition plus
one index shard; :mod:`curate.knn_dedup`). Either rule's steps have no units under the other."""


def _dedup_complete(out: Location) -> bool:
    return knn_dedup.finished(out) and copy_steps.finished(out)


def _every_part(out: Location, table: str) -> bool:
    """Whether ``table`` has a part for every partition of the lake (a global stage written per partition)."""
    return bool(partitions(out)) and set(partitions(out)) <= tables.done_parts(out, table)


def _report_written(out: Location) -> bool:
    return output.is_file(output.join(out, *STAGES["report"].files[0].split("/")))  # report.json is written last


STAGES: dict[str, Stage] = {
    stage.name: stage
    for stage in (
        Stage(listing_steps.STAGE, (), "files", False, "find every image file of the lake's sets",
              steps=(*listing_steps.STEPS, Step("finish", list_finish)),
              files=("tables/files/part-*.parquet", f"tables/files/{lake_listing.STAGING}/unit-*.parquet",
                     f"tables/files/{lake_listing.STAGING}/{listing_steps.GIVEN}"),
              settings=("ingest",),  # partition_size, follow_links, the columns of a parquet lake
              counts=lambda out: (None, _rows(out, "files")), complete=listing_steps.complete),
        Stage("ingest", ("files",), "images", True, "decode, hash and describe every file",
              steps=(Step("ingest", ingest_step, partition_units, parts_done("images")),),
              unit_files=(_part("images"),),
              files=("fetched/part-*.parquet",),  # the web images' bytes, kept once per run (curate.fetched)
              counts=lambda out: (_rows(out, "files"), _ok_images(out))),
        Stage("embed", ("images",), "embeddings", True, "one vector per readable image",
              steps=(Step("embed", embed_step, partition_units, parts_done("embeddings"), {"GPU": 1}, embedder),),
              unit_files=("embeddings/img_emb/img_emb_{unit:05d}.npy",
                          "embeddings/metadata/metadata_{unit:05d}.parquet", _part("embeddings")),
              counts=lambda out: (_ok_images(out), _rows(out, "embeddings"))),
        Stage("dedup", ("images", "embeddings"), "duplicates", False, "exact copies, near-copies, evaluation leaks",
              steps=DEDUP_STEPS,
              unit_files=(_part("duplicates"),), files=knn_dedup.WORK_FILES + copy_steps.WORK_FILES, caches=("copydetect/part-*.npz",),
              counts=lambda out: (_rows(out, "duplicates"), _kept(out)), complete=_dedup_complete,
              announce=dedup_announcement),
        Stage("cluster", ("duplicates", "embeddings"), "clusters", False, "hierarchical k-means of the kept pool",
              steps=cluster_steps.STEPS, unit_files=(_part("clusters"),), files=cluster_steps.WORK_FILES,
              complete=lambda out: _every_part(out, "clusters"),
              counts=lambda out: (_kept(out), _rows(out, "clusters"))),
        Stage("sample", ("clusters", "embeddings"), "selection", False, "retrieval or balanced sampling",
              steps=sample_steps.STEPS, unit_files=(_part("selection"),), files=sample_steps.WORK_FILES,
              complete=lambda out: _every_part(out, "selection"),
              counts=lambda out: (_rows(out, "clusters"), _rows(out, "selection"))),
        Stage("shard", ("selection", "images", "duplicates"), "shards", False, "webdataset shards of the selection",
              steps=shard_steps.STEPS, unit_files=("shards/shard-{unit:06d}.tar",),
              files=("shards/index.json", "tables/shards/part-*.parquet", *shard_steps.WORK_FILES),
              complete=lambda out: output.is_file(output.join(out, "shards", "index.json")),  # written last
              counts=lambda out: (_rows(out, "selection"), _rows(out, "shards"))),
        Stage("report", (), "report", False, "counts, histograms, contact sheets, report.html",
              steps=(Step("report", report_step),),
              files=("report/report.json", "report/report.html", "report/cluster_sizes.png",  # report.json first
                     "report/duplicate_groups.png", "report/cluster_members.png"),
              complete=_report_written),
    )
}
ORDER: tuple[str, ...] = tuple(STAGES)
