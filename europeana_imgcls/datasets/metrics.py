"""Scores of single-label predictions, computed the same way in training, evaluation and tests."""

from __future__ import annotations

import numpy as np

# The scores are scikit-learn's, computed from one confusion matrix with numpy: its precision_recall_fscore_support
# and confusion_matrix check their input for ~8 ms a call, and training scores every split after every epoch.


def confusion(y_true: np.ndarray, y_pred: np.ndarray, n_classes: int) -> np.ndarray:
    """Rows: truth, columns: prediction, in class-index order (as scikit-learn's confusion_matrix with
    ``labels=range(n_classes)``: a pair outside the classes is not counted)."""
    y_true, y_pred = np.asarray(y_true, dtype=np.int64), np.asarray(y_pred, dtype=np.int64)
    if not len(y_true):
        raise ValueError("Found empty input array: no predictions to score")
    kept = (y_true >= 0) & (y_true < n_classes) & (y_pred >= 0) & (y_pred < n_classes)
    pairs = y_true[kept] * n_classes + y_pred[kept]
    return np.bincount(pairs, minlength=n_classes * n_classes).reshape(n_classes, n_classes)


def _macro_scores(matrix: np.ndarray, labels: np.ndarray) -> tuple[float, float, float]:
    """Macro precision, recall and F1 over ``labels``, 0 where a class is never predicted or never true (scikit-learn's
    zero_division=0); F1 as it computes it, 2 TP / (true + predicted)."""
    precision, recall, f1 = _one_vs_rest(
        np.diag(matrix)[labels], matrix.sum(axis=0)[labels], matrix.sum(axis=1)[labels]
    )
    return float(precision.mean()), float(recall.mean()), float(f1.mean())


def _one_vs_rest(tp: np.ndarray, predicted: np.ndarray, true: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per class: precision, recall and F1 from its true positives and how often it was predicted and true; 0 where
    undefined (scikit-learn's zero_division=0), F1 as it computes it, 2 TP / (true + predicted)."""
    tp = np.asarray(tp, dtype=np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        precision = np.where(predicted > 0, tp / predicted, 0.0)
        recall = np.where(true > 0, tp / true, 0.0)
        f1 = np.where(true + predicted > 0, 2.0 * tp / (true + predicted), 0.0)
    return precision, recall, f1


def per_class_scores(actual: np.ndarray, decided: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per class, one-vs-rest: precision, recall and F1 of the 0/1 (or boolean) indicator matrices ``actual`` and
    ``decided`` (rows: images, columns: classes), 0 where undefined: scikit-learn's precision_recall_fscore_support
    with ``average=None, zero_division=0``, to the bit, without its second of import where a model card is written."""
    actual, decided = np.asarray(actual).astype(bool), np.asarray(decided).astype(bool)
    return _one_vs_rest((actual & decided).sum(axis=0), decided.sum(axis=0), actual.sum(axis=0))


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
    matrix = confusion(y_true, y_pred, n_classes)
    precision, recall, f1 = _macro_scores(matrix, present)
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
