"""datasets/metrics.py: single-label scores, exactly as scikit-learn computes them."""

from __future__ import annotations

import numpy as np
import pytest

from europeana_imgcls.datasets.metrics import classification_metrics, confusion


def test_the_scores_are_scikit_learns_to_the_last_bit() -> None:
    """Confusion matrix and macro precision, recall and F1 over the classes present (in the truth or predicted,
    with 0 where a class is never predicted or never true), on random predictions of 2 to 8 classes."""
    from sklearn.metrics import confusion_matrix, precision_recall_fscore_support

    rng = np.random.default_rng(0)
    for _ in range(60):
        classes, rows = int(rng.integers(2, 9)), int(rng.integers(1, 40))
        truth = rng.integers(0, classes, rows)
        probs = rng.dirichlet(np.ones(classes), rows)
        predicted = probs.argmax(axis=1)
        assert np.array_equal(
            confusion(truth, predicted, classes), confusion_matrix(truth, predicted, labels=range(classes))
        )
        present = np.union1d(truth, predicted)
        expected = precision_recall_fscore_support(truth, predicted, labels=present, average="macro", zero_division=0)
        scores = classification_metrics(truth, probs)
        assert (scores["precision"], scores["recall"], scores["f1"]) == tuple(float(v) for v in expected[:3])
        assert scores["sensitivity"] == scores["recall"]
    with pytest.raises(ValueError, match="empty"):  # as scikit-learn refuses nothing to score
        classification_metrics(np.array([], dtype=int), np.zeros((0, 3)))


def test_per_class_scores_are_scikit_learns_to_the_last_bit() -> None:
    """Per class, one-vs-rest, on indicator matrices (the model card's and evaluate's per-class table): precision,
    recall and F1 with 0 where a class is never decided or never true, equal to scikit-learn's."""
    from sklearn.metrics import precision_recall_fscore_support

    from europeana_imgcls.datasets.metrics import per_class_scores

    rng = np.random.default_rng(1)
    for _ in range(60):
        rows, classes = int(rng.integers(1, 40)), int(rng.integers(2, 9))  # one column: scikit-learn reads 0/1 labels
        actual, decided = rng.random((rows, classes)) < rng.random(), rng.random((rows, classes)) < rng.random()
        expected = precision_recall_fscore_support(actual, decided, average=None, zero_division=0)[:3]
        for ours, theirs in zip(per_class_scores(actual, decided), expected, strict=True):
            assert ours.tolist() == theirs.tolist()
