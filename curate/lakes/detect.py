"""Lakes that are other tools' outputs, told by what a local folder or file holds rather than by its name.

:func:`detect` looks at a set's top level only (no walk of the tree) and answers with the containers
to list, or ``None`` for a plain folder of image files:

- a wids shard index (``index.json`` with a ``shardlist``, or a folder holding one: dinolab's own
  ``OUT/shards/``, a run folder ``OUT`` with ``shards/index.json``): the tars it lists, in its order;
- a folder of tar files (webdataset shards, img2dataset's ``output_format=webdataset``, whose
  ``00000.parquet`` beside each tar holds metadata only): its tars, sorted;
- a folder of parquet files one of which has a column of image bytes (img2dataset's
  ``output_format=parquet``, a Hugging Face export): its parquet files, sorted.

Both need a flat folder: one with an image file or a subfolder at its top stays a folder of images
(img2dataset's ``output_format=files``: ``00000/`` folders of images beside parquet metadata)::

    detect("downloads/i2d_wds")      # Detected("tar", ["/.../00000.tar", "/.../00001.tar"])
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import pyarrow.parquet as pq

from dinolab.core.storage import is_remote, strip_local_scheme
from dinolab.curate.lakes.parquet import PARQUET_SUFFIXES, find_image_column
from dinolab.curate.lakes.tar import TAR_SUFFIXES
from dinolab.curate.lakes.uris import LakeError
from dinolab.pretrain.data.images import is_image_file

INDEX_NAME = "index.json"


@dataclass(frozen=True)
class Detected:
    """A set found to be ``kind`` (``tar`` or ``parquet``) containers, local paths in listing order."""

    kind: str
    containers: list[str]


def _index_shards(index: Path) -> list[str] | None:
    """The shard paths a wids index lists (relative urls from its folder), or ``None`` if it is not one."""
    try:
        content = json.loads(index.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return None
    if not isinstance(content, dict) or not isinstance(content.get("shardlist"), list):
        return None
    paths = []
    for entry in content["shardlist"]:
        url = entry.get("url") if isinstance(entry, dict) else None
        if not isinstance(url, str) or not url:
            raise LakeError(f"{index}: corrupt shard index, an entry without a 'url'")
        if is_remote(url):
            paths.append(url)  # a shard in a store: read through fsspec like any tar URL
            continue
        path = Path(strip_local_scheme(url))
        paths.append(str((path if path.is_absolute() else index.parent / path).resolve()))
    if not paths:
        raise LakeError(f"{index}: the shard index lists no shards")
    return paths


def _has_image_column(path: Path) -> bool:
    try:
        find_image_column(pq.read_schema(path), "image")
    except (OSError, ValueError):
        return False
    return True


def detect(uri: str) -> Detected | None:
    """What a local set holds when it is not a folder of image files (see the module docstring), else ``None``."""
    path = Path(uri).expanduser()
    if path.is_file() and path.suffix == ".json":
        shards = _index_shards(path)
        if shards is None:
            raise LakeError(f"{uri}: a JSON file that is not a wids shard index (no 'shardlist')")
        return Detected("tar", shards)
    if not path.is_dir():
        return None
    for index in (path / INDEX_NAME, path / "shards" / INDEX_NAME):
        if index.is_file():
            shards = _index_shards(index)
            if shards is not None:
                return Detected("tar", shards)
    tars, tables = [], []
    with os.scandir(path) as entries:
        for entry in entries:
            if entry.name.startswith("."):
                continue
            if entry.is_dir():
                return None  # images may be in the subfolders: a folder of images, as always
            if not entry.is_file():
                continue
            if is_image_file(entry.name):
                return None  # a folder of images (the scan stops at the first one)
            name = entry.name.lower()
            if name.endswith(TAR_SUFFIXES):
                tars.append(str(Path(entry.path).resolve()))
            elif name.endswith(PARQUET_SUFFIXES):
                tables.append(str(Path(entry.path).resolve()))
    if tars:
        return Detected("tar", sorted(tars))
    if tables and _has_image_column(Path(min(tables))):
        return Detected("parquet", sorted(tables))
    return None
