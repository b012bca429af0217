"""A local stand-in of Europeana: a Search API in the documented shape and an image host.

It is a real HTTP server on 127.0.0.1 over a generated catalogue, for trying ``eic`` without a key
or the network and for testing scripts in CI (``eic sandbox``, or ``Sandbox()`` from Python).

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

Quota: with ``quota`` the Search API counts requests in windows of ``quota_window`` seconds, announces
them in ``RateLimit-Policy`` / ``RateLimit`` headers and answers 429 past the quota, as Europeana's key
service does.
"""

from __future__ import annotations

import base64
import colorsys
import contextlib
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
from dataclasses import dataclass
from functools import lru_cache
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, quote, unquote, urlsplit

import numpy as np
from PIL import Image

from ..core.config import DEMO_API_KEY, REUSABILITY_LEVELS
from .annotation_standin import SANDBOX_TOKEN, AnnotationStore
from .thumbnails import placeholder_bytes
from .vocabulary import load_vocabulary

RIGHTS = {
    "open": "http://creativecommons.org/publicdomain/zero/1.0/",
    "restricted": "http://creativecommons.org/licenses/by-nc/4.0/",
    "permission": "http://rightsstatements.org/vocab/InC/1.0/",
}
# Answers that must end up in failures.csv, never as a file.
ANNOTATION_PATHS = ("/annotations/", "/annotation/")
IMAGE_PATHS = ("/images/", "/faults/", "/thumbnail/")  # what the image host and the Thumbnail API answer
SEARCH_PATHS = ("/record/v2/search.json", "/api/v2/search.json")
FAULTS = ("404", "html", "truncated", "bomb", "endless", "stall", "redirect-loop", "empty")
# Images that are valid but need care: converted, rotated or resized before saving.
VARIANTS = ("cmyk", "grey", "rgba-png", "exif-rotated", "large")


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


def build_catalogue(
    vocab: dict[str, str],
    per_level: int = 30,
    shared_per_concept: int = 2,
    triples_per_concept: int = 1,
    no_url_every: int = 13,
    bad_every: int = 0,
    variant_every: int = 0,
    label_noise: float = 0.0,
) -> list[SandboxRecord]:
    """Records for every concept and level: mostly single-concept, a few shared by 2 or 3 concepts. With
    ``label_noise`` that share of the single-concept records shows another concept than its metadata says (the
    same records every time: the draw is seeded by the record)."""
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
                for j in range(shared_per_concept):
                    add((name, names[(k + 1) % len(names)]), level, j, "pair")
            if len(names) > 2:
                for j in range(triples_per_concept):
                    add((name, names[(k + 1) % len(names)], names[(k + 2) % len(names)]), level, j, "triple")
            # A text record under the concept: TYPE:IMAGE must filter it out.
            records.append(
                SandboxRecord(
                    serial=len(records), id=f"/8999/text_{name}_{level}", labels=(name,), level=level, type="TEXT"
                )
            )
    return records


# ----------------------------------------------------------------------------------------------
# Drawing learnable images


def class_style(index: int, count: int) -> tuple[tuple[int, int, int], float, float]:
    """Colour, stripe angle and stripe period that identify class ``index`` of ``count``."""
    hue = index / max(count, 1)
    rgb = tuple(int(255 * c) for c in colorsys.hsv_to_rgb(hue, 0.75, 0.9))
    angle = np.pi * ((index * 7) % max(count, 1)) / max(count, 1)
    period = 6.0 + 5.0 * (index % 3)
    return rgb, angle, period  # type: ignore[return-value]


def draw_image(
    class_indices: tuple[int, ...], count: int, seed: int, size: tuple[int, int] = (320, 240)
) -> Image.Image:
    """An RGB image whose colour and stripes say its class(es); noise and jitter make each unique."""
    rng = np.random.default_rng(seed)
    width, height = size
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    scale = min(width, height) / 240.0
    canvas = np.zeros((height, width, 3), np.float32)
    bands = np.array_split(np.arange(width), len(class_indices))
    order = rng.permutation(len(class_indices))
    for band, pick in zip(bands, order, strict=True):
        rgb, angle, period = class_style(class_indices[pick], count)
        phase = rng.uniform(0, 2 * np.pi)
        wave = np.sin((xx * np.cos(angle) + yy * np.sin(angle)) / (period * scale) * 2 * np.pi + phase)
        stripes = (wave > 0).astype(np.float32)[:, band, None]
        colour = np.array(rgb, np.float32) * rng.uniform(0.8, 1.1)
        canvas[:, band] = colour * (0.55 + 0.45 * stripes)
    canvas += rng.normal(0, 12, canvas.shape)
    return Image.fromarray(np.clip(canvas, 0, 255).astype(np.uint8), "RGB")


def encode(image: Image.Image, fmt: str = "JPEG", **kwargs: Any) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **kwargs)
    return buffer.getvalue()


def _variant_bytes(image: Image.Image, variant: str | None) -> tuple[bytes, str]:
    if variant == "cmyk":
        return encode(image.convert("CMYK")), "image/jpeg"
    if variant == "grey":
        return encode(image.convert("L")), "image/jpeg"
    if variant == "rgba-png":
        rgba = image.convert("RGBA")
        rgba.putalpha(200)
        return encode(rgba, "PNG"), "image/png"
    if variant == "exif-rotated":
        # Stored sideways with orientation 6: viewers (and eic) turn it upright.
        exif = Image.Exif()
        exif[0x0112] = 6
        return encode(image.transpose(Image.Transpose.ROTATE_90), exif=exif.tobytes()), "image/jpeg"
    return encode(image, quality=90), "image/jpeg"


@lru_cache(maxsize=1)
def _bomb_png() -> bytes:
    # 20000 x 20000 = 400 megapixels in a few kilobytes: a decompression bomb.
    return encode(Image.new("1", (20000, 20000)), "PNG", optimize=True)


# ----------------------------------------------------------------------------------------------
# The server


class Sandbox:
    """Start with ``with Sandbox() as sb:`` and point ``api_url`` or records' URLs at it."""

    def __init__(
        self,
        vocab: dict[str, str] | Path | str | None = None,
        *,
        per_level: int = 30,
        host: str = "127.0.0.1",
        port: int = 0,
        api_keys: tuple[str, ...] = (DEMO_API_KEY,),
        fail_every: int = 0,
        image_fail_every: int = 0,
        bad_every: int = 0,
        variant_every: int = 0,
        no_url_every: int = 13,
        shared_per_concept: int = 2,
        triples_per_concept: int = 1,
        stall_seconds: float = 5.0,
        search_latency: float = 0.0,
        image_size: tuple[int, int] = (320, 240),
        thumbnail_missing_every: int = 0,
        quota: int = 0,
        quota_window: float = 3600.0,
        annotation_tokens: dict[str, str] | None = None,
        label_noise: float = 0.0,
    ) -> None:
        self.vocab = load_vocabulary(vocab)  # a dict or a JSON file, as HarvestConfig takes it
        self.catalogue = build_catalogue(
            self.vocab,
            per_level,
            shared_per_concept=shared_per_concept,
            triples_per_concept=triples_per_concept,
            no_url_every=no_url_every,
            bad_every=bad_every,
            variant_every=variant_every,
            label_noise=label_noise,
        )
        self.api_keys = set(api_keys)
        self.fail_every = fail_every
        self.image_fail_every = image_fail_every
        self._refused_once: set[int] = set()
        if bad_every:
            _bomb_png()  # a second to build: not while a client waits
        self.stall_seconds = stall_seconds  # the longest a stalled answer is held (stop() sends it at once)
        self._stopping = threading.Event()
        # Tests hold answers after the first few (``hold_after``) to stop a client mid-way for sure.
        self._gate = threading.Event()
        self._gate.set()
        self._hold_after: int | None = None
        self._hold_paths: tuple[str, ...] = ()
        self._answered = 0
        self.held = 0  # image requests waiting at the gate now
        self._held_changed = threading.Condition()
        self.search_latency = search_latency  # seconds each Search API answer takes, like a distant server
        self.image_size = image_size
        self.thumbnail_missing_every = thumbnail_missing_every
        self.quota, self.quota_window = quota, quota_window
        # The Annotations API stand-in: a token per user (the write routes want "Authorization: Bearer <token>").
        self.annotations = AnnotationStore(annotation_tokens or {SANDBOX_TOKEN: "sandbox-user"})
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
        self._server = _QuietServer((host, port), _make_handler(self))
        self._server.daemon_threads = True
        self._thread: threading.Thread | None = None

    @property
    def base_url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host!s}:{port}"

    @property
    def api_url(self) -> str:
        return f"{self.base_url}/record/v2/search.json"

    def start(self) -> Sandbox:
        # stop() waits up to one poll interval for the loop to notice; the default half second adds up.
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
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
        if record.fault:
            return f"{self.base_url}/faults/{record.fault}/{record.serial}"
        return f"{self.base_url}/images/{record.serial}.jpg"

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
        record = self.catalogue[serial]
        size = self.image_size
        if record.variant == "large":
            size = (size[0] * 5, size[1] * 5)
        image = self._drawn(serial, size)
        if max_side:
            image = image.copy()
            image.thumbnail((max_side, max_side))
            return encode(image, quality=85), "image/jpeg"
        return _variant_bytes(image, record.variant)

    def _drawn(self, serial: int, size: tuple[int, int]) -> Image.Image:
        record = self.catalogue[serial]
        indices = tuple(self._class_index[label] for label in (record.shows or record.labels))
        return draw_image(indices, len(self.vocab), seed=serial, size=size)

    def search(self, params: dict[str, list[str]], key: str) -> tuple[int, dict[str, Any], dict[str, str]]:
        """Answer one Search API request: (status, body, extra headers)."""
        with self._lock:
            self._search_count += 1
            n = self._search_count
        if self.fail_every and n % self.fail_every == 0:
            status = 429 if (n // self.fail_every) % 2 else 503
            return (
                status,
                _error("Too many requests" if status == 429 else "Service unavailable", code=f"{status}"),
                {"Retry-After": "0"},
            )
        query = _param(params, "query")
        if query is None:
            return 400, _error("Required parameter 'query' missing"), {}
        if not query.strip():
            return 400, _error("Empty search query parameter", code="400-SE"), {}
        try:
            rows = min(int((params.get("rows") or ["12"])[0]), 100)
            start = int((params.get("start") or ["1"])[0])
        except ValueError as exc:
            return 400, _error(str(exc)), {}
        cursor = _param(params, "cursor")
        if cursor is not None and start > 1:
            return 400, _error("Parameters 'start' and 'cursor' cannot be used together", code="400-SD"), {}
        offset = start - 1
        if cursor is not None and cursor != "*":
            decoded = _decode_cursor(cursor)
            if decoded is None:
                return (
                    400,
                    _error("Invalid cursor value. Please make sure you encode the cursor value", code="400-SC"),
                    {},
                )
            offset = decoded
        if cursor is None and offset + rows > 1000:
            return (
                400,
                _error(
                    "It is not possible to paginate beyond the first 1000 search results. "
                    "Please use cursor-based pagination instead",
                    code="400-SL",
                ),
                {},
            )
        hits = self._matching(query, params)
        hits = _sorted(hits, (params.get("sort") or [""])[0])
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


def _error(message: str, code: str | None = None) -> dict[str, Any]:
    body: dict[str, Any] = {"success": False, "error": message, "message": message}
    if code:
        body["code"] = code
    return body


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


class _QuietServer(ThreadingHTTPServer):
    def handle_error(self, request: Any, client_address: Any) -> None:
        # Clients hang up on endless or stalled answers on purpose; that is not a server error.
        if not isinstance(sys.exc_info()[1], ConnectionError):
            super().handle_error(request, client_address)


def _make_handler(sandbox: Sandbox) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        # Headers and body go out in separate writes; without this, Nagle's algorithm and
        # delayed ACKs add 40 ms to every keep-alive answer.
        disable_nagle_algorithm = True

        def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - quiet server
            pass

        def do_GET(self) -> None:  # noqa: N802 - http.server's naming
            self._handle(self._route)

        def do_POST(self) -> None:  # noqa: N802
            self._handle(self._post)

        def do_DELETE(self) -> None:  # noqa: N802
            self._handle(self._delete)

        def _handle(self, route: Any) -> None:
            parts = urlsplit(self.path)
            with sandbox._lock:
                sandbox.hits[parts.path] += 1
                sandbox.request_times.append(time.monotonic())
            params = parse_qs(parts.query, keep_blank_values=True)
            with contextlib.suppress(BrokenPipeError, ConnectionResetError):
                sandbox._pass_gate(parts.path)
                route(parts.path, params)

        def _post(self, path: str, params: dict[str, list[str]]) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            if path.rstrip("/") == "/annotations":
                return self._answer(*sandbox.annotations.post_batch(self.headers.get("Authorization"), body))
            return self._send(404, b"not found", "text/plain")

        def _delete(self, path: str, params: dict[str, list[str]]) -> None:
            if path.startswith("/annotation/"):
                return self._answer(
                    *sandbox.annotations.delete(self.headers.get("Authorization"), path.removeprefix("/annotation/"))
                )
            return self._send(404, b"not found", "text/plain")

        def _answer(self, status: int, body: dict[str, Any] | None) -> None:
            if body is None:
                self.send_response(status)
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            self._json(status, body, {})

        def _route(self, path: str, params: dict[str, list[str]]) -> None:
            if path in SEARCH_PATHS:
                return self._search(params)
            if path == "/annotation/search":
                query, page, size = (_param(params, name) for name in ("query", "page", "pageSize"))
                profile, base = _param(params, "profile") or "", sandbox.base_url
                return self._answer(*sandbox.annotations.search(query or "", page or "0", size or "10", profile, base))
            if path.startswith("/annotation/"):
                return self._answer(*sandbox.annotations.get(path.removeprefix("/annotation/")))
            if path.startswith("/images/"):
                serial = _serial(path.rsplit("/", 1)[-1].removesuffix(".jpg"), sandbox)
                if serial is None:
                    return self._send(404, b"not found", "text/plain")
                if sandbox.busy_image_host(serial):
                    return self._send(503, b"busy", "text/plain", {"Retry-After": "0"})
                return self._send(200, *sandbox.image_bytes(serial))
            if path.startswith("/faults/"):
                return self._fault(path.split("/")[2])
            if path == "/thumbnail/v2/url.json":
                return self._thumbnail(params)
            if path.startswith("/thumbnail/v3/"):
                return self._thumbnail_v3(path.split("/")[3:])
            return self._send(404, b"not found", "text/plain")

        def _search(self, params: dict[str, list[str]]) -> None:
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
            self._json(status, body, {**headers, **quota_headers})

        def _thumbnail(self, params: dict[str, list[str]]) -> None:
            uri = unquote((params.get("uri") or [""])[0])
            match = re.search(r"/(?:images|faults/[\w-]+)/(\d+)", uri)
            serial = _serial(match.group(1), sandbox) if match else None
            if serial is None:
                return self._send(404, b"Media file not found", "text/plain")
            if not sandbox.has_thumbnail(serial):  # v2 never says 404: it sends the generic icon
                return self._send(200, placeholder_bytes(), "image/png")
            size = 200 if (params.get("size") or ["w400"])[0].endswith("200") else 400
            self._send(200, *sandbox.image_bytes(serial, max_side=size))

        def _thumbnail_v3(self, parts: list[str]) -> None:
            if len(parts) != 2 or parts[0] not in ("200", "400") or not re.fullmatch(r"[0-9a-fA-F]{8,128}", parts[1]):
                return self._json(400, _error("Invalid size or id. Supported sizes are 200 and 400"), {})
            serial = sandbox.thumbnail(parts[1])
            if serial is None or not sandbox.has_thumbnail(serial):
                return self._json(404, {"success": False, "status": 404, "error": "Media file not found"}, {})
            self._send(200, *sandbox.image_bytes(serial, max_side=int(parts[0])))

        def _fault(self, kind: str) -> None:
            if kind == "404":
                return self._send(404, b"<html>Not found</html>", "text/html")
            if kind == "html":
                return self._send(200, b"<!doctype html><html><body>Image viewer</body></html>", "text/html")
            if kind == "truncated":
                data = encode(draw_image((0,), 2, seed=1))
                return self._send(200, data[: len(data) // 2], "image/jpeg")
            if kind == "bomb":
                return self._send(200, _bomb_png(), "image/png")
            if kind == "empty":
                return self._send(200, b"", "image/jpeg")
            if kind == "redirect-loop":
                self.send_response(302)
                self.send_header("Location", self.path)
                self.send_header("Content-Length", "0")
                self.end_headers()
                return None
            if kind == "stall":  # held until the client gives up and the sandbox stops (or stall_seconds pass)
                sandbox._stopping.wait(sandbox.stall_seconds)
                return self._send(200, encode(draw_image((0,), 2, seed=2)), "image/jpeg")
            if kind == "endless":
                return self._endless()
            return self._send(404, b"unknown fault", "text/plain")

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

    return Handler


def _serial(text: str, sandbox: Sandbox) -> int | None:
    if not (text.isascii() and text.isdigit()) or int(text) >= len(sandbox.catalogue):  # not "²"
        return None
    return int(text)
