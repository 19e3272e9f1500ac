"""faiss on the GPUs of the worker when faiss has any (``faiss-gpu``), the same index on the CPU otherwise.

The one function the dedup search calls either way, so the CPU path runs the same code as the CUDA one::

    index = on_gpus(build_index(database, "flat"), "flat")   # GPU copy, or the index itself
"""

from __future__ import annotations

import faiss

GPU_KINDS = ("flat", "ivf")
"""Index kinds faiss runs on a GPU (HNSW has no GPU version and stays on the CPU)."""


def gpu_count() -> int:
    """GPUs faiss can use here (0 with ``faiss-cpu``)."""
    count = getattr(faiss, "get_num_gpus", None)
    return int(count()) if count is not None else 0


def on_gpus(index: faiss.Index, kind: str) -> faiss.Index:
    """``index`` copied to every GPU faiss sees (searches are then split across them), else ``index`` itself."""
    if kind not in GPU_KINDS or gpu_count() == 0:
        return index
    return faiss.index_cpu_to_all_gpus(index)
