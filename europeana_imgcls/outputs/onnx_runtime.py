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
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, ValidationError

from ..core.errors import ConfigError, ModelError
from ..modelling.run_folder import CheckpointMeta, RunFolder, file_sha256
from .inference import ExportedModel

SIDECAR: Final = "model.json"
EXPORT_FORMAT: Final = "europeana-imgcls/onnx-v1"
INPUT, LOGITS, PROBABILITIES = "pixels", "logits", "probabilities"
EXTRA_HINT: Final = "pip install 'europeana-imgcls[onnx]'"


class ExportedSplit(BaseModel):
    """One split's file in an export."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    split: str
    file: str
    sha256: str
    meta: dict[str, Any]  # the split's CheckpointMeta (without the training settings)
    max_difference: float | None = None  # against PyTorch, measured at export (float32 exports)


class ExportSidecar(BaseModel):
    """``model.json``: what an export holds and how to feed it (docs/deploy.md reads it to the letter)."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    format: str
    model_id: str  # the run's model id: the digest of the checkpoints exported
    run: str
    classes: list[str]
    mode: str
    input: dict[str, Any]
    outputs: dict[str, Any]
    splits: list[ExportedSplit]
    best: str  # the run's split of lowest validation loss (``split`` best)
    run_splits: list[str]
    thresholds: dict[str, float | None] | None  # eic enrich's, from the run's calibration; None: not calibrated
    precision_target: float | None = None
    quantize: str = "none"
    opset: int
    eic_version: str


def read_sidecar(folder: Path) -> ExportSidecar:
    path = folder / SIDECAR
    if not path.is_file():
        raise ModelError(f"{folder}: no {SIDECAR} in it; export the run first (eic export RUN) or pass `onnx_model`")
    try:
        sidecar = ExportSidecar.model_validate(json.loads(path.read_text(encoding="utf-8")))
    except (OSError, ValueError, ValidationError):
        raise ModelError(f"{path} is not the sidecar of an eic export (unreadable or damaged): export again") from None
    if sidecar.format != EXPORT_FORMAT:
        raise ModelError(f"{path} is not the sidecar of an eic export ({sidecar.format}): export again")
    return sidecar


def onnxruntime(needed_by: str = "`runtime` onnx") -> Any:
    """ONNX Runtime, or one line naming the extra that brings it."""
    try:
        import onnxruntime as ort  # an optional dependency: only runtime onnx and eic export need it
    except ImportError:
        raise ConfigError(f"{needed_by} needs ONNX Runtime, which is not installed: {EXTRA_HINT}") from None
    return ort


@dataclass
class OnnxModel(ExportedModel):
    """One exported split: an ONNX Runtime session that takes uint8 pixels and returns logits."""

    session: Any = None
    sha256: str = ""  # the file's: an output's later runs must use the same file (float32 or int8)

    def pixels_to_logits(self, pixels: torch.Tensor) -> np.ndarray:
        (logits,) = self.session.run([LOGITS], {INPUT: np.ascontiguousarray(pixels.numpy(), dtype=np.uint8)})
        return np.asarray(logits, dtype=np.float32)


def session(path: Path, device: torch.device) -> Any:
    """An ONNX Runtime session of ``path``: CUDA where eic runs on CUDA and onnxruntime-gpu has it."""
    ort = onnxruntime()
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.intra_op_num_threads = torch.get_num_threads()  # the cores eic is given (taskset, OMP_NUM_THREADS)
    providers: list[Any] = ["CPUExecutionProvider"]
    if device.type == "cuda" and "CUDAExecutionProvider" in ort.get_available_providers():
        # This process's GPU (its torchrun rank's, or cuda:N), not the first one.
        providers.insert(0, ("CUDAExecutionProvider", {"device_id": device.index or 0}))
    try:
        return ort.InferenceSession(str(path), options, providers=providers)
    except Exception as exc:  # ONNX Runtime raises its own types for a file it cannot read
        raise ModelError(f"{path}: ONNX Runtime cannot load it ({str(exc).splitlines()[0][:200]})") from None


def load_export(run: Path, given: Path | None, which: str, device: torch.device, model_id: str) -> list[OnnxModel]:
    """The exported split models of ``run`` (whose ``RunFolder.model_id`` is ``model_id``) chosen as ``load_run``
    chooses (best, all or N), or a ModelError saying which files or which run do not match."""
    onnxruntime()  # the extra first: without it nothing below can be used
    folder = given if given is not None else RunFolder(run).onnx
    if not folder.is_dir():
        raise ModelError(f"{folder}: no such export; run eic export {run} first (or pass `onnx_model` FOLDER)")
    sidecar = read_sidecar(folder)
    if sidecar.model_id != model_id:
        raise ModelError(
            f"{folder / SIDECAR} was exported from run {sidecar.run} (model {sidecar.model_id}), not from {run} "
            f"(model {model_id}): export {run} again (eic export), or pass the run it came from"
        )
    models = []
    for exported in _chosen(sidecar, which, folder):
        path = folder / exported.file
        if not path.is_file():
            raise ModelError(f"{path}: missing from the export {folder}; export the run again")
        if file_sha256(path) != exported.sha256:
            raise ModelError(
                f"{path} is not the file {folder / SIDECAR} describes (its SHA-256 differs): export the run again"
            )
        runner = session(path, device)
        said = runner.get_modelmeta().custom_metadata_map
        if said.get("model_id") != sidecar.model_id or said.get("split") != exported.split:
            raise ModelError(
                f"{path} says it is {said.get('split')} of model {said.get('model_id')}, but {folder / SIDECAR} "
                f"describes {exported.split} of model {sidecar.model_id}: export the run again"
            )
        try:  # a value JSON could not hold (an infinite validation loss) was written null: its default stands
            meta = CheckpointMeta.model_validate({k: v for k, v in exported.meta.items() if v is not None})
        except ValidationError:
            raise ModelError(f"{folder / SIDECAR} is damaged ({exported.split}'s metadata): export again") from None
        models.append(OnnxModel(exported.split, meta, runner, exported.sha256))
    return models


def _chosen(sidecar: ExportSidecar, which: str, folder: Path) -> list[ExportedSplit]:
    exported = {s.split: s for s in sidecar.splits}
    if which == "best":
        wanted = [sidecar.best]
    elif which == "all":
        wanted = sidecar.run_splits
    else:
        wanted = [f"split_{which}"]
        if wanted[0] not in sidecar.run_splits:
            raise ModelError(f"the run has no split {which}; it has {', '.join(sidecar.run_splits)}")
    missing = [name for name in wanted if name not in exported]
    if missing:
        raise ModelError(
            f"{folder} holds {', '.join(exported)}, not {', '.join(missing)} (`split` {which}): export it with "
            f"eic export --split {which}"
        )
    return [exported[name] for name in wanted]
