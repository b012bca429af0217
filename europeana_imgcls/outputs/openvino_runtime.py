"""A run's exported models (``eic export``) run by Intel's OpenVINO on the CPU: ``eic predict`` and ``eic enrich``
with ``runtime`` openvino.

It runs the export ``runtime`` onnx runs, the same files checked the same way (``onnx_runtime.export_files``: the
sidecar, each file's SHA-256, the run's model id, what the file says of itself), float32 or int8 alike: OpenVINO
reads the ONNX file itself, and runs an int8 export's quantise-dequantise pairs as int8 kernels. Nothing is written
beside the export: reading and compiling an ONNX file takes well under a second of a run.

Compiled for throughput on the machine it runs on: the cores eic is given (``processes.cores``, which
follows taskset and OMP_NUM_THREADS), split into the streams OpenVINO's THROUGHPUT hint chooses for them; a batch
is cut into one slice per stream and the slices run at once (an ``AsyncInferQueue``), so every core works on
every batch.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Final

import numpy as np

from ..core.errors import ConfigError, ModelError
from ..modelling.processes import cores
from .inference import ModelRequest, Pixels
from .onnx_runtime import INPUT, LOGITS, ArrayModel, ExportFile, export_files

log = logging.getLogger(__name__)
EXTRA_HINT: Final = "pip install 'europeana-imgcls[openvino]'"
MIN_SLICE: Final = 4  # images per stream below which cutting a batch costs more than it gains


def openvino(needed_by: str = "`runtime` openvino") -> Any:
    """OpenVINO, or one line naming the extra that brings it."""
    try:
        import openvino as ov  # an optional dependency: only runtime openvino needs it
    except ImportError:
        raise ConfigError(f"{needed_by} needs OpenVINO, which is not installed: {EXTRA_HINT}") from None
    return ov


@dataclass
class OpenVinoModel(ArrayModel):
    """One exported split compiled by OpenVINO for this machine's CPU; it takes uint8 pixels as they come (the graph
    holds the resize and the normalisation, as for ONNX Runtime)."""

    runner: Compiled | None = None
    sha256: str = ""  # the ONNX file's: an output's later runs must use the same file (float32 or int8)
    precision: str = "float32"

    files_option: ClassVar[str | None] = "onnx_model"  # the export ``runtime`` onnx runs
    runtime_name: ClassVar[str] = "OpenVINO"

    @classmethod
    def load(cls, request: ModelRequest) -> Sequence[OpenVinoModel]:
        openvino()  # the extra first: without it nothing below can be used
        if str(request.device).partition(":")[0] not in ("cpu", "auto"):
            log.warning("runtime openvino runs on the CPU, not %s: use runtime onnx or torch on a GPU", request.device)
        models = []
        for file in export_files(request.run, request.files, request.split, request.run_id):
            runner = compile_onnx(file.path, file.meta.input_size, file)
            models.append(cls(file.exported.split, file.meta, runner, file.exported.sha256, file.precision))
        return models

    def logits(self, pixels: Pixels) -> np.ndarray:
        assert self.runner is not None  # set by load
        return self.runner(np.ascontiguousarray(pixels, dtype=np.uint8))

    def journal_identity(self) -> dict[str, str]:
        return {"onnx_files": self.sha256}  # the runtime itself is in the journal's settings (``runtime_settings``)


class Compiled:
    """An ONNX file compiled by OpenVINO for the CPU, called with uint8 pixels (N x 3 x size x size), answering
    float32 logits."""

    def __init__(self, model: Any, threads: int) -> None:
        ov = openvino()
        # f32: on a CPU with AMX or AVX-512 BF16 OpenVINO would otherwise compute in bfloat16, and move labels.
        config = {"PERFORMANCE_HINT": "THROUGHPUT", "INFERENCE_NUM_THREADS": threads, "INFERENCE_PRECISION_HINT": "f32"}
        self.compiled = ov.Core().compile_model(model, "CPU", config)
        self.streams = max(1, int(self.compiled.get_property("OPTIMAL_NUMBER_OF_INFER_REQUESTS")))
        self.output = self.compiled.output(LOGITS)
        self.queue = ov.AsyncInferQueue(self.compiled, self.streams)
        self.queue.set_callback(self._done)
        self._slices: dict[int, np.ndarray] = {}

    def _done(self, request: Any, index: int) -> None:
        self._slices[index] = np.array(request.get_tensor(self.output).data, dtype=np.float32)  # a copy: reused

    def __call__(self, pixels: np.ndarray) -> np.ndarray:
        if not len(pixels):  # nothing to infer (OpenVINO refuses an empty batch)
            return np.zeros((0, self.output.get_partial_shape()[1].get_length()), np.float32)
        cuts = min(self.streams, max(1, len(pixels) // MIN_SLICE))
        self._slices = {}
        for index, part in enumerate(np.array_split(pixels, cuts)):
            self.queue.start_async({INPUT: part}, index)
        self.queue.wait_all()
        return np.concatenate([self._slices[i] for i in range(cuts)])


def compile_onnx(path: Path, size: int, file: ExportFile | None = None) -> Compiled:
    """``path`` (an eic export's ONNX file) compiled for this machine's CPU, its input fixed to ``size`` x ``size``
    pixels (what eic's loader hands over; fixed shapes compile to faster kernels) and any batch; ``file``: the
    export's description of it, whose split and model id the file must say it is."""
    ov = openvino()
    try:
        model = ov.Core().read_model(str(path))
        model.reshape({INPUT: ov.PartialShape([-1, 3, size, size])})
    except Exception as exc:  # OpenVINO raises its own types (RuntimeError, ...) for a file it cannot read
        raise ModelError(f"{path}: OpenVINO cannot load it ({str(exc).strip().splitlines()[0][:200]})") from None
    if file is not None:
        file.check_said(_metadata(model))
    return Compiled(model, cores())


def _metadata(model: Any) -> dict[str, str]:
    """The ONNX file's metadata (``model_id``, ``split``), as OpenVINO keeps it: under ``framework``."""
    said = {}
    for key in ("model_id", "split"):
        if model.has_rt_info(["framework", key]):
            said[key] = model.get_rt_info(["framework", key]).astype(str)
    return said
