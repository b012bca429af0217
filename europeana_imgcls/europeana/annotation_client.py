"""A client of the write routes of Europeana's Annotations API (``POST {api}/annotations/``, ``DELETE
{api}/annotation/{n}``, ``GET {api}/annotation/search``); the rules the API applies are ``annotations.py``.

It takes nothing the server says on trust: an id it gives must be an annotation URI of that API
(``annotation_number``), a redirect or a 404 where the API should be stops the run, and a 404 for an annotation
counts as "gone" only when the API itself says it.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import httpx

from ..core.errors import ApiError
from ..core.retry import MAY_HAVE_ACTED, RETRYABLE, Failed, Retry, send
from .annotations import ANNO_CONTEXT, SEARCH_PAGE_SIZE, annotation_number, api_name, shown
from .ratelimit import RateLimit
from .search_api import server_text, unencrypted
from .tls import tls_context

MAX_SEARCH_PAGES = 10_000  # a million annotations; a search that goes on longer is a server going round
# Europeana's Annotations API answers 500 for what it refuses (its parsers' exceptions: ``annotations.py``), so
# the same request would be refused again; and publish halves a refused batch to find the refused annotation only
# when the refusal comes back at once. Every other status of the one list is retried.
STATUSES = RETRYABLE - {500}
log = logging.getLogger(__name__)


class AnnotationsError(ApiError):
    """A refusal of the Annotations API that concerns what was sent, not the token or the server."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


class SearchTooLong(ApiError):
    """A search that went on for ``MAX_SEARCH_PAGES`` pages: more than a million annotations, or a server going
    round; a caller that can ask another way does."""


class UnknownOutcome(ApiError):  # noqa: N818 - it is a state, not only an error
    """An upload was sent and no answer came that eic can use: the API may hold it or not."""


@dataclass
class Deleted:
    """What a DELETE found: 204 deleted, 404/410 already gone, or 403 not this account's to delete (``refused``:
    the API's reason)."""

    gone_before: bool
    refused: str | None = None


class AnnotationsClient:
    """The write routes of the Annotations API: ``POST {api}/annotations/`` (a batch), ``DELETE
    {api}/annotation/{n}``, and ``GET {api}/annotation/search`` (what a stopped upload may have stored; a model's
    annotations by their generator).

    Writes carry ``Authorization: Bearer <token>``; ``api_key`` goes as the ``wskey`` parameter where given, as
    Europeana's Annotations API reads it. 429 and the passing 5xx but 500 (``STATUSES``) are retried with the one
    retry policy (``core/retry.py``); a connection refused is retried too (nothing was sent). An upload whose
    answer never came, came from a gateway that lost the server's (``MAY_HAVE_ACTED``: 502, 504...), or came without
    ids eic can name, is not retried blindly: ``UnknownOutcome`` says so. A
    redirect, or a 404 or 405 where the API should answer, stops everything: nothing is sent on to another
    address, and a wrong ``annotation_api`` does not make every item look refused.
    """

    def __init__(
        self,
        api_url: str,
        token: str | None,
        *,
        api_key: str | None = None,
        timeout: float = 60.0,
        retries: int = 5,
        rate: float | None = None,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        self.api_url = api_url.rstrip("/")
        self.where = api_name(self.api_url)
        self.retries = retries
        self.token = token
        self._pacer = RateLimit(rate)
        home = httpx.URL(self.api_url)
        secrets = " and ".join(name for name, given in (("the token", token), ("the API key", api_key)) if given)
        if secrets and unencrypted(home):  # as harvest warns for the key
            log.warning(
                "%s would travel unencrypted to %s: give an https:// annotation API address", secrets, home.host
            )
        headers = {"User-Agent": "europeana-imgcls", **({"Authorization": f"Bearer {token}"} if token else {})}
        self.params = {"wskey": api_key} if api_key else {}
        self._http = httpx.Client(
            headers=headers, timeout=timeout, transport=transport, follow_redirects=False, verify=tls_context()
        )

    def __enter__(self) -> AnnotationsClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self._http.close()

    def create(self, items: Sequence[dict[str, Any]]) -> list[str]:
        """Send ``items`` as one AnnotationPage; the ids the API gave them, in order, each an annotation URI of it."""
        page = {"@context": ANNO_CONTEXT, "type": "AnnotationPage", "items": list(items)}
        response = self._request("POST", "/annotations/", json=page, unknown_outcome=True)
        self._refuse_no_api(response, "POST", "/annotations/")
        if response.status_code != 201:
            raise AnnotationsError(response.status_code, _reason(response))
        try:
            ids = [item["id"] for item in response.json()["items"]]
        except (ValueError, KeyError, TypeError):
            ids = []
        if len(ids) != len(items):  # stored, but which id is which is unknown
            raise UnknownOutcome(f"{self.where} answered 201 without the ids of the {len(items)} annotations it stored")
        forged = next((i for i in ids if annotation_number(i, self.api_url) is None), None)
        if forged is not None:
            raise UnknownOutcome(
                f"{self.where} answered 201 with {server_text(shown(forged), response, limit=100)} as the id of "
                f"an annotation it stored, which names no annotation of it"
            )
        return [str(i) for i in ids]

    def delete(self, identifier: int) -> Deleted:
        # A 403 here is about this annotation: the API lets only its creator delete it (another account may have
        # published the same model's tag first). The token's own refusals come as 401, and stop everything.
        response = self._request("DELETE", f"/annotation/{identifier}", forbidden_is_an_answer=True)
        if response.status_code in (200, 204):
            return Deleted(gone_before=False)
        if response.status_code == 403:
            return Deleted(gone_before=False, refused=_reason(response))
        if response.status_code in (404, 410):
            # "Gone" only as the API says it (a JSON error of its own), not as any web server says "not found".
            self._refuse_no_api(response, "DELETE", f"/annotation/{identifier}", unless_json=True)
            return Deleted(gone_before=True)
        raise AnnotationsError(response.status_code, _reason(response))

    def find(self, generator: str, record: str, concept: str) -> list[str]:
        """The ids of the tags of ``record`` with ``concept`` made by ``generator`` (the search index's view)."""
        clauses = {"generator_uri": generator, "target_record_id": record, "body_uri": concept}
        query = " AND ".join(f"{name}:{_quoted(value)}" for name, value in clauses.items())
        return [str(item["id"]) for item in self.search(query)]

    def by_generator(self, generator: str) -> list[str]:
        """The ids of every annotation whose generator is ``generator`` (a model's), as the search finds them; an
        item the search answers with another generator is not taken."""
        return [str(item["id"]) for item in self.made_by(generator)]

    def made_by(self, generator: str) -> list[dict[str, Any]]:
        """Every annotation whose generator is ``generator``, as the search finds them (``{"id": ...}`` alone where
        the API answers with ids); an item the search answers with another generator is not taken."""
        found = self.search(f"generator_uri:{_quoted(generator)}")
        return [item for item in found if "generator" not in item or generator_of(item) == generator]

    def exists(self, identifier: int) -> bool:
        """Whether the API holds annotation ``identifier``: False only where it says so (404, 410 as its own JSON
        error), not where any web server says "not found"."""
        return self.get(identifier) is not None

    def get(self, identifier: int) -> dict[str, Any] | None:
        """Annotation ``identifier`` as the API holds it (an object without an ``id`` where its answer is no
        JSON object), or None where the API says it has none (404, 410 as its own JSON error)."""
        response = self._request("GET", f"/annotation/{identifier}")
        if response.status_code == 200:
            return _json_object(response) or {}
        if response.status_code in (404, 410):
            self._refuse_no_api(response, "GET", f"/annotation/{identifier}", unless_json=True)
            return None
        raise AnnotationsError(response.status_code, _reason(response))

    def search(self, query: str) -> list[dict[str, Any]]:
        """Every annotation the search finds (``{"id": ...}`` where the API answers with ids alone), page by page
        as Europeana serves them (``page`` from 0, ``pageSize`` at most 100), each id an annotation URI of it."""
        found: dict[str, dict[str, Any]] = {}
        for page in range(MAX_SEARCH_PAGES):
            items = self._search_page(query, page)
            fresh = {str(item["id"]): item for item in items if str(item["id"]) not in found}
            found.update(fresh)
            if len(items) < SEARCH_PAGE_SIZE or not fresh:  # the last page, or a server going round
                return list(found.values())
        raise SearchTooLong(f"{self.where}'s search {query} went on for {MAX_SEARCH_PAGES} pages; try again later")

    def _search_page(self, query: str, page: int) -> list[dict[str, Any]]:
        params = {"query": query, "page": str(page), "pageSize": str(SEARCH_PAGE_SIZE), "profile": "standard"}
        response = self._request("GET", "/annotation/search", params=params)
        self._refuse_no_api(response, "GET", "/annotation/search")
        if response.status_code != 200:
            raise AnnotationsError(response.status_code, f"{self.where} refused the search: {_reason(response)}")
        try:
            body = response.json()
        except ValueError:
            body = None
        items = body.get("items", []) if isinstance(body, dict) else None
        if not isinstance(items, list):
            raise ApiError(f"{self.where} answered the search with something that is no AnnotationPage")
        found = [item if isinstance(item, dict) else {"id": item} for item in items]
        for item in found:
            if annotation_number(item.get("id"), self.api_url) is None:
                raise ApiError(
                    f"{self.where} answered the search with {server_text(shown(item.get('id')), response, 100)}, "
                    "which names no annotation of it: eic records and deletes nothing by it"
                )
        return found

    def _refuse_no_api(self, response: httpx.Response, method: str, path: str, unless_json: bool = False) -> None:
        """A 404 or 405 where the API's route should be: no Annotations API answers at that address."""
        if response.status_code not in (404, 405):
            return
        if unless_json and _json_object(response):
            return
        raise ApiError(
            f"{method} {self.api_url}{path} answered {response.status_code} ({_reason(response)}): no Annotations "
            "API answers there; check `annotation_api` (the address before /annotations/)"
        )

    def _request(
        self,
        method: str,
        path: str,
        *,
        json: Any = None,
        params: dict[str, str] | None = None,
        unknown_outcome: bool = False,
        forbidden_is_an_answer: bool = False,
    ) -> httpx.Response:
        """One request, retried while the failure is passing (``core/retry.py``, ``STATUSES``); a 401 or 403 stops
        everything (the token), but a 403 the caller takes as an answer about what it asked for."""
        said = {**self.params, **(params or {})}
        outcome = send(
            lambda: self._attempt(method, path, json, said, unknown_outcome, forbidden_is_an_answer),
            Retry(self.retries),
            self.where,
        )
        if isinstance(outcome, Failed):
            raise ApiError(self._gave_up(outcome))
        return outcome

    def _attempt(
        self, method: str, path: str, json: Any, params: dict[str, str], unknown_outcome: bool, forbidden: bool
    ) -> httpx.Response | Failed:
        self._pacer.block()
        try:
            response = self._http.request(method, self.api_url + path, json=json, params=params)
        except httpx.ConnectError as exc:  # nothing reached the server: safe to try again
            return Failed(f"unreachable ({type(exc).__name__})", error=exc)
        except httpx.TransportError as exc:  # sent, but no answer: the server may have acted on it
            if unknown_outcome:
                raise UnknownOutcome(f"{self.where} did not answer ({type(exc).__name__})") from None
            raise ApiError(f"{self.where} did not answer ({type(exc).__name__}); try again later") from None
        if response.is_redirect or 300 <= response.status_code < 400:
            location = server_text(response.headers.get("Location") or "no address", response, limit=200)
            raise ApiError(
                f"{method} {self.api_url}{path} answered {response.status_code}, sending it to {location}: eic "
                "follows no redirect with the token; set `annotation_api` to the Annotations API's own address"
            )
        if response.status_code == 403 and forbidden and _json_object(response):
            return response
        if response.status_code in (401, 403):
            raise ApiError(self._refused(response))
        if unknown_outcome and response.status_code in MAY_HAVE_ACTED:
            raise UnknownOutcome(
                f"{self.where} answered {response.status_code} {_reason(response)}: a gateway's answer, after which "
                "the Annotations API may have stored what it was sent"
            )
        if response.status_code in STATUSES:
            return Failed(f"answered {response.status_code}", response.headers.get("Retry-After"), response)
        return response

    def _gave_up(self, failed: Failed) -> str:
        """The error once the retries are spent."""
        if failed.response is None:
            return f"cannot reach {self.where} ({type(failed.error).__name__}); check `annotation_api` and the network"
        return (
            f"{self.where} answered {failed.response.status_code} {_reason(failed.response)} after "
            f"{failed.attempts} attempts; try again later"
        )

    def _refused(self, response: httpx.Response) -> str:
        if self.token is None:
            return (
                f"{self.where} refused the request ({response.status_code}: {_reason(response)}); pass "
                "`annotation_token` (or set EUROPEANA_ANNOTATION_TOKEN), and `api_key` if it wants one"
            )
        return (
            f"{self.where} refused the token ({response.status_code}: {_reason(response)}); set a valid one with "
            "`annotation_token` or EUROPEANA_ANNOTATION_TOKEN (write access is granted by Europeana on request)"
        )


def _quoted(value: str) -> str:
    """A value in a Solr query of the search: quoted, its quotes and backslashes escaped."""
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def generator_of(item: dict[str, Any]) -> Any:
    """The generator id of an annotation the search answered with in full (an object's id, or the IRI itself)."""
    generator = item.get("generator")
    return generator.get("id") if isinstance(generator, dict) else generator


def _json_object(response: httpx.Response) -> dict[str, Any] | None:
    """The answer's body where it is a JSON object."""
    try:
        body = response.json()
    except ValueError:
        return None
    return body if isinstance(body, dict) else None


def _reason(response: httpx.Response) -> str:
    try:
        body = response.json()
    except ValueError:
        body = None
    if isinstance(body, dict):
        parts = [str(body[k]) for k in ("error", "message") if body.get(k)]
        errors = (
            (body.get("operationReport") or {}).get("errors") if isinstance(body.get("operationReport"), dict) else None
        )
        if isinstance(errors, dict) and errors:
            parts.append("; ".join(str(v) for v in errors.values()))
        if parts:
            return server_text(": ".join(dict.fromkeys(parts)), response, limit=500)
    return server_text(response.reason_phrase or f"HTTP {response.status_code}", response)
