"""The dedup stage by copy detection in one process: features per ``images`` partition (cached), then one
global pass (:func:`copy_dedup`), the reference the stage's steps (:mod:`.steps`) are tested against.

The rule (:func:`curate.stages.dedup_rule`) is ``local`` (no weights) or a copy-descriptor checkpoint
whose kNN (k = ``dedup.k``, score-normalised, ``>= dedup.threshold``; ``dedup.eval_threshold`` against
evaluation sets) adds candidates; every candidate is verified (:mod:`.verify`) before it links two images.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from dinolab.curate import fetched, tables
from dinolab.curate.copydetect.features import ImageFeatures, partition_features
from dinolab.curate.copydetect.pipeline import ReferenceSet, copy_duplicates_table
from dinolab.schemas.config import PipelineConfig

if TYPE_CHECKING:
    from torch import nn


def all_features(out: Path, config: PipelineConfig) -> tuple[dict[str, ImageFeatures], dict[str, int]]:
    """Every image's features by key, and the partition each came from."""
    features: dict[str, ImageFeatures] = {}
    partition_of: dict[str, int] = {}
    for partition in sorted(tables.done_parts(out, "images")):
        part = tables.read_part(out, "images", partition)
        found = partition_features(out, partition, part, config.ingest.max_pixels,
                                   read=fetched.reader(out, config.lake.storage_options, [partition]))
        features |= found
        partition_of |= dict.fromkeys(found, partition)
    return features, partition_of


def descriptors_for(out: Path, uris: list[str], config: PipelineConfig, model: nn.Module) -> np.ndarray:
    """Copy descriptors of ``uris`` with ``model`` (a loaded copy-descriptor checkpoint)."""
    from dinolab.curate.copydetect.descriptor import describe_images
    from dinolab.curate.copydetect.features import DECODE_SIDE
    from dinolab.pretrain.data.images import decode_image

    contents = dict(fetched.read(out, uris, config.lake.storage_options))
    images = [decode_image(contents[uri], uri, max_side=DECODE_SIDE, max_pixels=config.ingest.max_pixels,
                           min_side=1).image for uri in uris]
    return describe_images(model, images)


def copy_dedup(out: Path, config: PipelineConfig, rule: str) -> dict[str, int]:
    """The ``duplicates`` table by ``rule``: ``local``, or the path of a copy-descriptor checkpoint."""
    features, partition_of = all_features(out, config)
    images = tables.read_table(out, "images")
    ok = images.filter(pc.and_(pc.equal(images["status"], "ok"),
                               pc.is_in(images["key"], pa.array(sorted(features), pa.string()))))
    pool = ok.filter(pc.equal(ok["role"], "pool")).select(["key", "uri", "sha256", "width", "height"])
    evals = ok.filter(pc.equal(ok["role"], "eval"))
    pool_keys = pool.column("key").to_pylist()
    descriptors = None
    eval_descriptors: dict[str, np.ndarray] = {}
    if rule != "local":
        from dinolab.curate.copydetect.descriptor import Whitening, load_descriptor

        model = load_descriptor(rule, config.dedup.allow_torchscript)
        descriptors = descriptors_for(out, pool.column("uri").to_pylist(), config, model)
        for name in sorted(set(evals.column("set").to_pylist())):
            chosen = evals.filter(pc.equal(evals["set"], name))
            eval_descriptors[name] = descriptors_for(out, chosen.column("uri").to_pylist(), config, model)
        if config.dedup.whitening and len(descriptors) > 1:

            whiten = Whitening.fit_sample(descriptors, config.dedup.whitening)
            descriptors = whiten(descriptors)
            eval_descriptors = {name: whiten(vectors) for name, vectors in eval_descriptors.items()}
    references = {}
    for name in sorted(set(evals.column("set").to_pylist())):
        chosen = evals.filter(pc.equal(evals["set"], name))
        references[name] = ReferenceSet([features[k] for k in chosen.column("key").to_pylist()],
                                        chosen.column("sha256").to_pylist(), eval_descriptors.get(name))
    duplicates = copy_duplicates_table(pool, [features[k] for k in pool_keys], references, config.dedup, descriptors,
                                       np.array([partition_of[k] for k in pool_keys], np.int64))
    tables.write_part(out, "duplicates", 0, duplicates)
    return {"in": len(pool_keys), "out": int(pc.sum(duplicates["kept"]).as_py() or 0)}
