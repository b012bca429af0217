"""Backbones worth trying for heritage images (`eic train --arch timm/<name>`): their size and forward speed here.

Each model is built by timm with random weights (nothing is downloaded: the speed of a network does not depend on
its weights) as eic embeds with it, the classifier removed, at its own input size (its data config) unless
``--size`` is given, and timed on a batch of random images already in memory, after one warm-up batch. It prints
a Markdown table for docs/train.md. Accuracy is not measured: that needs the real weights and a labelled set.

    python benchmarks/backbones.py [--models NAME ...] [--size 224] [--batch 4] [--batches 2] [--threads 1]
"""

from __future__ import annotations

import argparse
import time

import torch

# Name (with the pretrained tag whose data config counts), and what it is.
BACKBONES = {
    "vit_small_patch14_dinov2.lvd142m": "DINOv2 ViT-S/14 (self-supervised, LVD-142M)",
    "vit_base_patch16_clip_224.openai": "CLIP ViT-B/16 image tower (OpenAI)",
    "vit_base_patch16_siglip_224.webli": "SigLIP ViT-B/16 image tower (WebLI)",
    "eva02_small_patch14_224.mim_in22k": "EVA02-S/14 (MIM, ImageNet-22k)",
    "convnext_tiny.fb_in22k": "ConvNeXt-T (ImageNet-22k)",
    "efficientnet_b0.ra_in1k": "EfficientNet-B0 (ImageNet-1k)",
    "resnet50.a1_in1k": "ResNet-50 (ImageNet-1k), for reference",
}


def measure(name: str, size: int | None, batch: int, batches: int) -> tuple[float, int, float]:
    """Millions of parameters, the input side used, and forward images per second."""
    from europeana_imgcls.modelling.models import build_model, get_arch, set_head

    arch = f"timm/{name}"
    side = size or get_arch(arch).input_size or 224
    model = build_model(arch, 1, "none", input_size=side)
    set_head(model, arch, torch.nn.Identity())  # as eic embed runs it
    model.eval()
    params = sum(p.numel() for p in model.parameters()) / 1e6
    images = torch.randn(batch, 3, side, side)
    with torch.inference_mode():
        model(images)  # warm-up: the first pass allocates
        started = time.perf_counter()
        for _ in range(batches):
            model(images)
        seconds = time.perf_counter() - started
    return params, side, batch * batches / seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="*", default=list(BACKBONES), help="timm model names (with their tag)")
    parser.add_argument("--size", type=int, default=None, help="input side for all (default: each model's own)")
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--batches", type=int, default=2, help="timed batches after one warm-up batch")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (this machine is shared)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(f"CPU, {args.threads} thread(s), batch {args.batch}, {args.batches} timed batches, random weights\n")
    print("| `--arch` | what | parameters | input | forward images/s |")
    print("| --- | --- | --- | --- | --- |")
    for name in args.models:
        params, side, rate = measure(name, args.size, args.batch, args.batches)
        what = BACKBONES.get(name, "")
        print(f"| `timm/{name}` | {what} | {params:.1f} M | {side} px | {rate:.1f} |", flush=True)


if __name__ == "__main__":
    main()
