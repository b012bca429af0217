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
it), the model's ``generator`` (what eic withdraw searches by), a ``canonical`` to remember it by, the model that
made it, a confidence between 0 and 1, and only addresses Europeana should hold: a target (or its ``scope``) that
is a Europeana record URI, and sources that are plain http(s) addresses (no ``javascript:``, no ``..``).

The client (``AnnotationsClient``) takes nothing the server says on trust: an id it gives must be an annotation
URI of that API (``annotation_number``), a redirect or a 404 where the API should be stops the run, and a 404 for
an annotation counts as "gone" only when the API itself says it.
"""

from __future__ import annotations

import json
import logging
import math
import re
import time
import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote, urlsplit

import httpx

from ..core.errors import ApiError
from ..core.retry import Retry
from ..core.version import HOMEPAGE
from .search_api import ITEM_BASE, server_text, unencrypted

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
# What Europeana's AnnotationLdParser keeps of an annotation; every other key is dropped.
KEPT = (
    "type",
    "created",
    "creator",
    "generated",
    "generator",
    "motivation",
    "bodyValue",
    "body",
    "target",
    "equivalentTo",
    "canonical",
    "via",
)
ANNOTATION_BASE = "http://data.europeana.eu/annotation/"  # the ids Europeana gives: ANNOTATION_BASE + a number
SEARCH_PAGE_SIZE = 100  # Europeana's most per search page (Query.MAX_PAGE_SIZE); pages count from 0
MAX_SEARCH_PAGES = 10_000  # a million annotations; a search that goes on longer is a server going round
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
    problem = _address_problem(item)
    if problem is not None:
        return problem
    model = model_of(item)
    if model is None:
        return f"it names no model ({MODEL} with an id {MODEL_ID_PREFIX}...): eic enrich did not write it"
    if generator["id"] != model_generator(model):
        return (
            f"its generator {_shown(generator['id'])} is not its model's ({model_generator(model)}): eic withdraw "
            "could not find it by its generator"
        )
    if CONFIDENCE in item and not is_probability(item[CONFIDENCE]):
        return f"its confidence ({CONFIDENCE}) is {_shown(item[CONFIDENCE])}, not a number between 0 and 1"
    return None


def _address_problem(item: dict[str, Any]) -> str | None:
    """Only what Europeana should hold: the target (or its scope) a Europeana record URI; the target's source,
    the body's source (and its id and scope) plain http(s) addresses."""
    target, body = item.get("target"), item["body"]
    if isinstance(target, dict):
        named = [("target's scope", target.get("scope"), record_uri_problem)]
        named.append(("target's source", target.get("source"), web_address_problem))
    else:
        named = [("target", target, record_uri_problem)]
    named += [(f"body's {key}", body.get(key), web_address_problem) for key in ("source", "id", "scope") if key in body]
    for name, value, check in named:
        problem = check(value)
        if problem is not None:
            return f"its {name} {_shown(value)} is refused: {problem}"
    return None


def web_address_problem(value: Any) -> str | None:
    """Why ``value`` is not a plain http(s) address eic would send as a source, or None: text without spaces,
    control or formatting characters (U+202E) or backslashes, an http(s) scheme, a host without credentials, and
    no ``.`` or ``..`` path segment (percent-encoded or not: a server may resolve it to another resource)."""
    if not isinstance(value, str):
        return "it is no address"
    if any(c.isspace() or c == "\\" or unicodedata.category(c) in ("Cc", "Cf") for c in value):
        return "it holds a space, a control or formatting character, or a backslash"
    if not value.lower().startswith(("http://", "https://")):
        return "it is not an http(s) address"
    parts = urlsplit(value)
    try:
        parts.port  # noqa: B018 - a port that is no number raises
    except ValueError:
        return "its port is not a number"
    if not parts.hostname or "@" in parts.netloc:
        return "it names no host, or a host with credentials"
    if any(unquote(segment) in (".", "..") for segment in parts.path.split("/")):
        return "its path holds a . or .. segment"
    return None


def record_uri_problem(value: Any) -> str | None:
    """Why ``value`` is not the URI of a Europeana record (``http://data.europeana.eu/item/DATASET/LOCAL``: that
    host, no port, no query or fragment, no empty, ``.`` or ``..`` segment), or None."""
    problem = web_address_problem(value)
    if problem is None and not (
        value.startswith(ITEM_BASE + "/")
        and urlsplit(value).netloc == "data.europeana.eu"
        and not {"?", "#"} & set(value)
        and len(segments := value[len(ITEM_BASE) + 1 :].split("/")) >= 2
        and "" not in segments
    ):
        problem = "it is not a Europeana record"
    return None if problem is None else f"{problem} (the europeana profile targets {ITEM_BASE}/DATASET/LOCAL)"


def is_probability(value: Any) -> bool:
    """A number between 0 and 1 (not NaN, not infinite, not text, not a boolean)."""
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value) and 0 <= value <= 1


def model_generator(digest: str) -> str:
    """The ``generator`` id eic enrich gives every annotation of a model (``outputs/enrichment.py``): what eic
    withdraw finds the model's annotations by when it has no journal."""
    return f"{HOMEPAGE}#model-{digest}"


def api_name(api_url: str) -> str:
    """How messages name an Annotations API: Europeana's as Europeana, any other (the sandbox) by its address."""
    host = urlsplit(api_url).hostname or ""
    if host == "europeana.eu" or host.endswith(".europeana.eu"):
        return "Europeana"
    return f"the Annotations API at {api_url}"


def _shown(value: Any, limit: int = 80) -> str:
    """A value from a file or a server in a message: its repr (escapes keep it on one line), not too long."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 1] + "…"


def record_of(item: dict[str, Any]) -> str | None:
    """The record an annotation's target names (``/dataset/local``), or None."""
    target = item.get("target")
    scope = target.get("scope") if isinstance(target, dict) else target
    if record_uri_problem(scope) is None:
        return str(scope)[len(ITEM_BASE) :]
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
    """The number Europeana's parser reads from an annotation's id (its last path part, whatever comes before):
    the stand-in's reading of an update. eic itself names an annotation only by ``annotation_number``."""
    return _identifier(europeana_id)


def annotation_number(value: Any, api_url: str | None = None) -> int | None:
    """The number of the annotation ``value`` names, if it is an annotation URI of that API: Europeana's ids
    (``http(s)://data.europeana.eu/annotation/N``) or the API's own (``{api_url}/annotation/N``); else None, and
    eic neither records nor deletes anything by it."""
    if not isinstance(value, str):
        return None
    bases = [ANNOTATION_BASE, "https" + ANNOTATION_BASE[4:]]
    if api_url:
        bases.append(api_url.rstrip("/") + "/annotation/")
    for base in bases:
        number = value[len(base) :] if value.startswith(base) else ""
        if number.isascii() and number.isdigit() and len(number) <= 18 and int(number) > 0:
            return int(number)
    return None


# ---------------------------------------------------------------------------------------------
# The client


class AnnotationsError(ApiError):
    """A refusal of the Annotations API that concerns what was sent, not the token or the server."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


class UnknownOutcome(ApiError):  # noqa: N818 - it is a state, not only an error
    """An upload was sent and no answer came that eic can use: the API may hold it or not."""


@dataclass
class Deleted:
    """What a DELETE found: 204 deleted, or 404/410 already gone."""

    gone_before: bool


class AnnotationsClient:
    """The write routes of the Annotations API: ``POST {api}/annotations/`` (a batch), ``DELETE
    {api}/annotation/{n}``, and ``GET {api}/annotation/search`` (what a stopped upload may have stored; a model's
    annotations by their generator).

    Writes carry ``Authorization: Bearer <token>``; ``api_key`` goes as the ``wskey`` parameter where given, as
    Europeana's Annotations API reads it. 429 and 5xx are retried with the one retry policy (``core/retry.py``);
    a connection refused is retried too (nothing was sent). An upload whose answer never came, or came without
    ids eic can name, is not retried blindly: ``UnknownOutcome`` says so. A redirect, or a 404 or 405 where the
    API should answer, stops everything: nothing is sent on to another address, and a wrong ``annotation_api``
    does not make every item look refused.
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
        self.interval = 1.0 / rate if rate else 0.0
        self.token = token
        self._next = 0.0
        home = httpx.URL(self.api_url)
        secrets = " and ".join(name for name, given in (("the token", token), ("the API key", api_key)) if given)
        if secrets and unencrypted(home):  # as harvest warns for the key
            log.warning(
                "%s would travel unencrypted to %s: give an https:// annotation API address", secrets, home.host
            )
        headers = {"User-Agent": "europeana-imgcls", **({"Authorization": f"Bearer {token}"} if token else {})}
        self.params = {"wskey": api_key} if api_key else {}
        self._http = httpx.Client(headers=headers, timeout=timeout, transport=transport, follow_redirects=False)

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
                f"{self.where} answered 201 with {server_text(_shown(forged), response, limit=100)} as the id of "
                f"an annotation it stored, which names no annotation of it"
            )
        return [str(i) for i in ids]

    def delete(self, identifier: int) -> Deleted:
        response = self._request("DELETE", f"/annotation/{identifier}")
        if response.status_code in (200, 204):
            return Deleted(gone_before=False)
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
        found = self.search(f"generator_uri:{_quoted(generator)}")
        return [str(item["id"]) for item in found if "generator" not in item or _generator_of(item) == generator]

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
        raise ApiError(f"{self.where}'s search {query} went on for {MAX_SEARCH_PAGES} pages; try again later")

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
                    f"{self.where} answered the search with {server_text(_shown(item.get('id')), response, 100)}, "
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
                        f"cannot reach {self.where} ({type(exc).__name__}); check `annotation_api` and the network"
                    ) from None
                time.sleep(retry.wait())
                continue
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
            if response.status_code in (401, 403):
                raise ApiError(self._refused(response))
            if response.status_code == 429 or response.status_code >= 502:
                retry = retry.increment()
                if retry.is_exhausted():
                    raise ApiError(
                        f"{self.where} answered {response.status_code} {_reason(response)} after "
                        f"{retry.attempts} attempts; try again later"
                    )
                wait = retry.wait(response.headers.get("Retry-After"))
                log.warning(
                    "%s answered %d; retry %d of %d in %.1f s",
                    self.where,
                    response.status_code,
                    retry.failures,
                    self.retries,
                    wait,
                )
                time.sleep(wait)
                continue
            return response

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

    def _pace(self) -> None:
        now = time.monotonic()
        if self._next > now:
            time.sleep(self._next - now)
        self._next = max(now, self._next) + self.interval


def _quoted(value: str) -> str:
    """A value in a Solr query of the search: quoted, its quotes and backslashes escaped."""
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _generator_of(item: dict[str, Any]) -> Any:
    """The generator id of an annotation the search answered with in full."""
    generator = item.get("generator")
    return generator.get("id") if isinstance(generator, dict) else generator


def _json_object(response: httpx.Response) -> bool:
    try:
        return isinstance(response.json(), dict)
    except ValueError:
        return False


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
