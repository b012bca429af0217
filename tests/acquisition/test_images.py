"""acquisition/images.py: decoding untrusted bytes within a memory budget, every image mode saved as RGB or
rejected with a reason, and only image formats ever reaching a decoder."""

from __future__ import annotations

import io
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from europeana_imgcls.acquisition.images import ImageRejected, save_normalised

# ---------------------------------------------------------------------------------------------
# Rule 1: eic removes only the temporary files it names itself; existing outputs are refused


def test_twelve_bit_scans_are_scaled_by_their_depth(tmp_path: Path) -> None:
    twelve = np.tile(np.linspace(0, 4095, 48), (32, 1)).astype("<u2")  # 12 bits in a 16-bit container
    buffer = io.BytesIO()
    Image.fromarray(twelve).save(buffer, "TIFF")
    save_normalised(buffer.getvalue(), tmp_path / "x.jpg", max_side=0, max_pixels=10**7, quality=95)
    with Image.open(tmp_path / "x.jpg") as saved:
        grey = np.asarray(saved.convert("L"), dtype=np.float32)
    assert grey[:, -4:].mean() > 230 and grey[:, :4].mean() < 20


# ---------------------------------------------------------------------------------------------
# Rule 2: every row ends saved, already there, a known failure, a new failure or skipped, with a reason


PILLOW_MODES = [
    "1",
    "L",
    "P",
    "RGB",
    "RGBA",
    "CMYK",
    "YCbCr",
    "LAB",
    "I",
    "F",
    "LA",
    "PA",
    "I;16",
    "I;16B",
    "I;16L",
    "RGBX",
]


def _encoded(mode: str) -> bytes:
    gradient = np.tile(np.linspace(0, 1, 48), (32, 1))  # dark on the left, light on the right
    if mode.startswith("I;16"):
        image = Image.fromarray((gradient * 65535).astype(">u2" if mode == "I;16B" else "<u2"))
    elif mode == "F":
        image = Image.fromarray(gradient.astype(np.float32), "F")
    elif mode == "I":
        image = Image.fromarray((gradient * 65535).astype(np.int32), "I")
    else:
        image = Image.fromarray((gradient * 255).astype(np.uint8), "L").convert(mode)
    buffer = io.BytesIO()
    image.save(buffer, "TIFF")
    return buffer.getvalue()


@pytest.mark.parametrize("mode", PILLOW_MODES)
def test_every_image_mode_is_saved_as_rgb_or_rejected_with_a_reason(mode: str, tmp_path: Path) -> None:
    target = tmp_path / "x.jpg"
    try:
        data = _encoded(mode)
    except (OSError, ValueError):
        pytest.skip(f"Pillow cannot write {mode} as TIFF")
    try:
        save_normalised(data, target, max_side=32, max_pixels=10**7, quality=90)
    except ImageRejected as exc:
        # Only modes without a sensible picture may be refused; scans (16-bit, float) must be saved.
        assert str(exc) and mode not in ("I;16", "I;16B", "I;16L", "I", "F", "L", "RGB", "RGBA", "CMYK"), mode
        return
    with Image.open(target) as saved:
        assert saved.mode == "RGB" and saved.format == "JPEG"
        grey = np.asarray(saved.convert("L"), dtype=np.float32)
    if mode not in ("1", "P", "CMYK", "LAB", "YCbCr"):
        # A gradient stays a gradient: 16-bit and float scans are scaled, not clipped to white.
        assert grey[:, :4].mean() < 80 and grey[:, -4:].mean() > 170, (mode, grey[:, :4].mean(), grey[:, -4:].mean())


# ---------------------------------------------------------------------------------------------
# Rule 5: untrusted bytes meet only the decoders of image formats, within a memory budget


def test_only_image_formats_reach_a_decoder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from PIL import EpsImagePlugin

    def ghostscript(*args: object, **kwargs: object) -> None:
        raise AssertionError("an EPS body from the network reached Ghostscript")

    monkeypatch.setattr(EpsImagePlugin, "Ghostscript", ghostscript)
    eps = b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 10 10\nnewpath 0 0 moveto 10 10 lineto stroke\n%%EOF\n"
    with pytest.raises(ImageRejected, match="not an image"):
        save_normalised(eps, tmp_path / "x.jpg", max_side=64, max_pixels=10**7, quality=90)
    buffer = io.BytesIO()
    Image.new("RGB", (8, 8)).save(buffer, "ICO")
    with pytest.raises(ImageRejected, match="not an image"):
        save_normalised(buffer.getvalue(), tmp_path / "x.jpg", max_side=64, max_pixels=10**7, quality=90)


def test_a_decode_that_would_exceed_the_memory_budget_is_a_failure_row(tmp_path: Path) -> None:
    from europeana_imgcls.acquisition.images import DecodeBudget

    buffer = io.BytesIO()
    Image.new("L", (6000, 5000), 200).save(buffer, "PNG")  # 30 MP in a few kB: decoding takes ~200 MB
    assert len(buffer.getvalue()) < 200_000
    with pytest.raises(ImageRejected, match="memory budget"):
        save_normalised(
            buffer.getvalue(),
            tmp_path / "x.jpg",
            max_side=64,
            max_pixels=10**8,
            quality=90,
            budget=DecodeBudget(64 << 20),
        )
    save_normalised(
        buffer.getvalue(), tmp_path / "x.jpg", max_side=64, max_pixels=10**8, quality=90, budget=DecodeBudget(512 << 20)
    )
    with Image.open(tmp_path / "x.jpg") as saved:
        assert saved.size == (64, 53)


@pytest.mark.waits
def test_concurrent_decodes_share_one_budget() -> None:
    from europeana_imgcls.acquisition.images import DecodeBudget

    budget = DecodeBudget(100)
    peak, lock = [0], threading.Lock()

    def work() -> None:
        with budget.hold(60):
            with lock:
                peak[0] = max(peak[0], budget.used)
            time.sleep(0.05)

    threads = [threading.Thread(target=work) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert peak[0] == 60 and budget.used == 0  # never two 60-byte decodes in a 100-byte budget


# ---------------------------------------------------------------------------------------------
# Rule 7: names and races


def test_threads_saving_one_target_do_not_trip_over_each_other(tmp_path: Path) -> None:
    buffer = io.BytesIO()
    Image.new("RGB", (64, 48), (10, 200, 30)).save(buffer, "JPEG")
    errors: list[BaseException] = []

    def save() -> None:
        try:
            save_normalised(buffer.getvalue(), tmp_path / "same.jpg", max_side=32, max_pixels=10**6, quality=90)
        except BaseException as exc:  # noqa: BLE001 - the test collects whatever a thread raises
            errors.append(exc)

    threads = [threading.Thread(target=save) for _ in range(30)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    with Image.open(tmp_path / "same.jpg") as saved:
        assert saved.size == (32, 24)
    assert [p.name for p in tmp_path.iterdir()] == ["same.jpg"]


def _repeated_scans(copies: int) -> bytes:
    """A small progressive JPEG whose shortest scan is repeated ``copies`` times: each repeat is decoded anew over
    the whole picture (the helper's 1.3 MB file of 30,000 scans took 36 s of CPU)."""
    buffer = io.BytesIO()
    Image.new("RGB", (256, 256), (120, 130, 140)).save(buffer, "JPEG", progressive=True, quality=50)
    data, i, segments = buffer.getvalue(), 2, []
    while data[i + 1] != 0xD9:
        marker, length = data[i + 1], int.from_bytes(data[i + 2 : i + 4], "big")
        end = i + 2 + length
        if marker == 0xDA:  # the entropy-coded data runs to the next marker that is not a stuffed byte or restart
            while data[(end := data.index(b"\xff", end)) + 1] == 0 or 0xD0 <= data[end + 1] <= 0xD7:
                end += 2
        segments.append((marker, data[i:end]))
        i = end
    shortest = min((s for m, s in segments if m == 0xDA), key=len)
    return data[:2] + b"".join(s for _, s in segments) + shortest * copies + b"\xff\xd9"


def test_a_jpeg_of_endless_scans_is_refused_before_it_is_decoded(tmp_path: Path) -> None:
    """A progressive JPEG is decoded once per scan: a small file of thousands of scans held a worker for minutes
    (the timeout bounds the fetch, not the decode). Past what any encoder writes, it is refused unread."""
    with pytest.raises(ImageRejected, match="scans"):
        save_normalised(_repeated_scans(2000), tmp_path / "a.jpg", max_side=128, max_pixels=10**8, quality=90)
    save_normalised(_repeated_scans(20), tmp_path / "b.jpg", max_side=128, max_pixels=10**8, quality=90)
    assert (tmp_path / "b.jpg").is_file()
