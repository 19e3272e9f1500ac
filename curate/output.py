"""Where a run's outputs go: the storage calls of :mod:`core.storage`, under the names the stages use."""

from dinolab.core.storage import (  # noqa: F401 - re-exported
    Location,
    RemotePath,
    exists,
    is_file,
    is_remote,
    join,
    location,
    makedirs,
    md5,
    names,
    publish,
    read_bytes,
    readable,
    remove,
    remove_empty_folders,
    remove_matching,
    remove_tree,
    size,
    sizes,
    write_bytes,
)
