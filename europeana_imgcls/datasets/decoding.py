"""Images decoded for a model: ``load_image``, the one CPU path (training, evaluation, predict, enrich, embed,
export's checks and calibration, the figures), and JPEGs decoded where the model runs (nvJPEG on CUDA, through
torchvision): loader workers read bytes, the device decodes a batch at once, resizes and flips it.

On the CPU a JPEG is decoded at the scale its resize needs: libjpeg scales in the DCT domain by 1/2, 1/4 or 1/8
(Pillow's ``Image.draft``), and ``load_image`` asks for the smallest scale whose picture is still at least the
resize's target on both sides, so the resize that follows only ever shrinks. A 1400 x 2100 original read for a
224 px model decodes at 1/4 (350 x 525): a sixteenth of the pixels, the same labels
(``benchmarks/decode_agreement.py --scales`` measures both). Other formats decode whole, as before.

A GPU outruns the CPU cores that decode for it: on an H200, resnet18 at 128 px trained at 5,754 images/s from
decoded images but 1,771 images/s while 8 workers decoded 512 px JPEGs. With ``decode`` auto (on CUDA) or gpu,
a worker hands over the file's bytes instead of pixels when the device decoder takes it as it is: a baseline
or extended JPEG in RGB or greyscale without an EXIF rotation. Anything else (PNG, WebP, CMYK, progressive, a
rotated photograph, an image the decode cache already holds) is decoded by the worker as before; an image the
device refuses is decoded on the CPU in the main process; either way, exactly as without device decoding. An
image neither can decode is unreadable, as before.

What the device decodes is resized with torch's antialiased bilinear filter, where the CPU path decodes at a
reduced DCT scale and resizes with Pillow's: the pixels differ by a few levels, the predictions rarely
(``benchmarks/gpu.sh`` measures the agreement).

The CPU path imports no torch: the runtimes that label with an exported model (onnx, openvino) read their images
through it without loading torch. torch is imported where a batch is collated or decoded on the device.
"""

from __future__ import annotations

import io
import logging
import warnings
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from PIL import Image, ImageOps

from ..acquisition.images import to_rgb
from ..core.errors import ConfigError

if TYPE_CHECKING:
    import torch


class Decodable(Protocol):
    """What the decoder needs of its dataset (``folders.ImageDataset``): the size, the CPU path, the cache."""

    size: int

    def decoded_on_cpu(self, index: int) -> tuple[torch.Tensor, bool]: ...

    def unreadable_target(self, target: Any) -> Any: ...

    def keep(self, index: int, pixels: torch.Tensor) -> None: ...


log = logging.getLogger(__name__)
ENCODED, HFLIP, VFLIP = 1, 2, 4  # bits of an item's code: its payload is the file's bytes; flips still to do
_ORIENTATION = 0x0112
_TRANSPOSED = (5, 6, 7, 8)  # EXIF orientations shown turned by a quarter: width and height swap


def load_image(path: Path, size: int, keep_aspect: bool = False, *, draft: bool = True) -> Image.Image:
    """An RGB picture of ``size`` x ``size``, upright (its EXIF orientation applied): what a model reads, the whole
    picture squeezed to the square as every model of eic is trained (no crop); or with ``keep_aspect`` the
    largest that fits that square at its own aspect ratio (what people look at). A JPEG is decoded at the
    smallest DCT scale that still covers that size (``draft`` False: at full size, what benchmarks compare)."""
    with Image.open(path) as image:
        target = resized_size(*upright_size(image), size, keep_aspect)
        rgb = decode(image, target if draft else None)
    if rgb.size == target:  # a JPEG whose 1/8 scale is the target exactly, or a picture already that size
        return rgb
    # reducing_gap: Pillow first shrinks by whole factors in blocks, then filters the rest (as fast, as sharp)
    return rgb.resize(target, Image.Resampling.BILINEAR, reducing_gap=2.0)


def upright_size(image: Image.Image) -> tuple[int, int]:
    """Width and height of a picture as shown (its EXIF orientation applied), from its header."""
    width, height = image.size
    return (height, width) if image.getexif().get(_ORIENTATION, 1) in _TRANSPOSED else (width, height)


def resized_size(width: int, height: int, size: int, keep_aspect: bool) -> tuple[int, int]:
    """What a ``width`` x ``height`` picture is resized to: ``size`` x ``size``, or with ``keep_aspect`` the
    largest that fits in that square (rounded as ``ImageOps.contain`` rounds)."""
    if not keep_aspect or width == height:
        return size, size
    if width > height:
        return size, max(1, round(height / width * size))
    return max(1, round(width / height * size)), size


def decode(image: Image.Image, target: tuple[int, int] | None) -> Image.Image:
    """``image`` (just opened) decoded, upright, in RGB; a JPEG at the smallest DCT scale (1/8, 1/4, 1/2 or 1)
    whose picture is at least ``target`` (upright width, height) on both sides, so a resize to ``target`` only
    shrinks (None: at full size)."""
    if target is not None and image.format == "JPEG":
        width, height = target
        turned = image.getexif().get(_ORIENTATION, 1) in _TRANSPOSED
        # Pillow takes the largest scale s in 8, 4, 2, 1 with s * width <= the stored width (and so for the
        # height): the picture it decodes, ceil(stored / s) a side, is never smaller than what was asked.
        image.draft("RGB", (height, width) if turned else (width, height))
    upright = ImageOps.exif_transpose(image) or image
    return to_rgb(upright)


def decode_device(decode: str, device: torch.device) -> torch.device | None:
    """Where JPEGs are decoded: ``device`` for gpu (or auto on CUDA), None for the loader workers' CPU path."""
    if decode == "gpu" and device.type != "cuda":
        raise ConfigError(f"`decode` gpu needs a CUDA device (this run is on {device.type}): use auto or cpu")
    return device if decode != "cpu" and device.type == "cuda" else None


def device_decodable(data: bytes) -> bool:
    """Whether a device decoder takes these bytes as they are and gives what Pillow's path gives."""
    if data[:3] != b"\xff\xd8\xff" or data.rstrip(b"\0")[-2:] != b"\xff\xd9":
        return False  # not a JPEG, or one cut short (no end marker), which the CPU path calls unreadable
    try:
        with Image.open(io.BytesIO(data)) as image:
            return (
                image.format == "JPEG"
                and image.mode in ("RGB", "L")  # not CMYK or YCCK
                and not image.info.get("progressive")
                and not image.info.get("progression")
                and image.getexif().get(_ORIENTATION, 1) == 1  # an EXIF rotation is applied on the CPU path
            )
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError):
        return False


def collate(
    items: Sequence[tuple[torch.Tensor, Any, int, int]],
) -> tuple[list[torch.Tensor], Any, torch.Tensor, torch.Tensor]:
    """A batch of mixed payloads (bytes of different lengths, decoded pixels): kept as a list."""
    import torch

    payloads, targets, index, codes = zip(*items, strict=True)
    return (
        list(payloads),
        torch.utils.data.default_collate(list(targets)),
        torch.tensor(index),
        torch.tensor(codes),
    )


class DeviceDecoder:
    """Turns a batch of ``collate`` into what a loader hands over, on the device: N x 3 x size x size uint8
    pixels, the targets (an image nobody could decode marked unreadable) and the indices."""

    def __init__(self, dataset: Decodable, device: torch.device) -> None:
        self.dataset, self.device, self.size = dataset, device, dataset.size
        self._warned = False

    def __call__(
        self, batch: tuple[list[torch.Tensor], Any, torch.Tensor, torch.Tensor]
    ) -> tuple[torch.Tensor, Any, torch.Tensor]:
        import torch

        payloads, targets, index, codes = batch
        flags = codes.tolist()
        pixels = torch.empty(len(payloads), 3, self.size, self.size, dtype=torch.uint8, device=self.device)
        encoded = [i for i, code in enumerate(flags) if code & ENCODED]
        decoded = dict(zip(encoded, self._decode([payloads[i] for i in encoded]), strict=True))
        for i, code in enumerate(flags):
            if not code & ENCODED:  # decoded (and flipped) by the worker
                pixels[i] = payloads[i].to(self.device, non_blocking=True)
                continue
            image = decoded[i]
            if image is None:  # refused by the device: the CPU path, as without device decoding
                image, readable = self.dataset.decoded_on_cpu(int(index[i]))
                if not readable:
                    targets[i] = self.dataset.unreadable_target(targets[i])
                pixels[i] = image.to(self.device)
            else:
                pixels[i] = self._resized(image)
                self.dataset.keep(int(index[i]), pixels[i])
            if code & HFLIP:
                pixels[i] = pixels[i].flip(2)
            if code & VFLIP:
                pixels[i] = pixels[i].flip(1)
        return pixels, targets, index

    def _decode(self, data: list[torch.Tensor]) -> list[torch.Tensor | None]:
        """The batch decoded at once; if the device refuses it, image by image, None for each it refuses."""
        if not data:
            return []
        try:
            return list(_decode_jpeg(data, self.device))
        except RuntimeError:
            results: list[torch.Tensor | None] = []
            for one in data:
                try:
                    results.append(_decode_jpeg(one, self.device))
                except RuntimeError:
                    results.append(None)
            if not self._warned and all(r is None for r in results):
                log.warning("the device decodes none of these JPEGs: they are decoded on the CPU (`decode` cpu)")
                self._warned = True
            return results

    def _resized(self, image: torch.Tensor) -> torch.Tensor:
        """3 x H x W uint8 to 3 x size x size uint8, antialiased as Pillow's resize is."""
        import torch
        import torch.nn.functional as F

        if tuple(image.shape[1:]) == (self.size, self.size):
            return image
        scaled = F.interpolate(
            image[None].float(), size=(self.size, self.size), mode="bilinear", antialias=True, align_corners=False
        )
        return scaled[0].round_().clamp_(0, 255).to(torch.uint8)


def _decode_jpeg(data: Any, device: torch.device) -> Any:
    """torchvision's nvJPEG decoder (``decode_jpeg``). torchvision 0.29 calls its image codecs deprecated in favour
    of TorchCodec's; they are still there, and they are what torch 2.14's own wheels bring: the warning is not
    the user's to act on."""
    import torch
    import torchvision.io as tvio  # type: ignore[import-untyped]  # first use only: few runs decode on a device

    if device.type == "cuda":
        # nvJPEG's hardware decoder may write into memory the current stream still uses (pytorch/vision#9606):
        # whatever the last batch asked of the device is finished first.
        torch.cuda.current_stream(device).synchronize()
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=DeprecationWarning, message=".*TorchCodec.*")
        return tvio.decode_jpeg(data, mode=tvio.ImageReadMode.RGB, device=device)


class DeviceDecodedLoader:
    """A DataLoader whose batches are decoded on the device as they come (see ``make_loader``)."""

    def __init__(self, loader: torch.utils.data.DataLoader, decoder: DeviceDecoder) -> None:
        self.loader, self.decoder = loader, decoder

    @property
    def sampler(self) -> Any:
        return self.loader.sampler

    @property
    def dataset(self) -> Any:
        return self.loader.dataset

    def __len__(self) -> int:
        return len(self.loader)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, Any, torch.Tensor]]:
        for batch in self.loader:
            yield self.decoder(batch)
