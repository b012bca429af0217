"""``eic review apply``: people's answers (``eic review import``'s table) replace a training table's labels.

By record ID: a reviewed record's labels (its class, or its set of labels, as the table's task has them) replace
the table's, ``confirmed`` where they were the same and ``changed`` where not; a record reviewers put in no class is
``removed``; a reviewed record the table does not hold is ``unknown`` (added only with ``add``); a record whose
reviewers disagreed is never applied (``conflicting``: from the import's notes, ``REVIEWED.review.json``, or
two rows of the reviewed table that say different things; two that agree apply once). The new table keeps
every other column and row as they were, and gains ``reviewed_by`` and ``review`` (confirmed, changed, added) so
where each label came from stays known. ``eic download NEW_TABLE`` into the old folder then moves the changed
records and sets the removed ones aside (``acquisition/placement.py``).

A review of another table (none of its records is in the table) or of another vocabulary (a class the table
does not have) is refused; so is writing over the table unless ``overwrite``. The reviewed table and its notes are
read back as untrusted: notes that are not eic review import's (``ReviewNotes``, format-tagged), and a record ID
the import would have refused, are one line naming the file and what to do.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import polars as pl

from ..core.config import ReviewApplyConfig, public_dict
from ..core.errors import DatasetError
from ..core.outputs import TABLE, claim_sidecar, claimed, refuse_input
from ..core.sidecars import read_bounded
from ..core.tables import check_table_suffix, read_table, sidecar, write_json, write_table
from .review import ReviewNotes, record_id_problem, shown

REVIEW_COLUMNS = ("reviewed_by", "review")
NOTES_MAX_MB = 1024  # far more than any import writes (its notes are smaller than the export it read)
AGAIN = "run eic review import again and apply the table it writes"


@dataclass
class ReviewApplyReport:
    output: Path
    rows: int = 0
    confirmed: int = 0
    changed: dict[str, tuple[str, str]] = field(default_factory=dict)  # record ID -> (before, after)
    removed: list[str] = field(default_factory=list)  # put in no class by reviewers: not in the new table
    unknown: list[str] = field(default_factory=list)  # reviewed, not in the table (added with `add`)
    added: int = 0
    conflicting: list[str] = field(default_factory=list)  # reviewers disagreed: the table's label is kept


def apply_review(config: ReviewApplyConfig) -> ReviewApplyReport:
    """Write ``config.output``: ``config.table`` with the reviewed labels applied; see the module docstring."""
    check_table_suffix(config.output)
    if config.output.resolve() == config.table.resolve() and not config.overwrite:
        raise DatasetError(
            f"{config.output} is the table the review applies to: choose another `output`, or pass `overwrite` "
            "to replace it (a table eic wrote)"
        )
    refuse_input(config.output, "reviewed table", config.reviewed)
    with claimed(config.output, TABLE, overwrite=config.overwrite):  # TABLE itself too: only if eic wrote it
        claim_sidecar(config.output, "apply", own=config.table)  # its notes beside it: nobody else's of that name
        return _apply_review(config)


def _apply_review(config: ReviewApplyConfig) -> ReviewApplyReport:
    table = read_table(config.table, required=("ID", "category"), columns=config.columns)
    reviewed = _reviewed_rows(config.reviewed)
    notes = _import_notes(config.reviewed)
    _check_same_table(config, table, set(reviewed) | set(notes.removed))
    _check_same_classes(config, table, [row for rows in reviewed.values() for row in rows])
    answers, disagreeing = _answers(reviewed)
    # A record the notes put in no class that also has a row is two answers that disagree, as is one the notes
    # call conflicting: none is applied.
    conflicting = set(notes.conflicting_records) | disagreeing | (set(notes.removed) & set(reviewed))
    answers = {record_id: row for record_id, row in answers.items() if record_id not in conflicting}
    removed = set(notes.removed) - conflicting
    report = ReviewApplyReport(config.output, conflicting=sorted(conflicting))
    rows = [_applied(row, answers, removed, conflicting, report) for row in table.iter_rows(named=True)]
    kept = [row for row in rows if row is not None]
    known = set(table["ID"].drop_nulls().to_list())
    report.unknown = sorted(set(answers) - known)
    if config.add:
        kept += [_added(answers[record_id], table.columns) for record_id in report.unknown]
        report.added = len(report.unknown)
    columns = [*table.columns, *(c for c in REVIEW_COLUMNS if c not in table.columns)]
    new = pl.DataFrame(kept, schema={c: pl.Utf8 for c in columns}, orient="row") if kept else _empty(columns)
    report.rows = new.height
    write_json(sidecar(config.output, "apply"), _summary(report, config))  # first: what makes the table eic's
    write_table(new, config.output)
    return report


def _import_notes(reviewed: Path) -> ReviewNotes:
    """What eic review import wrote beside its table: the removed and conflicting records."""
    path = sidecar(reviewed, "review")
    if not path.exists():
        raise DatasetError(
            f"{reviewed}: {path.name} is missing, so the records reviewers removed or disagreed on are unknown: give "
            "the table eic review import wrote, with its .review.json beside it"
        )
    raw = read_bounded(path, what="eic review import's notes", remedy=AGAIN, max_bytes=NOTES_MAX_MB << 20)
    try:
        data = json.loads(raw.decode("utf-8"))
    except (ValueError, RecursionError):  # UnicodeDecodeError is a ValueError
        raise DatasetError(f"{path}: damaged (not JSON eic review import wrote): {AGAIN}") from None
    return ReviewNotes.parse(data, path)


def _reviewed_rows(path: Path) -> dict[str, list[dict[str, Any]]]:
    """The reviewed table's rows by record ID (a table two imports were joined into has two for a record); a
    record ID eic review import would have refused is refused here too, before it reaches the new table."""
    rows: dict[str, list[dict[str, Any]]] = {}
    for number, row in enumerate(read_table(path, required=("ID", "category")).iter_rows(named=True), start=2):
        record_id = row["ID"]
        if not record_id:
            continue
        problem = record_id_problem(record_id)
        if problem:
            raise DatasetError(f"{path}: line {number}: ID {shown(record_id)} {problem}: {AGAIN}")
        if not (row["category"] or "").strip():
            raise DatasetError(
                f"{path}: line {number}: record {shown(record_id)} has no category; a record is taken out by choosing "
                '"none of these classes" in Label Studio (then eic review import), not by a blank cell'
            )
        rows.setdefault(record_id, []).append(row)
    return rows


def _answers(reviewed: dict[str, list[dict[str, Any]]]) -> tuple[dict[str, dict[str, Any]], set[str]]:
    """One answer per record, and the records whose rows disagree (another set of labels): a conflict, as two
    reviewers who disagree in Label Studio are. Rows that agree are one answer, by all their reviewers."""
    answers, disagreeing = {}, set()
    for record_id, rows in reviewed.items():
        if len({frozenset((row["category"] or "").split()) for row in rows}) > 1:
            disagreeing.add(record_id)
            continue
        reviewers = {name for row in rows for name in (row.get("reviewed_by") or "").split()}
        answers[record_id] = {**rows[0], "reviewed_by": " ".join(sorted(reviewers)) or None}
    return answers, disagreeing


def _check_same_table(config: ReviewApplyConfig, table: pl.DataFrame, reviewed: set[str]) -> None:
    if reviewed and not reviewed & set(table["ID"].drop_nulls().to_list()):
        example = sorted(reviewed)[0]
        raise DatasetError(
            f"{config.table} holds none of the {len(reviewed)} records of {config.reviewed} (e.g. {example}): a review "
            "of another table? (map the table's own ID column with `columns` if it has another name)"
        )


def _check_same_classes(config: ReviewApplyConfig, table: pl.DataFrame, rows: list[dict[str, Any]]) -> None:
    classes = {name for cell in table["category"].drop_nulls() for name in cell.split()}
    foreign = sorted({name for row in rows for name in (row["category"] or "").split()} - classes)
    if foreign:
        raise DatasetError(
            f"{config.reviewed} labels records with class(es) {', '.join(map(shown, foreign[:5]))} that "
            f"{config.table} does not "
            "have: a review made with another vocabulary?"
        )
    # A single-label table (one class a row) takes one class a record: "map painting" would become a class folder of
    # its own at eic download, and a class of its own at the next training.
    if all(len(cell.split()) <= 1 for cell in table["category"].drop_nulls()):
        several = next((row for row in rows if len((row["category"] or "").split()) > 1), None)
        if several is not None:
            raise DatasetError(
                f"{config.reviewed} gives record {shown(several['ID'])} several classes ({shown(several['category'])}) "
                f"where {config.table} holds one class a record: review it again with one class chosen"
            )


def _applied(
    row: dict[str, Any],
    answers: dict[str, Any],
    removed: set[str],
    conflicting: set[str],
    report: ReviewApplyReport,
) -> dict[str, Any] | None:
    """A table row after the review: as it was, relabelled, or None (removed)."""
    record_id = row["ID"]
    row = {**row, **{c: row.get(c) for c in REVIEW_COLUMNS}}
    if record_id in conflicting:
        return row
    if record_id in removed:
        report.removed.append(record_id)
        return None
    answer = answers.get(record_id)
    if answer is None:
        return row
    before, after = row["category"] or "", answer["category"]
    again = row.get("review") == "changed" and row.get("reviewed_by") == answer.get("reviewed_by")
    row["reviewed_by"] = answer.get("reviewed_by")
    if set(before.split()) == set(after.split()):
        report.confirmed += 1
        # The same review applied again to its own result: the change it made stays said.
        row["review"] = "changed" if again else "confirmed"
        return row
    report.changed[record_id] = (before, after)
    row["category"], row["review"] = after, "changed"
    if "skos_concept" in row and answer.get("skos_concept"):
        row["skos_concept"] = answer["skos_concept"]
    return row


def _added(answer: dict[str, Any], columns: list[str]) -> dict[str, Any]:
    row: dict[str, Any] = {c: answer.get(c) for c in columns}
    row["reviewed_by"], row["review"] = answer.get("reviewed_by"), "added"
    return row


def _empty(columns: list[str]) -> pl.DataFrame:
    return pl.DataFrame(schema={c: pl.Utf8 for c in columns})


def _summary(report: ReviewApplyReport, config: ReviewApplyConfig) -> dict[str, Any]:
    return {
        "rows": report.rows,
        "confirmed": report.confirmed,
        "changed": [{"ID": i, "before": b, "after": a} for i, (b, a) in report.changed.items()],
        "removed": report.removed,
        "unknown": report.unknown,
        "added": report.added,
        "conflicting": report.conflicting,
        "config": public_dict(config),
    }
