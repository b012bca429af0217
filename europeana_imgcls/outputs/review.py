"""The review loop with Label Studio: tasks for people (``review_task``, ``write_review_tasks``, one labelling
interface for every task eic writes), and ``eic review import``, their corrections back into training data.

``import_review`` takes Label Studio's JSON export (Export > JSON: a list of tasks, each with its ``data`` and
its ``annotations``) of a project made from an eic review file, and writes a table (``ID, URI, URL, category,
skos_concept, reviewed_by``) that ``eic download`` and ``eic train`` accept. The export is untrusted input: its
shape is checked (pydantic models), its size capped, and what does not fit is refused in one line.

- Tasks nobody labelled, or whose annotations were all cancelled, are skipped.
- A reviewer who chose "none of these classes" answers "no class": the record is listed (``removed``), not
  imported, so ``eic review apply`` can take it out of the training table. An annotation that chose nothing is no
  answer (a task with no other is skipped), never a removal.
- Annotators who disagree, within a task or across two tasks of one record, make a conflict: reported, never
  guessed. A choice made twice (``["map", "map"]``) is one choice.
- A task whose ``URI`` is not its record's item URI, or whose ID is no Europeana record ID, is refused with its
  reason: a correction must land on the record it was made for. So is an ID that a file name, a table or a
  terminal would misread (a control or format character such as NUL or a bidi override, a ``.`` or ``..`` step):
  nothing downstream (download's file names, the tables) ever sees one.
- Only a regular file is read (a pipe or a device is refused before it is opened), and never more of it than
  ``max_export_mb``, whatever size the file system reports.

Beside the table, ``ReviewNotes`` (``REVIEWED.review.json``, typed, with a format tag) tell ``eic review apply``
what the table cannot: the records reviewers put in no class and those they disagreed on.
"""

from __future__ import annotations

import hashlib
import json
import os
import unicodedata
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Annotated, Any, Final, Literal
from urllib.parse import quote
from xml.sax.saxutils import quoteattr

import polars as pl
from pydantic import AfterValidator, BaseModel, ConfigDict, ValidationError

from ..core.config import ReviewImportConfig, public_dict
from ..core.errors import ConfigError, DatasetError
from ..core.outputs import TABLE, claim_sidecar, claimed
from ..core.sidecars import first_problem, read_capped, small_regular_file
from ..core.tables import atomic_path, check_table_suffix, sidecar, write_json, write_table
from ..datasets.imageset import Decisions
from ..europeana.search_api import is_record_id, record_uri
from ..europeana.vocabulary import load_vocabulary

COLUMNS = ["ID", "URI", "URL", "category", "skos_concept", "reviewed_by"]
CHOICES_NAME = "category"
NONE_CHOICE = "none of these classes"  # the reviewer's way to say the record is in no class of the run
NOTES_FORMAT: Final = "europeana-imgcls/review-notes-v1"
# Label Studio's own address of a file under its LOCAL_FILES_DOCUMENT_ROOT (label_studio/core/views.py,
# localfiles_data: the path after ?d= is relative to that root; a project's local storage must hold the file).
LOCAL_FILES: Final = "/data/local-files/?d="


# ---------------------------------------------------------------------------------------------
# Tasks for people


def review_task(
    record_id: str, image: str, suggestion: list[str], score: float, reason: str, uri: str | None = None
) -> dict[str, Any]:
    """A Label Studio task with eic's suggestion as a pre-annotation (a task of enrich's or audit's review)."""
    data = {
        "image": image,
        "ID": record_id,
        "URI": uri or (record_uri(record_id) if record_id else ""),
        "reason": reason,
    }
    # Result ids must differ across a project's tasks: derive one from the record.
    result_id = hashlib.sha1((record_id or image).encode()).hexdigest()[:10]
    return {
        "data": data,
        "predictions": [
            {
                "score": round(score, 6),
                "result": [
                    {
                        "id": result_id,
                        "type": "choices",
                        "from_name": CHOICES_NAME,
                        "to_name": "image",
                        "value": {"choices": suggestion},
                    }
                ],
            }
        ],
    }


@dataclass(frozen=True)
class ImageLinks:
    """How a task shows an image that is a local file: Label Studio opens URLs, never a path on this machine.

    With ``root`` alone, Label Studio serves the file itself (``LOCAL_FILES``: its LOCAL_FILES_DOCUMENT_ROOT is
    ``root``); with ``prefix``, a web server does (``python -m http.server`` in ``root``, default the current
    folder). With neither, the task keeps the file's path, which Label Studio cannot open. A web image (http,
    https) is shown as it is."""

    root: Path | None = None
    prefix: str | None = None

    @classmethod
    def of(cls, root: Path | None, prefix: str | None) -> ImageLinks:
        """The links of the settings ``document_root`` and ``image_url``, refused in one line when they cannot work."""
        if prefix is not None and not prefix.lower().startswith(("http://", "https://")):
            raise ConfigError(f"`image_url` {prefix!r} is no http(s) URL: give the address your web server serves at")
        if root is not None and not root.is_dir():
            raise ConfigError(f"`document_root` {root} is no folder: give the folder that holds the images")
        return cls(root, prefix if prefix is None or prefix.endswith("/") else prefix + "/")

    @property
    def base(self) -> Path | None:
        """The folder image paths are written relative to (None: paths are left as they are)."""
        if self.root is None and self.prefix is None:
            return None
        return Path(os.path.abspath(self.root or Path.cwd()))  # not resolved: a link in it stays as served

    def check(self, image: Path) -> None:
        """Refuse, before any work, a local image (or folder of them) these links cannot reach."""
        base = self.base
        if base is not None and not Path(os.path.abspath(image)).is_relative_to(base):
            option = "document_root" if self.root is not None else "image_url"
            raise ConfigError(
                f"{image} is not under {base}, which `{option}` serves: give `document_root` a folder that holds "
                "every image"
            )

    def url(self, image: str) -> str:
        """What a task's ``image`` becomes: a URL Label Studio opens (a web image's own, or a local file's under
        the base); anything else (a file outside it, checked for before any work) as it is."""
        base = self.base
        local = Path(os.path.abspath(image))
        if base is None or image.lower().startswith(("http://", "https://")) or not local.is_relative_to(base):
            return image
        return (self.prefix or LOCAL_FILES) + quote(local.relative_to(base).as_posix(), safe="/")


def shown_in_label_studio(image: str) -> bool:
    """Whether Label Studio can open a task's image: a web image, or a file it serves itself."""
    return image.lower().startswith(("http://", "https://", LOCAL_FILES))


def write_review_tasks(
    path: Path,
    tasks: list[dict[str, Any]],
    classes: list[str],
    task: Decisions,
    model_version: str,
    links: ImageLinks | None = None,
) -> int:
    """The tasks (a JSON list Label Studio imports) and, beside them, the labelling interface they are made for,
    in which a reviewer picks one class or several as the run's ``task`` decides. A local image becomes the URL
    ``links`` give it."""
    for item in tasks:
        item["predictions"][0]["model_version"] = model_version
        if links is not None:
            item["data"]["image"] = links.url(item["data"]["image"])
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(tasks, ensure_ascii=False, indent=1) + "\n", encoding="utf-8")
    with atomic_path(labelling_config_path(path)) as tmp:
        tmp.write_text(labelling_config(classes, task), encoding="utf-8")
    return len(tasks)


def labelling_config_path(review: Path) -> Path:
    return review.with_name(f"{review.stem}.labelling.xml")


_LABELLING_START = '<View>\n  <Image name="image" value="$image"/>\n  <Text name="record" value="$ID"/>\n'


def claim_labelling_config(review: Path, option: str = "review_output") -> None:
    """The labelling interface beside review tasks may be written: none there, or one eic wrote (its opening is
    eic's). A reviewer's own, hand-written one is refused in one line, before any work."""
    path = labelling_config_path(review)
    if not os.path.lexists(path):
        return
    if not _is_eics_labelling(path):
        raise DatasetError(
            f"{path} is not the labelling interface eic writes beside {review.name}: move it, or choose another "
            f"`{option}`"
        )


def _is_eics_labelling(path: Path) -> bool:
    """Whether ``path`` is, byte for byte, the interface ``labelling_config`` writes for some classes: one a reviewer
    edited (a hint, another control) is theirs, never replaced."""
    import xml.etree.ElementTree as ElementTree

    if not small_regular_file(path, 1 << 20):  # never a pipe, a device or a link's target
        return False
    try:
        text = path.read_text(encoding="utf-8")
        choices = ElementTree.fromstring(text).find("Choices")
    except (OSError, ValueError, ElementTree.ParseError):
        return False
    if choices is None or not text.startswith(_LABELLING_START):
        return False
    values = [choice.get("value", "") for choice in choices.findall("Choice")]
    as_written = SimpleNamespace(review_choice=choices.get("choice", ""))
    return bool(values) and labelling_config(values[:-1], as_written) == text  # type: ignore[arg-type]


def labelling_config(classes: list[str], task: Decisions) -> str:
    """The Label Studio labelling interface of every review task eic writes: the image, the record, the classes
    (one to pick, or several, as ``task`` decides), and a way to say "none of these"."""
    choices = "\n".join(f"    <Choice value={quoteattr(c)}/>" for c in [*classes, NONE_CHOICE])
    return (
        f'<View>\n  <Image name="image" value="$image"/>\n  <Text name="record" value="$ID"/>\n'
        f'  <Text name="reason" value="$reason"/>\n'
        f'  <Choices name="{CHOICES_NAME}" toName="image" choice="{task.review_choice}" showInline="true">\n{choices}\n'
        "  </Choices>\n</View>\n"
    )


# ---------------------------------------------------------------------------------------------
# The export, as eic reads it


class _Model(BaseModel):
    model_config = ConfigDict(extra="ignore")


class _Result(_Model):
    type: str | None = None
    from_name: str | None = None
    value: dict[str, Any] | None = None


class _Annotation(_Model):
    was_cancelled: bool = False
    result: list[_Result] | None = None
    completed_by: int | str | dict[str, Any] | None = None


class _Data(_Model):
    ID: str | None = None
    image: str | None = None
    URI: str | None = None


class _Task(_Model):
    id: int | str | None = None
    data: _Data
    annotations: list[_Annotation] | None = None


# ---------------------------------------------------------------------------------------------
# Record IDs and text from untrusted files


def record_id_problem(record_id: str) -> str | None:
    """Why ``record_id`` from a file people or programs edited cannot be taken as a record's ID, or None.

    Beyond the shape (``/dataset/local``): no character that a file name, a table or a terminal would misread
    (controls such as NUL, ESC and line breaks; format characters such as a bidi override or a zero-width space;
    separators), and no ``.`` or ``..`` step, which reads as a way out of a folder."""
    if not is_record_id(record_id):
        return "is no Europeana record ID (/dataset/local)"
    odd = next((c for c in record_id if unicodedata.category(c)[0] in "CZ"), None)
    if odd is not None:
        name = unicodedata.name(odd, "a control character")
        return f"holds U+{ord(odd):04X} ({name}), which a file name or a terminal would misread"
    if any(step in (".", "..") for step in record_id.split("/")):
        return "has a '.' or '..' step, which a path reads as another folder"
    return None


def shown(text: str, limit: int = 60) -> str:
    """``text`` as a message may quote it: as it is when short and printable, else escaped, so a line break, an
    escape sequence or a bidi override in a file never reaches the terminal."""
    return text if len(text) <= limit and text.isprintable() else repr(text[:limit])


def _checked_record_id(value: str) -> str:
    problem = record_id_problem(value)
    if problem:
        raise ValueError(f"{shown(value)} {problem}")
    return value


RecordId = Annotated[str, AfterValidator(_checked_record_id)]


class Refusal(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    task: str
    reason: str


class ReviewNotes(BaseModel):
    """What eic review import writes beside its table (``REVIEWED.review.json``) and eic review apply reads back:
    what the table cannot say (the records reviewers put in no class, those they disagreed on) and what was not
    imported. Typed, tagged with its format, and every record ID checked as the export's were."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    format: Literal["europeana-imgcls/review-notes-v1"] = NOTES_FORMAT
    skipped: list[str] = []  # task names
    conflicts: list[str] = []  # task names
    conflicting_records: list[RecordId] = []
    removed: list[RecordId] = []
    refused: list[Refusal] = []
    config: dict[str, Any] = {}

    @classmethod
    def parse(cls, data: Any, source: Path) -> ReviewNotes:
        """The notes in ``data`` (read from ``source``), or a DatasetError that names the file and what to do."""
        again = "run eic review import again to write the table and its notes"
        if not isinstance(data, dict) or data.get("format") != NOTES_FORMAT:
            raise DatasetError(f"{source} is not eic review import's notes (format {NOTES_FORMAT}): {again}")
        try:
            return cls.model_validate(data)
        except ValidationError as exc:
            raise DatasetError(f"{source}: damaged notes ({first_problem(exc)}): {again}") from None


@dataclass
class ReviewImportReport:
    output: Path
    imported: int = 0
    skipped: list[str] = field(default_factory=list)  # task ids with no usable annotation
    conflicts: list[str] = field(default_factory=list)  # task ids whose annotators disagree (in one or two tasks)
    removed: list[str] = field(default_factory=list)  # record IDs reviewers put in no class
    conflicting_records: list[str] = field(default_factory=list)  # record IDs of the conflicts: never applied
    refused: list[tuple[str, str]] = field(default_factory=list)  # task id, why
    per_class: dict[str, int] = field(default_factory=dict)


def import_review(config: ReviewImportConfig) -> ReviewImportReport:
    """Turn a Label Studio JSON export into a table; see the module docstring."""
    check_table_suffix(config.output)
    with claimed(config.output, TABLE, overwrite=config.overwrite):  # one writer, and only over eic's own table
        claim_sidecar(config.output, "review")  # and its notes beside it: nobody else's file of that name
        return _import_review(config)


def _import_review(config: ReviewImportConfig) -> ReviewImportReport:
    vocab = load_vocabulary(config.vocab)
    tasks = _load_export(config.export, config.max_export_mb)
    report = ReviewImportReport(config.output)
    answers: dict[str, list[tuple[str, tuple[str, ...], str, _Data]]] = {}  # record -> (task, labels, who, data)
    for name, task in tasks:
        answer = _answer(task, vocab, config, name)
        problem = _target_problem(task.data)
        if answer is None:
            report.skipped.append(name)
        elif problem:  # a conflict too: its record ID is no more to be trusted downstream
            report.refused.append((name, problem))
        elif answer == "conflict":
            report.conflicts.append(name)
            if task.data.ID:
                report.conflicting_records.append(task.data.ID)
        elif isinstance(answer, tuple) and task.data.ID:
            labels, reviewer = answer
            answers.setdefault(task.data.ID, []).append((name, labels, reviewer, task.data))
        else:
            report.skipped.append(name)
    rows = []
    disputed = set(report.conflicting_records)  # a record one of whose tasks is a conflict: no answer to take
    for record_id, given in answers.items():
        if record_id in disputed:
            report.conflicts += [name for name, _, _, _ in given]
            continue
        if len({labels for _, labels, _, _ in given}) > 1:  # two tasks of one record, answered differently
            report.conflicts += [name for name, _, _, _ in given]
            report.conflicting_records.append(record_id)
            continue
        _, labels, _, data = given[0]
        reviewers = " ".join(sorted({who for _, _, who, _ in given if who}))
        if not labels:
            report.removed.append(record_id)
            continue
        rows.append(_row(record_id, data, labels, vocab, reviewers))
        for label in labels:
            report.per_class[label] = report.per_class.get(label, 0) + 1
    notes = ReviewNotes(
        skipped=report.skipped,
        conflicts=report.conflicts,
        conflicting_records=sorted(set(report.conflicting_records)),
        removed=report.removed,
        refused=[Refusal(task=t, reason=r) for t, r in report.refused],
        config=public_dict(config),
    )
    write_json(sidecar(config.output, "review"), notes.model_dump(mode="json"))  # first: what makes the table eic's
    write_table(pl.DataFrame(rows, schema={c: pl.Utf8 for c in COLUMNS}, orient="row"), config.output)
    report.imported = len(rows)
    return report


def _load_export(path: Path, max_mb: int) -> list[tuple[str, _Task]]:
    """The export's tasks (with a name each for messages), checked; one line for anything else."""
    remedy = "save the export as a file (Label Studio: Export > JSON) and give it"
    raw = read_capped(path, max_mb << 20, what="a Label Studio export", remedy=remedy)
    if raw is None:
        raise DatasetError(
            f"{path} holds more than the {max_mb} MB eic reads at once: export the project in parts (filter the "
            "tasks in Label Studio), or raise `max_export_mb`"
        )
    try:
        data = json.loads(raw)
    except RecursionError:
        raise DatasetError(f"{path}: nested too deeply to be a Label Studio export") from None
    except (OSError, ValueError) as exc:
        raise DatasetError(f"{path}: not a JSON file ({type(exc).__name__})") from None
    if not isinstance(data, list):
        hint = (
            " (this is a file of tasks for Label Studio, not an export of people's answers: import it into a "
            "project, review, then Export > JSON)"
            if isinstance(data, dict) and "data" in data
            else ""
        )
        raise DatasetError(f"{path}: not a Label Studio JSON export (expected a list of tasks){hint}")
    tasks = []
    for number, item in enumerate(data, start=1):
        name = _task_name(item, number)
        try:
            tasks.append((name, _Task.model_validate(item)))
        except ValidationError as exc:
            raise DatasetError(
                f"{path}: task {name}: {first_problem(exc)} (export the project as JSON from "
                "Label Studio; JSON_MIN and CSV have another shape)"
            ) from None
    if tasks and not any(task.data.ID for _, task in tasks):
        raise DatasetError(
            f"{path}: no task has data.ID, so none comes from an eic review file; export the "
            "project made from `review_output`"
        )
    if tasks and all(not task.annotations for _, task in tasks) and all("predictions" in d for d in data):
        raise DatasetError(
            f"{path} holds eic's review tasks, not people's answers: import it into Label Studio, "
            "review, then Export > JSON"
        )
    return tasks


def _task_name(item: Any, number: int) -> str:
    """The task's id as messages and the notes name it (escaped when it is odd), else its place in the export."""
    given = item.get("id") if isinstance(item, dict) else None
    if isinstance(given, bool) or not isinstance(given, int | str) or given == "":
        return f"#{number}"
    return shown(str(given))


def _answer(
    task: _Task, vocab: dict[str, str], config: ReviewImportConfig, name: str
) -> tuple[tuple[str, ...], str] | str | None:
    """The labels people chose (empty: "no class") and who chose them; None when nobody answered, "conflict"
    when they disagree."""
    answers: dict[tuple[str, ...], set[str]] = {}
    for annotation in task.annotations or []:
        if annotation.was_cancelled:
            continue
        labels = _choices(annotation.result or [], config.export, name)
        if labels is None:  # a comment alone, or submitted with nothing chosen: no answer, never a removal
            continue
        unknown = [label for label in labels if label not in vocab]
        if unknown:
            where = config.vocab or "the built-in vocabulary"
            raise DatasetError(
                f"{config.export}: task {name} has label(s) {', '.join(map(shown, unknown))} that are not in "
                f"{where}; pass the run's `vocab`"
            )
        answers.setdefault(labels, set()).add(_annotator(annotation.completed_by))
    if not answers:
        return None
    if len(answers) > 1:
        return "conflict"
    ((labels, reviewers),) = answers.items()
    return labels, " ".join(sorted(r for r in reviewers if r))


def _choices(result: list[_Result], path: Path, name: str) -> tuple[str, ...] | None:
    """The classes a submitted annotation chose, each once and in order; none for "none of these classes" chosen
    (the only way a record is taken out); None where it chose nothing (a comment alone, an empty submit), which is
    no answer. A choice only under another name than eic's (a project whose Choices was renamed) is refused: taken
    as nothing, every answer would be lost."""
    others = []
    for item in result:
        if item.type != "choices":
            continue
        if item.from_name not in (CHOICES_NAME, None):
            others.append(item.from_name)
            continue
        choices = (item.value or {}).get("choices")
        if not isinstance(choices, list) or not all(isinstance(c, str) for c in choices):
            raise DatasetError(f"{path}: task {name} has a choices result without a list of choices")
        chosen = [c.strip() for c in choices if c.strip()]
        if not chosen:
            return None
        return tuple(sorted(dict.fromkeys(c for c in chosen if c != NONE_CHOICE)))
    if others:
        raise DatasetError(
            f"{path}: task {name} is answered in a choices field named {shown(repr(others[0]))}, not {CHOICES_NAME!r}: "
            "label with the labelling config eic writes (docs/review.md), or rename the field back"
        )
    return None


def _annotator(completed_by: Any) -> str:
    if isinstance(completed_by, dict):
        return str(completed_by.get("email") or completed_by.get("id") or "")
    return "" if completed_by is None else str(completed_by)


def _target_problem(data: _Data) -> str | None:
    if not data.ID:
        return None
    problem = record_id_problem(data.ID)
    if problem:
        return f"data.ID {data.ID[:60]!r} {problem}"
    if data.URI and record_uri(data.ID) != data.URI:
        return f"data.URI {data.URI[:80]!r} is not the item URI of its record {data.ID}"
    return None


def _row(
    record_id: str, data: _Data, labels: tuple[str, ...], vocab: dict[str, str], reviewer: str
) -> list[str | None]:
    return [  # a local file's task (eic audit's, without a table) keeps its answer: review apply has the URL
        record_id,
        record_uri(record_id),
        _web_image(data.image),
        " ".join(labels),
        " ".join(vocab[label] for label in labels),
        reviewer,
    ]


def _web_image(image: str | None) -> str | None:
    """The task's image when it is a web URL eic download may fetch; None for a local file, and for text no URL
    holds (a control or format character, a space: a header injected into the request, a name shown reversed)."""
    if not image or not image.lower().startswith(("http://", "https://")):
        return None
    return None if any(unicodedata.category(c)[0] in "CZ" for c in image) else image
