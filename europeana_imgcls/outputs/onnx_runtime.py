"""A run's exported models (``eic export``) run by ONNX Runtime: ``eic predict`` and ``eic enrich`` with
``runtime`` onnx.

An export is a folder: one ``split_<i>.onnx`` per exported split and ``model.json``, the sidecar that says what
each file is (its SHA-256, the split's checkpoint metadata: classes, temperature, thresholds, input size) and
which run it came from (the run's model id). Loading checks both ways, before any image is read: the run given
must be the one exported, and every file must be the one the sidecar describes (and say so itself, in its
metadata), so an ONNX file from another run, or a sidecar beside the wrong files, is refused naming both.
"""

from __future__ import annotations

import json
import logging
import math
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, ClassVar, Final, Literal, Self

import numpy as np
from pydantic import ConfigDict, Field, PositiveFloat, ValidationError, model_validator

from ..core.config import Mode
from ..core.errors import ConfigError, ModelError
from ..core.sidecars import Sidecar, first_problem, read_typed
from ..core.tables import file_sha256
from ..datasets.batches import array_batches
from ..datasets.imageset import ImageSet
from ..modelling.processes import cores
from ..modelling.run_folder import SPLIT_NAME_PATTERN, CheckpointMeta, RunFolder, split_name
from .inference import Batch, ModelRequest, Pixels, SplitModel

if TYPE_CHECKING:
    import torch

    from ..core.config import RuntimeSettings

SIDECAR: Final = "model.json"
EXPORT_FORMAT: Final = "europeana-imgcls/onnx-v1"
INPUT, LOGITS, PROBABILITIES = "pixels", "logits", "probabilities"
EXTRA_HINT: Final = "pip install 'europeana-imgcls[onnx]'"
GPU_HINT: Final = "pip install onnxruntime-gpu"
log = logging.getLogger(__name__)


_FILE = r"^[A-Za-z0-9_][A-Za-z0-9_.-]*$"  # a plain name in the export folder: no separator, no "..", not hidden
_SHA256 = r"^[0-9a-f]{64}$"


class Int8Record(Sidecar):
    """How an int8 split was made and how far it moved from its float32 graph (``eic export --quantize``)."""

    method: Literal["static", "dynamic"]
    # The share of the split's test images given the same labels as by the float32 graph (as eic predict gives
    # them) and, where ``annotations``, the same annotations (as eic enrich emits them at the run's thresholds).
    agreement: float = Field(ge=0, le=1)
    annotations: bool = False
    # The same, by the runtime that ran the int8 file (onnx; openvino where it was installed): ``agreement`` is the
    # lowest of them.
    by_runtime: dict[Literal["onnx", "openvino"], Annotated[float, Field(ge=0, le=1)]] = {}
    images: int = Field(ge=1)  # how many test images that was measured on
    min_agreement: float = Field(ge=0, le=1)  # the threshold it was held to: under it nothing is written
    calibration_images: int = Field(ge=0)  # the split's training images its ranges were measured on (dynamic: 0)
    per_channel: bool
    reduce_range: bool
    kept_float: list[str] = Field(max_length=100_000)  # the graph's nodes left in float32
    # The accuracy control (outputs/quantise.py): the nodes it kept in float (among kept_float), its agreement with
    # float32 on the calibration images by runtime, on how many, and whether it stopped at its cap.
    controlled: list[str] = Field([], max_length=100_000)
    control_agreement: dict[Literal["onnx", "openvino"], Annotated[float, Field(ge=0, le=1)]] = {}
    control_images: int = Field(0, ge=0)
    capped: bool = False
    metric: str  # the task's headline score on the same test images, before and after (None: no truth read)
    before: float | None = None
    after: float | None = None

    @model_validator(mode="after")
    def _held(self) -> Int8Record:
        if self.agreement < self.min_agreement or any(v < self.agreement for v in self.by_runtime.values()):
            raise ValueError("its int8 agreement is under the threshold it was held to")
        return self


class ExportedSplit(Sidecar):
    """One split's file in an export."""

    split: str = Field(pattern=SPLIT_NAME_PATTERN)
    file: str = Field(pattern=_FILE, max_length=255)
    sha256: str = Field(pattern=_SHA256)
    meta: dict[str, Any]  # the split's CheckpointMeta (without the training settings): checked by ``checkpoint``
    # Tensor data ONNX keeps outside the file (models over 2 GB): each such file's SHA-256, so the digest of the
    # .onnx file, which names them, does not leave their contents unchecked.
    external: dict[Annotated[str, Field(pattern=_FILE, max_length=255)], Annotated[str, Field(pattern=_SHA256)]] = {}
    max_difference: float | None = None  # against PyTorch, measured at export (float32 exports)
    int8: Int8Record | None = None  # an int8 file: how it was made and held to float32 (None: float32)

    def checkpoint(self) -> CheckpointMeta:
        """The split's metadata (a value JSON could not hold, an infinite validation loss, was written null: its
        default stands)."""
        return CheckpointMeta.model_validate({k: v for k, v in self.meta.items() if v is not None})


class ExportInput(Sidecar):
    """How to feed an export's files: uint8 RGB pixels, resized in the graph to ``size``."""

    model_config = ConfigDict(extra="allow")  # merged with Sidecar's: a reader may add fields of its own

    name: Literal["pixels"]
    type: Literal["uint8"]
    size: int = Field(ge=8, le=4096)
    mean: tuple[float, float, float]
    std: tuple[PositiveFloat, PositiveFloat, PositiveFloat]


class ExportSidecar(Sidecar):
    """``model.json``: what an export holds and how to feed it (docs/deploy.md reads it to the letter). Checked
    against itself on reading: each split's classes are the export's, in its order, its temperature positive, its
    input the export's; the splits are the run's, named once."""

    format: Literal["europeana-imgcls/onnx-v1"]
    model_id: str = Field(pattern=r"^[0-9a-f]{8,64}$")  # the run's model id: the digest of the checkpoints exported
    run: str
    classes: list[Annotated[str, Field(min_length=1)]] = Field(min_length=1, max_length=100_000)
    mode: Mode
    input: ExportInput
    outputs: dict[str, Any]
    splits: list[ExportedSplit] = Field(min_length=1)
    best: str  # the run's split of lowest validation loss (``split`` best)
    run_splits: list[str] = Field(min_length=1)
    thresholds: dict[str, float | None] | None  # eic enrich's, from the run's calibration; None: not calibrated
    precision_target: float | None = Field(None, gt=0, le=1)
    quantize: Literal["none", "dynamic", "static"] = "none"
    opset: int = Field(ge=7, le=30)
    eic_version: str

    @model_validator(mode="after")
    def _consistent(self) -> ExportSidecar:
        if len(set(self.classes)) != len(self.classes):
            raise ValueError("a class is named twice")
        if len(set(self.run_splits)) != len(self.run_splits) or self.best not in self.run_splits:
            raise ValueError("run_splits names a split twice, or not the best one")
        files = [s.file for s in self.splits] + [name for s in self.splits for name in s.external]
        if len({s.split for s in self.splits}) != len(self.splits) or len(set(files)) != len(files):
            raise ValueError("a split or a file is named twice")
        for exported in self.splits:
            self._check_split(exported)
        if self.quantize == "none" and any(s.int8 is not None for s in self.splits):
            raise ValueError("a float32 export describes an int8 file")
        if self.thresholds is not None and set(self.thresholds) - set(self.classes):
            raise ValueError("thresholds name a class the export does not have")
        return self

    def _check_split(self, exported: ExportedSplit) -> None:
        if exported.split not in self.run_splits:
            raise ValueError(f"{exported.split} is not one of run_splits")
        try:
            meta = exported.checkpoint()
        except ValidationError as exc:
            raise ValueError(f"{exported.split}'s metadata: {first_problem(exc)}") from None
        if meta.class_names != self.classes or meta.mode != self.mode:
            raise ValueError(f"{exported.split}'s classes or mode differ from the export's")
        if not (math.isfinite(meta.temperature) and meta.temperature > 0):
            raise ValueError(f"{exported.split}'s temperature is not a positive number")
        if (
            meta.input_size != self.input.size
            or meta.thresholds is not None
            and len(meta.thresholds) != len(self.classes)
        ):
            raise ValueError(f"{exported.split}'s input size or thresholds differ from the export's")


def read_sidecar(folder: Path) -> ExportSidecar:
    path = folder / SIDECAR
    if not path.is_file():
        raise ModelError(f"{folder}: no {SIDECAR} in it; export the run first (eic export RUN) or pass `onnx_model`")
    return read_typed(
        path,
        ExportSidecar,
        what="the sidecar of an eic export",
        remedy="export the run again (eic export RUN --overwrite)",
        error=ModelError,
    )


def onnxruntime(needed_by: str = "`runtime` onnx") -> Any:
    """ONNX Runtime, or one line naming the extra that brings it."""
    try:
        import onnxruntime as ort  # an optional dependency: only runtime onnx and eic export need it
    except ImportError:
        raise ConfigError(f"{needed_by} needs ONNX Runtime, which is not installed: {EXTRA_HINT}") from None
    return ort


class ArrayModel(SplitModel):
    """A split model that reads numpy arrays (an export's, run by ONNX Runtime or OpenVINO): its images come from
    ``datasets.batches``, decoded ahead in threads, and nothing it runs loads torch."""

    runtime_name: ClassVar[str]  # as messages name the runtime
    precision: str  # each runtime's dataclass holds it: float32, or int8 and how (its export's sidecar says)

    def engine(self) -> str:
        return f"{self.runtime_name}, {self.precision}"

    @classmethod
    def batches(cls, models: Sequence[Self], images: ImageSet, settings: RuntimeSettings) -> Iterable[Batch]:
        return array_batches(images, models[0].preprocessing[0], settings.batch_size, decode_threads(settings))


def decode_threads(settings: RuntimeSettings) -> int:
    """Threads that decode ahead of an exported model: ``num_workers`` where it is given, else one per core the
    process is given (the model's own threads wait on the decoding as much as they compete with it)."""
    return settings.num_workers if settings.num_workers is not None else cores()


@dataclass
class OnnxModel(ArrayModel):
    """One exported split: an ONNX Runtime session whose graph holds the preprocessing, so it takes uint8 pixels as
    they come (on the CPU: ONNX Runtime reads numpy arrays, and copies them to its own device)."""

    session: Any = None
    sha256: str = ""  # the file's: an output's later runs must use the same file (float32 or int8)
    precision: str = "float32"

    files_option: ClassVar[str | None] = "onnx_model"
    runtime_name: ClassVar[str] = "ONNX Runtime"

    @classmethod
    def load(cls, request: ModelRequest) -> Sequence[OnnxModel]:
        return load_export(request.run, request.files, request.split, request.device, request.run_id)

    def logits(self, pixels: Pixels) -> np.ndarray:
        (logits,) = self.session.run([LOGITS], {INPUT: np.ascontiguousarray(pixels, dtype=np.uint8)})
        return np.asarray(logits, dtype=np.float32)

    def journal_identity(self) -> dict[str, str]:
        return {"onnx_files": self.sha256}


@dataclass(frozen=True)
class Device:
    """Where ONNX Runtime runs a session, as torch names a device (``session`` takes either)."""

    type: str
    index: int | None = None


def device_of(name: str | torch.device) -> Device:
    """The device a session runs on for `device` ``name`` (auto, cpu, cuda, cuda:N, mps; or a torchrun rank's torch
    device), without torch: CUDA where it is named (or auto) and ONNX Runtime has it (onnxruntime-gpu), which falls
    back to the CPU itself where the machine has no GPU; else the CPU."""
    kind, _, index = str(name).partition(":")
    has_cuda = "CUDAExecutionProvider" in onnxruntime().get_available_providers()
    if kind == "cuda" and not has_cuda:
        log.warning("`device` %s: this ONNX Runtime has no CUDA (%s): it runs on the CPU", name, GPU_HINT)
    if kind not in ("auto", "cuda") or not has_cuda:
        return Device("cpu")
    return Device("cuda", int(index or os.environ.get("LOCAL_RANK", "0")))


def session(path: Path, device: torch.device | Device) -> Any:
    """An ONNX Runtime session of ``path``: CUDA where eic runs on CUDA and onnxruntime-gpu has it."""
    ort = onnxruntime()
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.intra_op_num_threads = cores()  # the cores eic is given (taskset, OMP_NUM_THREADS)
    # Its threads sleep between operators rather than spin: the threads that decode the next images share the
    # cores (a 2-core machine's int8 resnet18: a quarter less CPU a batch, and sooner done, measured under load).
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    providers: list[Any] = ["CPUExecutionProvider"]
    if device.type == "cuda" and "CUDAExecutionProvider" in ort.get_available_providers():
        # This process's GPU (its torchrun rank's, or cuda:N), not the first one.
        providers.insert(0, ("CUDAExecutionProvider", {"device_id": device.index or 0}))
    try:
        return ort.InferenceSession(str(path), options, providers=providers)
    except Exception as exc:  # ONNX Runtime raises its own types for a file it cannot read
        raise ModelError(f"{path}: ONNX Runtime cannot load it ({str(exc).splitlines()[0][:200]})") from None


def load_export(
    run: Path, given: Path | None, which: str, device: str | torch.device, model_id: str
) -> list[OnnxModel]:
    """The exported split models of ``run`` (whose ``RunFolder.model_id`` is ``model_id``) chosen as ``load_run``
    chooses (best, all or N), or a ModelError saying which files or which run do not match."""
    where = device_of(device)  # the extra first: without it nothing below can be used
    models = []
    for file in export_files(run, given, which, model_id):
        runner = session(file.path, where)
        file.check_said(runner.get_modelmeta().custom_metadata_map)
        models.append(OnnxModel(file.exported.split, file.meta, runner, file.exported.sha256, file.precision))
    return models


@dataclass(frozen=True)
class ExportFile:
    """One exported split's file, checked against its sidecar (digest, tensor data), for a runtime to open."""

    path: Path
    exported: ExportedSplit
    sidecar: ExportSidecar

    @property
    def meta(self) -> CheckpointMeta:
        return self.exported.checkpoint()  # checked when the sidecar was read

    @property
    def precision(self) -> str:
        """float32, or int8 and how it was made, as its sidecar records."""
        int8 = self.exported.int8
        return "float32" if int8 is None else f"int8 ({int8.method})"

    def check_said(self, said: Mapping[str, Any]) -> None:
        """What the file says of itself (its ONNX metadata, as the runtime that opened it reads it) is what the
        sidecar describes: a file moved beside another run's sidecar is refused."""
        split, model_id = said.get("split"), said.get("model_id")
        if model_id != self.sidecar.model_id or split != self.exported.split:
            raise ModelError(
                f"{self.path} says it is {split} of model {model_id}, but {self.path.parent / SIDECAR} "
                f"describes {self.exported.split} of model {self.sidecar.model_id}: export the run again"
            )
        differ = _what_differs(said, self.meta)  # an export from before the file said them: not known
        if differ:
            raise ModelError(
                f"{self.path} says other {differ} than {self.path.parent / SIDECAR} gives its {split}: the "
                "sidecar was edited since the export; export the run again"
            )


def _what_differs(said: Mapping[str, Any], meta: CheckpointMeta) -> str:
    """Which of the classes and the temperature an ONNX file says (where it says them) the sidecar's differ from."""
    differ = []
    try:
        if "classes" in said and json.loads(said["classes"]) != list(meta.class_names):
            differ.append("classes")
        if "temperature" in said and not math.isclose(float(said["temperature"]), meta.temperature, rel_tol=1e-9):
            differ.append("temperature")
    except (ValueError, TypeError):
        differ.append("classes or temperature (unreadable there)")
    return " and ".join(differ)


def export_files(run: Path, given: Path | None, which: str, model_id: str) -> list[ExportFile]:
    """The files of ``run``'s export (``given``, else RUN/onnx) that ``which`` chooses, each the one its sidecar
    describes, from the run given (whose model id is ``model_id``): else a ModelError naming what differs."""
    folder = given if given is not None else RunFolder(run).onnx
    if not folder.is_dir():
        raise ModelError(f"{folder}: no such export; run eic export {run} first (or pass `onnx_model` FOLDER)")
    sidecar = read_sidecar(folder)
    if sidecar.model_id != model_id:
        raise ModelError(
            f"{folder / SIDECAR} was exported from run {sidecar.run} (model {sidecar.model_id}), not from {run} "
            f"(model {model_id}): export {run} again (eic export), or pass the run it came from"
        )
    files = []
    for exported in _chosen(sidecar, which, folder):
        path = folder / exported.file
        if not _regular(path):
            raise ModelError(f"{path}: missing from the export {folder}; export the run again")
        if file_sha256(path) != exported.sha256:
            raise ModelError(
                f"{path} is not the file {folder / SIDECAR} describes (its SHA-256 differs): export the run again"
            )
        _check_external(folder, exported)
        files.append(ExportFile(path, exported, sidecar))
    return files


def _check_external(folder: Path, exported: ExportedSplit) -> None:
    """The tensor files an exported split keeps beside it are the ones it was exported with."""
    for name, digest in exported.external.items():
        path = folder / name
        if not _regular(path) or file_sha256(path) != digest:
            raise ModelError(
                f"{path}: the tensor data of {exported.file} is missing or not the file {folder / SIDECAR} describes "
                "(its SHA-256 differs): export the run again"
            )


def _regular(path: Path) -> bool:
    """A regular file, not a link out of the export nor a pipe that would block its reader."""
    return path.is_file() and not path.is_symlink()


def _chosen(sidecar: ExportSidecar, which: str, folder: Path) -> list[ExportedSplit]:
    exported = {s.split: s for s in sidecar.splits}
    if which == "best":
        wanted = [sidecar.best]
    elif which == "all":
        wanted = sidecar.run_splits
    else:
        wanted = [split_name(int(which))]
        if wanted[0] not in sidecar.run_splits:
            raise ModelError(f"the run has no split {which}; it has {', '.join(sidecar.run_splits)}")
    missing = [name for name in wanted if name not in exported]
    if missing:
        raise ModelError(
            f"{folder} holds {', '.join(exported)}, not {', '.join(missing)} (`split` {which}): export it with "
            f"eic export --split {which}"
        )
    return [exported[name] for name in wanted]
