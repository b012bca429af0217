"""What every kind of training (fine-tuning, linear probe, k-NN) writes into a split's folder once it is
fitted: its settings, its test fold's scores and predictions, and what the validation part teaches the
checkpoint (a temperature; multi-label thresholds)."""

from __future__ import annotations

import hashlib
import json
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..core.config import TrainConfig, public_dict
from ..core.tables import write_csv, write_json
from ..datasets.imageset import ImageSet, Split
from .calibration import fit_temperature
from .run_folder import DATA_DIR_RESOLVED, CheckpointMeta, SplitFolder
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


def start_split_folder(split: SplitFolder, config: TrainConfig, images: ImageSet) -> None:
    """A split's folder with the settings, the class order and the digest of the images it is trained with."""
    split.path.mkdir(parents=True, exist_ok=True)
    where = str(config.data_dir.resolve())
    recorded = {IMAGES_DIGEST: images_digest(images, config.data_dir), DATA_DIR_RESOLVED: where}
    write_json(split.config, {**public_dict(config), **recorded})
    write_json(split.class_index, {name: i for i, name in enumerate(images.classes)})


IMAGES_DIGEST = "images_sha256"  # in a split's config.json: which images, with which labels, the run's folds cut


def images_digest(images: ImageSet, data_dir: Path) -> str:
    """A digest of the images a run is trained on (each file's path under ``data_dir``, its label) in order: the
    folds are made anew at every start, so a resume must see the same images or its splits would not be the run's."""
    digest = hashlib.sha256()
    for path, label in zip(images.paths, images.labels, strict=True):
        name = path.relative_to(data_dir).as_posix() if path.is_relative_to(data_dir) else str(path)
        digest.update(name.encode("utf-8", "surrogateescape") + b"\0" + np.asarray(label).tobytes() + b"\n")
    return digest.hexdigest()


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
                "image": os.path.abspath(paths[i]),  # read from anywhere: audit, calibrate, report, export
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
