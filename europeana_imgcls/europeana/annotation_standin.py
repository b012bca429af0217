"""A stand-in of Europeana's Annotations API, served by the sandbox, to rehearse ``eic publish`` and ``eic
withdraw`` offline: the same routes, the same parsing and validation (``annotations.py``), the same answers.

- ``POST /annotations/`` (a batch): ``Authorization: Bearer <token>`` (401 without one or for an unknown one;
  403 for ``APIKEY``); the page and every item are checked first, and one bad item fails the whole batch
  (500 for what the parser refuses; 400 with an ``operationReport`` whose errors are keyed by the item's
  number, "0" for every new item, for what the validator refuses); an item with an ``id`` updates that
  annotation (404 when unknown). New annotations get ``http://data.europeana.eu/annotation/<n>``, the token's
  user as ``creator`` where none is given (a creator given without an ``id`` is kept without one, as Europeana
  keeps it), and the server's time as ``created`` and ``generated``; keys Europeana does not store are dropped.
  There is no duplicate check: the same upload twice is stored twice. 201 with the stored page.
- ``GET /annotation/{n}``: 200, 404, or 410 once deleted. ``DELETE /annotation/{n}``: 204; 403 for another
  user's; 404, 410; a creator without an ``id`` cannot be compared with the user: 500, as on Europeana.
- ``GET /annotation/search?query=field:"value" AND ...`` over ``generator_uri``, ``creator_uri``,
  ``target_record_id``, ``body_uri`` and ``motivation`` (``*:*`` for all): what a stopped upload may have
  stored, and a model's annotations by their generator. Paged as Europeana pages it (``page`` from 0,
  ``pageSize`` 10 by default, at most 100, else 400) and answered in its shape: an ``AnnotationPage`` with its
  ``id``, ``total`` (in the page), ``partOf`` (``id``, ``total``: in all), ``items`` (left out when there are
  none; ids alone under ``profile=minimal``), ``prev`` and ``next``. Unlike Europeana's, whose batch path may not
  index at once, this index is always current, and it takes a search without ``wskey``.
"""

from __future__ import annotations

import datetime
import json
import re
import threading
from typing import Any
from urllib.parse import urlencode

from .annotations import (
    ANNO_CONTEXT,
    ANNOTATION_BASE,
    KEPT,
    SEARCH_PAGE_SIZE,
    annotation_refusal,
    identifier_of,
    page_refusal,
    record_of,
)

SANDBOX_TOKEN = "sandbox-token"  # the stand-in's write token out of the box (its user: sandbox-user)
DEFAULT_PAGE_SIZE = 10  # Europeana's (Query.DEFAULT_PAGE_SIZE)
USER_BASE = "http://data.europeana.eu/user/"
CLIENT = "https://api.europeana.eu/apikey/sandbox-client"
Answer = tuple[int, dict[str, Any] | None]


class AnnotationStore:
    """The stand-in's state and its answers (status, JSON body); the sandbox's HTTP handler serves them."""

    def __init__(self, tokens: dict[str, str]) -> None:
        self.tokens = dict(tokens)  # token -> user id
        self.annotations: dict[int, dict[str, Any]] = {}
        self.deleted: set[int] = set()
        self.batches_answered = 0  # uploads answered, stored or refused (tests wait on it)
        self._next = 1
        self._lock = threading.Lock()

    # -- routes

    def post_batch(self, authorization: str | None, body: bytes) -> Answer:
        try:
            return self._post_batch(authorization, body)
        finally:
            with self._lock:
                self.batches_answered += 1

    def _post_batch(self, authorization: str | None, body: bytes) -> Answer:
        user, refused = self._user(authorization, "/annotations/")
        if refused:
            return refused
        try:
            page = json.loads(body)
        except ValueError:
            return _error(500, "/annotations/", "Invalid serialization of AnnotationPage (json)")
        refusal = page_refusal(page)
        if refusal is not None:
            return _error(refusal.status, "/annotations/", _unexpected(refusal.message))
        items = [item for item in page["items"] if isinstance(item, dict)]
        answer = self._check(items)
        if answer is not None:
            return answer
        with self._lock:
            stored = [self._store(item, user) for item in items]
        return 201, {"@context": ANNO_CONTEXT, "type": "AnnotationPage", "total": len(stored), "items": stored}

    def get(self, number: str) -> Answer:
        found = self._find(number, "/annotation/" + number)
        if isinstance(found, tuple):
            return found
        return 200, self.annotations[found]

    def delete(self, authorization: str | None, number: str) -> Answer:
        action = "/annotation/" + number
        user, refused = self._user(authorization, action)
        if refused:
            return refused
        found = self._find(number, action)
        if isinstance(found, tuple):
            return found
        creator = self.annotations[found].get("creator") or {}
        owner = creator.get("id") if isinstance(creator, dict) else None
        if owner is None:  # Europeana: creator.getHttpUrl().equals(user) on a null URL
            return _error(500, action, "An unexpected server exception occurred! java.lang.NullPointerException")
        if owner != USER_BASE + user:
            return _error(
                403,
                action,
                "The user is not authorized to perform the given operation! Only the "
                "creators of the annotation or admins are authorized to perform this operation.",
            )
        with self._lock:
            self.deleted.add(found)
        return 204, None

    def search(
        self, query: str, page: str = "0", page_size: str = str(DEFAULT_PAGE_SIZE), profile: str = "", base: str = ""
    ) -> Answer:
        """One page of what ``query`` finds, in Europeana's shape; ``base`` is the API's address (for the page's
        ``id``, ``prev`` and ``next``)."""
        action = "/annotation/search"
        clauses = [(n, re.sub(r"\\(.)", r"\1", v)) for n, v in re.findall(r'(\w+):"((?:[^"\\]|\\.)*)"', query)]
        if query.strip() != "*:*" and not clauses:
            return _error(400, action, "Invalid query: " + query)
        if not (page.isdigit() and page_size.isdigit() and 0 < int(page_size) <= SEARCH_PAGE_SIZE):
            return _error(400, action, f"Invalid request parameter value! page: {page}, pageSize: {page_size}")
        if profile.lower() not in ("", "standard", "minimal"):
            return _error(400, action, f"Invalid request parameter value! profile: {profile}")
        with self._lock:
            found = [
                a
                for n, a in sorted(self.annotations.items())
                if n not in self.deleted and all(_field(a, name) == value for name, value in clauses)
            ]
        number, size = int(page), int(page_size)
        shown = found[number * size : (number + 1) * size]

        def address(at: int | None) -> str:
            paging = {} if at is None else {"page": at, "pageSize": size}
            return f"{base}{action}?{urlencode({'query': query, **paging})}"

        body: dict[str, Any] = {
            "@context": ANNO_CONTEXT,
            "id": address(number),
            "type": "AnnotationPage",
            "total": len(shown),
            "partOf": {"id": address(None), "total": len(found)},
        }
        if shown:
            body["items"] = [a["id"] for a in shown] if profile.lower() == "minimal" else shown
        if number > 0:
            body["prev"] = address(number - 1)
        if (number + 1) * size < len(found):
            body["next"] = address(number + 1)
        return 200, body

    def live(self) -> list[dict[str, Any]]:
        """The annotations stored and not deleted (for tests and the demo)."""
        with self._lock:
            return [a for n, a in sorted(self.annotations.items()) if n not in self.deleted]

    # -- pieces

    def _user(self, authorization: str | None, action: str) -> tuple[str, Answer | None]:
        scheme, _, credential = (authorization or "").partition(" ")
        if not authorization:
            return "", _error(
                401,
                action,
                "The user is not authorized to perform the given operation! Invalid token "
                "or ApiKey No authentication information provided, Authorization header "
                "not submitted with the request! ",
            )
        if scheme.upper() == "APIKEY":
            return "", _error(
                403,
                action,
                "The user is not authorized to perform the given operation! Invalid token "
                "or ApiKey, resource access not granted!",
            )
        user = self.tokens.get(credential.strip()) if scheme.lower() == "bearer" else None
        if user is None:
            return "", _error(
                401, action, "The user is not authorized to perform the given operation! Invalid token or ApiKey"
            )
        return user, None

    def _check(self, items: list[dict[str, Any]]) -> Answer | None:
        """Europeana's order: every item parsed (one failure fails the batch, 500), then validated (400 with a
        report), then the updates looked up (404)."""
        refusals = [annotation_refusal(item) for item in items]
        parse = next((r for r in refusals if r is not None and r.status == 500), None)
        if parse is not None:
            return _error(500, "/annotations/", _unexpected(parse.message))
        invalid = [(item, r) for item, r in zip(items, refusals, strict=True) if r is not None]
        if invalid:
            errors = {str(identifier_of(str(item.get("id", ""))) or 0): r.message for item, r in invalid}
            return _report(400, "Validation", len(items), len(invalid), errors)
        with self._lock:
            missing = [
                n
                for item in items
                if "id" in item
                if (n := identifier_of(str(item["id"])) or 0) not in self.annotations or n in self.deleted
            ]
        if missing:
            errors = {str(n): f"Annotation does not exist: {n}" for n in missing}
            return _report(
                404, "Verification if annotations to be updated are available", len(items), len(missing), errors
            )
        return None

    def _store(self, item: dict[str, Any], user: str) -> dict[str, Any]:
        now = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%S")  # Europeana's: no zone
        kept = {k: item[k] for k in KEPT if k in item}
        if isinstance(kept.get("creator"), str):  # a creator given as text: a name, no id
            kept["creator"] = {"type": "Person", "name": kept["creator"], "homepage": kept["creator"]}
        kept.setdefault("creator", {"id": USER_BASE + user, "type": "Person"})
        kept.setdefault("generator", {"id": CLIENT, "type": "Software"})
        number = identifier_of(str(item["id"])) if "id" in item else None
        if number is None:
            number, self._next = self._next, self._next + 1
        stored = {
            "@context": ANNO_CONTEXT,
            "id": ANNOTATION_BASE + str(number),
            "type": "Annotation",
            **kept,
            "created": now,
            "generated": now,
        }
        self.annotations[number] = stored
        return stored

    def _find(self, number: str, action: str) -> int | Answer:
        if not number.isdigit():
            return 400, {
                "@context": "http://www.europeana.eu/schemas/context/api.jsonld",
                "type": "ErrorResponse",
                "success": False,
                "status": 400,
                "error": "Error in parsing request parameter (wrong type).",
                "path": action,
            }
        n = int(number)
        with self._lock:
            if n not in self.annotations:
                return _error(404, action, f"No annotation found with the given identifier! {n}")
            if n in self.deleted:
                return _error(
                    410, action, "The user is not allowed to access the annotation in the current state! DISABLED"
                )
        return n


def _field(annotation: dict[str, Any], name: str) -> str | None:
    """An annotation's value for a field of Europeana's search index."""
    agent = annotation.get("generator" if name == "generator_uri" else "creator")
    body = annotation.get("body")
    if name in ("generator_uri", "creator_uri"):
        return agent.get("id") if isinstance(agent, dict) else None
    if name == "target_record_id":
        return record_of(annotation)
    if name == "body_uri":
        return (
            body
            if isinstance(body, str)
            else (body.get("source") or body.get("id"))
            if isinstance(body, dict)
            else None
        )
    if name == "motivation":
        return annotation.get("motivation")
    return None


def _unexpected(message: str) -> str:
    prefix = "An unexpected server exception occurred! "
    return message if message.startswith(prefix) else prefix + message


def _error(status: int, action: str, message: str) -> Answer:
    return status, {"action": action, "success": False, "error": message}


def _report(status: int, step: str, total: int, failed: int, errors: dict[str, str]) -> Answer:
    return status, {
        "action": "/annotations/",
        "success": False,
        "error": "Batch upload failed!",
        "operationReport": {
            "totalNumberOfAnnotations": total,
            "numberOfAnnotationsWithId": None,
            "numberOfAnnotationsWithoutId": None,
            "step": step,
            "failureCount": failed,
            "successCount": total - failed,
            "indexingFailureCount": 0,
            "errors": errors,
        },
    }
