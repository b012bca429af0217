"""A small, careful client of the Europeana Search API v2.

It pages with cursors, retries what is worth retrying (429, 5xx, timeouts, dropped connections)
with bounded exponential backoff that honours ``Retry-After``, and turns every other failure into
one ``ApiError`` line. The API key travels only in the ``X-Api-Key`` header and is never logged.
"""

from __future__ import annotations

import ipaddress
import logging
import time
from collections.abc import Iterator, Sequence
from typing import Any

import httpx

from .errors import ApiError
from .retry import wait_before

PAGE_ROWS = 100  # the server silently caps rows at 100
MAX_WAIT = 60.0  # never sleep longer than this for one retry, whatever Retry-After says
ITEM_BASE = "http://data.europeana.eu/item"
KEY_HEADER = "X-Api-Key"
log = logging.getLogger(__name__)


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
    ) -> None:
        self.api_url = api_url
        self.timeout = timeout
        self.retries = retries
        self.backoff = backoff
        home = httpx.URL(api_url)
        if home.scheme == "http" and not _is_loopback(home.host):
            log.warning("the API key travels unencrypted to %s: use an https:// API URL", home.host)
        self._http = httpx.Client(
            headers={KEY_HEADER: api_key, "User-Agent": "europeana-imgcls"},
            timeout=timeout,
            transport=transport,
            follow_redirects=True,
            # httpx drops Authorization on a redirect to another origin, but not a custom header: we do.
            event_hooks={"request": [_KeyGuard(home)]},
        )

    def __enter__(self) -> SearchClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._http.close()

    def _get(self, params: list[tuple[str, str]]) -> httpx.Response:
        """One GET whose whole answer must arrive within ``timeout``: httpx's timeout bounds each read, so a
        server trickling a byte a second would otherwise hold a harvest forever."""
        deadline = time.monotonic() + self.timeout
        with self._http.stream("GET", self.api_url, params=params) as response:
            chunks = []
            for chunk in response.iter_bytes():
                chunks.append(chunk)
                if time.monotonic() > deadline:
                    raise httpx.ReadTimeout("the answer took longer than the timeout", request=response.request)
            # The body is decoded already: the copy must not say gzip, or it would be decoded twice.
            headers = [(k, v) for k, v in response.headers.multi_items()
                       if k.lower() not in ("content-encoding", "content-length")]
            return httpx.Response(response.status_code, headers=headers, content=b"".join(chunks),
                                  request=response.request)

    def search(self, params: Sequence[tuple[str, str]]) -> dict[str, Any]:
        """One Search API request; retried when the failure is passing."""
        for attempt in range(self.retries + 1):
            last = attempt == self.retries
            try:
                response = self._get(list(params))
            except httpx.TimeoutException:
                if last:
                    raise ApiError(f"the Search API at {self.api_url} did not answer in time "
                                   f"after {attempt + 1} attempts; try later or raise `timeout`") from None
                self._sleep(attempt, None, "timed out")
                continue
            except (httpx.TransportError, httpx.DecodingError) as exc:  # a broken body is as bad as no body
                if last:
                    raise ApiError(f"cannot reach the Search API at {self.api_url} ({type(exc).__name__}) "
                                   f"after {attempt + 1} attempts; check `api_url` and the network") from None
                self._sleep(attempt, None, f"unreachable ({type(exc).__name__})")
                continue
            if response.status_code == 429 or response.status_code >= 500:
                if last:
                    raise ApiError(f"the Search API answered {response.status_code} "
                                   f"{_reason(response)} after {attempt + 1} attempts; try again later")
                self._sleep(attempt, response.headers.get("Retry-After"), f"answered {response.status_code}")
                continue
            return _parse(response)
        raise AssertionError("unreachable")

    def iter_items(
        self,
        query: str,
        qf: Sequence[str] = (),
        reusability: str | None = None,
        sort: str | None = None,
        media: bool = True,
    ) -> Iterator[dict[str, Any]]:
        """Every item of a query, page by page with cursors, until the set is exhausted."""
        base = [("query", query), ("rows", str(PAGE_ROWS)), ("profile", "standard")]
        base += [("qf", f) for f in qf]
        if media:
            base.append(("media", "true"))
        if reusability:
            base.append(("reusability", reusability))
        if sort:
            base.append(("sort", sort))
        cursor = "*"
        while cursor:
            page = self.search([*base, ("cursor", cursor)])
            items = page.get("items") or []
            yield from items
            next_cursor = page.get("nextCursor")
            # A partial last page still carries a cursor; the empty page after it does not.
            cursor = next_cursor if items and next_cursor and next_cursor != cursor else None

    def _sleep(self, attempt: int, retry_after: str | None, why: str = "") -> None:
        wait = wait_before(attempt, retry_after, base=self.backoff, cap=MAX_WAIT)
        # Said, so that a user facing an unreachable API sees retries rather than a silent wait.
        log.warning("Search API %s; retry %d of %d in %.1f s", why or "did not answer", attempt + 1, self.retries,
                    wait)
        time.sleep(wait)


def _parse(response: httpx.Response) -> dict[str, Any]:
    try:
        body = response.json()
    except ValueError:
        body = None
    if response.status_code == 401:
        raise ApiError(f"the Search API rejected the API key (401 {_reason(response, body)}); "
                       "set a valid key with `api_key` or EUROPEANA_API_KEY")
    if response.status_code == 400:
        raise ApiError(f"the Search API refused the query (400 {_reason(response, body)})")
    if response.status_code != 200:
        raise ApiError(f"the Search API answered {response.status_code} {_reason(response, body)}")
    if not isinstance(body, dict):
        kind = response.headers.get("content-type", "unknown content")
        raise ApiError(f"the Search API answered something that is not a JSON object ({kind}); "
                       "check `api_url`")
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
            return ": ".join(parts)
    return response.reason_phrase or "no reason given"


def record_uri(record_id: str) -> str:
    return ITEM_BASE + record_id


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


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
