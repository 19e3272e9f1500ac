"""Lake readers, one module per kind: the sets and their keys (:mod:`curate.lakes.sets`), fsspec URLs, tar files, parquet tables.

:mod:`~curate.lakes.uris` says how each kind's files are named in the ``files`` table;
:func:`read_partition` reads a partition's files with each container opened once (and, when asked,
what the lake says of each image: :mod:`~curate.lakes.provenance`); listing a set across tasks is
:mod:`curate.lakes.listing`, and other tools' outputs are recognised by :mod:`~curate.lakes.detect`.
Nothing here knows Dask.
"""

from dinolab.curate.lakes.reader import Reader, read_partition, read_uri
from dinolab.curate.lakes.uris import LakeError, RefusedFile, RefusedMember, Source, parse, source_name

__all__ = ["LakeError", "RefusedFile", "RefusedMember", "Source", "parse", "Reader", "read_partition", "read_uri",
           "source_name"]
