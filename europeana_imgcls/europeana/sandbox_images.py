"""The sandbox's images: drawn so that their class can be learnt (a hue and a stripe angle per class; a
multi-label record shows one band per label), the variants that need care before saving (``VARIANTS``), and the
decompression bomb and the cut JPEG of its deliberately bad answers."""

from __future__ import annotations

import colorsys
import io
from functools import lru_cache
from typing import Any

import numpy as np
from PIL import Image

# Images that are valid but need care: converted, rotated or resized before saving.
VARIANTS = ("cmyk", "grey", "rgba-png", "exif-rotated", "large")


def class_style(index: int, count: int) -> tuple[tuple[int, int, int], float, float]:
    """Colour, stripe angle and stripe period that identify class ``index`` of ``count``."""
    hue = index / max(count, 1)
    rgb = tuple(int(255 * c) for c in colorsys.hsv_to_rgb(hue, 0.75, 0.9))
    angle = np.pi * ((index * 7) % max(count, 1)) / max(count, 1)
    period = 6.0 + 5.0 * (index % 3)
    return rgb, angle, period  # type: ignore[return-value]


def draw_image(
    class_indices: tuple[int, ...], count: int, seed: int, size: tuple[int, int] = (320, 240)
) -> Image.Image:
    """An RGB image whose colour and stripes say its class(es); noise and jitter make each unique."""
    rng = np.random.default_rng(seed)
    width, height = size
    # A row and a column that broadcast, and each band's stripes only where the band is: the same numbers as full
    # grids for the whole width (element by element), a fifth less work (a sandbox draws every image it serves).
    xx = np.arange(width, dtype=np.float32)[None, :]
    yy = np.arange(height, dtype=np.float32)[:, None]
    scale = min(width, height) / 240.0
    canvas = np.zeros((height, width, 3), np.float32)
    bands = np.array_split(np.arange(width), len(class_indices))
    order = rng.permutation(len(class_indices))
    for band, pick in zip(bands, order, strict=True):
        rgb, angle, period = class_style(class_indices[pick], count)
        phase = rng.uniform(0, 2 * np.pi)
        columns = xx[:, band[0] : band[-1] + 1] if len(band) else xx[:, :0]
        wave = np.sin((columns * np.cos(angle) + yy * np.sin(angle)) / (period * scale) * 2 * np.pi + phase)
        stripes = (wave > 0).astype(np.float32)[:, :, None]
        colour = np.array(rgb, np.float32) * rng.uniform(0.8, 1.1)
        canvas[:, band] = colour * (0.55 + 0.45 * stripes)
    canvas += rng.normal(0, 12, canvas.shape)
    return Image.fromarray(np.clip(canvas, 0, 255).astype(np.uint8), "RGB")


def encode(image: Image.Image, fmt: str = "JPEG", **kwargs: Any) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **kwargs)
    return buffer.getvalue()


def variant_bytes(image: Image.Image, variant: str | None) -> tuple[bytes, str]:
    if variant == "cmyk":
        return encode(image.convert("CMYK")), "image/jpeg"
    if variant == "grey":
        return encode(image.convert("L")), "image/jpeg"
    if variant == "rgba-png":
        rgba = image.convert("RGBA")
        rgba.putalpha(200)
        return encode(rgba, "PNG"), "image/png"
    if variant == "exif-rotated":
        # Stored sideways with orientation 6: viewers (and eic) turn it upright.
        exif = Image.Exif()
        exif[0x0112] = 6
        return encode(image.transpose(Image.Transpose.ROTATE_90), exif=exif.tobytes()), "image/jpeg"
    return encode(image, quality=90), "image/jpeg"


@lru_cache(maxsize=1)
def bomb_png() -> bytes:
    # 20000 x 20000 = 400 megapixels in a few kilobytes: a decompression bomb.
    return encode(Image.new("1", (20000, 20000)), "PNG", optimize=True)


def first_half(data: bytes) -> bytes:
    return data[: len(data) // 2]
