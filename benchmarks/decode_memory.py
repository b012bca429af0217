"""What decoding one large scan costs eic download: peak memory (RSS above the process's start, which already
holds the file's bytes) and CPU seconds of ``save_normalised``, per image mode, each in a fresh process. A
museum's 16-bit greyscale TIFF or PNG scan is the case that matters: its 8-bit conversion used to make float64
copies of the whole scan (about 30 bytes a pixel).

    python benchmarks/decode_memory.py [--side 6000] [--max-side 256]
"""

from __future__ import annotations

import argparse
import io
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image

MODES = ("L", "RGB", "I;16", "I", "F")

CHILD = """
import json, resource, sys, time
from pathlib import Path
from europeana_imgcls.acquisition.images import save_normalised
data = Path(sys.argv[1]).read_bytes()
start, cpu = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, time.process_time()
save_normalised(data, Path(sys.argv[2]), max_side=int(sys.argv[3]), max_pixels=10**9, quality=90)
print(json.dumps({"mb": (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - start) / 1024,
                  "cpu": time.process_time() - cpu}))
"""


def scan(mode: str, side: int) -> bytes:
    """A ``side`` x ``side`` PNG (TIFF for the 32-bit modes, which PNG cannot hold) of ``mode``, of noise."""
    rng = np.random.default_rng(0)
    if mode == "RGB":
        image = Image.fromarray(rng.integers(0, 256, (side, side, 3), dtype=np.uint8), "RGB")
    elif mode == "L":
        image = Image.fromarray(rng.integers(0, 256, (side, side), dtype=np.uint8), "L")
    elif mode == "I;16":
        image = Image.fromarray(rng.integers(0, 4096, (side, side), dtype=np.uint16))  # a 12-bit scan
    elif mode == "I":
        image = Image.fromarray(rng.integers(0, 2**20, (side, side), dtype=np.int32), "I")
    else:
        image = Image.fromarray(rng.random((side, side), dtype=np.float32), "F")
    buffer = io.BytesIO()
    image.save(buffer, "PNG" if mode in ("L", "RGB", "I;16") else "TIFF")
    return buffer.getvalue()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--side", type=int, default=6000)
    parser.add_argument("--max-side", type=int, default=256)
    args = parser.parse_args()
    print(f"one {args.side} x {args.side} scan per mode, saved at --max-side {args.max_side}")
    print(f"{'mode':6} {'file MB':>8} {'peak MB':>8} {'bytes/pixel':>12} {'CPU s':>6}")
    with tempfile.TemporaryDirectory() as folder:
        for mode in MODES:
            source = Path(folder) / f"scan-{mode.replace(';', '')}"
            source.write_bytes(scan(mode, args.side))
            out = subprocess.run(
                [sys.executable, "-c", CHILD, str(source), str(Path(folder) / "out.jpg"), str(args.max_side)],
                capture_output=True,
                text=True,
                check=True,
            )
            result = json.loads(out.stdout)
            per_pixel = result["mb"] * 2**20 / args.side**2
            print(
                f"{mode:6} {source.stat().st_size / 2**20:8.1f} {result['mb']:8.0f} {per_pixel:12.1f} "
                f"{result['cpu']:6.2f}"
            )


if __name__ == "__main__":
    main()
