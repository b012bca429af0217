"""What differs between single-label and multi-label classification, decided once.

A run is one task or the other for its whole life; code that scores, calibrates or decides asks the
task rather than branching on the mode itself. Single-label: softmax over classes, one label per
image (the most probable one). Multi-label: a sigmoid per label, every label above its threshold.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import ClassVar

import numpy as np

EPS = 1e-7  # probabilities are clipped this far from 0 and 1 before a log


class Task(ABC):
    """The interface both tasks implement; code holds a ``Task`` and never asks which one it is."""

    name: ClassVar[str]
    multilabel: ClassVar[bool]

    @abstractmethod
    def from_logits(self, logits: np.ndarray) -> np.ndarray:
        """The activation, in float64 numpy."""

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

    @abstractmethod
    def emitted(self, probs: np.ndarray, thresholds: np.ndarray) -> list[int]:
        """Classes emitted for one image at per-class ``thresholds`` (inf: never)."""

    @abstractmethod
    def truth_of(self, text: str, classes: list[str]) -> np.ndarray | int:
        """The truth a table cell states (a class, or space-separated labels) in the task's form."""

    @abstractmethod
    def support(self, truth: np.ndarray, n_classes: int) -> np.ndarray:
        """Images of each class in ``truth``."""


class SingleLabel(Task):
    name = "single-label"
    multilabel = False

    def from_logits(self, logits: np.ndarray) -> np.ndarray:
        z = np.asarray(logits, dtype=np.float64)
        z = z - z.max(axis=1, keepdims=True)
        e = np.exp(z)
        return e / e.sum(axis=1, keepdims=True)

    def nll(self, probs: np.ndarray, truth: np.ndarray) -> float:
        return float(-np.log(np.clip(probs[np.arange(len(truth)), truth], EPS, 1.0)).mean())

    def confidence_and_correct(self, probs: np.ndarray, truth: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return probs.max(axis=1), probs.argmax(axis=1) == truth

    def candidates(self, probs: np.ndarray, truth: np.ndarray, c: int) -> tuple[np.ndarray, np.ndarray]:
        chosen = probs.argmax(axis=1) == c
        return probs[chosen, c], truth[chosen] == c

    def emitted(self, probs: np.ndarray, thresholds: np.ndarray) -> list[int]:
        top = int(probs.argmax())
        return [top] if probs[top] >= thresholds[top] else []

    def truth_of(self, text: str, classes: list[str]) -> int:
        return classes.index(text)

    def support(self, truth: np.ndarray, n_classes: int) -> np.ndarray:
        return np.bincount(truth, minlength=n_classes)


class MultiLabel(Task):
    name = "multi-label"
    multilabel = True

    def from_logits(self, logits: np.ndarray) -> np.ndarray:
        from scipy.special import expit  # a sigmoid that neither overflows nor warns

        return expit(np.asarray(logits, dtype=np.float64))

    def nll(self, probs: np.ndarray, truth: np.ndarray) -> float:
        p = np.clip(probs, EPS, 1 - EPS)
        return float(-(truth * np.log(p) + (1 - truth) * np.log(1 - p)).mean())

    def confidence_and_correct(self, probs: np.ndarray, truth: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        # Every (image, label) probability is a statement that the label applies.
        return probs.ravel(), truth.ravel().astype(bool)

    def candidates(self, probs: np.ndarray, truth: np.ndarray, c: int) -> tuple[np.ndarray, np.ndarray]:
        return probs[:, c], truth[:, c].astype(bool)

    def emitted(self, probs: np.ndarray, thresholds: np.ndarray) -> list[int]:
        return [int(c) for c in np.flatnonzero(probs >= thresholds)]

    def truth_of(self, text: str, classes: list[str]) -> np.ndarray:
        row = np.zeros(len(classes), dtype=np.int64)
        for name in text.split():
            row[classes.index(name)] = 1
        return row

    def support(self, truth: np.ndarray, n_classes: int) -> np.ndarray:
        return truth.sum(axis=0)


TASKS: dict[str, Task] = {"single-label": SingleLabel(), "multi-label": MultiLabel()}


def task_for(mode: str | None) -> Task:
    """The task of a run's mode (runs written before modes existed are single-label)."""
    return TASKS[mode or "single-label"]
