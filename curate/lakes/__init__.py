"""Lake readers, one module per kind: local folders (:mod:`curate.lake`), fsspec URLs, tar files, parquet tables.

:mod:`~curate.lakes.uris` says how each kind's files are named in the ``files`` table;
:func:`read_partition` reads a partition's files with each container opened once; listing a set
across tasks is :mod:`curate.lakes.listing`. Nothing here knows Dask.
"""

from curate.lakes.reader import Reader, read_partition, read_uri
from curate.lakes.uris import LakeError, RefusedMember, Source, parse, source_name

__all__ = ["LakeError", "RefusedMember", "Source", "parse", "Reader", "read_partition", "read_uri", "source_name"]
