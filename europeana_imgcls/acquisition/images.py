"""Turning downloaded bytes into a clean RGB JPEG: the CPU-bound half of ``eic download``.

Runs in worker threads: Pillow releases the GIL while decoding, resizing and encoding.
"""

from __future__ import annotations

import contextlib
import functools
import io
import math
import os
import stat
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from PIL import Image, ImageFile, ImageOps, UnidentifiedImageError

from ..core.tables import atomic_path

# Formats a museum serves images in. Anything else (EPS, PSD, ICO, ...) is refused before a decoder sees it:
# Pillow would otherwise hand an EPS body from the network to Ghostscript.
ALLOWED_FORMATS = ("JPEG", "MPO", "PNG", "GIF", "TIFF", "WEBP", "BMP", "JPEG2000")
MAX_JPEG_SCANS = 300
_BYTES_PER_PIXEL = {"1": 1, "L": 1, "P": 1, "LA": 2, "PA": 2, "RGB": 3, "YCbCr": 3, "LAB": 3, "HSV": 3}


@functools.cache
def _formats() -> tuple[str, ...]:
    """The allowed formats this Pillow can open (JPEG 2000 needs OpenJPEG, for one)."""
    Image.init()
    return tuple(f for f in ALLOWED_FORMATS if f in Image.OPEN)


class ImageRejected(Exception):
    """The bytes are not an image that may be saved; the message is the short reason."""


class DecodeBudget:
    """Memory that the decodes running at once may hold together. A decode waits for room, so eight
    threads each opening a 100-megapixel PNG do not take gigabytes; one that alone exceeds the budget is
    refused. Thread-safe: the download's decoding threads share one."""

    def __init__(self, limit_bytes: int) -> None:
        self.limit, self.used = limit_bytes, 0
        self._room = threading.Condition()

    @contextmanager
    def hold(self, need: int) -> Iterator[None]:
        if need > self.limit:
            raise ImageRejected(
                f"too large to decode within the memory budget (~{need >> 20} MiB needed, "
                f"{self.limit >> 20} MiB allowed)"
            )
        with self._room:
            self._room.wait_for(lambda: self.used + need <= self.limit)
            self.used += need
        try:
            yield
        finally:
            with self._room:
                self.used -= need
                self._room.notify_all()


def save_normalised(
    data: bytes, target: Path, *, max_side: int, max_pixels: int, quality: int, budget: DecodeBudget | None = None
) -> tuple[int, int]:
    """Decode ``data``, make it an upright RGB image no larger than ``max_side``, save as JPEG.

    The file appears under ``target`` only when complete (temporary name, then rename).
    Returns the saved size. Raises ``ImageRejected`` for anything that cannot be decoded, and
    ``OSError`` only when the file cannot be written.
    """
    try:
        image = _decode(data, max_side=max_side, max_pixels=max_pixels, budget=budget)
    except ImageRejected:
        raise
    except Exception as exc:  # a decoder's surprise is this image's failure, never the run's
        raise ImageRejected(f"undecodable ({type(exc).__name__}: {_short(exc)})") from None
    with atomic_path(target) as tmp:
        image.save(tmp, "JPEG", quality=quality)
    return image.size


def _decode(data: bytes, *, max_side: int, max_pixels: int, budget: DecodeBudget | None) -> Image.Image:
    try:
        image = _open(data)
    except Image.DecompressionBombError:
        raise ImageRejected("too many pixels") from None
    except (UnidentifiedImageError, OSError, ValueError):
        raise ImageRejected("not an image") from None
    width, height = image.size
    if width * height > max_pixels:
        raise ImageRejected(f"too many pixels ({width}x{height})")
    # A progressive JPEG is decoded over the whole picture once per scan: thousands of tiny repeated scans make a
    # small file cost minutes of a worker. Encoders write about ten (mozjpeg's searches, some twenty); a start of
    # scan marker cannot occur inside the entropy-coded data (0xFF there is followed by 0x00), so this counts them.
    scans = data.count(b"\xff\xda") if image.format == "JPEG" else 0
    if scans > MAX_JPEG_SCANS:
        raise ImageRejected(f"too many JPEG scans ({scans})")
    if max_side and max(width, height) > max_side and image.format == "JPEG":
        # JPEG draft mode decodes at 1/2, 1/4 or 1/8 scale directly: far less work than full size.
        scale = max_side / max(width, height)
        image.draft("RGB", (max(1, int(width * scale)), max(1, int(height * scale))))
    # The decoded image, its RGB conversion and the resize work copy can all be alive at once.
    need = image.size[0] * image.size[1] * (_BYTES_PER_PIXEL.get(image.mode, 4) + 3 + 3)
    with budget.hold(need) if budget is not None else contextlib.nullcontext():
        try:
            image.load()
        except OSError as exc:
            raise ImageRejected("truncated" if "truncated" in str(exc) else f"undecodable ({_short(exc)})") from None
        image = ImageOps.exif_transpose(image) or image
        image = to_rgb(image, max_side)
        if max_side and max(image.size) > max_side:
            image.thumbnail((max_side, max_side), Image.Resampling.BICUBIC)
    return image


def _open(data: bytes) -> Image.Image:
    """Open (headers only) as one of the allowed formats, set to decode all of ``data`` at once."""
    image = _identify(data)
    # Feed the decoder all bytes in one call: Pillow's default 64 KiB blocks take the GIL back
    # between blocks, and with the event loop busy that handoff, not decoding, sets the pace.
    image.decodermaxblock = max(len(data), image.decodermaxblock)
    return image


def _identify(data: bytes) -> ImageFile.ImageFile:
    """Open (headers only) as one of the allowed formats. ``max_pixels`` is the limit that counts, checked
    next; Pillow's own (``Image.MAX_IMAGE_PIXELS``) is process-wide, so it is left as the caller set it and,
    where it is the lower one, the format's opener is called without it, as ``Image.open`` would."""
    try:
        return Image.open(io.BytesIO(data), formats=_formats())
    except Image.DecompressionBombError:
        prefix = data[:16]
        for name in _formats():
            factory, accept = Image.OPEN[name]
            if accept is None or accept(prefix) is True:
                return factory(io.BytesIO(data), "")
        raise


def _short(exc: Exception) -> str:
    text = str(exc).strip().splitlines()
    return text[0][:120] if text else "no message"


def to_rgb(image: Image.Image, max_side: int = 0) -> Image.Image:
    """RGB from any mode; transparency is laid on white, as a viewer shows it. A 16-bit, 32-bit or float scan is
    made no larger than ``max_side`` first (0: as it is), where a copy of it costs two to eight bytes a pixel."""
    if image.mode == "RGB":
        return image
    if image.mode == "P" and "transparency" in image.info:
        image = image.convert("RGBA")
    if image.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = image.convert("RGBA")
        background = Image.new("RGB", rgba.size, (255, 255, 255))
        background.paste(rgba, mask=rgba.getchannel("A"))
        return background
    if image.mode.startswith("I") or image.mode.startswith("F"):
        return Image.fromarray(_to_8_bits(image, max_side), "L").convert("RGB")
    return image.convert("RGB")


def _to_8_bits(image: Image.Image, max_side: int = 0) -> Any:
    """Grey levels of a 16-bit, 32-bit or float scan scaled to 0-255 rather than clipped to white. The scale is the
    whole scan's (Pillow's extrema: no copy); the values are a copy of it no larger than ``max_side`` (an area
    average), in float32: a 9000 x 9000 16-bit scan took 2.6 GB as float64 copies at full size."""
    import numpy as np  # here, so that light commands start without it

    peak = _peak(image)
    if max_side and max(image.size) > max_side:
        scale = max_side / max(image.size)
        size = (max(1, round(image.width * scale)), max(1, round(image.height * scale)))
        image = image.resize(size, Image.Resampling.BOX)  # resize, not thumbnail: 16-bit modes cannot reduce()
    values = np.array(image, dtype=np.float32)  # a copy, written in place below (float32 data is read-only)
    if not math.isfinite(peak):
        peak = float(np.nanmax(np.where(np.isfinite(values), values, np.nan))) if np.isfinite(values).any() else 0.0
    if image.mode.startswith("F"):
        # Floats are 0-1 (most tools) or already 0-255.
        scale = 255.0 if peak <= 1.0 else 1.0
    else:
        # Scanners write 10, 12, 14 or 16 significant bits into 16-bit (or 32-bit) containers: scale by the
        # depth the data uses, so a 12-bit scan is not saved nearly black.
        bits = next((b for b in (8, 10, 12, 14, 16) if peak < 2**b), 16)
        scale = 255.0 / (2**bits - 1)
    values *= scale
    np.nan_to_num(values, copy=False)
    return np.clip(values, 0, 255, out=values).astype(np.uint8)


def _peak(image: Image.Image) -> float:
    """The largest value of a one-band image (NaN where Pillow cannot tell)."""
    try:
        extrema = image.getextrema()
    except ValueError:  # a mode Pillow keeps no statistics of (I;16B)
        return math.nan
    high = extrema[1] if isinstance(extrema, tuple) and len(extrema) == 2 else None
    return float(high) if isinstance(high, int | float) else math.nan


def is_complete_jpeg(path: Path) -> bool:
    """A cheap check of a saved file: a JPEG start and end marker (a file cut short lacks the end). Only a regular
    file is opened: a FIFO would wait for a writer for ever, a link lead out of the folder."""
    try:
        if not stat.S_ISREG(path.lstat().st_mode):
            return False
        with path.open("rb") as handle:
            head = handle.read(2)
            handle.seek(-2, os.SEEK_END)
            return head == b"\xff\xd8" and handle.read(2) == b"\xff\xd9"
    except OSError:
        return False
