"""``run.packing``, ``run.activation_checkpointing`` and ``run.compile`` train like the plain forward.

Each option runs 3 steps of the tiny DINOv2 recipe (iBOT masks, Sinkhorn, KoLeo) and must give the
same per-step losses and final student weights (to 1e-4; AdamW moves a weight by ~1e-2 per step
here) as the same run without it: packing and checkpointing only change how the forward is
computed, compiling only how it is executed. A direct check confirms that checkpointing does
recompute in backward and that compiling does capture graphs. The compile tests use the
``aot_eager`` backend (graph capture and AOT autograd without code generation) because a cold
inductor compile takes minutes on this CPU; the default (for CUDA) is ``inductor``.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from pretrain_tiny import TINY_OVERRIDES

from dinolab.pretrain.models import build_vit
from dinolab.pretrain.train.config import ConfigError, build_config
from dinolab.pretrain.train.loop import Trainer
from dinolab.pretrain.train.ssl_model import apply_block_options

OVERRIDES = [*TINY_OVERRIDES, "optim.batch_size=8", "run.log_every=1", "run.eval_every_steps=0",
             "optim.base_lr=0.1"]


def _run(out: Path, *extra: str) -> tuple[dict[int, float], dict[str, torch.Tensor]]:
    config = build_config("fmnist-tiny", [*OVERRIDES, *extra])
    Trainer(config, "fashion-mnist", out, data_limit=24, evaluate=False, progress=False).run()
    records = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    losses = {r["step"]: r["total"] for r in records if r["kind"] == "train"}
    return losses, torch.load(out / "checkpoint.pth", weights_only=True)["student"]


@pytest.fixture(scope="module")
def plain(tmp_path_factory) -> tuple[dict[int, float], dict[str, torch.Tensor]]:
    torch.set_num_threads(1)
    return _run(tmp_path_factory.mktemp("plain"))


@pytest.mark.parametrize("option", ["run.packing=true", "run.activation_checkpointing=true",
                                    "run.compile=true"])
def test_option_trains_like_the_plain_forward(plain, tmp_path: Path, option: str):
    torch.set_num_threads(1)
    extra = [option, "run.compile_backend=aot_eager"] if option == "run.compile=true" else [option]
    losses, student = _run(tmp_path, *extra)
    reference_losses, reference_student = plain
    assert sorted(losses) == sorted(reference_losses) == [1, 2, 3]
    for step, value in reference_losses.items():
        assert losses[step] == pytest.approx(value, rel=1e-5, abs=1e-5), step
    assert reference_losses[1] != reference_losses[3]
    for key, value in reference_student.items():
        torch.testing.assert_close(student[key], value, rtol=1e-4, atol=1e-4, msg=key)


def test_packing_with_fsdp_is_refused():
    with pytest.raises(ConfigError, match="run.packing=true needs run.parallel=ddp"):
        build_config("fmnist-tiny", ["run.packing=true", "run.parallel=fsdp"])
    with pytest.raises(ConfigError, match="run.parallel must be ddp or fsdp"):
        build_config("fmnist-tiny", ["run.parallel=zero3"])


def _attention_calls_in_one_step(model) -> int:
    calls = []
    model.blocks[0].attn.register_forward_hook(lambda *_: calls.append(1))
    model.forward_features(torch.randn(2, 3, 28, 28)).cls_token.sum().backward()
    return len(calls)


def test_checkpointing_recomputes_and_compile_captures_graphs():
    torch.manual_seed(0)
    assert _attention_calls_in_one_step(build_vit("vit_pico")) == 1
    checkpointed = build_vit("vit_pico")
    apply_block_options(checkpointed, activation_checkpointing=True)
    assert _attention_calls_in_one_step(checkpointed) == 2  # forward, then again in backward

    from torch._dynamo.utils import counters

    torch._dynamo.reset()
    compiled = build_vit("vit_pico")
    apply_block_options(compiled, compile=True, compile_backend="aot_eager")
    reference = build_vit("vit_pico")
    reference.load_state_dict(compiled.state_dict())  # same names: compiling does not rename weights
    images = torch.randn(2, 3, 28, 28)
    torch.testing.assert_close(compiled(images), reference(images), rtol=1e-5, atol=1e-5)
    assert counters["stats"]["unique_graphs"] >= 2  # attention and MLP branches
