"""Provenance: the metadata a lake keeps beside each image, carried into the ``images`` table and the shards.

What counts as an image's provenance depends on the lake (local folders and URLs have none):

- a tar of webdataset samples (img2dataset's ``000000001.jpg`` + ``.json`` + ``.txt``): the fields of the
  sample's ``json`` member, and each other text member under its extension (``txt``: img2dataset's caption);
  a sample of dinolab's own shards gives back the ``provenance`` its ``json`` carries, so curating the
  shards again keeps what the first lake said, not the metadata of the curation;
- a parquet table of image bytes (img2dataset's parquet output, a Hugging Face export): every other
  column of the image's row (binary columns left out: ``url``, ``caption``, ``key``, ``status``, ...).

It is stored as compact JSON text with sorted keys (:func:`as_text`), so its columns may differ from lake
to lake while the ``images.provenance`` column and the shard ``json`` field stay one type::

    as_text(from_members({"json": b'{"url": "http://x/a.jpg", "key": "000000001"}', "txt": b"a cat"}))
    # '{"key":"000000001","txt":"a cat","url":"http://x/a.jpg"}'
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

MAX_MEMBER = 1 << 20
"""Metadata members larger than this (bytes) are not read: metadata is small, anything bigger is data."""
TEXT_EXTENSIONS = frozenset({"txt", "text", "caption", "cls", "cls2", "id", "url", "key"})
"""Sidecar members read as UTF-8 text; other non-image members (npy, pth, ...) are left out."""


def wanted(extension: str, size: int) -> bool:
    """Whether a non-image sidecar member of this extension and size is read as provenance."""
    return size <= MAX_MEMBER and (extension == "json" or extension in TEXT_EXTENSIONS)


def from_members(members: Mapping[str, bytes]) -> dict[str, Any]:
    """The provenance of a webdataset sample from its metadata members (extension -> bytes)."""
    result: dict[str, Any] = {}
    for extension in sorted(members):
        try:
            text = members[extension].decode("utf-8")
        except UnicodeDecodeError:
            continue
        if extension != "json":
            result[extension] = text.strip()
            continue
        try:
            fields = json.loads(text)
        except json.JSONDecodeError:
            continue
        if not isinstance(fields, dict):
            continue
        carried = fields.get("provenance")
        if isinstance(carried, str):  # a sample of dinolab's own shards: what its lake said
            try:
                fields = json.loads(carried)
            except json.JSONDecodeError:
                continue
            if not isinstance(fields, dict):
                continue
        result.update(fields)
    return result


def from_row(row: Mapping[str, Any]) -> dict[str, Any]:
    """The provenance of a parquet row: its columns, bytes left out (they are images, not metadata)."""
    return {name: value for name, value in row.items() if not isinstance(value, (bytes, bytearray))}


def as_text(provenance: Mapping[str, Any]) -> str | None:
    """``provenance`` as compact JSON text with sorted keys (``None`` when empty); NaN and infinities as
    ``null``, other values JSON does not know (dates, decimals) as their text."""
    if not provenance:
        return None
    return json.dumps(_finite(provenance), sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str)


def _finite(value: Any) -> Any:
    if isinstance(value, float):
        return value if value - value == 0 else None  # NaN and infinities are not JSON
    if isinstance(value, Mapping):
        return {str(key): _finite(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(item) for item in value]
    return value
