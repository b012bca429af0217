"""Top-1 agreement of ``eic predict`` between two decode paths (goal for gpu against cpu: at least 99 %).

python benchmarks/decode_agreement.py RUN IMAGES [--decodes cpu gpu]
"""

from __future__ import annotations

import argparse
import csv
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run", type=Path)
    parser.add_argument("images", type=Path)
    parser.add_argument("--decodes", nargs=2, default=["cpu", "gpu"])
    args = parser.parse_args()
    labels, seconds = [], []
    with tempfile.TemporaryDirectory() as tmp:
        for decode in args.decodes:
            out = Path(tmp) / f"{decode}.csv"
            started = time.perf_counter()
            command = ["predict", str(args.run), str(args.images), "-o", str(out), "--decode", decode, "--quiet"]
            subprocess.run([sys.executable, "-m", "europeana_imgcls", *command], check=True)
            seconds.append(time.perf_counter() - started)
            with out.open(newline="") as handle:
                labels.append({row["image"]: row["prediction"] for row in csv.DictReader(handle)})
    first, second = labels
    same = sum(first[k] == second.get(k) for k in first)
    print("| decode | eic predict, s |")
    print("| --- | --- |")
    for decode, value in zip(args.decodes, seconds, strict=True):
        print(f"| {decode} | {value:.1f} |")
    print(
        f"same top-1 with --decode {args.decodes[1]} as with {args.decodes[0]}: "
        f"{same} of {len(first)} ({same / len(first):.2%})"
    )


if __name__ == "__main__":
    main()
