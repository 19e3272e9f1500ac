"""The tools users already have, on a curated lake of mixed formats and an img2dataset lake: Hugging Face
``datasets`` (streaming and not, offline), ``webdataset``, ``wids``, DuckDB and ``pretrain`` read the
output; img2dataset's and Hugging Face's layouts are found by content and their metadata is kept.

The ``datasets``, ``webdataset``, ``wids`` and DuckDB checks run the snippets of docs/curation.md
("Using the output") as written, so the documentation stays true."""

from __future__ import annotations

import io
import json
import re
import tarfile
from pathlib import Path
from types import SimpleNamespace

import pyarrow as pa
import pyarrow.parquet  # noqa: F401 - pa.parquet
import pytest
from PIL import Image
from typer.testing import CliRunner

from dinolab.curate import tables
from dinolab.curate.ingest import ingest_partition
from dinolab.curate.lakes.sets import ImageSet, make_key
from dinolab.curate.lakes import listing
from dinolab.curate.lakes.detect import detect
from dinolab.curate.shards import META_FIELDS
from lakes import MIXED_FORMATS, write_hf_parquet, write_i2d_parquet, write_i2d_webdataset, write_mixed_lake
from dinolab.pipelines.cli import app
from dinolab.pretrain.data.shards import ShardReader, is_shard_spec, resolve_shards
from dinolab.schemas.config import load_config
from dinolab.schemas.tables import FILES

DOCS = Path(__file__).resolve().parents[1] / "docs" / "curation.md"
SETTINGS = ["--config", "demo", "sample.method=all", "shard.max_samples=2"]
FORMATS = sorted(set(MIXED_FORMATS.values()))


def curate(*args):
    return CliRunner().invoke(app, [str(a) for a in args], catch_exceptions=False)


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """``curate run`` over a folder of six image formats and a folder of img2dataset webdataset shards."""
    root = tmp_path_factory.mktemp("interop")
    mixed = write_mixed_lake(root / "mixed")
    i2d = write_i2d_webdataset(root / "i2d_wds")
    out = root / "out"
    result = curate("run", "--lake", root / "mixed", "--lake", root / "i2d_wds", "--out", out, "--workers", 1, *SETTINGS)
    assert result.exit_code == 0, result.stdout + str(result.stderr)
    return SimpleNamespace(root=root, out=out, mixed=mixed, i2d=i2d, total=len(mixed) + len(i2d))


def snippet(name: str, out: Path) -> str:
    """The python block of docs/curation.md marked ``<!-- snippet: name -->``, reading the run in ``out``."""
    found = re.search(rf"<!-- snippet: {name} -->\n```python\n(.*?)```", DOCS.read_text(), re.DOTALL)
    assert found, f"docs/curation.md has no '{name}' snippet"
    code = found.group(1)
    assert 'out = "work"' in code
    return code.replace('out = "work"', f"out = {str(out)!r}")


def shard_members(out: Path) -> dict[str, list[tuple[str, bytes]]]:
    index = json.loads((out / "shards" / "index.json").read_text())
    shards = {}
    for entry in index["shardlist"]:
        with tarfile.open(out / "shards" / entry["url"]) as tar:
            shards[entry["url"]] = [(m.name, tar.extractfile(m).read()) for m in tar.getmembers()]
    return shards


def test_each_shard_holds_one_format_original_bytes_and_typed_json(run):
    originals = {str(run.root / "mixed" / name): data for name, data in run.mixed.items()}
    seen, kinds = 0, []
    for members in shard_members(run.out).values():
        images = [(name, data) for name, data in members if not name.endswith(".json")]
        metas = [json.loads(data) for name, data in members if name.endswith(".json")]
        extensions = {name.rsplit(".", 1)[1] for name, _ in images}
        assert len(extensions) == 1, extensions  # a shard never mixes formats
        kinds.append(extensions.pop())
        for (name, data), meta in zip(images, metas):
            assert list(meta) == sorted(META_FIELDS) and name == f"{meta['key']}.{kinds[-1]}"
            for field, (kind, _) in META_FIELDS.items():
                assert type(meta[field]) is kind, (field, meta[field])
            assert Image.open(io.BytesIO(data)).format == meta["format"]
            if meta["uri"] in originals:
                assert data == originals[meta["uri"]]  # never re-encoded
            seen += 1
    assert seen == run.total
    assert set(kinds) == {"bmp", "gif", "jpg", "png", "tiff", "webp"}  # (formats in order within each selection part)


@pytest.fixture
def offline_hf(tmp_path, monkeypatch):
    """Hugging Face ``datasets`` with no network and a cache of its own."""
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    import datasets

    monkeypatch.setattr(datasets.config, "HF_DATASETS_OFFLINE", True)
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "hf" / "datasets")
    return datasets


@pytest.mark.parametrize("streaming", [False, True])
def test_hugging_face_datasets_loads_every_image_with_typed_metadata(run, offline_hf, streaming):
    code = snippet("datasets", run.out)
    if streaming:
        code = code.replace('split="train")', 'split="train", streaming=True)')
        code = code.replace("first = curated[0]", "first = next(iter(curated))")
    namespace: dict = {}
    exec(code, namespace)  # noqa: S102 - the documented snippet
    curated = namespace["curated"]
    features = curated.features if not streaming else None
    if features is not None:
        assert isinstance(features["image"], offline_hf.Image)
        assert {name: feature.dtype for name, feature in features["json"].items()} == {
            name: {str: "string", int: "int64", float: "float64"}[kind] for name, (kind, _) in META_FIELDS.items()}
    keys = []
    for sample in curated:
        sample["image"].load()  # every image decodes, whatever its format
        assert sample["image"].format in FORMATS
        assert all(type(sample["json"][name]) is kind for name, (kind, _) in META_FIELDS.items())
        keys.append(sample["json"]["key"])
    assert sorted(keys) == sorted(tables.read_table(run.out, "shards").column("key").to_pylist())
    assert len(keys) == run.total


def test_webdataset_to_tuple_with_one_image_field(run):
    namespace: dict = {}
    exec(snippet("webdataset", run.out), namespace)  # noqa: S102
    got = list(namespace["stream"])
    assert len(got) == run.total
    assert all(isinstance(image, Image.Image) for image, _ in got)  # decoded (webdataset converts to RGB)
    assert {meta["format"] for _, meta in got} == set(FORMATS)
    assert all(image.size == (meta["width"], meta["height"]) for image, meta in got)


def test_wids_gives_every_image_decoded(run):
    namespace: dict = {}
    exec(snippet("wids", run.out), namespace)  # noqa: S102
    dataset = namespace["dataset"]
    formats = set()
    for position in range(len(dataset)):
        sample = dataset[position]
        (name,) = [name for name in sample if name.startswith(".") and name != ".json"]
        assert isinstance(sample[name], Image.Image), name
        sample[name].load()
        formats.add(sample[name].format)
        assert sample[".json"]["key"] == sample["__key__"]
    assert len(dataset) == run.total and formats == set(FORMATS)
    dataset.close()


def test_duckdb_joins_the_tables(run):
    namespace: dict = {}
    exec(snippet("duckdb", run.out), namespace)  # noqa: S102
    rows = namespace["kept"]
    assert len(rows) == run.total
    urls = sorted(row[4] for row in rows if row[4] is not None)
    assert urls == sorted(meta["url"] for meta in run.i2d.values())


def test_img2dataset_metadata_reaches_the_images_table_and_the_shards(run):
    images = tables.read_table(run.out, "images").to_pylist()
    from_tars = [row for row in images if row["uri"].startswith("tar://")]
    assert len(from_tars) == len(run.i2d)
    in_shards = {json.loads(data)["key"]: json.loads(data) for members in shard_members(run.out).values()
                 for name, data in members if name.endswith(".json")}
    for row in from_tars:
        provenance = json.loads(row["provenance"])
        original = run.i2d[provenance["key"]]
        assert provenance == {**original, "txt": original["caption"]}  # the json fields, and the .txt caption
        assert json.loads(in_shards[row["key"]]["provenance"]) == provenance
    assert all(row["provenance"] is None for row in images if not row["uri"].startswith("tar://"))


def test_curating_the_shards_again_keeps_keys_extensions_and_provenance(run, tmp_path):
    again = tmp_path / "again"
    result = curate("run", "--lake", run.out / "shards", "--out", again, "--workers", 1, *SETTINGS)
    assert result.exit_code == 0, result.stdout + str(result.stderr)
    before = {row["key"]: row["member"] for row in tables.read_table(run.out, "shards").to_pylist()}
    after = {row["key"]: row["member"] for row in tables.read_table(again, "shards").to_pylist()}
    assert after == before  # no hash appended, jpg stays jpg
    first = {json.loads(d)["key"]: json.loads(d) for m in shard_members(run.out).values() for n, d in m if n.endswith(".json")}
    second = {json.loads(d)["key"]: json.loads(d) for m in shard_members(again).values() for n, d in m if n.endswith(".json")}
    assert {key: meta["provenance"] for key, meta in second.items()} == {
        key: meta["provenance"] for key, meta in first.items()}
    # The index file and the run folder name the same lake.
    config = load_config(None, [])
    for form in (run.out / "shards" / "index.json", run.out):
        units = listing.units(ImageSet(str(form), "pool", "again"), config)
        uris = [uri for unit in units for uri in listing.list_uris(unit, config)]
        assert sorted(make_key(uri) for uri in uris) == sorted(before)


def _ingest(uri: str) -> pa.Table:
    config = load_config(None, [])
    units = listing.units(ImageSet(uri, "pool", "lake"), config)
    uris = [found for unit in units for found in listing.list_uris(unit, config)]
    files = pa.table({"key": [make_key(u) for u in uris], "uri": uris, "role": ["pool"] * len(uris),
                      "set": ["lake"] * len(uris), "partition": pa.array([0] * len(uris), pa.int32())},
                     schema=FILES.schema)
    return ingest_partition(files, config.ingest)


def test_parquet_layouts_of_img2dataset_and_hugging_face_are_found_and_keep_their_columns(tmp_path):
    metas = write_i2d_parquet(tmp_path / "i2d_parquet")
    assert detect(str(tmp_path / "i2d_parquet")).kind == "parquet"
    images = _ingest(str(tmp_path / "i2d_parquet")).to_pylist()  # the 'jpg' column, without ingest.image_column
    assert [row["status"] for row in images] == ["ok"] * len(metas)
    assert [json.loads(row["provenance"]) for row in images] == list(metas.values())

    records = write_hf_parquet(tmp_path / "hf" / "train.parquet")
    images = _ingest(str(tmp_path / "hf")).to_pylist()  # the 'image' struct {bytes, path}
    assert [row["uri"].split("::")[0] for row in images] == [f"parquet://image.bytes/{i}" for i in range(len(records))]
    assert [json.loads(row["provenance"]) for row in images] == [{"label": r["label"]} for r in records]

    # img2dataset's `files` layout: images in folders, a metadata-only parquet beside them: a folder of images.
    layout = tmp_path / "files_layout"
    (layout / "00000").mkdir(parents=True)
    Image.new("RGB", (40, 40)).save(layout / "00000" / "000000000.jpg")
    pa.parquet.write_table(pa.Table.from_pylist(list(metas.values())), layout / "00000.parquet")
    assert detect(str(layout)) is None and listing.set_kind(str(layout)) == "files"


def test_a_folder_of_img2dataset_shards_is_a_lake_and_training_data(run):
    folder = run.root / "i2d_wds"
    assert listing.set_kind(str(folder)) == "tar"
    assert is_shard_spec(str(folder))
    shards = resolve_shards(str(folder))
    assert [shard.path.name for shard in shards.shards] == ["00000.tar", "00001.tar"] and shards.counts == [3, 3]
    name, data = ShardReader(shards).read(4)
    assert name.endswith("000010001.jpg") and Image.open(io.BytesIO(data)).format == "JPEG"


def test_pretrain_train_reads_a_folder_of_img2dataset_shards(run, tmp_path, capsys):
    from dinolab.pretrain.cli import main as pretrain_main
    from pretrain_tiny import TINY_OVERRIDES

    code = pretrain_main(["train", "--data", str(run.root / "i2d_wds"), "--out", str(tmp_path / "train"), "--no-eval",
                          "--no-progress", *TINY_OVERRIDES, "optim.batch_size=3"])
    assert code == 0, capsys.readouterr().err
    log = [json.loads(line) for line in (tmp_path / "train" / "log.jsonl").read_text().splitlines()]
    assert (tmp_path / "train" / "checkpoint.pth").is_file()
    assert [entry["step"] for entry in log if entry["kind"] == "train"][-1] == 2  # 6 samples, batch 3
