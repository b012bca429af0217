"""What every kind of training (fine-tuning, linear probe, k-NN) writes into a split's folder once it is
fitted: its settings, its test fold's scores and predictions, and what the validation part teaches the
checkpoint (a temperature; multi-label thresholds)."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..core.config import TrainConfig, public_dict
from ..core.tables import write_csv, write_json
from ..datasets.imageset import ImageSet, Split
from .calibration import fit_temperature
from .run_folder import CheckpointMeta, SplitFolder
from .tensorboard_logs import TensorBoardRun


@dataclass
class SplitResult:
    index: int
    metrics: dict[str, float]
    epochs_run: int
    best_epoch: int
    best_val_loss: float

    @classmethod
    def finished_earlier(cls, split: SplitFolder) -> SplitResult:
        """The result of a split a resumed run finds finished."""
        done = split.read_metrics()
        loss = done["best_val_loss"]  # null where it was never finite
        return cls(
            split.index, done["test"], done["epochs_run"], done["best_epoch"], math.nan if loss is None else loss
        )


@dataclass(frozen=True)
class SplitOutput:
    """Where a split's results go: its folder, what its checkpoints say about their model and, when asked for
    (fine-tuning), TensorBoard's writers."""

    folder: SplitFolder
    meta: CheckpointMeta
    board: TensorBoardRun | None = None


@dataclass
class Evaluation:
    loss: float
    truth: np.ndarray
    probs: np.ndarray
    indices: np.ndarray
    logits: np.ndarray  # exact, for calibration (probabilities near 1 lose digits)


def start_split_folder(split: SplitFolder, config: TrainConfig, classes: list[str]) -> None:
    """A split's folder with the settings and the class order it is trained with."""
    split.path.mkdir(parents=True, exist_ok=True)
    write_json(split.config, public_dict(config))
    write_json(split.class_index, {name: i for i, name in enumerate(classes)})


def score_split(
    images: ImageSet, split: Split, folder: SplitFolder, test: Evaluation, val: Evaluation
) -> tuple[dict[str, float], dict[str, Any]]:
    """Test metrics and ``test_predictions.csv`` of a finished split, and what its checkpoint gains from the
    validation part: the temperature that makes its probabilities honest (multi-label: tuned thresholds)."""
    task, classes = images.task, images.classes
    extra: dict[str, Any] = {"temperature": fit_temperature(task, val.logits, val.truth)}
    thresholds = task.tune(val.truth, val.probs)
    if thresholds is not None:
        extra["thresholds"] = [float(t) for t in thresholds]
    paths = images.subset(split.test).paths
    write_csv(
        folder.test_predictions,
        ["image", *task.described, "probabilities", "logits"],
        (
            {
                "image": str(paths[i]),
                **task.describe(truth, prob, classes, thresholds),
                "probabilities": _by_class(classes, prob, 6),
                "logits": _by_class(classes, logit, 5),
            }
            for i, truth, prob, logit in zip(test.indices, test.truth, test.probs, test.logits, strict=True)
        ),
    )
    return task.metrics(test.truth, test.probs, thresholds), extra


def _by_class(classes: list[str], values: np.ndarray, digits: int) -> str:
    return json.dumps({c: round(float(v), digits) for c, v in zip(classes, values, strict=True)})


def write_split_metrics(
    folder: SplitFolder,
    scores: dict[str, float],
    split: Split,
    epochs_run: int,
    best_epoch: int,
    best_val_loss: float,
    temperature: float,
) -> None:
    write_json(
        folder.metrics,
        {
            "test": scores,
            "test_images": len(split.test),
            "train_images": len(split.train),
            "val_images": len(split.val),
            "epochs_run": epochs_run,
            "best_epoch": best_epoch,
            "best_val_loss": best_val_loss,
            "temperature": temperature,
        },
    )
