"""faiss on GPU when present: the dedup search goes through on_gpus on the CPU too, and a GPU copy when one is seen."""

import faiss
import numpy as np

from dinolab.curate import faiss_gpu
from dinolab.curate.dedup import nearest_neighbors


def test_without_gpus_the_index_stays_itself(monkeypatch):
    monkeypatch.setattr(faiss_gpu, "gpu_count", lambda: 0)
    index = faiss.IndexFlatIP(4)
    assert faiss_gpu.on_gpus(index, "flat") is index


def test_with_gpus_the_search_index_is_copied_to_them(monkeypatch):
    copied = []
    monkeypatch.setattr(faiss_gpu, "gpu_count", lambda: 2)
    monkeypatch.setattr(faiss, "index_cpu_to_all_gpus", lambda index: copied.append(type(index).__name__) or index,
                        raising=False)
    vectors = np.random.default_rng(0).normal(size=(50, 8)).astype(np.float32)
    sims, ids = nearest_neighbors(vectors, vectors, k=3)
    assert copied == ["IndexFlatIP"]
    assert (ids[:, 0] == np.arange(50)).all() and np.allclose(sims[:, 0], 1.0, atol=1e-5)
    hnsw = faiss.IndexHNSWFlat(8, 8)
    assert faiss_gpu.on_gpus(hnsw, "hnsw") is hnsw and copied == ["IndexFlatIP"]  # no GPU HNSW in faiss
