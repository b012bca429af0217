"""The pilot's 10-fold protocol with a frozen backbone against fine-tuning, on the same images and machine.

Sandbox images (4 classes, drawn differently per record) are split into a training folder and a held-out
folder. On the training folder it runs a 10-fold ``eic train --method linear-probe`` (embedding included)
and a 10-fold ``eic train --method finetune`` at the same input size, and scores both runs on the held-out
folder with ``eic evaluate``. It also times ``eic embed`` against the backbone's forward pass on tensors
already in memory (target: embed at >= 0.9 of it).

    python benchmarks/embed.py [--arch efficientnet_lite0] [--input-size 128] [--per-level 20] [--epochs 3]
                               [--batch-size 32] [--device auto]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import polars as pl
import torch

from europeana_imgcls import DownloadConfig, EvaluateConfig, TrainConfig, download, evaluate, train
from europeana_imgcls.core.config import EmbedConfig, SandboxConfig
from europeana_imgcls.europeana.sandbox import Sandbox
from europeana_imgcls.modelling.embedding import embed, feature_model
from europeana_imgcls.modelling.runtime import autocast_dtype, resolve_device

VOCAB = {
    "map": "http://data.europeana.eu/concept/base/43",
    "painting": "http://data.europeana.eu/concept/base/47",
    "specimen": "http://data.europeana.eu/concept/base/167",
    "photograph": "http://data.europeana.eu/concept/base/48",
}


def forward_rate(arch: str, weights: str, size: int, batch: int, images: int, device: torch.device) -> float:
    """Images per second of the backbone alone, on normalised tensors already on ``device``, run the way
    ``eic embed`` runs it there (channels_last and autocast on CUDA) and copied back as embed copies."""
    model = feature_model(arch, weights).to(device)
    inputs = torch.randn(batch, 3, size, size, device=device)
    if device.type == "cuda":
        model = model.to(memory_format=torch.channels_last)
        inputs = inputs.contiguous(memory_format=torch.channels_last)
    dtype = autocast_dtype(device, True)
    with torch.inference_mode(), torch.autocast(device_type=device.type, dtype=dtype, enabled=dtype is not None):
        model(inputs).float().cpu()  # warm-up
        started = time.perf_counter()
        for _ in range(max(1, images // batch)):
            model(inputs).float().cpu()
    return max(1, images // batch) * batch / (time.perf_counter() - started)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", default="efficientnet_lite0")
    parser.add_argument("--weights", default="imagenet")
    parser.add_argument("--input-size", type=int, default=128)
    parser.add_argument("--per-level", type=int, default=20)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--decode", default="auto", choices=["auto", "cpu", "gpu"], help="where JPEGs are decoded")
    args = parser.parse_args()
    device = resolve_device(args.device)
    common = dict(
        arch=args.arch,
        weights=args.weights,
        input_size=args.input_size,
        batch_size=args.batch_size,
        device=args.device,
        decode=args.decode,
        quiet=True,
    )
    with (
        tempfile.TemporaryDirectory() as tmp,
        Sandbox(SandboxConfig(vocab=VOCAB, port=0, per_level=args.per_level)) as sb,
    ):
        root = Path(tmp)
        rows = [
            {"category": r.labels[0], "ID": r.id, "URL": sb.image_url(r)}
            for r in sb.catalogue
            if r.type == "IMAGE" and r.has_url and len(r.labels) == 1
        ]
        pl.DataFrame([r for i, r in enumerate(rows) if i % 5]).write_csv(root / "train.csv")
        pl.DataFrame(rows[::5]).write_csv(root / "held_out.csv")
        for name in ("train", "held_out"):
            download(DownloadConfig(table=root / f"{name}.csv", output_dir=root / name, quiet=True, max_side=256))
        started = time.perf_counter()
        embedded = embed(EmbedConfig(data_dir=root / "train", output=root / "emb.parquet", **common))
        embed_seconds = time.perf_counter() - started
        # Once more in the same process: the first call also pays for starting the device (a CUDA context,
        # kernels loaded on first use) and the loader workers, which a large collection spreads thin.
        again = embed(EmbedConfig(data_dir=root / "train", output=root / "again.parquet", **common))
        rate = forward_rate(args.arch, args.weights, args.input_size, args.batch_size, embedded.embedded, device)
        results = []
        for method, extra in (
            ("linear-probe", {"embeddings": root / "emb.parquet"}),
            ("finetune", {"epochs": args.epochs, "patience": 2, "gradcam_images": 0, "learning_rate": 1e-3}),
        ):
            started = time.perf_counter()
            train(
                TrainConfig(
                    data_dir=root / "train", output_dir=root / method, method=method, folds=10, **extra, **common
                )
            )
            seconds = time.perf_counter() - started + (embed_seconds if method == "linear-probe" else 0.0)
            held = evaluate(
                EvaluateConfig(
                    run=root / method,
                    eval_dir=root / "held_out",
                    output_dir=root / f"{method}-eval",
                    gallery=0,
                    quiet=True,
                )
            )
            results.append((method, seconds, held.summary["accuracy"]["mean"], held.summary["accuracy"]["std"]))
    where = torch.cuda.get_device_name(device) if device.type == "cuda" else f"{torch.get_num_threads()} CPU threads"
    print(
        f"{embedded.embedded} training images, {args.arch} ({args.weights}) at {args.input_size} px, "
        f"batch {args.batch_size}, {where}, torch {torch.__version__}"
    )
    print(
        f"eic embed: {embedded.images_per_second:.1f} images/s on the first call, "
        f"{again.images_per_second:.1f} on a second; forward pass alone: {rate:.1f} images/s "
        f"({again.images_per_second / rate:.2f})"
    )
    print("| 10-fold protocol | wall s | held-out accuracy (mean ± std over splits) |")
    print("| --- | --- | --- |")
    for method, seconds, mean, std in results:
        label = (
            "linear-probe (embedding included)"
            if method == "linear-probe"
            else f"finetune ({args.epochs} epochs at most)"
        )
        print(f"| {label} | {seconds:.1f} | {mean:.3f} ± {std:.3f} |")
    print(f"speed-up: {results[1][1] / results[0][1]:.1f}x")


if __name__ == "__main__":
    main()
