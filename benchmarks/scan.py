"""What reading a folder costs now that each image is decoded whole (a class of files cut short is no class): the
header-only check against the whole decode (at the smallest scale a JPEG allows), per image and for a folder, one
thread against the thread a core the scan uses.

    python benchmarks/scan.py                       # 2,000 Europeana-sized thumbnails (400 px JPEG), 20 classes
    python benchmarks/scan.py --images 500 --big 20 # fewer; and 20 full-size (6 MP) PNG and JPEG files apiece

The thumbnails are drawn (sandbox pictures, JPEG quality 90) at the 400-pixel long side the Thumbnail API serves;
the big files are noise (the hardest for a decoder), where a PNG or TIFF has no smaller scale to decode at.
``eic train`` and ``eic evaluate`` scan whole; ``eic embed`` reads headers alone (it decodes as it embeds).
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
from PIL import Image

from europeana_imgcls.datasets.class_folders import decodable, decodes, readable, scan_class_folders
from europeana_imgcls.datasets.tasks import task_for
from europeana_imgcls.europeana.sandbox import draw_image


def _thumbnails(root: Path, count: int, classes: int = 20) -> Path:
    for i in range(count):
        folder = root / f"class_{i % classes:02d}"
        folder.mkdir(parents=True, exist_ok=True)
        picture = draw_image((i % classes,), classes, seed=i, size=(400, 300))
        picture.save(folder / f"{i:05d}.jpg", quality=90)
    return root


def _big(root: Path, count: int) -> dict[str, list[Path]]:
    rng = np.random.default_rng(0)
    made: dict[str, list[Path]] = {"png": [], "jpg": []}
    root.mkdir(parents=True, exist_ok=True)
    for i in range(count):
        noise = Image.fromarray(rng.integers(0, 256, (2000, 3000, 3), dtype=np.uint8))
        for suffix in made:
            path = root / f"{i:03d}.{suffix}"
            noise.save(path, **({"quality": 90} if suffix == "jpg" else {}))
            made[suffix].append(path)
    return made


def _each(check: Callable[[Path], bool], paths: list[Path]) -> float:
    """Milliseconds an image, one thread."""
    started = time.perf_counter()
    for path in paths:
        check(path)
    return 1000 * (time.perf_counter() - started) / len(paths)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=2000, help="thumbnails in the folder")
    parser.add_argument("--big", type=int, default=5, help="full-size PNG and JPEG files each (0: none)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as name:
        root = Path(name)
        folder = _thumbnails(root / "thumbs", args.images)
        paths = sorted(folder.rglob("*.jpg"))
        print(f"{len(paths)} thumbnails of 400 px in 20 class folders; {os.cpu_count()} cores")
        print(f"{'what':<44} {'header ms':>10} {'whole ms':>10}")
        print(f"{'a thumbnail, one thread':<44} {_each(readable, paths):>10.3f} {_each(decodes, paths):>10.3f}")
        for suffix, files in (_big(root / "big", args.big) if args.big else {}).items():
            label = f"a 6 MP {suffix.upper()}, one thread"
            print(f"{label:<44} {_each(readable, files):>10.3f} {_each(decodes, files):>10.3f}")
        started = time.perf_counter()
        decodable(paths)
        threads = time.perf_counter() - started
        started = time.perf_counter()
        scan_class_folders(folder, None, task_for("single-label"))
        scan = time.perf_counter() - started
        started = time.perf_counter()
        scan_class_folders(folder, None, task_for("single-label"), whole=False)
        headers = time.perf_counter() - started
        print(f"{'the folder: decodable, a thread a core (s)':<44} {'':>10} {threads:>10.2f}")
        print(f"{'the folder: the scan train runs (s)':<44} {headers:>10.2f} {scan:>10.2f}")


if __name__ == "__main__":
    main()
