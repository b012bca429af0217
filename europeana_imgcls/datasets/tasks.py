"""The two tasks, single-label and multi-label, behind the ``Task`` interface (``imageset.py``), decided once.

A run is one task or the other for its whole life; code that reads labels, makes folds, trains, scores,
calibrates, decides, exports, audits or asks people asks the task rather than branching on the mode itself.
Each task is written in two parts, as the interface is: its decisions (single-label: softmax over classes, one
class per image, the most probable; multi-label: a sigmoid per label, every label at or above its threshold) and
its labelling (single-label: class folders; multi-label: one folder and a labels table).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import numpy as np

from ..core.config import Mode
from ..core.tables import read_table
from .class_folders import check_trainable, list_images, make_splits, scan_class_folders
from .imageset import EPS, UNREADABLE, ImageSet, Split, Task
from .metrics import classification_metrics, confusion
from .multilabel import (
    check_multilabel_trainable,
    make_multilabel_splits,
    multilabel_metrics,
    positive_weights,
    scan_labelled_folder,
    tune_thresholds,
)

if TYPE_CHECKING:
    import torch
    from torch import nn


class SingleLabel(Task):
    name = "single-label"
    multilabel = False
    unit = "class"
    prediction_columns = ("image", "prediction", "confidence", "top_k", "ID", "URI")
    shown = ("accuracy", "precision", "recall", "f1")
    described = ("truth", "prediction", "confidence")
    headline = "accuracy"
    one_class_each = True
    activation_name = "softmax"
    review_choice = "single"

    # -- decisions: one class an image, the most probable

    def from_logits(self, logits: np.ndarray) -> np.ndarray:
        z = np.asarray(logits, dtype=np.float64)
        z = z - z.max(axis=1, keepdims=True)
        e = np.exp(z)
        return e / e.sum(axis=1, keepdims=True)

    def activation(self, logits: torch.Tensor) -> torch.Tensor:
        import torch  # where a graph is built (export): labelling with numpy never loads it

        return torch.softmax(logits, dim=1)

    def nll(self, probs: np.ndarray, truth: np.ndarray) -> float:
        return float(-np.log(np.clip(probs[np.arange(len(truth)), truth], EPS, 1.0)).mean())

    def confidence_and_correct(self, probs: np.ndarray, truth: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return probs.max(axis=1), probs.argmax(axis=1) == truth

    def candidates(self, probs: np.ndarray, truth: np.ndarray, c: int) -> tuple[np.ndarray, np.ndarray]:
        chosen = probs.argmax(axis=1) == c
        return probs[chosen, c], truth[chosen] == c

    def metrics(self, truth: np.ndarray, probs: np.ndarray, thresholds: np.ndarray | None = None) -> dict[str, float]:
        return classification_metrics(truth, probs)

    def support(self, truth: np.ndarray, n_classes: int) -> np.ndarray:
        return np.bincount(truth, minlength=n_classes)

    def indicator(self, truth: np.ndarray, n_classes: int) -> np.ndarray:
        return np.eye(n_classes, dtype=bool)[np.asarray(truth, dtype=int)]

    def confusion(self, truth: np.ndarray, probs: np.ndarray) -> np.ndarray | None:
        return confusion(truth, probs.argmax(axis=1), probs.shape[1])

    def label_issues(self, truth: np.ndarray, probs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        from cleanlab.filter import find_label_issues
        from cleanlab.rank import get_label_quality_scores

        # cleanlab wants rows that sum to 1; an ensemble's mean (or a rounded table) may be a hair off.
        probs = probs / np.clip(probs.sum(axis=1, keepdims=True), 1e-12, None)
        ranked = find_label_issues(truth, probs, return_indices_ranked_by="self_confidence", n_jobs=1)
        return np.asarray(ranked, dtype=int), np.asarray(get_label_quality_scores(truth, probs), dtype=float)

    def tune(self, truth: np.ndarray, probs: np.ndarray) -> np.ndarray | None:
        return None

    def decision_thresholds(
        self, tuned: list[float] | None, override: float | None, n_classes: int
    ) -> np.ndarray | None:
        return None

    def decisions(self, probs: np.ndarray, thresholds: np.ndarray | None) -> np.ndarray:
        return np.eye(probs.shape[1], dtype=bool)[probs.argmax(axis=1)]

    def emitted_each(self, probs: np.ndarray, thresholds: np.ndarray) -> np.ndarray:
        top = self.decisions(probs, None)
        return top & (probs >= thresholds)

    def suggested(self, probs: np.ndarray) -> list[int]:
        return [int(probs.argmax())]

    def describe(
        self, truth: Any, probs: np.ndarray, classes: list[str], thresholds: np.ndarray | None
    ) -> dict[str, str]:
        return {
            "truth": self.truth_text(truth, classes),
            "prediction": classes[int(probs.argmax())],
            "confidence": f"{probs.max():.6f}",
        }

    def classes_in(self, cell: str) -> list[str]:
        return [cell]

    def truth_of(self, text: str, classes: list[str]) -> int:
        return classes.index(text)

    def truth_names(self, truth: Any, classes: list[str]) -> list[str]:
        return [classes[int(truth)]]

    # -- labelling: class folders, a class index an image

    def scan(
        self, root: Path, labels: Path | None = None, classes: Sequence[str] | None = None, *, whole: bool = True
    ) -> ImageSet:
        return scan_class_folders(root, classes, self, whole=whole)

    def unknown_classes(self, root: Path, labels: Path | None, classes: Sequence[str]) -> dict[str, int]:
        return {
            d.name: len(list_images(d))
            for d in sorted(root.iterdir())
            if d.is_dir() and not d.name.startswith(".") and d.name not in classes
        }

    def check_trainable(self, images: ImageSet, root: Path, folds: int) -> None:
        check_trainable(images, root, folds)

    def splits(self, labels: np.ndarray, folds: int, seed: int, groups: Sequence[str] | None = None) -> list[Split]:
        return make_splits(labels, folds, seed, groups)

    def stratify(self, labels: np.ndarray) -> np.ndarray | None:
        return labels

    def members(self, labels: np.ndarray, c: int) -> np.ndarray:
        return labels == c

    def readable(self, targets: Any) -> Any:
        return targets != UNREADABLE

    def criterion(self, train_labels: np.ndarray, n_classes: int, weighted: bool) -> nn.Module:
        import torch  # training's: the decisions and the labelling above compute in numpy
        from torch import nn

        n = n_classes
        # Inverse class frequency, scaled so that a balanced set gets weight 1 everywhere: N / (C * n_c).
        counts = np.bincount(train_labels, minlength=n).astype(np.float64)
        weights = np.where(counts > 0, len(train_labels) / (n * np.maximum(counts, 1)), 0.0)
        return nn.CrossEntropyLoss(
            weight=torch.tensor(weights, dtype=torch.float32) if weighted else None, ignore_index=UNREADABLE
        )


class MultiLabel(Task):
    name = "multi-label"
    multilabel = True
    unit = "label"
    prediction_columns = ("image", "labels", "prediction", "confidence", "top_k", "probabilities", "ID", "URI")
    shown = ("exact_match", "micro_f1", "macro_f1", "mean_average_precision")
    described = ("truth", "prediction")
    headline = "micro_f1"
    one_class_each = False
    activation_name = "sigmoid per label"
    review_choice = "multiple"

    # -- decisions: every label at or above its threshold

    def from_logits(self, logits: np.ndarray) -> np.ndarray:
        from scipy.special import expit  # a sigmoid that neither overflows nor warns (scipy: imported once, here)

        return expit(np.asarray(logits, dtype=np.float64))

    def activation(self, logits: torch.Tensor) -> torch.Tensor:
        import torch

        return torch.sigmoid(logits)

    def nll(self, probs: np.ndarray, truth: np.ndarray) -> float:
        p = np.clip(probs, EPS, 1 - EPS)
        return float(-(truth * np.log(p) + (1 - truth) * np.log(1 - p)).mean())

    def confidence_and_correct(self, probs: np.ndarray, truth: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        # Every (image, label) probability is a statement that the label applies.
        return probs.ravel(), truth.ravel().astype(bool)

    def candidates(self, probs: np.ndarray, truth: np.ndarray, c: int) -> tuple[np.ndarray, np.ndarray]:
        return probs[:, c], truth[:, c].astype(bool)

    def metrics(self, truth: np.ndarray, probs: np.ndarray, thresholds: np.ndarray | None = None) -> dict[str, float]:
        return multilabel_metrics(truth, probs, 0.5 if thresholds is None else thresholds)

    def support(self, truth: np.ndarray, n_classes: int) -> np.ndarray:
        return truth.sum(axis=0)

    def indicator(self, truth: np.ndarray, n_classes: int) -> np.ndarray:
        return np.asarray(truth) > 0

    def confusion(self, truth: np.ndarray, probs: np.ndarray) -> np.ndarray | None:
        return None  # several labels an image: no one answer to set against another

    def label_issues(self, truth: np.ndarray, probs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        from cleanlab.multilabel_classification.filter import find_label_issues
        from cleanlab.multilabel_classification.rank import get_label_quality_scores

        # A class on every image (a broad tag beside specific ones), or on none, has one answer: cleanlab's
        # one-versus-rest pass cannot judge it, so it is ranked on the others.
        truth = np.asarray(truth) > 0
        judged = truth.any(axis=0) & ~truth.all(axis=0)
        if not judged.any():
            return np.zeros(0, dtype=int), np.ones(len(truth), dtype=float)
        labels = [list(np.flatnonzero(row)) for row in truth[:, judged]]
        probs = np.asarray(probs)[:, judged]
        ranked = find_label_issues(labels, probs, return_indices_ranked_by="self_confidence", n_jobs=1)
        return np.asarray(ranked, dtype=int), np.asarray(get_label_quality_scores(labels, probs), dtype=float)

    def tune(self, truth: np.ndarray, probs: np.ndarray) -> np.ndarray | None:
        return tune_thresholds(truth, probs)

    def decision_thresholds(
        self, tuned: list[float] | None, override: float | None, n_classes: int
    ) -> np.ndarray | None:
        if override is not None:
            return np.full(n_classes, override)
        return np.asarray(tuned or [0.5] * n_classes)

    def decisions(self, probs: np.ndarray, thresholds: np.ndarray | None) -> np.ndarray:
        return probs >= (0.5 if thresholds is None else thresholds)

    def emitted_each(self, probs: np.ndarray, thresholds: np.ndarray) -> np.ndarray:
        return probs >= thresholds

    def suggested(self, probs: np.ndarray) -> list[int]:
        chosen = [int(c) for c in np.flatnonzero(probs >= 0.5)]
        return chosen or [int(probs.argmax())]

    def describe(
        self, truth: Any, probs: np.ndarray, classes: list[str], thresholds: np.ndarray | None
    ) -> dict[str, str]:
        cuts = np.full(len(classes), 0.5) if thresholds is None else thresholds
        return {
            "truth": self.truth_text(truth, classes),
            "prediction": " ".join(c for c, p, t in zip(classes, probs, cuts, strict=True) if p >= t),
        }

    def classes_in(self, cell: str) -> list[str]:
        return cell.split()

    def truth_of(self, text: str, classes: list[str]) -> np.ndarray:
        row = np.zeros(len(classes), dtype=np.int64)
        for name in self.classes_in(text):
            row[classes.index(name)] = 1
        return row

    def truth_names(self, truth: Any, classes: list[str]) -> list[str]:
        return [c for c, t in zip(classes, truth, strict=True) if t > 0]

    # -- labelling: one folder and a labels table, a 0/1 row an image

    def scan(
        self, root: Path, labels: Path | None = None, classes: Sequence[str] | None = None, *, whole: bool = True
    ) -> ImageSet:
        return scan_labelled_folder(root, labels, classes, self, whole=whole)

    def unknown_classes(self, root: Path, labels: Path | None, classes: Sequence[str]) -> dict[str, int]:
        table = read_table(labels or root / "labels.csv", required=("category",))
        seen = Counter(label for cell in table["category"].drop_nulls() for label in self.classes_in(cell))
        return {label: n for label, n in seen.items() if label not in classes}

    def check_trainable(self, images: ImageSet, root: Path, folds: int) -> None:
        check_multilabel_trainable(images, root, folds)

    def splits(self, labels: np.ndarray, folds: int, seed: int, groups: Sequence[str] | None = None) -> list[Split]:
        return make_multilabel_splits(labels, folds, seed, groups)

    def stratify(self, labels: np.ndarray) -> np.ndarray | None:
        return None  # no stratified sampler for label sets: a plain random fraction

    def members(self, labels: np.ndarray, c: int) -> np.ndarray:
        return labels[:, c] > 0

    def readable(self, targets: Any) -> Any:
        return targets[:, 0] >= 0

    def criterion(self, train_labels: np.ndarray, n_classes: int, weighted: bool) -> nn.Module:
        from .losses import MaskedBCEWithLogits

        # Class weights as positive weights: negatives / positives of each label in the training part.
        return MaskedBCEWithLogits(positive_weights(train_labels) if weighted else None)


TASKS: dict[Mode, Task] = {task.name: task for task in (SingleLabel(), MultiLabel())}


def task_for(mode: str | None) -> Task:
    """The task of a run's mode (runs written before modes existed are single-label): the one place a mode
    becomes a task."""
    return TASKS[cast(Mode, mode or SingleLabel.name)]


def task_read(mode: object) -> Task:
    """The task a mode read from a file names (a report reads a run as untrusted): a value that is no mode, or
    none, is single-label, as runs written before modes existed are."""
    return TASKS[mode] if isinstance(mode, str) and mode in TASKS else TASKS[SingleLabel.name]


def scan_images(data_dir: Path, mode: str, labels: Path | None = None) -> ImageSet:
    """The images of a training folder, as the mode's task reads them."""
    return task_for(mode).scan(data_dir, labels)


def unlabelled(paths: list[Path], classes: list[str]) -> ImageSet:
    """Images whose labels nobody knows (the inputs of eic predict), for a loader: every one read as class 0,
    which nothing downstream looks at."""
    return ImageSet(paths, np.zeros(len(paths), dtype=np.int64), classes, TASKS[SingleLabel.name])
