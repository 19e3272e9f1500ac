"""Listing a set across tasks: split it into units, list each unit in its own task, then number the partitions.

A local folder or glob is one unit listed as before (:func:`curate.lakes.sets.list_set`, by the client). Any
other set is split by :func:`units` from one cheap look at its top level:

- a prefix (``s3://bucket/lake/``): one unit per sub-prefix (``fs.find``, one paginated flat listing
  each) and one for the files right at the top;
- a remote glob of images: one unit;
- tar files (``lake.tar``, ``shards/*.tar``, local or remote): one unit per tar, its members listed in
  archive order;
- parquet files (``t.parquet``, ``export/*.parquet``): one unit per file, its rows in table order;
- precomputed embeddings (a folder of ``img_emb/`` and ``metadata/``, :mod:`curate.lakes.embeddings`):
  one unit per metadata file, its rows in order;
- a local folder or file that is another tool's output — a folder of tars (img2dataset's webdataset
  output), a wids ``index.json`` or a folder with one (dinolab's ``OUT/shards``), a folder of parquet
  tables of image bytes — is found by what it holds (:mod:`curate.lakes.detect`) and listed as its tars
  or parquet files.

:func:`list_unit` writes a unit's listing to ``OUT/tables/files/.listing/unit-NNNNNN.parquet`` and
returns its size; once every unit is listed the client knows only the counts, numbers the partitions
(a partition never spans two units) and :func:`publish_unit` cuts each unit into its ``files`` parts.
Every step writes atomically under a deterministic name, so an interrupted listing resumes; the staging
folder is removed when every part is published (:func:`finish`)::

    for number, unit in enumerate(all_units):
        counts.append(list_unit(out, number, unit, config))
    firsts = first_partitions(counts, partition_size)
    for number in range(len(all_units)):
        publish_unit(out, number, firsts[number], partition_size)
    finish(out)
"""

from __future__ import annotations

import glob
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

import pyarrow as pa
import pyarrow.parquet as pq

from dinolab.curate import output, tables
from dinolab.curate.lakes.sets import ImageSet, list_set, make_key
from dinolab.curate.lakes import embeddings, fsspec_lake, parquet, tar
from dinolab.curate.lakes.detect import detect
from dinolab.curate.lakes.uris import LakeError, has_credentials, is_url, tar_member
from dinolab.curate.output import Location, RemotePath
from dinolab.pretrain.data.images import IMAGE_SUFFIXES, is_image_file
from dinolab.schemas.config import PipelineConfig
from dinolab.schemas.tables import FILES

STAGING = ".listing"


@dataclass(frozen=True)
class Unit:
    """One task's share of a set's listing: ``kind`` (folder, tree, top, glob, tar, parquet) of ``target``."""

    image_set: ImageSet
    kind: str
    target: str


def set_kind(uri: str) -> str:
    """``tar``, ``parquet``, ``embeddings`` or ``files`` (a folder, prefix or glob of image files), from the
    set's URI, or for a local folder or ``.json`` file, from what it holds (:func:`curate.lakes.detect.detect`;
    precomputed embeddings: :mod:`curate.lakes.embeddings`)."""
    if tar.is_tar(uri):
        return "tar"
    if parquet.is_parquet(uri):
        return "parquet"
    if not is_url(uri) and not any(char in uri for char in "*?["):
        if embeddings.detect_folder(uri) is not None:
            return "embeddings"
        found = detect(uri)
        if found is not None:
            return found.kind
    return "files"


def listed_by_client(image_set: ImageSet) -> bool:
    """Whether a set is a local folder or glob of images, listed in one go as it always was."""
    return not is_url(image_set.uri) and set_kind(image_set.uri) == "files"


def check_uri(uri: str) -> None:
    """Refuse set URIs that carry credentials (they would be written to run.json and every table)."""
    if has_credentials(uri):
        raise LakeError(f"{uri.split('@')[-1]}: a URL with a user or password; give credentials through the "
                        "environment or --storage-option instead")


def units(image_set: ImageSet, config: PipelineConfig) -> list[Unit]:
    """The units of one set, from one look at its top level (or the expansion of its glob)."""
    uri, options = image_set.uri, config.lake.storage_options
    check_uri(uri)
    kind = set_kind(uri)
    if listed_by_client(image_set):
        return [Unit(image_set, "folder", uri)]
    if kind in ("tar", "parquet"):
        return [Unit(image_set, kind, container) for container in _containers(uri, options)]
    if kind == "embeddings":
        return [Unit(image_set, kind, metadata) for metadata in embeddings.detect_folder(uri)]
    if any(char in uri.split("://", 1)[-1] for char in "*?["):
        return [Unit(image_set, "glob", uri)]
    folders, top_files = fsspec_lake.split_prefix(uri, options)
    found = [Unit(image_set, "top", uri)] if top_files else []
    root = uri.rstrip("/")
    return found + [Unit(image_set, "tree", folder) for folder in folders
                    if not _hidden(folder[len(root):] if folder.startswith(root) else PurePosixPath(folder).name)]


def _containers(uri: str, options) -> list[str]:
    """The tar or parquet files a set names (one file, a glob of them, or a folder or index holding them),
    as URLs or local paths."""
    pattern = any(char in uri.split("://", 1)[-1] for char in "*?[")
    found_by_content = None if is_url(uri) or pattern else detect(uri)
    if found_by_content is not None:
        return found_by_content.containers
    if not is_url(uri):
        path = Path(uri).expanduser()
        found = sorted(str(Path(p).resolve()) for p in glob.glob(str(path), recursive=True)) if pattern else (
            [str(path.resolve())] if path.exists() else [])
        found = [p for p in found if Path(p).is_file()]
    else:
        found = fsspec_lake.list_files(uri, options) if pattern else [uri]
    if not found:
        raise LakeError(f"{uri}: no such file" + (" matches" if pattern else ""))
    return found


def _hidden(relative: str) -> bool:
    return any(part.startswith(".") for part in PurePosixPath(relative).parts if part != "/")


def list_uris(unit: Unit, config: PipelineConfig) -> list[str]:
    """The uris of one unit: sorted for files, archive order for a tar, table order for a parquet file."""
    options, ingest = config.lake.storage_options, config.ingest
    if unit.kind == "folder":
        return list_set(unit.target, ingest.follow_links)
    if unit.kind == "tar":
        return tar.member_uris(unit.target, options)
    if unit.kind == "parquet":
        return parquet.list_rows(unit.target, ingest.image_column, ingest.path_column, ingest.fetch_urls, options,
                                 ingest.allow_outside_paths)
    root = unit.image_set.uri.rstrip("/")
    found = fsspec_lake.list_files(unit.target, options, recursive=unit.kind != "top")
    return [url for url in found if is_image_file(PurePosixPath(url.split("://", 1)[-1]).name)
            and not _hidden(url[len(root):] if url.startswith(root) else "")]


# -- the listing's files on disk ----------------------------------------------------------------------


def staging_dir(out: str | Path | RemotePath) -> Location:
    return tables.table_dir(out, "files") / STAGING


def in_progress(out: str | Path | RemotePath) -> bool:
    """Whether a split listing was started and not finished (its staging folder is still there)."""
    return output.exists(staging_dir(out))


def _unit_path(out: str | Path | RemotePath, number: int) -> Location:
    return staging_dir(out) / f"unit-{number:06d}.parquet"


def list_unit(out: str | Path | RemotePath, number: int, unit: Unit, config: PipelineConfig) -> int:
    """List unit ``number`` into the staging folder (unless done); returns how many files it holds."""
    path = _unit_path(out, number)
    if output.is_file(path):
        return pq.ParquetFile(output.readable(path)).metadata.num_rows
    prefix = "" if unit.image_set.role == "pool" else unit.image_set.name
    if unit.kind == "embeddings":
        keys, uris = embeddings.rows(unit.target)
        keys = [f"{prefix}-{key}" if prefix else key for key in keys]
    else:
        uris = list(dict.fromkeys(list_uris(unit, config)))
        keys = [make_key(uri, prefix) for uri in uris]
    table = pa.table({"key": keys, "uri": uris})
    output.publish(path, lambda stream: pq.write_table(table, stream))
    return len(uris)


def first_partitions(counts: list[int], partition_size: int) -> list[int]:
    """The first partition number of each unit (units of no files take none)."""
    if partition_size < 1:
        raise ValueError("partition_size must be at least 1")
    firsts, next_partition = [], 0
    for count in counts:
        firsts.append(next_partition)
        next_partition += -(-count // partition_size)
    return firsts


def check_counts(sets: list[ImageSet], set_of_unit: list[int], counts: list[int]) -> None:
    """:class:`LakeError` for a set none of whose units holds an image file."""
    for index, image_set in enumerate(sets):
        if not any(count for owner, count in zip(set_of_unit, counts) if owner == index):
            raise LakeError(f"{image_set.uri}: no image files found (looked for {', '.join(sorted(IMAGE_SUFFIXES))}"
                            f"{', in tar members' if set_kind(image_set.uri) == 'tar' else ''})")


def publish_unit(out: str | Path | RemotePath, number: int, unit: Unit, first: int, partition_size: int) -> int:
    """Cut staged unit ``number`` into ``files`` parts ``first, first + 1, ...``; returns how many."""
    staged = pq.read_table(output.readable(_unit_path(out, number)))
    count = 0
    for start in range(0, staged.num_rows, partition_size):
        chunk = staged.slice(start, partition_size)
        rows = chunk.num_rows
        part = pa.table({
            "key": chunk.column("key"), "uri": chunk.column("uri"), "role": [unit.image_set.role] * rows,
            "set": [unit.image_set.name] * rows, "partition": pa.array([first + count] * rows, pa.int32()),
        }, schema=FILES.schema)
        tables.write_part(out, "files", first + count, part)
        count += 1
    return count


def finish(out: str | Path | RemotePath) -> None:
    """Mark the listing complete: the staging folder goes (every part is published by now)."""
    output.remove_tree(staging_dir(out))
