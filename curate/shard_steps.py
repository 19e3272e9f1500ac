"""The shard stage as steps streamed from the ``selection`` parts: no process holds every selected sample.

Each selection part is planned on its own (its samples in key order, cut by :func:`curate.shards.plan_shards`:
one image format per shard, ``shard.max_samples``, ``shard.max_bytes``), so a shard never mixes two parts
and the shards of part ``p`` follow those of the parts before it. ``P`` = per selection part, ``S`` = per shard:

==========  ====  ===========================================================================================
``plan``     P    the part's shards, each a list of ``{key, uri, ext, meta}`` (``work/shard/plan-NNNNN.json``),
                  and how many (``work/shard/count-NNNNN.json``)
``number``   1    the first shard number of every part, from the counts (``work/shard/offsets.json``)
``write``    S    shard ``n``: its part's plan, the original bytes, a deterministic tar (kept if it exists)
``finish``   1    ``shards/index.json`` (wids) and the ``shards`` table, one part per selection part
==========  ====  ===========================================================================================

Memory per task: one selection part (and its ``images`` / ``duplicates`` rows), or one shard. The shards are
the same whatever the number of workers and on every rerun; with one selection part, the same as the
single-task plan's. The last shard of each part may be short (a part's samples are not carried to the next).
"""

from __future__ import annotations

import hashlib
import json

import pyarrow as pa
import pyarrow.compute as pc

from dinolab.core.storage import SHARD_DIR
from dinolab.curate import fetched, manifest, output, tables
from dinolab.curate.lakes import embeddings as lake_embeddings
from dinolab.curate.lakes.uris import is_url
from dinolab.curate.output import Location
from dinolab.curate.partitions import duplicates_of, work
from dinolab.curate.steps import Step
from dinolab.curate.shards import (ShardInfo, ShardSample, image_extension, plan_shards, sample_meta, shard_index, shard_name,
                           write_index, write_shard)
from dinolab.schemas.config import PipelineConfig
from dinolab.schemas.tables import utc_now

STAGE = "shard"
DATASET_NAME = "dinolab-curated"
"""The dataset name in ``shards/index.json`` (not the output folder's, so a moved run reads the same)."""
INDEX_UNIT = "index"
"""The last unit (``shards/index.json`` and the ``shards`` table), as recorded."""
WORK_FILES = ("work/shard/*", "work/shard/infos/*")
"""Everything the steps write besides the shards, the index and the table (removed by ``finish``)."""


def _dir(out: Location) -> Location:
    return work(out, STAGE)


def _read_json(path: Location):
    return json.loads(output.read_bytes(path))


def _write_json(path: Location, value) -> None:
    output.write_bytes(path, json.dumps(value, sort_keys=True).encode())


def _rows(table: pa.Table, keys: pa.Array, columns: list[str]) -> dict[str, list]:
    taken = table.take(pc.index_in(keys, value_set=table["key"]))
    return {name: taken.column(name).to_pylist() for name in columns}


def _parts(out: Location) -> list[int]:
    return sorted(tables.done_parts(out, "selection"))


def plan(out: Location, config: PipelineConfig, part: int, previous=None) -> dict:
    """Plan selection part ``part``: its samples in key order, cut into shards. A selected precomputed embedding
    whose metadata names no image, or a local file that is not there, has no sample."""
    selection = tables.read_part(out, "selection", part).sort_by("key")
    images = tables.read_part(out, "images", part)  # the selection part of a partition holds its images only
    keys = selection["key"].combine_chunks() if len(selection) else pa.array([], pa.string())
    uris = _rows(images, keys, ["uri"])["uri"]
    named = lake_embeddings.images([uri for uri in uris if lake_embeddings.is_row(uri)])
    files = {uri: path for uri, path in named.items()
             if path is not None and (is_url(path) or output.is_file(output.location(path)))}
    selection = selection.filter(pa.array([uri not in named or uri in files for uri in uris], pa.bool_()))
    keys = selection["key"].combine_chunks() if len(selection) else pa.array([], pa.string())
    info = _rows(images, keys, ["uri", "bytes", "sha256", "width", "height", "format", "provenance", "partition"])
    info["bytes"] = [size if size is not None or uri not in files else output.size(output.location(files[uri])) or 0
                     for uri, size in zip(info["uri"], info["bytes"])]
    group = _rows(duplicates_of(out, part, keys), keys, ["group"])["group"]
    chosen = selection.to_pylist()
    samples = []
    for i, row in enumerate(chosen):
        uri = info["uri"][i]
        samples.append({
            "key": row["key"], "uri": uri, "partition": info["partition"][i], "ext": image_extension(files.get(uri, uri), info["format"][i]),
            "meta": sample_meta(key=row["key"], uri=uri, sha256=info["sha256"][i], width=info["width"][i],
                                height=info["height"][i], format=info["format"][i], group=group[i],
                                cluster=row["cluster"], method=row["method"], query_key=row["query_key"],
                                similarity=row["similarity"], provenance=info["provenance"][i]),
        })
    groups = plan_shards([s["key"] for s in samples], info["bytes"], config.shard.max_samples, config.shard.max_bytes,
                         kinds=[s["ext"] for s in samples])
    _write_json(_dir(out) / f"plan-{part:05d}.json", [[samples[i] for i in shard] for shard in groups])
    _write_json(_dir(out) / f"count-{part:05d}.json", len(groups))
    return {"in": len(samples), "shards": len(groups)}


def number(out: Location, config: PipelineConfig, unit_=None, previous=None) -> dict:
    """The first global shard number of each part (parts in order)."""
    offsets, total = {}, 0
    for part in _parts(out):
        offsets[str(part)] = total
        total += _read_json(_dir(out) / f"count-{part:05d}.json")
    _write_json(_dir(out) / "offsets.json", {"offsets": offsets, "total": total})
    return {"shards": total}


def _offsets(out: Location) -> tuple[list[tuple[int, int]], int]:
    found = _read_json(_dir(out) / "offsets.json")
    return sorted((int(part), first) for part, first in found["offsets"].items()), found["total"]


def shard_numbers(out: Location) -> list[int]:
    """Every shard's number, once the ``number`` step has run."""
    return list(range(_offsets(out)[1]))


def _planned(out: Location, shard: int) -> list[dict]:
    """Shard ``shard``'s samples, from its own part's plan only."""
    owner = max((item for item in _offsets(out)[0] if item[1] <= shard), key=lambda item: (item[1], item[0]))
    part, first = owner
    return _read_json(_dir(out) / f"plan-{part:05d}.json")[shard - first]


def write(out: Location, config: PipelineConfig, shard: int, previous=None) -> dict:
    """Write shard ``shard`` (original bytes, deterministic tar); one already published is kept."""
    path = output.join(out, SHARD_DIR, shard_name(shard))
    planned = _planned(out, shard)
    if output.is_file(path):
        data = output.read_bytes(path)
        info = ShardInfo(path.name, len(planned), len(data), hashlib.md5(data).hexdigest())
    else:
        contents = {}
        parts = {s["partition"] for s in planned}  # the remote bytes ingest kept (:mod:`curate.fetched`)
        for uri, data in fetched.read(out, [s["uri"] for s in planned], config.lake.storage_options, parts):
            if isinstance(data, BaseException):
                raise OSError(f"shard {shard}: cannot read {uri} ({type(data).__name__}: {data})") from data
            contents[uri] = data
        info = write_shard(path, [ShardSample(s["key"], contents[s["uri"]], s["ext"], s["meta"]) for s in planned])
    manifest.record(out, STAGE, f"shard-{shard:06d}", [path],
                    {f"{SHARD_DIR}/{info.name}": {"size": info.filesize, "md5": info.md5sum}})
    _write_json(_dir(out) / "infos" / f"{shard:06d}.json", dict(info.__dict__))
    return dict(info.__dict__)


def finish(out: Location, config: PipelineConfig, unit_=None, previous=None) -> dict:
    """``shards/index.json`` and the ``shards`` table (one part per selection part), then the work folder goes."""
    offsets, total = _offsets(out)
    infos = [ShardInfo(**_read_json(_dir(out) / "infos" / f"{shard:06d}.json")) for shard in range(total)]
    count, written, now = 0, [], utc_now()
    for part, first in offsets:
        rows = {"key": [], "shard": [], "member": [], "index": []}
        for local, samples in enumerate(_read_json(_dir(out) / f"plan-{part:05d}.json")):
            for position, sample in enumerate(samples):
                rows["key"].append(sample["key"])
                rows["shard"].append(shard_name(first + local))
                rows["member"].append(f"{sample['key']}.{sample['ext']}")
                rows["index"].append(position)
        rows["written_at"] = [now] * len(rows["key"])  # in the table only: the tars stay byte-identical
        written.append(tables.write_part(out, "shards", part, pa.table(rows)))
        count += len(rows["key"])
    index = output.join(out, SHARD_DIR, "index.json")
    write_index(index, shard_index(infos, name=DATASET_NAME))
    manifest.record(out, STAGE, INDEX_UNIT, [index, *written])
    output.remove_tree(_dir(out))
    return {"in": count, "out": count}


def _planned_parts(out: Location, config: PipelineConfig, units: list) -> dict:
    found = {}
    for part in units:
        path = _dir(out) / f"count-{part:05d}.json"  # written after the part's plan
        if output.is_file(path):
            found[part] = {"shards": _read_json(path)}
    return found


def _numbered(out: Location, config: PipelineConfig, units: list) -> dict:
    path = _dir(out) / "offsets.json"
    return {units[0]: {"shards": _read_json(path)["total"]}} if output.is_file(path) else {}


def _shards_written(out: Location, config: PipelineConfig, units: list) -> dict:
    found = {}
    for shard in units:
        path = _dir(out) / "infos" / f"{shard:06d}.json"  # written after the shard
        if output.is_file(path):
            found[shard] = _read_json(path)
    return found


STEPS = (
    Step("plan", plan, units=lambda out, config, previous: _parts(out), done=_planned_parts),
    Step("number", number, done=_numbered),
    Step("write", write, units=lambda out, config, previous: list(range(previous[0]["shards"])), done=_shards_written),
    Step("finish", finish),
)
"""The shard stage's shape: plan per selection part, number, one write per shard, finish."""
