"""``eic evaluate``: score every split of a run on an evaluation image set.

Each split's best checkpoint scores the whole set with the preprocessing stored in the checkpoint.
Splits that share preprocessing share one pass over the images: each batch is decoded once and fed
to every model.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ..core.config import EvaluateConfig, public_dict
from ..core.errors import DatasetError
from ..core.naming import record_id_of
from ..core.outputs import OutputKind, build_folder, refuse_inside
from ..core.progress import progress_bar
from ..core.recognise import is_run, what_is
from ..core.tables import write_csv, write_json
from ..datasets.folders import load_image
from ..datasets.imageset import Task
from ..datasets.metrics import mean_std, per_class_scores
from ..modelling import charts
from ..modelling.calibration import load_calibration, score_thresholds
from ..modelling.modelcard import write_model_card
from ..modelling.run_folder import DATA_DIR_RESOLVED, RunFolder, SplitFolder
from ..modelling.runtime import inference_loader, resolve_device
from .inference import Ensemble, ModelRequest, SplitModel
from .runtimes import load_models

log = logging.getLogger(__name__)

if TYPE_CHECKING:
    from matplotlib.figure import Figure

EVALUATION = OutputKind(
    "evaluation",
    "an evaluation",
    folder=True,
    legacy=(
        "config.json",
        "metrics.json",
        "report.json",
        "predictions.csv",
        "misclassified.png",
        "calibration_check.csv",
        "confusion_matrix.csv",
        "confusion_matrix.png",
        "per_class.csv",
        "per_label.csv",
    ),
    legacy_sign=lambda settings: isinstance(settings, dict) and {"run", "eval_dir", "output_dir"} <= settings.keys(),
)


@dataclass
class EvaluateReport:
    output_dir: Path
    classes: list[str]
    images: int
    splits: list[str]
    summary: dict[str, dict[str, Any]] = field(default_factory=dict)
    unknown_classes: dict[str, int] = field(default_factory=dict)  # eval folders the model does not know
    missing_classes: list[str] = field(default_factory=list)  # model classes without eval images
    unreadable: list[str] = field(default_factory=list)
    # Per class: precision and coverage on this set at the run's calibrated thresholds (None: not calibrated).
    calibration_check: list[dict[str, Any]] | None = None


@dataclass(frozen=True)
class _Scores:
    """What the evaluation's files are written from: the readable images (their paths and truth), and each split's
    probabilities and decision thresholds."""

    task: Task
    classes: list[str]
    paths: list[str]
    truth: np.ndarray
    probs: dict[str, np.ndarray]
    thresholds: dict[str, np.ndarray | None]


def _say_if_trained_on(paths: list[Path], run: RunFolder) -> None:
    """An evaluation set that holds the run's own training images (its data folder, as the run recorded where it
    was, or a part of it) scores what the model learnt from, not unseen images: said, with how many."""
    splits = [SplitFolder(run.path, 0)] if run.is_split else run.finished_splits()  # a split folder: its own
    data_dir = splits[0].read_config().get(DATA_DIR_RESOLVED) if splits and splits[0].config.is_file() else None
    if not isinstance(data_dir, str) or not data_dir:  # a run from before eic recorded it
        return
    trained = Path(data_dir).resolve()
    seen = sum(path.resolve().is_relative_to(trained) for path in paths)
    if seen:
        log.warning(
            "%d of the %d evaluation images are the run's own training images (in %s): their scores are of images it "
            "learnt from, not unseen ones; evaluate on images kept out of training (eic subtract)",
            seen,
            len(paths),
            trained,
        )


def evaluate_run(config: EvaluateConfig) -> EvaluateReport:
    if is_run(config.eval_dir) and not is_run(config.run):
        raise DatasetError(
            f"{config.run} is {what_is(config.run) or 'not a training run'} and {config.eval_dir} is a training run: "
            "the run comes first, then the evaluation images"
        )
    refuse_inside(config.output_dir, config.eval_dir, option="output_dir")
    # Built beside its place and put there whole: an evaluation refused or stopped halfway leaves the last one.
    with build_folder(config.output_dir, EVALUATION, overwrite=config.overwrite, option="output_dir") as out:
        report, scores = _evaluate(config, out)
    _record_in_run(config, report, scores)
    return report


def _evaluate(config: EvaluateConfig, out: Path) -> tuple[EvaluateReport, _Scores]:
    """Score the run on the evaluation images and write the evaluation's files into ``out``."""
    device = resolve_device(config.device)
    # Every split model of the run, as trained: its checkpoints in PyTorch.
    models = load_models("torch", ModelRequest(config.run, device, "all", config.amp))
    task, classes = models[0].task, models[0].classes
    images = task.scan(config.eval_dir, config.labels, classes)
    if not images.paths:
        known = ", ".join(classes)
        raise DatasetError(f"{config.eval_dir}: no readable image of any {task.unit} of the model ({known})")
    _say_if_trained_on(images.paths, RunFolder(config.run))
    truth, probs, paths, broken, logits = _score_readable(models, images, config, device)
    # Each split decides with its own tuned thresholds (where its task tunes them), or with `threshold` for all.
    thresholds = {m.split: m.thresholds(config.threshold) for m in models}
    per_split = {k: task.metrics(truth, p, thresholds[k]) for k, p in probs.items()}
    summary = {metric: mean_std([m[metric] for m in per_split.values()]) for metric in next(iter(per_split.values()))}
    support = task.support(truth, len(classes))
    report = EvaluateReport(
        config.output_dir,
        classes,
        len(paths),
        list(probs),
        summary,
        task.unknown_classes(config.eval_dir, config.labels, classes),
        [c for c, n in zip(classes, support, strict=True) if n == 0],
        broken,
    )
    tuned = {k: v.tolist() for k, v in thresholds.items() if v is not None}
    _write_summary(config, report, out, **({"thresholds": tuned} if tuned else {}))
    scores = _Scores(task, classes, paths, truth, probs, thresholds)
    _write_per_class(out / f"per_{task.unit}.csv", scores)
    matrices = [task.confusion(truth, p) for p in probs.values()]
    if all(m is not None for m in matrices):  # one class an image: who is taken for whom
        _write_confusion(out, sum(matrices), classes, config.figures)  # type: ignore[arg-type]
    _write_predictions(out / "predictions.csv", scores)
    if config.figures:
        _gallery(out / "misclassified.png", scores, config.gallery)
    report.calibration_check = _check_calibration(config, models, truth, logits, out)
    return report, scores


def _record_in_run(config: EvaluateConfig, report: EvaluateReport, scores: _Scores) -> None:
    """The run keeps its latest evaluation (``RUN/evaluation.json``) and its model card reports it; a split folder
    evaluated alone is not the run."""
    folder = RunFolder(config.run)
    if folder.is_split:
        return
    metric = scores.task.shown[0]
    write_json(
        folder.evaluation,
        {
            "eval_dir": str(config.eval_dir.resolve()),
            "images": report.images,
            "date": datetime.now(UTC).strftime("%Y-%m-%d"),
            "summary": {k: {"mean": v["mean"], "std": v["std"]} for k, v in report.summary.items()},
            "calibration_check": report.calibration_check,
            "provider_metric": metric,
            "per_provider": _per_provider(scores, metric),
        },
    )
    write_model_card(config.run)


def _per_provider(scores: _Scores, metric: str) -> dict[str, dict[str, Any]]:
    """``metric`` per data provider (the dataset of the record a file is named after), mean over the splits;
    empty when the files do not name their records."""
    providers = np.array([(record_id_of(Path(p).name) or "//").split("/")[1] for p in scores.paths])
    said = {}
    for provider in sorted(set(providers) - {""}):
        mask = providers == provider
        values = [
            scores.task.metrics(scores.truth[mask], p[mask], scores.thresholds[k])[metric]
            for k, p in scores.probs.items()
        ]
        said[str(provider)] = {"images": int(mask.sum()), "score": float(np.mean(values))}
    return said


def _check_calibration(
    config: EvaluateConfig, models: Sequence[SplitModel], truth: np.ndarray, logits: dict[str, np.ndarray], out: Path
) -> list[dict[str, Any]] | None:
    """Does the precision the calibration promised hold on images the run never saw? Each split's model,
    temperature-scaled, labels the set at the run's thresholds; the labels of all splits are pooled."""
    if not RunFolder(config.run).calibration.is_file():
        return None
    calibration = load_calibration(config.run)
    task, temperatures = models[0].task, {m.split: m.temperature for m in models}
    scaled = np.concatenate([task.from_logits(z / temperatures[split]) for split, z in logits.items()])
    pooled_truth = np.concatenate([truth] * len(logits))
    rows = score_thresholds(task, scaled, pooled_truth, calibration.classes, calibration.thresholds())
    for row, promised in zip(rows, calibration.per_class, strict=True):
        row["out_of_fold_precision"] = promised.precision
    columns = ["class", "threshold", "out_of_fold_precision", "precision", "coverage", "labelled", "support"]
    write_csv(out / "calibration_check.csv", columns, rows)
    return rows


def _score_readable(
    models: Ensemble, images: Any, config: EvaluateConfig, device: Any
) -> tuple[np.ndarray, dict[str, np.ndarray], list[str], list[str], dict[str, np.ndarray]]:
    """Truths, per-split probabilities and paths of the decodable images, the list of the others, and the
    per-split logits."""
    probs, unreadable, logits = _score(models, images, config, device)
    readable = np.ones(len(images), dtype=bool)
    readable[unreadable] = False
    paths = [str(p) for p, ok in zip(images.paths, readable, strict=True) if ok]
    broken = [str(p) for p in images.unreadable] + [str(images.paths[i]) for i in unreadable]
    return (
        images.labels[readable],
        {k: p[readable] for k, p in probs.items()},
        paths,
        broken,
        {k: z[readable] for k, z in logits.items()},
    )


def _write_summary(config: EvaluateConfig, report: EvaluateReport, out: Path, **extra: Any) -> None:
    """metrics.json, config.json and report.json."""
    write_json(out / "metrics.json", report.summary)
    write_json(out / "config.json", public_dict(config))
    write_json(
        out / "report.json",
        {
            "classes": report.classes,
            "images": report.images,
            "splits": report.splits,
            **extra,
            "unknown_classes": report.unknown_classes,
            "missing_classes": report.missing_classes,
            "unreadable": report.unreadable,
        },
    )


def _write_per_class(path: Path, said: _Scores) -> None:
    """Per class (per label): support, precision/recall/F1 mean and std over splits, and TP/FP/FN summed over
    splits; each class one-vs-rest, with the decisions the run makes."""
    task, classes = said.task, said.classes
    actual = task.indicator(said.truth, len(classes))
    scores, counts = [], np.zeros((3, len(classes)), dtype=int)
    for split, p in said.probs.items():
        decided = task.decisions(p, said.thresholds[split])
        precision, recall, f1 = per_class_scores(actual, decided)
        scores.append((precision, recall, f1))
        counts += np.stack([(decided & actual).sum(0), (decided & ~actual).sum(0), (~decided & actual).sum(0)])
    array = np.asarray(scores)  # splits x 3 x classes
    columns = [task.unit, "support"]
    columns += [f"{m}_{s}" for m in ("precision", "recall", "f1") for s in ("mean", "std")]
    columns += ["true_positives", "false_positives", "false_negatives"]
    rows = []
    for c, name in enumerate(classes):
        row: list[Any] = [name, int(actual[:, c].sum())]
        for m in range(3):
            values = array[:, m, c]
            row += [f"{values.mean():.6f}", f"{values.std(ddof=1) if len(values) > 1 else 0.0:.6f}"]
        rows.append([*row, *map(int, counts[:, c])])
    write_csv(path, columns, rows)


def _score(
    models: Ensemble, images: Any, config: EvaluateConfig, device: Any
) -> tuple[dict[str, np.ndarray], list[int], dict[str, np.ndarray]]:
    """Probabilities of every split model for every image, the indices that could not be decoded, and the
    logits (exact, for checking the calibration)."""
    groups = models.by_preprocessing()
    probs = {item.split: np.zeros((len(images), len(item.classes)), dtype=np.float32) for item in models}
    logits = {item.split: np.zeros((len(images), len(item.classes)), dtype=np.float32) for item in models}
    unreadable: set[int] = set()
    with progress_bar(config.quiet, transient=True) as bar:
        task = bar.add_task(f"score {len(models)} split model(s)", total=len(images) * len(groups))
        for group in groups:
            size = group[0].preprocessing[0]
            for inputs, labels, index in inference_loader(images, size, device, config, decode=group.decodes_on_device):
                for item, z in zip(group, group.logits(inputs), strict=True):
                    probs[item.split][index.numpy()] = item.task.from_logits(z)
                    logits[item.split][index.numpy()] = z
                broken = ~images.task.readable(labels)
                unreadable.update(index[broken].tolist())
                bar.update(task, advance=len(index))
    return probs, sorted(unreadable), logits


def _write_confusion(out: Path, matrix: np.ndarray, classes: list[str], figure: bool) -> None:
    write_csv(
        out / "confusion_matrix.csv",
        ["truth \\ prediction", *classes],
        ([name, *map(int, row)] for name, row in zip(classes, matrix, strict=True)),
    )
    if figure:
        charts.save(confusion_figure(matrix, classes), out / "confusion_matrix.png")


def confusion_figure(matrix: np.ndarray, classes: list[str]) -> Figure:
    """The confusion matrix drawn twice, counts and normalised by true class, every label and title whole."""
    from matplotlib.figure import Figure  # the object API: no global backend switch, nothing left open

    size = max(6.0, 0.45 * len(classes) + 3)
    # Each square matrix is as wide as its half of the figure less the class names on its left; as tall, it needs
    # those names again below it (upright) and a title and an axis label beside: an inch more than its half is
    # wide. A figure only as tall as that half was wide pushed "prediction" under the image's edge.
    figure = Figure(figsize=(2 * size, size + 1))
    axes = figure.subplots(1, 2)
    with np.errstate(invalid="ignore", divide="ignore"):
        normalised = np.nan_to_num(matrix / matrix.sum(axis=1, keepdims=True))
    for ax, data, title, fmt in (
        (axes[0], matrix, "counts (summed over splits)", "d"),
        (axes[1], normalised, "normalised by true class", ".2f"),
    ):
        ax.imshow(data, cmap="Blues")
        ax.set(
            title=title,
            xlabel="prediction",
            ylabel="truth",
            xticks=range(len(classes)),
            yticks=range(len(classes)),
            xticklabels=classes,
            yticklabels=classes,
        )
        ax.tick_params(axis="x", rotation=90)
        if len(classes) <= 25:
            peak = data.max() or 1
            for i in range(len(classes)):
                for j in range(len(classes)):
                    ax.text(
                        j,
                        i,
                        format(data[i, j], fmt),
                        ha="center",
                        va="center",
                        fontsize=7,
                        color="white" if data[i, j] > peak / 2 else "black",
                        in_layout=False,  # inside its cell: tight_layout need not measure n² texts
                    )
    figure.tight_layout()
    return figure


def _write_predictions(path: Path, scores: _Scores) -> None:
    task, classes, thresholds = scores.task, scores.classes, scores.thresholds
    write_csv(
        path,
        ["image", *task.described, "probabilities", "split"],
        (
            {
                "image": os.path.abspath(image),  # the report reads it from wherever it runs
                **task.describe(t, row, classes, thresholds[split]),
                "split": split,
                "probabilities": json.dumps({c: round(float(v), 6) for c, v in zip(classes, row, strict=True)}),
            }
            for split, p in scores.probs.items()
            for image, t, row in zip(scores.paths, scores.truth, p, strict=True)
        ),
    )


def _gallery(path: Path, scores: _Scores, count: int) -> None:
    """The most confident mistakes (over all splits, each image once): the images whose decided classes are not
    their true ones, by the top probability."""
    from ..modelling.charts import Cell, sheet
    from ..modelling.explain import wrapped

    task, classes, paths, truth, thresholds = scores.task, scores.classes, scores.paths, scores.truth, scores.thresholds
    actual = task.indicator(truth, len(classes))
    worst: dict[int, tuple[float, str, str]] = {}
    for split, p in scores.probs.items():
        wrong = (task.decisions(p, thresholds[split]) != actual).any(axis=1)
        for i in np.flatnonzero(wrong).tolist():  # Python ints: the keys of ``worst``
            confidence = float(p[i].max())
            if confidence > worst.get(i, (-1.0, "", ""))[0]:
                worst[i] = (confidence, task.describe(truth[i], p[i], classes, thresholds[split])["prediction"], split)
    chosen = sorted(worst.items(), key=lambda kv: -kv[1][0])[:count]
    cells = []
    for i, (confidence, predicted, split) in chosen:
        name = Path(paths[i]).name
        said = task.truth_text(truth[i], classes) or "none"
        title = f"true {said}\npred {predicted or 'none'} {confidence:.2f} ({split})"
        image = load_image(Path(paths[i]), 256, keep_aspect=True)
        cells.append(Cell(image, title, wrapped(record_id_of(name) or name, 44)))  # whole, so a curator can look it up
    sheet(cells, path, empty="no mistakes")
