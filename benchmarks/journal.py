"""The journal at Europeana's scale: synthetic journals of 10k, 100k and 1M prediction records through write,
resume (a cut last record), a 4-shard merge and the settings check; seconds and peak memory per step.

    python benchmarks/journal.py                 # 10k, 100k, 1M
    python benchmarks/journal.py --sizes 10000   # one size

Each size runs in a fresh process, so its peak memory (the process's maximum resident set) is its own. The goal:
time linear in the records, memory flat (what a run keeps per record is a 16-byte digest), a 1M-record merge
in under a minute on a 2-core machine.
"""

from __future__ import annotations

import argparse
import multiprocessing
import resource
import shutil
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from europeana_imgcls.core.journal import Journal
from europeana_imgcls.core.sharding import Shard, shard_of

SHARDS = 4
CLASSES = ["map", "painting", "photograph", "drawing", "archaeological site"]


def record(n: int) -> tuple[str, dict[str, object]]:
    key = f"/9200{n % 97:03d}/obj_{n:09d}"
    return key, {
        "image": f"https://images.example.org/{n}.jpg",
        "prediction": CLASSES[n % 5],
        "confidence": 0.5 + (n % 50) / 100,
        "top_k": [[c, round(0.9 - i * 0.2, 6)] for i, c in enumerate(CLASSES)],
        "ID": key,
        "URI": f"http://data.europeana.eu/item{key}",
    }


def peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # kB on Linux


def journal(folder: Path, shard: Shard | None) -> Journal:
    return Journal(folder, what="benchmark", settings={"model": "0" * 16, "split": "best"}, shard=shard)


def run(size: int, queue: multiprocessing.Queue) -> None:
    work = Path(tempfile.mkdtemp(prefix="eic-journal-"))
    rows: list[tuple[str, float, float]] = []
    try:
        folder = work / "out.csv.journal"
        base = peak_mb()
        started = time.perf_counter()
        writers = {i: journal(folder, Shard(i, SHARDS)).open() for i in range(SHARDS)}
        for n in range(size):
            key, value = record(n)
            writers[shard_of(key, SHARDS)].append(key, value)
        for writer in writers.values():
            writer.close()
        rows.append(("write", time.perf_counter() - started, peak_mb() - base))

        last = folder / "part.shard-0-of-4.ndjson"
        with last.open("ab") as handle:
            handle.write(b'["/cut/record",{"image":"h')  # a kill in the middle of a record
        started = time.perf_counter()
        with journal(folder, Shard(0, SHARDS)) as resumed:
            done = resumed.done()
        rows.append(("resume (cut record)", time.perf_counter() - started, peak_mb() - base))
        assert resumed.cut == 1 and len(done) > 0

        started = time.perf_counter()
        merged = 0

        def write(records: Iterator[tuple[str, Any]]) -> None:
            nonlocal merged
            with (work / "out.ndjson").open("w", encoding="utf-8") as out:
                for key, value in records:
                    out.write(f"{key}\t{value['prediction']}\n")
                    merged += 1

        with journal(folder, None) as merging:
            merging.merge(write)
        rows.append(("4-shard merge", time.perf_counter() - started, peak_mb() - base))
        assert merged == size and not list(folder.glob("*.ndjson")), (merged, size)

        started = time.perf_counter()
        for _ in range(100):
            journal(folder, None).open().close()
        rows.append(("settings check (x100)", time.perf_counter() - started, peak_mb() - base))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    queue.put(rows)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000, 1_000_000])
    args = parser.parse_args()
    context = multiprocessing.get_context("spawn")
    print(f"{'records':>9} | {'step':<22} | {'seconds':>8} | {'µs/record':>9} | {'peak MB over start':>17}")
    print(f"{'-' * 9}-|-{'-' * 22}-|-{'-' * 8}-|-{'-' * 9}-|-{'-' * 17}")
    for size in args.sizes:
        queue = context.Queue()
        child = context.Process(target=run, args=(size, queue))
        child.start()
        rows = queue.get()
        child.join()
        for step, seconds, memory in rows:
            per = seconds / size * 1e6 if "x100" not in step else seconds / 100 * 1e6
            print(f"{size:>9,} | {step:<22} | {seconds:>8.2f} | {per:>9.2f} | {memory:>17.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
