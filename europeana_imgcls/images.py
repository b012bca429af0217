"""Turning downloaded bytes into a clean RGB JPEG: the CPU-bound half of ``eic download``.

Runs in worker threads: Pillow releases the GIL while decoding, resizing and encoding.
"""

from __future__ import annotations

import io
import os
from pathlib import Path

from PIL import Image, ImageOps, UnidentifiedImageError


class ImageRejected(Exception):
    """The bytes are not an image that may be saved; the message is the short reason."""


def save_normalised(data: bytes, target: Path, *, max_side: int, max_pixels: int, quality: int) -> tuple[int, int]:
    """Decode ``data``, make it an upright RGB image no larger than ``max_side``, save as JPEG.

    The file appears under ``target`` only when complete (temporary name, then rename).
    Returns the saved size.
    """
    try:
        image = Image.open(io.BytesIO(data))
    except Image.DecompressionBombError:
        raise ImageRejected("too many pixels") from None
    except (UnidentifiedImageError, OSError, ValueError):
        raise ImageRejected("not an image") from None
    # Feed the decoder all bytes in one call: Pillow's default 64 KiB blocks take the GIL back
    # between blocks, and with the event loop busy that handoff, not decoding, sets the pace.
    image.decodermaxblock = max(len(data), image.decodermaxblock)
    width, height = image.size
    if width * height > max_pixels:
        raise ImageRejected(f"too many pixels ({width}x{height})")
    if max_side and max(width, height) > max_side and image.format == "JPEG":
        # JPEG draft mode decodes at 1/2, 1/4 or 1/8 scale directly: far less work than full size.
        scale = max_side / max(width, height)
        image.draft("RGB", (max(1, int(width * scale)), max(1, int(height * scale))))
    try:
        image.load()
    except OSError as exc:
        raise ImageRejected("truncated" if "truncated" in str(exc) else f"undecodable ({exc})") from None
    except (ValueError, SyntaxError) as exc:
        raise ImageRejected(f"undecodable ({exc})") from None
    image = ImageOps.exif_transpose(image) or image
    image = to_rgb(image)
    if max_side and max(image.size) > max_side:
        image.thumbnail((max_side, max_side), Image.Resampling.BICUBIC)
    tmp = target.with_name(f".{target.name}.{os.getpid()}.part")
    try:
        image.save(tmp, "JPEG", quality=quality)
        os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)
    return image.size


def to_rgb(image: Image.Image) -> Image.Image:
    """RGB from any mode; transparency is laid on white, as a viewer shows it."""
    if image.mode == "RGB":
        return image
    if image.mode == "P" and "transparency" in image.info:
        image = image.convert("RGBA")
    if image.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = image.convert("RGBA")
        background = Image.new("RGB", rgba.size, (255, 255, 255))
        background.paste(rgba, mask=rgba.getchannel("A"))
        return background
    if image.mode in ("I;16", "I;16B", "I;16L", "I"):
        # 16-bit scans: scale to 8 bits rather than clip to white
        image = image.point(lambda v: v / 256).convert("L")
    return image.convert("RGB")


def is_complete_jpeg(path: Path) -> bool:
    """A cheap check of a saved file: a JPEG start and end marker (a file cut short lacks the end)."""
    try:
        with path.open("rb") as handle:
            head = handle.read(2)
            handle.seek(-2, os.SEEK_END)
            return head == b"\xff\xd8" and handle.read(2) == b"\xff\xd9"
    except OSError:
        return False
