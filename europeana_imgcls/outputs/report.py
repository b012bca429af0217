"""``eic report``: a run as one HTML page people can look at, and mail.

The page is one self-contained file: its CSS and JavaScript inline, every image a base64 JPEG inside it, nothing
fetched (a Content-Security-Policy says so to the browser too), so it opens from ``file://`` on a laptop offline.
It is built from what the run holds (summary, splits' settings, histories, test-fold predictions, Grad-CAM figures,
calibration) and, where named, an eic evaluate folder, an eic audit folder and eic enrich's annotations; nothing is
recomputed, and what is missing is said with the command that makes it.

Every file read back is untrusted: each value is escaped where it enters the HTML (``report_page.py``), the data the
page's script draws from travels as JSON in a ``<script type="application/json">`` with ``<``, ``>`` and ``&``
escaped, and a file that cannot be read leaves its section out with a note rather than failing the page.
"""

from __future__ import annotations

import json
import math
import os
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..core.config import ReportConfig
from ..core.errors import CalibrationError, EicError, ModelError
from ..core.naming import record_id_of
from ..core.outputs import OutputKind, claimed
from ..core.progress import progress_bar
from ..core.sidecars import not_regular, read_capped
from ..core.tables import atomic_path, read_csv_salvaged
from ..datasets.tasks import Task, task_read
from ..europeana.search_api import is_record_id
from ..modelling.run_folder import RunFolder, SplitFolder, not_a_run, recorded_images
from .report_model import FIGURE_BUDGET, GENERATOR, Audited, Calibrated, Images, Page, Predictions, Shown
from .report_page import render, sections

JSON_CAP = 16 * 2**20  # the most of a JSON file read back


def _is_report(path: Path) -> bool:
    with path.open("rb") as handle:
        return f'name="generator" content="{GENERATOR}'.encode() in handle.read(4096)


REPORT = OutputKind("report", "an HTML report", recognise=_is_report)


@dataclass
class ReportResult:
    output: Path
    sections: list[str]  # the ids of the page's sections, in order
    images: int  # images embedded
    size: int  # bytes
    notes: list[str]  # what the page leaves out, and the command that makes it


# ---------------------------------------------------------------------------------------------
# The stage


def report(config: ReportConfig) -> ReportResult:
    """Write the run's page (see the module docstring) through the output policy, atomically."""
    run = RunFolder(config.run)
    if not run.splits():
        raise ModelError(not_a_run(config.run))
    output = config.output or run.report
    with (
        claimed(output, REPORT, overwrite=config.overwrite, option="output"),
        progress_bar(config.quiet, transient=True) as bar,
    ):
        page = gather(config)
        page.notes[:] = [_mailable(note, config.run) for note in page.notes]
        # Embedding the images is what takes time (~50 ms an image): counted as they are drawn.
        task = bar.add_task("images embedded", total=None)
        page.images.on_add = lambda: bar.update(task, advance=1)
        html = render(page)
        with atomic_path(output) as tmp:
            # A name that is not UTF-8 (a surrogate from a damaged file) becomes U+FFFD, never a failed page.
            tmp.write_bytes(html.encode("utf-8", errors="replace"))
    size = len(html.encode("utf-8", errors="replace"))
    return ReportResult(output, sections(page), len(page.images.data), size, page.notes)


def gather(config: ReportConfig) -> Page:
    """What the page shows, read from the run and the outputs ``config`` names."""
    run = RunFolder(config.run)
    notes: list[str] = []
    summary = _dict(_json(run.summary, notes, "the run's summary (train it to the end, or `resume`)"))
    splits = run.finished_splits()
    settings = _dict(_json(splits[0].config, notes, "the first split's settings") if splits else None)
    task = task_read(settings.get("mode"))
    classes = _classes(summary, splits)
    images = Images(config.image_size)
    sets = [_test_folds(run, task, classes, notes)]
    if config.evaluation is not None:
        sets.append(_evaluation(config.evaluation, task, classes, notes))
    else:
        notes.append(
            "No evaluation on images the run never saw: run `eic evaluate RUN EVAL_DIR`, then `eic report RUN "
            "--evaluation evaluation`."
        )
    page = Page(
        title=f"eic report: {run.name}",
        run=config.run,
        summary=_summary(run, summary, settings, splits, sets[0]),
        metrics=_metrics(summary.get("metrics")),
        evaluation=_metrics(_dict(_json(run.evaluation, [], "")).get("summary")),
        sets=[s for s in sets if s.rows],
        histories=_histories(splits),
        calibrated=_calibrated(config, task, notes),
        audited=_audited(config.audit, config.audit_top, notes) if config.audit is not None else None,
        notes=notes,
        images=images,
        cams=_cams(splits, images),
        per_cell=config.per_cell,
        max_images=config.max_images,
        gallery=config.gallery,
    )
    if config.audit is None:
        notes.append("No audit included: run `eic audit RUN -o audit`, then `eic report RUN --audit audit`.")
    return page


# ---------------------------------------------------------------------------------------------
# Files read back


def _json(path: Path, notes: list[str], what: str) -> Any:
    """A JSON file of the run, or None (said in ``notes`` with ``what`` when it is damaged or missing)."""
    try:
        data = read_capped(path, JSON_CAP, what=what or "a JSON file", remedy="", error=ModelError)
        if data is None:
            raise ModelError(f"{path} is too large")
        return json.loads(data)
    except (EicError, ValueError):
        if what:
            notes.append(f"{path.name}: missing or unreadable, so left out ({what}).")
        return None


def _dict(value: Any) -> dict[str, Any]:
    """A JSON object read back, or an empty one where the file held something else."""
    return value if isinstance(value, dict) else {}


def _rows(path: Path) -> list[dict[str, str]] | None:
    """The rows of a CSV eic wrote, or None where there is no such regular file (a FIFO is never opened)."""
    if not_regular(path) is not None:
        return None
    try:
        return read_csv_salvaged(path, "left out of the report")
    except (OSError, UnicodeError, ValueError):
        return None


def _classes(summary: dict[str, Any], splits: list[SplitFolder]) -> list[str]:
    said = summary.get("classes")
    if isinstance(said, list) and all(isinstance(c, str) for c in said):
        return said
    index = _json(splits[0].class_index, [], "") if splits else None
    return [str(c) for c in index] if isinstance(index, dict) else []


def _number(value: Any) -> float | None:
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


def _scored(row: dict[str, str], task: Task, classes: list[str], split: str) -> Shown | None:
    """One row of test_predictions.csv or an evaluation's predictions.csv, or None when it is damaged."""
    truth, predicted = task.classes_in(row.get("truth") or ""), task.classes_in(row.get("prediction") or "")
    known = set(classes)
    if not row.get("image") or not set(truth) <= known or not set(predicted) <= known:
        return None
    confidence = _number(row.get("confidence"))
    if confidence is None:  # multi-label rows say no confidence: the top probability stands for it
        try:
            probabilities = json.loads(row.get("probabilities") or "{}")
        except ValueError:
            return None
        values = [v for v in map(_number, probabilities.values())] if isinstance(probabilities, dict) else []
        confidence = max((v for v in values if v is not None), default=None)
    if confidence is None:
        return None
    image = row["image"]
    return Shown(image, record_id_of(Path(image).name), truth, predicted, confidence, split)


def _test_folds(run: RunFolder, task: Task, classes: list[str], notes: list[str]) -> Predictions:
    said = Predictions("test", "Test folds (out-of-fold predictions)", classes, task.one_class_each)
    for split in run.finished_splits():
        rows = _rows(split.test_predictions)
        if rows is None:
            notes.append(
                f"{split.name} holds no test-fold predictions ({split.test_predictions.name}): train the run again "
                "with `eic train` to see its test images here."
            )
            continue
        placed = split.images_named([row.get("image") or "" for row in rows])
        for row, image in zip(rows, placed, strict=True):
            shown = _scored({**row, "image": image}, task, classes, split.name)
            said.damaged += shown is None
            if shown is not None:
                said.rows.append(shown)
    if said.damaged:
        notes.append(f"{said.damaged} test-fold prediction rows were damaged and are left out.")
    return said


def _evaluation(folder: Path, task: Task, classes: list[str], notes: list[str]) -> Predictions:
    said = Predictions("evaluation", f"Evaluation ({folder.name})", classes, task.one_class_each)
    rows = _rows(folder / "predictions.csv")
    if rows is None:
        notes.append(
            f"{folder}: no predictions.csv, so no evaluation is shown; point --evaluation at an eic evaluate folder."
        )
        return said
    for row in rows:
        shown = _scored(row, task, classes, row.get("split") or "")
        said.damaged += shown is None
        if shown is not None:
            said.rows.append(shown)
    return said


def _metrics(said: Any) -> list[tuple[str, float, float]]:
    """Headline metrics as (name, mean, spread over splits)."""
    if not isinstance(said, dict):
        return []
    shown = []
    for name, value in said.items():
        if isinstance(value, dict) and (mean := _number(value.get("mean"))) is not None:
            shown.append((str(name), mean, _number(value.get("std")) or 0.0))
    return shown


def _images(summary: dict[str, Any], counts: dict[str, Any], test: Predictions) -> str:
    """How many images the run learnt from: as its summary says, else (a run from before it said) the counts' sum
    for a single-label run; a multi-label image is in several counts, so there the test folds' distinct images."""
    said = recorded_images(summary)
    if said is not None:
        return str(said)
    if test.single:
        return str(sum(int(v) for v in counts.values() if isinstance(v, int)))
    return f"{len({row.image for row in test.rows})} in the test folds"


def _summary(
    run: RunFolder, summary: dict[str, Any], settings: dict[str, Any], splits: list[SplitFolder], test: Predictions
) -> list[tuple[str, str]]:
    """The summary's lines: model, data, protocol, hardware and time."""
    try:
        model_id = run.model_id()
    except (EicError, OSError):
        model_id = "(no model file)"
    counts: dict[str, Any] = summary["counts"] if isinstance(summary.get("counts"), dict) else {}
    providers = Counter(
        row.record.split("/")[1] for row in test.rows if row.record and is_record_id(row.record)
    ).most_common(8)
    compute: dict[str, Any] = summary["compute"] if isinstance(summary.get("compute"), dict) else {}
    seconds = _number(compute.get("seconds"))
    lines = [
        ("model id", model_id),
        ("task", task_read(settings.get("mode")).name),
        ("classes", ", ".join(f"{k} ({v})" for k, v in counts.items()) or ", ".join(test.classes)),
        ("images", _images(summary, counts, test)),
        ("providers (test images)", ", ".join(f"{p} ({n})" for p, n in providers) or "not told by the file names"),
        (
            "protocol",
            f"{settings.get('folds', '?')} folds, {len(splits)} split(s) trained, method {settings.get('method', '?')}",
        ),
        (
            "model",
            f"{settings.get('arch', '?')}, weights {settings.get('weights', '?')}, "
            f"input {settings.get('input_size', '?')} px",
        ),
        *_training(settings, splits),
        ("hardware", str(compute.get("hardware", "not recorded"))),
        ("time", f"{seconds:.0f} s, torch {compute.get('torch', '?')}" if seconds is not None else "not recorded"),
    ]
    return lines


def _mailable(note: str, run: Path) -> str:
    """A note as the page says it: the run's folder as its name, not where it lies on this machine (a page is
    mailed; a home folder's path is no one else's to read, nor of use to them)."""
    for where in sorted({str(run.resolve()), str(run.absolute())}, key=len, reverse=True):
        note = note.replace(where + os.sep, run.name + "/").replace(where, run.name)
    return note


def _training(settings: dict[str, Any], splits: list[SplitFolder]) -> list[tuple[str, str]]:
    """How the splits were trained: a fine-tuning's epochs, a head's fit on frozen embeddings (no epochs: a
    linear probe's L-BFGS, a k-NN's neighbours)."""
    method = settings.get("method", "finetune")
    if method == "linear-probe":
        return [("training", f"a linear head fitted by L-BFGS on frozen embeddings, seed {settings.get('seed', '?')}")]
    if method == "knn":
        return [("training", f"{settings.get('neighbours', '?')} nearest neighbours (cosine) on frozen embeddings")]
    epochs = []
    for split in splits:
        metrics = _json(split.metrics, [], "") or {}
        if isinstance(metrics, dict):
            epochs.append(f"{split.name}: {metrics.get('epochs_run', '?')} run, best {metrics.get('best_epoch', '?')}")
    return [
        (
            "training",
            f"at most {settings.get('epochs', '?')} epochs (patience {settings.get('patience', '?')}), batch "
            f"{settings.get('batch_size', '?')}, learning rate {settings.get('learning_rate', '?')}, "
            f"seed {settings.get('seed', '?')}",
        ),
        ("epochs", "; ".join(epochs)),
    ]


def _histories(splits: list[SplitFolder]) -> dict[str, list[dict[str, float]]]:
    said = {}
    for split in splits:
        rows = _rows(split.history) or []
        history = []
        for row in rows:
            values = {k: _number(v) for k, v in row.items() if k}
            if values.get("epoch") is not None:
                history.append({k: v for k, v in values.items() if v is not None})
        if history:
            said[split.name] = history
    return said


def _cams(splits: list[SplitFolder], images: Images) -> dict[str, int]:
    """The run's Grad-CAM figures by the image they show: each figure's title (its JPEG comment, its PNG text)
    starts with the record ID, or the file's name, as ``eic train`` wrote it."""
    from PIL import Image

    found: dict[str, int] = {}
    for split in splits:
        if not split.gradcam.is_dir():
            continue
        for path in sorted(split.gradcam.iterdir()):
            if path.suffix.lower() not in (".jpg", ".png") or not_regular(path) is not None:
                continue
            try:
                with Image.open(path) as figure:
                    title = figure.info.get("comment") or figure.info.get("Title") or b""
            except (OSError, ValueError, Image.DecompressionBombError):
                continue
            text = title.decode("utf-8", "replace") if isinstance(title, bytes) else str(title)
            name = text.split(" · true ")[0].strip()
            index = images.add(path, FIGURE_BUDGET, wide=True)
            if name and index is not None:
                found.setdefault(name, index)
    return found


# ---------------------------------------------------------------------------------------------
# Calibration


def _calibrated(config: ReportConfig, task: Task, notes: list[str]) -> Calibrated | None:
    from ..modelling.calibration import out_of_fold, read_run_calibration

    run = RunFolder(config.run)
    if not run.calibration.is_file():
        notes.append("The run is not calibrated: `eic calibrate RUN` draws the reliability and precision curves.")
        return None
    try:
        calibration = read_run_calibration(config.run)
        oof = out_of_fold(config.run)
    except (CalibrationError, ModelError, OSError, ValueError, KeyError, TypeError) as exc:  # a damaged run
        notes.append(f"Calibration left out: {exc}")
        return None
    thresholds: dict[str, float | None] = {c.name: c.threshold for c in calibration.per_class}
    source = f"the run's calibration (precision target {calibration.precision_target:g})"
    if config.enrich is not None:
        chosen = _enrich_thresholds(config.enrich, run.model_id(), notes)
        if chosen:
            kept = [name for name in calibration.classes if name not in chosen]
            thresholds = {name: chosen.get(name, thresholds.get(name)) for name in calibration.classes}
            source = f"eic enrich's annotations ({config.enrich.name})"
            if kept:
                notes.append(
                    f"{config.enrich.name} holds no annotation of {', '.join(kept[:5])}"
                    f"{', ...' if len(kept) > 5 else ''}: the run's calibration marks those."
                )
    return Calibrated(
        bins={
            "as trained": _bins(task, oof.raw, oof.truth),
            "temperature-scaled": _bins(task, oof.calibrated, oof.truth),
        },
        curves={name: _curve(task, oof.calibrated, oof.truth, c) for c, name in enumerate(oof.classes)},
        thresholds=thresholds,
        source=source,
        target=calibration.precision_target,
        ece=(calibration.ece_before, calibration.ece_after),
    )


def _bins(task: Task, probs: np.ndarray, truth: np.ndarray, bins: int = 15) -> list[tuple[float, float, int]]:
    confidence, correct = task.confidence_and_correct(probs, truth)
    which = np.minimum((confidence * bins).astype(int), bins - 1)
    return [
        (float(confidence[which == b].mean()), float(correct[which == b].mean()), int((which == b).sum()))
        for b in range(bins)
        if (which == b).any()
    ]


def _curve(
    task: Task, probs: np.ndarray, truth: np.ndarray, c: int, points: int = 120
) -> list[tuple[float, float, float]]:
    """Precision and coverage of class ``c`` at each threshold, highest first (at most ``points`` of them)."""
    scores, right = task.candidates(probs, truth, c)
    support = int(task.support(truth, probs.shape[1])[c])
    if not len(scores) or not support:
        return []
    order = np.argsort(-scores, kind="stable")
    scores, hits = scores[order], np.cumsum(right[order])
    labelled = np.arange(1, len(scores) + 1)
    keep = np.unique(np.linspace(0, len(scores) - 1, min(points, len(scores))).astype(int))
    return [(float(scores[k]), float(hits[k] / labelled[k]), float(hits[k] / support)) for k in keep]


def _enrich_thresholds(path: Path, model_id: str, notes: list[str]) -> dict[str, float]:
    """Class -> the threshold eic enrich emitted it at, from its annotations of the run's model (``model_id``) (a
    .jsonld page or collection, or .jsonl); what is not an eic annotation, or is another model's, is passed over."""
    from ..europeana.annotations import MODEL, NS, model_of

    try:
        data = read_capped(path, 256 * 2**20, what="eic enrich's annotations", remedy="", error=ModelError)
    except ModelError as exc:
        notes.append(f"{exc}: enrich's thresholds left out.")
        return {}
    text = (data or b"").decode("utf-8", "replace")
    items: list[Any] = []
    try:
        whole = json.loads(text)  # a page (europeana), a collection with its first page (w3c), or one line
        page = whole.get("first", whole) if isinstance(whole, dict) else {}
        items = page.get("items", [page]) if isinstance(page, dict) else []
    except ValueError:
        for line in text.splitlines():
            try:
                items.append(json.loads(line))
            except ValueError:
                continue
    found: dict[str, float] = {}
    others: set[str] = set()
    for item in items if isinstance(items, list) else []:
        model = item.get(MODEL) if isinstance(item, dict) else None
        if not (isinstance(model, dict) and isinstance(model.get(NS + "class"), str)):
            continue
        if model_of(item) != model_id:
            others.add(str(model_of(item) or "no model"))
            continue
        threshold = _number(model.get(NS + "threshold"))
        if threshold is not None:
            found.setdefault(model[NS + "class"], threshold)
    if not found:
        whose = f" of this run's model ({model_id}): its annotations are of {', '.join(sorted(others)[:3])}"
        notes.append(
            f"{path}: no eic annotation with a threshold in it{whose if others else ''}; the run's calibration "
            "marks the curves."
        )
    return found


# ---------------------------------------------------------------------------------------------
# Audit


def _audited(folder: Path, top: int, notes: list[str]) -> Audited | None:
    issues = _rows(folder / "label_issues.csv")
    if issues is None:
        notes.append(f"{folder}: no label_issues.csv; point --audit at an eic audit folder.")
        return None
    groups: dict[str, list[dict[str, str]]] = {}
    for row in _rows(folder / "duplicates.csv") or []:
        groups.setdefault(row.get("group") or "", []).append(row)
    summary = _json(folder / "summary.json", [], "")
    return Audited(issues[:top], list(groups.values())[:top], summary if isinstance(summary, dict) else {})
