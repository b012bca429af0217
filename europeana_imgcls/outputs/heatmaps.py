"""``eic predict --gradcam-dir``: a figure per labelled image, with the heatmaps of the ensemble's first split model.

Each figure shows the image, then a heatmap per class at least ``threshold`` probable (a set of labels: per
predicted label), at most ``top_k``, at least the most probable class. Heatmaps are computed a batch at a time
(one backward pass per rank of class, not per image) and the figures composed with Pillow: matplotlib's layout and
PNG writing cost more than the heatmaps themselves. They are encoded in a thread (zlib lets go of the GIL) while the
next batch's heatmaps are computed.
"""

from __future__ import annotations

import hashlib
import os
import re
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..core.config import PredictConfig
from ..core.errors import DatasetError
from ..core.outputs import absolute, dataset_of
from ..core.recognise import what_is
from ..datasets.decoding import load_image
from .inference import Ensemble, Explainer, Pixels
from .inputs import Item, last_part

MARK = ".eic-gradcam"  # in a folder of figures eic drew: what lets another run (a resume, a shard) add to it
_FIGURE = re.compile(r".+_[0-9a-f]{8}\.(jpg|png)")  # ``figure_name``'s (PNG: an earlier eic's)


def claim_gradcam_dir(config: PredictConfig) -> None:
    """Where ``config.gradcam_dir`` may take figures, asked before any work: a new or empty folder, or one of
    figures eic drew; never a link, a file, a folder of the user's, nor the images being labelled (a class folder
    would then hold a figure per image, which the next training reads as that class's)."""
    folder = config.gradcam_dir
    if folder is None:
        return
    where = absolute(folder)
    said = f"`gradcam_dir` {folder}"
    if where.is_symlink():
        raise DatasetError(f"{said} is a symbolic link: eic writes no output through a link; give a folder")
    if os.path.lexists(where) and not where.is_dir():
        raise DatasetError(f"{said} is not a folder: give a new folder for the Grad-CAM figures")
    for given in config.inputs:
        images = Path(given).resolve()
        if images.is_dir() and (where.is_relative_to(images) or images.is_relative_to(where)):
            raise DatasetError(
                f"{said} and {given} hold one another: the figures would be among the images it labels (which "
                "training would read as images): give a folder of its own"
            )
        dataset = dataset_of(images) or _classes_around(images, where)
        if dataset is not None and where.is_relative_to(dataset.resolve()):
            raise DatasetError(
                f"{said} is inside {dataset}, which holds the images it labels among other image folders (a dataset "
                "of classes, as training reads it): its figures would be one more class; give a folder outside it"
            )
    stranger = _stranger(where)
    if stranger is not None:
        raise DatasetError(
            f"{said} holds {stranger}, which is not a Grad-CAM figure eic drew: give a new or empty folder"
        )


def _classes_around(given: Path, figures: Path) -> Path | None:
    """The folder holding a class folder given (or the class folder of an image given; ``given`` absolute) when it
    looks like a dataset of classes: two or more folders besides ``figures`` (and any earlier figures of eic's),
    each holding images. A figure folder made there would be one more class."""
    folder = given.parent if given.is_file() else given
    holder = folder.parent
    try:
        subfolders = [
            p
            for p in holder.iterdir()
            if p.is_dir() and not p.name.startswith(".") and p.resolve() != figures and not (p / MARK).is_file()
        ]
        return holder if len(subfolders) >= 2 and all(what_is(p) == "an image folder" for p in subfolders) else None
    except OSError:  # a folder it may not read is no reason to stop: nothing says it is a dataset
        return None


def _stranger(folder: Path) -> str | None:
    """The first entry of ``folder`` that is not eic's figures folder's (None: there is none, or it is marked)."""
    if not folder.is_dir() or (folder / MARK).is_file():
        return None
    with os.scandir(folder) as entries:
        for entry in entries:
            if not (entry.is_file(follow_symlinks=False) and _FIGURE.fullmatch(entry.name)):
                return entry.name
    return None


@contextmanager
def figures(models: Ensemble, config: PredictConfig, thresholds: np.ndarray | None) -> Iterator[Figures | None]:
    """The figures ``config.gradcam_dir`` asks for (None: none asked), every one written when it ends."""
    folder = config.gradcam_dir
    if folder is None:
        yield None
        return
    folder.mkdir(parents=True, exist_ok=True)
    (folder / MARK).touch()  # shards and runs into the same folder mark it alike
    with (
        ThreadPoolExecutor(1, thread_name_prefix="eic-figures") as saver,
        models.explainer(config.cam_method) as explainer,
    ):
        drawn = Figures(
            explainer, saver, folder, models[0].classes, _Choice(config.top_k, config.threshold, thresholds)
        )
        yield drawn
        for done in drawn.pending:
            done.result()  # a figure that could not be written is an error, not a silent gap


@dataclass(frozen=True)
class _Choice:
    """Which classes of an image get a heatmap."""

    top_k: int
    threshold: float | None  # predict's ``threshold``: one class an image: the least probability drawn (0.3)
    thresholds: np.ndarray | None  # the ensemble's decision thresholds, where its task tunes them

    def of(self, row: np.ndarray) -> list[int]:
        least = 0.3 if self.threshold is None else self.threshold
        cuts = self.thresholds if self.thresholds is not None else np.full(len(row), least)
        return [int(c) for c in np.argsort(-row)[: self.top_k] if row[c] >= cuts[c]] or [int(row.argmax())]


@dataclass
class Figures:
    """Figures of a labelling pass, a batch at a time: ``forward`` each batch before labelling it, then ``draw``."""

    explainer: Explainer
    saver: ThreadPoolExecutor
    folder: Path
    classes: list[str]
    choice: _Choice
    pending: list[Future[None]] = field(default_factory=list)

    def forward(self, pixels: Pixels) -> np.ndarray | None:
        """The batch through the first split model, kept for its heatmaps: its logits where labelling can use them."""
        return self.explainer.forward(pixels)

    def draw(self, items: list[Item], probs: np.ndarray, ok: np.ndarray) -> int:
        """One figure per readable image of the batch last forwarded; returns how many."""
        from ..modelling.explain import TILE, figure, save_figure  # loaded with the explainer already

        orders = [self.choice.of(row) for row in probs]
        count = 0
        for item, row, order, heat, good in zip(items, probs, orders, self._heatmaps(orders, ok), ok, strict=True):
            if not good:
                continue
            title = f"{item.record or Path(item.image).name} · {self.classes[order[0]]} {row[order[0]]:.2f}"
            picture = load_image(item.path, TILE, keep_aspect=True)
            image = figure(picture, heat, [f"{self.classes[c]} {row[c]:.2f}" for c in order], title)
            self.pending.append(self.saver.submit(save_figure, image, self.folder / figure_name(item), title))
            count += 1
        return count

    def _heatmaps(self, orders: list[list[int]], ok: np.ndarray) -> list[list[np.ndarray]]:
        """Each image's heatmaps, for its classes in ``orders``."""
        maps: list[list[np.ndarray]] = [[] for _ in orders]
        for rank in range(max((len(o) for o, good in zip(orders, ok, strict=True) if good), default=0)):
            # Every image takes part in the pass (an image's gradient is its own); those without a class of this
            # rank are given their first, and that heatmap is not kept.
            drawn = self.explainer.heatmaps([order[rank] if len(order) > rank else order[0] for order in orders])
            for i, order in enumerate(orders):
                if len(order) > rank:
                    maps[i].append(drawn[i])
        return maps


def figure_name(item: Item) -> str:
    """Readable and unique: the record's (or file's, or URL's last part's) name plus a short hash of where it
    came from."""
    record = item.record
    stem = re.sub(r"[^\w.-]+", "_", record.strip("/")) if record else Path(last_part(item.image)).stem
    return f"{stem[:80]}_{hashlib.sha1(item.key.encode()).hexdigest()[:8]}.jpg"
