"""Copy-detection benchmark on a lake that looks like real data: the default vs the previous default and pHash.

Builds the lake of :mod:`benchmarks._shared.copy_lake` (``--split dev`` to choose thresholds, ``--split
test`` to report: built from other photos; groups of 2-5 images, 22 transforms, 50 screenshots of different
photos in one frame, memes, gradients, wallpapers, logos, text pages, distractors 10x the copies, an
evaluation set), then for each method reports pair precision and recall of its duplicate groups, recall
per transform (copy in its original's group), µAP as ISC2021 defines it (all predictions pooled, sorted by
score, ties non-matches first; µAP = Σ (R_i − R_{i−1}) P_i over all ground-truth pairs), seconds per
image, decontamination, the false pairs by the kinds of their images, and the candidate recall of each
candidate generator of the default.

Methods: ``default`` (``dedup.descriptor=local``: templates learned from the lake, hash / vote / VLAD
candidates, verification, structural filter); ``blob15`` (the same before the evidence rule: a disagreeing
block of at most 0.15, no minimum of agreeing cells); ``previous`` (the default before issue 22: no
templates, no VLAD, blob 0.15, no evidence rule); ``phash`` (imagededup's pHash Hamming ≤ 10); ``sscd-arch`` (the SSCD architecture's kNN, k = 64,
score-normalised, then verified: the released weights with ``--sscd``, else random weights, which measures
the path, not SSCD); ``cls`` (cosine on a ViT-S/14 CLS ≥ 0.6; random weights unless ``--backbone``)::

    python -m benchmarks.copy_detection --split test [--groups 24] [--pad 20000] [--methods default,blob15,previous,phash]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import tempfile
import time
from collections import Counter
from pathlib import Path

import numpy as np
import pyarrow as pa
import torch
from PIL import Image

from benchmarks._shared.copy_lake import plant_lake
from benchmarks._shared.copy_planting import TRANSFORMS, Truth
from dinolab.curate.copydetect import candidates as candidate_module
from dinolab.curate.copydetect.features import image_features
from dinolab.curate.copydetect.groups import UnionFind
from dinolab.curate.copydetect.hashes import hash_codes, radius_pairs
from dinolab.curate.copydetect.pipeline import ReferenceSet, copy_duplicates_table
from dinolab.schemas.config import DedupConfig


def micro_ap(scores: np.ndarray, correct: np.ndarray, positives: int) -> float:
    """ISC2021 µAP: predictions sorted by descending score (ties: non-matches first), over ``positives`` pairs."""
    if positives == 0 or not len(scores):
        return 0.0
    order = np.lexsort((correct.astype(int), -scores))
    hits = correct[order].astype(np.float64)
    precision = np.cumsum(hits) / np.arange(1, len(hits) + 1)
    return float((precision * hits).sum() / positives)


def group_pairs(groups: dict[str, int]) -> set[tuple[str, str]]:
    by: dict[int, list[str]] = {}
    for name, group in groups.items():
        by.setdefault(group, []).append(name)
    return {(a, b) for names in by.values() for i, a in enumerate(sorted(names)) for b in sorted(names)[i + 1:]}


KINDS: dict[str, str] = {}
"""Pool file name -> what it is (``original``, ``copy``, ``screenshot``, ``gradient``, ...), from truth.json."""


def evaluate(name: str, groups: dict[str, int], scored: dict[tuple[str, str], float], truth: Truth,
             seconds: float, leaks: set[str] | None = None) -> dict:
    true = truth.true_pairs()
    predicted = group_pairs(groups)
    hits = len(predicted & true)
    false_kinds = Counter("+".join(sorted((KINDS.get(a, "?"), KINDS.get(b, "?")))) for a, b in predicted - true)
    originals = {}
    for file, group in truth.pool_group.items():
        if file not in truth.transform:
            originals[group] = file
    per_transform = {}
    for transform in TRANSFORMS:
        copies = [f for f, t in truth.transform.items() if t == transform and truth.pool_group[f] in originals]
        per_transform[transform] = float(np.mean([groups[f] == groups[originals[truth.pool_group[f]]] for f in copies]))
    keys = list(scored)
    scores = np.array([scored[k] for k in keys], dtype=np.float64)
    correct = np.array([tuple(sorted(k)) in true for k in keys], dtype=bool)
    row = {"method": name, "precision": hits / max(1, len(predicted)), "recall": hits / len(true),
           "uAP": micro_ap(scores, correct, len(true)), "s/img": seconds / len(truth.pool_group),
           "largest_group": max(np.unique(list(groups.values()), return_counts=True)[1]),
           "per_transform": per_transform, "false_pairs_by_kind": dict(false_kinds.most_common(8))}
    if leaks is not None:
        copies = set(truth.eval_copy)
        row["decontamination"] = len(leaks & copies) / max(1, len(copies))
        row["false_leaks"] = len(leaks - copies)
    return row


def components(names: list[str], first: np.ndarray, second: np.ndarray) -> dict[str, int]:
    uf = UnionFind(len(names))
    uf.union(first, second)
    return dict(zip(names, uf.labels().tolist()))


_FEATURES: dict[Path, tuple] = {}


def lake_features(root: Path, names: list[str]) -> tuple[list, list, float]:
    """Pool and evaluation features (computed once per lake and shared by the methods) and their seconds."""
    if root not in _FEATURES:
        start = time.perf_counter()
        pool = [image_features(Image.open(root / "pool" / n).convert("RGB")) for n in names]
        evals = [image_features(Image.open(root / "eval" / n).convert("RGB"))
                 for n in sorted(p.name for p in (root / "eval").iterdir())]
        _FEATURES[root] = (pool, evals, time.perf_counter() - start)
    return _FEATURES[root]


def run_pipeline(name: str, root: Path, names: list[str], truth: Truth, config: DedupConfig,
                 descriptor_model=None) -> dict:
    """The dedup stage's own code (``copy_duplicates_table``), scores of every verified candidate recorded;
    the seconds include the feature pass (timed once, shared by the methods)."""
    from dinolab.curate.copydetect import pipeline as pipeline_module
    from dinolab.curate.copydetect import verify as verify_module

    features, eval_features, feature_seconds = lake_features(root, names)
    start = time.perf_counter() - feature_seconds
    images = [Image.open(root / "pool" / n) for n in names]
    eval_names = sorted(p.name for p in (root / "eval").iterdir())
    eval_images = [Image.open(root / "eval" / n).convert("RGB") for n in eval_names]
    reference = ReferenceSet(eval_features,
                             [hashlib.sha256((root / "eval" / n).read_bytes()).hexdigest() for n in eval_names])
    descriptors = None
    if descriptor_model is not None:
        from dinolab.curate.copydetect.descriptor import describe_images

        descriptors = describe_images(descriptor_model, [im.convert("RGB") for im in images])
        reference.descriptors = describe_images(descriptor_model, eval_images)
    table = pa.table({"key": [n.rsplit(".", 1)[0] for n in names], "uri": [str(root / "pool" / n) for n in names],
                      "sha256": [hashlib.sha256((root / "pool" / n).read_bytes()).hexdigest() for n in names],
                      "width": [im.width for im in images], "height": [im.height for im in images]})
    scored: dict[tuple[str, str], float] = {}
    position = {id(f.local): i for i, f in enumerate(features)}

    def recording(verify):
        def recorded(a, b, config_=verify_module.VerifyConfig()):
            result = verify(a, b, config_)
            ids = (id(a), id(b))
            if ids[0] in position and ids[1] in position:
                pair = tuple(sorted((names[position[ids[0]]], names[position[ids[1]]])))
                scored[pair] = max(scored.get(pair, -1.0), result.agreement if result.accepted else result.agreement - 1)
            return result
        return recorded

    originals = {function: getattr(pipeline_module, function) for function in ("verify_pair", "verify_aligned")}
    for function, verify in originals.items():
        setattr(pipeline_module, function, recording(verify))
    try:
        duplicates = copy_duplicates_table(table, features, {"eval": reference}, config, descriptors)
    finally:
        for function, verify in originals.items():
            setattr(pipeline_module, function, verify)
    seconds = time.perf_counter() - start
    rows = duplicates.to_pylist()
    groups = {row["key"] + ".jpg": row["group"] for row in rows}
    leaks = {row["key"] + ".jpg" for row in rows if (row["reason"] or "").startswith("leak:")}
    for row in rows:  # hash and exact links are predictions too
        if row["reason"] in ("exact", "near"):
            scored[tuple(sorted((row["key"] + ".jpg", row["kept_key"] + ".jpg")))] = 1.0 + row["similarity"]
    return evaluate(name, groups, scored, truth, seconds, leaks)


def candidate_recall(root: Path, names: list[str], truth: Truth, config: DedupConfig) -> dict[str, tuple[int, float]]:
    """Per candidate generator of ``config``: (candidate pairs, share of the true pairs among them)."""
    from dinolab.curate.copydetect.candidates import vote_candidates
    from dinolab.curate.copydetect.pipeline import _codes, content_only, frequent_codes, global_candidates
    from dinolab.curate.copydetect.hashes import hash_pairs

    features = lake_features(root, names)[0]
    row = {name: i for i, name in enumerate(names)}
    true = {(min(row[a], row[b]), max(row[a], row[b])) for a, b in truth.true_pairs()}
    local = content_only(features, config)
    first, second, _ = hash_pairs(_codes(features), config.hash_distance)
    keep = frequent_codes(first, second, len(features), config.burst_images)
    found = {f"hash <= {config.hash_distance} bits (frequent codes dropped)": (first[keep], second[keep])}
    found[f"RootSIFT votes (top {config.candidates})"] = vote_candidates(
        local, local, True, max_candidates=config.candidates, min_votes=config.min_votes)[:2]
    found[f"VLAD kNN k={config.k} (top {config.global_candidates})"] = global_candidates(local, config)[:2]
    result = {}
    for name, (first, second) in found.items():
        pairs = set(zip(first.tolist(), second.tolist()))
        result[name] = (len(pairs), len(pairs & true) / max(1, len(true)))
    every = set().union(*(set(zip(f.tolist(), s.tolist())) for f, s in found.values()))
    result["all generators"] = (len(every), len(every & true) / max(1, len(true)))
    return result


def run_phash(root: Path, names: list[str], truth: Truth, radius: int = 10) -> dict:
    import imagehash

    start = time.perf_counter()
    codes = hash_codes([str(imagehash.phash(Image.open(root / "pool" / n))) for n in names])
    first, second, distance = radius_pairs(codes, radius)
    seconds = time.perf_counter() - start
    scored = {tuple(sorted((names[a], names[b]))): 64.0 - d for a, b, d in zip(first, second, distance)}
    return evaluate(f"phash@{radius}", components(names, first, second), scored, truth, seconds)


def run_cls(root: Path, names: list[str], truth: Truth, backbone: str, threshold: float = 0.6, k: int = 64) -> dict:
    from dinolab.curate.embed import embed_images, load_embedder
    from dinolab.schemas.config import EmbedConfig

    start = time.perf_counter()
    embedder = load_embedder(EmbedConfig(embedder=backbone, device="cpu", image_size=224))
    vectors = embed_images(embedder, [Image.open(root / "pool" / n).convert("RGB") for n in names], batch_size=32)
    vectors = vectors - vectors.mean(axis=0, keepdims=True)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True) + 1e-12
    first, second, score = candidate_module.knn_candidates(vectors, k, -1.0)
    seconds = time.perf_counter() - start
    linked = score >= threshold
    scored = {tuple(sorted((names[a], names[b]))): float(s) for a, b, s in zip(first, second, score)}
    return evaluate(f"cls@{threshold} ({backbone})", components(names, first[linked], second[linked]), scored, truth, seconds)


def print_table(rows: list[dict]) -> None:
    print(f"{'method':34s} {'P':>6s} {'R':>6s} {'µAP':>6s} {'s/img':>7s} {'max grp':>7s} {'decont':>7s} {'falseleak':>9s}")
    for r in rows:
        print(f"{r['method']:34s} {r['precision']:6.3f} {r['recall']:6.3f} {r['uAP']:6.3f} {r['s/img']:7.3f} "
              f"{r['largest_group']:7d} {r.get('decontamination', float('nan')):7.3f} {r.get('false_leaks', -1):9d}")
    print("\nrecall per transform")
    print(f"{'transform':22s} " + " ".join(f"{r['method'][:12]:>12s}" for r in rows))
    for transform in TRANSFORMS:
        print(f"{transform:22s} " + " ".join(f"{r['per_transform'][transform]:12.2f}" for r in rows))
    print("\nfalse pairs by the kinds of their two images")
    for r in rows:
        print(f"{r['method']:34s} {r['false_pairs_by_kind']}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--split", choices=("dev", "test"), default="test",
                        help="choose thresholds on dev; report test (built from other photos)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--groups", type=int, default=60, help="duplicate groups (2-5 images each)")
    parser.add_argument("--distractor-ratio", type=float, default=10.0, help="distractors per planted copy")
    parser.add_argument("--pad", type=int, default=0, help="extra procedural distractors padding the pool")
    parser.add_argument("--methods", default="default,blob15,previous,phash", help="also: sscd-arch, cls")
    parser.add_argument("--sscd", help="an SSCD torchvision state dict (else random ResNet-50 weights)")
    parser.add_argument("--backbone", default="vit_small", help="backbone for the CLS peer (weights or an architecture)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    methods = args.methods.split(",")
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        truth = plant_lake(root, split=args.split, seed=args.seed, groups=args.groups,
                           distractor_ratio=args.distractor_ratio, extra_distractors=args.pad)
        names = sorted(truth.pool_group)
        KINDS.update(json.loads((root / "truth.json").read_text())["kind"])
        print(f"{args.split} split, seed {args.seed}: {len(names)} pool images ({len(truth.transform)} copies, "
              f"{len(truth.true_pairs())} true pairs), {len(list((root / 'eval').iterdir()))} evaluation images",
              flush=True)
        rows = []
        if "default" in methods:
            rows.append(run_pipeline("default (templates+vlad+verify)", root, names, truth, DedupConfig()))
            print(f"default done in {rows[-1]['s/img'] * len(names):.0f} s", flush=True)
        if "blob15" in methods:  # the default before the evidence rule: max_blob 0.15, no minimum of agreeing cells
            rows.append(run_pipeline("default, blob 0.15, no evidence", root, names, truth,
                                     DedupConfig(max_blob=0.15, min_evidence=0)))
            print(f"blob15 done in {rows[-1]['s/img'] * len(names):.0f} s", flush=True)
        if "previous" in methods:  # the default before issue 22: no lake templates, no VLAD candidates
            rows.append(run_pipeline("previous default (local+verify)", root, names, truth,
                                     DedupConfig(burst_images=0, global_candidates=0, max_blob=0.15, min_evidence=0)))
            print(f"previous default done in {rows[-1]['s/img'] * len(names):.0f} s", flush=True)
        if "sscd-arch" in methods:
            from dinolab.curate.copydetect.descriptor import SSCD, load_descriptor

            if args.sscd:
                model, label = load_descriptor(args.sscd), "sscd-arch (released weights)"
            else:
                torch.manual_seed(0)
                model, label = SSCD("resnet50").eval(), "sscd-arch (random weights)"
            rows.append(run_pipeline(label, root, names, truth, DedupConfig(descriptor="checkpoint"), model))
            print(f"sscd-arch done in {rows[-1]['s/img'] * len(names):.0f} s", flush=True)
        if "phash" in methods:
            rows.append(run_phash(root, names, truth))
        if "cls" in methods:
            rows.append(run_cls(root, names, truth, args.backbone))
            print(f"cls done in {rows[-1]['s/img'] * len(names):.0f} s", flush=True)
        print_table(rows)
        if "default" in methods:
            print("\ncandidate recall of the default's generators (share of all true pairs among the candidates)")
            for name, (count, recall) in candidate_recall(root, names, truth, DedupConfig()).items():
                print(f"{name:48s} {count:8d} pairs  recall {recall:.3f}")
        if args.json:
            args.json.write_text(json.dumps(rows, indent=1, default=lambda value: value.item()))


if __name__ == "__main__":
    main()
