"""``eic harvest``: build a dataset table from the Search API, one query per concept or combination.

Policy for duplicates: the table holds one row per record ID. In single-label mode a record found
under two categories cannot teach either class, so it is dropped and counted as ambiguous
(``keep_ambiguous`` keeps it in the first category instead). In multi-label mode a record found by
several combinations gets the union of their labels.

The table and a ``<stem>.progress.json`` beside it are rewritten after every query unit, so an
interrupted harvest keeps what it had and ``resume`` carries on from there.
"""

from __future__ import annotations

import functools
import itertools
import json
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import polars as pl

from ..core.config import HarvestConfig, public_dict
from ..core.errors import DatasetError
from ..core.progress import progress_bar
from ..core.tables import check_table_suffix, read_table, sidecar, write_json, write_table
from ..europeana.search_api import PAGE_ROWS, SearchClient, record_uri
from ..europeana.vocabulary import load_vocabulary

COLUMNS = ["category", "skos_concept", "URI", "ID", "URL", "preview", "rights", "data_provider",
           "reusability"]


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
    progress_path = sidecar(config.output, "progress")
    settings = {"mode": config.mode, "n": config.n, "seed": config.seed, "vocab": vocab,
                "keep_ambiguous": config.keep_ambiguous}
    state = _resume_state(config, progress_path, settings, vocab) if config.resume else _fresh(config)
    units = list(plan_units(vocab, config.mode, config.reusability))
    todo = [u for u in units if u.key not in state.completed]
    write_json(sidecar(config.output, "config"), public_dict(config))
    own_client = client is None
    client = client or SearchClient(config.api_url, config.api_key.get_secret_value(),
                                    timeout=config.timeout, retries=config.retries,
                                    max_quota_wait=config.max_quota_wait * 3600)
    try:
        with progress_bar(config.quiet, transient=True) as progress:
            for k, unit in enumerate(todo):
                client.expect(_pages(len(todo) - k, config.n))  # the key's quota is paced to what is left
                task = progress.add_task(f"{' '.join(unit.labels)} [{unit.level}]", total=config.n)
                items = _fetch_unit(client, unit, vocab, config, state,
                                    functools.partial(progress.advance, task))
                _merge(state, unit, items, config)
                state.completed[unit.key] = len(items)
                _save(config.output, progress_path, state, vocab, settings,
                      complete=len(state.completed) == len(units))
                progress.remove_task(task)
            if not todo:
                _save(config.output, progress_path, state, vocab, settings, complete=True)
    finally:
        if own_client:
            client.close()
    per_category = Counter(label for row in state.rows.values() for label in row["labels"])
    return HarvestReport(
        output=config.output, rows=len(state.rows), fetched=dict(state.completed),
        per_category={c: per_category.get(c, 0) for c in vocab}, skipped_no_url=len(state.no_url),
        ambiguous=len(state.ambiguous), resumed_units=len(units) - len(todo),
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


def _fetch_unit(client: SearchClient, unit: Unit, vocab: dict[str, str], config: HarvestConfig,
                state: _State, advance: Any) -> list[dict[str, Any]]:
    query, qf = unit_query(unit, vocab)
    # A seeded random order with the id as tie-breaker: stable across cursor pages (an unseeded
    # "random" is re-drawn on every request and makes pages overlap).
    sort = f"random_{config.seed},europeana_id asc"
    found: list[dict[str, Any]] = []
    seen: set[str] = set()
    for item in client.iter_items(query, qf, reusability=unit.level, sort=sort):
        record_id = item.get("id")
        if not record_id or record_id in seen:
            continue
        seen.add(record_id)
        url = _first(item.get("edmIsShownBy"))
        if not url:
            state.no_url.add(record_id)
            continue
        found.append({
            "ID": record_id, "URL": url, "preview": _first(item.get("edmPreview")),
            "rights": _first(item.get("rights")), "data_provider": _first(item.get("dataProvider")),
            "reusability": unit.level,
        })
        advance()
        if len(found) >= config.n:
            break
    return found


def _merge(state: _State, unit: Unit, items: list[dict[str, Any]], config: HarvestConfig) -> None:
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


def _fresh(config: HarvestConfig) -> _State:
    if config.output.exists():
        raise DatasetError(f"{config.output} already exists: pass `resume` to continue that harvest, "
                           "or choose another `output`")
    return _State()


def _resume_state(config: HarvestConfig, progress_path: Path, settings: dict[str, Any],
                  vocab: dict[str, str]) -> _State:
    if not progress_path.exists():
        if config.output.exists():
            raise DatasetError(f"cannot resume: {progress_path} is missing, so it is unknown which "
                               f"categories of {config.output} are complete")
        return _State()
    try:
        saved = json.loads(progress_path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise DatasetError(f"cannot resume: {progress_path} is unreadable ({exc})") from None
    changed = [k for k, v in settings.items() if saved.get("settings", {}).get(k) != v]
    if changed:
        raise DatasetError(f"cannot resume {config.output}: it was harvested with other settings "
                           f"({', '.join(changed)}); use those or choose another `output`")
    state = _State(ambiguous=set(saved.get("ambiguous", [])), completed=saved.get("completed", {}),
                   no_url=set(saved.get("no_url", [])))
    if config.output.exists():
        for row in read_table(config.output, required=("category", "ID", "URL")).iter_rows(named=True):
            labels = [label for label in (row["category"] or "").split() if label in vocab]
            state.rows[row["ID"]] = {**{c: row.get(c) for c in COLUMNS[3:]}, "labels": labels}
    return state


def _save(output: Path, progress_path: Path, state: _State, vocab: dict[str, str],
          settings: dict[str, Any], complete: bool) -> None:
    write_table(_to_frame(state, vocab), output)
    write_json(progress_path, {
        "settings": settings, "complete": complete, "completed": state.completed,
        "ambiguous": sorted(state.ambiguous), "no_url": sorted(state.no_url),
    })


def _to_frame(state: _State, vocab: dict[str, str]) -> pl.DataFrame:
    order = {name: i for i, name in enumerate(vocab)}
    records = []
    for record_id, row in state.rows.items():
        labels = sorted(row["labels"], key=order.__getitem__)
        records.append({
            "category": " ".join(labels), "skos_concept": " ".join(vocab[c] for c in labels),
            "URI": record_uri(record_id), "ID": record_id, "URL": row["URL"],
            "preview": row.get("preview"), "rights": row.get("rights"),
            "data_provider": row.get("data_provider"), "reusability": row.get("reusability"),
        })
    return pl.DataFrame(records, schema={c: pl.Utf8 for c in COLUMNS})


def _first(value: Any) -> str | None:
    if isinstance(value, list):
        value = value[0] if value else None
    return value.strip() if isinstance(value, str) and value.strip() else None
