"""Loading the models of a run and running them over images: shared by evaluate and predict."""

from __future__ import annotations

import copy
import logging
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
from torch import nn

from ..core.errors import ModelError
from ..datasets.folders import ModelInput
from ..datasets.tasks import Task, task_for
from ..modelling.run_folder import CheckpointMeta, RunFolder

if TYPE_CHECKING:
    from ..modelling.checkpoint import Checkpoint

log = logging.getLogger(__name__)


@dataclass
class SplitModel:
    """One split's model, whatever runs it (PyTorch: ``RunModel``; ONNX Runtime: ``onnx_runtime.OnnxModel``):
    its classes, task, temperature and thresholds, as its checkpoint says."""

    split: str
    meta: CheckpointMeta

    @property
    def classes(self) -> list[str]:
        return self.meta.classes

    @property
    def multilabel(self) -> bool:
        return self.meta.multilabel

    @property
    def task(self) -> Task:
        return task_for(self.meta.mode)

    @property
    def temperature(self) -> float:
        """Fitted on the split's validation part when it was trained (1.0 for runs trained before that)."""
        return self.meta.temperature

    def thresholds(self, override: float | None = None) -> np.ndarray | None:
        """Decision thresholds (multi-label): ``override`` for every label, else those tuned in training; None
        where the task decides without them."""
        return self.task.decision_thresholds(self.meta.thresholds, override, len(self.classes))

    @property
    def preprocessing(self) -> tuple[int, tuple[float, ...], tuple[float, ...]]:
        return self.meta.input_size, self.meta.mean, self.meta.std


class ExportedModel(SplitModel, ABC):
    """A split model whose graph holds its own preprocessing (``onnx_runtime.OnnxModel``): it takes a loader's
    uint8 pixels as they come."""

    @abstractmethod
    def pixels_to_logits(self, pixels: torch.Tensor) -> np.ndarray:
        """Logits (batch x classes, float32) of a loader's batch of uint8 pixels."""


@dataclass
class RunModel(SplitModel):
    """One split's best model in PyTorch, with the preprocessing it was trained with."""

    model: nn.Module
    # Frozen-backbone runs: the backbone every split shares, and this split's head. Their splits' logits
    # come from one backbone pass per batch, not one per split.
    features: nn.Module | None = None
    head: nn.Module | None = None
    _input: ModelInput | None = field(default=None, repr=False)

    def model_input(self, device: torch.device) -> ModelInput:
        """What turns a loader's pixels into this model's input on ``device`` (made once per device)."""
        if self._input is None or self._input.device != device:
            _, mean, std = self.preprocessing
            self._input = ModelInput(mean, std, device)
        return self._input


class LoadedRun(list[RunModel]):
    """A run's chosen split models, and the splits left out because their training diverged (which a later choice
    among the models, as export's, must know to say why a split is not there)."""

    diverged: list[tuple[str, CheckpointMeta]]


def load_run(run: Path, device: torch.device, which: str = "all") -> LoadedRun:
    """The split models of ``run``: all, the one with the lowest validation loss ('best'), or split N."""
    # Imported here, not above: the model registry imports torchvision (over a second of every start), which
    # predict and enrich with exported models (runtime onnx) never need.
    from ..modelling.checkpoint import load_checkpoint, model_from_checkpoint
    from ..modelling.models import get_head

    states: list[tuple[str, Checkpoint]] = []
    diverged: list[tuple[str, Checkpoint]] = []
    for path in RunFolder(run).model_paths():
        checkpoint = load_checkpoint(path)
        name = path.parent.name if path.parent.name.startswith("split_") else f"split_{checkpoint.meta.split}"
        (states if _finite(checkpoint) else diverged).append((name, checkpoint))
    if diverged and not states:
        raise ModelError(
            f"{run}: every split's model holds weights that are not finite (training diverged): "
            "train again, with a lower `learning_rate`"
        )
    keep = chosen_splits([(n, c.meta) for n, c in states], which, run, [(n, c.meta) for n, c in diverged])
    if diverged:
        said = ", ".join(name for name, _ in diverged)
        log.warning("%s: %s left out: weights that are not finite (its training diverged)", run, said)
    states = [states[i] for i in keep]
    if len({(tuple(c.meta.class_names), c.meta.mode) for _, c in states}) > 1:
        raise ModelError(f"{run}: its splits were trained on different classes or modes")
    models = LoadedRun()
    models.diverged = [(n, c.meta) for n, c in diverged]
    trunks: dict[str, nn.Module] = {}
    for name, checkpoint in states:
        meta = checkpoint.meta
        model = model_from_checkpoint(checkpoint).to(device)
        if device.type == "cuda":
            model = model.to(memory_format=torch.channels_last)
        item = RunModel(name, meta, model)
        if meta.backbone_sha256:
            if meta.backbone_sha256 not in trunks:  # one copy of the shared backbone, not one per split
                trunks[meta.backbone_sha256] = _trunk(model, meta.arch)
            item.features = trunks[meta.backbone_sha256]
            item.head = get_head(model, meta.arch)
        models.append(item)
    return models


def chosen_splits(
    named: Sequence[tuple[str, CheckpointMeta]],
    which: str,
    run: Path,
    diverged: Sequence[tuple[str, CheckpointMeta]] = (),
) -> list[int]:
    """Which of a run's usable split models ``which`` means: all, the one of lowest validation loss ('best'), or
    split N (refused, saying why, where it diverged or does not exist)."""
    if which == "all":
        return list(range(len(named)))
    if which == "best":
        return [min(range(len(named)), key=lambda i: named[i][1].best_val_loss)]

    def is_it(name: str, meta: CheckpointMeta) -> bool:
        return name == f"split_{which}" or meta.split == int(which)

    if any(is_it(n, m) for n, m in diverged):
        raise ModelError(
            f"{run}: split {which}'s model holds weights that are not finite (its training "
            "diverged): choose another split, or train it again"
        )
    chosen = [i for i, (n, m) in enumerate(named) if is_it(n, m)]
    if not chosen:
        raise ModelError(f"{run}: no split {which}; it has {', '.join(name for name, _ in named)}")
    return chosen


def _finite(checkpoint: Checkpoint) -> bool:
    """Whether a model can say anything: a split whose training diverged holds NaN or infinite weights, and would
    label every image with its first class at a confidence of NaN."""
    return all(bool(torch.isfinite(w).all()) for w in checkpoint.weights.values() if w.is_floating_point())


def _trunk(model: nn.Module, arch: str) -> nn.Module:
    """A copy of ``model`` that returns the features its head reads."""
    from ..modelling.models import set_head  # see load_run

    trunk = copy.deepcopy(model)
    set_head(trunk, arch, nn.Identity())
    return trunk.eval()


def _logits(models: Sequence[RunModel], inputs: torch.Tensor) -> list[torch.Tensor]:
    """Each model's logits; models that share a frozen backbone share its one pass."""
    features: dict[int, torch.Tensor] = {}
    out = []
    for item in models:
        if item.features is not None and item.head is not None:
            key = id(item.features)
            if key not in features:
                features[key] = item.features(inputs)
            out.append(item.head(features[key]))
        else:
            out.append(item.model(inputs))
    return out


@torch.inference_mode()
def logits_of(
    models: Sequence[SplitModel],
    inputs: torch.Tensor,
    device: torch.device,
    dtype: torch.dtype | None,
    first: torch.Tensor | None = None,
) -> np.ndarray:
    """Raw logits of every model on one batch of a loader's pixels: models x batch x classes (float32);
    ``first``: the first model's, already computed (by the pass that draws its heatmaps)."""
    exported = [m for m in models if isinstance(m, ExportedModel)]
    if exported:  # the preprocessing is in their graphs (a run's splits are all exported or none)
        return np.stack([m.pixels_to_logits(inputs) for m in exported])
    in_torch = [m for m in models if isinstance(m, RunModel)]
    inputs = in_torch[0].model_input(device)(inputs)
    with torch.autocast(device_type=device.type, dtype=dtype, enabled=dtype is not None):
        logits = _logits(in_torch if first is None else in_torch[1:], inputs)
    return np.stack([z.float().cpu().numpy() for z in ([] if first is None else [first]) + logits])


def probabilities(
    models: Sequence[SplitModel],
    inputs: torch.Tensor,
    device: torch.device,
    dtype: torch.dtype | None,
    calibrated: bool = False,
    first: torch.Tensor | None = None,
) -> np.ndarray:
    """Probabilities (softmax, or sigmoid per label for multi-label models) of every model on one batch:
    models x batch x classes; ``calibrated``: with each model's temperature applied to its logits; ``first``:
    the first model's logits, already computed."""
    logits = logits_of(models, inputs, device, dtype, first)
    return np.stack(
        [
            item.task.from_logits(z / (item.temperature if calibrated else 1.0))
            for item, z in zip(models, logits, strict=True)
        ]
    ).astype(np.float32)
