"""Tar lakes (plain tars, or existing webdataset shards): members listed and read in place, never extracted.

A member is listed when its name has an image suffix; ``key.json``, ``key.cls`` and the like of a
webdataset sample are not images and are skipped. Links (symbolic or hard), other non-regular members,
absolute names and names climbing out with ``..`` are listed too, so that ingest reports them, but
reading refuses them (:class:`~curate.lakes.uris.RefusedMember`): nothing is ever followed or written
to disk. A container is opened once per call and read front to back, stopping after the last member
asked for; a name that appears twice is read at its first appearance, and :func:`member_uris` lists each
later one as a ``skip://duplicate-N`` entry that ingest names::

    names = list_members("/data/shards/000000.tar")
    for name, data in read_members("/data/shards/000000.tar", names[:10]):
        ...
"""

from __future__ import annotations

import tarfile
from collections import Counter
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

from dinolab.curate.lakes import provenance
from dinolab.curate.lakes.fsspec_lake import open_binary
from dinolab.curate.lakes.uris import LakeError, RefusedMember, as_url, skipped, tar_member, unsafe_member
from dinolab.pretrain.data.images import is_image_file

TAR_SUFFIXES = (".tar", ".tar.gz", ".tgz")


def is_tar(uri: str) -> bool:
    return uri.lower().rstrip("/").endswith(TAR_SUFFIXES)


def refusal(info: tarfile.TarInfo) -> str | None:
    """Why member ``info`` is never read (link, device, unsafe name), else ``None``."""
    if info.issym():
        return f"symbolic link to {info.linkname!r} (not followed)"
    if info.islnk():
        return f"hard link to {info.linkname!r} (not followed)"
    if not info.isreg():
        return "not a regular file"
    return unsafe_member(info.name)


def _open(container: str, storage_options: Mapping[str, Any] | None) -> tuple[Any, tarfile.TarFile]:
    stream = open_binary(as_url(container), storage_options)
    try:
        return stream, tarfile.open(fileobj=stream, mode="r:*")
    except Exception:
        stream.close()
        raise


def list_members(container: str, storage_options: Mapping[str, Any] | None = None) -> list[str]:
    """Names of the image members of ``container`` in archive order, refused ones and repeated names included."""
    try:
        stream, archive = _open(container, storage_options)
    except (OSError, tarfile.TarError) as error:
        raise LakeError(f"{container}: not a readable tar file ({type(error).__name__}: {error})") from None
    with stream, archive:
        return [info.name for info in archive if not info.isdir() and is_image_file(info.name)]


def member_uris(container: str, storage_options: Mapping[str, Any] | None = None) -> list[str]:
    """The ``files`` uris of ``container``'s image members; the N-th repeat of a name is ``skip://duplicate-N``
    (only its first member is read), so no member is dropped unnamed."""
    seen: Counter[str] = Counter()
    uris = []
    for name in list_members(container, storage_options):
        seen[name] += 1
        uri = tar_member(name, container)
        uris.append(uri if seen[name] == 1 else skipped(f"duplicate-{seen[name]}", uri))
    return uris


def sample_key(name: str) -> tuple[str, str]:
    """``(key, extension)`` of a member as webdataset groups them: the path up to the first dot of the
    basename, and the rest (``a/b.seg.png`` -> ``("a/b", "seg.png")``)."""
    folder, _, base = name.rpartition("/")
    stem, _, extension = base.partition(".")
    return (f"{folder}/{stem}" if folder else stem), extension.lower()


def read_members(container: str, names: Sequence[str], storage_options: Mapping[str, Any] | None = None,
                 metadata: dict[str, dict[str, bytes]] | None = None) -> Iterator[tuple[str, bytes | BaseException]]:
    """``(name, bytes or exception)`` for each distinct name, in archive order (missing names last).

    With ``metadata`` (a dict), the metadata members of each image's webdataset sample (``key.json``,
    ``key.txt``, ... beside ``key.jpg``: :func:`curate.lakes.provenance.wanted`) are read too and stored as
    ``metadata[name] = {extension: bytes}``.
    """
    wanted = set(names)
    keys = {sample_key(name)[0]: name for name in wanted} if metadata is not None else {}
    try:
        stream, archive = _open(container, storage_options)
    except Exception as error:  # noqa: BLE001 - every member of an unreadable container fails alike
        for name in dict.fromkeys(names):
            yield name, error
        return
    held: list[tuple[str, bytes | BaseException]] = []  # images of the current sample, until its metadata is read
    held_key = None
    with stream, archive:
        try:
            for info in archive:
                key, extension = sample_key(info.name)
                if held and key != held_key:
                    yield from held
                    held = []
                    if not wanted:
                        return  # past the last sample asked for
                if info.name not in wanted:
                    if key in keys and not is_image_file(info.name) and refusal(info) is None \
                            and provenance.wanted(extension, info.size):
                        member = archive.extractfile(info)
                        if member is not None:
                            metadata.setdefault(keys[key], {})[extension] = member.read()
                    continue
                wanted.discard(info.name)
                reason = refusal(info)
                if reason:
                    result: bytes | BaseException = RefusedMember(reason)
                else:
                    member = archive.extractfile(info)
                    result = member.read() if member is not None else RefusedMember("not a regular file")
                if metadata is None:
                    yield info.name, result
                    if not wanted:
                        return
                else:
                    held.append((info.name, result))
                    held_key = key
            yield from held
            held = []
        except (OSError, tarfile.TarError, EOFError) as error:
            yield from held
            for name in [n for n in dict.fromkeys(names) if n in wanted]:
                yield name, OSError(f"tar read failed ({type(error).__name__}: {error})")
            return
    for name in [n for n in dict.fromkeys(names) if n in wanted]:
        yield name, FileNotFoundError(f"no member {name!r} in {container}")
