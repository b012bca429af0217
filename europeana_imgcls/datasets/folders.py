"""Image folders to tensors: loaders, the decoded-image cache, the model's input (scanning class folders and making
folds: ``class_folders``, re-exported here)."""

from __future__ import annotations

import os
import random
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

# Torch-free, in ``class_folders``; what reads images into tensors (training, audit, export) finds them here too.
from .class_folders import DECODE_ERRORS as DECODE_ERRORS
from .class_folders import connected as connected
from .class_folders import decodes as decodes
from .class_folders import fold_groups as fold_groups
from .class_folders import list_images as list_images
from .class_folders import make_splits as make_splits
from .class_folders import sample as sample
from .decoding import (
    ENCODED,
    HFLIP,
    VFLIP,
    DeviceDecodedLoader,
    DeviceDecoder,
    collate,
    device_decodable,
    load_image,  # the one way an image is read for a model (training, inference, figures): imported from here too
)
from .imageset import UNREADABLE, ImageSet

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def _shm_free() -> int:
    try:
        stats = os.statvfs("/dev/shm")
    except OSError:
        return 0
    return stats.f_bavail * stats.f_frsize


def _hwc(image: Image.Image) -> torch.Tensor:
    """An RGB picture as an H x W x 3 uint8 tensor (the decoded-image cache's layout)."""
    return torch.from_numpy(np.asarray(image, dtype=np.uint8).copy())


def pixels_of(image: Image.Image) -> torch.Tensor:
    """An RGB picture as a 3 x H x W uint8 tensor, as loaders hand images over."""
    return _hwc(image).permute(2, 0, 1)


class ModelInput:
    """Turns a loader's batch of uint8 pixels (N x 3 x H x W) into the model's input: normalised float32
    on ``device``, channels_last on CUDA.

    Loaders hand over bytes, a quarter of the size of floats, and the arithmetic runs where the model runs.
    On a GPU that keeps the loader workers, the pinned-memory copies and the host-to-device copies from
    holding the model back; on the CPU it is the same arithmetic, done once per batch."""

    def __init__(self, mean: Sequence[float], std: Sequence[float], device: torch.device) -> None:
        self.device = device
        mean_, std_ = (torch.tensor(v, dtype=torch.float32).view(1, 3, 1, 1) for v in (mean, std))
        # (x / 255 - mean) / std as one multiply and one add.
        self.scale = (1.0 / (255.0 * std_)).to(device)
        self.shift = (-mean_ / std_).to(device)

    def __call__(self, pixels: torch.Tensor) -> torch.Tensor:
        if self.device.type == "cuda":
            pixels = pixels.to(self.device, non_blocking=True, memory_format=torch.channels_last)
        else:
            pixels = pixels.to(self.device)
        return pixels.float().mul_(self.scale).add_(self.shift)


class DecodedCache:
    """Resized images kept in shared memory after their first decode: later epochs skip JPEG decoding.

    One cache serves every split of a run (datasets say where their images sit with ``cache_rows``), and
    its buffers are shared with DataLoader workers, so each image is decoded once per run, not once per
    epoch, split and worker. Use ``for_images`` to respect a memory budget.
    """

    def __init__(self, count: int, size: int, shared: bool = True) -> None:
        self.pixels = torch.empty((count, size, size, 3), dtype=torch.uint8)
        self.filled = torch.zeros(count, dtype=torch.bool)
        if shared:  # loader workers are other processes: they must write where the trainer reads
            self.pixels.share_memory_()
            self.filled.share_memory_()

    @classmethod
    def for_images(cls, count: int, size: int, budget_mb: int, workers: int = 0) -> DecodedCache | None:
        """A cache when it fits the budget (and, shared with workers, the free space of /dev/shm)."""
        needed = count * size * size * 3
        if not needed or needed > budget_mb * 2**20:
            return None
        if workers and _shm_free() < needed * 1.2:  # a full /dev/shm kills workers with SIGBUS
            return None
        return cls(count, size, shared=workers > 0)


class ImageDataset(torch.utils.data.Dataset):
    """(pixels, label, index) triples: 3 x size x size uint8 pixels, which ``ModelInput`` normalises where
    the model runs; flips drawn from torch's RNG (seeded per worker).

    An image that cannot be decoded comes back as zeros labelled ``UNREADABLE``: the loss ignores it and
    evaluation lists it, rather than one broken file ending a long run.
    """

    def __init__(
        self,
        images: ImageSet,
        size: int,
        hflip: float = 0.0,
        vflip: float = 0.0,
        cache: DecodedCache | None = None,
        cache_rows: Sequence[int] | np.ndarray | None = None,
    ) -> None:
        self.images, self.size = images, size
        self.hflip, self.vflip, self.cache = hflip, vflip, cache
        # Where each image sits in a cache shared with other datasets (the parts of every split of a run).
        self.cache_rows = np.arange(len(images)) if cache_rows is None else np.asarray(cache_rows)
        # Set by make_loader when JPEGs are decoded on the device: items carry a file's bytes where they can.
        self.encoded = False

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> Any:
        label = self.images.labels[index]
        target = torch.from_numpy(np.asarray(label, dtype=np.float32)) if label.ndim else int(label)
        if self.encoded and not self._cached(index):
            data = _bytes(self.images.paths[index])
            if data is not None and device_decodable(data):  # decoded, resized and flipped on the device
                return torch.frombuffer(bytearray(data), dtype=torch.uint8), target, index, ENCODED | self._flips()
        tensor, readable = self.decoded_on_cpu(index)
        flips = self._flips() if readable else 0
        if not readable:
            target = self.unreadable_target(target)
        if flips & HFLIP:
            tensor = tensor.flip(2)
        if flips & VFLIP:
            tensor = tensor.flip(1)
        return (tensor, target, index, 0) if self.encoded else (tensor, target, index)

    def _flips(self) -> int:
        """Which flips this draw of the augmentation makes (drawn from torch's RNG, horizontal first)."""
        horizontal = HFLIP if self.hflip and torch.rand(()) < self.hflip else 0
        return horizontal | (VFLIP if self.vflip and torch.rand(()) < self.vflip else 0)

    def decoded_on_cpu(self, index: int) -> tuple[torch.Tensor, bool]:
        """3 x size x size uint8 pixels decoded as eic always has, and whether they could be (zeros if not)."""
        try:
            return self._pixels(index).permute(2, 0, 1), True
        except DECODE_ERRORS:
            return torch.zeros(3, self.size, self.size, dtype=torch.uint8), False

    @staticmethod
    def unreadable_target(target: Any) -> Any:
        return torch.full_like(target, UNREADABLE) if isinstance(target, torch.Tensor) else UNREADABLE

    def keep(self, index: int, pixels: torch.Tensor) -> None:
        """Put pixels decoded elsewhere (on the device: 3 x size x size) into the cache, for the next epochs."""
        if self.cache is not None:
            row = int(self.cache_rows[index])
            self.cache.pixels[row] = pixels.permute(1, 2, 0).cpu()
            self.cache.filled[row] = True

    def _cached(self, index: int) -> bool:
        return self.cache is not None and bool(self.cache.filled[int(self.cache_rows[index])])

    def _pixels(self, index: int) -> torch.Tensor:
        """H x W x 3 uint8, from the cache when an earlier epoch decoded it."""
        row = int(self.cache_rows[index])
        if self.cache is not None and self.cache.filled[row]:
            return self.cache.pixels[row]
        pixels = _hwc(load_image(self.images.paths[index], self.size))
        if self.cache is not None:
            self.cache.pixels[row] = pixels
            self.cache.filled[row] = True
        return pixels


@dataclass(frozen=True)
class LoaderSettings:
    """How a loader reads: batches of ``batch_size``, ``num_workers`` worker processes (0: the main process),
    ``seed`` for its shuffle and its workers' draws, pinned memory (for CUDA), and ``decode_on``: the device that
    decodes the JPEGs (None: the workers decode every image). A split's three loaders share them."""

    batch_size: int
    num_workers: int = 0
    seed: int = 0
    pin_memory: bool = False
    decode_on: torch.device | None = None


def make_loader(
    dataset: torch.utils.data.Dataset,
    settings: LoaderSettings,
    *,
    shuffle: bool,
    sampler: torch.utils.data.Sampler | None = None,
    drop_last: bool = False,
) -> Any:
    """A DataLoader of (pixels, targets, indices) batches; with ``settings.decode_on`` (an ImageDataset), one
    whose JPEGs the workers read as bytes and that device decodes (``decoding.py``): the batches come on that
    device."""
    generator = torch.Generator()
    generator.manual_seed(settings.seed)
    decode_on, workers = settings.decode_on, settings.num_workers
    encoded = decode_on is not None and isinstance(dataset, ImageDataset)
    if isinstance(dataset, ImageDataset):
        dataset.encoded = encoded
    loader = torch.utils.data.DataLoader(
        dataset,
        batch_size=settings.batch_size,
        shuffle=shuffle and sampler is None,
        sampler=sampler,
        num_workers=workers,
        pin_memory=settings.pin_memory,
        generator=generator,
        worker_init_fn=_seed_worker,
        drop_last=drop_last,
        persistent_workers=workers > 0,
        prefetch_factor=4 if workers > 0 else None,
        collate_fn=collate if encoded else None,
    )
    if encoded:
        assert decode_on is not None and isinstance(dataset, ImageDataset)
        return DeviceDecodedLoader(loader, DeviceDecoder(dataset, decode_on))
    return loader


def _bytes(path: Path) -> bytes | None:
    try:
        return path.read_bytes()
    except OSError:
        return None


def _seed_worker(worker_id: int) -> None:
    seed = torch.initial_seed() % 2**32
    random.seed(seed)
    np.random.seed(seed)
