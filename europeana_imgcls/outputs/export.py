"""``eic export``: a run's split models as ONNX files, for ONNX Runtime (Python, Java, C#, the browser) and
``eic predict --runtime onnx`` or ``--runtime openvino``.

Each file takes what a decoder gives: uint8 RGB pixels, N x 3 x H x W (any N, H and W). Inside the graph:
the resize to the model's square input (bilinear; an image already that size passes unchanged, as eic's loader
hands them over), the normalisation (x / 255 - mean) / std, the model, and the split's temperature. Two
outputs: ``logits`` (as trained) and ``probabilities`` (the task's activation, softmax or a sigmoid per label, of
the logits divided by the temperature: what eic enrich's thresholds apply to). ``model.json`` beside the files
says the rest (classes, thresholds, input size, the run's model id; ``onnx_runtime.ExportSidecar``).

Every file is checked at export against PyTorch on the run's own test images (or, lacking them, seeded noise): the
largest probability difference is reported, and above 1e-3 the export is refused. ``quantize`` writes int8 files
instead (``quantise``), held to the float32 graph on the split's test images: their agreement (the same labels, as
eic predict gives them) and the test score before and after are printed and kept in the sidecar, and under
``min_agreement`` nothing is written.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..core.config import ExportConfig
from ..core.errors import ConfigError, DatasetError, ModelError
from ..core.outputs import OutputKind, absolute, build_folder
from ..core.run_names import SPLIT_GLOB
from ..core.tables import file_sha256, write_json
from ..core.version import __version__
from ..modelling.calibration import Calibration, read_run_calibration
from ..modelling.run_folder import DATA_DIR_RESOLVED, RunFolder, SplitFolder
from . import quantise
from .inference import Ensemble, RunModel, chosen_splits, load_run
from .onnx_runtime import (
    EXPORT_FORMAT,
    EXTRA_HINT,
    INPUT,
    LOGITS,
    PROBABILITIES,
    SIDECAR,
    ExportedSplit,
    ExportSidecar,
    Int8Record,
    onnxruntime,
    session,
)

log = logging.getLogger(__name__)
MAX_DIFFERENCE = 1e-3  # largest probability difference to PyTorch a float32 export may show
CHECK_IMAGES = 64  # test images an export is checked against PyTorch on
CPU = torch.device("cpu")
EXPORT = OutputKind(
    "export",
    "an export",
    folder=True,
    legacy=("model.json", f"{SPLIT_GLOB}.onnx"),
    legacy_sign=lambda sidecar: isinstance(sidecar, dict) and sidecar.get("format") == EXPORT_FORMAT,
)


@dataclass
class QuantisationCheck:
    """How an int8 split compares with its float32 graph on the run's test images."""

    split: str
    images: int
    agreement: float  # share of images given the same labels (as eic predict gives them)
    metric: str  # the task's headline score (accuracy, micro_f1)
    before: float | None  # float32; None without labelled test images
    after: float | None  # int8
    # The accuracy control (``quantise.Quantised``): the nodes it kept in float, its agreement with float32 on the
    # calibration images by runtime, on how many, and whether it stopped at its cap.
    controlled: list[str] = field(default_factory=list)
    control_agreement: dict[str, float] = field(default_factory=dict)
    control_images: int = 0
    capped: bool = False


@dataclass
class ExportReport:
    output: Path
    model_id: str
    splits: list[str] = field(default_factory=list)
    files: list[Path] = field(default_factory=list)
    max_difference: dict[str, float] = field(default_factory=dict)  # against PyTorch
    checked_on: dict[str, str] = field(default_factory=dict)  # per split: "12 test images", "16 generated images"
    calibrated: bool = False  # thresholds in the sidecar
    quantize: str = "none"
    quantisation: list[QuantisationCheck] = field(default_factory=list)


def export(config: ExportConfig) -> ExportReport:
    """Export ``config.run``'s chosen splits into ``config.output`` (default RUN/onnx); see the module docstring."""
    onnxruntime("eic export")  # the extra first, in one line: the checks and the quantiser run on it
    onnx = _onnx()
    folder = config.output or RunFolder(config.run).onnx
    every = load_run(config.run, CPU, "all")  # the sidecar names them all, and the best
    named = [(m.split, m.meta) for m in every]
    models = [every[i] for i in chosen_splits(named, config.split, config.run, every.diverged)]
    run = RunFolder(config.run)
    report = ExportReport(absolute(folder), run.model_id(), splits=[m.split for m in models], quantize=config.quantize)
    calibration = _calibration(run)
    report.calibrated = calibration is not None
    # Built beside the folder and put in its place whole: a refused or interrupted export leaves no half of one.
    with build_folder(folder, EXPORT, overwrite=config.overwrite) as staging:
        exported = [_export_split(onnx, config, run, model, staging, report, calibration) for model in models]
        sidecar = _sidecar(config, run, report, every, exported, calibration)
        write_json(staging / SIDECAR, sidecar.model_dump(mode="json"))
    report.files = [report.output / s.file for s in exported]
    return report


def _export_split(
    onnx: Any,
    config: ExportConfig,
    run: RunFolder,
    model: RunModel,
    staging: Path,
    report: ExportReport,
    calibration: Calibration | None,
) -> ExportedSplit:
    """One split's file, written and checked (and quantised, held to ``calibration``'s annotations) in ``staging``."""
    pixels, report.checked_on[model.split] = _check_images(run, model)
    ours = Ensemble([model]).probabilities(torch.from_numpy(pixels), calibrated=True)[0]  # on the CPU, in float32
    path = staging / f"{model.split}.onnx"
    _write_graph(model, path, config.opset)
    proto = _label_file(onnx, path, report.model_id, model)
    _, probs = _outputs(path, pixels)
    difference = _difference(ours, probs)
    if difference > MAX_DIFFERENCE:  # a float32 graph that is not the model is no ground to quantise either
        raise ModelError(
            f"{model.split}: the ONNX graph's probabilities differ from PyTorch's by {difference:.2g} "
            f"(more than {MAX_DIFFERENCE:g}); try another `opset`, or report it with the run's arch"
        )
    int8 = None
    if config.quantize != "none":
        int8 = _int8(config, run, model, path, report, calibration)
        proto = _label_file(onnx, path, report.model_id, model)  # the quantiser's file says it too
        difference = _difference(ours, _outputs(path, pixels)[1])
    report.max_difference[model.split] = difference
    return ExportedSplit(
        split=model.split,
        file=path.name,
        sha256=file_sha256(path),
        external=_external_files(proto, path.parent),
        meta=model.meta.model_dump(mode="json", exclude={"config", "backbone", "backbone_sha256"}),
        max_difference=difference,
        int8=int8,
    )


def _control(made: quantise.Quantised) -> dict[str, Any]:
    """What the accuracy control did, as the report's check and the sidecar's int8 record both name it."""
    return {
        "controlled": made.controlled,
        "control_agreement": made.agreement,
        "control_images": made.images,
        "capped": made.capped,
    }


def _int8(
    config: ExportConfig, run: RunFolder, model: RunModel, path: Path, report: ExportReport, enrich: Calibration | None
) -> Int8Record:
    """The float32 file at ``path`` made int8 (``quantise``), held to it on the split's test images: refused in one
    line, before anything is written, where their labels (and, for a calibrated run, the annotations eic enrich
    emits at ``enrich``'s thresholds) agree on less than ``min_agreement``."""
    test = _test_images(run, model, config.agreement_images)
    if not len(test.pixels):
        raise DatasetError(
            f"{model.split}: none of its test images can be read here, and int8 is held to float32 on them: "
            "quantise where the run's images are, or export float32 (leave out `quantize`)"
        )
    calibration = None
    if config.quantize == "static":
        recorded = _split_folder(run, model).read_config()  # where the data folder is, from anywhere
        data_dir = recorded.get(DATA_DIR_RESOLVED) or model.meta.config.get("data_dir")
        calibration = quantise.calibration_images(
            None if data_dir is None else Path(data_dir), test.fold, model.meta.input_size, config.calibration_images
        )
    before = quantise.logits_of(session(path, CPU), test.pixels)
    labels = _labels(model, enrich)
    made = quantise.quantise(path, config, calibration, labels)
    after = quantise.int8_logits(path, test.pixels)
    by_runtime = {name: quantise.agreement(before, logits, labels) for name, logits in after.items()}
    moved = dataclasses.replace(
        _moved(model, len(test.pixels), test.truth, before, after["onnx"]),
        agreement=min(by_runtime.values()),
        **_control(made),
    )
    report.quantisation.append(moved)
    more = quantise.more_calibration(config.calibration_images, None if calibration is None else len(calibration))
    refused = quantise.refusal(
        model.split, by_runtime, moved.images, config.min_agreement, more, annotations=enrich is not None
    )
    if refused is not None:
        raise ModelError(refused)
    return Int8Record(
        method="dynamic" if config.quantize == "dynamic" else "static",
        agreement=moved.agreement,
        by_runtime=by_runtime,
        images=moved.images,
        min_agreement=config.min_agreement,
        annotations=enrich is not None,
        calibration_images=0 if calibration is None else len(calibration),
        per_channel=config.quantize == "static",
        reduce_range=False,
        kept_float=made.kept,
        **_control(made),
        metric=moved.metric,
        before=moved.before,
        after=moved.after,
    )


def _labels(model: RunModel, enrich: Calibration | None) -> quantise.Decide:
    """What int8 must keep of a split's logits: the labels eic predict gives (the top class, or, multi-label, every
    class over its tuned threshold, on the logits without the temperature, which those thresholds were set on)
    and, where the run is calibrated, the annotations eic enrich emits at the calibration's thresholds (on the
    logits divided by the temperature): an int8 file that keeps every top class but moves a probability across a
    threshold changes what is published."""
    task, tuned = model.task, model.thresholds()

    def labels(logits: np.ndarray) -> np.ndarray:
        return task.decisions(task.from_logits(logits), tuned)

    if enrich is None:
        return labels
    emitted_at = enrich.thresholds()

    def labels_and_annotations(logits: np.ndarray) -> np.ndarray:
        annotations = task.emitted_each(task.from_logits(logits / model.temperature), emitted_at)
        return np.hstack([labels(logits), annotations])

    return labels_and_annotations


def _split_folder(run: RunFolder, model: RunModel) -> SplitFolder:
    return SplitFolder(run.path, model.meta.split) if run.is_split else run.split(model.meta.split)


def _onnx() -> Any:
    try:
        import onnx  # optional: the [onnx] extra; labels the files and is what ONNX Runtime's quantiser needs
    except ImportError:
        raise ConfigError(f"eic export needs the onnx package, which is not installed: {EXTRA_HINT}") from None
    return onnx


def _calibration(run: RunFolder) -> Calibration | None:
    """The run's calibration, which gives the sidecar enrich's thresholds; a run without one exports without."""
    if not run.calibration.is_file():
        log.warning(
            "%s has no calibration (calibration.json): exported without thresholds; "
            "eic calibrate the run and export again to include them",
            run.path,
        )
        return None
    return read_run_calibration(run.path)


class _Graph(nn.Module):
    """What the ONNX file computes: uint8 pixels in, logits and temperature-scaled probabilities out."""

    def __init__(self, model: RunModel) -> None:
        super().__init__()
        self.net, self.size, self.task = model.model, model.meta.input_size, model.task
        mean, std = (torch.tensor(v, dtype=torch.float32).view(1, 3, 1, 1) for v in (model.meta.mean, model.meta.std))
        # As ModelInput computes it: (x / 255 - mean) / std as one multiply and one add.
        self.register_buffer("scale", 1.0 / (255.0 * std))
        self.register_buffer("shift", -mean / std)
        self.register_buffer("inverse_temperature", torch.tensor(1.0 / model.temperature))

    def forward(self, pixels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = F.interpolate(pixels.float(), size=(self.size, self.size), mode="bilinear", align_corners=False)
        logits = self.net(x * cast(torch.Tensor, self.scale) + cast(torch.Tensor, self.shift))
        scaled = logits * cast(torch.Tensor, self.inverse_temperature)
        return logits, self.task.activation(scaled)


def _write_graph(model: RunModel, path: Path, opset: int) -> None:
    graph = _Graph(model).eval()
    example = torch.zeros(2, 3, model.meta.input_size, model.meta.input_size, dtype=torch.uint8)
    with warnings.catch_warnings():
        # torch's TorchScript-based exporter says it is deprecated in favour of torch.export (which needs
        # onnxscript, and cannot yet take a dynamic image size through the resize): it is the one that works here.
        warnings.simplefilter("ignore")
        torch.onnx.export(
            graph,
            (example,),
            str(path),
            dynamo=False,
            opset_version=opset,
            input_names=[INPUT],
            output_names=[LOGITS, PROBABILITIES],
            dynamic_axes={
                INPUT: {0: "batch", 2: "height", 3: "width"},
                LOGITS: {0: "batch"},
                PROBABILITIES: {0: "batch"},
            },
        )


def _label_file(onnx: Any, path: Path, model_id: str, model: RunModel) -> Any:
    """The file says which run's split it is, so a file moved beside another run's sidecar is known (and, for a timm
    backbone, which one: its name, pretrained tag, data config and weights' digest); returns the graph as written
    (its tensor data, where kept outside, not loaded)."""
    proto = onnx.load(str(path), load_external_data=False)  # tensors kept outside stay where they are
    props = {"model_id": model_id, "split": model.split, "producer": f"eic {__version__}"}
    # What its labels mean, in the file its digest covers: a sidecar edited since (classes swapped, another
    # temperature) is known by the runtimes that open it.
    props["classes"] = json.dumps(list(model.classes))
    props["temperature"] = repr(float(model.temperature))
    if model.meta.timm is not None:
        props["timm"] = json.dumps(model.meta.timm, sort_keys=True)
    onnx.helper.set_model_props(proto, props)
    proto.producer_name, proto.producer_version = "europeana-imgcls", __version__
    onnx.save(proto, str(path))
    return proto


def _external_files(proto: Any, folder: Path) -> dict[str, str]:
    """The files in ``folder`` that hold a graph's tensor data (a graph over 2 GB), with their SHA-256: the
    sidecar covers them too."""
    from onnx.external_data_helper import ExternalDataInfo, _get_all_tensors, uses_external_data

    names = {ExternalDataInfo(t).location for t in _get_all_tensors(proto) if uses_external_data(t)}
    return {name: file_sha256(folder / name) for name in sorted(names)}


def _check_images(run: RunFolder, model: RunModel) -> tuple[np.ndarray, str]:
    """Up to CHECK_IMAGES of the split's own test images (never trained on by it), as the loader hands them over;
    seeded noise where none can be read (a run moved to another machine)."""
    split = _split_folder(run, model)
    size = model.meta.input_size
    test = _test_images(run, model, CHECK_IMAGES)
    if len(test.pixels):
        return test.pixels, f"{len(test.pixels)} of its test images"
    noise = np.random.default_rng(0).integers(0, 256, (16, 3, size, size), dtype=np.uint8)
    return noise, f"16 generated images (no test image of {split.name} could be read here)"


def _test_images(run: RunFolder, model: RunModel, limit: int) -> quantise.HeldOutImages:
    """Up to ``limit`` readable test images of the split, with their truth."""
    split = _split_folder(run, model)
    rows = quantise.read_test_rows(split.test_predictions)
    rows = [
        {**row, "image": image} for row, image in zip(rows, split.images_named([r["image"] for r in rows]), strict=True)
    ]
    return quantise.held_out_images(
        rows, model.meta.input_size, limit, lambda said: model.task.truth_of(said, model.classes)
    )


def _outputs(path: Path, pixels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The file's logits and probabilities on the check images, as ONNX Runtime computes them."""
    logits, probs = session(path, CPU).run([LOGITS, PROBABILITIES], {INPUT: pixels})
    return logits, probs


def _difference(ours: np.ndarray, theirs: np.ndarray) -> float:
    return float(np.abs(ours - theirs).max())


def _moved(
    model: RunModel, images: int, truth: np.ndarray | None, before: np.ndarray, after: np.ndarray
) -> QuantisationCheck:
    """How far the int8 logits ``after`` are from the float32 ``before``: the test score before and after."""
    metric = model.task.headline
    # Scored as eic predict decides: on the logits without the temperature, which the tuned thresholds were set on.
    scores = [
        None if truth is None else model.task.metrics(truth, model.task.from_logits(z), model.thresholds())[metric]
        for z in (before, after)
    ]
    return QuantisationCheck(
        model.split, images, float((before.argmax(1) == after.argmax(1)).mean()), metric, scores[0], scores[1]
    )


def _sidecar(
    config: ExportConfig,
    run: RunFolder,
    report: ExportReport,
    every: list[RunModel],
    exported: list[ExportedSplit],
    calibration: Calibration | None,
) -> ExportSidecar:
    first = every[0]
    (best,) = [every[i].split for i in chosen_splits([(m.split, m.meta) for m in every], "best", config.run)]
    return ExportSidecar(
        format=EXPORT_FORMAT,
        model_id=report.model_id,
        run=run.name,
        classes=first.classes,
        mode=first.task.name,
        input={
            "name": INPUT,
            "type": "uint8",
            "shape": ["batch", 3, "height", "width"],
            "channels": "RGB",
            "size": first.meta.input_size,
            "resize": f"bilinear to {first.meta.input_size} x {first.meta.input_size}, in the graph",
            "mean": list(first.meta.mean),
            "std": list(first.meta.std),
            # A timm backbone's own data config (its interpolation and crop: eic resizes whole images, as it trained)
            **({"data_config": first.meta.timm["data_config"]} if first.meta.timm else {}),
        },
        outputs={
            LOGITS: {"shape": ["batch", len(first.classes)], "what": "as trained, before the temperature"},
            PROBABILITIES: {
                "shape": ["batch", len(first.classes)],
                "what": f"{first.task.activation_name} of the logits divided by the split's temperature (calibrated)",
            },
        },
        splits=exported,
        best=best,
        run_splits=[m.split for m in every],
        thresholds=None if calibration is None else {c.name: c.threshold for c in calibration.per_class},
        precision_target=None if calibration is None else calibration.precision_target,
        quantize=config.quantize,
        opset=config.opset,
        eic_version=__version__,
    )
