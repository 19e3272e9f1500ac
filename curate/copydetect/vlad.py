"""A global copy descriptor that needs no downloaded weights: VLAD over RootSIFT, PCA-whitened.

VLAD (Jégou et al. 2010) sums, per visual word of a small vocabulary (k-means of RootSIFT descriptors of a
seeded lake sample), the residuals of the image's descriptors assigned to it; each word's block is
L2-normalised (intra-normalisation, which tames bursty words), the whole vector signed-square-rooted and
L2-normalised. A PCA-whitening learned on a seeded sample of pool vectors (faiss ``PCAMatrix`` with
eigenvalue power -1/2) brings it to ``dim`` dimensions, then L2 again: one vector per image (and one of its
mirror) for a faiss kNN, the candidates of a lake too large for descriptor votes::

    model = VladModel.fit([f.local for f in sample], words=64, dim=256, seed=0)
    vectors = model.describe([f.local for f in features])           # [n, 256] float32, unit rows
    mirrored = model.describe([f.local.mirror for f in features])
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import faiss
import numpy as np

from dinolab.curate.copydetect.local import DESCRIPTOR_DIM, LocalFeatures


PCA_IMAGES = 4_000
"""Images (a seeded sample) the whitening is learned on."""


def _sample(features: Sequence[LocalFeatures], count: int, seed: int) -> np.ndarray:
    vectors = np.concatenate([f.descriptors for f in features if len(f.descriptors)] or
                             [np.zeros((0, DESCRIPTOR_DIM), np.float32)])
    if len(vectors) > count:
        vectors = vectors[np.sort(np.random.default_rng(seed).choice(len(vectors), count, replace=False))]
    return np.ascontiguousarray(vectors, np.float32)


def aggregate(descriptors: np.ndarray, vocabulary: np.ndarray, assign: faiss.Index) -> np.ndarray:
    """The VLAD vector (``words * 128``, intra-, power- and L2-normalised) of one image's descriptors."""
    words = len(vocabulary)
    out = np.zeros((words, vocabulary.shape[1]), np.float32)
    if len(descriptors):
        _, nearest = assign.search(np.ascontiguousarray(descriptors, np.float32), 1)
        np.add.at(out, nearest[:, 0], descriptors - vocabulary[nearest[:, 0]])
        out /= np.linalg.norm(out, axis=1, keepdims=True) + 1e-12
    out = np.sign(out) * np.sqrt(np.abs(out))
    flat = out.ravel()
    return flat / (np.linalg.norm(flat) + 1e-12)


@dataclass
class VladModel:
    """A vocabulary ``[words, 128]`` and a PCA-whitening (``None`` when the sample was too small)."""

    vocabulary: np.ndarray
    whitening: faiss.PCAMatrix | None

    @classmethod
    def fit(cls, features: Sequence[LocalFeatures], words: int = 64, dim: int = 256, seed: int = 0,
            sample_descriptors: int = 200_000) -> "VladModel":
        """Vocabulary by k-means on a seeded sample of descriptors; whitening on the sample images' VLADs."""
        vectors = _sample(features, sample_descriptors, seed)
        words = max(1, min(words, len(vectors) // 39 or 1))
        kmeans = faiss.Kmeans(DESCRIPTOR_DIM, words, niter=20, seed=seed, spherical=False)
        kmeans.train(vectors)
        model = cls(np.ascontiguousarray(kmeans.centroids, np.float32), None)
        # fewer images than VLAD dimensions: faiss learns the PCA from their Gram matrix, not a 8192^2 covariance
        chosen = np.random.default_rng(seed).permutation(len(features))[:PCA_IMAGES]
        raw = model.describe([features[i] for i in np.sort(chosen)], whiten=False)
        dim = min(dim, raw.shape[1], len(raw) - 1)
        if dim >= 8:
            pca = faiss.PCAMatrix(raw.shape[1], dim, -0.5)
            pca.train(raw)
            model.whitening = pca
        return model

    def describe(self, features: Sequence[LocalFeatures | None], whiten: bool = True) -> np.ndarray:
        """One unit vector per image (a missing one: zeros)."""
        assign = faiss.IndexFlatL2(self.vocabulary.shape[1])
        assign.add(self.vocabulary)
        raw = np.stack([aggregate(f.descriptors if f is not None else np.zeros((0, DESCRIPTOR_DIM), np.float32),
                                  self.vocabulary, assign) for f in features]) if len(features) else \
            np.zeros((0, self.vocabulary.size), np.float32)
        if not whiten or self.whitening is None or not len(raw):
            return raw.astype(np.float32)
        out = self.whitening.apply(np.ascontiguousarray(raw, np.float32))
        return (out / (np.linalg.norm(out, axis=1, keepdims=True) + 1e-12)).astype(np.float32)


def vlad_candidates(vectors: np.ndarray, mirrored: np.ndarray, k: int, max_candidates: int, threshold: float
                    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Unordered pairs ``(first < second, similarity)``: each image's (and its mirror's) ``k`` nearest by inner
    product, the ``max_candidates`` most similar of them at ``>= threshold``."""
    empty = np.zeros(0, np.int64)
    count = len(vectors)
    if count < 2:
        return empty, empty, np.zeros(0, np.float32)
    index = faiss.IndexFlatIP(vectors.shape[1])
    index.add(np.ascontiguousarray(vectors, np.float32))
    k = min(k + 1, count)
    rows, others, scores = [], [], []
    for queries in (vectors, mirrored):
        found, ids = index.search(np.ascontiguousarray(queries, np.float32), k)
        rows.append(np.repeat(np.arange(count), k))
        others.append(ids.ravel().astype(np.int64))
        scores.append(found.ravel())
    row, other, score = np.concatenate(rows), np.concatenate(others), np.concatenate(scores)
    keep = (other >= 0) & (other != row) & (score >= threshold)
    first, second, score = best_pairs(row[keep], other[keep], score[keep])
    ranked = top_ranked(first, second, score, max_candidates)
    return first[ranked], second[ranked], score[ranked].astype(np.float32)


def best_pairs(row: np.ndarray, other: np.ndarray, score: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Directed links as unordered pairs ``first < second`` (sorted), each once with its best score."""
    first, second = np.minimum(row, other), np.maximum(row, other)
    order = np.lexsort((-score, second, first))
    first, second, score = first[order], second[order], score[order]
    unique = np.ones(len(first), bool)
    unique[1:] = (first[1:] != first[:-1]) | (second[1:] != second[:-1])
    return first[unique], second[unique], score[unique]


def top_ranked(first: np.ndarray, second: np.ndarray, score: np.ndarray, max_candidates: int,
               mine: tuple[np.ndarray | None, np.ndarray | None] = (None, None)) -> np.ndarray:
    """Mask of the pairs (sorted, from :func:`best_pairs`) among the ``max_candidates`` best of their ``first``
    image's pairs as ``first``, or of their ``second`` image's as ``second``; ``mine`` (masks of the pairs
    whose first / second image is one's own): count only those sides."""
    ranked = np.zeros(len(first), bool)
    for side, allowed in zip((first, second), mine):
        order = np.lexsort((-score, side))
        rank = np.arange(len(order)) - np.searchsorted(side[order], side[order])
        chosen = order[rank < max_candidates]
        ranked[chosen if allowed is None else chosen[allowed[chosen]]] = True
    return ranked
