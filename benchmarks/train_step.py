"""Throughput of one full DINOv2 pretraining step: dinolab vs lightly + timm, and MFU.

One step = teacher forward on 2 global crops, student forward on 2 global (iBOT-masked) + n local
crops, DINO + iBOT (shared head) + 0.1·KoLeo losses, backward, gradient clip 3.0, AdamW step and EMA
teacher update. Both implementations run the same shapes and the same step structure; they differ in
the components: backbone (dinolab ViT vs timm ``vit_small_patch14_dinov2``-style ViT wrapped by
lightly's masked ViT), head (``DINOHead`` vs lightly ``DINOProjectionHead``), losses (dinolab with
Sinkhorn-Knopp teacher targets vs lightly's, which use softmax centering — lightly has no Sinkhorn
option), optimiser groups (fused DINOv2 groups vs one plain group) and EMA (``_foreach`` vs lightly's
per-parameter ``update_momentum``). Steps are timed interleaved (A, B, B, A, ...) in one process.

MFU = (FLOPs of the dinolab step counted by ``torch.utils.flop_counter.FlopCounterMode``) / step
time / (peak fp32 matmul FLOP/s measured here on 2048² matrices with the same thread count).

    python -m benchmarks.train_step --arch vit_pico --steps 3          # quick check
    python -m benchmarks.train_step --arch vit_small --batch-size 4 --steps 5
"""

from __future__ import annotations

import argparse
import copy
import resource
import statistics
import time
import warnings
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from benchmarks._shared.flops import count_flops, measure_matmul_peak
from dinolab.pretrain.models import build_vit
from dinolab.pretrain.train.ema import update_teacher
from dinolab.pretrain.train.heads import DINOHead
from dinolab.pretrain.train.losses import DINOLoss, IBOTPatchLoss, KoLeoLoss
from dinolab.pretrain.train.masking import masks_weight, sample_ibot_masks
from dinolab.pretrain.train.param_groups import apply_schedules, build_param_groups

TEACHER_TEMP, MOMENTUM, LR, WEIGHT_DECAY, KOLEO_WEIGHT, CLIP = 0.07, 0.994, 1e-4, 0.04, 0.1, 3.0


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--arch", default="vit_small", help="dinolab preset (vit_small, vit_pico, ...)")
    parser.add_argument("--batch-size", type=int, default=8, help="images per step (each gives 2 + n_local crops)")
    parser.add_argument("--k", type=int, default=65536, help="prototypes of the shared DINO/iBOT head")
    parser.add_argument("--steps", type=int, default=5, help="timed steps per implementation")
    parser.add_argument("--threads", type=int, default=2, help="torch intra-op threads")
    parser.add_argument("--global-size", type=int, default=224)
    parser.add_argument("--local-size", type=int, default=98)
    parser.add_argument("--n-local", type=int, default=8)
    parser.add_argument("--skip-lightly", action="store_true", help="time dinolab only")
    return parser.parse_args()


@dataclass
class Batch:
    global_crops: Tensor  # [2B, 3, G, G], all first crops then all second crops
    local_crops: Tensor  # [n·B, 3, L, L]
    masks: Tensor  # [2B, h·w] iBOT masks of the global crops
    grid_hw: tuple[int, int]


def make_batch(args: argparse.Namespace, patch_size: int, seed: int) -> Batch:
    generator = torch.Generator().manual_seed(seed)
    b = args.batch_size
    grid = args.global_size // patch_size
    return Batch(
        torch.randn(2 * b, 3, args.global_size, args.global_size, generator=generator),
        torch.randn(args.n_local * b, 3, args.local_size, args.local_size, generator=generator),
        sample_ibot_masks(2 * b, (grid, grid), generator=generator),
        (grid, grid),
    )


class DinolabStep:
    """The step built from dinolab's backbone, head, losses, parameter groups and EMA."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.backbone = build_vit(args.arch, img_size=args.global_size)
        self.head = DINOHead(self.backbone.embed_dim, args.k)
        self.teacher_backbone = copy.deepcopy(self.backbone).requires_grad_(False)
        self.teacher_head = copy.deepcopy(self.head).requires_grad_(False)
        self.dino_loss, self.ibot_loss, self.koleo = DINOLoss(args.k), IBOTPatchLoss(args.k), KoLeoLoss()
        groups = build_param_groups({"backbone": self.backbone, "head": self.head})
        self.optimizer = torch.optim.AdamW(groups, betas=(0.9, 0.999))
        apply_schedules(self.optimizer, lr=LR, weight_decay=WEIGHT_DECAY, last_layer_lr=LR)
        self.student_params = [*self.backbone.parameters(), *self.head.parameters()]
        self.teacher_params = [*self.teacher_backbone.parameters(), *self.teacher_head.parameters()]
        self.n_local = args.n_local

    def __call__(self, batch: Batch) -> float:
        masks = batch.masks
        masked_index = masks.flatten().nonzero().flatten()
        n_global = batch.global_crops.shape[0]
        with torch.no_grad():
            teacher = self.teacher_backbone.forward_features(batch.global_crops)
            patches = teacher.patch_tokens.flatten(0, 1)[masked_index]
            logits = self.teacher_head(torch.cat([teacher.cls_token, patches]))
            cls_probs = self.dino_loss.sinkhorn_knopp_teacher(logits[:n_global], TEACHER_TEMP)
            patch_probs = self.ibot_loss.sinkhorn_knopp_teacher(logits[n_global:], TEACHER_TEMP, len(masked_index))
        global_out, local_out = self.backbone.forward_features(
            [batch.global_crops, batch.local_crops], masks=[masks, None]
        )
        student_patches = global_out.patch_tokens.flatten(0, 1)[masked_index]
        logits = self.head(torch.cat([global_out.cls_token, local_out.cls_token, student_patches]))
        global_logits, local_logits, patch_logits = logits.split(
            [n_global, local_out.cls_token.shape[0], len(masked_index)]
        )
        dino = self.dino_loss([*global_logits.chunk(2), *local_logits.chunk(self.n_local)], [*cls_probs.chunk(2)])
        ibot = self.ibot_loss.forward_masked(patch_logits, patch_probs, masks_weight(masks))
        koleo = sum(self.koleo(cls) for cls in global_out.cls_token.chunk(2))
        loss = dino + ibot + KOLEO_WEIGHT * koleo
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        nn.utils.clip_grad_norm_(self.student_params, CLIP)
        self.optimizer.step()
        update_teacher(self.student_params, self.teacher_params, MOMENTUM)
        return loss.item()


class LightlyStep:
    """The same step from timm's ViT, lightly's masked-ViT wrapper, head, losses and EMA."""

    def __init__(self, args: argparse.Namespace, reference: nn.Module) -> None:
        import timm
        from lightly.loss import DINOLoss as LDINOLoss, IBOTPatchLoss as LIBOTLoss, KoLeoLoss as LKoLeo
        from lightly.models.modules import DINOProjectionHead, MaskedVisionTransformerTIMM

        config = reference.config
        vit = timm.create_model(
            "vit_small_patch14_dinov2", pretrained=False, img_size=args.global_size, dynamic_img_size=True,
            patch_size=config.patch_size, embed_dim=config.embed_dim, depth=config.depth,
            num_heads=config.num_heads, mlp_ratio=config.mlp_ratio,
        )
        self.backbone = MaskedVisionTransformerTIMM(vit=vit)
        with warnings.catch_warnings():  # lightly's head uses torch's deprecated weight_norm hook
            warnings.simplefilter("ignore", FutureWarning)
            self.head = DINOProjectionHead(config.embed_dim, 2048, 256, args.k)
            self.teacher_head = DINOProjectionHead(config.embed_dim, 2048, 256, args.k)  # hook blocks deepcopy
        self.teacher_head.load_state_dict(self.head.state_dict())
        self.teacher_head.requires_grad_(False)
        self.teacher_backbone = copy.deepcopy(self.backbone).requires_grad_(False)
        self.dino_loss, self.ibot_loss, self.koleo = LDINOLoss(args.k), LIBOTLoss(args.k), LKoLeo()
        self.student = nn.ModuleList([self.backbone, self.head])
        self.teacher = nn.ModuleList([self.teacher_backbone, self.teacher_head])
        self.optimizer = torch.optim.AdamW(self.student.parameters(), lr=LR, weight_decay=WEIGHT_DECAY)
        self.n_local = args.n_local

    def __call__(self, batch: Batch) -> float:
        from lightly.models.utils import update_momentum

        masks = batch.masks
        n_global = batch.global_crops.shape[0]
        with_cls = torch.cat([masks.new_zeros(n_global, 1), masks], dim=1)  # lightly masks include the cls slot
        with torch.no_grad():
            tokens = self.teacher_backbone.encode(batch.global_crops)
            logits = self.teacher_head(torch.cat([tokens[:, 0], tokens[:, 1:][masks]]))
        global_tokens = self.backbone.encode(batch.global_crops, mask=with_cls)
        local_cls = self.backbone.encode(batch.local_crops)[:, 0]
        student = self.head(torch.cat([global_tokens[:, 0], local_cls, global_tokens[:, 1:][masks]]))
        global_logits, local_logits, patch_logits = student.split([n_global, local_cls.shape[0], int(masks.sum())])
        dino = self.dino_loss(
            [*logits[:n_global].chunk(2)],
            [*global_logits.chunk(2), *local_logits.chunk(self.n_local)],
            teacher_temp=TEACHER_TEMP,
        )
        ibot = self.ibot_loss(
            logits[n_global:], patch_logits, masks.reshape(n_global, *batch.grid_hw), teacher_temp=TEACHER_TEMP
        )
        koleo = sum(self.koleo(cls) for cls in global_tokens[:, 0].chunk(2))
        loss = dino + ibot + KOLEO_WEIGHT * koleo
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        nn.utils.clip_grad_norm_(self.student.parameters(), CLIP)
        self.optimizer.step()
        update_momentum(self.student, self.teacher, MOMENTUM)
        return loss.item()


def timed(step, batch: Batch) -> float:
    start = time.perf_counter()
    loss = step(batch)
    elapsed = time.perf_counter() - start
    if not torch.isfinite(torch.tensor(loss)):
        raise RuntimeError(f"non-finite loss {loss}")
    return elapsed


def main() -> None:
    args = parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    peak = measure_matmul_peak()
    ours = DinolabStep(args)
    batch = make_batch(args, ours.backbone.patch_size, seed=0)
    steps = {"dinolab": ours}
    if not args.skip_lightly:
        steps["lightly+timm"] = LightlyStep(args, ours.backbone)
    print(f"arch {args.arch}, batch {args.batch_size} images (2×{args.global_size} + {args.n_local}×{args.local_size} crops), "
          f"K {args.k}, threads {args.threads}, masked patches {int(batch.masks.sum())}")

    flops = count_flops(lambda: ours(batch))  # also serves as the warm-up step
    for name, step in steps.items():
        if name != "dinolab":
            step(batch)  # warm-up

    times: dict[str, list[float]] = {name: [] for name in steps}
    order = list(steps)
    for i in range(args.steps):
        for name in order if i % 2 == 0 else order[::-1]:
            times[name].append(timed(steps[name], batch))

    print(f"measured fp32 matmul peak (2048², {args.threads} threads): {peak / 1e9:.1f} GFLOP/s")
    print(f"dinolab step FLOPs (FlopCounterMode, fwd+bwd+teacher): {flops / 1e9:.1f} GFLOP")
    for name, values in times.items():
        median = statistics.median(values)
        line = f"{name:>13}: {args.batch_size / median:7.3f} images/s  (median step {median:.3f} s over {len(values)})"
        if name == "dinolab":
            line += f", {flops / median / 1e9:.1f} GFLOP/s, MFU {flops / median / peak:.1%}"
        print(line)
    if "lightly+timm" in times:
        ratio = statistics.median(times["lightly+timm"]) / statistics.median(times["dinolab"])
        print(f"speed ratio dinolab / lightly+timm: {ratio:.2f}×")
    print(f"peak RSS {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20:.2f} GiB")


if __name__ == "__main__":
    main()
