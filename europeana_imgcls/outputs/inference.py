"""The runtime interface, and PyTorch's implementation of it.

Loading a run gives an ``Ensemble``: the chosen split models, all of one runtime, each a ``SplitModel`` that reads
the images its own way (``batches``: PyTorch's loader, or numpy arrays), turns a batch of uint8 pixels into logits
(numpy) and says what an output's journal must know of it and whether it can explain its labels (Grad-CAM).
Predict, enrich and evaluate hold an ensemble and never ask which runtime runs it; ``runtimes`` is the one place a
runtime's name becomes its implementation (``RunModel`` here; ``onnx_runtime.OnnxModel``).

Importing this module loads no torch: a process that labels with an exported model never does (importing torch is
over a second of its start). PyTorch's runtime imports it where it loads a run or computes.
"""

from __future__ import annotations

import logging
from abc import ABC, abstractmethod
from collections.abc import Iterable, Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Protocol, Self, overload

import numpy as np

from ..core.errors import ModelError
from ..datasets.imageset import ImageSet, Task
from ..datasets.tasks import task_for
from ..modelling.run_folder import CheckpointMeta, RunFolder, split_index, split_name

if TYPE_CHECKING:
    import torch
    from torch import nn

    from ..core.config import RuntimeSettings
    from ..datasets.folders import ModelInput
    from ..modelling.checkpoint import Checkpoint
    from ..modelling.explain import CamSession

log = logging.getLogger(__name__)
# A batch of uint8 pixels, N x 3 x size x size: a numpy array (``datasets.batches``), or a tensor from PyTorch's
# loader (on the device that decoded it). Logits come back as numpy whichever it is.
Pixels = Any
Batch = tuple[Pixels, Any, Any]  # pixels, targets (unreadable images marked), indices into the image set


@dataclass(frozen=True)
class ModelRequest:
    """What loading a run's split models takes, whatever runs them."""

    run: Path
    # Where: a device's name as the `device` setting gives it (auto, cpu, cuda, cuda:N, mps) or a torch device
    # (a torchrun rank's); each runtime resolves it (PyTorch's with torch, an export's with its own library).
    device: str | torch.device = "cpu"
    split: str = "all"  # all, best (the lowest validation loss) or N
    amp: bool = False  # mixed precision, where the runtime has it (PyTorch on CUDA)
    model_id: str | None = None  # the run's (RunFolder.model_id), when the caller has hashed it already
    files: Path | None = None  # the runtime's own files of the run (an export), where they are not the default

    @property
    def run_id(self) -> str:
        return self.model_id or RunFolder(self.run).model_id()


class Explainer(Protocol):
    """Heatmaps of one split model, a batch at a time (``modelling.explain.CamSession`` behind it)."""

    def forward(self, pixels: Pixels) -> np.ndarray | None:
        """Run a loader's batch through the model, keeping what the heatmaps need; its logits when they are the
        ones labelling would compute (else None: labelling makes its own pass)."""

    def heatmaps(self, targets: Sequence[int]) -> np.ndarray:
        """One heatmap per image of the last batch, for its class in ``targets``."""


@dataclass
class SplitModel(ABC):
    """One split's model, whatever runs it: its classes, task, temperature and thresholds, as its checkpoint says,
    and its logits. A runtime implements ``load`` and ``logits``, and says what it can do in the class variables."""

    split: str
    meta: CheckpointMeta

    explains: ClassVar[bool] = False  # whether it draws Grad-CAM heatmaps (``explainer``)
    # Whether the loader may decode its JPEGs on the device (where the model runs), or must hand over pixels on the
    # CPU (a runtime that reads numpy arrays).
    decodes_on_device: ClassVar[bool] = False
    files_option: ClassVar[str | None] = None  # the setting that names its files (``ModelRequest.files``), if any

    @classmethod
    @abstractmethod
    def load(cls, request: ModelRequest) -> Sequence[SplitModel]:
        """The run's split models ``request.split`` chooses, or a ModelError saying why they cannot run."""

    @abstractmethod
    def logits(self, pixels: Pixels) -> np.ndarray:
        """Logits (batch x classes, float32) of a batch of uint8 pixels as ``batches`` hands them over."""

    @classmethod
    def batches(cls, models: Sequence[Self], images: ImageSet, settings: RuntimeSettings) -> Iterable[Batch]:
        """``images`` in order, a batch at a time, as this runtime reads them, at its models' input size. By
        default PyTorch's loader, decoding on the CPU (its tensors); a runtime that reads numpy arrays hands over
        ``datasets.batches``' instead, and loads no torch."""
        import torch

        from ..modelling.runtime import inference_loader

        size = models[0].preprocessing[0]
        return inference_loader(images, size, torch.device("cpu"), settings, decode=False)

    @classmethod
    def batch_logits(cls, models: Sequence[Self], pixels: Pixels) -> np.ndarray:
        """Every model's logits on one batch: models x batch x classes. A runtime whose models share work (one
        backbone pass for every split) computes them together."""
        return np.stack([model.logits(pixels) for model in models])

    def journal_identity(self) -> dict[str, str]:
        """What an output's journal must know of this model beyond the run's model id (which names the
        checkpoints): a runtime that runs other files names them here, so that a resume never mixes two."""
        return {}

    def engine(self) -> str:
        """What computes its labels, in words (a summary, an annotation's model block): the runtime and, for an
        export, whether its file is float32 or int8, whose labels may differ at a threshold."""
        return "PyTorch"

    def explainer(self, method: str) -> AbstractContextManager[Explainer]:
        """Heatmaps by ``method`` (gradcam, ...), for a runtime that ``explains``."""
        raise ModelError(f"{self.split}: this runtime draws no heatmaps; label with the run's PyTorch models")

    @property
    def classes(self) -> list[str]:
        return self.meta.classes

    @property
    def task(self) -> Task:
        return task_for(self.meta.mode)

    @property
    def temperature(self) -> float:
        """Fitted on the split's validation part when it was trained (1.0 for runs trained before that)."""
        return self.meta.temperature

    def thresholds(self, override: float | None = None) -> np.ndarray | None:
        """Decision thresholds (a task that tunes them): ``override`` for every label, else those tuned in
        training; None where the task decides without them."""
        return self.task.decision_thresholds(self.meta.thresholds, override, len(self.classes))

    @property
    def preprocessing(self) -> tuple[int, tuple[float, ...], tuple[float, ...]]:
        return self.meta.input_size, self.meta.mean, self.meta.std


class Ensemble(Sequence[SplitModel]):
    """A run's chosen split models, all of one runtime (one loader made them): what predict, enrich and evaluate
    hold. Its split models share a task and classes (``load_run`` and an export's sidecar check it)."""

    def __init__(self, models: Sequence[SplitModel]) -> None:
        if not models:
            raise ModelError("no split model to label with")
        self.models = list(models)
        self.runtime = type(self.models[0])

    @overload
    def __getitem__(self, index: int) -> SplitModel: ...
    @overload
    def __getitem__(self, index: slice) -> Sequence[SplitModel]: ...
    def __getitem__(self, index: int | slice) -> SplitModel | Sequence[SplitModel]:
        return self.models[index]

    def __len__(self) -> int:
        return len(self.models)

    @property
    def splits(self) -> list[str]:
        return [model.split for model in self.models]

    @property
    def explains(self) -> bool:
        return self.runtime.explains

    @property
    def decodes_on_device(self) -> bool:
        return self.runtime.decodes_on_device

    def journal_identity(self) -> dict[str, list[str]]:
        """What an output's journal must know of these models beyond the run's model id, split by split."""
        said = [model.journal_identity() for model in self.models]
        return {key: [each[key] for each in said] for key in said[0]}

    def batches(self, images: ImageSet, settings: RuntimeSettings) -> Iterable[Batch]:
        """``images`` in order, a batch at a time, as the runtime reads them (its models share their input)."""
        return self.runtime.batches(self.models, images, settings)

    def logits(self, pixels: Pixels, first: np.ndarray | None = None) -> np.ndarray:
        """Every model's logits on one batch of a loader's pixels: models x batch x classes (float32); ``first``:
        the first model's, already computed (by the pass that drew its heatmaps)."""
        rest = self.models if first is None else self.models[1:]
        computed = [self.runtime.batch_logits(rest, pixels)] if rest else []
        return np.concatenate(([] if first is None else [first[None]]) + computed).astype(np.float32, copy=False)

    def probabilities(self, pixels: Pixels, calibrated: bool = False, first: np.ndarray | None = None) -> np.ndarray:
        """Every model's probabilities (its task's activation) on one batch: models x batch x classes;
        ``calibrated``: with each model's temperature applied to its logits."""
        logits = self.logits(pixels, first)
        return np.stack(
            [
                model.task.from_logits(z / (model.temperature if calibrated else 1.0))
                for model, z in zip(self.models, logits, strict=True)
            ]
        ).astype(np.float32)

    def explainer(self, method: str) -> AbstractContextManager[Explainer]:
        """The heatmaps of the first split model (a runtime that ``explains``)."""
        return self.models[0].explainer(method)

    def by_preprocessing(self) -> list[Ensemble]:
        """The models in groups that take the same input (size, mean and std): one pass over the images each."""
        groups: dict[tuple, list[SplitModel]] = {}
        for model in self.models:
            groups.setdefault(model.preprocessing, []).append(model)
        return [Ensemble(members) for members in groups.values()]


# ---------------------------------------------------------------------------------------------
# PyTorch


@dataclass
class RunModel(SplitModel):
    """One split's best model in PyTorch, with the preprocessing it was trained with, on ``device``."""

    model: nn.Module
    device: torch.device
    dtype: torch.dtype | None = None  # autocast's (mixed precision on CUDA); None: full precision
    # Frozen-backbone runs: the backbone every split shares, and this split's head. Their splits' logits
    # come from one backbone pass per batch, not one per split.
    features: nn.Module | None = None
    head: nn.Module | None = None
    _input: ModelInput | None = field(default=None, repr=False)

    explains: ClassVar[bool] = True
    decodes_on_device: ClassVar[bool] = True

    @classmethod
    def load(cls, request: ModelRequest) -> Sequence[RunModel]:
        from ..modelling.runtime import autocast_dtype, resolve_device

        device = resolve_device(str(request.device))
        models = load_run(request.run, device, request.split)
        for model in models:
            model.dtype = autocast_dtype(device, request.amp)
        return models

    @classmethod
    def batches(cls, models: Sequence[Self], images: ImageSet, settings: RuntimeSettings) -> Iterable[Batch]:
        from ..modelling.runtime import inference_loader

        size, device = models[0].preprocessing[0], models[0].device
        return inference_loader(images, size, device, settings, decode=cls.decodes_on_device)

    def model_input(self) -> ModelInput:
        """What turns a loader's pixels into this model's input on its device (made once)."""
        from ..datasets.folders import ModelInput

        if self._input is None:
            _, mean, std = self.preprocessing
            self._input = ModelInput(mean, std, self.device)
        return self._input

    def logits(self, pixels: Pixels) -> np.ndarray:
        return self.batch_logits([self], pixels)[0]

    @classmethod
    def batch_logits(cls, models: Sequence[Self], pixels: Pixels) -> np.ndarray:
        import torch

        # The splits of a group share their device, precision and preprocessing (a run's, or those
        # ``Ensemble.by_preprocessing`` groups), so the pixels become their input once.
        device, dtype = models[0].device, models[0].dtype
        with torch.inference_mode():
            inputs = models[0].model_input()(torch.as_tensor(pixels))
            with torch.autocast(device_type=device.type, dtype=dtype, enabled=dtype is not None):
                logits = _logits(models, inputs)
        return np.stack([z.float().cpu().numpy() for z in logits])

    @contextmanager
    def explainer(self, method: str) -> Iterator[Explainer]:
        # Imported when heatmaps are asked for: the grad-cam package (and what it imports) costs seconds of a start.
        from ..modelling.explain import cam_session
        from ..modelling.models import get_arch

        net, arch = self.model.float(), get_arch(self.meta.arch)
        with cam_session(net, arch.cam_layer(net), method, arch.cam_reshape(net)) as session:
            yield _GradCam(self, session)


@dataclass
class _GradCam:
    """PyTorch's heatmaps of one split model."""

    model: RunModel
    session: CamSession

    def forward(self, pixels: Pixels) -> np.ndarray | None:
        # One forward pass labels with the first split and draws its heatmaps (at full precision: with mixed
        # precision the labelling pass is another one, so that figures never change a label).
        logits = self.session.forward(self.model.model_input()(pixels))
        return logits.float().cpu().numpy() if self.model.dtype is None else None

    def heatmaps(self, targets: Sequence[int]) -> np.ndarray:
        return self.session.heatmaps(targets)


class LoadedRun(list[RunModel]):
    """A run's chosen split models, and the splits left out because their training diverged (which a later choice
    among the models, as export's, must know to say why a split is not there)."""

    diverged: list[tuple[str, CheckpointMeta]]


def load_run(run: Path, device: torch.device, which: str = "all") -> LoadedRun:
    """The PyTorch split models of ``run`` (full precision): all, the one with the lowest validation loss ('best'),
    or split N."""
    # Imported here, not above: torch and the model registry (which imports torchvision: over a second of every
    # start each), which predict and enrich with exported models (runtime onnx, openvino) never need.
    import torch

    from ..modelling.checkpoint import backbone_and_head, load_checkpoint, model_from_checkpoint

    states: list[tuple[str, Checkpoint]] = []
    diverged: list[tuple[str, Checkpoint]] = []
    for path in RunFolder(run).model_paths():
        checkpoint = load_checkpoint(path)
        folder = path.parent.name
        name = folder if split_index(folder) is not None else split_name(checkpoint.meta.split)
        (states if checkpoint.finite else diverged).append((name, checkpoint))
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
        item = RunModel(name, meta, model, device)
        if meta.backbone_sha256:  # one copy of the shared backbone, not one per split
            item.features, item.head = backbone_and_head(model, meta.arch, trunks.get(meta.backbone_sha256))
            trunks[meta.backbone_sha256] = item.features
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
        return split_index(name) == int(which) or meta.split == int(which)

    if any(is_it(n, m) for n, m in diverged):
        raise ModelError(
            f"{run}: split {which}'s model holds weights that are not finite (its training "
            "diverged): choose another split, or train it again"
        )
    chosen = [i for i, (n, m) in enumerate(named) if is_it(n, m)]
    if not chosen:
        raise ModelError(f"{run}: no split {which}; it has {', '.join(name for name, _ in named)}")
    return chosen


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
