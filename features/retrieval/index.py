"""A faiss nearest-neighbour index over L2-normalised embeddings, saved with its names and model.

Inner product on unit vectors is cosine similarity. Three kinds:

* ``flat``: exact search (``IndexFlatIP``), right for up to a few hundred thousand vectors;
* ``ivf``: inverted lists (``IndexIVFFlat``) trained by k-means; ``nlist`` ≈ 4·√N (at most N/39, the
  number of points faiss wants per centroid) and ``nprobe`` = nlist/8 (at least 8) by default;
* ``hnsw``: a graph (``IndexHNSWFlat``) with ``M`` = 32 links, efConstruction 80, efSearch 64.

On disk an index is a directory with ``index.faiss`` and ``index.json`` (kind, search parameters, the
item names and the description of the model that embedded them, so queries are embedded the same way).

Example::

    index = FeatureIndex.build(embeddings, names, model_description={"weights": "w.pth"}, kind="flat")
    index.save("my_index")
    FeatureIndex.load("my_index").search(query_embeddings, k=5)[0][0].name
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

IndexKind = Literal["flat", "ivf", "hnsw"]
INDEX_KINDS: tuple[str, ...] = ("flat", "ivf", "hnsw")
INDEX_FILE = "index.faiss"
META_FILE = "index.json"
FORMAT_VERSION = 1


class RetrievalIndexError(ValueError):
    """An index directory that is missing, corrupt or does not fit the request."""


@dataclass(frozen=True)
class SearchHit:
    """One neighbour: its rank (0 = best), gallery position, name and cosine similarity."""

    rank: int
    position: int
    name: str
    score: float


def default_nlist(num_vectors: int) -> int:
    """IVF list count: about 4·√N, keeping at least 39 training points per list."""
    return max(1, min(int(4 * math.sqrt(num_vectors)), num_vectors // 39))


def default_nprobe(nlist: int) -> int:
    """Lists visited per query: an eighth of them, at least 8 (or all when there are fewer)."""
    return min(nlist, max(8, nlist // 8))


def _unit_rows(vectors: Tensor | np.ndarray) -> np.ndarray:
    tensor = torch.as_tensor(vectors).float()
    if tensor.ndim != 2 or tensor.shape[0] == 0:
        raise RetrievalIndexError(f"expected a non-empty [N, D] array of vectors, got {tuple(tensor.shape)}")
    return np.ascontiguousarray(F.normalize(tensor, dim=1).cpu().numpy(), dtype=np.float32)


def build_faiss_index(
    unit_vectors: np.ndarray,
    kind: IndexKind = "flat",
    nlist: int | None = None,
    hnsw_m: int = 32,
    seed: int = 0,
) -> Any:
    """A filled faiss index of ``kind`` with inner-product metric over ``unit_vectors`` ``[N, D]``."""
    import faiss

    num, dim = unit_vectors.shape
    if kind == "flat":
        index = faiss.IndexFlatIP(dim)
    elif kind == "ivf":
        nlist = nlist or default_nlist(num)
        if nlist > num:
            raise RetrievalIndexError(f"nlist={nlist} exceeds the number of vectors ({num})")
        index = faiss.IndexIVFFlat(faiss.IndexFlatIP(dim), dim, nlist, faiss.METRIC_INNER_PRODUCT)
        index.cp.seed = seed
        index.train(unit_vectors)
        index.nprobe = default_nprobe(nlist)
    elif kind == "hnsw":
        index = faiss.IndexHNSWFlat(dim, hnsw_m, faiss.METRIC_INNER_PRODUCT)
        index.hnsw.efConstruction = 80
        index.hnsw.efSearch = 64
    else:
        raise RetrievalIndexError(f"unknown index kind {kind!r}; choose one of {', '.join(INDEX_KINDS)}")
    index.add(unit_vectors)
    return index


@dataclass
class FeatureIndex:
    """A faiss index plus the names of its items and the description of the embedding model."""

    index: Any
    names: list[str]
    kind: str
    model_description: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def build(
        cls,
        vectors: Tensor | np.ndarray,
        names: Sequence[str],
        model_description: dict[str, Any] | None = None,
        kind: IndexKind = "flat",
        nlist: int | None = None,
        hnsw_m: int = 32,
    ) -> "FeatureIndex":
        unit = _unit_rows(vectors)
        if len(names) != unit.shape[0]:
            raise RetrievalIndexError(f"{unit.shape[0]} vectors but {len(names)} names")
        index = build_faiss_index(unit, kind, nlist, hnsw_m)
        return cls(index, list(names), kind, dict(model_description or {}))

    @property
    def dim(self) -> int:
        return int(self.index.d)

    def __len__(self) -> int:
        return int(self.index.ntotal)

    def set_search_parameters(self, nprobe: int | None = None, ef_search: int | None = None) -> None:
        """Trade speed for recall: IVF lists visited (``nprobe``) or HNSW candidate list (``ef_search``)."""
        if nprobe is not None and self.kind == "ivf":
            self.index.nprobe = nprobe
        if ef_search is not None and self.kind == "hnsw":
            self.index.hnsw.efSearch = ef_search

    def search_arrays(self, queries: Tensor | np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Scores and positions ``[Q, k]`` (position −1 where fewer than ``k`` items were found)."""
        unit = _unit_rows(queries)
        if unit.shape[1] != self.dim:
            raise RetrievalIndexError(
                f"queries have dimension {unit.shape[1]} but the index holds {self.dim}-d vectors"
            )
        return self.index.search(unit, min(k, len(self)))

    def search(self, queries: Tensor | np.ndarray, k: int) -> list[list[SearchHit]]:
        """The ``k`` nearest items of each query, best first."""
        scores, positions = self.search_arrays(queries, k)
        return [
            [
                SearchHit(rank, int(pos), self.names[pos], float(score))
                for rank, (pos, score) in enumerate(zip(row_pos, row_scores))
                if pos >= 0
            ]
            for row_pos, row_scores in zip(positions, scores)
        ]

    # ------------------------------------------------------------------ disk
    def save(self, directory: str | Path) -> Path:
        import faiss

        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        faiss.write_index(self.index, str(directory / INDEX_FILE))
        meta = {
            "format_version": FORMAT_VERSION,
            "kind": self.kind,
            "dim": self.dim,
            "count": len(self),
            "nprobe": int(self.index.nprobe) if self.kind == "ivf" else None,
            "ef_search": int(self.index.hnsw.efSearch) if self.kind == "hnsw" else None,
            "model": self.model_description,
            "names": self.names,
        }
        (directory / META_FILE).write_text(json.dumps(meta, indent=1))
        return directory

    @classmethod
    def load(cls, directory: str | Path) -> "FeatureIndex":
        import faiss

        directory = Path(directory)
        index_path, meta_path = directory / INDEX_FILE, directory / META_FILE
        if not directory.is_dir() or not index_path.is_file() or not meta_path.is_file():
            raise RetrievalIndexError(
                f"{directory} is not an index directory (expected {INDEX_FILE} and {META_FILE}); "
                "create one with `features index build`"
            )
        try:
            meta = json.loads(meta_path.read_text())
            names, kind = list(meta["names"]), str(meta["kind"])
        except (json.JSONDecodeError, KeyError, TypeError, UnicodeDecodeError) as error:
            raise RetrievalIndexError(f"{meta_path} is corrupt: {error}") from error
        try:
            index = faiss.read_index(str(index_path))
        except RuntimeError as error:
            raise RetrievalIndexError(f"{index_path} is not a readable faiss index") from error
        if index.ntotal != len(names) or index.d != meta.get("dim", index.d):
            raise RetrievalIndexError(
                f"{directory}: the faiss index holds {index.ntotal} vectors of dim {index.d} but "
                f"{META_FILE} lists {len(names)} names of dim {meta.get('dim')}"
            )
        loaded = cls(index, names, kind, dict(meta.get("model") or {}))
        loaded.set_search_parameters(meta.get("nprobe"), meta.get("ef_search"))
        return loaded
