"""Inference speed by runtime: PyTorch eager against ONNX Runtime (float32, int8), on the same images and machine.

Trains a one-split model (resnet18 at 128 px from scratch by default: weights do not change the cost; pass
``--arch efficientnet_lite0 --weights imagenet`` for a model whose margins are those of real weights), exports
it (float32, and int8 static and dynamic), then prints:

- forward-only images/s of each runtime on decoded batches of 32 (in one process);
- ``eic predict`` end to end with each runtime (separate CLI runs, as a user sees them: start-up, decoding,
  the model, the output), and each one's top-1 agreement with ``--runtime torch``;
- what Grad-CAM figures cost: ``eic predict --gradcam-dir`` on ``--figures`` images against the same run
  without figures (goal: at least 40 figures/s on 2 cores, i.e. no more than 5 s for 200 images).

    python benchmarks/inference.py [--images 1000] [--figures 200] [--input-size 128] [--repeats 2]
"""

from __future__ import annotations

import argparse
import csv
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from europeana_imgcls import TrainConfig, train
from europeana_imgcls.core.config import ExportConfig
from europeana_imgcls.datasets.folders import load_image, pixels_of
from europeana_imgcls.europeana.sandbox import draw_image
from europeana_imgcls.outputs.export import export
from europeana_imgcls.outputs.inference import Ensemble, load_run
from europeana_imgcls.outputs.onnx_runtime import session

CLASSES = ("map", "painting", "specimen")
CPU = torch.device("cpu")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=1000)
    parser.add_argument("--figures", type=int, default=200)
    parser.add_argument("--input-size", type=int, default=128)
    parser.add_argument("--arch", default="resnet18")
    parser.add_argument("--weights", default="none")
    parser.add_argument("--repeats", type=int, default=2, help="CLI runs per row; the median is printed")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        _draw(root, args.images)
        train(
            TrainConfig(
                data_dir=root / "train",
                output_dir=root / "run",
                arch=args.arch,
                weights=args.weights,
                epochs=2,
                folds=3,
                crossvalidation=False,
                input_size=args.input_size,
                gradcam_images=0,
                quiet=True,
            )
        )
        exports = {
            "onnx float32": root / "fp32",
            "onnx int8 static": root / "static",
            "onnx int8 dynamic": root / "dyn",
        }
        for (_, folder), how in zip(exports.items(), ("none", "static", "dynamic"), strict=True):
            export(ExportConfig(run=root / "run", output=folder, quantize=how, quiet=True))  # type: ignore[arg-type]
        forward = _forward(root, exports, args.input_size)
        end_to_end, agreement = _end_to_end(root, exports, args.repeats)
        figures = _figures(root, args.figures, args.repeats)
    print(
        f"{args.images} images of 320 x 400 px, {args.arch} ({args.weights} weights) at {args.input_size} px; "
        f"{os.cpu_count()} CPUs; torch {torch.__version__}"
    )
    print(
        "| runtime | forward only, images/s | eic predict end to end, s | images/s | vs torch | same top-1 as torch |"
    )
    print("| --- | --- | --- | --- | --- | --- |")
    base = args.images / end_to_end["torch"]
    for name in ("torch", *exports):
        rate = args.images / end_to_end[name]
        print(
            f"| {name} | {forward[name]:.0f} | {end_to_end[name]:.1f} | {rate:.0f} | {rate / base:.2f}x | "
            f"{agreement[name]:.2%} |"
        )
    without, with_figures = figures
    cost = with_figures - without
    print(
        f"\nGrad-CAM: eic predict on {args.figures} images {without:.1f} s without figures, {with_figures:.1f} s with: "
        f"the figures cost {cost:.1f} s, {args.figures / max(cost, 1e-9):.0f} figures/s"
    )


def _draw(root: Path, images: int) -> None:
    for k, name in enumerate(CLASSES):
        (root / "train" / name).mkdir(parents=True)
        for j in range(16):
            draw_image((k,), 3, seed=100 * k + j, size=(320, 400)).save(root / "train" / name / f"{j}.jpg")
    (root / "new").mkdir()
    for j in range(images):
        draw_image((j % 3,), 3, seed=10_000 + j, size=(320, 400)).save(root / "new" / f"{j}.jpg", quality=90)


def _forward(root: Path, exports: dict[str, Path], size: int) -> dict[str, float]:
    """Images/s of the model alone on decoded batches of 32, each runtime in this process."""
    paths = sorted((root / "new").glob("*.jpg"))[:256]
    pixels = torch.from_numpy(np.stack([pixels_of(load_image(p, size)).numpy() for p in paths]))
    models = Ensemble(load_run(root / "run", CPU, "best"))
    runners = {"torch": lambda b: models.probabilities(b)}
    for name, folder in exports.items():
        runner = session(folder / "split_0.onnx", CPU)
        runners[name] = lambda b, r=runner: r.run(["logits"], {"pixels": b.numpy()})
    rates = {}
    for name, run in runners.items():
        run(pixels[:32])  # warm
        started = time.perf_counter()
        for i in range(0, len(pixels), 32):
            run(pixels[i : i + 32])
        rates[name] = len(pixels) / (time.perf_counter() - started)
    return rates


def _eic(*args: str) -> float:
    started = time.perf_counter()
    subprocess.run([sys.executable, "-m", "europeana_imgcls", *args, "--quiet"], check=True, capture_output=True)
    return time.perf_counter() - started


def _top1(path: Path) -> dict[str, str]:
    with path.open(newline="") as handle:
        return {row["image"]: row["prediction"] for row in csv.DictReader(handle)}


def _end_to_end(root: Path, exports: dict[str, Path], repeats: int) -> tuple[dict[str, float], dict[str, float]]:
    """Median seconds of ``eic predict`` over the new images with each runtime; top-1 agreement with torch."""
    seconds, agreement = {}, {}
    flags = {"torch": [], **{name: ["--runtime", "onnx", "--onnx-model", str(f)] for name, f in exports.items()}}
    for name, extra in flags.items():
        times = []
        for r in range(repeats):
            out = root / f"{name.replace(' ', '_')}_{r}.csv"
            times.append(_eic("predict", str(root / "run"), str(root / "new"), "-o", str(out), *extra))
        seconds[name] = statistics.median(times)
        ours, theirs = _top1(out), _top1(root / "torch_0.csv")
        agreement[name] = sum(ours[k] == theirs[k] for k in theirs) / len(theirs)
    return seconds, agreement


def _figures(root: Path, count: int, repeats: int) -> tuple[float, float]:
    subset = root / "figures_in"
    subset.mkdir()
    for path in sorted((root / "new").glob("*.jpg"), key=lambda p: int(p.stem))[:count]:
        (subset / path.name).write_bytes(path.read_bytes())
    runs: dict[bool, list[float]] = {False: [], True: []}
    for r in range(repeats):
        for drawn in (False, True):
            extra = ["--gradcam-dir", str(root / f"cams_{r}")] if drawn else []
            runs[drawn].append(
                _eic("predict", str(root / "run"), str(subset), "-o", str(root / f"f{drawn}{r}.csv"), *extra)
            )
    return statistics.median(runs[False]), statistics.median(runs[True])


if __name__ == "__main__":
    main()
