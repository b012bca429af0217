"""Europeana's Annotations API: the rules it applies to what it is sent, and a client of its write routes.

The rules are those of europeana/annotation (``AnnotationPageParser``, ``AnnotationLdParser`` and
``BaseAnnotationValidator``, read at bcb72be9; ``docs/publish.md`` lists them with their sources), written
once here so that ``eic publish`` refuses locally what Europeana would refuse, and the sandbox's stand-in
refuses what Europeana refuses, in Europeana's words:

- a page may hold only ``@context, type, items, id, prev, next, total, isPartOf, facets`` (else the whole
  upload fails: HTTP 500, "Parsing AnnotationPage object failed! Unsupported Property: ...");
- an annotation's parser failures (an unknown or unsupported motivation, a ``type`` that is not an
  annotation, an ``id`` that is not a number, an agent whose ``id`` is no URL, a body or target of another
  shape) fail the upload with 500; keys the parser does not know are dropped, not refused;
- the validator's failures (a ``canonical`` that is not absolute, a ``via`` that is no http URL, a tagging
  ``SpecificResource`` body without an http ``source``, a textual tag over 64 characters or holding a URL)
  fail it with 400 and a report.

``eic publish`` adds its own rules on top (``publish_problem``): no ``id`` (Europeana would take it as an
update of another annotation), no ``creator`` (the server then names the token's user, who alone may delete
it), a ``generator`` with an http(s) ``id``, a target that is a Europeana record, a ``canonical`` to remember
it by, and the model that made it.
"""

from __future__ import annotations

import json
import logging
import re
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import httpx

from ..core.errors import ApiError
from ..core.retry import Retry
from .search_api import ITEM_BASE, server_text

ANNO_CONTEXT = "http://www.w3.org/ns/anno.jsonld"
NS = "urn:europeana-imgcls:"  # eic's own properties: absolute IRIs, which JSON-LD keeps as they are
CONFIDENCE = NS + "confidence"
MODEL = NS + "model"
MODEL_ID_PREFIX = NS + "model:"  # a model's IRI: urn:europeana-imgcls:model:<16 hex digits>
PAGE_KEYS = frozenset({"@context", "type", "items", "id", "prev", "next", "total", "isPartOf", "facets"})
MOTIVATIONS = (
    "bookmarking",
    "classifying",
    "commenting",
    "describing",
    "editing",
    "highlighting",
    "identifying",
    "linking",
    "moderating",
    "questioning",
    "replying",
    "tagging",
    "transcribing",
    "translating",
    "subtitling",
    "captioning",
    "linkforcontributing",
)
SUPPORTED = (
    "tagging",
    "linking",
    "describing",
    "transcribing",
    "translating",
    "subtitling",
    "captioning",
    "linkforcontributing",
)
AGENT_TYPES = ("person", "software", "organization")
MAX_TAG = 64
log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Refusal:
    """What Europeana answers to an upload it refuses: the status and its message."""

    status: int
    message: str


def page_refusal(page: Any) -> Refusal | None:
    """The refusal Europeana's page parser gives an upload body, or None."""
    if not isinstance(page, dict):
        return Refusal(500, "Invalid serialization of AnnotationPage (json)")
    for key in page:
        if key not in PAGE_KEYS:
            return Refusal(
                500,
                f"Parsing AnnotationPage object failed! Unsupported Property: {key} during parsing "
                "of the AnnotationPage object.",
            )
    items = page.get("items")
    if not isinstance(items, list) or not any(isinstance(item, dict) for item in items):
        return Refusal(500, "An unexpected server exception occurred! the page holds no annotation")
    if "id" in page and "page=" not in urlsplit(str(page["id"])).query:
        return Refusal(500, f"Parsing AnnotationPage object failed! Malformed URL! {page['id']}")
    return None


def annotation_refusal(item: Any) -> Refusal | None:
    """The refusal Europeana's parser (500) or validator (400) gives one annotation, or None."""
    if not isinstance(item, dict):
        return Refusal(500, "An unexpected server exception occurred! an item is not an annotation object")
    return _parse_refusal(item) or _validation_refusal(item)


def _parse_refusal(item: dict[str, Any]) -> Refusal | None:
    motivation = item.get("motivation")
    name = motivation.strip().split(":", 1)[-1].lower() if isinstance(motivation, str) else None
    if name not in MOTIVATIONS:
        return Refusal(500, "cannot instantiate Annotation! Annotation Motivation not provided or invalid!")
    if name not in SUPPORTED:
        return Refusal(500, f"cannot instantiate Annotation! Unsupported Annotation/Motivation Type:{name.upper()}")
    kind = item.get("type")
    if kind is not None and not (isinstance(kind, str) and kind.endswith("Annotation")):
        return Refusal(500, f"Invalid annotation type: {kind}")
    if "id" in item and _identifier(item["id"]) is None:
        return Refusal(500, f"An unexpected server exception occurred! For input string: {item['id']!r}")
    for key in ("created", "generated", "canonical", "equivalentTo"):
        if key in item and not isinstance(item[key], str):
            return Refusal(500, f"An unexpected server exception occurred! {key} is not a string")
    for key in ("creator", "generator"):
        problem = _agent_problem(item[key]) if key in item else None
        if problem:
            return Refusal(500, problem)
    if "via" in item and not (
        isinstance(item["via"], str) or (isinstance(item["via"], list) and all(isinstance(v, str) for v in item["via"]))
    ):
        return Refusal(500, f"unsupported deserialization for: {item['via']}")
    body = _body_problem(item.get("body")) if "body" in item else None
    if body:
        return Refusal(500, body)
    if "body" not in item and "bodyValue" not in item:
        return None  # the validator says it (400)
    target = item.get("target")
    if target is None or not (
        isinstance(target, str)
        or (isinstance(target, dict) and all(isinstance(target[k], str) for k in ("source", "scope") if k in target))
    ):
        return Refusal(
            500,
            "An unexpected server exception occurred! Annotation Target must not be null"
            if target is None
            else f"unsupported target deserialization for: {target}",
        )
    return None


def _agent_problem(agent: Any) -> str | None:
    if isinstance(agent, str):
        return None
    if not isinstance(agent, dict):
        return f"unsupported agent deserialization for: {agent}"
    kind = agent.get("type")
    if kind is not None and not (isinstance(kind, str) and kind.split(":", 1)[-1].lower() in AGENT_TYPES):
        return "An unexpected server exception occurred! agent type " + json.dumps(kind)
    if "id" in agent and not java_url(agent["id"]):
        return f"Cannot instantiate annotation attribute for type: ID value must be a valid URL: {agent['id']}"
    return None


def _body_problem(body: Any) -> str | None:
    if isinstance(body, str):
        if java_url(body):
            return None
        return f'Invalid representation body="{body}". Text bodies must be formated using TextualBody types! body'
    if isinstance(body, dict):
        if "source" in body and not isinstance(body["source"], str):
            return "source as internet resource is not supported in this version of the parser!"
        if not ({"id", "source", "value", "@graph"} & set(body)) and body.get("type") not in (
            "Place",
            "Agent",
            "Address",
        ):
            return "Cannot find appropriate body type with MotivationType: TAGGING"
        return None
    if isinstance(body, list) and body and all(isinstance(b, str) for b in body):
        return None
    return f"unsupported body deserialization for: {body}"


def _validation_refusal(item: dict[str, Any]) -> Refusal | None:
    canonical = item.get("canonical")
    if canonical is not None and not absolute_uri(canonical):
        return Refusal(400, "An error occurred during annotation validation! canonical")
    via = item.get("via")
    if via is not None and not all(http_url(v) for v in ([via] if isinstance(via, str) else via)):
        return Refusal(400, "An error occurred during annotation validation! via")
    name = str(item.get("motivation")).strip().split(":", 1)[-1].lower()
    if name != "tagging":
        return None  # eic writes tags: the other motivations' rules are Europeana's business
    body = item.get("body")
    if body is None and "bodyValue" not in item:
        return Refusal(400, "Missing mandatory field! body")
    if isinstance(body, dict) and "SpecificResource" in str(body.get("type", "")):
        return _specific_resource_problem(body)
    if isinstance(body, str) or (isinstance(body, dict) and ({"id", "source"} & set(body))):
        return None  # a semantic tag: Europeana does not check it
    value = item.get("bodyValue") if body is None else (body.get("value") if isinstance(body, dict) else None)
    if isinstance(value, str):
        tag = value.strip().removeprefix('"').removesuffix('"').strip()
        if http_url(tag):
            return Refusal(400, f"Invalid tag format. A tag can't contain URLs! tag.format: {tag}")
        if len(tag) > MAX_TAG:
            return Refusal(400, f"Invalid tag size. Must be shorter then 64 characters! tag.size: {len(tag)}")
    return None


def _specific_resource_problem(body: dict[str, Any]) -> Refusal | None:
    source = body.get("source")
    if not source:
        return Refusal(400, "Missing mandatory field! body.source")
    if not http_url(source):
        return Refusal(400, "Invalid tag format The source of a SpecificResource must be an URL! body.source")
    if "id" in body and not http_url(body["id"]):
        return Refusal(400, "Invalid tag format The internal id must be an URL! body.httpUri")
    if "scope" in body and not http_url(body["scope"]):
        return Refusal(400, "Invalid tag format The source of a SpecificResource must be an URL! body.scope")
    return None


def publish_problem(item: Any) -> str | None:
    """Why ``eic publish`` will not send an annotation (Europeana's rules, then eic's), or None."""
    refusal = annotation_refusal(item)
    if refusal is not None:
        return f"Europeana would refuse it ({refusal.status}: {refusal.message})"
    if "id" in item:
        return (
            "it has an id, and Europeana takes an item with an id as an update of the annotation it names: "
            "publish a file of the europeana profile (eic enrich --profile europeana)"
        )
    if "creator" in item:
        return (
            "it names a creator: Europeana would keep it and no token's user could withdraw the annotation; "
            "leave creator out (the europeana profile does)"
        )
    generator = item.get("generator")
    if not (isinstance(generator, dict) and http_url(generator.get("id"))):
        return "its generator has no http(s) id: Europeana could not say which software made it"
    if item.get("motivation") != "tagging" or not isinstance(item.get("body"), dict):
        return "it is not a tag with a concept as its body: eic publishes the tags eic enrich writes"
    if not absolute_uri(item.get("canonical")):
        return "it has no canonical IRI, which eic needs to know it by (sent or not)"
    if record_of(item) is None:
        return "its target is no Europeana record (http://data.europeana.eu/item/...)"
    if model_of(item) is None:
        return f"it names no model ({MODEL} with an id {MODEL_ID_PREFIX}...): eic enrich did not write it"
    return None


def record_of(item: dict[str, Any]) -> str | None:
    """The record an annotation's target names (``/dataset/local``), or None."""
    target = item.get("target")
    scope = target.get("scope") if isinstance(target, dict) else target
    if isinstance(scope, str) and scope.startswith(ITEM_BASE + "/") and len(scope) > len(ITEM_BASE) + 1:
        return scope[len(ITEM_BASE) :]
    return None


def model_of(item: dict[str, Any]) -> str | None:
    """The digest of the model an annotation names (16 hex digits), or None."""
    model = item.get(MODEL)
    identifier = model.get("id") if isinstance(model, dict) else None
    if isinstance(identifier, str) and identifier.startswith(MODEL_ID_PREFIX):
        return identifier[len(MODEL_ID_PREFIX) :]
    return None


def java_url(value: Any) -> bool:
    """What ``new java.net.URL(value)`` accepts, near enough: a known scheme and something after it."""
    if not isinstance(value, str) or not value.strip():
        return False
    parts = urlsplit(value)
    return parts.scheme in ("http", "https", "ftp", "file", "jar", "mailto") and bool(parts.netloc or parts.path)


def http_url(value: Any) -> bool:
    """Europeana's ``GeneralUtils.isUrl``: starts with http and is a URL with a host."""
    return isinstance(value, str) and value.startswith("http") and java_url(value) and bool(urlsplit(value).netloc)


def absolute_uri(value: Any) -> bool:
    """``java.net.URI.create(value).isAbsolute()``: a scheme, then anything without spaces."""
    return isinstance(value, str) and re.match(r"^[A-Za-z][A-Za-z0-9+.-]*:\S+$", value) is not None


def _identifier(value: Any) -> int | None:
    """The number Europeana reads from an annotation's ``id`` (its last path part), or None."""
    if not isinstance(value, str):
        return None
    last = value.rstrip().rsplit("/", 1)[-1].strip()
    return int(last) if last.isdigit() else None


def identifier_of(europeana_id: str) -> int | None:
    """The number of an annotation Europeana created (``http://data.europeana.eu/annotation/123`` -> 123)."""
    return _identifier(europeana_id)


# ---------------------------------------------------------------------------------------------
# The client


class AnnotationsError(ApiError):
    """A refusal of the Annotations API that concerns what was sent, not the token or the server."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


@dataclass
class Deleted:
    """What a DELETE found: 204 deleted, or 404/410 already gone."""

    gone_before: bool


class AnnotationsClient:
    """The write routes of the Annotations API: ``POST {api}/annotations/`` (a batch), ``DELETE
    {api}/annotation/{n}``, and ``GET {api}/annotation/search`` to find what a stopped upload may have stored.

    Writes carry ``Authorization: Bearer <token>``; ``api_key`` goes as ``wskey`` where given. 429 and 5xx are
    retried with the one retry policy (``core/retry.py``); a connection refused is retried too (nothing was
    sent). An upload whose answer never came is not retried blindly: ``UnknownOutcome`` says so.
    """

    def __init__(
        self,
        api_url: str,
        token: str,
        *,
        api_key: str | None = None,
        timeout: float = 60.0,
        retries: int = 5,
        rate: float | None = None,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        self.api_url = api_url.rstrip("/")
        self.retries = retries
        self.interval = 1.0 / rate if rate else 0.0
        self._next = 0.0
        headers = {"Authorization": f"Bearer {token}", "User-Agent": "europeana-imgcls"}
        self.params = {"wskey": api_key} if api_key else {}
        self._http = httpx.Client(headers=headers, timeout=timeout, transport=transport, follow_redirects=False)

    def __enter__(self) -> AnnotationsClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self._http.close()

    def create(self, items: Sequence[dict[str, Any]]) -> list[str]:
        """Send ``items`` as one AnnotationPage; the ids Europeana gave them, in order."""
        page = {"@context": ANNO_CONTEXT, "type": "AnnotationPage", "items": list(items)}
        response = self._request("POST", "/annotations/", json=page, unknown_outcome=True)
        if response.status_code != 201:
            raise AnnotationsError(response.status_code, _reason(response))
        try:
            ids = [str(item["id"]) for item in response.json()["items"]]
        except (ValueError, KeyError, TypeError):
            ids = []
        if len(ids) != len(items):  # stored, but which id is which is unknown
            raise UnknownOutcome(
                f"the Annotations API at {self.api_url} answered 201 without the ids of the "
                f"{len(items)} annotations it stored"
            )
        return ids

    def delete(self, identifier: int) -> Deleted:
        response = self._request("DELETE", f"/annotation/{identifier}")
        if response.status_code in (200, 204):
            return Deleted(gone_before=False)
        if response.status_code in (404, 410):
            return Deleted(gone_before=True)
        raise AnnotationsError(response.status_code, _reason(response))

    def find(self, generator: str, record: str, concept: str) -> list[str]:
        """The ids of the tags of ``record`` with ``concept`` made by ``generator`` (the search index's view)."""
        query = f'generator_uri:"{generator}" AND target_record_id:"{record}" AND body_uri:"{concept}"'
        response = self._request(
            "GET", "/annotation/search", params={"query": query, "pageSize": "100", "profile": "standard"}
        )
        if response.status_code != 200:
            raise AnnotationsError(response.status_code, _reason(response))
        try:
            return [str(item["id"] if isinstance(item, dict) else item) for item in response.json().get("items", [])]
        except (ValueError, AttributeError, KeyError, TypeError):
            return []

    def _request(
        self,
        method: str,
        path: str,
        *,
        json: Any = None,
        params: dict[str, str] | None = None,
        unknown_outcome: bool = False,
    ) -> httpx.Response:
        retry = Retry(self.retries)
        while True:
            self._pace()
            try:
                response = self._http.request(
                    method, self.api_url + path, json=json, params={**self.params, **(params or {})}
                )
            except httpx.ConnectError as exc:  # nothing reached the server: safe to try again
                retry = retry.increment()
                if retry.is_exhausted():
                    raise ApiError(
                        f"cannot reach the Annotations API at {self.api_url} ({type(exc).__name__}); "
                        "check `annotation_api` and the network"
                    ) from None
                time.sleep(retry.wait())
                continue
            except httpx.TransportError as exc:  # sent, but no answer: the server may have acted on it
                if unknown_outcome:
                    raise UnknownOutcome(f"the Annotations API did not answer ({type(exc).__name__})") from None
                raise ApiError(
                    f"the Annotations API at {self.api_url} did not answer ({type(exc).__name__}); try again later"
                ) from None
            if response.status_code in (401, 403):
                raise ApiError(
                    f"the Annotations API refused the token ({response.status_code}: "
                    f"{_reason(response)}); set a valid one with `annotation_token` or "
                    "EUROPEANA_ANNOTATION_TOKEN (write access is granted by Europeana on request)"
                )
            if response.status_code == 429 or response.status_code >= 502:
                retry = retry.increment()
                if retry.is_exhausted():
                    raise ApiError(
                        f"the Annotations API answered {response.status_code} {_reason(response)} after "
                        f"{retry.attempts} attempts; try again later"
                    )
                wait = retry.wait(response.headers.get("Retry-After"))
                log.warning(
                    "Annotations API answered %d; retry %d of %d in %.1f s",
                    response.status_code,
                    retry.failures,
                    self.retries,
                    wait,
                )
                time.sleep(wait)
                continue
            return response

    def _pace(self) -> None:
        now = time.monotonic()
        if self._next > now:
            time.sleep(self._next - now)
        self._next = max(now, self._next) + self.interval


class UnknownOutcome(ApiError):  # noqa: N818 - it is a state, not only an error
    """An upload was sent and no answer came: Europeana may hold it or not."""


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
