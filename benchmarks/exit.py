"""What an eic command spends after its work is done: each command run as users run it, and again with
``EIC_FULL_EXIT=1`` (Python's full teardown of the interpreter), on a small run it trains first.

``eic`` ends by joining its threads, running the exit handlers and flushing its output, then leaves the
teardown to the operating system (``cli/app.leave``): with torch loaded, Python's own teardown unregisters
torch's operators one by one. The table gives each command's median wall and CPU seconds both ways.

    python benchmarks/exit.py [--repeats 3] [--arch mobilenet_v3_small]
"""

from __future__ import annotations

import argparse
import itertools
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from europeana_imgcls.europeana.sandbox_images import draw_image


def images(root: Path, per_class: int = 8) -> Path:
    """Two class folders of small JPEGs, drawn as the sandbox draws its records (class by colour and stripes)."""
    for k, label in enumerate(("dark", "light")):
        folder = root / "images" / label
        folder.mkdir(parents=True)
        for i in range(per_class):
            draw_image((k,), 2, seed=100 * k + i, size=(48, 48)).save(folder / f"{i}.jpg", quality=90)
    return root / "images"


def eic(args: list[str], full_exit: bool) -> tuple[float, float]:
    """One eic process: its wall seconds and its CPU seconds (user + system)."""
    env = {**os.environ, "EIC_FULL_EXIT": "1" if full_exit else ""}
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "europeana_imgcls", *args], env=env, capture_output=True, text=True)
    wall = time.perf_counter() - started
    if done.returncode:
        raise SystemExit(f"eic {' '.join(args)} failed:\n{done.stderr}")
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return wall, (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--arch", default="mobilenet_v3_small")
    options = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        data = images(root)
        train = ["train", str(data), "--arch", options.arch, "--weights", "none", "--epochs", "1", "--folds", "3"]
        train += ["--input-size", "32", "--batch-size", "8", "--num-workers", "0", "--quiet"]
        eic([*train, "-o", str(root / "run")], full_exit=False)
        picture = str(next(data.glob("dark/*.jpg")))
        out = str(root / "out{}")  # a fresh output for each process
        commands = {
            "eic --help (no torch)": ["--help"],
            "eic train (1 epoch, 1 split)": [*train, "--no-crossvalidation", "-o", out],
            "eic evaluate": ["evaluate", str(root / "run"), str(data), "-o", out, "--quiet"],
            "eic predict (1 image)": ["predict", str(root / "run"), picture, "-o", out + ".csv", "--quiet"],
        }
        serial = itertools.count()
        print(f"{options.repeats} runs each, medians; {os.cpu_count()} cores; python {sys.version.split()[0]}\n")
        print(f"{'command':34} {'wall, eic':>10} {'wall, full exit':>16} {'CPU, eic':>9} {'CPU, full exit':>15}")
        for title, args in commands.items():
            row = []
            for full_exit in (False, True):
                runs = []
                for _ in range(options.repeats):
                    runs.append(eic([a.format(next(serial)) if a.startswith(out[:-2]) else a for a in args], full_exit))
                row.append(tuple(statistics.median(r[k] for r in runs) for k in (0, 1)))
            (wall, cpu), (full_wall, full_cpu) = row
            print(f"{title:34} {wall:9.2f}s {full_wall:15.2f}s {cpu:8.2f}s {full_cpu:14.2f}s")


if __name__ == "__main__":
    main()
