"""Training throughput: the full eic data pipeline and loop next to the same loop on tensors in memory.

For resnet18 at 128 px (by default) it times ``train_one_epoch`` on batches read from JPEG folders the
way ``eic train`` reads them (Pillow draft decoding, resize, flips, normalisation, DataLoader), once on
512 px files as ``eic download`` saves them and once on ~2 MP originals, and on the same number of
batches already in memory. The ratio says whether the data pipeline ever holds the model back
(target >= 0.9). As in ``eic train``, resized images are kept in a shared cache after their first decode,
so the first epoch shows the decoding pipeline and the second the cached one. Peak RSS covers this
process and its loader workers.

    python benchmarks/train.py [--arch resnet18] [--input-size 128] [--batch-size 32] [--batches 12]
                               [--device auto] [--workers N ...]
"""

from __future__ import annotations

import argparse
import resource
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import nn

from europeana_imgcls.datasets.decoding import decode_device
from europeana_imgcls.datasets.folders import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    DecodedCache,
    ImageDataset,
    LoaderSettings,
    ModelInput,
    make_loader,
)
from europeana_imgcls.datasets.imageset import ImageSet
from europeana_imgcls.datasets.tasks import task_for
from europeana_imgcls.modelling.models import build_model
from europeana_imgcls.modelling.runtime import autocast_dtype, default_workers, resolve_device
from europeana_imgcls.modelling.training import Forward, Training, train_one_epoch

TASK = task_for("single-label")


def photo(size: tuple[int, int], seed: int) -> Image.Image:
    rng = np.random.default_rng(seed)
    width, height = size
    coarse = rng.integers(0, 256, (height // 48 + 2, width // 48 + 2, 3), dtype=np.uint8)
    base = np.asarray(Image.fromarray(coarse).resize((width, height), Image.Resampling.BICUBIC), np.int16)
    base += rng.integers(-10, 11, base.shape, dtype=np.int16)
    return Image.fromarray(np.clip(base, 0, 255).astype(np.uint8))


def save_photo(path: Path, size: tuple[int, int], seed: int) -> None:
    photo(size, seed).save(path, quality=90)


def make_folder(root: Path, count: int, size: tuple[int, int], classes: int = 4) -> ImageSet:
    paths = [root / f"class_{i % classes}" / f"{i}.jpg" for i in range(count)]
    for k in range(classes):
        (root / f"class_{k}").mkdir(parents=True, exist_ok=True)
    # Drawing 2 MP pictures one by one would take longer than the timings on a many-core GPU machine.
    with ProcessPoolExecutor() as pool:
        list(pool.map(save_photo, paths, [size] * count, range(count), chunksize=16))
    return ImageSet(paths, np.arange(count) % classes, [f"class_{k}" for k in range(classes)], task_for("single-label"))


class InMemory:
    """Batches already decoded, as loaders hand them over (uint8 pixels): what the loop alone can do."""

    def __init__(self, batches: int, batch_size: int, size: int, classes: int) -> None:
        generator = torch.Generator().manual_seed(0)
        self.data = [
            (
                torch.randint(0, 256, (batch_size, 3, size, size), dtype=torch.uint8, generator=generator),
                torch.randint(0, classes, (batch_size,), generator=generator),
                torch.arange(batch_size),
            )
            for _ in range(batches)
        ]

    def __iter__(self):
        return iter(self.data)

    def __len__(self) -> int:
        return len(self.data)


def timed(model: nn.Module, loader, device: torch.device, amp: bool, warm_up: bool = True) -> float:
    criterion = nn.CrossEntropyLoss()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-4)
    dtype = autocast_dtype(device, amp)
    scaler = torch.amp.GradScaler("cuda") if dtype == torch.float16 else None
    training = Training(model, criterion, optimizer)
    forward = Forward(ModelInput(IMAGENET_MEAN, IMAGENET_STD, device), TASK, dtype)
    if warm_up:
        train_one_epoch(training, [next(iter(loader))], forward, scaler)
    if device.type == "cuda":
        torch.cuda.synchronize()
    stats = train_one_epoch(training, loader, forward, scaler)
    if device.type == "cuda":
        torch.cuda.synchronize()
    return stats.images_per_second


def peak_mb() -> float:
    own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    children = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    return (own + children) / 1024


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", default="resnet18")
    parser.add_argument("--input-size", type=int, default=128)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--batches", type=int, default=12)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--amp", action=argparse.BooleanOptionalAction, default=True)
    parser.add_argument(
        "--decode", nargs="*", default=["cpu"], choices=["cpu", "gpu"], help="where JPEGs are decoded: cpu, gpu or both"
    )
    parser.add_argument(
        "--workers",
        type=int,
        nargs="*",
        default=None,
        help="loader worker counts to try; default: eic's default for the device",
    )
    args = parser.parse_args()
    device = resolve_device(args.device)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    count = args.batches * args.batch_size
    work = Path(tempfile.mkdtemp(prefix="eic-train-bench-"))
    sets = {
        "512 px files (eic download)": make_folder(work / "small", count, (512, 384)),
        "~2 MP originals": make_folder(work / "large", count, (1632, 1224)),
    }
    model = build_model(args.arch, 4, "none").to(device)
    if device.type == "cuda":
        model = model.to(memory_format=torch.channels_last)
    memory = timed(model, InMemory(args.batches, args.batch_size, args.input_size, 4), device, args.amp)
    workers = args.workers if args.workers is not None else [default_workers(device, None)]
    print(
        f"{args.arch} at {args.input_size} px, batch {args.batch_size}, {args.batches} batches, device {device}, "
        f"torch threads {torch.get_num_threads()}, python {sys.version.split()[0]}"
    )
    print(
        f"{'images':<30} {'decode':>6} {'workers':>7} {'epoch':>12} {'pipeline img/s':>15} {'in-memory img/s':>16} "
        f"{'ratio':>6} {'1st batch s':>12} {'peak MB':>8}"
    )
    for name, images in sets.items():
        for decode in args.decode:
            for n in workers:
                # As eic train does: decoded images stay in a shared cache, so only the first epoch decodes.
                cache = DecodedCache(len(images), args.input_size, shared=n > 0)
                dataset = ImageDataset(images, args.input_size, hflip=0.5, cache=cache)
                reading = LoaderSettings(
                    args.batch_size,
                    num_workers=n,
                    pin_memory=device.type == "cuda",
                    decode_on=decode_device(decode, device),
                )
                loader = make_loader(dataset, reading, shuffle=True)
                for epoch in ("1 (decodes)", "2 (cached)"):
                    take = _Take(loader, args.batches)
                    rate = timed(model, take, device, args.amp, warm_up=False)
                    print(
                        f"{name:<30} {decode:>6} {n:>7} {epoch:>12} {rate:>15.1f} {memory:>16.1f} "
                        f"{rate / memory:>6.2f} {take.first:>12.2f} {peak_mb():>8.0f}"
                    )


class _Take:
    """The first ``n`` batches of a loader, as a loader-like iterable; ``first`` is how long the first batch took
    to come (in the first epoch: starting the loader workers, then decoding one batch)."""

    def __init__(self, loader, n: int) -> None:
        self.loader, self.n, self.first = loader, n, 0.0

    def __iter__(self):
        started = time.perf_counter()
        for i, batch in enumerate(self.loader):
            if i >= self.n:
                break
            if i == 0:
                self.first = time.perf_counter() - started
            yield batch

    def __len__(self) -> int:
        return self.n


if __name__ == "__main__":
    main()
