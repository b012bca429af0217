"""Scores of single-label predictions, computed the same way in training, evaluation and tests."""

from __future__ import annotations

import numpy as np
from sklearn.metrics import confusion_matrix, precision_recall_fscore_support


def confusion(y_true: np.ndarray, y_pred: np.ndarray, n_classes: int) -> np.ndarray:
    """Rows: truth, columns: prediction, in class-index order."""
    return confusion_matrix(y_true, y_pred, labels=np.arange(n_classes))


def specificity_per_class(matrix: np.ndarray) -> np.ndarray:
    """One-vs-rest TN / (TN + FP) for each class, from the confusion matrix."""
    total = matrix.sum()
    tp = np.diag(matrix)
    fp = matrix.sum(axis=0) - tp
    fn = matrix.sum(axis=1) - tp
    tn = total - tp - fp - fn
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(tn + fp > 0, tn / (tn + fp), 0.0)


def classification_metrics(y_true: np.ndarray, y_prob: np.ndarray) -> dict[str, float]:
    """Accuracy, macro precision/recall/F1, sensitivity (macro recall), specificity, top-k accuracy.

    Macro averages run over the classes present in ``y_true`` or predicted, as scikit-learn does.
    """
    n_classes = y_prob.shape[1]
    y_pred = y_prob.argmax(axis=1)
    present = np.union1d(np.unique(y_true), np.unique(y_pred))
    precision, recall, f1, _ = precision_recall_fscore_support(
        y_true, y_pred, labels=present, average="macro", zero_division=0
    )
    matrix = confusion(y_true, y_pred, n_classes)
    k = top_k(n_classes)
    ranked = np.argsort(-y_prob, axis=1)[:, :k]
    return {
        "accuracy": float((y_pred == y_true).mean()) if len(y_true) else 0.0,
        "precision": float(precision),
        "recall": float(recall),
        "f1": float(f1),
        "sensitivity": float(recall),
        "specificity": float(specificity_per_class(matrix)[present].mean()) if len(present) else 0.0,
        f"top{k}_accuracy": float((ranked == y_true[:, None]).any(axis=1).mean()) if len(y_true) else 0.0,
    }


def top_k(n_classes: int) -> int:
    return max(1, min(5, n_classes - 1))


def mean_std(values: list[float]) -> dict[str, object]:
    array = np.asarray(values, dtype=float)
    return {
        "mean": float(array.mean()),
        "std": float(array.std(ddof=1)) if len(array) > 1 else 0.0,
        "per_split": [float(v) for v in array],
    }
