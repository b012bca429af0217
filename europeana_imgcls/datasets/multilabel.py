"""What multi-label training needs beyond single-label: label tables, iterative stratification,
the loss's positive weights (the loss: ``losses``), per-class thresholds and the multi-label metrics."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ..core.errors import DatasetError
from ..core.naming import file_name
from ..core.tables import read_table
from .class_folders import keep_decodable
from .imageset import ImageSet, Split, Task

if TYPE_CHECKING:
    import torch

ML_METRICS = (
    "exact_match",
    "hamming_loss",
    "micro_precision",
    "micro_recall",
    "micro_f1",
    "macro_precision",
    "macro_recall",
    "macro_f1",
    "mean_average_precision",
    "coverage",
    "label_ranking_average_precision",
    "ranking_loss",
    "ndcg",
)


def scan_labelled_folder(
    root: Path, labels: Path | None, classes: Sequence[str] | None, task: Task, *, whole: bool = True
) -> ImageSet:
    """Images of ``root`` with their label rows from ``labels`` (default ``root/labels.csv``).

    The table needs ``category`` (space-separated labels) and ``file`` or ``ID`` (eic download's naming).
    With ``classes`` given (a model's), labels outside them are dropped.
    """
    table_path = labels or root / "labels.csv"
    if not root.is_dir():
        raise DatasetError(f"{root}: no such folder")
    table = read_table(table_path, required=("category",))
    if "file" not in table.columns and "ID" not in table.columns:
        raise DatasetError(f"{table_path}: needs a 'file' or an 'ID' column beside 'category'")
    rows, unreadable = keep_decodable(_labels_by_file(table, root), whole=whole)  # a missing file reads not
    names = [name for _, found in rows for name in found]
    all_classes = list(classes) if classes is not None else sorted(set(names))
    index = {name: i for i, name in enumerate(all_classes)}
    targets = np.zeros((len(rows), len(all_classes)), dtype=np.float32)
    for r, (_, found) in enumerate(rows):
        targets[r, [index[name] for name in found if name in index]] = 1.0
    return ImageSet([p for p, _ in rows], targets, all_classes, task, unreadable)


def _labels_by_file(table: Any, root: Path) -> list[tuple[Path, list[str]]]:
    """Each file the table names with its labels. A file in several rows is one image with the union of their
    labels: as several, it could be in a test fold and in training at once, and counted twice in a score."""
    labelled: dict[Path, list[str]] = {}
    for row in table.iter_rows(named=True):
        name = row.get("file") or (file_name(row["ID"]) if row.get("ID") else None)
        found = (row.get("category") or "").split()
        if name and found:
            known = labelled.setdefault(root / name, [])
            known += [label for label in found if label not in known]
    return list(labelled.items())


def check_multilabel_trainable(images: ImageSet, root: Path, folds: int) -> None:
    if not images.paths:
        raise DatasetError(f"{root}: no readable labelled images (check labels.csv)")
    if len(images.classes) < 2:
        raise DatasetError(f"{root}: needs at least two labels (found: {', '.join(images.classes) or 'none'})")
    counts = images.labels.sum(axis=0)
    worst = int(counts.argmin())
    if counts[worst] < folds:
        raise DatasetError(
            f"label '{images.classes[worst]}' has {int(counts[worst])} images, fewer than the "
            f"{folds} folds; lower `folds` or add images"
        )


def iterative_folds(
    targets: np.ndarray, folds: int, seed: int, groups: Sequence[str] | None = None
) -> list[np.ndarray]:
    """Iterative stratification (Sechidis et al., 2011): k folds that keep each label's frequency.

    Rarest labels are placed first, each unit into the fold that most lacks that label. With ``groups``
    the units are whole groups (a provider's records never straddle folds).
    """
    rng = np.random.default_rng(seed)
    if groups is None:
        members = [np.array([i]) for i in range(len(targets))]
    else:
        keys = np.asarray(groups)
        members = [np.flatnonzero(keys == key) for key in dict.fromkeys(keys.tolist())]
    placing = _Placing.start(targets, members, folds)
    counts, wanted_labels, wanted_sizes = placing.counts, placing.wanted_labels, placing.wanted_sizes
    while placing.remaining:
        left = np.array(sorted(placing.remaining))
        per_label = (counts[left] > 0).sum(axis=0)
        if per_label.sum() == 0:  # only units without labels remain
            for unit in rng.permutation(left):
                placing.assign(unit, _pick(wanted_sizes, wanted_sizes, rng))
            break
        label = int(np.where(per_label > 0, per_label, np.iinfo(np.int64).max).argmin())
        for unit in rng.permutation(left[counts[left, label] > 0]):
            placing.assign(unit, _pick(wanted_labels[:, label], wanted_sizes, rng))
    return [
        np.sort(np.concatenate([members[u] for u in np.flatnonzero(placing.fold_of == f)] or [np.array([], int)]))
        for f in range(folds)
    ]


def make_multilabel_splits(
    targets: np.ndarray, folds: int, seed: int, groups: Sequence[str] | None = None
) -> list[Split]:
    """As ``folders.make_splits``, with iterative stratification so every part keeps each label's frequency."""
    outer = iterative_folds(targets, folds, seed, groups)
    splits = []
    for i, test in enumerate(outer):
        rest = np.sort(np.concatenate([f for j, f in enumerate(outer) if j != i]))
        inner = iterative_folds(targets[rest], folds - 1, seed + i, [groups[r] for r in rest] if groups else None)
        val = rest[inner[0]]
        splits.append(Split(np.setdiff1d(rest, val), np.sort(val), test))
    return splits


def _pick(primary: np.ndarray, secondary: np.ndarray, rng: np.random.Generator) -> int:
    best = np.flatnonzero(primary == primary.max())
    if len(best) > 1:
        best = best[secondary[best] == secondary[best].max()]
    return int(rng.choice(best))


@dataclass(frozen=True)
class _Placing:
    """Iterative stratification's tally, kept in place as units are placed: what each unit holds (images of
    every label, images), the fold each went to (-1: not yet), the units left, and what each fold still lacks."""

    counts: np.ndarray  # units x labels
    sizes: np.ndarray  # units
    fold_of: np.ndarray  # units
    remaining: set[int]
    wanted_labels: np.ndarray  # folds x labels
    wanted_sizes: np.ndarray  # folds

    @classmethod
    def start(cls, targets: np.ndarray, members: list[np.ndarray], folds: int) -> _Placing:
        return cls(
            counts=np.stack([targets[m].sum(axis=0) for m in members]),
            sizes=np.array([len(m) for m in members], dtype=float),
            fold_of=np.full(len(members), -1),
            remaining=set(range(len(members))),
            wanted_labels=np.tile(targets.sum(axis=0) / folds, (folds, 1)),
            wanted_sizes=np.full(folds, len(targets) / folds),
        )

    def assign(self, unit: int, fold: int) -> None:
        self.fold_of[unit] = fold
        self.remaining.discard(int(unit))
        self.wanted_labels[fold] -= self.counts[unit]
        self.wanted_sizes[fold] -= self.sizes[unit]


def positive_weights(targets: np.ndarray) -> torch.Tensor:
    """Negatives / positives per label: rare labels weigh more (for the loss: a tensor)."""
    import torch  # where the loss is made: scanning, folds and scores never load torch

    positives = targets.sum(axis=0)
    negatives = len(targets) - positives
    return torch.tensor(np.where(positives > 0, negatives / np.maximum(positives, 1), 1.0), dtype=torch.float32)


def tune_thresholds(truth: np.ndarray, probs: np.ndarray, default: float = 0.5) -> np.ndarray:
    """Per label, the probability cut that maximises F1 on (validation) data; ``default`` without positives."""
    thresholds = np.full(truth.shape[1], default, dtype=np.float64)
    grid = np.round(np.arange(0.05, 0.951, 0.025), 3)
    for label in range(truth.shape[1]):
        actual = truth[:, label] != 0
        if not actual.any():
            continue
        # F1 at every cut at once, as scikit-learn's f1_score computes it (2 TP / (positives + predicted), in
        # float64), not one f1_score call a cut: 37 calls a label cost half a second a tuning, once per split.
        predicted = probs[:, label][:, None] >= grid
        scores = 2.0 * (predicted & actual[:, None]).sum(axis=0) / (actual.sum() + predicted.sum(axis=0))
        thresholds[label] = float(grid[int(np.argmax(scores))])
    return thresholds


def multilabel_metrics(truth: np.ndarray, probs: np.ndarray, thresholds: np.ndarray | float = 0.5) -> dict[str, float]:
    # Imported where scores are computed: predict and enrich hold a task (this module) and never score.
    from sklearn.metrics import (
        average_precision_score,
        coverage_error,
        f1_score,
        hamming_loss,
        label_ranking_average_precision_score,
        label_ranking_loss,
        ndcg_score,
        precision_score,
        recall_score,
    )

    truth = truth.astype(int)
    predicted = (probs >= np.asarray(thresholds)).astype(int)
    present = truth.sum(axis=0) > 0
    has_labels = truth.sum(axis=1) > 0

    def safe(fn, *args, **kwargs) -> float:  # ranking metrics need rows with at least one label
        try:
            return float(fn(*args, **kwargs))
        except ValueError:
            return float("nan")

    return {
        "exact_match": float((predicted == truth).all(axis=1).mean()),
        "hamming_loss": float(hamming_loss(truth, predicted)),
        "micro_precision": float(precision_score(truth, predicted, average="micro", zero_division=0)),
        "micro_recall": float(recall_score(truth, predicted, average="micro", zero_division=0)),
        "micro_f1": float(f1_score(truth, predicted, average="micro", zero_division=0)),
        "macro_precision": float(precision_score(truth, predicted, average="macro", zero_division=0)),
        "macro_recall": float(recall_score(truth, predicted, average="macro", zero_division=0)),
        "macro_f1": float(f1_score(truth, predicted, average="macro", zero_division=0)),
        "mean_average_precision": safe(average_precision_score, truth[:, present], probs[:, present], average="macro"),
        "coverage": safe(coverage_error, truth[has_labels], probs[has_labels]),
        "label_ranking_average_precision": safe(
            label_ranking_average_precision_score, truth[has_labels], probs[has_labels]
        ),
        "ranking_loss": safe(label_ranking_loss, truth[has_labels], probs[has_labels]),
        "ndcg": safe(ndcg_score, truth[has_labels], probs[has_labels]),
    }
