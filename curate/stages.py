"""The pipeline's stages as plain functions over an output folder: what each reads, writes and counts.

``out`` is a local :class:`~pathlib.Path` or a :class:`curate.output.RemotePath` (an object-store
prefix carrying its storage options); every read and write goes through :mod:`curate.output`.

Each stage declares its unit of work (:class:`Stage`): per-partition stages (ingest, embed) run once per
partition of the lake listing, global stages (dedup, cluster, sample, report) once, and the shard stage
once per shard after a planning step. Every unit reads validated tables, writes its outputs atomically
under deterministic names and returns counts (``{"in": ..., "out": ...}``); a unit whose output exists is
done. Orchestrators (``pipelines/``: Dask, or a plain loop) decide where units run — nothing here knows::

    for partition in pending(out, "ingest"):
        ingest(out, partition, config)
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from curate import output, tables
from curate.dedup import duplicates_table
from curate.embed import Embedder, embed_partition
from curate.ingest import ingest_partition
from curate.lakes import read_partition
from curate.kmeans import clusters_table
from curate.output import Location
from curate.sample import selection_table
from curate.shards import (ShardSample, image_extension, plan_shards, sample_meta, shard_index, shard_name, write_index,
                           write_shard)
from schemas.config import PipelineConfig


@dataclass(frozen=True)
class Stage:
    """A stage's contract: the tables it reads, the table it writes, and its unit of work."""

    name: str
    reads: tuple[str, ...]
    writes: str
    per_partition: bool
    doc: str


STAGES: dict[str, Stage] = {
    stage.name: stage
    for stage in (
        Stage("ingest", ("files",), "images", True, "decode, hash and describe every file"),
        Stage("embed", ("images",), "embeddings", True, "one vector per readable image"),
        Stage("dedup", ("images", "embeddings"), "duplicates", False, "exact copies, near-copies, evaluation leaks"),
        Stage("cluster", ("duplicates", "embeddings"), "clusters", False, "hierarchical k-means of the kept pool"),
        Stage("sample", ("clusters", "embeddings"), "selection", False, "retrieval or balanced sampling"),
        Stage("shard", ("selection", "images", "duplicates"), "shards", False, "webdataset shards of the selection"),
        Stage("report", (), "report", False, "counts, histograms, contact sheets, report.html"),
    )
}
ORDER: tuple[str, ...] = tuple(STAGES)


def partitions(out: Location) -> list[int]:
    """Partition numbers of the lake listing (``files`` table parts)."""
    return sorted(tables.done_parts(out, "files"))


def pending(out: Location, stage: str) -> list[int]:
    """Partitions of a per-partition stage whose output part does not exist yet."""
    done = tables.done_parts(out, STAGES[stage].writes)
    return [p for p in partitions(out) if p not in done]


def is_done(out: Location, stage: str) -> bool:
    """Whether a stage's whole output exists (every partition, or the single global part / the report)."""
    if stage == "report":
        return output.is_file(out / "report" / "report.json")
    if STAGES[stage].per_partition:
        return bool(partitions(out)) and not pending(out, stage)
    return 0 in tables.done_parts(out, STAGES[stage].writes)


# -- per-partition stages ---------------------------------------------------------------------------


def ingest(out: Location, partition: int, config: PipelineConfig) -> dict[str, int]:
    files = tables.read_part(out, "files", partition)
    images = ingest_partition(files, config.ingest, config.lake.storage_options)
    tables.write_part(out, "images", partition, images)
    return {"in": len(files), "out": int(pc.sum(pc.equal(images["status"], "ok")).as_py() or 0)}


def embed(out: Location, partition: int, config: PipelineConfig, embedder: Embedder) -> dict[str, int]:
    images = tables.read_part(out, "images", partition)
    rows, vectors = embed_partition(images, embedder, config.ingest.max_pixels, config.embed.batch_size,
                                    config.lake.storage_options)
    tables.write_array(out, "embeddings", partition, vectors)  # the matrix first: the part marks it done
    tables.write_part(out, "embeddings", partition, rows)
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
    rows = pa.concat_tables(parts)
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
    images = tables.read_table(out, "images")
    return int(pc.sum(pc.and_(pc.equal(images["status"], "ok"), pc.equal(images["role"], "pool"))).as_py() or 0)


def dedup_rule(config: PipelineConfig) -> str:
    """``local``, ``embeddings`` or a checkpoint path (``dedup.descriptor``): one rule whatever the pool size."""
    return config.dedup.descriptor


def dedup(out: Location, config: PipelineConfig) -> dict[str, int]:
    rule = dedup_rule(config)
    if rule != "embeddings":
        from curate.copydetect.stage import copy_dedup

        return copy_dedup(out, config, rule)
    vectors = read_vectors(out)
    role = vectors.rows.column("role")
    pool = vectors.where(pc.equal(role, "pool"))
    images = tables.read_table(out, "images")
    pool_images = pa.table(_lookup(images, pool.keys(), ["key", "uri", "sha256", "width", "height"]))
    evals = vectors.where(pc.equal(role, "eval"))
    references = {
        name: evals.matrix[np.asarray(pc.equal(evals.rows.column("set"), name))]
        for name in sorted(set(evals.rows.column("set").to_pylist()))
    }
    duplicates = duplicates_table(pool_images, pool.matrix, references, config.dedup)
    tables.write_part(out, "duplicates", 0, duplicates)
    return {"in": len(pool.keys()), "out": int(pc.sum(duplicates["kept"]).as_py() or 0)}


def _kept_pool(out: Location, vectors: Vectors) -> Vectors:
    duplicates = tables.read_table(out, "duplicates")
    kept = set(duplicates.filter(duplicates["kept"]).column("key").to_pylist())
    return vectors.where(np.array([key in kept for key in vectors.keys()], dtype=bool))


def cluster(out: Location, config: PipelineConfig) -> dict[str, int]:
    pool = _kept_pool(out, read_vectors(out))
    images = tables.read_table(out, "images")
    uris = _lookup(images, pool.keys(), ["uri"])["uri"]
    clusters = clusters_table(pool.keys(), uris, pool.matrix, config.cluster)
    tables.write_part(out, "clusters", 0, clusters)
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
    return {"in": len(pool.keys()), "out": len(selection)}


# -- shard stage: a plan, one unit per shard, then the index ---------------------------------------------

SHARD_DIR = "shards"
PLAN_FILE = ".plan.json"
INDEX_NAME = "dinolab-curated"
"""The dataset name in ``shards/index.json`` (not the output folder's, so a moved run reads the same)."""


def plan(out: Location, config: PipelineConfig) -> int:
    """Split the selection (key order) into shards by image format, ``shard.max_samples`` and ``shard.max_bytes``.

    Each sample is ``{key, uri, ext, meta}``; the plan is written to ``shards/.plan.json`` so every shard
    unit reads its own samples from disk rather than from its arguments. Returns the number of shards.
    """
    selection = tables.read_table(out, "selection")
    keys = selection.column("key").to_pylist()
    images = _lookup(tables.read_table(out, "images"), keys,
                     ["uri", "bytes", "sha256", "width", "height", "format", "provenance"])
    duplicates = _lookup(tables.read_table(out, "duplicates"), keys, ["group"])
    chosen = selection.to_pylist()
    samples = [
        {
            "key": key,
            "uri": images["uri"][i],
            "ext": image_extension(images["uri"][i], images["format"][i]),
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
        return {"name": path.name, "nsamples": len(read_plan(out)[number]), "filesize": len(data),
                "md5sum": hashlib.md5(data).hexdigest()}
    planned = read_plan(out)[number]
    options = config.lake.storage_options if config is not None else None
    contents = {}
    for uri, data in read_partition([s["uri"] for s in planned], options):
        if isinstance(data, BaseException):
            raise OSError(f"shard {number}: cannot read {uri} ({type(data).__name__}: {data})") from data
        contents[uri] = data
    samples = [ShardSample(s["key"], contents[s["uri"]], s["ext"], s["meta"]) for s in planned]
    info = write_shard(path, samples)
    return {"name": info.name, "nsamples": info.nsamples, "filesize": info.filesize, "md5sum": info.md5sum}


def finish_shards(out: Location, infos: list[dict]) -> dict[str, int]:
    """``shards/index.json`` (wids) and the ``shards`` table, from the plan and the written shards."""
    from curate.shards import ShardInfo

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
    tables.write_part(out, "shards", 0, pa.table(rows))
    output.remove(out / SHARD_DIR / PLAN_FILE)
    return {"in": sum(len(s) for s in shards), "out": sum(info["nsamples"] for info in infos)}


def report(out: Location, config: PipelineConfig, stage_records: list[dict]) -> dict[str, int]:
    from curate.report import write_report

    summary = write_report(out, config.report, stage_records, config.lake.storage_options)
    return {"in": 0, "out": 0, "summary": summary}


def counts(out: Location, stage: str) -> dict[str, int | None]:
    """Images into and out of ``stage``, read from its tables (``None`` where a table is missing)."""

    def rows(name: str, where: tuple[str, object] | None = None) -> int | None:
        if not tables.done_parts(out, name):
            return None
        table = tables.read_table(out, name)
        if where is None:
            return len(table)
        return int(pc.sum(pc.equal(table[where[0]], where[1])).as_py() or 0)

    table_counts = {
        "ingest": lambda: (rows("files"), rows("images", ("status", "ok"))),
        "embed": lambda: (rows("images", ("status", "ok")), rows("embeddings")),
        "dedup": lambda: (rows("duplicates"), rows("duplicates", ("kept", True))),
        "cluster": lambda: (rows("duplicates", ("kept", True)), rows("clusters")),
        "sample": lambda: (rows("clusters"), rows("selection")),
        "shard": lambda: (rows("selection"), rows("shards")),
        "report": lambda: (None, None),
    }
    images_in, images_out = table_counts[stage]()
    return {"images_in": images_in, "images_out": images_out}
