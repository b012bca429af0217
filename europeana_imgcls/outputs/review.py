"""``eic review import``: people's corrections in Label Studio become training data.

Takes Label Studio's JSON export (Export > JSON: a list of tasks, each with its ``data`` and its
``annotations``) of a project made from an ``eic enrich --review-output`` file, and writes a table
(``ID, URI, URL, category, skos_concept, reviewed_by``) that ``eic download`` and ``eic train`` accept.
Tasks nobody labelled, whose annotations were all cancelled, or whose reviewers all chose no class are
skipped; tasks whose annotators disagree (a reviewer who submits no class disagrees with one who chooses a
class) are conflicts. Both are reported, never guessed.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import polars as pl

from ..core.config import ReviewImportConfig, public_dict
from ..core.errors import DatasetError
from ..core.tables import check_table_suffix, refuse_existing, sidecar, write_json, write_table
from ..europeana.search_api import record_uri
from ..europeana.vocabulary import load_vocabulary
from .enrichment import CHOICES_NAME

COLUMNS = ["ID", "URI", "URL", "category", "skos_concept", "reviewed_by"]


@dataclass
class ReviewImportReport:
    output: Path
    imported: int = 0
    skipped: list[str] = field(default_factory=list)  # task ids with no usable annotation
    conflicts: list[str] = field(default_factory=list)  # task ids whose annotators disagree
    per_class: dict[str, int] = field(default_factory=dict)


def import_review(config: ReviewImportConfig) -> ReviewImportReport:
    """Turn a Label Studio JSON export into a table; see the module docstring."""
    check_table_suffix(config.output)
    refuse_existing(config.output, config.overwrite)
    vocab = load_vocabulary(config.vocab)
    tasks = _load_export(config.export)
    if tasks and not any(task["data"].get("ID") for task in tasks):
        raise DatasetError(
            f"{config.export}: no task has data.ID, so none comes from an eic enrich review file; "
            "export the project made from `review_output`"
        )
    report = ReviewImportReport(config.output)
    rows = []
    for number, task in enumerate(tasks):
        name = str(task.get("id", f"#{number + 1}"))
        answer = _answer(task, config.export, name)
        if answer is None:
            report.skipped.append(name)
            continue
        if answer == CONFLICT:
            report.conflicts.append(name)
            continue
        labels, reviewer = answer
        unknown = [label for label in labels if label not in vocab]
        if unknown:
            where = config.vocab or "the built-in vocabulary"
            raise DatasetError(
                f"{config.export}: task {name} has label(s) {', '.join(unknown)} that are not in "
                f"{where}; pass the run's `vocab`"
            )
        row = _row(task["data"], labels, vocab, reviewer)
        if row is None:  # a local file, not a record: nothing to download or train from
            report.skipped.append(name)
            continue
        rows.append(row)
        for label in labels:
            report.per_class[label] = report.per_class.get(label, 0) + 1
    write_table(pl.DataFrame(rows, schema={c: pl.Utf8 for c in COLUMNS}, orient="row"), config.output)
    write_json(
        sidecar(config.output, "review"),
        {"skipped": report.skipped, "conflicts": report.conflicts, "config": public_dict(config)},
    )
    report.imported = len(rows)
    return report


def _load_export(path: Path) -> list[dict[str, Any]]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise DatasetError(f"{path}: no such file") from None
    except (OSError, ValueError) as exc:
        raise DatasetError(f"{path}: not a JSON file ({exc})") from None
    if not isinstance(data, list) or not all(isinstance(t, dict) and isinstance(t.get("data"), dict) for t in data):
        raise DatasetError(
            f"{path}: not a Label Studio JSON export (expected a list of tasks, each with 'data'; "
            "export the project as JSON, not JSON_MIN or CSV)"
        )
    return data


CONFLICT: Literal["conflict"] = "conflict"


def _answer(task: dict[str, Any], path: Path, name: str) -> tuple[list[str], str] | Literal["conflict"] | None:
    """The labels people chose and who chose them; None when nobody chose a class, "conflict" when they
    disagree. A submitted annotation without a choice is the answer "no class", which disagrees with any class."""
    annotations = task.get("annotations")
    if annotations is None:
        annotations = []
    if not isinstance(annotations, list):
        raise DatasetError(f"{path}: task {name} has 'annotations' that is not a list")
    answers: dict[tuple[str, ...], list[str]] = {}
    for annotation in annotations:
        if not isinstance(annotation, dict) or annotation.get("was_cancelled"):
            continue
        choices = _choices(annotation.get("result") or [], path, name)
        answers.setdefault(tuple(sorted(choices)), []).append(_annotator(annotation.get("completed_by")))
    if len(answers) > 1:
        return CONFLICT
    if not answers or () in answers:
        return None
    ((labels, reviewers),) = answers.items()
    return list(labels), " ".join(sorted(set(reviewers)))


def _choices(result: list[Any], path: Path, name: str) -> list[str]:
    """The classes a submitted annotation chose; none when its reviewer removed the suggestion and chose none."""
    for item in result:
        if not isinstance(item, dict) or item.get("type") != "choices":
            continue
        if item.get("from_name") not in (CHOICES_NAME, None):
            continue
        choices = (item.get("value") or {}).get("choices")
        if not isinstance(choices, list) or not all(isinstance(c, str) for c in choices):
            raise DatasetError(f"{path}: task {name} has a choices result without a list of choices")
        return choices
    return []


def _annotator(completed_by: Any) -> str:
    if isinstance(completed_by, dict):
        return str(completed_by.get("email") or completed_by.get("id") or "")
    return "" if completed_by is None else str(completed_by)


def _row(data: dict[str, Any], labels: list[str], vocab: dict[str, str], reviewer: str) -> list[str | None] | None:
    record_id = data.get("ID") or None
    url = data.get("image")
    if not record_id or not isinstance(url, str) or not url.lower().startswith(("http://", "https://")):
        return None
    return [
        record_id,
        data.get("URI") or record_uri(record_id),
        url,
        " ".join(labels),
        " ".join(vocab[label] for label in labels),
        reviewer,
    ]
