"""A small, careful client of the Europeana Search API v2.

It pages with cursors, retries what is worth retrying (``core/retry.py``: 429 and the passing 5xx,
timeouts, dropped connections) with bounded exponential backoff that honours ``Retry-After``, and turns
every other failure into one ``ApiError`` line. The API key travels only in the ``X-Api-Key``
header and is never logged.

It keeps within the key's quota when the server announces one (``RateLimit`` headers, see
``quota.py``): told how many requests are still to come (``expect``), it spaces them so the quota
lasts until its window resets, waits for the reset when it is spent, and refuses up front a job
that would wait longer than ``max_quota_wait``, saying how long it would take.
"""

from __future__ import annotations

import datetime
import ipaddress
import logging
import re
import time
from collections.abc import Iterator, Sequence
from typing import Any
from urllib.parse import quote, quote_plus

import httpx

from ..core.config import DEFAULT_API_URL
from ..core.errors import ApiError
from ..core.retry import RETRYABLE, Failed, Retry, send
from .quota import Quota, duration
from .ratelimit import RateLimit
from .tls import tls_context

PAGE_ROWS = 100  # the server silently caps rows at 100
MAX_WAIT = 60.0  # never sleep longer than this for one retry, whatever Retry-After says
ITEM_BASE = "http://data.europeana.eu/item"
RECORD_ID = re.compile(r"/[^/\s]+/\S+")  # a Europeana record ID: /dataset/local
KEY_HEADER = "X-Api-Key"
log = logging.getLogger(__name__)


class PagingLoop(ApiError):
    """The API's paging went round in a circle (a cursor it sent before, a page of nothing new): the query's
    records end there. Whoever pages keeps what came before it (a harvest keeps the unit, with a warning)."""


class SearchClient:
    def __init__(
        self,
        api_url: str,
        api_key: str,
        *,
        timeout: float = 30.0,
        retries: int = 5,
        backoff: float = 0.5,
        transport: httpx.BaseTransport | None = None,
        max_quota_wait: float | None = None,
    ) -> None:
        self.api_url = api_url
        self.timeout = timeout
        self.retries = retries
        self.backoff = backoff
        self.max_quota_wait = max_quota_wait  # seconds; None: wait as long as the quota needs
        self.quota: Quota | None = None  # what the last answer said
        self.needed: int | None = None  # requests the caller still expects to make
        self._paced = False  # pacing announced once, not per request
        self._latency = 0.5  # seconds one request takes (running mean), for the expected finish
        self._quota_waits = 0  # waits for a spent quota's window during this request
        self._pacer = RateLimit(None)  # kept to the pause the quota asks for
        home = httpx.URL(api_url)
        if unencrypted(home):
            log.warning("the API key travels unencrypted to %s: use an https:// API URL", home.host)
        self._http = httpx.Client(
            headers={KEY_HEADER: api_key, "User-Agent": "europeana-imgcls"},
            timeout=timeout,
            transport=transport,
            follow_redirects=True,
            verify=tls_context(),
            # httpx drops Authorization on a redirect to another origin, but not a custom header: we do.
            event_hooks={"request": [_KeyGuard(home)]},
        )

    def __enter__(self) -> SearchClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._http.close()

    def _get(self, params: Sequence[tuple[str, str]]) -> httpx.Response:
        """One GET whose whole answer must arrive within ``timeout``: httpx's timeout bounds each read, so a
        server trickling a byte a second would otherwise hold a harvest forever."""
        deadline = time.monotonic() + self.timeout
        # A tuple, as httpx's parameter types take a list only of their own (invariant) item type.
        with self._http.stream("GET", self.api_url, params=tuple(params)) as response:
            chunks = []
            for chunk in response.iter_bytes():
                chunks.append(chunk)
                if time.monotonic() > deadline:
                    raise httpx.ReadTimeout("the answer took longer than the timeout", request=response.request)
            # The body is decoded already: the copy must not say gzip, or it would be decoded twice.
            headers = [
                (k, v)
                for k, v in response.headers.multi_items()
                if k.lower() not in ("content-encoding", "content-length")
            ]
            return httpx.Response(
                response.status_code, headers=headers, content=b"".join(chunks), request=response.request
            )

    def expect(self, requests: int) -> None:
        """The caller still needs about ``requests`` requests: pace them to the quota (0 or less: unknown)."""
        self.needed = max(requests, 1)

    def search(self, params: Sequence[tuple[str, str]]) -> dict[str, Any]:
        """One Search API request; retried when the failure is passing (``core/retry.py``)."""
        self._quota_waits = 0
        request = tuple(params)
        outcome = send(
            lambda: self._attempt(request), Retry(self.retries, backoff=self.backoff, cap=MAX_WAIT), "Search API"
        )
        if isinstance(outcome, Failed):
            raise ApiError(self._gave_up(outcome))
        return _parse(outcome, self.api_url)

    def _attempt(self, params: Sequence[tuple[str, str]]) -> httpx.Response | Failed:
        """One request inside the key's quota: its answer, or a passing failure worth another attempt."""
        while True:
            self._pace()
            started = time.monotonic()
            try:
                response = self._get(params)
            except httpx.TimeoutException as exc:
                return Failed("timed out", error=exc)
            except httpx.TooManyRedirects:  # not passing: another attempt goes round the same loop
                raise ApiError(
                    f"the Search API URL {self.api_url} redirects without end (a redirect loop): check `api_url`"
                ) from None
            except (httpx.TransportError, httpx.DecodingError) as exc:  # a broken body is as bad as no body
                return Failed(f"unreachable ({type(exc).__name__})", error=exc)
            self._latency = 0.8 * self._latency + 0.2 * (time.monotonic() - started)
            if not self._quota_spent(response):
                break
        if response.status_code in RETRYABLE:
            return Failed(f"answered {response.status_code}", response.headers.get("Retry-After"), response)
        return response

    def _quota_spent(self, response: httpx.Response) -> bool:
        """Whether the answer is a 429 for a spent quota (another client of the key, or a count we could not see):
        waiting for the window (``_pace``) is then not a failed attempt, twice per request at most. A 429 with
        quota left is a burst: retried as any other."""
        announced = Quota.from_headers(response.headers)
        self.quota = announced or self.quota
        if response.status_code == 429 and announced is not None and announced.remaining <= 0 and self._quota_waits < 2:
            self._quota_waits += 1
            return True
        return False

    def _gave_up(self, failed: Failed) -> str:
        """The error once the retries are spent."""
        if failed.response is not None:
            return (
                f"the Search API answered {failed.response.status_code} {_reason(failed.response)} after "
                f"{failed.attempts} attempts; try again later"
            )
        if isinstance(failed.error, httpx.TimeoutException):
            return (
                f"the Search API at {self.api_url} did not answer in time after {failed.attempts} attempts; try "
                "later or raise `timeout`"
            )
        return (
            f"cannot reach the Search API at {self.api_url} ({type(failed.error).__name__}) after "
            f"{failed.attempts} attempts; check `api_url` and the network"
        )

    def _pace(self) -> None:
        """Before a request: stay inside the key's quota (nothing to do while none is announced)."""
        quota = self.quota
        if quota is None:
            return
        needed = self.needed or 1
        waiting = quota.waiting(needed)
        if self.max_quota_wait is not None and waiting > self.max_quota_wait:
            raise ApiError(
                f"about {needed} more requests are needed and the API key allows {quota.describe()}: that is "
                f"about {duration(waiting)} of waiting, more than `max_quota_wait` ({duration(self.max_quota_wait)}); "
                "raise `max_quota_wait`, use a project key, or ask for fewer records (`n`); what was harvested is "
                "kept, and `resume` carries on"
            )
        pause = quota.pause_before_next(needed)
        if pause > 0 and (quota.remaining <= 0 or not self._paced):
            self._paced = True
            finish = datetime.datetime.now() + datetime.timedelta(seconds=waiting + needed * self._latency)
            what = (
                f"quota spent: waiting {duration(pause)} for it to reset"
                if quota.remaining <= 0
                else f"pacing to one request every {pause:.1f} s"
            )
            log.info(
                "API key: %s; %s; about %d requests to go, expected to finish around %s",
                quota.describe(),
                what,
                needed,
                finish.strftime("%H:%M" if finish.date() == datetime.date.today() else "%Y-%m-%d %H:%M"),
            )
        if pause > 0:
            self._pacer.pause(pause)
            self._pacer.block()
        if quota.remaining <= 0:
            quota.renew()
        quota.spend()
        if self.needed:
            self.needed = max(self.needed - 1, 1)

    def iter_items(
        self,
        query: str,
        qf: Sequence[str] = (),
        reusability: str | None = None,
        sort: str | None = None,
        media: bool = True,
    ) -> Iterator[dict[str, Any]]:
        """Every item of a query, page by page with cursors, until the set is exhausted; ``PagingLoop`` after the
        last new item when the paging would go round for ever."""
        base = [("query", query), ("rows", str(PAGE_ROWS)), ("profile", "standard")]
        base += [("qf", f) for f in qf]
        if media:
            base.append(("media", "true"))
        if reusability:
            base.append(("reusability", reusability))
        if sort:
            base.append(("sort", sort))
        cursor: str | None = "*"
        cursors: set[str] = set()
        seen: set[str] = set()  # record IDs: an answer that only repeats them pages for ever
        while cursor:
            cursors.add(cursor)
            page = self.search([*base, ("cursor", cursor)])
            items = _records(page, self.api_url)
            new = [item for item in items if item["id"] not in seen]
            if items and not new:
                raise PagingLoop(
                    f"the Search API at {self.api_url} answered a page with no record it had not sent "
                    "before: its paging would never end; what was fetched so far is kept"
                )
            seen.update(item["id"] for item in new)
            yield from new
            next_cursor = page.get("nextCursor")
            if isinstance(next_cursor, str) and next_cursor in cursors and items:
                raise PagingLoop(
                    f"the Search API at {self.api_url} sent a cursor it sent before "
                    f"({next_cursor[:40]}): its paging would never end; what was fetched so far is kept"
                )
            # A partial last page still carries a cursor; the empty page after it does not.
            cursor = next_cursor if items and isinstance(next_cursor, str) and next_cursor else None


def _records(page: dict[str, Any], api_url: str) -> list[dict[str, Any]]:
    """The records of a page: objects with a text ``id`` (anything else an answer holds is no record)."""
    items = page.get("items") or []
    if not isinstance(items, list):
        raise ApiError(f"the Search API at {api_url} answered items that are not a list; check `api_url`")
    records = [item for item in items if isinstance(item, dict) and isinstance(item.get("id"), str) and item["id"]]
    if items and not records and page.get("nextCursor"):
        # Not the empty page that ends the paging (it carries no cursor): ending here, a unit would count as
        # finished, and a resume would never ask for the rest.
        raise ApiError(
            f"the Search API at {api_url} answered a page of {len(items)} items of which none is a record (no id), "
            "and more to come; check `api_url`; what was fetched so far is kept"
        )
    return records


def first(value: Any) -> str | None:
    """A field's first value as text: the API gives most fields as lists, some as a plain string."""
    if isinstance(value, list):
        value = value[0] if value else None
    return value.strip() if isinstance(value, str) and value.strip() else None


def _parse(response: httpx.Response, api_url: str) -> dict[str, Any]:
    try:
        body = response.json()
    except (ValueError, RecursionError):  # not JSON, or nested deeper than Python's parser goes
        body = None
    if response.status_code == 404:  # nothing at that address: a typed or outdated `api_url`, not the records
        raise ApiError(
            f"the Search API URL {server_text(api_url, response)} answered 404 ({_reason(response, body)}): there "
            f"is no Search API there; check `api_url` (Europeana's: {DEFAULT_API_URL})"
        )
    if response.status_code == 401:
        raise ApiError(
            f"the Search API rejected the API key (401 {_reason(response, body)}); "
            "set a valid key with `api_key` or EUROPEANA_API_KEY"
        )
    if response.status_code == 400:
        raise ApiError(f"the Search API refused the query (400 {_reason(response, body)})")
    if response.status_code != 200:
        raise ApiError(f"the Search API answered {response.status_code} {_reason(response, body)}")
    if not isinstance(body, dict):
        kind = response.headers.get("content-type", "unknown content")
        raise ApiError(f"the Search API answered something that is not a JSON object ({kind}); check `api_url`")
    if body.get("success") is False:
        raise ApiError(f"the Search API reported a failure: {_reason(response, body)}")
    return body


def _reason(response: httpx.Response, body: Any = None) -> str:
    if body is None:
        try:
            body = response.json()
        except ValueError:
            body = None
    if isinstance(body, dict):
        parts = [str(body[k]) for k in ("error", "message", "code") if body.get(k)]
        # error and message are often the same text
        parts = list(dict.fromkeys(parts))
        if parts:
            return server_text(": ".join(parts), response)
    return server_text(response.reason_phrase or "no reason given", response)


SECRETS = ("x-api-key", "authorization")


def server_text(text: str, response: httpx.Response, limit: int = 300) -> str:
    """A server's words fit for one line of eic's output: the secrets its request carried (the API key, a
    token) masked, wherever a server echoes them (an error that quotes the request), on one line, not too long."""
    request = response.request
    secrets = [request.headers[name] for name in SECRETS if request.headers.get(name)]
    secrets += [v for k, v in request.url.params.multi_items() if k == "wskey" and v]
    secrets += [s.split(" ", 1)[1] for s in secrets if s.lower().startswith("bearer ")]
    # As typed, and as a server may echo it: URL-encoded (either way), in another case.
    forms = {form for secret in secrets for form in (secret, quote(secret, safe=""), quote_plus(secret))}
    for secret in sorted(forms, key=len, reverse=True):
        if len(secret) >= 4:  # a one-letter "key" would mask every such letter of the text
            text = re.sub(re.escape(secret), "***", text, flags=re.IGNORECASE)
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


def record_uri(record_id: str) -> str:
    return ITEM_BASE + record_id


def is_record_id(text: str) -> bool:
    return bool(RECORD_ID.fullmatch(text))


class _KeyGuard:
    """A request hook (it runs before every request, redirects included) that removes the API key from
    any request not bound for the origin the user configured."""

    def __init__(self, home: httpx.URL) -> None:
        self.origin = _origin(home)

    def __call__(self, request: httpx.Request) -> None:
        if _origin(request.url) != self.origin:
            request.headers.pop(KEY_HEADER, None)


def _origin(url: httpx.URL) -> tuple[str, str, int | None]:
    default = {"http": 80, "https": 443}.get(url.scheme)
    return url.scheme, url.host, url.port or default


def unencrypted(url: httpx.URL) -> bool:
    """Whether what is sent to ``url`` (a key, a token) travels over plain http to a host that is not this one."""
    return url.scheme == "http" and not _is_loopback(url.host)


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
