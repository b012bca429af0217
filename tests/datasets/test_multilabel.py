"""datasets/multilabel.py: iterative stratification, tuned thresholds and the multi-label metrics."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from europeana_imgcls import train
from europeana_imgcls.core.errors import DatasetError
from europeana_imgcls.datasets.multilabel import (
    iterative_folds,
    make_multilabel_splits,
    multilabel_metrics,
    positive_weights,
    tune_thresholds,
)

from ..support import config, make_multilabel_folder


def test_folds_keep_label_frequencies_and_groups() -> None:
    rng = np.random.default_rng(1)
    targets = (rng.random((400, 6)) < [0.5, 0.3, 0.12, 0.06, 0.2, 0.04]).astype(np.float32)
    folds = iterative_folds(targets, 5, seed=0)
    assert sorted(np.concatenate(folds).tolist()) == list(range(400))
    overall = targets.mean(axis=0)
    for fold in folds:
        assert abs(len(fold) - 80) <= 2
        assert np.abs(targets[fold].mean(axis=0) - overall).max() < 0.03
    groups = [f"g{i // 8}" for i in range(400)]
    for split in make_multilabel_splits(targets, 4, seed=0, groups=groups):
        parts = [{groups[i] for i in part} for part in (split.train, split.val, split.test)]
        assert not (parts[0] & parts[1] or parts[0] & parts[2] or parts[1] & parts[2])
        assert len(split.train) + len(split.val) + len(split.test) == 400


def test_thresholds_are_tuned_to_maximise_f1() -> None:
    from sklearn.metrics import f1_score

    truth = np.array([[1, 0], [1, 0], [0, 1], [0, 0], [1, 1], [0, 0]])
    probs = np.array([[0.72, 0.1], [0.8, 0.2], [0.65, 0.3], [0.2, 0.1], [0.9, 0.35], [0.4, 0.05]])
    thresholds = tune_thresholds(truth, probs)
    assert 0.65 < thresholds[0] <= 0.72  # separates 0.72/0.8/0.9 from 0.65
    assert 0.2 < thresholds[1] <= 0.3
    assert f1_score(truth, probs >= thresholds, average="micro") == 1.0
    assert tune_thresholds(np.zeros((3, 1)), np.full((3, 1), 0.9))[0] == 0.5  # no positives: default
    assert positive_weights(np.array([[1, 0], [1, 0], [0, 1], [1, 0]])).tolist() == pytest.approx([1 / 3, 3.0])


def test_each_labels_threshold_is_the_first_cut_of_the_grid_with_scikit_learns_best_f1() -> None:
    """The cuts 0.05, 0.075, ... 0.95: per label, the first one at which scikit-learn's F1 is highest."""
    from sklearn.metrics import f1_score

    grid = np.round(np.arange(0.05, 0.951, 0.025), 3)
    rng = np.random.default_rng(0)
    for trial in range(24):
        rows, labels = int(rng.integers(1, 60)), int(rng.integers(1, 6))
        truth = (rng.random((rows, labels)) < rng.random(labels)).astype(rng.choice([np.int64, np.float32]))
        probs = rng.random((rows, labels)).astype(np.float32)
        if trial % 4 == 0:  # probabilities on the grid's cuts, and ties between cuts
            probs = rng.choice(grid, size=(rows, labels)).astype(np.float32)
        expected = []
        for k in range(labels):
            # scikit-learn's F1 of each cut at once: one column per cut, the label's truth in each
            cuts = probs[:, k][:, None] >= grid
            scores = f1_score(np.repeat(truth[:, k : k + 1], len(grid), axis=1), cuts, average=None, zero_division=0)
            expected.append(float(grid[int(np.argmax(scores))]) if truth[:, k].sum() else 0.5)
        assert tune_thresholds(truth, probs).tolist() == expected


def test_metrics_match_scikit_learn() -> None:
    from sklearn.metrics import f1_score, hamming_loss, label_ranking_loss, precision_score, recall_score

    rng = np.random.default_rng(2)
    truth = (rng.random((50, 5)) < 0.3).astype(int)
    probs = np.clip(truth * 0.5 + rng.random((50, 5)) * 0.6, 0, 1)
    cuts = np.array([0.4, 0.5, 0.6, 0.5, 0.45])
    predicted = (probs >= cuts).astype(int)
    got = multilabel_metrics(truth, probs, cuts)
    assert got["micro_f1"] == pytest.approx(f1_score(truth, predicted, average="micro"))
    assert got["macro_f1"] == pytest.approx(f1_score(truth, predicted, average="macro", zero_division=0))
    assert got["micro_precision"] == pytest.approx(precision_score(truth, predicted, average="micro"))
    assert got["macro_recall"] == pytest.approx(recall_score(truth, predicted, average="macro", zero_division=0))
    assert got["hamming_loss"] == pytest.approx(hamming_loss(truth, predicted))
    assert got["exact_match"] == pytest.approx((truth == predicted).all(axis=1).mean())
    keep = truth.sum(axis=1) > 0
    assert got["ranking_loss"] == pytest.approx(label_ranking_loss(truth[keep], probs[keep]))


def test_multilabel_bad_inputs(tmp_path: Path) -> None:
    data = make_multilabel_folder(tmp_path / "d", count=6)
    with pytest.raises(DatasetError, match="fewer than the 3 folds"):
        train(config(data, tmp_path / "r", mode="multi-label", folds=3))
    (tmp_path / "e").mkdir()
    with pytest.raises(DatasetError, match="labels.csv: no such table"):
        train(config(tmp_path / "e", tmp_path / "r2", mode="multi-label"))


def test_a_file_in_several_rows_is_one_image_with_their_labels(tmp_path: Path) -> None:
    """labels.csv listing a file twice made it two images: one could be in a test fold and in training at once, and
    count twice in a score."""
    from europeana_imgcls.datasets.tasks import scan_images

    root = make_multilabel_folder(tmp_path / "ml", count=6)
    lines = (root / "labels.csv").read_text().splitlines()
    header, first, second = lines[0], lines[1].split(","), lines[2]
    extra = [",".join([*first[:2], "painting"]), second, second]  # another label for the first; the second again
    (root / "labels.csv").write_text("\n".join([header, *lines[1:], *extra]) + "\n")
    images = scan_images(root, "multi-label")
    assert len(images) == 6 and len(set(images.paths)) == 6
    row = images.paths.index(root / first[1])
    labels = {images.classes[c] for c in np.flatnonzero(images.labels[row])}
    assert labels == {*first[2].split(), "painting"}
