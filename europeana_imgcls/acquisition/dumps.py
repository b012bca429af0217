"""``eic harvest --source dump``: Europeana's dataset dumps, one zip of EDM RDF/XML per dataset.

A dump zip is flat, one entry per record (``LOCAL_ID.xml``: an XML declaration and one ``rdf:RDF``), published
at ``ftp://download.europeana.eu/dataset/XML/<id>.zip`` with ``<id>.zip.md5sum`` beside it (``shared/
europeana_bulk.md`` §B). Records are read entry by entry from the zip, never unpacked to disk and never held
whole in memory; a zip given by URL is first fetched to a temporary file (a zip's directory is at its end).

The ``.md5sum`` holds the hex digest with its leading zeros dropped (Java's ``BigInteger.toString(16)``), so it
is compared left-padded to 32 digits. Many of Europeana's are stale (a zip rebuilt, its checksum not), so a zip
whose digest differs is read all the same, with a warning: each entry's CRC is checked as it is read
(``zipfile``), so a damaged zip fails where it is damaged, checksum or not.

A unit of work is one zip, journaled every ``CHUNK`` entries (``next``: the entry to go on from, with the zip's
identity, a digest of its directory), so a killed harvest of a large dataset carries on inside it. Europeana
rebuilds its zips: a resume that finds another zip under the name (another identity) would go on at an entry
number of the old one, and miss or repeat records, so it reads the new zip from its start instead, as a new pass
(``again``: what the earlier pass found of the zip goes, ``harvest._Found.replay``).
"""

from __future__ import annotations

import hashlib
import itertools
import logging
import multiprocessing
import os
import tempfile
import time
import zipfile
import zlib
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx

from ..core.config import HarvestConfig
from ..core.errors import DatasetError
from ..core.retry import RETRYABLE, Failed, Retry, send
from ..europeana.edm import EdmRecord, record_from_bytes, safe_parser
from ..europeana.tls import tls_context
from .sources import Advance, BulkSource, Piece, Plan

log = logging.getLogger(__name__)
CHUNK = 20_000  # entries per journaled piece: a killed harvest redoes at most this many of a zip
WORKERS_FROM = 4000  # entries of a piece from which it is parsed by worker processes, one per core
MAX_WORKERS = 8
MAX_ENTRY = 32 * 2**20  # bytes of one record's XML at most (real ones are 5-100 kB): a bomb entry is left out
MAX_CHECKSUM = 1024  # bytes of an .md5sum file read at most
ENTRY_SUFFIXES = (".xml", ".rdf")
TOO_LARGE = "entry over 32 MiB"
NOT_XML = "not well-formed XML"
NO_ID = "no record ID"


class DumpSource(BulkSource):
    """Dataset zips (files, folders of them, http(s) URLs) as a harvest's source: a unit per zip, keyed by its name
    (a dataset's ID is its zip's name) or its URL. A zip that cannot be read is one zip: the others are read."""

    independent_units = True

    def __init__(self, config: HarvestConfig, plan: Plan) -> None:
        super().__init__(config, plan)
        self.where: dict[str, str] = {}  # unit key -> the path or URL it is read from
        for given in config.dump:
            for key, location in _expanded(given):
                other = self.where.get(key)
                if other is not None and other != location:
                    raise DatasetError(
                        f"two dumps are named {key} ({other} and {location}): a dump is known by its name, "
                        "so harvest them into separate outputs"
                    )
                self.where[key] = location
        self._http: httpx.Client | None = None
        self._pool: ProcessPoolExecutor | None = None

    def units(self) -> list[str]:
        return list(self.where)

    def fetch(self, unit: str, after: str | None, advance: Advance) -> Iterator[Piece]:
        with self._local(self.where[unit]) as (path, checksum):
            _check_md5(path, checksum, self.where[unit])
            yield from self._pieces(unit, path, after, advance)

    def _pieces(self, unit: str, path: Path, after: str | None, advance: Advance) -> Iterator[Piece]:
        where = self.where[unit]
        with _opened(path, where) as archive:
            entries = _entries(archive)
            _refuse_turtle(entries, where)
        identity = _identity(entries)
        start, passed = _resume_at(after, identity, where)
        again = passed > 0 and start == 0
        read = f"{identity}/{passed}" if passed else identity  # the pass: a zip back as it was is read anew
        for at in range(start, max(len(entries), 1), CHUNK):
            end = min(at + CHUNK, len(entries))
            items, no_url, left_out = self._read(path, where, at, end, advance)
            more = f"{end}@{read}" if end < len(entries) else None
            yield Piece(f"{unit}@{read}#{at}", unit, items, no_url, left_out, more, again=again)
            again = False

    def _read(self, path: Path, where: str, start: int, end: int, advance: Advance) -> Found:
        """Entries ``start`` to ``end`` of a zip: here, or split among worker processes when there are enough of
        them to be worth the workers' start (parsing is what a dump harvest spends its time on, and it is CPU)."""
        workers = _workers() if end - start >= WORKERS_FROM else 1
        if workers == 1:
            return read_range(path, where, start, end, self, advance)
        bounds = [start + (end - start) * k // workers for k in range(workers + 1)]
        pool = self._workers_pool(workers)
        futures = [
            pool.submit(_read_in_worker, str(path), where, lo, hi, self.config, self.plan)
            for lo, hi in itertools.pairwise(bounds)
        ]
        items: list[dict[str, Any]] = []
        no_url: list[str] = []
        left_out: Counter[str] = Counter()
        for (lo, hi), future in zip(itertools.pairwise(bounds), futures, strict=True):
            try:
                found_items, found_no_url, found_left_out = future.result()
            except BrokenProcessPool:
                self._pool = None  # broken for good: the next zip's pieces get a new one
                pool.shutdown(wait=False, cancel_futures=True)
                raise DatasetError(
                    f"{where}: a worker process reading it ended abruptly (out of memory?); run again with "
                    "`resume`: what was journaled is kept"
                ) from None
            items += found_items
            no_url += found_no_url
            left_out.update(found_left_out)
            advance(hi - lo)
        return items, no_url, dict(left_out)

    def _workers_pool(self, workers: int) -> ProcessPoolExecutor:
        if self._pool is None:
            self._pool = ProcessPoolExecutor(workers, mp_context=_context())
        return self._pool

    @contextmanager
    def _local(self, location: str) -> Iterator[tuple[Path, str | None]]:
        """The zip as a local file and its published checksum (None: none published)."""
        if not _is_url(location):
            sums = Path(location + ".md5sum")
            yield Path(location), _read_checksum(sums) if sums.is_file() else None
            return
        with tempfile.TemporaryDirectory(prefix="eic-dump-") as folder:
            path = Path(folder) / "dump.zip"
            checksum = self._get_checksum(location + ".md5sum")
            self._download(location, path)
            yield path, checksum

    def _client(self) -> httpx.Client:
        if self._http is None:
            self._http = httpx.Client(
                headers={"User-Agent": "europeana-imgcls"},
                timeout=self.config.timeout,
                follow_redirects=True,
                verify=tls_context(),
            )
        return self._http

    def _download(self, url: str, path: Path) -> None:
        def attempt() -> bool | Failed:
            try:
                with self._client().stream("GET", url) as response:
                    if response.status_code in RETRYABLE:
                        return Failed(f"answered {response.status_code}", response.headers.get("Retry-After"))
                    if response.status_code != 200:
                        raise DatasetError(f"{url}: answered {response.status_code}; check the dump's URL")
                    with path.open("wb") as out:
                        for chunk in response.iter_bytes(2**20):
                            out.write(chunk)
            except httpx.TimeoutException as exc:
                return Failed("timed out", error=exc)
            except (httpx.TransportError, httpx.DecodingError) as exc:
                return Failed(f"unreachable ({type(exc).__name__})", error=exc)
            return True

        outcome = send(attempt, Retry(self.config.retries), "dump download")
        if isinstance(outcome, Failed):
            raise DatasetError(f"cannot fetch {url}: {outcome.reason} after {outcome.attempts} attempts; try later")

    def _get_checksum(self, url: str) -> str | None:
        body = b""
        try:
            with self._client().stream("GET", url) as response:
                if response.status_code != 200:
                    return None
                for chunk in response.iter_bytes():  # a checksum is 33 bytes: an endless answer is not read on
                    body += chunk
                    if len(body) > MAX_CHECKSUM:
                        break
        except httpx.HTTPError:
            return None  # no checksum to be had: the zip's CRCs still guard it
        return _parse_checksum(body[:MAX_CHECKSUM], url)

    def close(self) -> None:
        if self._http is not None:
            self._http.close()
        if self._pool is not None:
            self._pool.shutdown(cancel_futures=True)


def _is_url(location: str) -> bool:
    return location.startswith(("http://", "https://"))


def _expanded(given: str) -> Iterator[tuple[str, str]]:
    """The zips ``given`` names (a zip, a folder of zips, a URL), each with its unit key."""
    if given.startswith("ftp://"):
        raise DatasetError(
            f"{given}: eic does not fetch over FTP; download it first (e.g. `curl -O {given}` and its .md5sum), "
            "then give the local path"
        )
    if _is_url(given):
        yield given, given
        return
    path = Path(given)
    if path.is_dir():
        zips = sorted(p for p in path.iterdir() if p.suffix.lower() == ".zip" and p.is_file())
        if not zips:
            raise DatasetError(f"{given}: a folder with no .zip in it; give dataset zips (dataset/XML/<id>.zip)")
        for zip_path in zips:
            yield zip_path.name, str(zip_path)
        return
    if not path.is_file():
        raise DatasetError(f"{given}: no such file or folder")
    yield path.name, str(path)


def _refuse_turtle(entries: list[zipfile.ZipInfo], where: str) -> None:
    if entries and all(info.filename.lower().endswith(".ttl") for info in entries[:10]):
        raise DatasetError(
            f"{where}: a Turtle dump (.ttl entries); eic reads the RDF/XML dumps: use dataset/XML/<id>.zip instead "
            "of dataset/TTL/<id>.zip"
        )


Found = tuple[list[dict[str, Any]], list[str], dict[str, int]]  # items, IDs without an image URL, left out by reason


def _context() -> multiprocessing.context.BaseContext:
    """Workers forked from a fresh server process that has this module loaded: never a fork of this process,
    whatever threads it runs (a progress bar's), and the imports paid once, not once per worker (spawn, where
    there is no forkserver)."""
    if "forkserver" not in multiprocessing.get_all_start_methods():
        return multiprocessing.get_context("spawn")
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload([__name__])
    return context


def _workers() -> int:
    return max(1, min(len(os.sched_getaffinity(0)), MAX_WORKERS))


@contextmanager
def _opened(path: Path, where: str) -> Iterator[zipfile.ZipFile]:
    try:
        archive = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError, ValueError, NotImplementedError) as exc:
        raise DatasetError(f"{where}: not a zip eic can read ({_said(exc)}); is it a dataset dump?") from None
    with archive:
        yield archive


def _entries(archive: zipfile.ZipFile) -> list[zipfile.ZipInfo]:
    return [info for info in archive.infolist() if not info.is_dir()]


def _identity(entries: list[zipfile.ZipInfo]) -> str:
    """A zip's contents in 16 hex digits: its entries' names, sizes and CRCs, in order (its directory, read anyway;
    not its bytes, which may be gigabytes, nor its date, which a copy changes)."""
    digest = hashlib.sha1(usedforsecurity=False)
    for info in entries:
        digest.update(f"{info.filename}\0{info.file_size}\0{info.CRC}\n".encode())
    return digest.hexdigest()[:16]


def _resume_at(after: str | None, identity: str, where: str) -> tuple[int, int]:
    """Where a zip's reading goes on (None: at its first entry), and in which pass over it: ``after`` is the entry
    number, the identity of the zip it counts in and that pass's number (``N@ID/P``; ``N@ID``: the first). Another
    zip under the name starts the next pass at its first entry. A number alone (journaled before zips were known by
    their identity) is trusted."""
    if not after:
        return 0, 0
    number, _, read = after.partition("@")
    journaled, _, passed = read.partition("/")
    done = int(passed) if passed.isdigit() else 0
    if not number.isdigit():
        return 0, done
    if journaled and journaled != identity:
        log.warning(
            "%s is not the zip this harvest stopped inside (it was rebuilt since): reading it again from its start, "
            "its records as they are now",
            where,
        )
        return 0, done + 1
    return int(number), done


def read_range(path: Path, where: str, start: int, end: int, source: BulkSource, advance: Advance) -> Found:
    """What entries ``start`` to ``end`` of a zip hold, as ``source`` keeps them (``BulkSource.found``) plus the
    entries that are no record, counted by reason."""
    left_out: dict[str, int] = {}
    with _opened(path, where) as archive:
        records = _records(archive, _entries(archive)[start:end], where, left_out, advance)
        items, no_url, reasons = source.found(records)
    for reason, count in reasons.items():
        left_out[reason] = left_out.get(reason, 0) + count
    return items, no_url, left_out


_IN_WORKER: dict[str, BulkSource] = {}  # a worker's source, built once for the harvest that started it


def _read_in_worker(path: str, where: str, start: int, end: int, config: HarvestConfig, plan: Plan) -> Found:
    key = config.model_dump_json()
    source = _IN_WORKER.get(key)
    if source is None:
        _IN_WORKER.clear()
        source = _IN_WORKER[key] = BulkSource(config, plan)
    return read_range(Path(path), where, start, end, source, lambda _: None)


def _records(
    archive: zipfile.ZipFile, entries: list[zipfile.ZipInfo], where: str, left_out: dict[str, int], advance: Advance
) -> Iterator[EdmRecord]:
    """The records of ``entries``, one entry in memory at a time; an entry that is no record is counted, not
    fatal: a record's failure is the record's."""
    parser = safe_parser()
    for info in entries:
        record = _entry(archive, info, where, parser, left_out)
        advance(1)
        if record is not None:
            yield record


def _entry(
    archive: zipfile.ZipFile, info: zipfile.ZipInfo, where: str, parser: Any, left_out: dict[str, int]
) -> EdmRecord | None:
    name = info.filename
    if not name.lower().endswith(ENTRY_SUFFIXES):
        _count(left_out, "not an .xml entry")
        return None
    if info.file_size > MAX_ENTRY:
        _count(left_out, TOO_LARGE)
        return None
    try:
        with archive.open(info) as entry:
            data = entry.read(MAX_ENTRY + 1)  # the size in the directory may lie: read no more than the limit
    except (zipfile.BadZipFile, zlib.error, EOFError, OSError, ValueError) as exc:  # a CRC that fails, a bad offset
        raise DatasetError(f"{where}: entry {name} is damaged ({_said(exc)}); download the dump again") from None
    except (NotImplementedError, RuntimeError) as exc:  # a compression method or encryption zipfile cannot read
        raise DatasetError(
            f"{where}: entry {name} cannot be read ({_said(exc)}); Europeana's dumps are deflated, not encrypted: "
            "download the dump again"
        ) from None
    if len(data) > MAX_ENTRY:
        _count(left_out, TOO_LARGE)
        return None
    try:
        record = record_from_bytes(data, f"{where}:{name}", parser)
    except DatasetError as exc:
        log.warning("%s", exc)
        _count(left_out, NOT_XML)
        return None
    if record is None:
        _count(left_out, NO_ID)
    return record


def _said(exc: BaseException) -> str:
    return " ".join(str(exc).split())[:200] or type(exc).__name__


def _count(left_out: dict[str, int], reason: str) -> None:
    left_out[reason] = left_out.get(reason, 0) + 1


def _read_checksum(path: Path) -> str | None:
    try:
        with path.open("rb") as handle:
            return _parse_checksum(handle.read(MAX_CHECKSUM), str(path))
    except OSError as exc:
        raise DatasetError(f"{path}: cannot be read ({exc.strerror or exc}); check it, or remove it") from None


def _parse_checksum(data: bytes, where: str) -> str | None:
    """An .md5sum's digest, 32 hex digits: Europeana's drop leading zeros; a ``md5sum`` tool's add the file name.
    None, with a warning, for what is no checksum (a web server's error page saved under its name): as a stale
    one, it says nothing of the zip, whose CRCs still guard it."""
    words = data.decode("ascii", errors="replace").split()
    digest = words[0].lower() if words else ""
    if not digest or len(digest) > 32 or any(c not in "0123456789abcdef" for c in digest):
        log.warning("%s: not an MD5 checksum (expected hex digits): the zip is read without it", where)
        return None
    return digest.rjust(32, "0")


def _check_md5(path: Path, expected: str | None, where: str) -> None:
    if expected is None:
        return
    started = time.monotonic()
    digest = hashlib.md5(usedforsecurity=False)
    try:
        with path.open("rb") as handle:
            while block := handle.read(2**20):
                digest.update(block)
    except OSError as exc:
        raise DatasetError(f"{where}: cannot be read ({exc.strerror or exc}); check it and run again") from None
    actual = digest.hexdigest()
    log.debug("MD5 of %s in %.1f s", where, time.monotonic() - started)
    if actual != expected:
        # Europeana's checksums are often stale (a zip rebuilt, its .md5sum not: shared/europeana_bulk.md §B), so a
        # mismatch alone says little; a damaged zip is refused by its own checks, each entry's CRC as it is read.
        log.warning(
            "%s: its MD5 is %s but its .md5sum says %s (Europeana's are often stale): reading it anyway, each entry "
            "checked against its CRC",
            where,
            actual,
            expected,
        )
