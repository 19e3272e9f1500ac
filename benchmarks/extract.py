"""Feature-extraction throughput: dinolab vs ``transformers`` Dinov2Model vs timm, same weights, same batch.

All three backbones hold the same random weights (dinolab's are copied into the others; the outputs
are asserted equal within 1e-4 before anything is timed). Each model runs ``forward`` under
``torch.inference_mode`` in fp32 on the same input batch; the models are timed interleaved (one batch
of each per repetition, after warm-up) and the median images/s is reported with the ratio of dinolab to
the fastest peer (plus the ratio of the fastest runs, steadier on a busy machine). The position table
is built for the benchmark size, so no model interpolates it.

Each row also gives its MFU: the forward's FLOPs (counted once with ``FlopCounterMode``; all three
compute the same thing) per second over the fp32 matmul peak measured in the same run. It shows how
much room is left: eager PyTorch already runs these matmul-bound models near the peak. ``--compile``
adds the path ``features extract --compile`` takes (``torch.compile`` with inductor freezing on CPU).

    python -m benchmarks.extract --threads 2 --batch-size 8 --reps 7
    python -m benchmarks.extract --arch dinov2_vitb14 --size 224 --compile   # adds a compiled dinolab row
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable
from dataclasses import replace

import torch
from torch import Tensor, nn

from benchmarks._shared.flops import count_flops, measure_matmul_peak
from dinolab.features.extract import compiled_forward
from dinolab.pretrain.models import VisionTransformer, config_for

TOLERANCE = 1e-4


def build_dinolab(arch: str, size: int, depth: int | None = None) -> VisionTransformer:
    """A released-layout backbone with a position table for ``size`` px and non-trivial random weights."""
    config = config_for(arch, img_size=size) if depth is None else config_for(arch, img_size=size, depth=depth)
    if config.num_register_tokens or config.ffn != "mlp":
        raise SystemExit(f"{arch}: the peer comparison covers the MLP models without registers (dinov2_vit[sbl]14)")
    model = VisionTransformer(replace(config, layerscale_init=1.0)).eval()
    with torch.no_grad():  # perturb norms, gammas and tokens too, so a wrong mapping cannot hide
        for name, parameter in model.named_parameters():
            if "norm" in name or "gamma" in name:
                parameter.add_(torch.randn_like(parameter) * 0.1)
            elif name in ("cls_token", "mask_token"):
                parameter.normal_(std=0.02)
    return model


def hf_copy(model: VisionTransformer) -> nn.Module:
    """The same weights in ``transformers.Dinov2Model`` (SDPA attention): q/k/v split from ``qkv``."""
    from transformers import Dinov2Config, Dinov2Model

    cfg = model.config
    hf_config = Dinov2Config(
        hidden_size=cfg.embed_dim,
        num_hidden_layers=cfg.depth,
        num_attention_heads=cfg.num_heads,
        mlp_ratio=int(cfg.mlp_ratio),
        patch_size=cfg.patch_size,
        image_size=cfg.img_size,
        layerscale_value=1.0,
        layer_norm_eps=1e-6,
        hidden_act="gelu",
        use_swiglu_ffn=False,
    )
    hf = Dinov2Model(hf_config, add_pooling_layer=False) if _accepts_pooling(Dinov2Model) else Dinov2Model(hf_config)
    source = model.state_dict()
    # transformers 5 names the projections attention.{q,k,v,o}_proj; 4.x attention.attention.query...
    if "encoder.layer.0.attention.q_proj.weight" in hf.state_dict():
        query, key, value, out = "attention.q_proj", "attention.k_proj", "attention.v_proj", "attention.o_proj"
    else:
        query, key, value = "attention.attention.query", "attention.attention.key", "attention.attention.value"
        out = "attention.output.dense"
    target: dict[str, Tensor] = {
        "embeddings.cls_token": source["cls_token"],
        "embeddings.mask_token": source["mask_token"],
        "embeddings.position_embeddings": source["pos_embed"],
        "embeddings.patch_embeddings.projection.weight": source["patch_embed.proj.weight"],
        "embeddings.patch_embeddings.projection.bias": source["patch_embed.proj.bias"],
        "layernorm.weight": source["norm.weight"],
        "layernorm.bias": source["norm.bias"],
    }
    for i in range(cfg.depth):
        ours, theirs = f"blocks.{i}.", f"encoder.layer.{i}."
        for kind in ("weight", "bias"):
            q, k, v = source[ours + f"attn.qkv.{kind}"].chunk(3, dim=0)
            target[theirs + f"{query}.{kind}"] = q
            target[theirs + f"{key}.{kind}"] = k
            target[theirs + f"{value}.{kind}"] = v
            target[theirs + f"{out}.{kind}"] = source[ours + f"attn.proj.{kind}"]
            for part in ("norm1", "norm2", "mlp.fc1", "mlp.fc2"):
                target[theirs + f"{part}.{kind}"] = source[ours + f"{part}.{kind}"]
        target[theirs + "layer_scale1.lambda1"] = source[ours + "ls1.gamma"]
        target[theirs + "layer_scale2.lambda1"] = source[ours + "ls2.gamma"]
    hf.load_state_dict(target, strict=True)
    hf.set_attn_implementation("sdpa")
    return hf.eval()


def _accepts_pooling(cls: type) -> bool:
    import inspect

    return "add_pooling_layer" in inspect.signature(cls.__init__).parameters


def timm_copy(model: VisionTransformer) -> nn.Module:
    """The same weights in timm's ``vit_*_patch14_dinov2`` (its keys equal the released ones, no mask token)."""
    import timm

    cfg = model.config
    names = {384: "vit_small_patch14_dinov2", 768: "vit_base_patch14_dinov2", 1024: "vit_large_patch14_dinov2"}
    peer = timm.create_model(
        names[cfg.embed_dim], pretrained=False, img_size=cfg.img_size, depth=cfg.depth, num_classes=0
    )
    state = {key: value for key, value in model.state_dict().items() if key != "mask_token"}
    peer.load_state_dict(state, strict=True)
    return peer.eval()


def forwards(model: VisionTransformer, hf: nn.Module, peer: nn.Module) -> dict[str, Callable[[Tensor], Tensor]]:
    """Each library's feature call, returning the normed class token."""
    return {
        "dinolab": lambda x: model.forward_features(x).cls_token,
        "transformers": lambda x: hf(pixel_values=x).last_hidden_state[:, 0],
        "timm": lambda x: peer.forward_features(x)[:, 0],
    }


def time_interleaved(calls: dict[str, Callable[[Tensor], Tensor]], batch: Tensor, warmup: int, reps: int) -> dict[str, list[float]]:
    """Seconds per batch of every call, measured round-robin so machine noise hits all alike."""
    seconds: dict[str, list[float]] = {name: [] for name in calls}
    with torch.inference_mode():
        for _ in range(warmup):
            for call in calls.values():
                call(batch)
        for _ in range(reps):
            for name, call in calls.items():
                start = time.perf_counter()
                call(batch)
                seconds[name].append(time.perf_counter() - start)
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--arch", default="dinov2_vits14", help="dinov2_vits14 (default), dinov2_vitb14, dinov2_vitl14")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--reps", type=int, default=7)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--compile", action="store_true",
                        help="also time dinolab compiled as 'features extract --compile' does (slow cold start)")
    args = parser.parse_args()

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model = build_dinolab(args.arch, args.size)
    calls = forwards(model, hf_copy(model), timm_copy(model))
    batch = torch.randn(args.batch_size, 3, args.size, args.size)
    with torch.inference_mode():
        reference = calls["dinolab"](batch)
        for name, call in calls.items():
            error = (call(batch) - reference).abs().max().item()
            print(f"max |{name} - dinolab| = {error:.2e}")
            if error > TOLERANCE:
                raise SystemExit(f"{name} output differs from dinolab by {error:.2e} > {TOLERANCE}: mapping is wrong")
    if args.compile:
        compiled = compiled_forward(model, batch.device)
        calls["dinolab (compiled)"] = lambda x: compiled(x).cls_token
        print("compiling (cold start can take a minute or more)...")
        with torch.inference_mode():
            error = (calls["dinolab (compiled)"](batch) - reference).abs().max().item()
        print(f"max |compiled - eager| = {error:.2e}")
        if error > TOLERANCE:
            raise SystemExit(f"compiled output differs from eager by {error:.2e} > {TOLERANCE}")
    with torch.inference_mode():
        flops = count_flops(lambda: calls["dinolab"](batch))
    peak_before = measure_matmul_peak(repeats=10)
    seconds = time_interleaved(calls, batch, args.warmup, args.reps)
    peak = max(peak_before, measure_matmul_peak(repeats=10))  # a busy moment only lowers a measurement
    rates = {name: args.batch_size / statistics.median(values) for name, values in seconds.items()}
    print(
        f"\n{args.arch} at {args.size} px, batch {args.batch_size}, {args.threads} threads, fp32, "
        f"inference_mode, median of {args.reps} (warm-up {args.warmup})"
    )
    print(f"forward FLOPs {flops / 1e9:.1f} GFLOP per batch; fp32 matmul peak {peak / 1e9:.1f} GFLOP/s (2048², same threads)")
    print(f"{'model':<22}{'images/s':>10}{'ms/batch':>10}{'min ms':>9}{'max ms':>9}{'MFU':>7}")
    for name, values in seconds.items():
        median = statistics.median(values)
        print(
            f"{name:<22}{rates[name]:>10.2f}{1e3 * median:>10.1f}"
            f"{1e3 * min(values):>9.1f}{1e3 * max(values):>9.1f}{flops / median / peak:>7.0%}"
        )
    best_peer = max(("transformers", "timm"), key=rates.__getitem__)
    print(f"\ndinolab / {best_peer} (best peer) = {rates['dinolab'] / rates[best_peer]:.2f}x (medians)")
    for peer in ("transformers", "timm"):
        median_ratio = rates["dinolab"] / rates[peer]
        fastest_ratio = min(seconds[peer]) / min(seconds["dinolab"])
        print(f"dinolab / {peer} = {median_ratio:.2f}x (medians), {fastest_ratio:.2f}x (fastest runs)")
    if "dinolab (compiled)" in rates:
        print(f"dinolab compiled / {best_peer} (eager) = {rates['dinolab (compiled)'] / rates[best_peer]:.2f}x (medians)")


if __name__ == "__main__":
    main()
