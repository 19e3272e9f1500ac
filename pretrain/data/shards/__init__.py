"""Webdataset shards as training data: which shards a ``--data`` spec names, and random access to a
sample's image bytes by its number.

A spec is one of

- a folder holding a wids ``index.json`` (what ``curate run`` writes to ``OUT/shards/``; ``OUT`` itself
  names the same),
- such an ``index.json`` (``{"__kind__": "wids-shard-index-v1", "shardlist": [{"url", "nsamples",
  "filesize", "md5sum"}, ...]}``; relative urls are taken from the index's folder),
- a brace pattern or a single tar: ``shards/shard-{000000..000041}.tar``, ``a-{0,1}.tar``
  (sample counts then come from reading every tar's headers once),
- a folder of tars without an index (img2dataset's webdataset output, metadata files beside the tars
  allowed; no image file at its top): its tars in name order, counted the same way.

Samples are numbered shard by shard in the index's order. :class:`ShardReader` indexes each tar's
headers on first use (512-byte USTAR headers, PAX and GNU long names; ~1 µs a member, through a
memory map) and reads an image member with one ``pread`` — no copy of the shard, no md5 pass (the
index's ``filesize`` is checked instead). Members group into samples as webdataset does (key = path
up to the first dot of the basename, consecutive members with one key form a sample); a sample's image
is its first member with an image extension::

    shards = resolve_shards("runs/lake/shards")           # or ".../index.json", or a brace pattern
    reader = ShardReader(shards)
    name, data = reader.read(12)     # ("shard-000000.tar/fm_0012-3f2a....png", b"\\x89PNG...")

Each of these may be an fsspec URL (``s3://bucket/run/shards``, ``s3://.../index.json``, a brace pattern
of URLs), reached with ``storage_options``. A remote shard is not memory-mapped: it is fetched whole
once per process when first touched, indexed from memory and kept while reads stay on it; a sample of
a shard let go is one ranged read (:func:`core.storage.read_bytes`). Local shards keep the mmap + pread
path.

Reading problems of one sample (a truncated tar, a sample without an image) raise
:class:`SampleReadError` so callers skip and count it; problems of the spec itself (no index, a corrupt
index, a listed shard missing or of another size) raise :class:`~pretrain.data.errors.DatasetError`.

One module a job: :mod:`~pretrain.data.shards.specs` resolves a spec into a :class:`ShardList`,
:mod:`~pretrain.data.shards.tar` parses tar headers into samples, :mod:`~pretrain.data.shards.reader`
reads a sample's bytes and orders the samples.
"""

from dinolab.core.storage import INDEX_KIND, INDEX_NAME
from dinolab.pretrain.data.shards.reader import SHARDS_PER_WINDOW, SampleReadError, ShardReader, windowed_order
from dinolab.pretrain.data.shards.specs import Shard, ShardList, expand_braces, is_shard_spec, read_index, resolve_shards
from dinolab.pretrain.data.shards.tar import IMAGE_EXTENSIONS, TarSample, group_samples, index_tar, read_tar_members

__all__ = ["IMAGE_EXTENSIONS", "INDEX_KIND", "INDEX_NAME", "SHARDS_PER_WINDOW", "SampleReadError", "Shard",
           "ShardList", "ShardReader", "TarSample", "expand_braces", "group_samples", "index_tar", "is_shard_spec",
           "read_index", "read_tar_members", "resolve_shards", "windowed_order"]
