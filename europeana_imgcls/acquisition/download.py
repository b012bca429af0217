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
reason. A re-run skips saved files and known failures; ``retry_failed`` retries only the latter. Every
outcome is journaled as it comes (``core/journal.py``: ``DIR/.journal/``), so a run killed at any moment
loses nothing it learnt, and a shard's outcomes wait in its part for the run that merges them.
Every row of the table ends as saved, already there, a known failure, a new failure or a skipped
row (no ID, no category, a repeated ID), so the report's counts add up to the table; and whatever a
run knew before it started (failures, multi-label labels) is still known however the run ends.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import math
import os
import stat
import time
import unicodedata
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
from rich.progress import Progress, TaskID

from ..core.config import DownloadConfig, public_dict
from ..core.errors import DatasetError
from ..core.journal import Journal, Output, read_records
from ..core.naming import MAX_NAME_BYTES, file_name, id_named
from ..core.outputs import OutputKind
from ..core.progress import RATE, Rate, progress_bar
from ..core.recognise import csv_header, peek_json
from ..core.retry import RETRYABLE, Failed, Retry, retry_after, send_async
from ..core.sharding import Shard
from ..core.sidecars import small_regular_file, special_kind
from ..core.tables import (
    check_columns,
    count_rows,
    is_own_temp,
    iter_table,
    read_csv_salvaged,
    table_columns,
    write_csv,
    write_json,
)
from ..europeana.ratelimit import RateLimit
from ..europeana.thumbnails import is_placeholder, shows, thumbnail_url
from ..europeana.tls import tls_context
from .images import DecodeBudget, ImageRejected, is_complete_jpeg, save_normalised
from .placement import SET_ASIDE_LIST, Placement, write_set_aside


def _stranger(folder: Path) -> str | None:
    """What in ``folder`` says eic download did not fill it (None: nothing does): a ``config.json`` of a project's
    own, or a list at the top (labels, failures, fetched) that is not download's. Class folders and images are what
    it fills, so a re-run carries the folder on."""
    settings = folder / CONFIG_FILE
    if os.path.lexists(settings):
        data = peek_json(settings)
        if not (isinstance(data, dict) and {"table", "output_dir"} <= set(data)):
            return f"{CONFIG_FILE} is not eic download's"
    for path, columns in (
        (folder / LABELS_FILE, LABEL_COLUMNS),
        (folder / FAILURES_FILE, FAILURE_COLUMNS),
        (folder / FETCHED_FILE, FETCHED_COLUMNS),
    ):
        if os.path.lexists(path) and not (small_regular_file(path) and csv_header(path) == list(columns)):
            return f"{path.name} is not eic download's"
    return None


DOWNLOAD = OutputKind("download", "a download folder (eic download's)", folder=True, stranger=_stranger)
FAILURE_COLUMNS = ["ID", "URL", "error"]
LABEL_COLUMNS = ("ID", "file", "category")
FAILURES_FILE, LABELS_FILE, CONFIG_FILE = "failures.csv", "labels.csv", "config.json"
# Where each saved image came from (the thumbnail, the original, the preview): what a review task shows people.
FETCHED_FILE, FETCHED_COLUMNS = "fetched.csv", ("ID", "file", "URL")
_TOP_FILES = frozenset({FAILURES_FILE, LABELS_FILE, FETCHED_FILE, CONFIG_FILE})  # download's own, at the top
CANNOT_WRITE = "cannot write"
TRANSIENT = (CANNOT_WRITE, "thumbnail: ")  # the disk here; the Thumbnail API's CDN answering 5xx or not at all
PLACEHOLDER = "no image (the Thumbnail API's placeholder icon)"
NO_THUMBNAIL = ("HTTP 404", "HTTP 410", PLACEHOLDER)  # what says a record has no thumbnail
OTHER_SHARD = "another shard's record"
MAX_WAIT = 30.0
CONNECTIONS_PER_CLIENT = 4
MAX_TABLES = 1000  # the tables a folder's settings may list that are read back (a folder lists those added to it)


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
    errors: dict[str, int] = field(default_factory=dict)  # failures by reason
    example: dict[str, str] = field(default_factory=dict)  # the first whole error of each reason
    complete: bool = False  # False when the run was interrupted
    failures_file: Path | None = None  # failures.csv (a shard's wait in its journal part for the merge)
    moved: int = 0  # records already in the folder under another class, moved to the table's (not fetched)
    # Files moved out of the class folders (set_aside.csv): records the table no longer holds (``prune``), a record's
    # copy in another class, or an image its table no longer names.
    set_aside: int = 0
    set_aside_file: Path | None = None
    left: int = 0  # records the table no longer holds, left where they are (without ``prune``)

    @property
    def accounted(self) -> int:
        """Rows the run reached: equal to ``total`` once the run is complete."""
        return (
            self.saved
            + self.already_saved
            + self.failed
            + self.known_failures
            + self.other_shards
            + sum(self.skipped.values())
        )

    @property
    def images_per_second(self) -> float:
        return self.saved / self.seconds if self.seconds else 0.0


def category_dir(root: Path, category: str) -> Path:
    if not _folder_name_ok(category):
        raise DatasetError(f"category {category!r} cannot be a folder name inside {root}")
    # One spelling a class: "café" typed on one system (é) and pasted from another (e + accent) is one folder.
    return root / unicodedata.normalize("NFC", category.strip())


def _folder_name_ok(category: str) -> bool:
    """Whether a category can be a class folder: not hidden (training never reads one, and eic's own folders are
    hidden), not one of the folder's own files, and short enough for a file name."""
    name = category.strip()
    return (
        bool(name)
        and not name.startswith(".")
        and not any(sep in name for sep in ("/", "\\", "\0"))
        and name.lower() not in _TOP_FILES
        and not (name.lower().startswith(SET_ASIDE_LIST.removesuffix(".csv")) and name.lower().endswith(".csv"))
        and len(name.encode("utf-8")) <= MAX_NAME_BYTES
    )


def download(config: DownloadConfig) -> DownloadReport:
    """Fetch the images of ``config.table`` into ``config.output_dir``; see the module docstring."""
    total = count_rows(config.table)
    _check_table(config)
    root = config.output_dir
    shard = config.shard_spec
    # The journal first: it asks the output policy (a re-run carries the folder on; never through a link), then
    # takes its lock, so a run that another run's (or shard's) lock turns away touches nothing.
    with Outcomes(root, config) as outcomes:
        before = filled_from(root)
        _check_table_of(config, before)
        # Refuses links and FIFOs in the folder.
        placement = Placement(root, config.mode == "multi-label", shard, outcomes.saved_files())
        _remove_stale_parts(root, shard)
        if shard is None:  # shards share the folder: the run that merges them writes what they share
            # The table by where it is, so the next run (from any folder) knows which table filled this one.
            tables = _tables_after(config, before)
            write_json(root / CONFIG_FILE, {**public_dict(config), "table": tables[-1], "tables": tables})
        report = DownloadReport(output_dir=root, failures_file=root / FAILURES_FILE if shard is None else None)
        try:
            with warnings.catch_warnings():
                # Pillow warns about images above its own limit; max_pixels decides, and says so per record.
                warnings.simplefilter("ignore", Image.DecompressionBombWarning)
                _run_loop(_run(config, outcomes, report, total, placement))
            report.complete = True
            if config.prune:  # asked, after a run over the whole table: the folder now mirrors it
                placement.set_aside_the_rest()
            elif not config.retry_failed:
                report.left = placement.unclaimed()
        finally:
            # However the run ends (Ctrl-C included), what was known before it is kept.
            outcomes.finish(report.complete)
            report.moved, report.set_aside = placement.moved, len(placement.set_aside)
            if placement.set_aside:
                report.set_aside_file = write_set_aside(root, placement.set_aside, shard)
    _check_one_cause(config, report)
    return report


def _check_table_of(config: DownloadConfig, before: list[Path]) -> None:
    """A folder eic filled from another table is not filled from this one unless asked: the records of a training
    set would otherwise sit beside an evaluation set's (``add`` asks for that; ``prune`` makes the folder this
    table's, setting aside what it does not hold). Every table added to a folder is its own until one prunes it."""
    if config.add or config.prune:
        return
    if not before or config.table.resolve() in before:
        return
    which = f"another table ({before[0]})" if len(before) == 1 else f"other tables ({', '.join(map(str, before))})"
    raise DatasetError(
        f"{config.output_dir} holds the images of {which}: download {config.table} into a new "
        f"folder (`output_dir`), or pass `add` to add its records to this one (`prune` to make the folder this "
        "table's, setting aside the records it does not hold)"
    )


def filled_from(folder: Path) -> list[Path]:
    """The tables eic download filled ``folder`` from, by where they are, the last one last (none: no download's
    settings there): ``tables``, every table a run added (``add``) since the folder was made or pruned, and
    ``table``, the last (all a folder said before tables were listed). Read as untrusted: what is not a path is
    left out."""
    settings = peek_json(folder / CONFIG_FILE)
    if not isinstance(settings, dict):
        return []
    listed = settings.get("tables")
    named = [*(listed[:MAX_TABLES] if isinstance(listed, list) else []), settings.get("table")]
    # Settings written before the table was recorded by where it is name it as it was typed: from here, then.
    found = [Path(t).resolve() for t in named if isinstance(t, str) and t and "\0" not in t]
    return list(dict.fromkeys(found))


def _tables_after(config: DownloadConfig, before: list[Path]) -> list[str]:
    """The tables the folder holds after this run (``before``: those it held): this one alone when it prunes,
    else those before and this."""
    this = config.table.resolve()
    kept = [] if config.prune else [t for t in before if t != this]
    return [str(t) for t in [*kept, this]]


def _check_one_cause(config: DownloadConfig, report: DownloadReport) -> None:
    """Nothing saved, and every failure of one cause on this side: a setting or the machine, not the records.
    Said in one line (and a plain re-run tries them all again, see ``sticks``)."""
    if report.saved or report.already_saved or not report.failed or len(report.errors) != 1:
        return
    (reason,) = report.errors
    cause = report.example[reason]
    if cause.startswith(CANNOT_WRITE):
        raise DatasetError(
            f"nothing could be saved under {config.output_dir}: {cause}; free the disk (or choose "
            "another `output_dir`) and run again: the records are tried again"
        )
    if cause.startswith("thumbnail: "):
        raise DatasetError(
            f"every thumbnail request failed ({cause.removeprefix('thumbnail: ')}) at "
            f"{config.thumbnail_url}: check `thumbnail_url` (EUROPEANA_THUMBNAIL_URL; eic sandbox "
            "prints its own) or use `source` original; a re-run tries the records again"
        )


def _required(config: DownloadConfig) -> tuple[str, ...]:
    return ("ID", "URL", "category") if config.mode == "single-label" else ("ID", "URL")


def _check_table(config: DownloadConfig) -> None:
    """Fail fast, from the header and before any request, on a table that lacks what the settings need."""
    names = table_columns(config.table, config.columns)
    if config.source == "thumbnail" and "URL" not in names:
        raise DatasetError(
            f"{config.table}: `source` thumbnail needs the media URL column 'URL' (a thumbnail is "
            "named by the MD5 of it); map the table's own with `columns`, e.g. URL=image_url"
        )
    check_columns(config.table, names, _required(config))


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
            category: str | None = row.get("category")  # every column is read as text (see core.tables)
            if not record_id:
                yield "no ID"
            elif shard is not None and not shard.owns(record_id):
                yield OTHER_SHARD
            elif config.mode == "single-label" and not category:
                yield "no category"
            elif record_id in seen:
                yield "repeated ID"  # one file per record: a second row would fetch over the first
            elif config.mode == "single-label" and category and not _folder_name_ok(category):
                yield "category that cannot be a folder name"
            else:
                seen.add(record_id)
                # A single-label row has its category here: those without one were turned away above.
                folder = category_dir(root, category) if config.mode == "single-label" and category else root
                yield Job(
                    id=record_id,
                    url=row["URL"],
                    preview=row["preview"] if has_preview else None,
                    category=category,
                    path=folder / file_name(record_id),
                )


async def _run(
    config: DownloadConfig, outcomes: Outcomes, report: DownloadReport, rows: int, placement: Placement
) -> None:
    started = time.perf_counter()
    workers = config.workers or os.cpu_count() or 2
    host_limits: defaultdict[str, asyncio.Semaphore] = defaultdict(lambda: asyncio.Semaphore(config.per_host))
    slots = asyncio.Semaphore(config.concurrency)
    created_dirs: set[Path] = set()
    fields, rate = (RATE, "{task.fields[failed]} failed"), Rate()  # images saved per second
    with (
        progress_bar(config.quiet, *fields) as progress,
        ThreadPoolExecutor(max_workers=workers, thread_name_prefix="eic-decode") as pool,
    ):
        task = progress.add_task("download", total=rows, failed=0, rate=rate)
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
                    _class_folder(job.path.parent)
                    created_dirs.add(job.path.parent)
                if not _wanted(job, config, outcomes, report, placement):
                    progress.advance(task)
                    continue
                # Bound the tasks waiting for a slot, so a million-row table never sits in memory.
                while len(pending) >= config.concurrency * 4:
                    _, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
                pending.add(
                    asyncio.create_task(
                        _one(fetcher, job, outcomes, report, lambda: _tick(progress, task, report, rate))
                    )
                )
            if pending:
                await asyncio.wait(pending)
    report.seconds = time.perf_counter() - started


def _class_folder(folder: Path) -> None:
    """A class folder, made where there is none; a file, a link or anything else standing there is refused in one
    line naming it (not the system's "File exists")."""
    if folder.is_symlink() or (os.path.lexists(folder) and not folder.is_dir()):
        mode = folder.lstat().st_mode
        raise DatasetError(
            f"{folder} is {'a file' if stat.S_ISREG(mode) else special_kind(mode)}, where eic download keeps a "
            "class's images: move it away, or download into another `output_dir`"
        )
    folder.mkdir(parents=True, exist_ok=True)


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
    tls = tls_context()  # the process's: loading the CA bundle costs ~50 ms each time
    return [
        httpx.AsyncClient(
            limits=limits, timeout=timeout, follow_redirects=True, max_redirects=10, headers=headers, verify=tls
        )
        for _ in range(count)
    ]


def _wanted(job: Job, config: DownloadConfig, outcomes: Outcomes, report: DownloadReport, placement: Placement) -> bool:
    # There (or moved there from another class), and of the image the table names now: a record whose URL changed
    # since is fetched again, or its old picture would be labelled as the new one's.
    there = placement.place(job.path) and is_complete_jpeg(job.path)
    failed_before = job.id in outcomes.listed  # the record's own failure or a passing trouble: --retry-failed's
    if there and (outcomes.still_of(job) or (config.retry_failed and not failed_before)):
        report.already_saved += 1
        outcomes.saved(job, earlier=True)
        return False
    if config.retry_failed and not failed_before:  # left for a plain run
        report.skipped["not a known failure (only those are retried)"] += 1
        return False
    if not config.retry_failed and outcomes.known_failure(job):
        report.known_failures += 1
        outcomes.keep(job.id)
        return False
    if there:  # another image's: set aside (kept, listed), not the record's even where the new one fails
        placement.replaced(job.path)
    return True


async def _one(fetcher: Fetcher, job: Job, outcomes: Outcomes, report: DownloadReport, tick: object) -> None:
    fetched = None
    try:
        error, fetched = await _attempt(fetcher, job)
    except Exception as exc:  # a bug or a surprise costs this record, recorded, never the run's count
        error = f"unexpected error ({type(exc).__name__}: {str(exc)[:120]})"
    if error:
        report.failed += 1
        reason = error.split(" (")[0].split(";")[0]
        report.errors[reason] = report.errors.get(reason, 0) + 1
        report.example.setdefault(reason, error)
        outcomes.failed(job, error)
    else:
        report.saved += 1
        outcomes.saved(job, fetched=fetched)
    tick()  # type: ignore[operator]


async def _attempt(fetcher: Fetcher, job: Job) -> tuple[str | None, str | None]:
    """Why the record's image could not be had (None when saved), and the URL it was saved from."""
    config = fetcher.config
    source = job.url
    if job.url and config.source == "thumbnail":
        source = thumbnail_url(config.thumbnail_url, job.url, config.max_side)
        error = await fetcher.save(source, job.path)
        if error and error.startswith(NO_THUMBNAIL):  # the record's own image, only where there is no thumbnail
            source = job.url
            original = await fetcher.save(job.url, job.path)
            error = f"{original}; thumbnail: {error}" if original else None
        elif error:  # the CDN failed (5xx, 429, timeout): no reason to load the museum's server; retry later
            error = f"thumbnail: {error}"
    else:
        error = await fetcher.save(job.url, job.path) if job.url else "no URL"
    if error and job.preview and config.fallback_preview:
        source = job.preview
        preview_error = await fetcher.save(job.preview, job.path)
        error = f"{error}; preview: {preview_error}" if preview_error else None
    return error, None if error else source


class Fetcher:
    """Fetch one URL with retries and limits, and hand the bytes to a worker thread to save."""

    def __init__(
        self,
        clients: list[httpx.AsyncClient],
        config: DownloadConfig,
        host_limits: defaultdict[str, asyncio.Semaphore],
        slots: asyncio.Semaphore,
        pool: ThreadPoolExecutor,
    ) -> None:
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
        result: bytes | str | Failed = await send_async(
            lambda: self._attempt(url, host), Retry(self.config.retries, cap=MAX_WAIT)
        )
        if isinstance(result, Failed):  # the retries are spent: the last reason is the record's
            return result.reason
        if isinstance(result, str):
            return result
        if is_placeholder(result):
            return PLACEHOLDER
        return await self._store(result, path)

    async def _attempt(self, url: str, host: str) -> bytes | str | Failed:
        """One fetch inside the host's and the run's limits (held while fetching, never while waiting to retry)."""
        async with self.host_limits[host], self.slots:
            return await self._fetch(url)

    async def _fetch(self, url: str) -> bytes | str | Failed:
        """The body, or the reason it cannot be had (final), or a passing failure worth another attempt."""
        await self.rate.wait()
        try:
            async with asyncio.timeout(self.config.timeout):
                client = self.clients[next(self._turn) % len(self.clients)]
                async with client.stream("GET", url) as response:
                    return self._refusal(response) or await self._body(response)
        except (TimeoutError, httpx.TimeoutException):  # our whole-attempt deadline, or httpx's own
            return Failed("timeout")
        except httpx.TooManyRedirects:
            return "redirect loop"
        except httpx.DecodingError:  # the server's own: it says gzip (or br) and sends something else
            return "undecodable body (its Content-Encoding)"
        except httpx.RemoteProtocolError:
            return Failed("truncated")
        except httpx.UnsupportedProtocol:  # a TransportError too, but the record's own: url_problem saw http(s)
            return "redirected to a URL that is not http(s)"
        except httpx.TransportError as exc:
            return Failed(f"connection error ({type(exc).__name__})")
        except httpx.InvalidURL:
            return "invalid URL"

    def _refusal(self, response: httpx.Response) -> str | Failed | None:
        """Why an answer's headers already say it holds no image (final, or passing), else None."""
        status = response.status_code
        if status in RETRYABLE:
            asked = response.headers.get("Retry-After")
            if status == 429 and self.config.rate:
                self.rate.pause(min(retry_after(asked) or 0.0, MAX_WAIT))  # every task waits
            return Failed(f"HTTP {status}", asked)
        if status != 200:
            return f"HTTP {status}"
        kind = response.headers.get("content-type", "").split(";")[0].strip().lower()
        if kind.startswith("text/") or kind in ("application/json", "application/xml"):
            return f"not an image ({kind})"
        declared = response.headers.get("content-length")
        if declared and declared.isdigit() and int(declared) > self.config.max_bytes:
            return f"too many bytes ({declared})"
        return None

    async def _body(self, response: httpx.Response) -> bytes | str:
        """The body, streamed, or why it is no image: past ``max_bytes`` (stopped there), or empty."""
        parts, size = [], 0  # joined once at the end: one copy of the body, not many
        async for chunk in response.aiter_bytes():
            parts.append(chunk)
            size += len(chunk)
            if size > self.config.max_bytes:
                return f"too many bytes (over {self.config.max_bytes})"
        return b"".join(parts) if size else "empty"

    async def _store(self, data: bytes, path: Path) -> str | None:
        """Decode, resize and write in a worker thread: None when saved, else why not."""
        loop = asyncio.get_running_loop()
        try:
            await loop.run_in_executor(
                self.pool,
                lambda: save_normalised(
                    data,
                    path,
                    max_side=self.config.max_side,
                    max_pixels=self.config.max_pixels,
                    quality=self.config.quality,
                    budget=self.budget,
                ),
            )
        except ImageRejected as exc:
            return str(exc)
        except OSError as exc:
            return f"{CANNOT_WRITE} ({exc.strerror})"
        return None


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


class Outcomes:
    """What a download knows of its records, journaled as it learns it (``DIR/.journal/``).

    Known failures come from ``failures.csv`` and the journal: a shard's own part, or, for the run that merges,
    every shard's (oldest first, so a newer outcome wins). Each save and failure of this run is journaled at
    once. When a run without shard ends, ``failures.csv`` (and a multi-label folder's ``labels.csv``) are
    written whole: a complete run lists its table's failures and labels and empties the journal; an interrupted
    one keeps every earlier failure it did not get to and adds what it learnt. A shard writes neither: its
    part waits for the merge.
    """

    def __init__(self, root: Path, config: DownloadConfig) -> None:
        self.root, self.shard, self.multi = root, config.shard_spec, config.mode == "multi-label"
        self.journal = Journal(
            root / ".journal",
            what=f"the download into {root}",
            settings=config.resume_settings(),
            shard=self.shard,
            hint="download with the `mode` it was started with, or into another `output_dir`",
            check=_outcome,
        )
        self.listed: dict[str, dict[str, str]] = {}  # earlier failures: record ID -> ID, URL, error
        self.failures: dict[str, dict[str, str]] = {}  # of them, the known ones: a re-run does not try them again
        self.labels: dict[str, tuple[str, str]] = {}  # a multi-label folder's earlier labels: ID -> file, category
        self.kept: dict[str, dict[str, str]] = {}  # this run: known failures still in the table
        self.new: dict[str, dict[str, str]] = {}  # this run's failures
        self.rows: dict[str, tuple[str, str]] = {}  # this run's saved (and already saved) images
        self.fetched: dict[str, tuple[str, str]] = {}  # record ID -> its file and the URL it was saved from
        self.resolved: set[str] = set()  # earlier failures saved by this run

    def __enter__(self) -> Outcomes:
        self.journal.open(output=Output(self.root, DOWNLOAD, option="output_dir"))
        try:
            self._read()
        except BaseException:
            self.journal.close()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.journal.close()

    def _read(self) -> None:
        """What the folder's lists say, then what the journal learnt since (newer: it wins)."""
        self._read_lists()
        for record_id, outcome in self.journal.entries():
            if outcome.get("error") is None:
                self.listed.pop(record_id, None)
                self.labels[record_id] = (outcome.get("file") or "", outcome.get("category") or "")
                if outcome.get("fetched"):
                    self.fetched[record_id] = (outcome.get("file") or "", outcome["fetched"])
            else:
                self.listed[record_id] = {"ID": record_id, "URL": outcome.get("URL") or "", "error": outcome["error"]}
        self.failures = {k: v for k, v in self.listed.items() if sticks(v["error"])}

    def _read_lists(self) -> None:
        """``labels.csv`` (a multi-label folder's), ``fetched.csv`` and ``failures.csv``, as the last run left them."""
        if self.shard is None and self.multi:
            for row in _csv_rows(self.root / LABELS_FILE, "their images are labelled again when the table has them"):
                if row.get("ID"):
                    self.labels[row["ID"]] = (row.get("file") or "", row.get("category") or "")
        for row in _csv_rows(self.root / FETCHED_FILE, "review tasks show their table's URL"):
            if row.get("ID") and row.get("URL"):
                self.fetched[row["ID"]] = (row.get("file") or "", row["URL"])
        for row in _csv_rows(self.root / FAILURES_FILE, "their records are tried again"):
            if row.get("ID"):
                self.listed[row["ID"]] = {c: row.get(c) or "" for c in FAILURE_COLUMNS}

    def saved_files(self) -> dict[str, str]:
        """The files earlier runs saved here, by name: their record IDs."""
        return {file: record for record, (file, _) in (self.labels | self.fetched).items() if file}

    def still_of(self, job: Job) -> bool:
        """Whether the file saved for ``job``'s record came from its table's image: that URL, its preview, or a
        thumbnail of it (any size: the Thumbnail API names an image by its URL's MD5). A file no run listed (a
        folder from before ``fetched.csv``) is taken as it is."""
        fetched = self.fetched.get(job.id)
        if fetched is None:
            return True
        return fetched[1] == job.preview or shows(fetched[1], job.url)

    def known_failure(self, job: Job) -> bool:
        """Whether a plain re-run leaves ``job``'s record as failed: its own failure (``sticks``), of the URL its
        table names now (a corrected URL is tried)."""
        failure = self.failures.get(job.id)
        return failure is not None and failure["URL"] == (job.url or "")

    def keep(self, record_id: str) -> None:
        self.kept[record_id] = self.failures[record_id]

    def failed(self, job: Job, error: str) -> None:
        self.new[job.id] = {"ID": job.id, "URL": job.url or "", "error": error}
        self.journal.append(job.id, {"URL": job.url, "error": error})
        self.journal.flush()

    def saved(self, job: Job, earlier: bool = False, fetched: str | None = None) -> None:
        """``job``'s image is in the folder: saved now from ``fetched``, or there ``earlier``."""
        self.rows[job.id] = (job.path.name, job.category or "")
        if fetched:
            self.fetched[job.id] = (job.path.name, fetched)
        if job.id in self.listed:
            self.resolved.add(job.id)
        if not earlier or job.id in self.listed:  # what the journal does not know yet
            self.journal.append(job.id, {"file": job.path.name, "category": job.category, "fetched": fetched})
            self.journal.flush()

    def finish(self, complete: bool) -> None:
        """The run's end, however it came: the files people read, written whole (see the class docstring). A
        shard writes nothing: its part waits for the merge."""
        if complete:  # every shard's outcome goes into the files, then the journal's parts go
            self.journal.merge(lambda _: self._write(complete))
        elif self.shard is None:  # what this run learnt is in the files: its own part goes, the shards' wait
            self._write(complete)
            self.journal.remove_own_part()

    def _write(self, complete: bool) -> None:
        """``failures.csv``, ``fetched.csv`` (and a multi-label folder's ``labels.csv``) from what the journal held
        as the run started (every part read in order, so a record's newest outcome wins) and what the run learnt."""
        if complete:
            failures, labels = {**self.kept, **self.new}, self.rows
        else:
            failures = {k: v for k, v in self.listed.items() if k not in self.resolved} | self.new
            labels = self.labels | self.rows
        write_csv(self.root / FAILURES_FILE, FAILURE_COLUMNS, failures.values())
        fetched = {k: v for k, v in self.fetched.items() if k in self.rows} if complete else self.fetched
        write_csv(self.root / FETCHED_FILE, FETCHED_COLUMNS, ((record_id, *row) for record_id, row in fetched.items()))
        if self.multi:
            write_csv(self.root / LABELS_FILE, LABEL_COLUMNS, ((record_id, *row) for record_id, row in labels.items()))


def sticks(error: str) -> bool:
    """Whether a failure is the record's own (a 404, not an image, too big: a re-run skips it), not a passing
    trouble on this side (the disk, the Thumbnail API's CDN out of reach: a re-run tries the record again)."""
    return not error.startswith(TRANSIENT)


def _outcome(value: Any) -> bool:
    """A journaled outcome as ``Outcomes`` writes it: a save (``file``, ``category``) or a failure (``URL``,
    ``error``), each text (a category or URL may be missing); any other value is a damaged line."""
    if not isinstance(value, dict):
        return False
    if value.get("error") is None:
        return (
            isinstance(value.get("file"), str)
            and isinstance(value.get("category"), str | None)
            and isinstance(value.get("fetched"), str | None)
        )
    return isinstance(value["error"], str) and isinstance(value.get("URL"), str | None)


def fetched_from(folder: Path) -> dict[str, str]:
    """Where each image of a download folder was saved from, by record ID: as the last whole run listed it, then as
    the journal learnt since (a shard's outcomes wait there for the merge)."""
    rows = _csv_rows(folder / FETCHED_FILE, "their images are named by their table's URL")
    fetched = {row["ID"]: row["URL"] for row in rows if row.get("ID") and row.get("URL")}
    for part in sorted((folder / ".journal").glob("*.ndjson")) if (folder / ".journal").is_dir() else ():
        for record_id, outcome in read_records(part, check=_outcome):
            if isinstance(outcome.get("fetched"), str) and outcome.get("error") is None:
                fetched[record_id] = outcome["fetched"]
    return fetched


def _csv_rows(path: Path, then: str) -> list[dict[str, str]]:
    """A list eic wrote earlier, read for what it holds whole: a damaged row is left out and said (``then``: what
    that costs), never the end of the run."""
    if not path.is_file():  # a FIFO, say, is never opened
        return []
    return read_csv_salvaged(path, then)


def _remove_stale_parts(root: Path, shard: Shard | None = None) -> None:
    """Temporary files of a run that was killed: only names eic gives its own temporary files, and in a
    shard only those of its own records (the other shards may be writing theirs right now); never through a
    link to a folder outside."""
    for folder in (root, *(p for p in root.iterdir() if p.is_dir() and not p.is_symlink())):
        with os.scandir(folder) as entries:
            for entry in entries:
                if is_own_temp(entry.name) and entry.is_file(follow_symlinks=False) and _mine(entry.name, shard):
                    os.unlink(entry.path)


def _mine(temp_name: str, shard: Shard | None) -> bool:
    if shard is None:
        return True
    record_id = id_named(temp_name[1:].rsplit(".", 2)[0])  # .<target>.<random>.eic-part
    return record_id is not None and shard.owns(record_id)


def _tick(progress: Progress, task: TaskID, report: DownloadReport, rate: Rate) -> None:
    rate.reached(report.saved)
    progress.update(task, advance=1, failed=report.failed)
