"""``eic harvest``: build a dataset table, one query unit per concept (or combination) and reusability level, from
one of three sources (``SOURCES``, ``acquisition/sources.py``): the Search API (a query per unit), dataset dumps
(``dumps.py``) or OAI-PMH (``oai_source.py``), whose records are each a candidate of the units they belong to.

Policy for duplicates, whatever the source: the table holds one row per record ID. In single-label mode a record
found under two categories cannot teach either class, so it is dropped and counted as ambiguous (``keep_ambiguous``
keeps it in the first category instead). A bulk source's record says itself which categories it links to: one of
several is left out before any category picks its records, whatever ``n`` is. In multi-label mode a record found
by several combinations gets the union of their labels.

A source's work is journaled piece by piece as it is done (``core/journal.py``: ``OUT.journal/``): a Search API
query unit, a dump's 20,000 entries, an OAI-PMH page with its resumption token. A harvest killed at any moment
keeps every piece it finished, and ``resume`` carries on after them. The table is written when the harvest ends,
however it ends (Ctrl-C or an error included), and rebuilt from the journal by ``resume``; the journal stays as the
harvest's record of what each piece found. A shard journals its own units only; the run without shard writes the
table.
"""

from __future__ import annotations

import functools
import logging
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import polars as pl

from ..core.config import HarvestConfig, public_dict
from ..core.errors import DatasetError
from ..core.journal import Journal
from ..core.outputs import TABLE, claim, claim_sidecar
from ..core.progress import progress_bar
from ..core.recognise import peek_json
from ..core.tables import check_table_suffix, file_sha256, sidecar, write_json, write_table
from ..europeana.search_api import SearchClient, record_uri
from ..europeana.vocabulary import load_vocabulary
from .sources import AMBIGUOUS, ApiSource, Plan, Source, Unit, piece_found, plan_units, unit_query

log = logging.getLogger(__name__)
COLUMNS = ["category", "skos_concept", "URI", "ID", "URL", "preview", "rights", "data_provider", "reusability"]
__all__ = ["COLUMNS", "SOURCES", "HarvestReport", "Unit", "harvest", "plan_units", "unit_query"]


def _dump_source(config: HarvestConfig, plan: Plan) -> Source:
    from .dumps import DumpSource  # zip and checksum handling, loaded only for a dump harvest

    return DumpSource(config, plan)


def _oai_source(config: HarvestConfig, plan: Plan) -> Source:
    from .oai_source import OaiPmhSource  # the OAI-PMH client, loaded only for an OAI-PMH harvest

    return OaiPmhSource(config, plan)


# The one place a source's name (``config.metadata_source``) becomes the source that harvests.
SOURCES: dict[str, Callable[[HarvestConfig, Plan], Source]] = {
    "api": ApiSource,
    "dump": _dump_source,
    "oai-pmh": _oai_source,
}


@dataclass
class HarvestReport:
    output: Path
    rows: int
    fetched: dict[str, int] = field(default_factory=dict)  # query unit key -> records with an image it keeps
    per_category: dict[str, int] = field(default_factory=dict)  # rows holding each label
    skipped_no_url: int = 0
    ambiguous: int = 0
    resumed_units: int = 0  # the source's units already done (a resumed harvest)
    left_out: dict[str, int] = field(default_factory=dict)  # records of a bulk source left out, by reason
    source: str = "api"
    shard: str | None = None  # a shard's run writes no table: the run without shard does


@dataclass
class _State:
    rows: dict[str, dict[str, Any]] = field(default_factory=dict)
    ambiguous: set[str] = field(default_factory=set)
    completed: dict[str, int] = field(default_factory=dict)


@dataclass
class _Found:
    """Every journaled piece, as candidates of the query units: what the table is built from."""

    n: int  # records a query unit keeps
    candidates: dict[Unit, list[dict[str, Any]]] = field(default_factory=dict)
    no_url: set[str] = field(default_factory=set)
    left_out: Counter[str] = field(default_factory=Counter)
    finished: set[str] = field(default_factory=set)  # the source's units done
    resume_at: dict[str, str] = field(default_factory=dict)  # an unfinished unit: where it goes on
    pieces: int = 0

    def replay(self, journal: Journal, source: Source, plan: Plan, report: bool = False) -> None:
        """Every journaled piece, in the order found, but those of a unit before its last new pass (``again``: a zip
        rebuilt, a set whose token expired, read again from its start): what it finds now replaces what it found
        then, records, their values and categories, and the counts."""
        passes: dict[str, int] = {}
        if journal.mentions(b'"again":true'):  # most journals hold none: said by a scan, no line parsed twice
            passes = {_unit(key, value): at for at, (key, value) in enumerate(journal.records()) if value.get("again")}
        fresh = _Found(self.n)
        for at, (key, value) in enumerate(journal.records(report=report)):
            if at >= passes.get(_unit(key, value), 0):
                fresh.add(value, key, source, plan)
        vars(self).update(vars(fresh))

    def add(self, value: dict[str, Any], key: str, source: Source, plan: Plan) -> None:
        unit = _unit(key, value)
        if value.get("next") is None:
            self.finished.add(unit)
            self.resume_at.pop(unit, None)
        else:
            self.resume_at[unit] = value["next"]
        touched = set()
        for query, item in source.candidates({**value, "unit": unit}, plan):
            self.candidates.setdefault(query, []).append(item)
            touched.add(query)
        for query in touched:  # memory flat in what the pieces hold: a query unit keeps its n, and no more
            if len(self.candidates[query]) > self.n:
                self.candidates[query] = source.pick(_first_of_each(self.candidates[query]), self.n)
        self.no_url.update(value["no_url"])
        self.left_out.update(value.get("left_out") or {})
        self.pieces += 1


def _unit(key: str, value: dict[str, Any]) -> str:
    return value.get("unit") or key  # a journal from before sources: the key is the unit


def harvest(config: HarvestConfig, client: SearchClient | None = None) -> HarvestReport:
    """Run a harvest as ``config`` says; returns what it fetched and wrote."""
    check_table_suffix(config.output)
    vocab = load_vocabulary(config.vocab)
    shard = config.shard_spec
    if shard is None:  # shards write only their journal parts; the run without shard claims and writes the table
        claim(config.output, TABLE, resume=config.resume)  # a new table, or `resume` carries on eic's own
        claim_sidecar(config.output, "config")  # and its settings beside it: nobody else's file of that name
    journal = Journal(
        config.output.with_name(config.output.name + ".journal"),
        what=f"the harvest into {config.output}",
        settings={**config.resume_settings(), "vocab": vocab, **_source_setting(config)},
        shard=shard,
        hint="resume with the settings it was started with, or choose another `output`",
        check=piece_found,
    )
    if config.metadata_source == "api":  # a Search API journal an earlier eic wrote names no API: this one's
        journal.update_older_settings(lambda settings: {"api_url": config.api_url, **settings})
    plan = Plan(vocab, list(plan_units(vocab, config.mode, config.reusability)), client)
    source = SOURCES[config.metadata_source](config, plan)
    try:
        units = [u for u in source.units() if shard is None or shard.owns(u)]
        with journal.open(config.resume):
            on_disk = _unchanged_table(config.output, journal.folder) if shard is None else None
            found = _replayed(journal, source, plan, config)
            _refuse_dropped_levels(found, plan, config)
            todo = [u for u in units if u not in found.finished]
            if shard is None:
                write_json(sidecar(config.output, "config"), public_dict(config))
            try:
                _fetch_units(source, todo, found, plan, config, journal)
            finally:
                state = _selected(found, source, plan, config)
                if shard is None and found.pieces:  # however it ends, the table holds every piece it journaled
                    write_table(_to_frame(state, vocab), config.output, _record_digest(journal.folder, on_disk))
    finally:
        source.close()
    per_category = Counter(label for row in state.rows.values() for label in row["labels"])
    return HarvestReport(
        output=config.output,
        rows=len(state.rows),
        fetched=dict(state.completed),
        per_category={c: per_category.get(c, 0) for c in vocab},
        skipped_no_url=len(found.no_url),
        ambiguous=len(state.ambiguous) + found.left_out[AMBIGUOUS],
        resumed_units=len(units) - len(todo),
        left_out={reason: n for reason, n in found.left_out.items() if reason != AMBIGUOUS},
        source=config.metadata_source,
        shard=config.shard,
    )


WRITTEN = "table.json"  # in the journal's folder: the digest of the table as the harvest last wrote it


def _record_digest(folder: Path, previous: dict[str, Any] | None) -> Callable[[Path], None]:
    """What records the table's digest, told of the new table before it takes the old one's place: both are
    recorded (``previous``: the table there when the run began, which the run's lock kept as it was), so a kill
    between the two steps, once or again, leaves a table the record vouches for."""

    def record(table: Path) -> None:
        write_json(folder / WRITTEN, {**_digest(table), "previous": previous})

    return record


def _unchanged_table(output: Path, folder: Path) -> dict[str, Any] | None:
    """The digest of the table there (None: there is none), refused when it changed since the harvest wrote it
    (subtract or review apply wrote over it in place): the change would be undone without a word."""
    if not output.is_file():
        return None
    now = _digest(output)
    written = peek_json(folder / WRITTEN)
    if not isinstance(written, dict) or now in ({k: written.get(k) for k in now}, written.get("previous")):
        # Nothing to compare (a journal from before this record), or the table as written (or as it was, where a
        # kill fell between writing the record and the table).
        return now
    raise DatasetError(
        f"{output} changed since eic harvest wrote it (another command wrote over it?), and resuming would write "
        f"the harvest over those changes: harvest into another `output` (or delete {output.name} and {folder.name} "
        "to start this harvest again)"
    )


def _digest(path: Path) -> dict[str, Any]:
    return {"sha256": file_sha256(path), "bytes": path.stat().st_size}


def _refuse_dropped_levels(found: _Found, plan: Plan, config: HarvestConfig) -> None:
    """A resumed Search API harvest may add reusability levels (new query units) but not leave out one it harvested:
    the table is built from the units planned now, so that level's rows would be dropped from it."""
    if config.metadata_source != "api":
        return  # the bulk sources share their levels through the journal's settings
    planned = {unit.key for unit in plan.units}
    dropped = sorted({Unit.level_of(key) for key in found.finished if key not in planned})
    if dropped:
        raise DatasetError(
            f"{config.output} was harvested at reusability {', '.join(dropped)} too, which this run leaves out (its "
            "rows would leave the table): resume with every level it was started with, and any you add"
        )


def _source_setting(config: HarvestConfig) -> dict[str, Any]:
    """The source and its dates, settings every writer of the journal must share: for the Search API its address
    alone (a journal written before eic recorded it takes this run's: ``harvest``). A bulk source's unit
    (a zip, a set) is done for the levels it was read with: another level would find it finished and nothing of its
    own, so the levels are shared too (the Search API's units are a level's each: a level added is new units)."""
    if config.metadata_source == "api":  # another Search API (a shell without EUROPEANA_API_URL): other records
        return {"api_url": config.api_url}
    dates = {"from": config.from_date, "until": config.until}
    setting = {"source": config.metadata_source, "reusability": sorted(set(config.reusability))}
    return setting | {name: date for name, date in dates.items() if date}


def _fetch_units(
    source: Source, todo: list[str], found: _Found, plan: Plan, config: HarvestConfig, journal: Journal
) -> None:
    source.start(todo)
    queries = {unit.key: unit for unit in plan.units}
    failed: dict[str, str] = {}
    with progress_bar(config.quiet, transient=True) as progress:
        for unit in todo:
            query = queries.get(unit)  # the Search API's units are query units: n records each at most
            described = f"{' '.join(query.labels)} [{query.level}]" if query else unit
            task = progress.add_task(described, total=config.n if query else None)
            advance = functools.partial(progress.advance, task)
            try:
                for piece in source.fetch(unit, found.resume_at.get(unit), advance):
                    value = piece.value()
                    journal.append(piece.key, value)
                    journal.flush()
                    if piece.again:  # what the unit's earlier pass found goes: read the journal again without it
                        found.replay(journal, source, plan)
                    else:
                        found.add(value, piece.key, source, plan)
            except DatasetError as exc:
                if not source.independent_units:
                    raise
                log.warning("%s; going on with the others", exc)
                failed[unit] = str(exc)
            progress.remove_task(task)
    if failed:
        one = len(failed) == 1
        raise DatasetError(
            f"{len(failed)} zip{'' if one else 's'} could not be read: {'; '.join(failed.values())}; what was read "
            f"of {'it' if one else 'them'} and of the others is kept: once {'it is' if one else 'they are'} mended, "
            "run the same harvest with `resume`"
        )


def _replayed(journal: Journal, source: Source, plan: Plan, config: HarvestConfig) -> _Found:
    """What a resumed harvest found before: every journaled piece, in the order it was found."""
    found = _Found(config.n)
    found.replay(journal, source, plan, report=True)
    if config.resume and not found.pieces and config.output.exists() and config.shard is None:
        raise DatasetError(
            f"cannot resume {config.output}: its journal ({journal.folder}) is missing or empty, so "
            "it is unknown which units it holds; harvest into another `output`"
        )
    return found


def _selected(found: _Found, source: Source, plan: Plan, config: HarvestConfig) -> _State:
    """The table's rows: each query unit's pick of its candidates (each record once), applied in planned order."""
    state = _State()
    for unit in plan.units:
        candidates = found.candidates.get(unit)
        if candidates is None:
            continue
        _apply(state, unit, source.pick(_first_of_each(candidates), config.n), config)
    return state


def _first_of_each(items: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Each record once, where its ID was first found, as it was last found: a zip or a set read again (rebuilt,
    or its token expired) gives its records as they are now."""
    first: dict[str, dict[str, Any]] = {}
    for item in items:
        first[item["ID"]] = item  # a dict keeps the place of a key's first insertion
    return list(first.values())


def _apply(state: _State, unit: Unit, items: list[dict[str, Any]], config: HarvestConfig) -> None:
    """What a query unit's records add to the table: the duplicate policy, whatever the source."""
    state.completed[unit.key] = len(items)
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
