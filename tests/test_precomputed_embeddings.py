"""A folder of precomputed embeddings (img_emb/ + metadata/, LAION's layout) curated as a lake: no image is
read to ingest or embed it, dedup is kNN cosine on its vectors, and the shards hold the images that exist."""

from __future__ import annotations

import io
import tarfile

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image
from typer.testing import CliRunner

from dinolab.curate import tables
from dinolab.curate.lakes.embeddings import detect_folder
from dinolab.curate.lakes.uris import LakeError
from dinolab.pipelines.cli import app

DIM, PER_FILE = 16, 20


def write_precomputed(root, with_key: bool):
    """Two files of 20 float16 vectors in 4 directions; row 1 of file 0 is a near-copy of row 0; images exist
    for the even rows only (``images/e-F-R.png``); file 1 names its rows with a ``key`` column."""
    rng = np.random.default_rng(0)
    centres = rng.normal(size=(4, DIM))
    (root / "img_emb").mkdir(parents=True)
    (root / "metadata").mkdir()
    (root / "images").mkdir()
    for number in range(2):
        vectors = centres[rng.integers(0, 4, PER_FILE)] + rng.normal(scale=0.3, size=(PER_FILE, DIM))
        if number == 0:
            vectors[1] = vectors[0] + 1e-3
        np.save(root / "img_emb" / f"img_emb_{number}.npy", vectors.astype(np.float16))
        paths = [f"images/e-{number}-{row}.png" for row in range(PER_FILE)]
        for row in range(0, PER_FILE, 2):
            Image.fromarray(rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)).save(root / paths[row])
        columns = {"image_path": paths, "caption": [f"row {row}" for row in range(PER_FILE)]}
        if with_key and number == 1:
            columns["key"] = [f"k{row:03d}" for row in range(PER_FILE)]
        pq.write_table(pa.table(columns), root / "metadata" / f"metadata_{number}.parquet")
    return root


def located(uri: str) -> tuple[int, int]:
    """(file number, row) of an ``emb://ROW::.../metadata_N.parquet`` uri."""
    row, _, container = uri.removeprefix("emb://").partition("::")
    return int(container.rsplit("_", 1)[1].split(".")[0]), int(row)


def test_a_precomputed_embeddings_lake_is_curated_without_reading_its_images(tmp_path):
    lake = write_precomputed(tmp_path / "laion", with_key=True)
    out = tmp_path / "out"
    result = CliRunner().invoke(app, ["run", "--lake", str(lake), "--out", str(out), "--workers", "1", "--config",
                                      "demo", "ingest.partition_size=8", "dedup.threshold=0.999", "cluster.ks=[4, 2]",
                                      "sample.method=all"])
    assert result.exit_code == 0, result.stdout + result.stderr
    assert "kNN cosine on the precomputed embeddings" in result.stdout
    images = tables.read_table(out, "images")
    assert len(images) == 2 * PER_FILE and set(images.column("status").to_pylist()) == {"ok"}
    assert images.column("sha256").null_count == len(images)  # never read
    assert sorted(k for k in images.column("key").to_pylist() if k.startswith("k")) == [f"k{r:03d}" for r in range(20)]

    embeddings = tables.read_table(out, "embeddings")
    assert len(embeddings) == 2 * PER_FILE
    expected = np.load(lake / "img_emb" / "img_emb_1.npy").astype(np.float32)
    for partition in sorted(tables.done_parts(out, "embeddings")):
        part = tables.read_part(out, "embeddings", partition)
        matrix = tables.read_array(out, "embeddings", partition)
        for key, row in zip(part.column("key").to_pylist(), part.column("row").to_pylist()):
            if key.startswith("k"):
                np.testing.assert_array_equal(matrix[row], expected[int(key[1:])])

    duplicates = tables.read_table(out, "duplicates").to_pylist()
    by_place = {located(row["uri"]): row for row in duplicates}
    first, second = by_place[(0, 0)], by_place[(0, 1)]
    assert first["group"] == second["group"] and [first["kept"], second["kept"]].count(True) == 1
    assert sum(not row["kept"] for row in duplicates) == 1  # no other link: rows without a hash are not exact copies

    members = {}
    for shard in sorted((out / "shards").glob("*.tar")):
        with tarfile.open(shard) as archive:
            members |= {m.name: archive.extractfile(m).read() for m in archive.getmembers() if m.name.endswith(".png")}
    kept_with_image = [row for row in duplicates if row["kept"] and located(row["uri"])[1] % 2 == 0]
    assert len(members) == len(kept_with_image) > 0  # the odd rows name no file: in no shard
    for name, data in members.items():
        assert Image.open(io.BytesIO(data)).size == (32, 32)


def test_matrices_and_metadata_that_do_not_pair_up_are_refused(tmp_path):
    lake = write_precomputed(tmp_path / "laion", with_key=False)
    assert len(detect_folder(str(lake))) == 2
    (lake / "metadata" / "metadata_1.parquet").unlink()
    with pytest.raises(LakeError, match="do not pair up"):
        detect_folder(str(lake))
