"""``eic evaluate``: score every split of a run on an evaluation image set.

Each split's best checkpoint scores the whole set with the preprocessing stored in the checkpoint.
Splits that share preprocessing share one pass over the images: each batch is decoded once and fed
to every model.
"""

from __future__ import annotations

import csv
import json
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from sklearn.metrics import precision_recall_fscore_support

from ..core.config import EvaluateConfig, public_dict
from ..core.errors import DatasetError
from ..core.naming import record_id_of
from ..core.tables import read_table, refuse_existing, write_json
from ..datasets.folders import ImageDataset, list_images, make_loader
from ..datasets.metrics import classification_metrics, confusion, mean_std
from ..datasets.multilabel import ML_METRICS, multilabel_metrics
from ..modelling.calibration import load_calibration, score_thresholds
from ..modelling.run_folder import RunFolder
from ..modelling.runtime import autocast_dtype, default_workers, resolve_device
from .inference import RunModel, load_run, logits_of


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


def evaluate_run(config: EvaluateConfig) -> EvaluateReport:
    refuse_existing(config.output_dir / "metrics.json", config.overwrite, f" (an evaluation in {config.output_dir})")
    device = resolve_device(config.device)
    models = load_run(config.run, device, "all")
    if models[0].multilabel:
        return _evaluate_multilabel(config, models, device)
    classes = models[0].classes
    images = models[0].task.scan(config.eval_dir, None, classes)
    unknown = _unknown_folders(config.eval_dir, classes)
    counts = images.counts()
    if not images.paths:
        raise DatasetError(f"{config.eval_dir}: no readable images in folders named after the model's classes "
                           f"({', '.join(classes)})")
    truth, probs, paths, broken, logits = _score_readable(models, images, config, device)
    per_split = {name: classification_metrics(truth, p) for name, p in probs.items()}
    summary = {metric: mean_std([m[metric] for m in per_split.values()]) for metric in next(iter(per_split.values()))}
    report = EvaluateReport(config.output_dir, classes, len(paths), list(probs), summary, unknown,
                            [c for c in classes if counts[c] == 0], broken)
    out = _write_summary(config, report)
    _write_per_class(out / "per_class.csv", truth, probs, classes)
    matrix = sum(confusion(truth, p.argmax(axis=1), len(classes)) for p in probs.values())
    _write_confusion(out, matrix, classes)
    _write_predictions(out / "predictions.csv", paths, truth, probs, classes)
    _gallery(out / "misclassified.png", paths, truth, probs, classes, config.gallery)
    report.calibration_check = _check_calibration(config, models, truth, logits, out)
    return report


def _check_calibration(config: EvaluateConfig, models: list[RunModel], truth: np.ndarray,
                       logits: dict[str, np.ndarray], out: Path) -> list[dict[str, Any]] | None:
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
    with (out / "calibration_check.csv").open("w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=columns)
        writer.writeheader()
        writer.writerows({k: ("" if row[k] is None else row[k]) for k in columns} for row in rows)
    return rows


def _evaluate_multilabel(config: EvaluateConfig, models: list[RunModel], device: Any) -> EvaluateReport:
    """Multi-label runs: EVAL_DIR is one folder with a labels table; each split uses its tuned thresholds."""
    classes = models[0].classes
    images = models[0].task.scan(config.eval_dir, config.labels, classes)
    table = read_table(config.labels or config.eval_dir / "labels.csv", required=("category",))
    seen = Counter(label for cell in table["category"].drop_nulls() for label in cell.split())
    unknown = {label: n for label, n in seen.items() if label not in classes}
    if not images.paths:
        raise DatasetError(f"{config.eval_dir}: no readable images labelled with the model's labels "
                           f"({', '.join(classes)})")
    truth, probs, paths, broken, logits = _score_readable(models, images, config, device)
    truth = truth.astype(int)
    thresholds = {m.split: m.thresholds(config.threshold) for m in models}
    per_split = {k: multilabel_metrics(truth, p, thresholds[k]) for k, p in probs.items()}
    summary = {metric: mean_std([m[metric] for m in per_split.values()]) for metric in ML_METRICS}
    report = EvaluateReport(config.output_dir, classes, len(paths), list(probs), summary, unknown,
                            [c for c, n in zip(classes, truth.sum(axis=0), strict=True) if n == 0], broken)
    out = _write_summary(config, report, thresholds={k: v.tolist() for k, v in thresholds.items()})
    _write_per_label(out / "per_label.csv", truth, probs, thresholds, classes)
    with (out / "predictions.csv").open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["image", "truth", "prediction", "probabilities", "split"])
        for split, p in probs.items():
            for image, t, row in zip(paths, truth, p, strict=True):
                writer.writerow([image, " ".join(c for c, v in zip(classes, t, strict=True) if v),
                                 " ".join(c for c, v, cut in zip(classes, row, thresholds[split], strict=True)
                                          if v >= cut),
                                 json.dumps({c: round(float(v), 6) for c, v in zip(classes, row, strict=True)}),
                                 split])
    report.calibration_check = _check_calibration(config, models, truth, logits, out)
    return report


def _score_readable(models: list[RunModel], images: Any, config: EvaluateConfig, device: Any
                    ) -> tuple[np.ndarray, dict[str, np.ndarray], list[str], list[str], dict[str, np.ndarray]]:
    """Truths, per-split probabilities and paths of the decodable images, the list of the others, and the
    per-split logits."""
    probs, unreadable, logits = _score(models, images, config, device)
    readable = np.ones(len(images), dtype=bool)
    readable[unreadable] = False
    paths = [str(p) for p, ok in zip(images.paths, readable, strict=True) if ok]
    broken = [str(p) for p in images.unreadable] + [str(images.paths[i]) for i in unreadable]
    return (images.labels[readable], {k: p[readable] for k, p in probs.items()}, paths, broken,
            {k: z[readable] for k, z in logits.items()})


def _write_summary(config: EvaluateConfig, report: EvaluateReport, **extra: Any) -> Path:
    """metrics.json, config.json and report.json; returns the output folder."""
    out = config.output_dir
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / "metrics.json", report.summary)
    write_json(out / "config.json", public_dict(config))
    write_json(out / "report.json", {"classes": report.classes, "images": report.images, "splits": report.splits,
                                     **extra, "unknown_classes": report.unknown_classes,
                                     "missing_classes": report.missing_classes, "unreadable": report.unreadable})
    return out


def _write_per_label(path: Path, truth: np.ndarray, probs: dict[str, np.ndarray], thresholds: dict[str, np.ndarray],
                     classes: list[str]) -> None:
    """Per label: support, precision/recall/F1 mean and std over splits, and TP/FP/FN summed over splits."""
    scores, counts = [], np.zeros((3, len(classes)), dtype=int)
    for split, p in probs.items():
        predicted = (p >= thresholds[split]).astype(int)
        precision, recall, f1, _ = precision_recall_fscore_support(truth, predicted, average=None, zero_division=0)
        scores.append((precision, recall, f1))
        counts += np.stack([(predicted & truth).sum(0), (predicted & (1 - truth)).sum(0),
                            ((1 - predicted) & truth).sum(0)])
    array = np.asarray(scores)
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["label", "support", "precision_mean", "precision_std", "recall_mean", "recall_std",
                         "f1_mean", "f1_std", "true_positives", "false_positives", "false_negatives"])
        for c, name in enumerate(classes):
            row: list[Any] = [name, int(truth[:, c].sum())]
            for m in range(3):
                values = array[:, m, c]
                row += [f"{values.mean():.6f}", f"{values.std(ddof=1) if len(values) > 1 else 0.0:.6f}"]
            writer.writerow([*row, *map(int, counts[:, c])])


def _unknown_folders(root: Path, classes: list[str]) -> dict[str, int]:
    return {d.name: len(list_images(d)) for d in sorted(root.iterdir())
            if d.is_dir() and not d.name.startswith(".") and d.name not in classes}


def _score(models: list[RunModel], images: Any, config: EvaluateConfig, device: Any
           ) -> tuple[dict[str, np.ndarray], list[int], dict[str, np.ndarray]]:
    """Probabilities of every split model for every image, the indices that could not be decoded, and the
    logits (exact, for checking the calibration)."""
    groups: dict[tuple, list[RunModel]] = defaultdict(list)
    for item in models:
        groups[item.preprocessing].append(item)
    dtype = autocast_dtype(device, config.amp)
    probs = {item.split: np.zeros((len(images), len(item.classes)), dtype=np.float32) for item in models}
    logits = {item.split: np.zeros((len(images), len(item.classes)), dtype=np.float32) for item in models}
    unreadable: set[int] = set()
    for (size, _, _), members in groups.items():
        loader = make_loader(ImageDataset(images, size), batch_size=config.batch_size, shuffle=False,
                             num_workers=default_workers(device, config.num_workers), seed=0,
                             pin_memory=device.type == "cuda")
        for inputs, labels, index in loader:
            out = logits_of(members, inputs, device, dtype)
            for item, z in zip(members, out, strict=True):
                probs[item.split][index.numpy()] = item.task.from_logits(z)
                logits[item.split][index.numpy()] = z
            broken = ~images.task.readable(labels)
            unreadable.update(index[broken].tolist())
    return probs, sorted(unreadable), logits


def _write_per_class(path: Path, truth: np.ndarray, probs: dict[str, np.ndarray], classes: list[str]) -> None:
    scores = []
    for p in probs.values():
        precision, recall, f1, support = precision_recall_fscore_support(
            truth, p.argmax(axis=1), labels=np.arange(len(classes)), zero_division=0)
        scores.append((precision, recall, f1))
    array = np.asarray(scores)  # splits x 3 x classes
    support = np.bincount(truth, minlength=len(classes))
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["class", "support", "precision_mean", "precision_std", "recall_mean", "recall_std",
                         "f1_mean", "f1_std"])
        for c, name in enumerate(classes):
            row: list[Any] = [name, int(support[c])]
            for m in range(3):
                values = array[:, m, c]
                row += [f"{values.mean():.6f}", f"{values.std(ddof=1) if len(values) > 1 else 0.0:.6f}"]
            writer.writerow(row)


def _write_confusion(out: Path, matrix: np.ndarray, classes: list[str]) -> None:
    with (out / "confusion_matrix.csv").open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["truth \\ prediction", *classes])
        for name, row in zip(classes, matrix, strict=True):
            writer.writerow([name, *map(int, row)])
    from matplotlib.figure import Figure  # the object API: no global backend switch, nothing left open

    size = max(6.0, 0.45 * len(classes) + 3)
    figure = Figure(figsize=(2 * size, size))
    axes = figure.subplots(1, 2)
    with np.errstate(invalid="ignore", divide="ignore"):
        normalised = np.nan_to_num(matrix / matrix.sum(axis=1, keepdims=True))
    for ax, data, title, fmt in ((axes[0], matrix, "counts (summed over splits)", "d"),
                                 (axes[1], normalised, "normalised by true class", ".2f")):
        ax.imshow(data, cmap="Blues")
        ax.set(title=title, xlabel="prediction", ylabel="truth", xticks=range(len(classes)),
               yticks=range(len(classes)), xticklabels=classes, yticklabels=classes)
        ax.tick_params(axis="x", rotation=90)
        if len(classes) <= 25:
            peak = data.max() or 1
            for i in range(len(classes)):
                for j in range(len(classes)):
                    ax.text(j, i, format(data[i, j], fmt), ha="center", va="center", fontsize=7,
                            color="white" if data[i, j] > peak / 2 else "black")
    figure.tight_layout()
    figure.savefig(out / "confusion_matrix.png", dpi=100)


def _write_predictions(path: Path, paths: list[str], truth: np.ndarray, probs: dict[str, np.ndarray],
                       classes: list[str]) -> None:
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["image", "truth", "prediction", "confidence", "split"])
        for split, p in probs.items():
            for image, t, row in zip(paths, truth, p, strict=True):
                writer.writerow([image, classes[t], classes[int(row.argmax())], f"{row.max():.6f}", split])


def _gallery(path: Path, paths: list[str], truth: np.ndarray, probs: dict[str, np.ndarray], classes: list[str],
             count: int) -> None:
    """The most confident mistakes (over all splits, each image once)."""
    from PIL import Image

    from ..modelling.explain import image_grid

    worst: dict[int, tuple[float, int, str]] = {}
    for split, p in probs.items():
        for i in np.flatnonzero(p.argmax(axis=1) != truth):
            confidence = float(p[i].max())
            if confidence > worst.get(i, (-1.0, 0, ""))[0]:
                worst[i] = (confidence, int(p[i].argmax()), split)
    chosen = sorted(worst.items(), key=lambda kv: -kv[1][0])[:count]
    figure, axes = image_grid(len(chosen), cell=(3.0, 3.3))
    for ax, (i, (confidence, predicted, split)) in zip(axes.flat, chosen, strict=False):
        with Image.open(paths[i]) as image:
            image.draft("RGB", (256, 256))
            ax.imshow(image.convert("RGB"))
        name = Path(paths[i]).name
        ax.set_title(f"true {classes[truth[i]]}\npred {classes[predicted]} {confidence:.2f} ({split})", fontsize=8)
        ax.set_xlabel(f"{(record_id_of(name) or name)[-40:]}", fontsize=7)  # so a curator can look it up
        ax.axis("on")
        ax.set_xticks([])
        ax.set_yticks([])
    if not chosen:
        axes.flat[0].text(0.5, 0.5, "no mistakes", ha="center", va="center")
    figure.tight_layout()
    figure.savefig(path, dpi=90)
