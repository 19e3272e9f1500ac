"""What a ``uri`` of the ``files`` table names, and how its parts are spelled (no I/O here).

Every row of the ``files`` table names its source as given, in one of five forms, told apart by their
start alone (a local path is absolute, so it never starts with a scheme)::

    /data/lake/cats/0001.jpg                         a local file (folder and glob lakes)
    s3://bucket/lake/cats/0001.jpg                   a file behind an fsspec URL (s3, gs, http(s), file, ...)
    tar://cats/0001.jpg::s3://bucket/shards/00.tar   member cats/0001.jpg of a tar file (fsspec's chained form:
                                                     ``fsspec.open(uri)`` reads it too)
    parquet://image.bytes/17::file:///data/t.parquet row 17 (0-based, over the whole file) of column image.bytes
    skip://link::/data/lake/passwd.jpg               an entry the listing found but refuses to read (a reason of
                                                     :data:`SKIPPED`, then the entry's name): ingest reports it

A container is always written as a URL (a local one as ``file:///abs/path``). A tar member name is kept
exactly as the archive spells it, so a member named ``../x.png`` gives ``tar://../x.png::...``: the URI
records it, the tar reader refuses it (:func:`unsafe_member`).
"""

from __future__ import annotations

import os
import posixpath
import re
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from urllib.parse import urlsplit

from dinolab.core.storage import is_url, protocol  # noqa: F401 - the lake modules' names for them


class LakeError(ValueError):
    """A set that cannot be listed: missing, empty, or holding no image files."""


class RefusedFile(OSError):
    """A listed entry that is never read (a ``skip://`` uri): the message says why."""


class RefusedMember(RefusedFile):
    """A tar member that is never read: a link, an absolute name or one that climbs out with ``..``."""


TAR = "tar://"
PARQUET = "parquet://"
SKIP = "skip://"
SKIPPED = {
    "link": "a symbolic link, not followed (ingest.follow_links=true follows links)",
    "loop": "a link to a folder listed already (a loop), not listed again",
    "special": "not a regular file (a FIFO, socket or device)",
    "hidden": "a hidden file (its name starts with '.')",
    "name": "a file name that is not valid UTF-8",
    "nul": "a path holding a NUL byte",
    "outside": "a path outside the table's folder (ingest.allow_outside_paths=true reads it)",
    "filesystem": "a local path named by a remote table (ingest.allow_outside_paths=true reads it)",
    "duplicate": "a tar member of the same name as an earlier one (only the first is read)",
}
"""Why a listed entry is skipped, by the reason code of its ``skip://REASON::NAME`` uri."""
CHAIN = "::"


@dataclass(frozen=True)
class Source:
    """One parsed ``uri``: its kind (``local``, ``url``, ``tar`` or ``parquet``) and the parts that locate it."""

    kind: str
    location: str
    """The local path or URL of the file itself (``local``, ``url``) or of its container (``tar``, ``parquet``)."""
    member: str = ""
    """Tar member name, exactly as in the archive."""
    column: str = ""
    """Parquet column holding the bytes (``image.bytes``: field ``bytes`` of struct column ``image``)."""
    row: int = -1
    reason: str = ""
    """Why a ``skip`` entry is not read (a code of :data:`SKIPPED`, with ``-N`` for the N-th of a name)."""


def as_url(path_or_url: str) -> str:
    """A container's URL: URLs as they are, local paths as ``file:///absolute/path``."""
    if is_url(path_or_url):
        return path_or_url
    return Path(path_or_url).expanduser().resolve().as_uri()


def local_path(url: str) -> str | None:
    """The local path of a ``file://`` URL or of a plain path, else ``None``."""
    if not is_url(url):
        return url
    if protocol(url) == "file":
        from urllib.request import url2pathname

        return url2pathname(urlsplit(url).path)
    return None


def tar_member(member: str, container: str) -> str:
    return f"{TAR}{member}{CHAIN}{as_url(container)}"


def parquet_row(column: str, row: int, container: str) -> str:
    return f"{PARQUET}{column}/{row}{CHAIN}{as_url(container)}"


def skipped(reason: str, name: str) -> str:
    """The uri of an entry refused at listing: ``skip://REASON::NAME`` (``NAME`` printable: NUL and bytes
    that are not UTF-8 are spelled ``\\x00``)."""
    if reason.partition("-")[0] not in SKIPPED:
        raise ValueError(f"unknown skip reason {reason!r}")
    return f"{SKIP}{reason}{CHAIN}{printable(name)}"


def printable(name: str) -> str:
    """``name`` (which may hold bytes that are not UTF-8, as ``os`` spells them) as valid, NUL-free text."""
    return os.fsencode(name).decode("utf-8", "backslashreplace").replace("\x00", "\\x00")


def skip_reason(source: Source) -> str:
    """The sentence saying why a ``skip`` source is not read."""
    code, _, number = source.reason.partition("-")
    return SKIPPED[code] + (f" (occurrence {number})" if number else "")


def parse(uri: str) -> Source:
    """The :class:`Source` a ``files`` uri names; ``ValueError`` for a malformed container URI."""
    if uri.startswith(TAR):
        member, sep, container = uri[len(TAR):].partition(CHAIN)
        if not sep or not container:
            raise ValueError(f"{uri}: a tar member URI is tar://MEMBER::CONTAINER_URL")
        return Source("tar", container, member=member)
    if uri.startswith(PARQUET):
        inner, sep, container = uri[len(PARQUET):].partition(CHAIN)
        column, _, row = inner.rpartition("/")
        if not sep or not container or not column or not row.isdigit():
            raise ValueError(f"{uri}: a parquet row URI is parquet://COLUMN/ROW::CONTAINER_URL")
        return Source("parquet", container, column=column, row=int(row))
    if uri.startswith(SKIP):
        reason, sep, name = uri[len(SKIP):].partition(CHAIN)
        if not sep or reason.partition("-")[0] not in SKIPPED:
            raise ValueError(f"{uri}: a skipped entry's URI is skip://REASON::NAME")
        return Source("skip", name, reason=reason)
    return Source("url" if is_url(uri) else "local", uri)


def source_name(uri: str) -> str:
    """The name a key is made from: the path of a file, the member of a tar, ``TABLE_ROW`` of a parquet row."""
    source = parse(uri) if uri.startswith((TAR, PARQUET, SKIP)) else None
    if source is not None and source.kind == "skip":
        return source_name(source.location)
    if source is None:
        return urlsplit(uri).path if is_url(uri) else uri
    if source.kind == "tar":
        return source.member
    return f"{PurePosixPath(urlsplit(source.location).path).stem}_{source.row}"


def unsafe_member(name: str) -> str | None:
    """Why a tar member name must not be read (absolute, climbs out with ``..``, or breaks the URI), else ``None``."""
    if name.startswith("/") or re.match(r"^[A-Za-z]:[\\/]", name):
        return "absolute member name"
    if ".." in PurePosixPath(name.replace("\\", "/")).parts:
        return "member name climbs out of the archive (..)"
    if CHAIN in name:
        return "member name holds '::'"
    if posixpath.normpath(name) in ("", "."):
        return "empty member name"
    return None


def has_credentials(url: str) -> bool:
    """Whether a URL carries a user name or password (``https://user:pass@host/``): refused, never written."""
    return is_url(url) and "@" in urlsplit(url).netloc
