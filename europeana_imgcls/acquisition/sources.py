"""Where a harvest's records come from: the ``Source`` interface and the Search API's implementation of it.

A source has units of work (the Search API: one query per category and level; a dump: one zip; OAI-PMH: one set),
each done in one or more pieces, and every piece is journaled as it is done (``Piece``): a killed harvest keeps its
finished pieces, and a resumed unit carries on after its last one (OAI-PMH: at its resumption token). What a piece
found becomes candidates of the harvest's query units (``candidates``), a query unit keeps ``n`` of them (``pick``),
and ``harvest.py`` applies the query units in their planned order: the same duplicate policy whatever the source.

The bulk sources (dumps, OAI-PMH) read EDM records, each linked to any number of the vocabulary's concepts: a record
is a candidate of every query unit whose categories it links to all of, at its level, and a query unit keeps the
``n`` records of the smallest seeded rank (SHA-1 of seed and ID), so the table does not depend on the order of the
files, pages or shards it came from.
"""

from __future__ import annotations

import hashlib
import heapq
import itertools
import logging
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any, Protocol

from ..core.config import HarvestConfig
from ..europeana.edm import NO_MEDIA, Classifier, EdmRecord, Harvested
from ..europeana.search_api import PAGE_ROWS, PagingLoop, SearchClient, first

log = logging.getLogger(__name__)
Advance = Callable[[int], None]
AMBIGUOUS = "under several categories"  # a bulk record's reason to be left out (single-label): the report's ambiguous


@dataclass(frozen=True)
class Unit:
    """One query series: a category (or combination) at one reusability level."""

    labels: tuple[str, ...]
    level: str

    @property
    def key(self) -> str:
        return f"{'+'.join(self.labels)}|{self.level}"

    @staticmethod
    def level_of(key: str) -> str:
        """The reusability level of a unit's ``key`` (one read from a journal or a report)."""
        return key.rsplit("|", 1)[-1]


def plan_units(vocab: dict[str, str], mode: str, levels: Iterable[str]) -> Iterator[Unit]:
    names = list(vocab)
    if mode == "single-label":
        combos: Iterable[tuple[str, ...]] = ((name,) for name in names)
    else:
        combos = itertools.chain(itertools.combinations(names, 2), itertools.combinations(names, 3))
    for combo in combos:
        for level in levels:
            yield Unit(tuple(combo), level)


@dataclass(frozen=True)
class Plan:
    """What every source of one harvest is given: the vocabulary, the query units in order, and a Search API
    client of the caller's (tests, the demo), else each source that needs one opens its own."""

    vocab: dict[str, str]
    units: list[Unit]
    client: SearchClient | None = None


@dataclass(frozen=True)
class Piece:
    """One journal record of a unit's work: the records it found with an image (items: the row's values and the
    categories they link to, ``labels``), the IDs without an image URL, the other records left out by reason, and
    where the unit goes on after it (``next``; None: the unit is finished); ``again``: the first piece of a new pass
    over the unit (a set whose token expired, a zip rebuilt), which replaces all its earlier pieces found
    (``harvest._Found.replay``)."""

    key: str  # the journal key: unique over the harvest
    unit: str
    items: list[dict[str, Any]]
    no_url: list[str] = field(default_factory=list)
    left_out: dict[str, int] = field(default_factory=dict)
    next: str | None = None
    again: bool = False

    def value(self) -> dict[str, Any]:
        value = {
            "unit": self.unit,
            "next": self.next,
            "items": self.items,
            "no_url": self.no_url,
            "left_out": self.left_out,
        }
        return value | {"again": True} if self.again else value


class Source(Protocol):
    """Where a harvest's records come from (``harvest.SOURCES`` chooses one by ``config.source``)."""

    # Whether one unit that cannot be read (DatasetError) says nothing of the others, which the harvest then goes on
    # with (a damaged zip), rather than of them all (a key refused, a service down).
    independent_units: bool

    def units(self) -> list[str]:
        """The units of work, in order (a shard does those whose key hashes to it)."""
        ...

    def start(self, todo: list[str]) -> None:
        """The units still to do, before the first is fetched (the Search API paces its quota to them)."""
        ...

    def fetch(self, unit: str, after: str | None, advance: Advance) -> Iterator[Piece]:
        """A unit's pieces, each journaled as soon as it is yielded; ``after``: the ``next`` of the unit's last
        journaled piece (a killed unit carries on there), None: from its start."""
        ...

    def candidates(self, value: dict[str, Any], plan: Plan) -> Iterator[tuple[Unit, dict[str, Any]]]:
        """The query units a journaled piece's records are candidates of, each with its record."""
        ...

    def pick(self, items: list[dict[str, Any]], n: int) -> list[dict[str, Any]]:
        """The ``n`` records a query unit keeps of its candidates (each ID once, in the order found)."""
        ...

    def close(self) -> None: ...


def piece_found(value: Any) -> bool:
    """A journaled piece as ``Piece.value`` writes it (or as harvests before sources wrote a unit: its items and
    no_url alone): text IDs and URLs, the rest text, a list of text labels, or missing; anything else is a damaged
    line, and its unit is fetched again."""
    if not isinstance(value, dict) or not isinstance(value.get("items"), list):
        return False
    if not isinstance(value.get("no_url"), list) or not all(isinstance(i, str) for i in value["no_url"]):
        return False
    if not isinstance(value.get("unit", ""), str) or not isinstance(value.get("next"), str | None):
        return False
    if not isinstance(value.get("again", False), bool):
        return False
    left_out = value.get("left_out", {})
    if not isinstance(left_out, dict) or not all(isinstance(v, int) for v in left_out.values()):
        return False
    return all(_item(i) for i in value["items"])


def _item(item: Any) -> bool:
    return (
        isinstance(item, dict)
        and isinstance(item.get("ID"), str)
        and isinstance(item.get("URL"), str)
        and all(isinstance(v, str | None) for k, v in item.items() if k != "labels")
        and (
            "labels" not in item
            or (isinstance(item["labels"], list) and all(isinstance(x, str) for x in item["labels"]))
        )
    )


# -- the Search API


class ApiSource:
    """The Search API: a unit is a query unit, asked in a stable random order until ``n`` records with an image."""

    independent_units = False

    def __init__(self, config: HarvestConfig, plan: Plan) -> None:
        self.config, self.plan = config, plan
        self.by_key = {unit.key: unit for unit in plan.units}
        self.own_client = plan.client is None
        self.client = plan.client or SearchClient(
            config.api_url,
            config.api_key.get_secret_value(),
            timeout=config.timeout,
            retries=config.retries,
            max_quota_wait=config.max_quota_wait * 3600,
        )
        self.left = 0

    def units(self) -> list[str]:
        return list(self.by_key)

    def start(self, todo: list[str]) -> None:
        self.left = len(todo)

    def fetch(self, unit: str, after: str | None, advance: Advance) -> Iterator[Piece]:
        self.client.expect(self.left * -(-self.config.n // PAGE_ROWS))  # the key's quota is paced to what is left
        self.left -= 1
        no_url: set[str] = set()
        query = self.by_key[unit]
        items = _fetch_unit(self.client, query, self.plan.vocab, self.config, no_url, advance)
        yield Piece(unit, unit, items, sorted(no_url))

    def candidates(self, value: dict[str, Any], plan: Plan) -> Iterator[tuple[Unit, dict[str, Any]]]:
        unit = self.by_key.get(value.get("unit") or "")
        if unit is not None:
            for item in value["items"]:
                yield unit, item

    def pick(self, items: list[dict[str, Any]], n: int) -> list[dict[str, Any]]:
        return items[:n]  # the API's own seeded random order, as fetched

    def close(self) -> None:
        if self.own_client:
            self.client.close()


def unit_query(unit: Unit, vocab: dict[str, str]) -> tuple[str, list[str]]:
    """The (query, qf) pair of a unit, as the pilot asked them."""
    if len(unit.labels) == 1:
        return "*", [f'skos_concept:"{vocab[unit.labels[0]]}"', "TYPE:IMAGE"]
    return " AND ".join(f'"{vocab[label]}"' for label in unit.labels), ["TYPE:IMAGE"]


def _fetch_unit(
    client: SearchClient, unit: Unit, vocab: dict[str, str], config: HarvestConfig, no_url: set[str], advance: Advance
) -> list[dict[str, Any]]:
    query, qf = unit_query(unit, vocab)
    # A seeded random order with the id as tie-breaker: stable across cursor pages (an unseeded
    # "random" is re-drawn on every request and makes pages overlap).
    sort = f"random_{config.seed},europeana_id asc"
    found: list[dict[str, Any]] = []
    seen: set[str] = set()
    try:
        for item in client.iter_items(query, qf, reusability=unit.level, sort=sort):
            record_id = item.get("id")
            if not record_id or record_id in seen:
                continue
            seen.add(record_id)
            url = first(item.get("edmIsShownBy"))
            if not url:
                no_url.add(record_id)
                continue
            found.append(
                {
                    "ID": record_id,
                    "URL": url,
                    "preview": first(item.get("edmPreview")),
                    "rights": first(item.get("rights")),
                    "data_provider": first(item.get("dataProvider")),
                    "reusability": unit.level,
                }
            )
            advance(1)
            if len(found) >= config.n:
                break
    except PagingLoop as loop:  # the API's records for this query end there: the unit keeps what it found
        log.warning(
            "%s [%s]: %s; the unit ends with the %d records found", " ".join(unit.labels), unit.level, loop, len(found)
        )
    return found


# -- the EDM sources


class BulkSource:
    """What the dump and OAI-PMH sources share: EDM records classified against the vocabulary, each a candidate of
    every query unit it links to all the categories of, a query unit keeping the ``n`` of smallest seeded rank.
    A subclass gives ``units``, ``fetch`` (building its pieces with ``found``) and ``close``."""

    independent_units = False

    def __init__(self, config: HarvestConfig, plan: Plan) -> None:
        self.config, self.plan = config, plan
        self.classifier = Classifier(plan.vocab, config.api_url)
        # Single-label: a record linked to several of the categories could teach none of them (the Search API's
        # path finds it so only where two categories' picks hold it; a bulk record says so itself).
        self.ambiguous_out = config.mode == "single-label" and not config.keep_ambiguous
        self.by_level: dict[str, list[Unit]] = {}
        for unit in plan.units:
            self.by_level.setdefault(unit.level, []).append(unit)

    def start(self, todo: list[str]) -> None:
        pass

    def rank(self, record_id: str) -> bytes:
        """A record's place in the seeded order: the same whatever file, page or shard it came from."""
        return hashlib.sha1(f"{self.config.seed}|{record_id}".encode(), usedforsecurity=False).digest()

    def units_of(self, labels: Iterable[str], level: str) -> Iterator[Unit]:
        have = set(labels)
        for unit in self.by_level.get(level, ()):
            if have.issuperset(unit.labels):
                yield unit

    def found(self, records: Iterable[EdmRecord]) -> tuple[list[dict[str, Any]], list[str], dict[str, int]]:
        """What a piece found of ``records``: its items (only those of a query unit, at most ``n`` per query unit:
        the rest could never be picked), the IDs without a media URL, and how many were left out for each reason."""
        kept: dict[Unit, list[tuple[bytes, str]]] = {}  # a heap per query unit of its n smallest ranks (negated)
        items: dict[str, dict[str, Any]] = {}
        no_url: list[str] = []
        left_out: Counter[str] = Counter()
        n = self.config.n
        for record in records:
            outcome = self.classifier.classify(record)
            if not isinstance(outcome, Harvested):
                left_out[outcome] += 1
                if outcome == NO_MEDIA:
                    no_url.append(record.id)
                continue
            if self.ambiguous_out and len(outcome.labels) > 1:
                left_out[AMBIGUOUS] += 1  # taking no category's place: each keeps its n of the records it can have
                continue
            units = list(self.units_of(outcome.labels, outcome.level))
            if not units:
                left_out["not a query unit asked (level or combination)"] += 1
                continue
            key = bytes(255 - b for b in self.rank(record.id))  # heapq is a min-heap: keep the smallest ranks
            for unit in units:
                heap = kept.setdefault(unit, [])
                if len(heap) < n:
                    heapq.heappush(heap, (key, record.id))
                elif key > heap[0][0]:
                    heapq.heapreplace(heap, (key, record.id))
            items.setdefault(record.id, {**outcome.item, "labels": list(outcome.labels)})
            if len(items) > 4 * n * len(kept) + 1000:  # memory stays flat in a zip's size: drop what no unit keeps
                items = _kept(items, kept)
        return list(_kept(items, kept).values()), no_url, dict(left_out)

    def candidates(self, value: dict[str, Any], plan: Plan) -> Iterator[tuple[Unit, dict[str, Any]]]:
        for item in value["items"]:
            for unit in self.units_of(item.get("labels") or (), item.get("reusability") or ""):
                yield unit, item

    def pick(self, items: list[dict[str, Any]], n: int) -> list[dict[str, Any]]:
        return sorted(items, key=lambda item: self.rank(item["ID"]))[:n]


def _kept(items: dict[str, dict[str, Any]], kept: dict[Unit, list[tuple[bytes, str]]]) -> dict[str, dict[str, Any]]:
    wanted = {record_id for heap in kept.values() for _, record_id in heap}
    return {record_id: item for record_id, item in items.items() if record_id in wanted}
