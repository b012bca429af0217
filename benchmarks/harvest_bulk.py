"""The bulk harvest at Europeana's scale: dataset dumps parsed (records/s, peak memory at two dump sizes), and
OAI-PMH pages against the Search API at the same latency, in the sandbox.

    python benchmarks/harvest_bulk.py                          # dumps of 10,000 and 40,000 records; OAI vs API
    python benchmarks/harvest_bulk.py --sizes 2000 --latency 0.05 --per-level 40   # a short run

The synthetic dumps are made of real records (tests/data/edm: the Mauritshuis ListRecords page's current 2026
shape and TopFoto's one-line 2019 one, 13-15 kB each), their IDs, concepts (the built-in vocabulary's 20, in both
URI spellings, and 1 in 8 none of them), rights (the three levels) and type (1 in 10 SOUND) changed; a zip per
5,000 records, deflated, as Europeana writes them. Each dump size is harvested (``eic harvest --source dump``:
every record parsed, classified, journaled, the table of ``--n 50`` written) in a fresh process, so its peak memory
(the process's maximum resident set, less what it held before the harvest) is its own:
flat in the dump's size is the goal, and at least 5,000 records/s on 2 cores (50M records in under 3 h). A zip's
pieces of ``dumps.WORKERS_FROM`` entries or more are parsed by a worker process per core.

The OAI-PMH against Search API part harvests the same sandbox world both ways with every answer delayed by
``--latency`` seconds (a distant server): the Search API pages 100 records per request, one query series per
category and level; OAI-PMH pages 50 (Europeana's page size), one series per set, without a key or quota.
"""

from __future__ import annotations

import argparse
import multiprocessing
import re
import resource
import sys
import tempfile
import time
import zipfile
from pathlib import Path
from typing import Any

from europeana_imgcls import HarvestConfig, harvest
from europeana_imgcls.acquisition import dumps
from europeana_imgcls.europeana.vocabulary import default_vocabulary

SAMPLES = Path(__file__).resolve().parents[1] / "tests" / "data" / "edm"
PER_ZIP = 5000
RIGHTS = (
    "http://creativecommons.org/publicdomain/mark/1.0/",
    "http://creativecommons.org/licenses/by-nc/4.0/",
    "http://rightsstatements.org/vocab/InC/1.0/",
)


def templates() -> list[tuple[bytes, str, str, str]]:
    """(record, its ID, its concept, its rights) of the two published shapes."""
    page = (SAMPLES / "oai_ListRecords_2021672_mauritshuis.xml").read_bytes()
    rdf = re.findall(rb"<rdf:RDF.*?</rdf:RDF>", page, flags=re.S)[1]  # record 100: concept/1770 on dcterms:medium
    mauritshuis = b'<?xml version="1.0" encoding="UTF-8" standalone="yes"?>' + rdf
    topfoto = (SAMPLES / "topfoto_2024904_EU017407.rdf").read_bytes()
    return [
        (
            mauritshuis,
            "2021672/resource_document_mauritshuis_100",
            "http://data.europeana.eu/concept/1770",
            "http://creativecommons.org/publicdomain/mark/1.0/",
        ),
        (
            topfoto,
            "2024904/photography_ProvidedCHO_TopFoto_co_uk_EU017407",
            "http://data.europeana.eu/concept/base/1711",
            "http://rightsstatements.org/vocab/InC/1.0/",
        ),
    ]


def synthetic_record(i: int, shapes: list[tuple[bytes, str, str, str]], concepts: list[str]) -> bytes:
    data, record_id, concept, rights = shapes[i % len(shapes)]
    dataset = f"90{i // PER_ZIP:05d}"
    ours = concepts[i % len(concepts)] if i % 8 else "http://data.europeana.eu/concept/99999"
    if i % 2:  # the other spelling of a Europeana concept: concept/N for concept/base/N
        ours = ours.replace("/concept/base/", "/concept/")
    data = data.replace(record_id.encode(), f"{dataset}/rec_{i}".encode())
    data = data.replace(concept.encode(), ours.encode()).replace(rights.encode(), RIGHTS[i % 3].encode())
    if i % 10 == 9:
        data = data.replace(b"<edm:type>IMAGE</edm:type>", b"<edm:type>SOUND</edm:type>")
    return data


def write_dumps(folder: Path, size: int) -> list[Path]:
    shapes, concepts = templates(), list(default_vocabulary().values())
    zips = []
    for start in range(0, size, PER_ZIP):
        path = folder / f"90{start // PER_ZIP:05d}.zip"
        with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as archive:
            for i in range(start, min(start + PER_ZIP, size)):
                archive.writestr(f"rec_{i}.xml", synthetic_record(i, shapes, concepts))
        zips.append(path)
    return zips


def peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # kB on Linux


def dump_run(size: int, queue: Any) -> None:
    """One dump size in a fresh process: the dumps written, then harvested whole."""
    with tempfile.TemporaryDirectory(prefix="eic-bulk-") as work:
        folder = Path(work)
        zips = write_dumps(folder, size)
        megabytes = sum(z.stat().st_size for z in zips) / 2**20
        base = peak_mb()
        config = HarvestConfig(
            metadata_source="dump",
            dump=[str(folder)],
            output=folder / "harvested.csv",
            n=50,  # the table's size bounded, so that what grows with the dump would show
            reusability=["open", "restricted", "permission"],
            quiet=True,
        )
        started = time.perf_counter()
        report = harvest(config)
        seconds = time.perf_counter() - started
        queue.put((size, megabytes, seconds, report.rows, peak_mb() - base, dict(report.left_out)))


def parse_run(size: int, queue: Any) -> None:
    """The parser alone: every entry read from the zip and parsed, nothing classified or written."""
    from europeana_imgcls.europeana.edm import record_from_bytes, safe_parser

    with tempfile.TemporaryDirectory(prefix="eic-bulk-") as work:
        zips = write_dumps(Path(work), size)
        parser = safe_parser()
        started = time.perf_counter()
        count = 0
        for path in zips:
            with zipfile.ZipFile(path) as archive:
                for info in archive.infolist():
                    count += record_from_bytes(archive.read(info), info.filename, parser) is not None
        queue.put((count, time.perf_counter() - started))


def in_process(target: Any, *args: Any) -> Any:
    context = multiprocessing.get_context("spawn")
    queue = context.Queue()
    process = context.Process(target=target, args=(*args, queue))
    process.start()
    result = queue.get()
    process.join()
    return result


def oai_against_api(latency: float, per_level: int) -> list[tuple[str, int, int, float]]:
    """(source, requests, rows, seconds) of one sandbox world harvested through the Search API and OAI-PMH."""
    from europeana_imgcls.core.config import SandboxConfig
    from europeana_imgcls.europeana.sandbox import Knobs, Sandbox

    knobs = Knobs(search_latency=latency, oai_latency=latency)
    results = []
    with Sandbox(SandboxConfig(port=0, per_level=per_level), knobs) as sb, tempfile.TemporaryDirectory() as work:
        levels = ["open", "restricted", "permission"]
        common: dict[str, Any] = {"n": 100_000, "reusability": levels, "api_url": sb.api_url, "quiet": True}
        for source, extra, prefix in (
            ("api", {}, "/record/v2/search.json"),
            ("oai-pmh", {"oai_url": sb.base_url + "/oai"}, "/oai"),
        ):
            before = sb.count(prefix)
            config = HarvestConfig(metadata_source=source, output=Path(work) / f"{source}.csv", **common, **extra)
            started = time.perf_counter()
            report = harvest(config)
            results.append((source, sb.count(prefix) - before, report.rows, time.perf_counter() - started))
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[10000, 40000], help="records per dump run")
    parser.add_argument("--latency", type=float, default=0.1, help="seconds each sandbox answer takes")
    parser.add_argument("--per-level", type=int, default=60, help="sandbox records per concept and level")
    parser.add_argument("--no-oai", action="store_true", help="dumps only")
    args = parser.parse_args(argv)

    print(f"dumps: {PER_ZIP} records a zip, {dumps.CHUNK} entries a journaled piece")
    print(f"workers: {dumps._workers()} processes for a piece of {dumps.WORKERS_FROM} entries or more")
    print(f"{'records':>8} {'zip MB':>7} {'seconds':>8} {'records/s':>10} {'rows':>6} {'peak MB':>8}")
    for size in args.sizes:
        size, megabytes, seconds, rows, peak, left_out = in_process(dump_run, size)
        print(f"{size:>8} {megabytes:>7.1f} {seconds:>8.2f} {size / seconds:>10.0f} {rows:>6} {peak:>8.1f}")
    print(f"  left out ({args.sizes[-1]}): " + ", ".join(f"{n} {reason}" for reason, n in sorted(left_out.items())))
    count, seconds = in_process(parse_run, args.sizes[-1])
    print(f"  the parser alone (zip entry to EdmRecord): {count / seconds:.0f} records/s")
    if not args.no_oai:
        print(f"\nOAI-PMH against the Search API, every answer {args.latency * 1000:.0f} ms (sandbox)")
        print(f"{'source':>8} {'requests':>9} {'rows':>6} {'seconds':>8} {'rows/s':>8}")
        for source, requests, rows, seconds in oai_against_api(args.latency, args.per_level):
            print(f"{source:>8} {requests:>9} {rows:>6} {seconds:>8.2f} {rows / seconds:>8.0f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
