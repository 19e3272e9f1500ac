"""Plain-file outputs of the curation steps, written atomically so an interrupted step leaves no half file.

Every file is written to ``NAME.tmp-PID`` next to its target and moved into place with :func:`os.replace`
(atomic on POSIX), so a reader sees either the old file, the new file, or none.

Example::

    write_json(out / "counts.json", {"pool": 1000})
    write_lines(out / "kept.txt", names)
    write_csv(out / "pairs.csv", ["a", "b", "similarity"], rows)
"""

from __future__ import annotations

import contextlib
import csv
import json
import os
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import IO, Any

import numpy as np


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success move it onto ``path``, on error delete it."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    temporary = target.with_name(f"{target.name}.tmp-{os.getpid()}")
    try:
        yield temporary
        os.replace(temporary, target)
    finally:
        if temporary.exists():
            temporary.unlink()


@contextlib.contextmanager
def atomic_text(path: str | os.PathLike) -> Iterator[IO[str]]:
    """Open a text file for writing that appears at ``path`` only once it is complete."""
    with atomic_path(path) as temporary, open(temporary, "w", encoding="utf-8", newline="") as handle:
        yield handle


def write_json(path: str | os.PathLike, data: Any) -> None:
    with atomic_text(path) as handle:
        json.dump(data, handle, indent=2, sort_keys=False)
        handle.write("\n")


def read_json(path: str | os.PathLike) -> Any:
    with open(path, encoding="utf-8") as handle:
        return json.load(handle)


def write_lines(path: str | os.PathLike, lines: Iterable[str]) -> None:
    with atomic_text(path) as handle:
        for line in lines:
            handle.write(f"{line}\n")


def read_lines(path: str | os.PathLike) -> list[str]:
    with open(path, encoding="utf-8") as handle:
        return [line.rstrip("\n") for line in handle if line.strip()]


def write_csv(path: str | os.PathLike, header: Sequence[str], rows: Iterable[Sequence[Any]]) -> None:
    with atomic_text(path) as handle:
        writer = csv.writer(handle)
        writer.writerow(header)
        writer.writerows(rows)


def read_csv(path: str | os.PathLike) -> list[dict[str, str]]:
    with open(path, encoding="utf-8", newline="") as handle:
        return list(csv.DictReader(handle))


def write_jsonl(path: str | os.PathLike, records: Iterable[dict[str, Any]]) -> None:
    with atomic_text(path) as handle:
        for record in records:
            handle.write(json.dumps(record) + "\n")


def read_jsonl(path: str | os.PathLike) -> list[dict[str, Any]]:
    with open(path, encoding="utf-8") as handle:
        return [json.loads(line) for line in handle if line.strip()]


def write_npy(path: str | os.PathLike, array: np.ndarray) -> None:
    with atomic_path(path) as temporary, open(temporary, "wb") as handle:
        np.save(handle, array)


def read_npy(path: str | os.PathLike) -> np.ndarray:
    return np.load(path, allow_pickle=False)
