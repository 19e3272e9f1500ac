"""What each unit of work wrote: sizes and MD5 digests, kept to find damaged outputs later.

When a unit has published its outputs it records them in ``OUT/manifests/<stage>/<unit>.json``
(``{"files": {"tables/images/part-00003.parquet": {"size": ..., "md5": ...}}}``). :func:`damaged` compares
what is in ``OUT`` now with every record: a missing file or another size is found from one listing per
folder; with ``deep`` each file is also read and its digest compared (an overwritten file of the same size).
A unit without a record (a run older than the records) is not checked::

    record(out, "ingest", "part-00003", [out / "tables/images/part-00003.parquet"])
    damaged(out, "ingest")          # {"part-00003": {"tables/images/part-00003.parquet": "missing"}}
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from dinolab.curate import output
from dinolab.curate.output import Location, RemotePath

MANIFEST_DIR = "manifests"


def manifest_dir(out: Location, stage: str) -> Location:
    return output.join(out, MANIFEST_DIR, stage)


def relative(out: Location, path: Location) -> str:
    """``path`` relative to ``out``, with ``/`` separators."""
    if isinstance(path, RemotePath):
        return path.url[len(str(out).rstrip("/")) + 1:]
    return Path(path).relative_to(out).as_posix()


def record(out: Location, stage: str, unit: str, paths: list[Location], known: dict[str, dict] | None = None) -> None:
    """Record the size and digest of ``paths`` as what ``unit`` of ``stage`` wrote (``known``: digests by
    relative path that the unit computed itself, e.g. a shard's)."""
    known = known or {}
    todo = [path for path in paths if relative(out, path) not in known]
    files = {relative(out, path): digest for path, digest in zip(todo, _digests(todo))}
    files |= {relative(out, path): known[relative(out, path)] for path in paths if relative(out, path) in known}
    output.write_bytes(manifest_dir(out, stage) / f"{unit}.json", json.dumps({"files": files}, sort_keys=True).encode())


def _digests(paths: list[Location], batch: int = 256) -> list[dict]:
    """``{size, md5}`` of each file; objects of a store are fetched ``batch`` at a time, concurrently."""
    if not paths or not all(isinstance(path, RemotePath) for path in paths):
        return [{"size": output.size(path), "md5": output.md5(path)} for path in paths]
    fs, _ = paths[0].filesystem()
    found = []
    for start in range(0, len(paths), batch):
        keys = [path.filesystem()[1] for path in paths[start:start + batch]]
        contents = fs.cat(keys)
        found += [{"size": len(contents[key]), "md5": hashlib.md5(contents[key]).hexdigest()} for key in keys]
    return found


def forget(out: Location, stage: str, units: list[str] | None = None) -> None:
    """Drop the records of ``units`` of ``stage`` (all of them when ``None``)."""
    if units is None:
        output.remove_matching(out, f"{MANIFEST_DIR}/{stage}/*.json")
        return
    for unit in units:
        output.remove(manifest_dir(out, stage) / f"{unit}.json")


def recorded(out: Location, stage: str) -> dict[str, dict[str, dict] | None]:
    """Every record of ``stage``: unit -> relative path -> ``{size, md5}`` (``None``: an unreadable record)."""
    folder = manifest_dir(out, stage)
    records: dict[str, dict[str, dict] | None] = {}
    for name in output.names(folder, "*.json"):
        try:
            files = json.loads(output.read_bytes(folder / name))["files"]
            records[name.removesuffix(".json")] = files if isinstance(files, dict) else None
        except (ValueError, KeyError, TypeError):
            records[name.removesuffix(".json")] = None
    return records


def damaged(out: Location, stage: str, deep: bool = False) -> dict[str, dict[str, str]]:
    """Units of ``stage`` whose recorded files are missing, of another size or (``deep``) of another digest:
    unit -> relative path -> what is wrong with it (an unreadable record names itself)."""
    listings: dict[str, dict[str, int]] = {}
    found: dict[str, dict[str, str]] = {}
    for unit, files in recorded(out, stage).items():
        if files is None:
            found[unit] = {f"{MANIFEST_DIR}/{stage}/{unit}.json": "not a readable record"}
            continue
        problems = {}
        for name, expected in sorted(files.items()):
            folder, _, base = name.rpartition("/")
            if folder not in listings:
                listings[folder] = output.sizes(output.join(out, *folder.split("/")) if folder else out)
            size, written = listings[folder].get(base), expected.get("size")
            if size is None:
                problems[name] = "missing"
            elif size != written:
                problems[name] = f"{size:,} bytes, {written:,} written" if isinstance(written, int) else "no size recorded"
            elif deep and output.md5(output.join(out, *name.split("/"))) != expected.get("md5"):
                problems[name] = "overwritten (another MD5 digest)"
        if problems:
            found[unit] = problems
    return found
