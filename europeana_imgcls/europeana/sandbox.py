"""A local stand-in of Europeana: a Search API in the documented shape and an image host.

It is a real HTTP server on 127.0.0.1 over a generated catalogue, for trying ``eic`` without a key
or the network and for testing scripts in CI (``eic sandbox``, or ``Sandbox(SandboxConfig(...))`` from
Python). The user's settings are ``SandboxConfig``'s (the flags of ``eic sandbox``); what only tests and the
demo set (the catalogue's shape, stalls, latency, tokens) is ``Knobs``; ``fail_next`` makes any route fail on cue.

Search API (``/record/v2/search.json``): cursor paging (a partial last page still carries a cursor;
the empty page after it does not), ``rows`` silently capped at 100, ``reusability`` filters,
``qf`` filters, ``sort=random_<seed>``, JSON error bodies (401 for a bad key, 400 for a bad query),
records without ``edmIsShownBy``, records under several concepts, optional 429/503 faults.

Image host (``/images/<n>.jpg``): each good image is drawn so that its class can be learnt (a hue
and a stripe angle per class; multi-label records show one band per label). Some records point at
deliberately bad answers under ``/faults/<kind>/<n>`` instead, listed in ``FAULTS``. With
``image_fail_every`` the image host answers every Nth image with 503 and ``Retry-After`` once.

Thumbnail API: ``/thumbnail/v3/{200|400}/{md5 of the media URL}`` and, for the ``edmPreview`` links,
``/thumbnail/v2/url.json?uri=...``. Thumbnails exist for dead links too (Europeana made them at
ingestion); with ``thumbnail_missing_every`` every Nth record has none: v3 answers 404 and v2 the
generic placeholder icon, as the real service does.

Bulk metadata (``sandbox_bulk.py``): the same records as EDM RDF/XML, over OAI-PMH at ``/oai`` (GET and POST; sets,
from/until, resumption tokens, Europeana's errors) and as dataset dumps at ``/dumps/XML/<dataset>.zip`` with their
``.zip.md5sum`` (``write_dumps`` puts them in a folder), so the three sources find the same records.

Quota: with ``quota`` the Search API counts requests in windows of ``quota_window`` seconds, announces
them in ``RateLimit-Policy`` / ``RateLimit`` headers and answers 429 past the quota, as Europeana's key
service does.
"""

from __future__ import annotations

import base64
import contextlib
import functools
import gzip
import hashlib
import io
import json
import math
import random
import re
import sys
import threading
import time
from collections import Counter, deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, ClassVar
from urllib.parse import parse_qs, quote, unquote, urlsplit

from PIL import Image

from ..core.config import DEMO_API_KEY, REUSABILITY_LEVELS, SandboxConfig
from .annotation_standin import SANDBOX_TOKEN, AnnotationStore
from .sandbox_bulk import RIGHTS, EdmWriter, OaiRepository, dataset_zip, md5sum
from .sandbox_images import VARIANTS, bomb_png, draw_image, encode, first_half, variant_bytes
from .thumbnails import placeholder_bytes
from .vocabulary import load_vocabulary

Answer = tuple[int, dict[str, Any], dict[str, str]]  # status, JSON body, extra headers
# Answers that must end up in failures.csv, never as a file.
ANNOTATION_PATHS = ("/annotations/", "/annotation/")
IMAGE_PATHS = ("/images/", "/faults/", "/thumbnail/")  # what the image host and the Thumbnail API answer
SEARCH_PATHS = ("/record/v2/search.json", "/api/v2/search.json")
OAI_PATHS = ("/oai", "/oai/record")  # the application's path, and the one Europeana's documentation gives
DUMP_PATH = "/dumps/XML/"  # as ftp://download.europeana.eu/dataset/XML/<dataset>.zip
FAULTS = ("404", "html", "truncated", "bomb", "endless", "stall", "redirect-loop", "empty")


@dataclass(frozen=True)
class SandboxRecord:
    serial: int
    id: str
    labels: tuple[str, ...]
    level: str
    type: str = "IMAGE"
    has_url: bool = True
    fault: str | None = None
    variant: str | None = None
    shows: tuple[str, ...] | None = None  # planted label noise: what the image shows, when not ``labels``

    @property
    def mislabelled(self) -> bool:
        return self.shows is not None

    @property
    def dataset(self) -> str:
        """The record's dataset: the numeric id its ID begins with (the set OAI-PMH serves it in, its dump)."""
        return self.id.split("/")[1]


@dataclass(frozen=True)
class Knobs:
    """What a test or the demo sets beside the user's ``SandboxConfig`` (no flag of ``eic sandbox`` sets it): the
    catalogue's shape, the server's habits, who may use it."""

    shared_per_concept: int = 2  # records under two concepts, per concept and level
    triples_per_concept: int = 1  # records under three
    no_url_every: int = 13  # every Nth record has no edmIsShownBy
    variant_every: int = 0  # every Nth good record's image is a variant that needs care (``VARIANTS``)
    image_fail_every: int = 0  # every Nth image is answered 503 with Retry-After once
    image_size: tuple[int, int] = (320, 240)
    stall_seconds: float = 5.0  # the longest a stalled answer is held (stop() sends it at once)
    search_latency: float = 0.0  # seconds each Search API answer takes, like a distant server
    oai_latency: float = 0.0  # seconds each OAI-PMH answer takes (the same as search_latency to compare the two)
    oai_page_size: int = 50  # records per ListRecords page (Europeana's 50; ListIdentifiers six times that)
    oai_token_ttl: float = 86_400.0  # seconds a resumption token lives (Europeana's 24 h)
    # Records a vocabulary harvest must leave out, per concept, appended after all others (no serial moves): N SOUND
    # records under the concept (every other one with an audio file) and N images under no concept of the vocabulary.
    strays: int = 0
    api_keys: tuple[str, ...] = (DEMO_API_KEY,)
    annotation_tokens: Mapping[str, str] = field(default_factory=lambda: {SANDBOX_TOKEN: "sandbox-user"})  # user


def build_catalogue(vocab: dict[str, str], config: SandboxConfig, knobs: Knobs) -> list[SandboxRecord]:
    """Records for every concept and level: mostly single-concept, a few shared by 2 or 3 concepts. With
    ``label_noise`` that share of the single-concept records shows another concept than its metadata says (the
    same records every time: the draw is seeded by the record)."""
    per_level, bad_every, label_noise = config.per_level, config.bad_every, config.label_noise
    no_url_every, variant_every = knobs.no_url_every, knobs.variant_every
    names = list(vocab)
    records: list[SandboxRecord] = []

    variants_made = 0

    def add(labels: tuple[str, ...], level: str, j: int, prefix: str) -> None:
        nonlocal variants_made
        serial = len(records)
        dataset = 9000 + 10 * names.index(labels[0]) + j % 3
        fault = None
        if bad_every and serial % bad_every == bad_every - 1:
            fault = FAULTS[(serial // bad_every) % len(FAULTS)]
        variant = None
        if variant_every and fault is None and serial % variant_every == variant_every // 2:
            variant = VARIANTS[variants_made % len(VARIANTS)]
            variants_made += 1
        shows = None
        draw = random.Random(serial).random()
        if label_noise and prefix == "obj" and len(names) > 1 and draw < label_noise:
            shift = 1 + int(draw * 10_007) % (len(names) - 1)  # another concept, spread over all of them
            shows = (names[(names.index(labels[0]) + shift) % len(names)],)
        records.append(
            SandboxRecord(
                serial=serial,
                id=f"/{dataset}/{prefix}_{'_'.join(labels)}_{level}_{j:05d}",
                labels=labels,
                level=level,
                has_url=not (no_url_every and serial % no_url_every == 5),
                fault=fault,
                variant=variant,
                shows=shows,
            )
        )

    for k, name in enumerate(names):
        for level in REUSABILITY_LEVELS:
            for j in range(per_level):
                add((name,), level, j, "obj")
            if len(names) > 1:
                for j in range(knobs.shared_per_concept):
                    add((name, names[(k + 1) % len(names)]), level, j, "pair")
            if len(names) > 2:
                for j in range(knobs.triples_per_concept):
                    add((name, names[(k + 1) % len(names)], names[(k + 2) % len(names)]), level, j, "triple")
            # A text record under the concept: TYPE:IMAGE must filter it out.
            records.append(
                SandboxRecord(
                    serial=len(records), id=f"/8999/text_{name}_{level}", labels=(name,), level=level, type="TEXT"
                )
            )
    records += _strays(names, len(records), knobs.strays)
    return records


def _strays(names: list[str], serial: int, count: int) -> list[SandboxRecord]:
    """``Knobs.strays``: per concept, SOUND records under it and images under none, in its datasets."""
    records = []
    for k, name in enumerate(names):
        for j in range(count):
            level = REUSABILITY_LEVELS[j % len(REUSABILITY_LEVELS)]
            dataset = 9000 + 10 * k + j % 3
            sound_id, unlisted_id = f"/{dataset}/sound_{name}_{j:05d}", f"/{dataset}/unlisted_{k}_{j:05d}"
            records.append(SandboxRecord(serial, sound_id, (name,), level, type="SOUND", has_url=j % 2 == 0))
            records.append(SandboxRecord(serial + 1, unlisted_id, (), level))
            serial += 2
    return records


# ----------------------------------------------------------------------------------------------
# The server


class Sandbox:
    """Start with ``with Sandbox(SandboxConfig(...)) as sb:`` (``Sandbox()``: the defaults on a free port) and
    point ``api_url`` or records' URLs at it."""

    def __init__(self, config: SandboxConfig | None = None, knobs: Knobs | None = None) -> None:
        config = config or SandboxConfig(port=0)  # from Python, a free port unless one is asked for
        knobs = knobs or Knobs()
        self.vocab = load_vocabulary(config.vocab)  # a dict or a JSON file, as HarvestConfig takes it
        self.catalogue = build_catalogue(self.vocab, config, knobs)
        self.api_keys = set(knobs.api_keys)
        self.fail_every = config.fail_every
        self.image_fail_every = knobs.image_fail_every
        self._refused_once: set[int] = set()
        if config.bad_every:
            bomb_png()  # a second to build: not while a client waits
        self.stall_seconds = knobs.stall_seconds
        self._stopping = threading.Event()
        # Tests hold answers after the first few (``hold_after``) to stop a client mid-way for sure.
        self._gate = threading.Event()
        self._gate.set()
        self._hold_after: int | None = None
        self._hold_paths: tuple[str, ...] = ()
        self._answered = 0
        self.held = 0  # image requests waiting at the gate now
        self._held_changed = threading.Condition()
        self.search_latency = knobs.search_latency
        self.image_size = knobs.image_size
        self.thumbnail_missing_every = config.thumbnail_missing_every
        self.quota, self.quota_window = config.quota, config.quota_window
        # The Annotations API stand-in: a token per user (the write routes want "Authorization: Bearer <token>").
        self.annotations = AnnotationStore(dict(knobs.annotation_tokens))
        self._window_start: float | None = None
        self._window_used = 0
        self.quota_refusals = 0  # 429s sent because the quota was spent
        self._by_digest: dict[str, int] | None = None
        self.hits: Counter[str] = Counter()
        # time.monotonic() of the latest requests, for rate checks (bounded: a sandbox may serve for days)
        self.request_times: deque[float] = deque(maxlen=100_000)
        self._search_count = 0
        self._lock = threading.Lock()
        self._class_index = {name: i for i, name in enumerate(self.vocab)}
        # fail_next: the paths, the status, the answers left, whether the request is carried out first
        self._failing: tuple[tuple[str, ...], int, int, bool] | None = None
        self._server = LoopbackServer(("127.0.0.1", config.port), _make_handler(self))
        self._server.daemon_threads = True
        self._thread: threading.Thread | None = None
        # The bulk paths (sandbox_bulk.py): built on first use, as most sandboxes never serve them.
        self.oai_latency, self.oai_page_size, self.oai_token_ttl = (
            knobs.oai_latency,
            knobs.oai_page_size,
            knobs.oai_token_ttl,
        )
        self.oai_requests: deque[dict[str, list[str]]] = deque(maxlen=10_000)  # every OAI-PMH request's parameters
        self._oai: OaiRepository | None = None
        self._dumps: dict[str, bytes] = {}

    @property
    def base_url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host!s}:{port}"

    @property
    def api_url(self) -> str:
        return f"{self.base_url}/record/v2/search.json"

    def start(self) -> Sandbox:
        # stop() waits up to one poll interval for the loop to notice: the default half second, or the 50 ms this
        # took before, adds up over the hundred sandboxes a test run starts and stops; a wake-up every 10 ms costs
        # an idle sandbox nothing it would notice.
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.01}, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stopping.set()  # stalled and held answers go out now, not seconds later
        self._gate.set()
        self._server.shutdown()
        self._server.server_close()

    def hold_after(self, answers: int, paths: tuple[str, ...] = IMAGE_PATHS) -> None:
        """From now on, answer ``answers`` more requests for ``paths`` (images, or SEARCH_PATHS), then hold every
        later one until ``release()`` (or the sandbox stops): a client is then surely stopped mid-way, however
        fast the machine."""
        with self._held_changed:
            self._hold_after, self._hold_paths, self._answered = answers, paths, 0
            self._gate.clear()

    def fail_next(self, status: int, paths: tuple[str, ...], answers: int = 1, acted: bool = False) -> None:
        """Answer the next ``answers`` requests for ``paths`` (prefixes, as ``ANNOTATION_PATHS``) with ``status``
        and ``Retry-After: 0``, before anything else is looked at: how a test makes any route fail on cue.
        ``acted``: the request is carried out first and only its answer lost, as when a gateway gives up on a
        server that went on to store what it was sent. ``answers`` 0: nothing fails (what was on cue is dropped)."""
        with self._lock:
            self._failing = (paths, status, answers, acted) if answers > 0 else None

    def _failure(self, path: str) -> tuple[int, bool] | None:
        """The status a request for ``path`` is to fail with (``fail_next``) and whether it is carried out first,
        counted, or None."""
        with self._lock:
            if self._failing is None or not path.startswith(self._failing[0]):
                return None
            paths, status, left, acted = self._failing
            self._failing = (paths, status, left - 1, acted) if left > 1 else None
            return status, acted

    def release(self) -> None:
        """Send every held image answer, and hold no more."""
        with self._held_changed:
            self._hold_after = None
        self._gate.set()

    def wait_until_held(self, requests: int, timeout: float = 120.0) -> bool:
        """Block until at least ``requests`` image requests wait at the gate (False if ``timeout`` passes)."""
        with self._held_changed:
            return self._held_changed.wait_for(lambda: self.held >= requests, timeout)

    def _pass_gate(self, path: str) -> None:
        with self._held_changed:
            if self._hold_after is None or not path.startswith(self._hold_paths):
                return
            if self._answered < self._hold_after:
                self._answered += 1
                return
            self.held += 1
            self._held_changed.notify_all()
        self._gate.wait()
        with self._held_changed:
            self.held -= 1

    def serve_forever(self) -> None:
        self._server.serve_forever()

    def __enter__(self) -> Sandbox:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def count(self, prefix: str) -> int:
        with self._lock:
            return sum(n for path, n in self.hits.items() if path.startswith(prefix))

    # -- what the records say ------------------------------------------------------------------

    def image_url(self, record: SandboxRecord) -> str:
        if record.type == "SOUND":  # a sound recording's file (the sandbox has no audio to send: 404)
            return f"{self.base_url}/media/{record.serial}.mp3"
        if record.fault:
            return f"{self.base_url}/faults/{record.fault}/{record.serial}"
        return f"{self.base_url}/images/{record.serial}.jpg"

    # -- the bulk paths: the same records as EDM (sandbox_bulk.py)

    @property
    def edm(self) -> EdmWriter:
        """The writer of the records' EDM RDF/XML: the media URLs and rights the Search API gives them."""
        return EdmWriter(
            self.vocab,
            media_url=lambda r: self.image_url(self.catalogue[r.serial]) if r.has_url else None,
            landing=lambda r: f"{self.base_url}/object/{r.serial}",
            mime=lambda r: _mime(self.catalogue[r.serial]),
            image_size=self.image_size,
        )

    @property
    def oai(self) -> OaiRepository:
        """The OAI-PMH repository over the whole catalogue (built on first use)."""
        with self._lock:
            if self._oai is None:
                self._oai = OaiRepository(
                    self.catalogue,
                    self.edm,
                    self.base_url + OAI_PATHS[0],
                    page_size=self.oai_page_size,
                    token_ttl=self.oai_token_ttl,
                )
            return self._oai

    @property
    def datasets(self) -> list[str]:
        """Every dataset of the catalogue, as OAI-PMH's ListSets orders them (most records first)."""
        return list(self.oai.sets)

    def dump(self, dataset: str) -> bytes | None:
        """A dataset's dump (a zip of one EDM file per record), or None for a dataset the catalogue lacks."""
        with self._lock:
            if dataset not in self._dumps:
                records = [r for r in self.catalogue if r.dataset == dataset]
                if not records:
                    return None
                self._dumps[dataset] = dataset_zip(records, self.edm)
            return self._dumps[dataset]

    def dump_url(self, dataset: str) -> str:
        return f"{self.base_url}{DUMP_PATH}{dataset}.zip"

    def write_dumps(self, folder: Path, datasets: list[str] | None = None) -> list[Path]:
        """Each dataset's dump and its ``.md5sum`` into ``folder``, as Europeana's FTP server lays them out
        (``<dataset>.zip``, ``<dataset>.zip.md5sum``): the zips written."""
        folder.mkdir(parents=True, exist_ok=True)
        written = []
        for dataset in datasets if datasets is not None else self.datasets:
            data = self.dump(dataset)
            if data is None:
                raise ValueError(f"the sandbox has no dataset {dataset}")
            (folder / f"{dataset}.zip").write_bytes(data)
            (folder / f"{dataset}.zip.md5sum").write_text(md5sum(data), encoding="ascii")
            written.append(folder / f"{dataset}.zip")
        return written

    def item(self, record: SandboxRecord, key: str) -> dict[str, Any]:
        url = self.image_url(record)
        item: dict[str, Any] = {
            "id": record.id,
            "type": record.type,
            "guid": f"https://www.europeana.eu/item{record.id}?utm_source=api&utm_medium=api&utm_campaign={key}",
            "link": f"{self.base_url}/record/v2{record.id}.json",
            "title": [self.item_title(record)],
            "edmConcept": [self.vocab[label] for label in record.labels],
            "edmIsShownAt": [f"{self.base_url}/object/{record.serial}"],
            "edmPreview": [f"{self.base_url}/thumbnail/v2/url.json?uri={quote(url, safe='')}&type=IMAGE"],
            "rights": [RIGHTS[record.level]],
            "dataProvider": [f"Sandbox Museum {record.id.split('/')[1]}"],
            "provider": ["Sandbox Aggregator"],
            "country": ["Europe"],
            "edmDatasetName": [f"{record.id.split('/')[1]}_Sandbox"],
            "score": 1.0,
            "completeness": 5,
            "index": record.serial,
        }
        if record.has_url:
            item["edmIsShownBy"] = [url]
        return item

    def has_thumbnail(self, serial: int) -> bool:
        return not (self.thumbnail_missing_every and serial % self.thumbnail_missing_every == 0)

    def thumbnail(self, digest: str) -> int | None:
        """The serial of the record whose media URL has this MD5 (v3 names thumbnails so)."""
        with self._lock:
            if self._by_digest is None:
                self._by_digest = {
                    hashlib.md5(self.image_url(r).encode()).hexdigest(): r.serial for r in self.catalogue if r.has_url
                }
            return self._by_digest.get(digest.lower())

    def spend_quota(self) -> tuple[bool, dict[str, str]]:
        """Count one Search API request: whether it is within the quota, and the headers that say so."""
        if not self.quota:
            return True, {}
        with self._lock:
            now = time.monotonic()
            if self._window_start is None or now - self._window_start >= self.quota_window:
                self._window_start, self._window_used = now, 0
            self._window_used += 1
            allowed = self._window_used <= self.quota
            self.quota_refusals += not allowed
            left = max(0, self.quota - self._window_used)
            reset = max(0.0, self.quota_window - (now - self._window_start))
        headers = {
            "RateLimit-Policy": f'"personal";q={self.quota};w={self.quota_window:g}',
            "RateLimit": f'"personal";r={left};t={math.ceil(reset)}',
        }
        return allowed, headers

    def busy_image_host(self, serial: int) -> bool:
        """Every ``image_fail_every``-th image is answered 503 the first time it is asked for."""
        if not self.image_fail_every or serial % self.image_fail_every:
            return False
        with self._lock:
            first = serial not in self._refused_once
            self._refused_once.add(serial)
        return first

    def image_bytes(self, serial: int, *, max_side: int = 0) -> tuple[bytes, str]:
        """The record's image as the image host (or, ``max_side``, the Thumbnail API) sends it."""
        record = self.catalogue[serial]
        size = self.image_size
        if record.variant == "large":
            size = (size[0] * 5, size[1] * 5)
        return _served(*self._style(serial), serial, size, record.variant, max_side)

    def _drawn(self, serial: int, size: tuple[int, int]) -> Image.Image:
        return draw_image(*self._style(serial), seed=serial, size=size)

    def _style(self, serial: int) -> tuple[tuple[int, ...], int]:
        """The classes a record's image shows, and of how many: a stray under no concept, the stripes of none."""
        record = self.catalogue[serial]
        indices = tuple(self._class_index[label] for label in (record.shows or record.labels))
        return (indices, len(self.vocab)) if indices else ((0,), 1)

    def search(self, params: dict[str, list[str]], key: str) -> Answer:
        """Answer one Search API request: (status, body, extra headers)."""
        failed = self._search_fault()
        if failed is not None:
            return failed
        try:
            query = _query(params)
            offset, rows, cursor = _window(params)
        except _BadRequest as bad:
            return 400, _error(*bad.args), {}
        hits = _sorted(self._matching(query, params), (params.get("sort") or [""])[0])
        page = hits[offset : offset + rows]
        body: dict[str, Any] = {
            "apikey": key,
            "success": True,
            "requestNumber": 999,
            "itemsCount": len(page),
            "totalResults": len(hits),
            "items": [self.item(r, key) for r in page],
        }
        if cursor is not None and page:
            body["nextCursor"] = _encode_cursor(offset + len(page))
        return 200, body, {}

    def _search_fault(self) -> Answer | None:
        """Every ``fail_every``-th search: 429 and 503 in turn, with Retry-After 0."""
        with self._lock:
            self._search_count += 1
            n = self._search_count
        if not (self.fail_every and n % self.fail_every == 0):
            return None
        status = 429 if (n // self.fail_every) % 2 else 503
        message = "Too many requests" if status == 429 else "Service unavailable"
        return status, _error(message, code=f"{status}"), {"Retry-After": "0"}

    def _matching(self, query: str, params: dict[str, list[str]]) -> list[SandboxRecord]:
        filters = [query, *params.get("qf", [])]
        uris = [u for f in filters for u in re.findall(r'"(https?://[^"]+)"', f)]
        types = [t for f in filters for t in re.findall(r"\bTYPE:(\w+)", f)]
        free_text = re.sub(r'[\w_]+:"[^"]*"|"[^"]*"|\bTYPE:\w+|\bAND\b|\*(:\*)?', " ", query)
        words = [w.lower() for w in free_text.split()]
        levels = {
            w
            for value in params.get("reusability", [])
            for w in re.split(r"[,\s+]+", value.lower())
            if w in REUSABILITY_LEVELS
        }
        by_uri = {uri: name for name, uri in self.vocab.items()}
        wanted = {by_uri.get(u, u) for u in uris}
        return [
            r
            for r in self.catalogue
            if wanted <= set(r.labels)
            and all(r.type == t for t in types)
            and (not levels or r.level in levels)
            and all(w in self.item_title(r).lower() for w in words)
        ]

    @staticmethod
    def item_title(record: SandboxRecord) -> str:
        return f"Sandbox {' and '.join(record.labels)} no. {record.serial}"


def _mime(record: SandboxRecord) -> str:
    """The media type Europeana's media processing found for a record's file (an ``edm:WebResource``)."""
    if record.type == "SOUND":
        return "audio/mpeg"
    return "image/png" if record.variant == "rgba-png" else "image/jpeg"


def _error(message: str, code: str | None = None) -> dict[str, Any]:
    body: dict[str, Any] = {"success": False, "error": message, "message": message}
    if code:
        body["code"] = code
    return body


class _BadRequest(Exception):
    """A search the Search API answers 400: its message and code (``_error``'s arguments)."""


def _query(params: dict[str, list[str]]) -> str:
    query = _param(params, "query")
    if query is None:
        raise _BadRequest("Required parameter 'query' missing")
    if not query.strip():
        raise _BadRequest("Empty search query parameter", "400-SE")
    return query


def _window(params: dict[str, list[str]]) -> tuple[int, int, str | None]:
    """Which records a search asks for: (offset, rows, cursor), as the Search API reads them."""
    try:
        rows = min(int((params.get("rows") or ["12"])[0]), 100)
        start = int((params.get("start") or ["1"])[0])
    except ValueError as exc:
        raise _BadRequest(str(exc)) from None
    cursor = _param(params, "cursor")
    if cursor is None:
        if start - 1 + rows > 1000:
            raise _BadRequest(
                "It is not possible to paginate beyond the first 1000 search results. "
                "Please use cursor-based pagination instead",
                "400-SL",
            )
        return start - 1, rows, None
    if start > 1:
        raise _BadRequest("Parameters 'start' and 'cursor' cannot be used together", "400-SD")
    offset = start - 1 if cursor == "*" else _decode_cursor(cursor)
    if offset is None:
        raise _BadRequest("Invalid cursor value. Please make sure you encode the cursor value", "400-SC")
    return offset, rows, cursor


def _encode_cursor(offset: int) -> str:
    return "AoE/" + base64.b64encode(json.dumps({"o": offset}).encode()).decode()


def _decode_cursor(cursor: str) -> int | None:
    try:
        data = json.loads(base64.b64decode(cursor.removeprefix("AoE/"), validate=True))
        return int(data["o"])
    except (ValueError, KeyError, TypeError):
        return None


def _param(params: dict[str, list[str]], name: str) -> str | None:
    """A query parameter's first value, or None when it is not given."""
    values = params.get(name)
    return values[0] if values else None


def _sorted(records: list[SandboxRecord], sort: str) -> list[SandboxRecord]:
    first = sort.split(",")[0].strip().split(" ")[0] if sort else ""
    if first.startswith("random"):
        # An unseeded "random" is re-drawn on every request, as on the real server.
        seed = first.partition("_")[2] or str(random.random())
        return sorted(records, key=lambda r: (hashlib.sha1(f"{seed}{r.id}".encode()).digest(), r.id))
    if first == "europeana_id":
        return sorted(records, key=lambda r: r.id, reverse="desc" in sort.split(",")[0])
    return records


class LoopbackServer(ThreadingHTTPServer):
    """The sandbox's server (and the tests' stand-ins'): threads, quiet about clients that hang up."""

    # socketserver's backlog is 5: a client opening more connections at once (the downloader opens up to
    # --concurrency) while the accepting thread waits for the GIL overflows it, and the kernel drops the SYNs
    # the client then resends a whole second later.
    request_queue_size = 128

    def handle_error(self, request: Any, client_address: Any) -> None:
        # Clients hang up on endless or stalled answers on purpose; that is not a server error.
        if not isinstance(sys.exc_info()[1], ConnectionError):
            super().handle_error(request, client_address)


def _make_handler(sandbox: Sandbox) -> type[BaseHTTPRequestHandler]:
    """The request handler class of ``sandbox`` (http.server makes one handler per request)."""

    class Handler(_Handler):
        pass

    Handler.sandbox = sandbox
    return Handler


Params = dict[str, list[str]]


class _Handler(BaseHTTPRequestHandler):
    """Every route of the sandbox: a method each, found through the routing tables below (``_GET``...)."""

    protocol_version = "HTTP/1.1"
    # Headers and body go out in separate writes; without this, Nagle's algorithm and
    # delayed ACKs add 40 ms to every keep-alive answer.
    disable_nagle_algorithm = True
    sandbox: ClassVar[Sandbox]
    body = b""

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - quiet server
        pass

    def do_GET(self) -> None:  # noqa: N802 - http.server's naming
        self._handle(_GET)

    def do_POST(self) -> None:  # noqa: N802
        self._handle(_POST)

    def do_DELETE(self) -> None:  # noqa: N802
        self._handle(_DELETE)

    def do_PUT(self) -> None:  # noqa: N802
        self._handle(_PUT)

    def _handle(self, routes: tuple[Route, ...]) -> None:
        sandbox, parts = self.sandbox, urlsplit(self.path)
        with sandbox._lock:
            sandbox.hits[parts.path] += 1
            sandbox.request_times.append(time.monotonic())
        params = parse_qs(parts.query, keep_blank_values=True)
        # Read whatever is answered: a body left unread would be taken for the next request on the connection.
        self.body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            sandbox._pass_gate(parts.path)
            failure = sandbox._failure(parts.path)
            answer = next((answer for matches, answer in routes if matches(parts.path)), _Handler._not_found)
            if failure is not None:
                status, acted = failure
                if acted:  # carried out, and its answer lost on the way
                    self._unheard(answer, parts.path, params)
                return self._json(status, _error(f"failing on cue ({status})", code=str(status)), {"Retry-After": "0"})
            answer(self, parts.path, params)
        return None

    def _unheard(self, answer: Callable[[_Handler, str, Params], None], path: str, params: Params) -> None:
        """Carry out a request, writing its answer nowhere."""
        wfile, self.wfile = self.wfile, io.BytesIO()
        try:
            answer(self, path, params)
        finally:
            self.wfile = wfile

    # -- the Search API and the Annotations API ------------------------------------------------

    def _search(self, path: str, params: Params) -> None:
        sandbox = self.sandbox
        key = self.headers.get("X-Api-Key") or (params.get("wskey") or [""])[0]
        if key not in sandbox.api_keys:
            message = "Empty API key provided!" if not key else "Invalid API key provided!"
            body = {"success": False, "error": "Unauthorized", "message": message, "code": "invalid_apikey"}
            return self._json(401, body, {})
        time.sleep(sandbox.search_latency)
        allowed, quota_headers = sandbox.spend_quota()
        if not allowed:
            body = {
                "success": False,
                "error": "Too many requests",
                "message": "usage limit reached for this API key",
                "code": "429_limit_personal",
            }
            return self._json(429, body, quota_headers)
        status, body, headers = sandbox.search(params, key)
        return self._json(status, body, {**headers, **quota_headers})

    def _annotation_search(self, path: str, params: Params) -> None:
        query, page, size = (_param(params, name) for name in ("query", "page", "pageSize"))
        profile, base = _param(params, "profile") or "", self.sandbox.base_url
        self._answer(*self.sandbox.annotations.search(query or "", page or "0", size or "10", profile, base))

    def _annotation(self, path: str, params: Params) -> None:
        self._answer(*self.sandbox.annotations.get(path.removeprefix("/annotation/")))

    def _post_annotations(self, path: str, params: Params) -> None:
        self._answer(*self.sandbox.annotations.post_batch(self.headers.get("Authorization"), self.body))

    def _delete_annotation(self, path: str, params: Params) -> None:
        authorization = self.headers.get("Authorization")
        self._answer(*self.sandbox.annotations.delete(authorization, path.removeprefix("/annotation/")))

    def _answer(self, status: int, body: dict[str, Any] | None) -> None:
        if body is None:
            self.send_response(status)
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        self._json(status, body, {})

    # -- the bulk paths: OAI-PMH and the dataset dumps ------------------------------------------

    def _oai(self, path: str, params: Params) -> None:
        sandbox = self.sandbox
        if self.command == "POST":  # a form's fields, as Europeana's own request forms post them
            params = parse_qs(self.body.decode("utf-8", "replace"), keep_blank_values=True)
        with sandbox._lock:
            sandbox.oai_requests.append(params)
        time.sleep(sandbox.oai_latency)
        status, body = sandbox.oai.answer(params, self.command)
        headers = {}
        if "gzip" in (self.headers.get("Accept-Encoding") or ""):
            body, headers = gzip.compress(body, mtime=0), {"Content-Encoding": "gzip"}
        self._send(status, body, "text/xml;charset=UTF-8", headers)

    def _dump(self, path: str, params: Params) -> None:
        name = path.removeprefix(DUMP_PATH)
        dataset, checksum = name.removesuffix(".md5sum").removesuffix(".zip"), name.endswith(".zip.md5sum")
        data = self.sandbox.dump(dataset) if re.fullmatch(r"\d+\.zip(\.md5sum)?", name) else None
        if data is None:
            return self._not_found(path, params)
        if checksum:
            return self._send(200, md5sum(data).encode("ascii"), "text/plain")
        return self._send(200, data, "application/zip")

    # -- the image host and the Thumbnail API --------------------------------------------------

    def _image(self, path: str, params: Params) -> None:
        serial = _serial(path.rsplit("/", 1)[-1].removesuffix(".jpg"), self.sandbox)
        if serial is None:
            return self._not_found(path, params)
        if self.sandbox.busy_image_host(serial):
            return self._send(503, b"busy", "text/plain", {"Retry-After": "0"})
        return self._send(200, *self.sandbox.image_bytes(serial))

    def _thumbnail(self, path: str, params: Params) -> None:
        uri = unquote((params.get("uri") or [""])[0])
        match = re.search(r"/(?:images|faults/[\w-]+)/(\d+)", uri)
        serial = _serial(match.group(1), self.sandbox) if match else None
        if serial is None:
            return self._send(404, b"Media file not found", "text/plain")
        if not self.sandbox.has_thumbnail(serial):  # v2 never says 404: it sends the generic icon
            return self._send(200, placeholder_bytes(), "image/png")
        size = 200 if (params.get("size") or ["w400"])[0].endswith("200") else 400
        return self._send(200, *self.sandbox.image_bytes(serial, max_side=size))

    def _thumbnail_v3(self, path: str, params: Params) -> None:
        parts = path.split("/")[3:]
        if len(parts) != 2 or parts[0] not in ("200", "400") or not re.fullmatch(r"[0-9a-fA-F]{8,128}", parts[1]):
            return self._json(400, _error("Invalid size or id. Supported sizes are 200 and 400"), {})
        serial = self.sandbox.thumbnail(parts[1])
        if serial is None or not self.sandbox.has_thumbnail(serial):
            return self._json(404, {"success": False, "status": 404, "error": "Media file not found"}, {})
        return self._send(200, *self.sandbox.image_bytes(serial, max_side=int(parts[0])))

    # -- deliberately bad answers (``FAULTS``) ---------------------------------------------------

    def _fault(self, path: str, params: Params) -> None:
        kind = path.split("/")[2]
        if kind in _FAULT_ANSWERS:
            return self._send(*_FAULT_ANSWERS[kind]())
        special = {"redirect-loop": self._redirect_loop, "stall": self._stall, "endless": self._endless}.get(kind)
        if special is None:
            return self._send(404, b"unknown fault", "text/plain")
        return special()

    def _redirect_loop(self) -> None:
        self.send_response(302)
        self.send_header("Location", self.path)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def _stall(self) -> None:
        """Held until the client gives up and the sandbox stops (or ``stall_seconds`` pass)."""
        self.sandbox._stopping.wait(self.sandbox.stall_seconds)
        self._send(200, encode(draw_image((0,), 2, seed=2)), "image/jpeg")

    def _endless(self) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "image/jpeg")
        self.send_header("Connection", "close")
        self.end_headers()
        chunk = b"\xff" * 65536
        deadline = time.monotonic() + 60  # a bounded "endless" body: the client must give up first
        while time.monotonic() < deadline:
            self.wfile.write(chunk)
        self.close_connection = True

    # -- writing answers -------------------------------------------------------------------------

    def _not_found(self, path: str, params: Params) -> None:
        self._send(404, b"not found", "text/plain")

    def _json(self, status: int, body: dict[str, Any], headers: dict[str, str]) -> None:
        self._send(status, json.dumps(body).encode(), "application/json;charset=UTF-8", headers)

    def _send(self, status: int, data: bytes, content_type: str, headers: dict[str, str] | None = None) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(data)))
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(data)


Route = tuple[Callable[[str], bool], Callable[[_Handler, str, Params], None]]


def _is(*paths: str) -> Callable[[str], bool]:
    return lambda path: path in paths


def _under(prefix: str) -> Callable[[str], bool]:
    return lambda path: path.startswith(prefix)


# The routing tables: the first route whose path matches answers (so /annotation/search before /annotation/N).
_GET: tuple[Route, ...] = (
    (_is(*SEARCH_PATHS), _Handler._search),
    (_is("/annotation/search"), _Handler._annotation_search),
    (_under("/annotation/"), _Handler._annotation),
    (_under("/images/"), _Handler._image),
    (_under("/faults/"), _Handler._fault),
    (_is("/thumbnail/v2/url.json"), _Handler._thumbnail),
    (_under("/thumbnail/v3/"), _Handler._thumbnail_v3),
    (_is(*OAI_PATHS), _Handler._oai),
    (_under(DUMP_PATH), _Handler._dump),
)
_POST: tuple[Route, ...] = (
    (lambda path: path.rstrip("/") == "/annotations", _Handler._post_annotations),
    (_is(*OAI_PATHS), _Handler._oai),
)
_DELETE: tuple[Route, ...] = ((_under("/annotation/"), _Handler._delete_annotation), (_is(*OAI_PATHS), _Handler._oai))
_PUT: tuple[Route, ...] = ((_is(*OAI_PATHS), _Handler._oai),)
# The faults answered with a plain body: status, bytes, content type (made when asked for).
_FAULT_ANSWERS: dict[str, Callable[[], tuple[int, bytes, str]]] = {
    "404": lambda: (404, b"<html>Not found</html>", "text/html"),
    "html": lambda: (200, b"<!doctype html><html><body>Image viewer</body></html>", "text/html"),
    "truncated": lambda: (200, first_half(encode(draw_image((0,), 2, seed=1))), "image/jpeg"),
    "bomb": lambda: (200, bomb_png(), "image/png"),
    "empty": lambda: (200, b"", "image/jpeg"),
}


@functools.lru_cache(maxsize=512)
def _served(
    indices: tuple[int, ...], count: int, seed: int, size: tuple[int, int], variant: str | None, max_side: int
) -> tuple[bytes, str]:
    """An image's bytes as served, made once a process for all its sandboxes: a re-run, a retry, a preview and the
    next sandbox of the same catalogue ask for the same images again, and drawing them is most of the CPU a download
    from the sandbox costs (a 320 x 240 image 6 ms, a "large" one 170 ms). 512 of 320 x 240: 18 MB (a large one:
    0.8 MB)."""
    image = draw_image(indices, count, seed=seed, size=size)
    if max_side:
        image.thumbnail((max_side, max_side))
        return encode(image, quality=85), "image/jpeg"
    return variant_bytes(image, variant)


def _serial(text: str, sandbox: Sandbox) -> int | None:
    if not (text.isascii() and text.isdigit()) or int(text) >= len(sandbox.catalogue):  # not "²"
        return None
    return int(text)
