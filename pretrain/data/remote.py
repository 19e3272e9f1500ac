"""Shards behind fsspec URLs (``s3://``, ``gs://``, ``memory://`` ...): storage options, sizes and reads.

A remote shard is read whole once per process when it is first touched (one GET: its tar headers are
spread through it, so indexing reads every byte anyway) and kept in memory while reads stay on it; a
sample of a shard whose bytes were let go is one ranged read (``cat_file(start, end)``). Memory stays
at one shard per process, and the requests at one per shard plus one per sample read away from it::

    options = parse_storage_options(["endpoint_url=http://127.0.0.1:9000", "anon=false"])
    data = read_bytes("s3://bucket/shards/shard-000000.tar", options, start=512, end=1024)

Options go to every protocol but ``file``; ``--storage-option`` pairs parse as ``curate``'s do
(``true``/``false`` are booleans, ``a.b=v`` nests); secrets are best left to the environment.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from typing import Any

STORAGE_OPTIONS_ENV = "PRETRAIN_STORAGE_OPTIONS"
"""Environment variable holding storage options as a JSON object (how ``curate run --pretrain`` passes
secrets without a command line); ``--storage-option`` pairs are laid over it."""


def is_url(spec: str) -> bool:
    """Whether ``spec`` names a remote store (``file://`` is a local path)."""
    return "://" in spec and not spec.startswith("file://")


def parse_storage_options(pairs: Iterable[str], environ: Mapping[str, str] | None = None) -> dict[str, Any]:
    """Storage options of ``environ[STORAGE_OPTIONS_ENV]`` (JSON) with ``KEY=VALUE`` pairs laid over them."""
    options: dict[str, Any] = {}
    text = (environ or {}).get(STORAGE_OPTIONS_ENV)
    if text:
        try:
            options = json.loads(text)
        except json.JSONDecodeError:
            raise ValueError(f"{STORAGE_OPTIONS_ENV} is not a JSON object") from None
        if not isinstance(options, dict):
            raise ValueError(f"{STORAGE_OPTIONS_ENV} is not a JSON object")
    for pair in pairs:
        name, sep, value = pair.partition("=")
        name = name.strip()
        if not sep or not name:  # the value is not echoed: it may be a credential typed without its key
            raise ValueError("--storage-option: expected KEY=VALUE (one was given without '=' or a key)")
        *parents, leaf = name.split(".")
        target = options
        for parent in parents:
            target = target.setdefault(parent, {})
            if not isinstance(target, dict):
                raise ValueError(f"--storage-option {name}: {parent} is already set to a value")
        target[leaf] = {"true": True, "false": False}.get(value.strip().lower(), value)
    return options


def filesystem(url: str, storage_options: Mapping[str, Any] | None = None):
    """The fsspec filesystem of ``url`` and the path of ``url`` in it."""
    import fsspec

    protocol = url.split("://", 1)[0]
    options = {} if protocol in ("file", "local") else dict(storage_options or {})
    try:
        fs = fsspec.filesystem(protocol, **options)
    except (ImportError, ValueError) as error:
        raise OSError(f"{url}: no fsspec filesystem for {protocol}:// ({error})") from None
    return fs, fs._strip_protocol(url)


def join(folder: str, name: str) -> str:
    return f"{folder.rstrip('/')}/{name}"


def parent(url: str) -> str:
    return url.rstrip("/").rsplit("/", 1)[0]


def read_bytes(url: str, storage_options: Mapping[str, Any] | None = None, start: int | None = None,
               end: int | None = None) -> bytes:
    """The bytes of ``url`` (``[start, end)`` when given); ``FileNotFoundError`` when there is no such object."""
    fs, path = filesystem(url, storage_options)
    return fs.cat_file(path, start=start, end=end)


def is_file(url: str, storage_options: Mapping[str, Any] | None = None) -> bool:
    fs, path = filesystem(url, storage_options)
    return fs.isfile(path)


def sizes(urls: list[str], storage_options: Mapping[str, Any] | None = None) -> dict[str, int]:
    """Sizes of those of ``urls`` that exist, from one listing per folder."""
    found: dict[str, int] = {}
    for folder in dict.fromkeys(parent(url) for url in urls):
        fs, path = filesystem(folder, storage_options)
        try:
            entries = fs.ls(path, detail=True)
        except (FileNotFoundError, NotADirectoryError):
            continue
        names = {entry["name"].rstrip("/").rsplit("/", 1)[-1]: entry for entry in entries}
        for url in urls:
            entry = names.get(url.rsplit("/", 1)[-1]) if parent(url) == folder else None
            if entry is not None and entry.get("type") != "directory":
                found[url] = int(entry["size"])
    return found
