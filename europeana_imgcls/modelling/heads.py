"""``eic train --method linear-probe|knn``: the same folds and outputs as fine-tuning, from frozen embeddings.

Every image is embedded once by the pretrained backbone (or taken from ``eic embed``'s table), then
each split fits a head on its training part and is scored on its test fold, so a 10-fold protocol
costs one forward pass per image plus seconds per split.

- linear-probe: a torch linear layer (softmax cross-entropy, or a sigmoid per label), class-weighted
  as fine-tuning is, fitted full-batch with L-BFGS on standardised features; its L2 strength is the one
  of a small grid with the lowest validation loss. Chosen over scikit-learn's LogisticRegression because
  one code path serves single- and multi-label runs, and the fitted layer *is* the model's head: the
  split's checkpoint is a normal eic model that evaluate, predict, enrich and Grad-CAM use unchanged.
- knn: cosine k-nearest neighbours over the training part's embeddings, kept in the checkpoint as a
  layer (``models.KnnHead``).

The backbone is saved once as ``RUN/backbone.pt``; each split's ``model.pt`` holds its head and a
SHA-256-checked reference to it.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from ..core.config import TrainConfig
from ..core.errors import DatasetError
from ..core.progress import progress_bar
from ..core.tables import atomic_path, sidecar, write_json
from ..datasets.folders import decodes
from ..datasets.imageset import ImageSet, Split
from ..datasets.tasks import Task, task_for
from .checkpoint import save_backbone, save_head_checkpoint
from .embedding import (
    check_compatible,
    compute,
    describe,
    feature_model,
    feature_size,
    matrix,
    read_embeddings,
    rows_frame,
)
from .models import KnnHead, get_arch, set_head
from .run_folder import CheckpointMeta, RunFolder
from .splits import Evaluation, SplitOutput, SplitResult, score_split, start_split_folder, write_split_metrics

L2_GRID = (1e-4, 1e-3, 1e-2)

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class _Embedded:
    """Every image's embedding, and which images have one (the others, unreadable, are zeros and left out)."""

    vectors: np.ndarray
    readable: np.ndarray


@dataclass(frozen=True)
class _Backbone:
    """The frozen backbone the splits' heads share: the module, the run's file of it and that file's SHA-256."""

    module: nn.Module
    path: Path
    sha256: str


def train_heads(
    config: TrainConfig, images: ImageSet, splits: list[Split], chosen: range, device: torch.device
) -> list[Any]:
    """Fit and score a head for every chosen split; returns their ``SplitResult``s."""
    arch = get_arch(config.arch)
    module = feature_model(config.arch, config.weights, config.input_size)
    embedded = _features(config, images, module, device)
    run = RunFolder(config.output_dir)
    backbone = _Backbone(module, run.backbone, save_backbone(run.backbone, module, config.arch))
    results = []
    # A bar over the splits: ten folds of a probe on a CPU are a minute and more of fitting.
    with progress_bar(config.quiet, transient=True) as bar:
        task = bar.add_task(f"{config.method} splits", total=len(chosen))
        for i in chosen:
            folder = run.split(i)
            if config.resume and folder.finished:
                results.append(SplitResult.finished_earlier(folder))
            else:
                output = SplitOutput(folder, CheckpointMeta.for_split(config, arch, images.classes, i))
                scores, val_loss = _split(config, images, embedded, splits[i], output, backbone)
                results.append(SplitResult(i, scores, 0, 0, val_loss))
            bar.advance(task)
    return results


def _rows_of(paths: list[str], meta: dict[str, Any], config: TrainConfig, images: list[Path]) -> list[int | None]:
    """Each of the run's images' row in an embeddings table, or None. The table holds each path as eic embed was
    given it, relative to where it ran: it is matched by the image's place under the folder it was made from (its
    sidecar's ``data_dir``), not by what the path names from here (``_same_pictures`` checks a folder that is not
    the one embedded)."""
    made_from, given = meta.get("data_dir"), (meta.get("config") or {}).get("data_dir")
    if isinstance(made_from, str) and isinstance(given, str):  # each path as data_dir / the image's place in it
        base = Path(given)
        where = {
            (Path(path).relative_to(base) if Path(path).is_relative_to(base) else Path(path)).as_posix(): row
            for row, path in enumerate(paths)
        }
        return [where.get(p.relative_to(config.data_dir).as_posix()) for p in images]
    # A table from before its sidecar named the folder: paths matched by where they point from here.
    where = {str(Path(path).resolve()): row for row, path in enumerate(paths)}
    return [where.get(str(p.resolve())) for p in images]


CHECKED = 3  # images of a folder other than the one embedded whose vectors are computed again and compared


def _same_pictures(
    config: TrainConfig,
    images: ImageSet,
    rows: list[int | None],
    found: np.ndarray,
    backbone: nn.Module,
    device: torch.device,
    made_from: str,
) -> None:
    """A table embedded from another folder than the run's (a copy of the project on another machine, or another
    project whose files have the same names): a few of the run's images embedded again here must give the table's
    vectors, or the table is not of these pictures."""
    arch = get_arch(config.arch)
    matched = [i for i, row in enumerate(rows) if row is not None]
    chosen = [matched[k] for k in sorted({0, len(matched) // 2, len(matched) - 1})[:CHECKED]] if matched else []
    vectors, readable = compute(
        backbone, images.subset(np.asarray(chosen)), config.input_size, arch.mean, arch.std, device, config
    )
    theirs = found[[int(rows[i] or 0) for i in chosen]]  # each chosen image has its row
    cosine = (vectors * theirs).sum(1) / (np.linalg.norm(vectors, axis=1) * np.linalg.norm(theirs, axis=1) + 1e-12)
    # Refused unless compared, and alike: vectors embedded on a GPU in mixed precision stay well above 0.99 of the
    # float32 ones computed here; another picture's fall far below.
    if not readable.any() or (cosine[readable] < 0.99).any():
        raise DatasetError(
            f"{config.embeddings} was embedded from {made_from}, and its vectors are not those of the images "
            f"of the same names in {config.data_dir}: run eic embed on this run's folder"
        )
    log.info("%s: embedded from another folder; its vectors are of this folder's images", config.embeddings)


def _features(config: TrainConfig, images: ImageSet, backbone: nn.Module, device: torch.device) -> _Embedded:
    """The run's images' embeddings: from ``config.embeddings`` (checked) or computed and kept in the run."""
    arch = get_arch(config.arch)
    if config.embeddings is not None:
        table, meta = read_embeddings(config.embeddings)
        check_compatible(meta, config.arch, config.weights, config.input_size, config.embeddings)
        found = matrix(table)
        expected = feature_size(backbone, config.input_size)
        if found.shape[1] != expected:  # else the run is written and fails only at predict, with "size mismatch"
            raise DatasetError(
                f"{config.embeddings}: its vectors have {found.shape[1]} numbers, but {config.arch}'s features "
                f"have {expected}: run eic embed again with this run's arch"
            )
        rows = _rows_of(table["image"].to_list(), meta, config, images.paths)
        made_from = meta.get("data_dir")
        if isinstance(made_from, str) and Path(made_from).resolve() != config.data_dir.resolve():
            _same_pictures(config, images, rows, found, backbone, device, made_from)
        # eic embed leaves out what it cannot decode: such an image is unreadable here too, as when training
        # embeds the folder itself. An absent image that decodes was never embedded.
        missing = [p for row, p in zip(rows, images.paths, strict=True) if row is None and decodes(p)]
        if missing:
            raise DatasetError(
                f"{config.embeddings} lacks {len(missing)} image(s) of {config.data_dir} (e.g. "
                f"{missing[0].name}): run eic embed on this folder again"
            )
        readable = np.array([row is not None for row in rows])
        vectors = np.zeros((len(images), found.shape[1]), dtype=np.float32)
        vectors[readable] = found[[row for row in rows if row is not None]]
        return _Embedded(vectors, readable)
    vectors, readable = compute(backbone, images, config.input_size, arch.mean, arch.std, device, config)
    kept = RunFolder(config.output_dir).embeddings  # for eic audit's near-duplicate search
    with atomic_path(kept) as tmp:
        rows_frame(images, vectors, readable).write_parquet(tmp)
    write_json(
        sidecar(kept, "embedding"),
        {
            **describe(config.arch, config.weights, config.input_size, arch.mean, arch.std, images),
            "dim": vectors.shape[1],
        },
    )
    return _Embedded(vectors, readable)


def _split(
    config: TrainConfig, images: ImageSet, embedded: _Embedded, split: Split, output: SplitOutput, backbone: _Backbone
) -> tuple[dict[str, float], float]:
    folder = output.folder
    start_split_folder(folder, config, images)
    task = task_for(config.mode)
    features, readable, targets = embedded.vectors, embedded.readable, images.labels
    train, val, test = (part[readable[part]] for part in (split.train, split.val, split.test))
    head: KnnHead | nn.Linear
    if config.method == "knn":
        head = _knn(features[train], targets[train], len(images.classes), config.neighbours, task)
    else:
        head = linear_head(
            features[train],
            targets[train],
            features[val],
            targets[val],
            task,
            config.weighted_loss,
            len(images.classes),
        )
    evaluations = {}
    for name, part, positions in (
        ("val", val, np.flatnonzero(readable[split.val])),
        ("test", test, np.flatnonzero(readable[split.test])),
    ):
        logits = _logits(head, features[part])
        probs = task.from_logits(logits)
        evaluations[name] = Evaluation(_loss(task, probs, targets[part]), targets[part], probs, positions, logits)
    scores, extra = score_split(images, split, folder, evaluations["test"], evaluations["val"])
    val_loss = evaluations["val"].loss
    set_head(backbone.module, config.arch, head)
    meta = output.meta.model_copy(update={"best_val_loss": val_loss, **extra})
    save_head_checkpoint(folder.model, backbone.module, backbone.path, backbone.sha256, meta)
    write_split_metrics(folder, scores, split, 0, 0, val_loss, extra["temperature"])
    return scores, val_loss


def linear_head(
    x: np.ndarray, y: np.ndarray, x_val: np.ndarray, y_val: np.ndarray, task: Task, weighted: bool, classes: int
) -> nn.Linear:
    """The L2 strength of ``L2_GRID`` with the lowest validation loss; weights folded back to raw features."""
    mean, scale = x.mean(axis=0), x.std(axis=0) + 1e-6
    inputs = torch.from_numpy((x - mean) / scale).float()
    val_inputs = torch.from_numpy((x_val - mean) / scale).float()
    target = torch.from_numpy(y).float() if task.multilabel else torch.from_numpy(y).long()
    loss_fn = task.criterion(y, classes, weighted)
    best: tuple[float, nn.Linear] | None = None
    for l2 in L2_GRID:
        torch.manual_seed(0)
        layer = nn.Linear(x.shape[1], classes)
        optimizer = torch.optim.LBFGS(
            layer.parameters(), lr=1.0, max_iter=200, history_size=20, line_search_fn="strong_wolfe"
        )

        def closure(layer: nn.Linear = layer, optimizer: torch.optim.LBFGS = optimizer, l2: float = l2) -> torch.Tensor:
            optimizer.zero_grad()
            loss = loss_fn(layer(inputs), target) + l2 * layer.weight.pow(2).sum()
            loss.backward()
            return loss

        optimizer.step(closure)
        score = _loss(task, head_probabilities(layer, val_inputs.numpy(), task), y_val) if len(y_val) else 0.0
        if best is None or score < best[0]:
            best = (score, layer)
    assert best is not None
    return _unstandardise(best[1], mean, scale)


def _unstandardise(layer: nn.Linear, mean: np.ndarray, scale: np.ndarray) -> nn.Linear:
    """W (x - m) / s + b == (W / s) x + (b - W m / s): the same layer on the backbone's raw features."""
    weight = layer.weight.detach() / torch.from_numpy(scale).float()
    bias = layer.bias.detach() - weight @ torch.from_numpy(mean).float()
    raw = nn.Linear(layer.in_features, layer.out_features)
    with torch.no_grad():
        raw.weight.copy_(weight)
        raw.bias.copy_(bias)
    return raw


def _knn(x: np.ndarray, y: np.ndarray, classes: int, k: int, task: Task) -> KnnHead:
    head = KnnHead(len(x), x.shape[1], classes, k, task.multilabel)
    with torch.no_grad():
        head.bank.copy_(nn.functional.normalize(torch.from_numpy(x).float(), dim=1))
        onehot = (
            torch.from_numpy(y).float()
            if task.multilabel
            else nn.functional.one_hot(torch.from_numpy(y).long(), classes).float()
        )
        head.targets.copy_(onehot)
    return head


def _logits(head: nn.Module, x: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return head(torch.from_numpy(x).float()).numpy()


def head_probabilities(head: nn.Module, x: np.ndarray, task: Task) -> np.ndarray:
    return task.from_logits(_logits(head, x))


def _loss(task: Task, probs: np.ndarray, truth: np.ndarray) -> float:
    return task.nll(probs, truth) if len(truth) else math.inf
