"""The ``duplicates`` table by copy detection: exact, hash, verified-copy links, union-find, keep rule, leaks.

1. ``exact``: byte-identical files (sha256).
2. ``near``: every perceptual hash within ``hash_distance`` bits (:mod:`.hashes`, faiss binary index)
   that passes :mod:`.verify`.
3. ``copy``: candidate pairs (:mod:`.candidates`: local-descriptor votes, plus a copy descriptor's kNN
   when one is given) that pass :mod:`.verify`.
4. The structural filter (:func:`.groups.structural_links`: a verified link whose two images share few
   neighbours is dropped) — so one false verification does not merge two groups of six or more copies.
5. Union-find over the links left, one image kept per group (largest resolution, then key).
6. ``leak:<set>``: every group holding an image linked to an evaluation image (exact, a hash match, or a
   vote / kNN candidate verified at the looser ``eval_min_agreement``) is removed whole.

    table = copy_duplicates_table(pool, pool_features, references, DedupConfig())
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace

import numpy as np
import pyarrow as pa

from dinolab.curate.copydetect.candidates import knn_candidates, vote_candidates
from dinolab.curate.copydetect.features import ImageFeatures
from dinolab.curate.copydetect.groups import UnionFind, keep_largest, leaking_rows, structural_links
from dinolab.curate.copydetect.score_norm import background_bias, with_bias
from dinolab.curate.copydetect.templates import bursty_descriptors, content_features, template_share
from dinolab.curate.copydetect.vlad import VladModel, vlad_candidates
from dinolab.curate.copydetect.hashes import HASHES, cross_hash_pairs, hash_codes, hash_pairs
from dinolab.curate.copydetect.verify import VerifyConfig, verify_aligned, verify_pair
from dinolab.schemas.config import DedupConfig
from dinolab.schemas.tables import DUPLICATES

LINK_RANK = {"exact": 0, "near": 1, "copy": 2}


@dataclass
class ReferenceSet:
    """An evaluation set: its images' features, sha256 digests and (optional) copy descriptors."""

    features: list[ImageFeatures]
    digests: list[str]
    descriptors: np.ndarray | None = None


def verify_config(config: DedupConfig, evaluation: bool = False) -> VerifyConfig:
    base = VerifyConfig(min_agreement=config.min_agreement, max_blob=config.max_blob, min_evidence=config.min_evidence,
                        geometric_inliers=config.geometric_inliers, geometric_agreement=config.geometric_agreement)
    if evaluation:  # the paper's looser threshold against evaluation sets
        return replace(base, min_agreement=config.eval_min_agreement, max_blob=config.eval_max_blob)
    return base


def normalised_scores(descriptors: np.ndarray, config: DedupConfig) -> tuple[np.ndarray, np.ndarray]:
    """(database, queries) whose inner products are the score-normalised similarities (the pool is the
    background; each image's own row skipped), or the descriptors twice when ``score_norm`` is off."""
    if not config.score_norm or len(descriptors) < 5:
        return descriptors, descriptors
    bias = background_bias(descriptors, descriptors, exclude_self=True)
    return with_bias(descriptors, None), with_bias(descriptors, bias)


def _codes(features: Sequence[ImageFeatures]) -> dict[str, np.ndarray]:
    return {name: hash_codes([f.hashes.get(name) for f in features]) for name in HASHES}


def content_only(features: Sequence[ImageFeatures], config: DedupConfig) -> list:
    """Each image's local features without what recurs across the pool (:mod:`.templates`)."""
    local = [f.local for f in features]
    if config.burst_images <= 0:
        return local
    return [content_features(f, mask) for f, mask in zip(local, bursty_descriptors(local, config.burst_images))]


def global_candidates(local: Sequence, config: DedupConfig, seed: int = 0
                      ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Candidate pairs by the VLAD descriptor's kNN (:mod:`.vlad`, learned on a seeded pool sample)."""
    empty = np.zeros(0, np.int64)
    if config.global_candidates <= 0 or len(local) < 3:
        return empty, empty, np.zeros(0, np.float32)
    chosen = np.random.default_rng(seed).permutation(len(local))[: config.vlad_sample]
    model = VladModel.fit([local[i] for i in np.sort(chosen)], config.vlad_words, config.vlad_dim, seed)
    vectors = model.describe(local)
    mirrored = model.describe([f.mirror if f.mirror is not None else f for f in local])
    return vlad_candidates(vectors, mirrored, config.k, config.global_candidates, -1.0)


def frequent_codes(first: np.ndarray, second: np.ndarray, count: int, limit: int) -> np.ndarray:
    """Mask of the hash pairs both of whose codes have fewer than ``limit`` neighbours (a frequent code is a
    template's: screenshots of different photos in one frame, flat pictures)."""
    if limit <= 0 or not len(first):
        return np.ones(len(first), dtype=bool)
    degree = np.bincount(np.concatenate([first, second]), minlength=count)
    return np.maximum(degree[first], degree[second]) < limit


TEMPLATE_SHARE = 0.1
"""An image whose template region (a frame, a caption bar) covers this share of it links on keypoints only."""
VERIFY_BLOCK = 4096
"""Candidate pairs per verification block (one task's worth)."""


def candidate_blocks(pairs: np.ndarray, partition: np.ndarray, size: int = VERIFY_BLOCK) -> list[np.ndarray]:
    """Candidate pairs ``[m, 2]`` in blocks of at most ``size``, ordered by the feature partitions of their two
    images, so that each block (a verification task) reads few partitions."""
    if not len(pairs):
        return []
    order = np.lexsort((pairs[:, 1], pairs[:, 0], partition[pairs[:, 1]], partition[pairs[:, 0]]))
    pairs = pairs[order]
    return [pairs[start : start + size] for start in range(0, len(pairs), size)]


def verify_block(block: np.ndarray, local: Sequence, hashed: dict[tuple[int, int], float], config: DedupConfig
                 ) -> list[tuple[int, int, str, float]]:
    """The verified links ``(a, b, kind, similarity)`` of one block of candidate pairs: every candidate, a
    hash match too (a shared frame dominates the hashes of two screenshots), checked by :func:`verify_pair`;
    a hash match whose images are not mostly lake template may also pass on pixels alone (:func:`verify_aligned`)."""
    verify = verify_config(config)
    found = []
    for a, b in block.tolist():
        result = verify_pair(local[a], local[b], verify)
        if (not result.accepted and (a, b) in hashed
                and max(template_share(local[a]), template_share(local[b])) < TEMPLATE_SHARE):
            # a shared frame around two flat pictures agrees on its own edges: such images link on keypoints only
            result = verify_aligned(local[a], local[b], verify)
        if result.accepted:
            found.append((a, b, *(("near", hashed[(a, b)]) if (a, b) in hashed else ("copy", result.score))))
    return found


def copy_links(features: Sequence[ImageFeatures], digests: Sequence[str], config: DedupConfig,
               descriptors: np.ndarray | None = None, local: list | None = None, partition: np.ndarray | None = None
               ) -> tuple[UnionFind, dict[int, tuple[str, float]]]:
    """Union-find of the pool and, per row, its strongest link (kind, similarity).

    Exact links are taken as they are; hash pairs and vote / VLAD / kNN candidates are all verified, in
    blocks ordered by ``partition`` (each row's feature partition; :func:`candidate_blocks`), and the
    verified links pass the structural filter (:func:`.groups.structural_links`) before the union."""
    count = len(features)
    links: dict[tuple[int, int], tuple[str, float]] = {}
    first_of: dict[str, int] = {}
    for row, digest in enumerate(digests):
        head = first_of.setdefault(digest, row)
        if head != row:
            links[(head, row)] = ("exact", 1.0)
    first, second, distance = hash_pairs(_codes(features), config.hash_distance)
    usable = frequent_codes(first, second, count, config.burst_images)
    first, second, distance = first[usable], second[usable], distance[usable]
    hashed = {(a, b): 1.0 - d / 64 for a, b, d in zip(first.tolist(), second.tolist(), distance.tolist())}
    local = content_only(features, config) if local is None else local
    first, second, _ = vote_candidates(local, local, True, max_candidates=config.candidates, min_votes=config.min_votes)
    pairs = set(zip(first.tolist(), second.tolist())) | set(hashed)
    first, second, _ = global_candidates(local, config)
    pairs |= set(zip(first.tolist(), second.tolist()))
    if descriptors is not None:
        database, queries = normalised_scores(descriptors, config)
        dfirst, dsecond, _ = knn_candidates(database, config.k, config.threshold, queries, same_set=True)
        pairs |= set(zip(dfirst.tolist(), dsecond.tolist()))
    todo = np.array(sorted(pairs - set(links)), dtype=np.int64).reshape(-1, 2)
    for block in candidate_blocks(todo, np.zeros(count, np.int64) if partition is None else partition):
        for a, b, kind, score in verify_block(block, local, hashed, config):
            links[(a, b)] = (kind, score)
    linked = np.array(sorted(links), dtype=np.int64).reshape(-1, 2)
    exact = np.array([links[(a, b)][0] == "exact" for a, b in linked.tolist()], dtype=bool)
    keep = exact | structural_links(linked[:, 0], linked[:, 1], count, config.min_structural)
    uf = UnionFind(count)
    uf.union(linked[keep, 0], linked[keep, 1])
    best: dict[int, tuple[str, float]] = {}
    for a, b in linked[keep].tolist():
        kind, score = links[(a, b)]
        for row in (a, b):
            old = best.get(row)
            if old is None or (LINK_RANK[kind], -score) < (LINK_RANK[old[0]], -old[1]):
                best[row] = (kind, float(score))
    return uf, best


def evaluation_links(pool: Sequence[ImageFeatures], digests: Sequence[str], reference: ReferenceSet,
                     config: DedupConfig, descriptors: np.ndarray | None = None, local: list | None = None) -> np.ndarray:
    """Pool rows linked to an image of ``reference`` (exact, hash or verified copy at the looser threshold)."""
    linked = set()
    ref_digests = set(reference.digests)
    linked |= {row for row, digest in enumerate(digests) if digest in ref_digests}
    rows, _ = cross_hash_pairs(_codes(pool), _codes(reference.features), config.hash_distance)
    linked |= set(rows.tolist())
    local = [f.local for f in pool] if local is None else local
    ref_local = [f.local for f in reference.features]
    query, other, _ = vote_candidates(local, ref_local, same_set=False, max_candidates=config.candidates,
                                      min_votes=config.min_votes)
    pairs = set(zip(query.tolist(), other.tolist()))
    if descriptors is not None and reference.descriptors is not None and len(reference.descriptors):
        _, queries = normalised_scores(descriptors, config)
        q, o, _ = knn_candidates(with_bias(reference.descriptors, None) if config.score_norm else reference.descriptors,
                                 config.k, config.eval_threshold, queries=queries, same_set=False)
        pairs |= set(zip(q.tolist(), o.tolist()))
    verify = verify_config(config, evaluation=True)
    for a, b in sorted(pairs):
        if a not in linked and verify_pair(ref_local[b], local[a], verify).accepted:
            linked.add(a)
    return np.array(sorted(linked), dtype=np.int64)


def copy_duplicates_table(pool: pa.Table, features: Sequence[ImageFeatures], references: dict[str, ReferenceSet],
                          config: DedupConfig, descriptors: np.ndarray | None = None,
                          partition: np.ndarray | None = None) -> pa.Table:
    """The ``duplicates`` table. ``pool`` rows (``key``, ``uri``, ``sha256``, ``width``, ``height``) match
    ``features`` (and ``descriptors``, and ``partition``: each row's feature partition) row for row; rows come
    out in key order."""
    keys = pool.column("key").to_pylist()
    order = np.argsort(np.array(keys, dtype=object), kind="stable").astype(np.int64)
    keys = [keys[i] for i in order]
    uris = [pool.column("uri")[int(i)].as_py() for i in order]
    digests = [pool.column("sha256")[int(i)].as_py() for i in order]
    pixels = (pool.column("width").to_numpy(zero_copy_only=False).astype(np.int64)
              * pool.column("height").to_numpy(zero_copy_only=False).astype(np.int64))[order]
    features = [features[i] for i in order]
    descriptors = None if descriptors is None else np.asarray(descriptors, np.float32)[order]
    local = content_only(features, config)
    partition = None if partition is None else np.asarray(partition, np.int64)[order]
    uf, best = copy_links(features, digests, config, descriptors, local, partition)
    labels = uf.labels()
    keep = keep_largest(labels, keys, pixels)
    kept_row = np.zeros(len(keys), dtype=np.int64)
    kept_row[labels[keep]] = np.flatnonzero(keep)
    group = kept_row[labels]
    reason: list[str | None] = []
    similarity = np.ones(len(keys), dtype=np.float32)
    for row in range(len(keys)):
        if keep[row]:
            reason.append(None)
            continue
        kind, score = best.get(row, ("copy", 0.0))
        kind = "exact" if digests[row] == digests[group[row]] else ("near" if kind == "exact" else kind)
        reason.append(kind)
        similarity[row] = 1.0 if kind == "exact" else score
    kept = keep.copy()
    for set_name, reference in sorted(references.items()):
        if not reference.features or not len(keys):
            continue
        linked = evaluation_links(features, digests, reference, config, descriptors, local)
        if not len(linked):
            continue
        for row in np.flatnonzero(leaking_rows(labels, linked)):
            if reason[row] is None or not str(reason[row]).startswith("leak:"):
                reason[row] = f"leak:{set_name}"
            kept[row] = False
    return pa.table({"key": keys, "uri": uris, "group": group, "kept": kept, "reason": reason,
                     "kept_key": [keys[g] for g in group], "similarity": similarity}, schema=DUPLICATES.schema)
