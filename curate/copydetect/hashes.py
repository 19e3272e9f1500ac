"""Perceptual hashes and the pairs within a Hamming radius, through a faiss binary index (never n x n).

``pHash`` (32x32 DCT, 8x8 low frequencies vs their median) and ``dHash`` (sign of horizontal gradients
of a 9x8 thumbnail), 64 bits each (imagehash 4.3). Two images are ``near`` duplicates when *every*
hash is within ``max_distance`` bits: requiring both hashes is much more precise than either alone,
and resized or re-encoded copies keep both. Hashes are for exact and resized copies; crops, flips and
rotations are left to the local features (imagededup measures pHash@10 recall 0.08 on such transforms)::

    codes = {"phash": hash_codes(phash_hex), "dhash": hash_codes(dhash_hex)}
    first, second, distance = hash_pairs(codes, max_distance=8)
"""

from __future__ import annotations

from collections.abc import Sequence

import faiss
import imagehash
import numpy as np
from PIL import Image

HASHES = ("phash", "dhash")
BITS = 64
MULTI_HASH_ABOVE = 100_000
"""Above this many codes the radius search uses multi-index hashing (``IndexBinaryMultiHash``)."""
QUERY_BATCH = 65_536


def image_hashes(image: Image.Image) -> dict[str, str]:
    """The hex strings of every hash in :data:`HASHES` (imagehash's own format, as in the ``images`` table)."""
    return {"phash": str(imagehash.phash(image)), "dhash": str(imagehash.dhash(image))}


def hash_codes(hex_strings: Sequence[str | None]) -> np.ndarray:
    """``[n, 8]`` uint8 codes of 64-bit hex hashes (a missing hash becomes all ones and matches nothing useful)."""
    codes = np.full((len(hex_strings), BITS // 8), 255, dtype=np.uint8)
    for row, text in enumerate(hex_strings):
        if text:
            codes[row] = np.frombuffer(bytes.fromhex(text), dtype=np.uint8)
    return codes


def binary_index(codes: np.ndarray) -> faiss.IndexBinary:
    """Exact binary index (``IndexBinaryFlat``) for small sets, multi-index hashing above :data:`MULTI_HASH_ABOVE`.

    Multi-index hashing splits the 64 bits into 4 chunks of 16: two codes within Hamming ``r`` share at
    least one chunk within ``r // 4`` bits, so a range search up to ~12 bits stays exact in practice.
    """
    bits = codes.shape[1] * 8
    if len(codes) > MULTI_HASH_ABOVE:
        index: faiss.IndexBinary = faiss.IndexBinaryMultiHash(bits, 4, bits // 4)
        index.nflip = 2
    else:
        index = faiss.IndexBinaryFlat(bits)
    index.add(np.ascontiguousarray(codes))
    return index


def radius_pairs(codes: np.ndarray, max_distance: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Unordered pairs ``first < second`` of rows within ``max_distance`` bits, and their distances."""
    if len(codes) < 2:
        empty = np.zeros(0, dtype=np.int64)
        return empty, empty, empty
    index = binary_index(codes)
    firsts, seconds, distances = [], [], []
    for start in range(0, len(codes), QUERY_BATCH):
        lims, dist, ids = index.range_search(np.ascontiguousarray(codes[start : start + QUERY_BATCH]), max_distance + 1)
        rows = start + np.repeat(np.arange(len(lims) - 1), np.diff(lims.astype(np.int64)))
        ids = ids.astype(np.int64)
        keep = ids > rows  # each unordered pair once, never a row with itself
        firsts.append(rows[keep])
        seconds.append(ids[keep])
        distances.append(dist[keep].astype(np.int64))
    return np.concatenate(firsts), np.concatenate(seconds), np.concatenate(distances)


def hamming(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Row-wise Hamming distances of two ``[n, bytes]`` uint8 code arrays."""
    return np.unpackbits(np.bitwise_xor(a, b), axis=1).sum(axis=1).astype(np.int64)


def hash_pairs(codes: dict[str, np.ndarray], max_distance: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Pairs within ``max_distance`` on every hash: radius search on the first, the others checked per pair.

    Returns ``(first, second, distance)`` with ``distance`` the largest of the hashes' distances.
    """
    names = list(codes)
    first, second, distance = radius_pairs(codes[names[0]], max_distance)
    for name in names[1:]:
        other = hamming(codes[name][first], codes[name][second])
        keep = other <= max_distance
        first, second, distance = first[keep], second[keep], np.maximum(distance[keep], other[keep])
    order = np.lexsort((second, first))
    return first[order], second[order], distance[order]


def cross_hash_pairs(queries: dict[str, np.ndarray], database: dict[str, np.ndarray], max_distance: int
                     ) -> tuple[np.ndarray, np.ndarray]:
    """``(query row, database row)`` pairs within ``max_distance`` on every hash (e.g. pool vs an evaluation set)."""
    names = list(queries)
    if not len(database[names[0]]) or not len(queries[names[0]]):
        empty = np.zeros(0, dtype=np.int64)
        return empty, empty
    index = binary_index(database[names[0]])
    lims, _, ids = index.range_search(np.ascontiguousarray(queries[names[0]]), max_distance + 1)
    rows = np.repeat(np.arange(len(lims) - 1), np.diff(lims.astype(np.int64)))
    ids = ids.astype(np.int64)
    for name in names[1:]:
        keep = hamming(queries[name][rows], database[name][ids]) <= max_distance
        rows, ids = rows[keep], ids[keep]
    return rows, ids
