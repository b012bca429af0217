"""The two tasks answer every question outputs ask of them, so no output tests the mode: the export graph's
activation, the headline score, the review's choice, the suggestion put to people, cleanlab's label issues and
how a table cell reads (a multi-label export: outputs/test_export.py)."""

from __future__ import annotations

from pathlib import Path
from typing import get_args

import numpy as np
import pytest
import torch

from europeana_imgcls.core.config import Mode
from europeana_imgcls.datasets.imageset import Task
from europeana_imgcls.datasets.tasks import TASKS, MultiLabel, SingleLabel, task_for, unlabelled
from europeana_imgcls.outputs.review import labelling_config

CLASSES = ["fine art", "map", "textile"]  # a single-label class name may hold a space
BOTH = [SingleLabel(), MultiLabel()]


def test_every_mode_has_its_task_and_a_run_without_one_is_single_label() -> None:
    assert set(TASKS) == set(get_args(Mode))
    assert all(task_for(mode).name == mode for mode in get_args(Mode))
    assert task_for(None).name == "single-label"
    images = unlabelled([Path("a.jpg"), Path("b.jpg")], CLASSES)
    assert images.labels.tolist() == [0, 0] and images.classes == CLASSES


@pytest.mark.parametrize("task", BOTH, ids=lambda t: t.name)
def test_the_graphs_activation_is_the_one_predict_applies(task: Task) -> None:
    logits = np.random.default_rng(0).normal(0, 4, (16, len(CLASSES)))
    graph = task.activation(torch.from_numpy(logits).float()).numpy()
    assert graph == pytest.approx(task.from_logits(logits), abs=1e-6)


@pytest.mark.parametrize("task", BOTH, ids=lambda t: t.name)
def test_the_headline_score_is_one_the_task_computes(task: Task) -> None:
    probs = np.array([[0.7, 0.2, 0.6], [0.1, 0.8, 0.1], [0.2, 0.1, 0.9]])
    truth = np.array([0, 1, 2]) if task is BOTH[0] else np.array([[1, 0, 1], [0, 1, 0], [0, 0, 1]])
    assert task.metrics(truth, probs)[task.headline] == pytest.approx(1.0)


@pytest.mark.parametrize(("task", "choice"), [(BOTH[0], "single"), (BOTH[1], "multiple")], ids=["single", "multi"])
def test_label_studio_offers_one_choice_or_several_by_task(task: Task, choice: str) -> None:
    xml = labelling_config(CLASSES, task)
    assert f'choice="{choice}"' in xml and '<Choice value="fine art"/>' in xml


def test_people_are_shown_what_the_model_would_decide_and_never_nothing() -> None:
    single, multi = BOTH
    assert single.suggested(np.array([0.2, 0.5, 0.3])) == [1]
    assert multi.suggested(np.array([0.6, 0.1, 0.9])) == [0, 2]
    assert multi.suggested(np.array([0.3, 0.1, 0.4])) == [2]  # nothing at 0.5: the most probable one


def test_a_cell_reads_back_as_the_truth_it_was_written_from() -> None:
    single, multi = BOTH
    assert single.classes_in("fine art") == ["fine art"] and multi.classes_in("map textile") == ["map", "textile"]
    assert single.truth_text(single.truth_of("fine art", CLASSES), CLASSES) == "fine art"
    row = multi.truth_of("textile map", CLASSES)
    assert row.tolist() == [0, 1, 1] and multi.truth_names(row, CLASSES) == ["map", "textile"]
    assert multi.truth_text(row, CLASSES) == "map textile"


@pytest.mark.parametrize("task", BOTH, ids=lambda t: t.name)
def test_cleanlab_puts_the_flipped_label_first(task: Task) -> None:
    pytest.importorskip("cleanlab")
    rng = np.random.default_rng(1)
    given = rng.integers(0, len(CLASSES), 60)
    probs = np.full((60, len(CLASSES)), 0.05)
    probs[np.arange(60), given] = 0.9
    given[7] = (given[7] + 1) % len(CLASSES)  # the model is sure of another class than the one given
    truth = given if task is BOTH[0] else np.eye(len(CLASSES), dtype=np.int64)[given]
    ranked, quality = task.label_issues(truth, probs)
    assert ranked[0] == 7 and len(quality) == 60 and quality.argmin() == 7


def test_class_weights_are_inverse_frequency() -> None:
    def class_weights(labels: np.ndarray, n: int) -> torch.Tensor:
        return task_for("single-label").criterion(labels, n, weighted=True).weight

    weights = class_weights(np.array([0, 0, 0, 1, 2, 2]), 3)
    assert weights.tolist() == pytest.approx([6 / 9, 6 / 3, 6 / 6])
    assert class_weights(np.array([0, 1, 0, 1]), 2).tolist() == [1.0, 1.0]
