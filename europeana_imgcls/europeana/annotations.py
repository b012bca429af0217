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

The client of its write routes is ``annotation_client.py``.
"""

from __future__ import annotations

import json
import math
import re
import unicodedata
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote, urlsplit

from ..core.version import HOMEPAGE
from .search_api import ITEM_BASE

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
    """What Europeana's AnnotationLdParser fails on (500), in the order it reads an annotation."""
    for check in (_motivation_refusal, _field_refusal, _agents_refusal, _body_refusal, _target_refusal):
        refusal = check(item)
        if refusal is not None:
            return refusal
    return None


def _motivation_refusal(item: dict[str, Any]) -> Refusal | None:
    motivation = item.get("motivation")
    name = motivation.strip().split(":", 1)[-1].lower() if isinstance(motivation, str) else None
    if name not in MOTIVATIONS:
        return Refusal(500, "cannot instantiate Annotation! Annotation Motivation not provided or invalid!")
    if name not in SUPPORTED:
        return Refusal(500, f"cannot instantiate Annotation! Unsupported Annotation/Motivation Type:{name.upper()}")
    return None


def _field_refusal(item: dict[str, Any]) -> Refusal | None:
    """The annotation's type, its id (a number) and its fields that must be text."""
    kind = item.get("type")
    if kind is not None and not (isinstance(kind, str) and kind.endswith("Annotation")):
        return Refusal(500, f"Invalid annotation type: {kind}")
    if "id" in item and _identifier(item["id"]) is None:
        return Refusal(500, f"An unexpected server exception occurred! For input string: {item['id']!r}")
    for key in ("created", "generated", "canonical", "equivalentTo"):
        if key in item and not isinstance(item[key], str):
            return Refusal(500, f"An unexpected server exception occurred! {key} is not a string")
    return None


def _agents_refusal(item: dict[str, Any]) -> Refusal | None:
    """Its creator and generator, and where it came from (``via``: text, or a list of text)."""
    for key in ("creator", "generator"):
        problem = _agent_problem(item[key]) if key in item else None
        if problem:
            return Refusal(500, problem)
    via = item.get("via", "")
    if not (isinstance(via, str) or (isinstance(via, list) and all(isinstance(v, str) for v in via))):
        return Refusal(500, f"unsupported deserialization for: {via}")
    return None


def _body_refusal(item: dict[str, Any]) -> Refusal | None:
    problem = _body_problem(item["body"]) if "body" in item else None
    return Refusal(500, problem) if problem else None


def _target_refusal(item: dict[str, Any]) -> Refusal | None:
    """The target: text, or an object whose source and scope are text. Not read without a body: the validator
    says that (400)."""
    if "body" not in item and "bodyValue" not in item:
        return None
    target = item.get("target")
    if target is None:
        return Refusal(500, "An unexpected server exception occurred! Annotation Target must not be null")
    if isinstance(target, str) or (
        isinstance(target, dict) and all(isinstance(target[k], str) for k in ("source", "scope") if k in target)
    ):
        return None
    return Refusal(500, f"unsupported target deserialization for: {target}")


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
    return _text_tag_refusal(value) if isinstance(value, str) else None


def _text_tag_refusal(value: str) -> Refusal | None:
    """A textual tag: no URL, at most 64 characters (its quotes and spaces aside)."""
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
            f"its generator {shown(generator['id'])} is not its model's ({model_generator(model)}): eic withdraw "
            "could not find it by its generator"
        )
    if CONFIDENCE in item and not is_probability(item[CONFIDENCE]):
        return f"its confidence ({CONFIDENCE}) is {shown(item[CONFIDENCE])}, not a number between 0 and 1"
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
            return f"its {name} {shown(value)} is refused: {problem}"
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


def shown(value: Any, limit: int = 80) -> str:
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
