"""The pipeline configuration: typed sections with defaults, loaded from YAML plus ``KEY=VALUE`` overrides.

A YAML file (the named ones, ``lvd`` and ``demo``, live in ``pipelines/configs/``) gives the starting values; ``section.key=value``
overrides follow (values parsed as YAML, so ``dedup.threshold=0.5`` is a float). The sections are typed
configs of :mod:`core.config`: unknown sections or keys, values of the wrong type, words outside their
choices and numbers outside the range declared with their field (:func:`ranged`) raise
:class:`~core.config.ConfigError` with the key's name::

    config = load_config("my_lake.yaml", ["dedup.threshold=0.9", "shard.max_samples=500"])
    config.dedup.threshold   # 0.9
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from dinolab.core.config import ConfigError, at_least, build, fraction, one_of, ranged, ranged_tuple
from dinolab.schemas.storage import redact


@dataclass(frozen=True)
class IngestConfig:
    partition_size: int = at_least(512, 1)
    """Files per ingest task (and per embed task): batches of files, never one task per image."""
    min_side: int = at_least(32, 0)
    """Images whose shorter side is below this are filtered (status ``filtered``)."""
    max_pixels: int = at_least(89_478_485, 1)
    """Larger images are refused as possible decompression bombs."""
    image_column: str = "image"
    """Parquet lakes: the column of image bytes (binary, or a struct with a ``bytes`` field, as Hugging Face exports)."""
    path_column: str = ""
    """Parquet lakes: read each row's image from this column of paths or URLs instead (relative paths: from the table's folder)."""
    fetch_urls: bool = False
    """Parquet lakes: fetch the URLs of ``path_column``; without it a column of URLs is refused, never downloaded."""
    allow_outside_paths: bool = False
    """Parquet lakes: read paths of ``path_column`` that are absolute, climb out of the table's folder with
    ``..`` or name local files from a remote table; without it each is a skipped file, named in the images table."""
    follow_links: bool = False
    """Folder and glob lakes: follow symbolic links (loops are detected); without it each link is a skipped file."""


@dataclass(frozen=True)
class EmbedConfig:
    embedder: str = "pixels"
    """``pixels`` (grey thumbnails, no weights), an architecture name, or weights ``load_backbone`` reads."""
    image_size: int = at_least(224, 1)
    """Side of the square the backbone sees (resize short side, centre crop)."""
    pixel_grid: int = at_least(16, 1)
    """Side of the thumbnail the ``pixels`` embedder flattens."""
    batch_size: int = at_least(64, 1)
    device: str = one_of("auto", "cpu", "cuda")
    """``auto`` (CUDA when the worker has a GPU), ``cpu`` or ``cuda``."""


@dataclass(frozen=True)
class DedupConfig:
    k: int = at_least(64, 1)
    """Neighbours per image in the kNN graph (the paper's 64)."""
    threshold: float = fraction(0.6, open_low=True)
    """Cosine similarity above which two pool images are copies (the paper's 0.6 on SSCD descriptors)."""
    eval_threshold: float = fraction(0.45, open_low=True)
    """Looser threshold against evaluation sets (the paper's 0.45)."""
    index: str = one_of("auto", "flat", "ivf", "ivfpq", "hnsw")
    """faiss index: ``auto`` (exact up to 10^5 vectors, IVF up to 10^7, IVF-PQ above), ``flat``, ``ivf``,
    ``ivfpq`` or ``hnsw``."""
    shard_vectors: int = at_least(250_000, 1)
    """kNN dedup: vectors per index shard (runs of whole partitions). A search task holds one shard plus one
    partition: about ``shard_vectors x dim x 4`` bytes (256 MB at 256-d; IVF-PQ: ``dim / 4`` bytes a vector)."""
    nprobe: int = at_least(16, 1)
    """IVF lists searched per query: more finds more true neighbours, at proportionally more search time."""
    center: bool = False
    """Subtract the pool's mean vector first (spreads the similarities of features with a common component)."""
    descriptor: str = "local"
    """Copy detection (docs/copy-detection.md), the same rule at every pool size: ``local`` (the default, no
    weights: sha256, hash and RootSIFT-vote candidates, templates learned from the lake discounted, verified
    pairs, structural filter), the path of an SSCD copy-descriptor checkpoint (torchvision state dict; its kNN
    adds candidates, verified like ``local``), or ``embeddings`` (sha256 groups, then cosine on the embed
    stage's vectors: not a copy detector, only for images too small for local features, such as the demo's
    28-px ones)."""
    allow_torchscript: bool = False
    """Accept a TorchScript copy-descriptor file (it runs code from the file; off unless you trust it)."""
    hash_distance: int = ranged(4, 0, 64)
    """Hamming distance (of 64 bits) within which both pHash and dHash must be for a ``near`` link."""
    candidates: int = at_least(16, 1)
    """Candidates verified per image (local-descriptor votes)."""
    global_candidates: int = at_least(8, 0)
    """Candidates per image from the global copy descriptor (VLAD over RootSIFT, PCA-whitened; its kNN with
    ``k`` neighbours), verified like the others (0: off)."""
    vlad_words: int = at_least(64, 1)
    """VLAD vocabulary size (k-means of RootSIFT descriptors of a seeded pool sample)."""
    vlad_dim: int = at_least(256, 8)
    """VLAD dimensions after PCA-whitening."""
    vlad_sample: int = at_least(20_000, 2)
    """Pool images (a seeded sample) the vocabulary and the whitening are learned on."""
    min_votes: int = at_least(3, 1)
    """Local descriptors that must match for an image pair to be a candidate."""
    min_agreement: float = fraction(0.5)
    """Verified copy: share of the aligned overlap whose pixels agree."""
    max_blob: float = fraction(0.3)
    """Verified copy: largest contiguous disagreeing block (share of the overlap); rejects shared frames."""
    min_evidence: int = at_least(40, 0)
    """Verified copy: agreeing textured 16-px cells (of the 256-px analysis image) it must have, so that flat
    pictures, which agree on a few cells by chance, need evidence from their content."""
    geometric_inliers: int = at_least(40, 0)
    """Verified copy: RANSAC inliers (content keypoints: templates left out) at which the match itself is
    evidence; such a pair needs only ``geometric_agreement`` of its overlap to agree, as overlays (stripes,
    emoji, captions) hide more than half of a copy, and still no large block and enough agreeing cells (0: off)."""
    geometric_agreement: float = fraction(0.3)
    eval_min_agreement: float = fraction(0.45)
    """The looser agreement against evaluation sets."""
    eval_max_blob: float = fraction(0.3)
    burst_images: int = at_least(8, 0)
    """Template learning (docs/copy-detection.md): a local feature with near twins in this many other pool
    images is a shared template (frame, caption, watermark, logo), no evidence of a copy: its keypoints cast
    no votes, match nothing and its region is left out of the pixel check; hash matches of a code with this
    many neighbours are no candidates (0: off)."""
    min_structural: float = fraction(0.3)
    """Verified links whose two images share fewer neighbours than this (structural similarity, 0-1) are
    dropped before the groups are formed (0: keep every link); docs/copy-detection.md."""
    score_norm: bool = True
    """Copy descriptors: SSCD score normalisation against a background sample of the pool."""
    whitening: int = at_least(0, 0)
    """Copy descriptors: PCA-whitening learned on this many pool descriptors (a seeded sample), applied to
    pool and evaluation descriptors before the kNN (0: off)."""


@dataclass(frozen=True)
class ClusterConfig:
    levels: int = at_least(2, 1)
    ks: tuple[int, ...] = ranged_tuple(1)
    """Clusters per level, finest first; empty: chosen from the pool size."""
    niter: int = at_least(20, 1)
    resampling_steps: int = at_least(0, 0)
    seed: int = at_least(0, 0)
    exact_max_k: int = at_least(8192, 1)
    """Assign to at most this many centroids exactly; more go through an inverted-file index over the centroids
    (``sqrt(k)`` lists, 16 probed: about ``17 * sqrt(k) * d`` flops a vector instead of ``k * d``)."""


@dataclass(frozen=True)
class SampleConfig:
    method: str = one_of("auto", "retrieval", "balanced", "all")
    """``auto`` (retrieval when curated sets are given, else balanced), ``retrieval``, ``balanced`` or ``all``."""
    retrieval: str = one_of("neighbours", "clusters")
    """``neighbours``: each curated image takes its ``per_query`` nearest; ``clusters``: ``per_cluster`` from each hit cluster."""
    per_query: int = at_least(4, 1)
    per_cluster: int = at_least(100, 1)
    min_cluster_hits: int = at_least(1, 1)
    """``clusters``: sample only clusters that are the nearest cluster of at least this many curated images
    (the paper: more than 3, with 100,000 clusters of a 744M pool)."""
    min_similarity: float = ranged(-1.0, -1.0, 1.0)
    """Drop retrieved pool images less similar (cosine) than this to the curated image that retrieved them."""
    target: int = at_least(0, 0)
    """Balanced sampling: images to select (0: half of the deduplicated pool)."""
    seed: int = at_least(0, 0)


@dataclass(frozen=True)
class ShardConfig:
    max_samples: int = at_least(10_000, 1)
    max_bytes: int = at_least(1_000_000_000, 1)
    """Close a shard before it would pass this many bytes of images (~1 GB, sized for training)."""


@dataclass(frozen=True)
class ReportConfig:
    examples: int = at_least(8, 0)
    """Duplicate groups and clusters shown as contact sheets."""
    seed: int = at_least(0, 0)


@dataclass(frozen=True)
class LakeConfig:
    storage_options: dict[str, Any] = field(default_factory=dict)
    """fsspec options of every remote URL (``--storage-option KEY=VALUE``); secrets are redacted in :meth:`PipelineConfig.to_dict`."""

    def __repr__(self) -> str:  # task arguments are logged with their repr when a task fails
        return f"LakeConfig(storage_options={redact(self.storage_options)!r})"


@dataclass(frozen=True)
class SlurmConfig:
    """Dask workers as SLURM jobs (``curate run --cluster slurm``, through dask-jobqueue)."""

    jobs: int = at_least(1, 1)
    """Worker jobs kept running (resubmitted when one leaves at the end of its lifetime)."""
    cores: int = at_least(8, 1)
    """CPUs booked per job (``--cpus-per-task``)."""
    processes: int = at_least(0, 0)
    """Worker processes per job, one thread each; 0: one per core, or one for a GPU job."""
    memory: str = "32GB"
    """Memory per job, shared by its worker processes (each gets its part as its Dask memory limit)."""
    gpu: bool = False
    """One GPU per job: ``--gres=gpu:1`` and a single worker process advertising ``--resources GPU=1``."""
    walltime: str = "01:00:00"
    lifetime: str = ""
    """Workers leave cleanly after this (``--lifetime``); empty: the walltime less 5 minutes."""
    lifetime_stagger: str = "4m"
    """Spread of the workers' lifetimes, so they do not all leave at once."""
    queue: str = ""
    account: str = ""
    job_extra: tuple[str, ...] = ()
    """Extra ``#SBATCH`` directives, e.g. ``--constraint=a100``."""
    prologue: tuple[str, ...] = ()
    """Shell lines run before each worker starts (``module load ...``, ``source .venv/bin/activate``)."""
    python: str = ""
    """Python on the nodes (empty: the one running ``curate``)."""
    local_directory: str = ""
    """Worker scratch folder on the node (spilled data); empty: ``$TMPDIR``."""
    interface: str = ""
    """Network interface the workers and the scheduler listen on (e.g. ``ib0``); empty: the default."""


@dataclass(frozen=True)
class PipelineConfig:
    ingest: IngestConfig = field(default_factory=IngestConfig)
    embed: EmbedConfig = field(default_factory=EmbedConfig)
    dedup: DedupConfig = field(default_factory=DedupConfig)
    cluster: ClusterConfig = field(default_factory=ClusterConfig)
    sample: SampleConfig = field(default_factory=SampleConfig)
    shard: ShardConfig = field(default_factory=ShardConfig)
    report: ReportConfig = field(default_factory=ReportConfig)
    lake: LakeConfig = field(default_factory=LakeConfig)
    slurm: SlurmConfig = field(default_factory=SlurmConfig)

    def to_dict(self) -> dict[str, Any]:
        """The settings as plain data, storage-option secrets redacted (what run.json and reports record)."""
        data = dataclasses.asdict(self)
        data["lake"]["storage_options"] = redact(data["lake"]["storage_options"])
        return data

    def digest(self, sections: tuple[str, ...] | None = None) -> str:
        """A short hash of the given sections (all by default): equal digests mean equal settings."""
        data = self.to_dict()
        chosen = {name: data[name] for name in (sections or tuple(data))}
        return hashlib.sha256(json.dumps(chosen, sort_keys=True).encode()).hexdigest()[:16]


def load_config(path: str | Path | None = None, overrides: typing.Sequence[str] = ()) -> PipelineConfig:
    """Defaults, then the YAML file ``path``, then ``section.key=value`` overrides."""
    data: dict[str, dict[str, Any]] = {}
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"no config file {str(path)!r}")
        try:
            loaded = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as error:
            raise ConfigError(f"{path}: not valid YAML ({str(error).splitlines()[0]})") from None
        if not isinstance(loaded, dict):
            raise ConfigError(f"{path}: expected a mapping of sections, got {type(loaded).__name__}")
        for section, values in loaded.items():
            if not isinstance(values, dict):
                raise ConfigError(f"{path}: section {section!r} must be a mapping")
            for key, value in values.items():
                data.setdefault(str(section), {})[str(key)] = value
    for override in overrides:
        name, sep, text = override.partition("=")
        section, dot, key = name.strip().partition(".")
        if not sep or not dot or not key:
            raise ConfigError(f"override {override!r} is not of the form section.key=value")
        try:
            value = yaml.safe_load(text) if text.strip() else ""
        except yaml.YAMLError:
            value = text
        data.setdefault(section, {})[key] = value
    return build(PipelineConfig, data)
