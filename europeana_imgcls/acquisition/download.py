"""``eic download``: every image of a table that can be had, fast, politely, never half-saved.

An asyncio loop fetches with one keep-alive httpx client under a global and a per-host limit,
streaming bodies and aborting past ``max_bytes``; decoding, resizing and encoding run in worker
threads (Pillow releases the GIL) so the loop keeps fetching. Files appear only when complete
(temporary name, then rename), so a run killed at any moment and re-run ends complete.

With ``source="thumbnail"`` each record is first asked of Europeana's Thumbnail API (one CDN, a 200 or
400 px rendition, named by the MD5 of the record's URL) and of its own URL only when there is no
thumbnail; the Thumbnail API's "no image" icon is never kept. ``rate`` caps the requests started per
second over all hosts. With ``shard`` a run fetches only the records whose ID hashes to its shard and
keeps its journals under its shard's names; a run without ``shard`` merges them.

Failures are data: each record that could not be had is a row of ``DIR/failures.csv`` with a short
reason. A re-run skips saved files and known failures; ``retry_failed`` retries only the latter.
Every row of the table ends as saved, already there, a known failure, a new failure or a skipped
row (no ID, no category, a repeated ID), so the report's counts add up to the table; and whatever a
run knew before it started (failures, multi-label labels) is still known however the run ends.
"""

from __future__ import annotations

import asyncio
import contextlib
import csv
import itertools
import math
import os
import time
import warnings
from collections import Counter, defaultdict
from collections.abc import Coroutine, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
from PIL import Image
from rich.progress import Progress

from ..core.config import DownloadConfig, public_dict
from ..core.errors import DatasetError
from ..core.naming import file_name, record_id_of
from ..core.progress import progress_bar
from ..core.retry import retry_after, wait_before
from ..core.sharding import Shard
from ..core.tables import atomic_path, check_columns, count_rows, is_own_temp, iter_table, table_columns, write_json
from ..europeana.ratelimit import RateLimit
from ..europeana.thumbnails import is_placeholder, thumbnail_url
from .images import DecodeBudget, ImageRejected, is_complete_jpeg, save_normalised

FAILURE_COLUMNS = ["ID", "URL", "error"]
PLACEHOLDER = "no image (the Thumbnail API's placeholder icon)"
NO_THUMBNAIL = ("HTTP 404", "HTTP 410", PLACEHOLDER)  # what says a record has no thumbnail
OTHER_SHARD = "another shard's record"
MAX_WAIT = 30.0
CONNECTIONS_PER_CLIENT = 4


@dataclass(frozen=True)
class Job:
    id: str
    url: str | None
    preview: str | None
    category: str | None
    path: Path


@dataclass
class DownloadReport:
    output_dir: Path
    total: int = 0
    saved: int = 0
    already_saved: int = 0
    failed: int = 0
    known_failures: int = 0
    other_shards: int = 0  # records another shard fetches
    skipped: Counter[str] = field(default_factory=Counter)  # rows that name no record to fetch, by reason
    seconds: float = 0.0
    errors: dict[str, int] = field(default_factory=dict)
    complete: bool = False  # False when the run was interrupted
    failures_file: Path | None = None  # failures.csv, or the shard's own

    @property
    def accounted(self) -> int:
        """Rows the run reached: equal to ``total`` once the run is complete."""
        return (self.saved + self.already_saved + self.failed + self.known_failures + self.other_shards
                + sum(self.skipped.values()))

    @property
    def images_per_second(self) -> float:
        return self.saved / self.seconds if self.seconds else 0.0


def category_dir(root: Path, category: str) -> Path:
    if not _folder_name_ok(category):
        raise DatasetError(f"category {category!r} cannot be a folder name inside {root}")
    return root / category.strip()


def _folder_name_ok(category: str) -> bool:
    name = category.strip()
    return bool(name) and name not in (".", "..") and not any(sep in name for sep in ("/", "\\", "\0"))


def download(config: DownloadConfig) -> DownloadReport:
    """Fetch the images of ``config.table`` into ``config.output_dir``; see the module docstring."""
    total = count_rows(config.table)
    _check_table(config)
    root = config.output_dir
    shard = config.shard_spec
    root.mkdir(parents=True, exist_ok=True)
    _remove_stale_parts(root, shard)
    write_json(root / _own_name("config.json", shard), public_dict(config))
    failures = FailureLog(root, shard)
    report = DownloadReport(output_dir=root, failures_file=failures.path)
    labels = LabelsWriter(root, shard) if config.mode == "multi-label" else None
    try:
        with warnings.catch_warnings():
            # Pillow warns about images above its own limit; max_pixels decides, and says so per record.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            _run_loop(_run(config, failures, report, labels, total))
        report.complete = True
    finally:
        # However the run ends (Ctrl-C included), what was known before it is kept.
        failures.close(report.complete)
        if labels is not None:
            labels.close(report.complete)
    return report


def _required(config: DownloadConfig) -> tuple[str, ...]:
    return ("ID", "URL", "category") if config.mode == "single-label" else ("ID", "URL")


def _check_table(config: DownloadConfig) -> None:
    """Fail fast, from the header and before any request, on a table that lacks what the settings need."""
    names = table_columns(config.table, config.columns)
    if config.source == "thumbnail" and "URL" not in names:
        raise DatasetError(f"{config.table}: `source` thumbnail needs the media URL column 'URL' (a thumbnail is "
                           "named by the MD5 of it); map the table's own with `columns`, e.g. URL=image_url")
    check_columns(config.table, names, _required(config))


def _own_name(name: str, shard: Shard | None) -> str:
    """A shard's own name for a file every run writes: config.json -> config.shard-1-of-4.json."""
    if shard is None:
        return name
    stem, dot, suffix = name.partition(".")
    return f"{stem}.{shard.tag}{dot}{suffix}"


def _run_loop(coroutine: Coroutine[Any, Any, None]) -> None:
    """asyncio.run, also from code that already runs an event loop (a notebook, say)."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(coroutine)
    with ThreadPoolExecutor(1) as runner:
        return runner.submit(asyncio.run, coroutine).result()


def _jobs(config: DownloadConfig) -> Iterator[Job | str]:
    """A job per row of the table, or the reason a row names nothing to fetch."""
    root = config.output_dir
    shard = config.shard_spec
    seen: set[str] = set()
    for chunk in iter_table(config.table, _required(config), columns=config.columns):
        has_preview = "preview" in chunk.columns
        for row in chunk.iter_rows(named=True):
            record_id = row["ID"]
            category = row.get("category")
            if not record_id:
                yield "no ID"
            elif shard is not None and not shard.owns(record_id):
                yield OTHER_SHARD
            elif config.mode == "single-label" and not category:
                yield "no category"
            elif record_id in seen:
                yield "repeated ID"  # one file per record: a second row would fetch over the first
            elif config.mode == "single-label" and not _folder_name_ok(category):
                yield "category that cannot be a folder name"
            else:
                seen.add(record_id)
                folder = category_dir(root, category) if config.mode == "single-label" else root
                yield Job(id=record_id, url=row["URL"], preview=row["preview"] if has_preview else None,
                          category=category, path=folder / file_name(record_id))


async def _run(config: DownloadConfig, failures: FailureLog, report: DownloadReport,
               labels: LabelsWriter | None, rows: int) -> None:
    started = time.perf_counter()
    workers = config.workers or os.cpu_count() or 2
    host_limits: defaultdict[str, asyncio.Semaphore] = defaultdict(lambda: asyncio.Semaphore(config.per_host))
    slots = asyncio.Semaphore(config.concurrency)
    created_dirs: set[Path] = set()
    fields = "{task.fields[rate]:.1f} images/s", "{task.fields[failed]} failed"
    with progress_bar(config.quiet, *fields) as progress, \
            ThreadPoolExecutor(max_workers=workers, thread_name_prefix="eic-decode") as pool:
        task = progress.add_task("download", total=rows, failed=0, rate=0.0)
        async with contextlib.AsyncExitStack() as stack:
            clients = [await stack.enter_async_context(client) for client in _clients(config)]
            fetcher = Fetcher(clients, config, host_limits, slots, pool)
            pending: set[asyncio.Task[None]] = set()
            # Registered after the clients, so it runs before they close: no task outlives its client.
            stack.push_async_callback(_cancel, pending)
            for job in _jobs(config):
                report.total += 1
                if isinstance(job, str):
                    if job == OTHER_SHARD:
                        report.other_shards += 1
                    else:
                        report.skipped[job] += 1
                    progress.advance(task)
                    continue
                if job.path.parent not in created_dirs:
                    job.path.parent.mkdir(parents=True, exist_ok=True)
                    created_dirs.add(job.path.parent)
                if not _wanted(job, config, failures, report, labels):
                    progress.advance(task)
                    continue
                # Bound the tasks waiting for a slot, so a million-row table never sits in memory.
                while len(pending) >= config.concurrency * 4:
                    _, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
                pending.add(asyncio.create_task(
                    _one(fetcher, job, failures, report, labels, lambda: _tick(progress, task, report, started))))
            if pending:
                await asyncio.wait(pending)
    report.seconds = time.perf_counter() - started


async def _cancel(pending: set[asyncio.Task[None]]) -> None:
    """Stop what is still in flight (Ctrl-C, an error) and wait for it, so no task is left to fail later."""
    for task in pending:
        task.cancel()
    await asyncio.gather(*pending, return_exceptions=True)


def _clients(config: DownloadConfig) -> list[httpx.AsyncClient]:
    """Several small connection pools rather than one large one.

    httpcore scans every pooled connection on each request and each response; with 32 connections
    in one pool that bookkeeping costs more CPU than decoding the image.
    """
    count = max(1, math.ceil(config.concurrency / CONNECTIONS_PER_CLIENT))
    size = math.ceil(config.concurrency / count)
    limits = httpx.Limits(max_connections=size, max_keepalive_connections=size)
    timeout = httpx.Timeout(config.timeout, connect=min(config.timeout, 10.0))
    headers = {"User-Agent": "europeana-imgcls (image classification research)"}
    tls = httpx.create_ssl_context()  # one for all: loading the CA bundle costs ~25 ms each time
    return [httpx.AsyncClient(limits=limits, timeout=timeout, follow_redirects=True, max_redirects=10,
                              headers=headers, verify=tls) for _ in range(count)]


def _wanted(job: Job, config: DownloadConfig, failures: FailureLog, report: DownloadReport,
            labels: LabelsWriter | None) -> bool:
    if job.path.exists() and is_complete_jpeg(job.path):
        report.already_saved += 1
        failures.resolve(job.id)
        if labels is not None:
            labels.add(job)
        return False
    known = job.id in failures.previous
    if known != config.retry_failed:
        if known:
            report.known_failures += 1
            failures.keep(job.id)
        else:  # --retry-failed and a record that has not failed before: left for a plain run
            report.skipped["not a known failure (only those are retried)"] += 1
        return False
    return True


async def _one(fetcher: Fetcher, job: Job, failures: FailureLog, report: DownloadReport,
               labels: LabelsWriter | None, tick: object) -> None:
    try:
        error = await _attempt(fetcher, job)
    except Exception as exc:  # a bug or a surprise costs this record, recorded, never the run's count
        error = f"unexpected error ({type(exc).__name__}: {str(exc)[:120]})"
    if error:
        report.failed += 1
        reason = error.split(" (")[0].split(";")[0]
        report.errors[reason] = report.errors.get(reason, 0) + 1
        failures.add(job, error)
    else:
        report.saved += 1
        failures.resolve(job.id)
        if labels is not None:
            labels.add(job)
    tick()  # type: ignore[operator]


async def _attempt(fetcher: Fetcher, job: Job) -> str | None:
    config = fetcher.config
    if job.url and config.source == "thumbnail":
        error = await fetcher.save(thumbnail_url(config.thumbnail_url, job.url, config.max_side), job.path)
        if error and error.startswith(NO_THUMBNAIL):  # the record's own image, only where there is no thumbnail
            original = await fetcher.save(job.url, job.path)
            error = f"{original}; thumbnail: {error}" if original else None
        elif error:  # the CDN failed (5xx, 429, timeout): no reason to load the museum's server; retry later
            error = f"thumbnail: {error}"
    else:
        error = await fetcher.save(job.url, job.path) if job.url else "no URL"
    if error and job.preview and config.fallback_preview:
        preview_error = await fetcher.save(job.preview, job.path)
        error = f"{error}; preview: {preview_error}" if preview_error else None
    return error


class Fetcher:
    """Fetch one URL with retries and limits, and hand the bytes to a worker thread to save."""

    def __init__(self, clients: list[httpx.AsyncClient], config: DownloadConfig,
                 host_limits: defaultdict[str, asyncio.Semaphore], slots: asyncio.Semaphore,
                 pool: ThreadPoolExecutor) -> None:
        self.clients, self.config, self.host_limits, self.slots, self.pool = clients, config, host_limits, slots, pool
        self.budget = DecodeBudget(config.decode_memory_mb << 20)
        self.rate = RateLimit(config.rate)
        self._turn = itertools.count()

    async def save(self, url: str, path: Path) -> str | None:
        """None when saved, else the short reason it could not be."""
        problem = url_problem(url)
        if problem:
            return problem
        host = httpx.URL(url).host
        result: bytes | str = "no attempt"
        for attempt in range(self.config.retries + 1):
            async with self.host_limits[host], self.slots:
                result, retry_after = await self._fetch(url)
            if isinstance(result, bytes) or retry_after is None:
                break
            if attempt < self.config.retries:
                await asyncio.sleep(wait_before(attempt, retry_after, cap=MAX_WAIT))
        if isinstance(result, str):
            return result
        if is_placeholder(result):
            return PLACEHOLDER
        loop = asyncio.get_running_loop()
        try:
            await loop.run_in_executor(self.pool, lambda: save_normalised(
                result, path, max_side=self.config.max_side, max_pixels=self.config.max_pixels,
                quality=self.config.quality, budget=self.budget))
        except ImageRejected as exc:
            return str(exc)
        except OSError as exc:
            return f"cannot write ({exc.strerror})"
        return None

    async def _fetch(self, url: str) -> tuple[bytes | str, str | None]:
        """(bytes, None) or (reason, None) when final, or (reason, the server's Retry-After or "") when worth
        retrying."""
        await self.rate.wait()
        try:
            async with asyncio.timeout(self.config.timeout):
                client = self.clients[next(self._turn) % len(self.clients)]
                async with client.stream("GET", url) as response:
                    status = response.status_code
                    if status == 429 or status >= 500:
                        asked = response.headers.get("Retry-After", "")
                        if status == 429 and self.config.rate:
                            self.rate.pause(min(retry_after(asked) or 0.0, MAX_WAIT))  # every task waits
                        return f"HTTP {status}", asked
                    if status != 200:
                        return f"HTTP {status}", None
                    kind = response.headers.get("content-type", "").split(";")[0].strip().lower()
                    if kind.startswith("text/") or kind in ("application/json", "application/xml"):
                        return f"not an image ({kind})", None
                    declared = response.headers.get("content-length")
                    if declared and declared.isdigit() and int(declared) > self.config.max_bytes:
                        return f"too many bytes ({declared})", None
                    parts, size = [], 0  # joined once at the end: one copy of the body, not many
                    async for chunk in response.aiter_bytes():
                        parts.append(chunk)
                        size += len(chunk)
                        if size > self.config.max_bytes:
                            return f"too many bytes (over {self.config.max_bytes})", None
        except (TimeoutError, httpx.TimeoutException):  # our whole-attempt deadline, or httpx's own
            return "timeout", ""
        except httpx.TooManyRedirects:
            return "redirect loop", None
        except httpx.RemoteProtocolError:
            return "truncated", ""
        except httpx.TransportError as exc:
            return f"connection error ({type(exc).__name__})", ""
        except (httpx.InvalidURL, httpx.UnsupportedProtocol):
            return "invalid URL", None
        if not size:
            return "empty", None
        return b"".join(parts), None


def url_problem(url: str) -> str | None:
    """Why ``url`` cannot be fetched, or None: decided before any request, for any string a table holds."""
    if not url.lower().startswith(("http://", "https://")):
        return f"not an http(s) URL ({url[:60]})"
    try:
        parsed = httpx.URL(url)
        urlsplit(url)  # stricter on brackets than httpx: http://[broken/x.jpg
    except (httpx.InvalidURL, ValueError, TypeError):
        return "invalid URL"
    return None if parsed.host else "invalid URL"


class FailureLog:
    """``failures.csv`` of earlier runs, plus a journal of this run's failures (kept if killed).

    A shard keeps its own (``failures.shard-1-of-4.csv``); a run without shard reads every shard's as
    known failures and, once complete, writes them all into ``failures.csv`` and removes the shards' files.
    """

    def __init__(self, root: Path, shard: Shard | None = None) -> None:
        self.path = root / _own_name("failures.csv", shard)
        self.journal_path = root / f".{_own_name('failures.journal.csv', shard)}"
        self.shard_files = [] if shard else sorted(
            p for pattern in ("failures.shard-*.csv", ".failures.shard-*.journal.csv") for p in root.glob(pattern))
        self.previous: dict[str, dict[str, str]] = {}
        # Oldest first, so a newer reason wins: the merged list, the shards' (a run without shard takes them
        # over), this run's own list, and the journal a killed run left behind.
        for path in dict.fromkeys((root / "failures.csv", *self.shard_files, self.path, self.journal_path)):
            if path.exists():
                with path.open(newline="", encoding="utf-8") as handle:
                    for row in csv.DictReader(handle, fieldnames=FAILURE_COLUMNS):
                        if row["ID"] != "ID":
                            self.previous[row["ID"]] = row
        self.kept: dict[str, dict[str, str]] = {}
        self.new: dict[str, dict[str, str]] = {}
        self.resolved: set[str] = set()  # earlier failures saved by this run
        self._journal = self.journal_path.open("a", newline="", encoding="utf-8")
        self._writer = csv.writer(self._journal)

    def keep(self, record_id: str) -> None:
        self.kept[record_id] = self.previous[record_id]

    def add(self, job: Job, error: str) -> None:
        row = {"ID": job.id, "URL": job.url or "", "error": error}
        self.new[job.id] = row
        self._writer.writerow([row[c] for c in FAILURE_COLUMNS])
        self._journal.flush()

    def resolve(self, record_id: str) -> None:
        if record_id in self.previous:
            self.resolved.add(record_id)

    def close(self, complete: bool) -> None:
        """A complete run lists the failures of its table; an interrupted one keeps every earlier
        failure it did not get to (and drops those it has since saved)."""
        self._journal.close()
        if complete:
            rows = {**self.kept, **self.new}
        else:
            rows = {k: v for k, v in self.previous.items() if k not in self.resolved} | self.new
        with atomic_path(self.path) as tmp, tmp.open("w", newline="", encoding="utf-8") as handle:
            writer = csv.DictWriter(handle, fieldnames=FAILURE_COLUMNS)
            writer.writeheader()
            writer.writerows(rows.values())
        self.journal_path.unlink(missing_ok=True)
        if complete:  # their rows are in failures.csv now
            for path in self.shard_files:
                path.unlink(missing_ok=True)


class LabelsWriter:
    """``labels.csv`` of a multi-label folder: ID, file, category for every saved image.

    A complete run rewrites it from the table (saved files of earlier runs included); an interrupted
    one adds what it saved to the rows that were there, so no saved image is ever left unlabelled. A
    shard writes ``labels.shard-1-of-4.csv``; a complete run without shard folds those in and removes them.
    """

    COLUMNS = ("ID", "file", "category")

    def __init__(self, root: Path, shard: Shard | None = None) -> None:
        self.path = root / _own_name("labels.csv", shard)
        self.shard_files = [] if shard else sorted(root.glob("labels.shard-*.csv"))
        self.previous: dict[str, tuple[str, str]] = {}
        for path in (*self.shard_files, self.path):
            if path.exists():
                with path.open(newline="", encoding="utf-8") as handle:
                    for row in csv.DictReader(handle):
                        if row.get("ID"):
                            self.previous[row["ID"]] = (row.get("file") or "", row.get("category") or "")
        self.rows: dict[str, tuple[str, str]] = {}

    def add(self, job: Job) -> None:
        self.rows[job.id] = (job.path.name, job.category or "")

    def close(self, complete: bool) -> None:
        rows = self.rows if complete else self.previous | self.rows
        with atomic_path(self.path) as tmp, tmp.open("w", newline="", encoding="utf-8") as handle:
            writer = csv.writer(handle)
            writer.writerow(self.COLUMNS)
            writer.writerows((record_id, *row) for record_id, row in rows.items())
        if complete:
            for path in self.shard_files:
                path.unlink(missing_ok=True)


def _remove_stale_parts(root: Path, shard: Shard | None = None) -> None:
    """Temporary files of a run that was killed: only names eic gives its own temporary files, and in a
    shard only those of its own records (the other shards may be writing theirs right now)."""
    for folder in (root, *(p for p in root.iterdir() if p.is_dir())):
        with os.scandir(folder) as entries:
            for entry in entries:
                if is_own_temp(entry.name) and entry.is_file(follow_symlinks=False) and _mine(entry.name, shard):
                    os.unlink(entry.path)


def _mine(temp_name: str, shard: Shard | None) -> bool:
    if shard is None:
        return True
    record_id = record_id_of(temp_name[1:].rsplit(".", 2)[0])  # .<target>.<random>.eic-part
    return record_id is not None and shard.owns(record_id)


def _tick(progress: Progress, task: object, report: DownloadReport, started: float) -> None:
    elapsed = time.perf_counter() - started
    progress.update(task, advance=1, failed=report.failed,  # type: ignore[arg-type]
                    rate=report.saved / elapsed if elapsed else 0.0)
