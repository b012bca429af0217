"""The shapes every dataset module shares: an image set, a cross-validation split, and the interface of a task
(single- or multi-label): its ``Decisions`` (what a model's outputs mean) and its ``Labelling`` (where the labels
come from and how training takes them).

A leaf: the modules that read folders (``folders``, ``multilabel``) and the tasks that dispatch to them
(``tasks``) all build on it, so none of them needs another's names to describe its own.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np

if TYPE_CHECKING:
    import torch
    from torch import nn

    from ..core.config import Mode

EPS = 1e-7  # probabilities are clipped this far from 0 and 1 before a log
UNREADABLE = -1  # the label (single) or every target (multi) of an image that cannot be decoded


class Decisions(ABC):
    """What a model's outputs mean under the task: the activation, the scores, the decisions, and how a truth
    reads as text. Pure: arrays in, arrays or text out; nothing here reads a folder or trains."""

    name: ClassVar[Mode]  # the run's mode, as checkpoints and sidecars name the task
    multilabel: ClassVar[bool]  # for what knows no Task (KnnHead's vote); code holding a task asks it instead
    unit: ClassVar[str]  # what the task's outputs call one of its classes: "class" or "label"
    prediction_columns: ClassVar[tuple[str, ...]]  # the columns of eic predict's output
    shown: ClassVar[tuple[str, ...]]  # the validation scores of each epoch (history.csv, the log)
    described: ClassVar[tuple[str, ...]]  # the columns ``describe()`` fills
    headline: ClassVar[str]  # the one score two versions of a model are compared by (export's int8 check)
    one_class_each: ClassVar[bool]  # one true and one predicted class an image: a confusion matrix shows its errors
    activation_name: ClassVar[str]  # how probabilities come from logits, in words (an export's sidecar)
    review_choice: ClassVar[str]  # Label Studio's ``choice``: a reviewer picks one class, or several

    # -- probabilities

    @abstractmethod
    def from_logits(self, logits: np.ndarray) -> np.ndarray:
        """The activation, in float64 numpy."""

    @abstractmethod
    def activation(self, logits: torch.Tensor) -> torch.Tensor:
        """The activation as a torch op, over dimension 1 (the export's graph): ``from_logits`` of a tensor."""

    @abstractmethod
    def nll(self, probs: np.ndarray, truth: np.ndarray) -> float:
        """Mean negative log-likelihood of ``truth`` under ``probs``."""

    @abstractmethod
    def confidence_and_correct(self, probs: np.ndarray, truth: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The stated probabilities that calibration checks, and whether each came true."""

    @abstractmethod
    def candidates(self, probs: np.ndarray, truth: np.ndarray, c: int) -> tuple[np.ndarray, np.ndarray]:
        """For class ``c``: the score of every image that class ``c`` would be emitted for at a low enough
        threshold, and whether ``c`` is right for it."""

    # -- scores

    @abstractmethod
    def metrics(self, truth: np.ndarray, probs: np.ndarray, thresholds: np.ndarray | None = None) -> dict[str, float]:
        """Every score of the task (``shown`` and ``headline`` among them)."""

    @property
    def history_columns(self) -> list[str]:
        return ["epoch", "train_loss", "val_loss", *self.shown, "learning_rate", "seconds", "images_per_second"]

    @abstractmethod
    def support(self, truth: np.ndarray, n_classes: int) -> np.ndarray:
        """Images of each class in ``truth``."""

    @abstractmethod
    def indicator(self, truth: np.ndarray, n_classes: int) -> np.ndarray:
        """Images x classes, True where an image carries the class."""

    @abstractmethod
    def confusion(self, truth: np.ndarray, probs: np.ndarray) -> np.ndarray | None:
        """Truth x prediction counts, where the task has one answer per image (else None)."""

    @abstractmethod
    def label_issues(self, truth: np.ndarray, probs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Likely mislabelled images, worst first, and every image's label quality (cleanlab's confident
        learning on out-of-fold ``probs``; needs the audit extra)."""

    # -- decisions

    @abstractmethod
    def tune(self, truth: np.ndarray, probs: np.ndarray) -> np.ndarray | None:
        """Decision thresholds learnt on validation data (None: the task decides without them)."""

    @abstractmethod
    def decision_thresholds(
        self, tuned: list[float] | None, override: float | None, n_classes: int
    ) -> np.ndarray | None:
        """A model's thresholds: ``override`` for every class, else those tuned in training (None: the task
        decides without thresholds)."""

    def emitted(self, probs: np.ndarray, thresholds: np.ndarray) -> list[int]:
        """Classes emitted for one image at per-class ``thresholds`` (inf: never): what eic enrich annotates."""
        return [int(c) for c in np.flatnonzero(self.emitted_each(probs[np.newaxis], thresholds)[0])]

    @abstractmethod
    def decisions(self, probs: np.ndarray, thresholds: np.ndarray | None) -> np.ndarray:
        """Images x classes, True where the model decides an image has the class (eic predict's labels)."""

    @abstractmethod
    def emitted_each(self, probs: np.ndarray, thresholds: np.ndarray) -> np.ndarray:
        """Images x classes, True where ``emitted`` emits the class for the image: ``emitted`` for a batch."""

    @abstractmethod
    def suggested(self, probs: np.ndarray) -> list[int]:
        """The classes to put to a person for one image (a review's suggestion): what the task decides at 0.5,
        and never nothing (the most probable class at least)."""

    @abstractmethod
    def describe(
        self, truth: Any, probs: np.ndarray, classes: list[str], thresholds: np.ndarray | None
    ) -> dict[str, str]:
        """The truth and prediction columns of one row of ``test_predictions.csv``."""

    # -- the truth as text

    @abstractmethod
    def classes_in(self, cell: str) -> list[str]:
        """The class names a table cell states: the whole cell (one class, whose name may hold spaces) or each
        word (a set of labels)."""

    @abstractmethod
    def truth_of(self, text: str, classes: list[str]) -> np.ndarray | int:
        """The truth a table cell states in the task's form (the inverse of ``truth_text``)."""

    @abstractmethod
    def truth_names(self, truth: Any, classes: list[str]) -> list[str]:
        """The names of the classes an image's truth carries."""

    def truth_text(self, truth: Any, classes: list[str]) -> str:
        """An image's labels as a table cell states them (the inverse of ``truth_of``)."""
        return " ".join(self.truth_names(truth, classes))


class Labelling(ABC):
    """Where the task's labels come from and how training takes them: a training folder read, checked and split
    into folds, and the loss. The part of a task that touches files and training, beside its ``Decisions``."""

    @abstractmethod
    def scan(
        self, root: Path, labels: Path | None = None, classes: Sequence[str] | None = None, *, whole: bool = True
    ) -> ImageSet:
        """The images of a folder with their labels; with ``classes`` (a model's), labelled in that order. An image
        that does not decode whole is left out (``whole`` False: only one whose header does not read, for a caller
        that decodes each image itself and counts what fails, as eic embed does, a shard its own)."""

    @abstractmethod
    def unknown_classes(self, root: Path, labels: Path | None, classes: Sequence[str]) -> dict[str, int]:
        """Classes an evaluation set holds that the model does not know, with their image counts."""

    @abstractmethod
    def check_trainable(self, images: ImageSet, root: Path, folds: int) -> None:
        """Raise ``DatasetError`` unless every class has enough images for ``folds`` folds."""

    @abstractmethod
    def splits(self, labels: np.ndarray, folds: int, seed: int, groups: Sequence[str] | None = None) -> list[Split]:
        """Cross-validation splits that keep each class's frequency in every part."""

    @abstractmethod
    def stratify(self, labels: np.ndarray) -> np.ndarray | None:
        """What a random sample of the images keeps the proportions of (None: nothing)."""

    @abstractmethod
    def members(self, labels: np.ndarray, c: int) -> np.ndarray:
        """Whether each image carries class ``c``."""

    @abstractmethod
    def readable(self, targets: Any) -> Any:
        """Rows of a batch (numpy or torch) whose image could be decoded."""

    @abstractmethod
    def criterion(self, train_labels: np.ndarray, n_classes: int, weighted: bool) -> nn.Module:
        """The loss on logits, ignoring unreadable images; ``weighted``: rare classes weigh more."""


class Task(Decisions, Labelling):
    """A task, single- or multi-label: its decisions and its labelling. Code holds a ``Task`` (or only the part
    it needs) and never asks which one it is; ``tasks.task_for`` makes one from a run's mode."""


@dataclass
class ImageSet:
    """Images with their labels: a class index each (single-label) or a 0/1 row (multi-label)."""

    paths: list[Path]
    labels: np.ndarray
    classes: list[str]
    task: Task
    unreadable: list[Path] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.paths)

    def counts(self) -> dict[str, int]:
        """Images carrying each class."""
        support = self.task.support(self.labels, len(self.classes))
        return {name: int(n) for name, n in zip(self.classes, support, strict=True)}

    def groups(self) -> list[str]:
        return [provider_of(path) for path in self.paths]

    def subset(self, indices: Sequence[int] | np.ndarray) -> ImageSet:
        return ImageSet(
            [self.paths[i] for i in indices], self.labels[np.asarray(indices, dtype=int)], self.classes, self.task
        )


@dataclass(frozen=True)
class Split:
    train: np.ndarray
    val: np.ndarray
    test: np.ndarray


def provider_of(path: Path) -> str:
    """The Europeana dataset of a file named after its record ID (``[ph]2058612[ph]obj.jpg``)."""
    parts = path.stem.split("[ph]")
    return parts[1] if len(parts) > 2 and parts[1] else path.stem
