"""Checkpoint loading/saving: exact round trips, released layouts, dinolab training files, clear errors."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest
import torch

from dinolab import pretrain
from dinolab.pretrain.checkpoints import CheckpointError, load_backbone, read_backbone, save_backbone
from dinolab.pretrain.checkpoints.hub_layout import chunk_blocks
from dinolab.pretrain.checkpoints.infer import infer_config
from dinolab.pretrain.models import RELEASED_NAMES, Preprocessing, VisionTransformer, build_vit, config_for


def random_model(**overrides) -> VisionTransformer:
    """vit_pico (width 64, 2 heads, depth 2) with every parameter random."""
    model = build_vit("vit_pico", **overrides)
    with torch.no_grad():
        for param in model.parameters():
            param.copy_(torch.randn_like(param))
    return model.eval()


def assert_same_state(a: VisionTransformer, b: VisionTransformer) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert sorted(sa) == sorted(sb)
    for key in sa:
        assert sa[key].dtype == sb[key].dtype, key
        assert torch.equal(sa[key], sb[key]), key


def save_torch(obj, path):
    torch.save(obj, path)
    return path


CUSTOM_PREPROCESSING = Preprocessing(input_size=98, resize_size=112, mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25))
VARIANTS = [
    pytest.param({}, id="mlp"),
    pytest.param({"num_register_tokens": 4, "ffn": "swiglu"}, id="registers-swiglu"),
    pytest.param({"layerscale_init": None, "interpolation": "antialias",
                  "preprocessing": CUSTOM_PREPROCESSING}, id="no-layerscale-custom"),
]


# ---------------------------------------------------------------- exact round trips
@pytest.mark.parametrize("overrides", VARIANTS)
@pytest.mark.parametrize("fmt", ["safetensors", "hf"])
def test_round_trip_keeps_weights_and_config_exactly(tmp_path, fmt, overrides):
    model = random_model(**overrides)
    path = save_backbone(model, tmp_path / "out", fmt=fmt)
    loaded = load_backbone(path)
    assert_same_state(model, loaded)
    assert loaded.config == model.config
    assert not loaded.training


@pytest.mark.parametrize("overrides", VARIANTS)
def test_hub_round_trip_is_bit_identical(tmp_path, overrides):
    model = random_model(**overrides)
    path = save_backbone(model, tmp_path / "backbone.pth", fmt="hub")
    raw = torch.load(path, weights_only=True)
    assert sorted(raw) == sorted(model.state_dict())  # flat released layout, nothing else
    loaded = load_backbone(path, num_heads=2)  # pico width 64: not the released 64-per-head rule
    assert_same_state(model, loaded)
    for field in ("embed_dim", "depth", "num_heads", "patch_size", "img_size", "num_register_tokens", "ffn"):
        assert getattr(loaded.config, field) == getattr(model.config, field)
    assert loaded.config.layerscale_init == (None if overrides.get("layerscale_init", 1) is None else 1.0)


def test_hub_file_of_released_head_width_needs_no_head_count(tmp_path):
    model = random_model(embed_dim=128)  # 2 heads of 64, as released
    save_backbone(model, tmp_path / "b.pth", fmt="hub")
    assert load_backbone(tmp_path / "b.pth").config.num_heads == 2


def test_outputs_survive_every_format(tmp_path):
    model = random_model(num_register_tokens=2)
    images = torch.randn(2, 3, 56, 70)
    expected = model.forward_features(images)
    save_backbone(model, tmp_path / "a.safetensors", fmt="safetensors")
    save_backbone(load_backbone(tmp_path / "a.safetensors"), tmp_path / "hf", fmt="hf")
    save_backbone(load_backbone(tmp_path / "hf"), tmp_path / "b.pth", fmt="hub")
    final = load_backbone(tmp_path / "b.pth", num_heads=2)
    out = final.forward_features(images)
    assert torch.equal(out.cls_token, expected.cls_token)
    assert torch.equal(out.patch_tokens, expected.patch_tokens)


# ---------------------------------------------------------------- released and training layouts
def test_chunked_block_checkpoint(tmp_path):
    model = random_model(depth=4)
    chunked = chunk_blocks(model.state_dict(), num_chunks=2)
    assert "blocks.1.3.norm1.weight" in chunked and "blocks.0.1.attn.qkv.weight" in chunked
    loaded = load_backbone(save_torch(chunked, tmp_path / "chunked.pth"), num_heads=2)
    assert_same_state(model, loaded)


def test_release_teacher_checkpoint_with_heads_and_module_prefix(tmp_path):
    model = random_model(depth=4, num_register_tokens=4)
    teacher = {f"module.backbone.{k}": v for k, v in chunk_blocks(model.state_dict(), 4).items()}
    teacher["module.dino_head.mlp.0.weight"] = torch.randn(16, 64)
    teacher["module.ibot_head.last_layer.weight_g"] = torch.ones(32, 1)
    path = save_torch({"teacher": teacher, "iteration": 1250}, tmp_path / "teacher_checkpoint.pth")
    assert_same_state(model, load_backbone(path, num_heads=2))


def test_meta_architecture_state_keeps_teacher_not_student(tmp_path):
    teacher, student = random_model(), random_model()
    state = {f"teacher.backbone.{k}": v for k, v in teacher.state_dict().items()}
    state.update({f"student.backbone.{k}": v for k, v in student.state_dict().items()})
    path = save_torch({"model": state, "optimizer": {"lr": 0.1}}, tmp_path / "model_0001.pth")
    assert_same_state(teacher, load_backbone(path, num_heads=2))


@pytest.mark.parametrize("wrapper", ["model", "state_dict"])
def test_model_and_state_dict_wrappers(tmp_path, wrapper):
    model = random_model()
    state = {f"module.{k}": v for k, v in model.state_dict().items()}
    path = save_torch({wrapper: state, "epoch": 3}, tmp_path / "wrapped.pth")
    assert_same_state(model, load_backbone(path, num_heads=2))


def test_dinolab_pretraining_checkpoint_loads_teacher_with_exact_config(tmp_path):
    config = replace(config_for("vit_pico"), num_register_tokens=2, drop_path_rate=0.1)
    teacher, student = random_model(num_register_tokens=2), random_model(num_register_tokens=2)
    checkpoint = {
        "dinolab": {"kind": "pretrain", "arch": config.to_dict(), "step": 10},
        "teacher": {**{f"backbone.{k}": v for k, v in teacher.state_dict().items()},
                    "dino_head.last_layer.weight": torch.randn(8, 4)},
        "student": {f"backbone.{k}": v for k, v in student.state_dict().items()},
        "optimizer": {"state": {}, "param_groups": [{"lr": 0.001}]},
    }
    loaded = load_backbone(save_torch(checkpoint, tmp_path / "checkpoint.pth"))
    assert loaded.config == config  # no head-count guess: the stored architecture is used
    assert_same_state(teacher, loaded)


def test_architecture_names_give_random_models_of_the_released_shape():
    model = load_backbone("dinov2_vits14")
    assert (model.embed_dim, len(model.blocks), model.blocks[0].attn.num_heads) == (384, 12, 6)
    assert model.pos_embed.shape == (1, 1370, 384) and model.num_register_tokens == 0
    assert model.interpolation == "offset" and not model.training
    config, weights = read_backbone("dinov2_vitl14_reg")
    assert weights is None and (config.embed_dim, config.depth, config.num_register_tokens) == (1024, 24, 4)
    assert pretrain.load_backbone is load_backbone


@pytest.mark.parametrize("name", RELEASED_NAMES)
def test_infer_config_recovers_each_released_architecture(name):
    with torch.device("meta"):  # shapes only: no memory for ViT-g
        state = VisionTransformer(config_for(name)).state_dict()
    assert infer_config(state) == config_for(name)


def test_interpolation_and_device_arguments(tmp_path):
    save_backbone(random_model(), tmp_path / "a.safetensors")
    assert load_backbone(tmp_path / "a.safetensors").interpolation == "offset"
    hf_mode = load_backbone(tmp_path / "a.safetensors", interpolation="hf", device="cpu")
    assert hf_mode.interpolation == "size" and hf_mode.pos_embed.device.type == "cpu"
    with pytest.raises(ValueError, match="unknown interpolation rule"):
        load_backbone(tmp_path / "a.safetensors", interpolation="nearest")


def test_hf_directory_carries_preprocessing_for_transformers(tmp_path):
    model = random_model(preprocessing=CUSTOM_PREPROCESSING)
    save_backbone(model, tmp_path / "hf", fmt="hf")
    processor = json.loads((tmp_path / "hf" / "preprocessor_config.json").read_text())
    assert processor["crop_size"] == {"height": 98, "width": 98}
    assert processor["size"] == {"shortest_edge": 112}
    config = json.loads((tmp_path / "hf" / "config.json").read_text())
    del config["dinolab_arch"]  # without dinolab's entry the HF files alone still give the preprocessing
    (tmp_path / "hf" / "config.json").write_text(json.dumps(config))
    assert load_backbone(tmp_path / "hf").preprocessing == CUSTOM_PREPROCESSING


# ---------------------------------------------------------------- errors
class CustomMetadata:
    """A custom class: unpickling it would need arbitrary code, so the file must be refused."""

    def __init__(self) -> None:
        self.note = "trained on my data"


class RunsCode:
    """A pickle payload that would call ``print`` when unpickled unsafely."""

    def __reduce__(self):
        return (print, ("this must never run",))


@pytest.mark.parametrize("payload,named", [(CustomMetadata, "CustomMetadata"), (RunsCode, "print")])
def test_pickle_with_custom_object_is_refused(tmp_path, capsys, payload, named):
    path = tmp_path / "evil.pth"
    torch.save({"cls_token": torch.zeros(1, 1, 8), "extra": payload()}, path)
    with pytest.raises(CheckpointError, match=f"refusing to load.*{named}"):
        load_backbone(path)
    assert "must never run" not in capsys.readouterr().out


def test_text_file_is_not_a_checkpoint(tmp_path):
    path = tmp_path / "notes.pth"
    path.write_text("these are not weights\n")
    with pytest.raises(CheckpointError, match="not a checkpoint"):
        load_backbone(path)


@pytest.mark.parametrize("fmt,name", [("hub", "b.pth"), ("safetensors", "b.safetensors")])
def test_truncated_files_are_clear_errors(tmp_path, fmt, name):
    path = save_backbone(random_model(), tmp_path / name, fmt=fmt)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="truncated or corrupt"):
        load_backbone(path)


def test_truncated_legacy_pickle_is_a_clear_error(tmp_path):
    path = tmp_path / "legacy.pth"
    torch.save(random_model().state_dict(), path, _use_new_zipfile_serialization=False)
    path.write_bytes(path.read_bytes()[:-500])
    with pytest.raises(CheckpointError, match="truncated or corrupt"):
        load_backbone(path)


@pytest.mark.parametrize("content,message", [
    ([1, 2, 3], "not a checkpoint"),
    ({"optimizer": {"lr": 0.1}, "epoch": 3}, "no weights found"),
    ({"dino_head.mlp.0.weight": torch.zeros(2, 2)}, "only pretraining-head weights"),
    ({"weight": torch.zeros(2, 2)}, "missing weight 'cls_token'"),
])
def test_files_without_a_backbone(tmp_path, content, message):
    path = save_torch(content, tmp_path / "x.pth")
    with pytest.raises(CheckpointError, match=message):
        load_backbone(path)


def test_missing_unexpected_and_misshapen_weights_are_named(tmp_path):
    state = random_model().state_dict()
    del state["blocks.1.norm2.bias"]
    state["blocks.0.attn.extra"] = torch.zeros(3)
    state["blocks.1.mlp.fc2.bias"] = torch.zeros(65)
    with pytest.raises(CheckpointError) as error:
        load_backbone(save_torch(state, tmp_path / "bad.pth"), num_heads=2)
    message = str(error.value)
    assert "missing weights blocks.1.norm2.bias" in message
    assert "unexpected weights blocks.0.attn.extra" in message
    assert "wrong shapes blocks.1.mlp.fc2.bias (65,) (expected (64,))" in message


def test_stored_architecture_that_does_not_fit_the_weights(tmp_path):
    model = random_model()
    path = save_backbone(model, tmp_path / "a.safetensors")
    from safetensors.torch import load_file, save_file

    arch = replace(model.config, depth=3).to_dict()
    save_file(load_file(path), path, metadata={"dinolab": json.dumps({"kind": "backbone", "arch": arch})})
    with pytest.raises(CheckpointError, match="missing weights blocks.2"):
        load_backbone(path)


def test_unknown_width_needs_a_head_count(tmp_path):
    path = save_backbone(random_model(embed_dim=96, num_heads=3), tmp_path / "w96.pth", fmt="hub")
    with pytest.raises(CheckpointError, match="give the number of attention heads"):
        load_backbone(path)
    assert load_backbone(path, num_heads=3).config.num_heads == 3


def test_head_count_that_contradicts_the_stored_config(tmp_path):
    path = save_backbone(random_model(), tmp_path / "a.safetensors")
    with pytest.raises(CheckpointError, match="stores 2 attention heads, not 4"):
        load_backbone(path, num_heads=4)


def test_unknown_name_directory_without_config_and_bare_hf_weights(tmp_path):
    with pytest.raises(CheckpointError, match="not an architecture name"):
        load_backbone("dinov2_vitx14")
    with pytest.raises(CheckpointError, match="not a Hugging Face model directory"):
        load_backbone(tmp_path)
    save_backbone(random_model(), tmp_path / "hf", fmt="hf")
    with pytest.raises(CheckpointError, match="load the model directory instead"):
        load_backbone(tmp_path / "hf" / "model.safetensors")


def test_hf_config_of_another_model_type(tmp_path):
    save_backbone(random_model(), tmp_path / "hf", fmt="hf")
    config = json.loads((tmp_path / "hf" / "config.json").read_text())
    config["model_type"] = "vit"
    (tmp_path / "hf" / "config.json").write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match="model_type 'vit'"):
        load_backbone(tmp_path / "hf")


def test_save_refuses_to_overwrite_and_keeps_the_old_file(tmp_path):
    path = save_backbone(random_model(), tmp_path / "a.safetensors")
    before = path.read_bytes()
    with pytest.raises(FileExistsError):
        save_backbone(random_model(), path)
    assert path.read_bytes() == before
    replacement = random_model()
    save_backbone(replacement, path, overwrite=True)
    assert_same_state(replacement, load_backbone(path))
    assert [p.name for p in tmp_path.iterdir()] == ["a.safetensors"]  # no staging leftovers


def test_non_integer_mlp_ratio_cannot_be_written_for_transformers(tmp_path):
    model = random_model(mlp_ratio=2.5)
    with pytest.raises(CheckpointError, match="integer mlp_ratio"):
        save_backbone(model, tmp_path / "hf", fmt="hf")
    assert not (tmp_path / "hf").exists()
    assert_same_state(model, load_backbone(save_backbone(model, tmp_path / "a.safetensors")))
