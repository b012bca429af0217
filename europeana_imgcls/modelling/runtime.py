"""Devices, seeds and torchrun: the parts of training and of PyTorch's labelling that depend on the machine
(``processes``: what a process that never loads torch knows of its place)."""

from __future__ import annotations

import os
import random
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import numpy as np
import torch
import torch.distributed as dist

from ..core.config import RuntimeSettings
from ..core.errors import ConfigError
from ..datasets.decoding import decode_device
from ..datasets.folders import ImageDataset, LoaderSettings, make_loader
from ..datasets.imageset import ImageSet
from .processes import Dist
from .processes import main_process as main_process  # where training and the commands have found it


@contextmanager
def distributed(device_name: str) -> Iterator[tuple[torch.device, Dist]]:
    """The device to use and this process's place under torchrun. A process group eic starts (NCCL on GPUs,
    gloo on CPUs) closes on exit; one the caller started is the caller's, and stays."""
    device = resolve_device(device_name)
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        yield device, Dist()
        return
    started = not dist.is_initialized()
    if started:
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
    try:
        yield device, Dist(rank=dist.get_rank(), world=dist.get_world_size())
    finally:
        if started and dist.is_initialized():
            dist.destroy_process_group()


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        if torch.cuda.is_available():
            local = int(os.environ.get("LOCAL_RANK", "0"))
            return torch.device("cuda", local % torch.cuda.device_count())
        if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"`device` {name}: CUDA is not available on this machine; use `device` cpu or auto")
    if device.type == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise ConfigError(f"`device` {name}: MPS is not available on this machine; use `device` cpu or auto")
    if device.type == "cuda" and device.index is None and "LOCAL_RANK" in os.environ:
        device = torch.device("cuda", int(os.environ["LOCAL_RANK"]) % torch.cuda.device_count())
    return device


def autocast_dtype(device: torch.device, amp: bool) -> torch.dtype | None:
    """bf16 where the GPU has it, else fp16; None (full precision) off CUDA or with amp off."""
    if not amp or device.type != "cuda":
        return None
    return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16


def default_workers(device: torch.device, requested: int | None) -> int:
    if requested is not None:
        return requested
    if device.type == "cpu":
        return 0  # the model needs every core; loading in the main process costs less than sharing them
    return min(8, os.cpu_count() or 1)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def inference_loader(
    images: ImageSet, size: int, device: torch.device, settings: RuntimeSettings, *, decode: bool = True
) -> Any:
    """The loader every pass over images in order uses (evaluate, predict, enrich, embed): ``settings``' batch
    size and workers, pinned memory and JPEGs decoded on ``device`` on CUDA (``decode`` False: always on the CPU;
    ``decode`` gpu without CUDA is refused either way)."""
    where = decode_device(settings.decode, device)
    reading = LoaderSettings(
        settings.batch_size,
        num_workers=default_workers(device, settings.num_workers),
        pin_memory=device.type == "cuda",
        decode_on=where if decode else None,
    )
    return make_loader(ImageDataset(images, size), reading, shuffle=False)
