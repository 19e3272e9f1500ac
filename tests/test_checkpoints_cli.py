"""``pretrain convert`` end to end on tiny models, including its user-facing errors."""

from __future__ import annotations

import pytest
import torch

import dinolab.pretrain.cli as cli
from dinolab.pretrain.checkpoints import load_backbone, save_backbone
from dinolab.pretrain.models import VisionTransformer, build_vit


@pytest.fixture
def convert(monkeypatch):
    """Run ``pretrain convert ARGS`` through the real entry point (only this subcommand registered)."""
    monkeypatch.setattr(cli, "SUBCOMMAND_MODULES", ("dinolab.pretrain.cli.convert",))
    return lambda *args: cli.main(["convert", *map(str, args)])


def random_pico(**overrides) -> VisionTransformer:
    model = build_vit("vit_pico", **overrides)
    with torch.no_grad():
        for param in model.parameters():
            param.copy_(torch.randn_like(param))
    return model.eval()


def same_state(a: VisionTransformer, b: VisionTransformer) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def test_convert_chain_through_all_formats(tmp_path, convert, capsys):
    model = random_pico(num_register_tokens=4, ffn="swiglu")
    save_backbone(model, tmp_path / "start.safetensors")
    assert convert(tmp_path / "start.safetensors", tmp_path / "hf", "--to", "hf") == 0
    assert "wrote" in capsys.readouterr().out and (tmp_path / "hf" / "config.json").is_file()
    assert convert(tmp_path / "hf", tmp_path / "hub.pth", "--to", "hub") == 0
    assert convert(tmp_path / "hub.pth", tmp_path / "end.safetensors", "--to", "safetensors",
                   "--num-heads", "2") == 0
    end = load_backbone(tmp_path / "end.safetensors")
    assert same_state(model, end) and end.num_register_tokens == 4 and end.config.num_heads == 2


def test_convert_teacher_checkpoint_to_strict_hub_file(tmp_path, convert):
    model = random_pico()
    teacher = {f"backbone.{k}": v for k, v in model.state_dict().items()}
    teacher["dino_head.last_layer.weight"] = torch.randn(8, 16)
    torch.save({"dinolab": {"kind": "pretrain", "arch": model.config.to_dict()}, "teacher": teacher},
               tmp_path / "checkpoint.pth")
    assert convert(tmp_path / "checkpoint.pth", tmp_path / "backbone.pth", "--to", "hub") == 0
    flat = torch.load(tmp_path / "backbone.pth", weights_only=True)
    fresh = VisionTransformer(model.config)
    fresh.load_state_dict(flat, strict=True)  # what the released code does with a hub file
    assert same_state(model, fresh.eval())


def test_convert_stores_interpolation_choice(tmp_path, convert):
    save_backbone(random_pico(), tmp_path / "a.safetensors")
    assert convert(tmp_path / "a.safetensors", tmp_path / "b.safetensors", "--to", "safetensors",
                   "--interpolation", "hf") == 0
    assert load_backbone(tmp_path / "b.safetensors").interpolation == "size"


def test_convert_errors_are_one_line_and_lose_nothing(tmp_path, convert, capsys):
    save_backbone(random_pico(), tmp_path / "a.safetensors")
    (tmp_path / "exists.pth").write_bytes(b"keep me")
    (tmp_path / "corrupt.pth").write_bytes(b"PK\x03\x04 broken zip")
    cases = [
        ((tmp_path / "missing.pth", tmp_path / "o.pth", "--to", "hub"), "no such file"),
        ((tmp_path / "corrupt.pth", tmp_path / "o.pth", "--to", "hub"), "truncated or corrupt"),
        ((tmp_path / "a.safetensors", tmp_path / "exists.pth", "--to", "hub"), "pass --force"),
        ((tmp_path / "a.safetensors", tmp_path / "o.pth", "--to", "hub", "--interpolation", "cubic"),
         "unknown interpolation rule"),
        ((tmp_path / "a.safetensors", tmp_path / "o.pth", "--to", "hub", "--num-heads", "0"), "positive"),
    ]
    for args, message in cases:
        assert convert(*args) == 2
        err = capsys.readouterr().err
        assert err.startswith("pretrain convert: error:") and message in err and err.count("\n") == 1
    assert (tmp_path / "exists.pth").read_bytes() == b"keep me"
    assert not (tmp_path / "o.pth").exists()
    assert convert(tmp_path / "a.safetensors", tmp_path / "exists.pth", "--to", "hub", "--force") == 0
    assert same_state(load_backbone(tmp_path / "a.safetensors"), load_backbone(tmp_path / "exists.pth", num_heads=2))


def test_convert_help_lists_formats(convert, capsys):
    with pytest.raises(SystemExit) as exit_info:
        convert("--help")
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    assert "--to {hub,hf,safetensors}" in out and "transformers.AutoModel" in out
