"""``eic train --tensorboard DIR``: a run as TensorBoard shows runs, so users compare them in a tool they know.

Each split is its own TensorBoard run (``DIR/<run folder>/split_<i>``), so the splits of a run and the runs
of a folder share charts: ``loss/train``, ``loss/validation``, ``validation/<score>``, ``learning_rate`` and
``images_per_second`` per epoch; ``test/<score>`` and a ``test/confusion_matrix`` image at the end. The
run's settings and mean test scores go to the HParams tab (``DIR/<run folder>``). A run never writes into
another's folder: a second run folder of the same name, or a new run where a deleted one was, logs to
``<name>-2``, ``<name>-3``...; a resumed run carries on in its own. Optional: the ``tensorboard`` package
(``pip install 'europeana-imgcls[tensorboard]'``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from ..core.errors import ConfigError
from ..core.tables import read_csv_rows
from ..datasets.tasks import Task
from .run_folder import RunFolder, split_name

EXTRA_HINT = "pip install 'europeana-imgcls[tensorboard]'"


def check_available() -> None:
    """Fail before any training when the extra is missing."""
    try:
        from torch.utils.tensorboard import SummaryWriter  # noqa: F401 - imports tensorboard itself
    except ImportError:
        raise ConfigError(f"`tensorboard` needs the tensorboard package: {EXTRA_HINT}") from None


class TensorBoardRun:
    """Writers for one training run; only the process that writes the run folder (rank 0) makes one."""

    def __init__(self, root: Path, run_dir: Path, resume: bool = False) -> None:
        check_available()
        from torch.utils.tensorboard import SummaryWriter

        self.folder = board_folder(root, run_dir, resume)
        self._writer = SummaryWriter
        self._splits: dict[int, Any] = {}

    def split(self, index: int) -> Any:
        if index not in self._splits:
            self._splits[index] = self._writer(log_dir=str(self.folder / split_name(index)))
        return self._splits[index]

    def epoch(self, index: int, row: dict[str, float]) -> None:
        """One epoch's history row (``training.fit``'s ``on_epoch``)."""
        writer, step = self.split(index), int(row["epoch"])
        writer.add_scalar("loss/train", row["train_loss"], step)
        writer.add_scalar("loss/validation", row["val_loss"], step)
        for key, value in row.items():
            if key not in ("epoch", "train_loss", "val_loss", "learning_rate", "seconds", "images_per_second"):
                writer.add_scalar(f"validation/{key}", value, step)
        writer.add_scalar("learning_rate", row["learning_rate"], step)
        writer.add_scalar("images_per_second", row["images_per_second"], step)
        writer.flush()

    def finish(
        self,
        run_dir: Path,
        classes: list[str],
        task: Task,
        splits: list[Any],
        summary: dict[str, dict[str, Any]],
        settings: dict[str, Any],
    ) -> None:
        """Test scores and confusion matrix per split, then the settings with the mean scores as hparams."""
        for result in splits:
            writer = self.split(result.index)
            step = max(result.epochs_run, 1)
            for key, value in result.metrics.items():
                writer.add_scalar(f"test/{key}", value, step)
            predictions = RunFolder(run_dir).split(result.index).test_predictions
            if predictions.is_file():
                writer.add_figure("test/confusion_matrix", confusion_figure(predictions, classes, task), step)
            writer.flush()
        hparams = {
            k: v if isinstance(v, (int, float, str, bool)) else str(v)
            for k, v in settings.items()
            if v is not None and not isinstance(v, (dict, list))
        }
        metrics = {f"hparam/{k}": float(v["mean"]) for k, v in summary.items() if np.isfinite(v["mean"])}
        with self._writer(log_dir=str(self.folder)) as writer:
            writer.add_hparams(hparams, metrics, run_name=".")
        for writer in self._splits.values():
            writer.close()


OWNER = ".eic-run"  # in each run's TensorBoard folder: the run folder that logs there


def board_folder(root: Path, run_dir: Path, resume: bool) -> Path:
    """``root/<run folder name>``, or the first free ``-2``, ``-3``... when that one holds another run's events;
    a resumed run finds the folder it logged to before. TensorBoard would draw two runs in one folder as one."""
    run = run_dir.resolve()
    folder, n = root / run.name, 1
    while folder.exists() and not (resume and _owner(folder) == str(run)):
        n += 1
        folder = root / f"{run.name}-{n}"
    if not folder.exists():
        folder.mkdir(parents=True)
        (folder / OWNER).write_text(str(run), encoding="utf-8")
    return folder


def _owner(folder: Path) -> str | None:
    owner = folder / OWNER
    return owner.read_text(encoding="utf-8") if owner.is_file() else None


def confusion_figure(predictions: Path, classes: list[str], task: Task) -> Any:
    """Rows: truth, columns: prediction (multi-label: images with truth label i and predicted label j)."""
    from matplotlib.figure import Figure

    one_hot = np.eye(len(classes), dtype=np.int64)
    counts = np.zeros((len(classes), len(classes)), dtype=np.int64)
    for row in read_csv_rows(predictions):
        # The cells as the task reads them: a class index (single-label) or a row of 0/1 per label.
        truth, predicted = (task.truth_of(row[k], classes) for k in ("truth", "prediction"))
        counts += np.outer(
            one_hot[truth] if np.ndim(truth) == 0 else truth,
            one_hot[predicted] if np.ndim(predicted) == 0 else predicted,
        )
    size = max(4.0, 0.45 * len(classes) + 2)
    figure = Figure(figsize=(size, size))
    ax = figure.subplots()
    ax.imshow(counts, cmap="Blues")
    ax.set(xticks=range(len(classes)), yticks=range(len(classes)), xlabel="predicted", ylabel="true")
    ax.set_xticklabels(classes, rotation=90)
    ax.set_yticklabels(classes)
    for (i, j), n in np.ndenumerate(counts):
        if n:
            ax.text(
                j, i, str(n), ha="center", va="center", fontsize=7, color="white" if n > counts.max() / 2 else "black"
            )
    figure.tight_layout()
    return figure
