"""Grad-CAM figures per second: ``eic predict --gradcam-dir`` against the same prediction without figures.

Trains a one-split resnet18 (128 px, from scratch: weights do not change the cost) on sandbox drawings,
then labels ``--images`` images twice, with and without figures, and prints what the figures cost:
figures/s = images / (seconds with figures - seconds without). Target: at least 40 figures/s on 2 cores.

    python benchmarks/figures.py [--images 400] [--input-size 128] [--top-k 1]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from europeana_imgcls import PredictConfig, TrainConfig, predict, train
from europeana_imgcls.europeana.sandbox import draw_image


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=400)
    parser.add_argument("--input-size", type=int, default=128)
    parser.add_argument("--top-k", type=int, default=1)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        for k, name in enumerate(("map", "painting", "specimen")):
            (root / "train" / name).mkdir(parents=True)
            for j in range(12):
                draw_image((k,), 3, seed=100 * k + j, size=(160, 120)).save(root / "train" / name / f"{j}.jpg")
        (root / "new").mkdir()
        for j in range(args.images):
            draw_image((j % 3,), 3, seed=10_000 + j, size=(320, 240)).save(root / "new" / f"{j}.jpg")
        train(
            TrainConfig(
                data_dir=root / "train",
                output_dir=root / "run",
                weights="none",
                epochs=1,
                folds=3,
                crossvalidation=False,
                input_size=args.input_size,
                gradcam_images=0,
                quiet=True,
            )
        )
        common = dict(run=root / "run", inputs=[str(root / "new")], top_k=args.top_k, quiet=True)
        seconds = {}
        for label, extra in (("without figures", {}), ("with figures", {"gradcam_dir": root / "cams"})):
            started = time.perf_counter()
            predict(PredictConfig(**common, output=root / f"{len(seconds)}.csv", **extra))
            seconds[label] = time.perf_counter() - started
        figures = len(list((root / "cams").glob("*.jpg")))
    cost = seconds["with figures"] - seconds["without figures"]
    print(f"{args.images} images, resnet18 at {args.input_size} px, top-k {args.top_k}")
    print("| run | seconds | images/s |")
    print("| --- | --- | --- |")
    for label, value in seconds.items():
        print(f"| predict {label} | {value:.1f} | {args.images / value:.1f} |")
    print(f"| figures alone ({figures}) | {cost:.1f} | {figures / cost:.1f} figures/s |")


if __name__ == "__main__":
    main()
