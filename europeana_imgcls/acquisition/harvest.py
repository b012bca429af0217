"""``eic harvest``: build a dataset table from the Search API, one query per concept or combination.

Policy for duplicates: the table holds one row per record ID. In single-label mode a record found
under two categories cannot teach either class, so it is dropped and counted as ambiguous
(``keep_ambiguous`` keeps it in the first category instead). In multi-label mode a record found by
several combinations gets the union of their labels.

Each finished query unit is journaled with the records it found (``core/journal.py``: ``OUT.journal/``),
so a harvest killed at any moment keeps every unit it finished and ``resume`` carries on from there. The
table is written when the harvest ends, however it ends (Ctrl-C or an error included), and rebuilt from the
journal by ``resume``; the journal stays as the harvest's record of what each unit found.
"""

from __future__ import annotations

import functools
import itertools
import logging
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import polars as pl

from ..core.config import HarvestConfig, public_dict
from ..core.errors import DatasetError
from ..core.journal import Journal
from ..core.outputs import TABLE, claim
from ..core.progress import progress_bar
from ..core.tables import check_table_suffix, sidecar, write_json, write_table
from ..europeana.search_api import PAGE_ROWS, PagingLoop, SearchClient, first, record_uri
from ..europeana.vocabulary import load_vocabulary

log = logging.getLogger(__name__)
COLUMNS = ["category", "skos_concept", "URI", "ID", "URL", "preview", "rights", "data_provider", "reusability"]


@dataclass(frozen=True)
class Unit:
    """One query series: a category (or combination) at one reusability level."""

    labels: tuple[str, ...]
    level: str

    @property
    def key(self) -> str:
        return f"{'+'.join(self.labels)}|{self.level}"


@dataclass
class HarvestReport:
    output: Path
    rows: int
    fetched: dict[str, int] = field(default_factory=dict)  # unit key -> records with an image
    per_category: dict[str, int] = field(default_factory=dict)  # rows holding each label
    skipped_no_url: int = 0
    ambiguous: int = 0
    resumed_units: int = 0


@dataclass
class _State:
    rows: dict[str, dict[str, Any]] = field(default_factory=dict)
    ambiguous: set[str] = field(default_factory=set)
    completed: dict[str, int] = field(default_factory=dict)
    no_url: set[str] = field(default_factory=set)  # IDs of records without edmIsShownBy


def harvest(config: HarvestConfig, client: SearchClient | None = None) -> HarvestReport:
    """Run a harvest as ``config`` says; returns what it fetched and wrote."""
    check_table_suffix(config.output)
    vocab = load_vocabulary(config.vocab)
    claim(config.output, TABLE, resume=config.resume)  # a new table, or `resume` carries on eic's own
    journal = Journal(
        config.output.with_name(config.output.name + ".journal"),
        what=f"the harvest into {config.output}",
        settings={**config.resume_settings(), "vocab": vocab},
        hint="resume with the settings it was started with, or choose another `output`",
        check=_unit_found,
    )
    own_client = client is None
    client = client or SearchClient(
        config.api_url,
        config.api_key.get_secret_value(),
        timeout=config.timeout,
        retries=config.retries,
        max_quota_wait=config.max_quota_wait * 3600,
    )
    units = list(plan_units(vocab, config.mode, config.reusability))
    with journal.open(config.resume):
        state = _replayed(journal, units, config)
        todo = [u for u in units if u.key not in state.completed]
        write_json(sidecar(config.output, "config"), public_dict(config))
        try:
            _fetch_units(client, todo, vocab, config, state, journal)
        finally:
            if own_client:
                client.close()
            if state.completed:  # however the harvest ends, the table holds every unit it finished
                write_table(_to_frame(state, vocab), config.output)
    per_category = Counter(label for row in state.rows.values() for label in row["labels"])
    return HarvestReport(
        output=config.output,
        rows=len(state.rows),
        fetched=dict(state.completed),
        per_category={c: per_category.get(c, 0) for c in vocab},
        skipped_no_url=len(state.no_url),
        ambiguous=len(state.ambiguous),
        resumed_units=len(units) - len(todo),
    )


def _fetch_units(
    client: SearchClient,
    todo: list[Unit],
    vocab: dict[str, str],
    config: HarvestConfig,
    state: _State,
    journal: Journal,
) -> None:
    with progress_bar(config.quiet, transient=True) as progress:
        for k, unit in enumerate(todo):
            client.expect(_pages(len(todo) - k, config.n))  # the key's quota is paced to what is left
            task = progress.add_task(f"{' '.join(unit.labels)} [{unit.level}]", total=config.n)
            no_url: set[str] = set()
            items = _fetch_unit(client, unit, vocab, config, no_url, functools.partial(progress.advance, task))
            journal.append(unit.key, {"items": items, "no_url": sorted(no_url)})
            journal.flush()
            _apply(state, unit, items, no_url, config)
            progress.remove_task(task)


def _replayed(journal: Journal, units: list[Unit], config: HarvestConfig) -> _State:
    """The state of a resumed harvest: every journaled unit applied again, in the order they were found."""
    state = _State()
    by_key = {unit.key: unit for unit in units}
    for key, found in journal.records(report=True):
        unit = by_key.get(key)
        if unit is not None:
            _apply(state, unit, found["items"], set(found["no_url"]), config)
    if config.resume and not state.completed and config.output.exists():
        raise DatasetError(
            f"cannot resume {config.output}: its journal ({journal.folder}) is missing or empty, so "
            "it is unknown which units it holds; harvest into another `output`"
        )
    return state


def _unit_found(value: Any) -> bool:
    """A journaled unit as ``_fetch_units`` writes it: its records (text ID and URL, the rest text or missing) and
    the IDs it found without an image; any other value is a damaged line, and the unit is fetched again."""
    if (
        not isinstance(value, dict)
        or not isinstance(value.get("items"), list)
        or not isinstance(value.get("no_url"), list)
    ):
        return False
    return all(isinstance(i, str) for i in value["no_url"]) and all(_item(i) for i in value["items"])


def _item(item: Any) -> bool:
    return (
        isinstance(item, dict)
        and isinstance(item.get("ID"), str)
        and isinstance(item.get("URL"), str)
        and all(isinstance(v, str | None) for v in item.values())
    )


def _pages(units: int, n: int) -> int:
    """Requests ``units`` query units take at least: pages of 100 until ``n`` records with an image."""
    return units * -(-n // PAGE_ROWS)


def plan_units(vocab: dict[str, str], mode: str, levels: Iterable[str]) -> Iterator[Unit]:
    names = list(vocab)
    if mode == "single-label":
        combos: Iterable[tuple[str, ...]] = ((name,) for name in names)
    else:
        combos = itertools.chain(itertools.combinations(names, 2), itertools.combinations(names, 3))
    for combo in combos:
        for level in levels:
            yield Unit(tuple(combo), level)


def unit_query(unit: Unit, vocab: dict[str, str]) -> tuple[str, list[str]]:
    """The (query, qf) pair of a unit, as the pilot asked them."""
    if len(unit.labels) == 1:
        return "*", [f'skos_concept:"{vocab[unit.labels[0]]}"', "TYPE:IMAGE"]
    return " AND ".join(f'"{vocab[label]}"' for label in unit.labels), ["TYPE:IMAGE"]


def _fetch_unit(
    client: SearchClient, unit: Unit, vocab: dict[str, str], config: HarvestConfig, no_url: set[str], advance: Any
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
            advance()
            if len(found) >= config.n:
                break
    except PagingLoop as loop:  # the API's records for this query end there: the unit keeps what it found
        log.warning(
            "%s [%s]: %s; the unit ends with the %d records found", " ".join(unit.labels), unit.level, loop, len(found)
        )
    return found


def _apply(state: _State, unit: Unit, items: list[dict[str, Any]], no_url: set[str], config: HarvestConfig) -> None:
    """What a finished unit adds to the harvest (the same whether it was just fetched or replayed)."""
    state.completed[unit.key] = len(items)
    state.no_url |= no_url
    for item in items:
        record_id = item["ID"]
        row = state.rows.get(record_id)
        if config.mode == "multi-label":
            if row is None:
                state.rows[record_id] = {**item, "labels": list(unit.labels)}
            else:
                row["labels"] = list(dict.fromkeys([*row["labels"], *unit.labels]))
            continue
        if record_id in state.ambiguous:
            continue
        if row is None:
            state.rows[record_id] = {**item, "labels": list(unit.labels)}
        elif row["labels"] != list(unit.labels):
            state.ambiguous.add(record_id)
            if not config.keep_ambiguous:
                del state.rows[record_id]


def _to_frame(state: _State, vocab: dict[str, str]) -> pl.DataFrame:
    order = {name: i for i, name in enumerate(vocab)}
    records = []
    for record_id, row in state.rows.items():
        labels = sorted(row["labels"], key=order.__getitem__)
        records.append(
            {
                "category": " ".join(labels),
                "skos_concept": " ".join(vocab[c] for c in labels),
                "URI": record_uri(record_id),
                "ID": record_id,
                "URL": row["URL"],
                "preview": row.get("preview"),
                "rights": row.get("rights"),
                "data_provider": row.get("data_provider"),
                "reusability": row.get("reusability"),
            }
        )
    return pl.DataFrame(records, schema={c: pl.Utf8 for c in COLUMNS})
