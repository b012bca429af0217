"""int8 that keeps its labels (``eic export --quantize``): an exported split's float32 graph made int8, calibrated on
the split's own training images, then held to its float32 graph on the split's test images.

How (ONNX Runtime's quantiser, whose QDQ files both ONNX Runtime and OpenVINO run as int8):

- static: weights int8 per output channel, activations uint8 per tensor over the full range (reduce_range off:
  the CPUs that run int8 fast have VNNI, where the full range does not saturate), their ranges measured on
  ``calibration_images`` of the split's training and validation images (the run's data folder less the split's
  test images: never an image the agreement is then measured on);
- dynamic: int8 weights, activations quantised as they come (no calibration; slower than float32 on most CPUs);
- kept in float whatever the method: the graph's preprocessing (the cast, the resize, the normalisation, where
  int8 would round every pixel) and the temperature and activation after the classifier; where the int8 file
  moves labels of the calibration images (under ``min_agreement``), the linear convolutions too (no activation
  after them: EfficientNet's projections, a residual branch's last), which carry int8's rounding to the logits.

Then the top-1 agreement of the int8 graph with the float32 one on up to ``AGREEMENT_IMAGES`` of the split's test
images: under ``min_agreement`` the export is refused in one line saying both numbers, and nothing is written.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import numpy as np

from ..core.config import ExportConfig
from ..core.errors import ConfigError, DatasetError
from ..core.tables import read_csv_rows
from ..datasets.folders import DECODE_ERRORS, list_images, load_image, pixels_of
from .onnx_runtime import INPUT, LOGITS

RUNTIME_NAMES: Final = {"onnx": "ONNX Runtime", "openvino": "OpenVINO"}
AGREEMENT_IMAGES: Final = 1000  # test images the agreement is measured on, at most
BATCH: Final = 16
WEIGHTED: Final = ("Conv", "Gemm", "MatMul")  # the first and last of these bound what is made int8
ACTIVATIONS: Final = {
    "Relu",
    "Clip",
    "LeakyRelu",
    "PRelu",
    "Sigmoid",
    "HardSigmoid",
    "HardSwish",
    "Tanh",
    "Elu",
    "Selu",
}


@dataclass
class HeldOutImages:
    """A split's test images as the loader hands them over, with their truth where it was read."""

    pixels: np.ndarray
    truth: np.ndarray | None
    paths: list[Path]


def held_out_images(rows: Sequence[dict[str, str]], size: int, limit: int, truth_of: Any) -> HeldOutImages:
    """Up to ``limit`` readable images of a split's test predictions (``rows``), their truth by ``truth_of``."""
    pictures: list[np.ndarray] = []
    truth: list[Any] = []
    paths: list[Path] = []
    for row in rows:
        if len(pictures) >= limit:
            break
        try:
            pictures.append(pixels_of(load_image(Path(row["image"]), size)).numpy())
            truth.append(truth_of(row["truth"]))
            paths.append(Path(row["image"]))
        except (*DECODE_ERRORS, KeyError, ValueError):
            continue
    if not pictures:
        return HeldOutImages(np.zeros((0, 3, size, size), np.uint8), None, [])
    return HeldOutImages(np.stack(pictures), np.asarray(truth), paths)


def read_test_rows(path: Path) -> list[dict[str, str]]:
    return list(read_csv_rows(path)) if path.is_file() else []


def calibration_images(data_dir: Path | None, test: Sequence[Path], size: int, count: int) -> np.ndarray:
    """A seeded sample of ``count`` readable images of the run's data folder that are not among the split's test
    images, as the loader hands them over; a DatasetError where none can be read here."""
    found = list_images(data_dir) if data_dir is not None and data_dir.is_dir() else []
    tested = {p.resolve() for p in test}
    candidates = [p for p in found if p.resolve() not in tested]
    order = np.random.default_rng(0).permutation(len(candidates))
    pictures: list[np.ndarray] = []
    for index in order:
        if len(pictures) >= count:
            break
        try:
            pictures.append(pixels_of(load_image(candidates[index], size)).numpy())
        except DECODE_ERRORS:
            continue
    if not pictures:
        raise DatasetError(
            f"no training image of the run could be read here ({data_dir}): quantise where the run's images are, "
            "or export float32 (leave out `quantize`)"
        )
    return np.stack(pictures)


def graph_ends(model: Any) -> list[str]:
    """The nodes of an ONNX graph before its first weighted node (the cast, resize and normalisation of the
    pixels) and after its last (the temperature and the activation after the classifier)."""
    nodes = list(model.graph.node)
    weighted = [i for i, node in enumerate(nodes) if node.op_type in WEIGHTED]
    if not weighted:
        return [node.name for node in nodes]
    return [node.name for i, node in enumerate(nodes) if i < weighted[0] or i > weighted[-1]]


def linear_convolutions(model: Any) -> list[str]:
    """The convolutions whose output no activation follows: a residual branch's last convolution, a projection,
    a linear bottleneck (MobileNet, EfficientNet). Their int8 rounding reaches the logits undamped."""
    consumers: dict[str, set[str]] = {}
    for node in model.graph.node:
        for name in node.input:
            consumers.setdefault(name, set()).add(node.op_type)
    return [
        node.name
        for node in model.graph.node
        if node.op_type == "Conv" and not ACTIVATIONS & consumers.get(node.output[0], set())
    ]


def quantise(path: Path, config: ExportConfig, calibration: np.ndarray | None) -> list[str]:
    """Replace the float32 file at ``path`` with its int8 version; returns the nodes kept in float.

    Accuracy control in two steps: everything but the graph's ends int8 first (the fastest file: OpenVINO ran
    resnet18 4.5x faster than with its linear convolutions in float); where its top classes agree with float32
    on fewer of the calibration images than ``min_agreement`` asks, once more with the linear convolutions kept in
    float (EfficientNet-Lite0: 97.4% -> 99.2% of 264 images, at the same speed in ONNX Runtime)."""
    import onnx
    import torch
    from onnxruntime.quantization.shape_inference import quant_pre_process

    from .onnx_runtime import session

    source = path.with_name(path.name + ".float32")
    # ONNX Runtime's advice, followed: shapes inferred and the graph optimised before it is quantised.
    quant_pre_process(str(path), str(source))
    graph = onnx.load(str(source), load_external_data=False)
    path.unlink()
    first = path.with_name(path.name + ".first")
    try:
        kept = graph_ends(graph)
        _quantise_once(source, path, config, calibration, kept)
        if calibration is None:  # dynamic: nothing to measure the agreement on before the test images
            return kept
        before = logits_of(session(source, torch.device("cpu")), calibration)

        def held(file: Path) -> float:
            return min(agreement(before, z) for z in int8_logits(file, calibration).values())

        agreed = held(path)
        if agreed < config.min_agreement:
            path.rename(first)
            _quantise_once(source, path, config, calibration, kept + linear_convolutions(graph))
            if held(path) >= agreed:  # a model of small margins can lose more to the second: the better one stays
                kept = kept + linear_convolutions(graph)
            else:
                first.replace(path)
    finally:
        source.unlink(missing_ok=True)
        first.unlink(missing_ok=True)
    return kept


def _quantise_once(
    source: Path, path: Path, config: ExportConfig, calibration: np.ndarray | None, kept: list[str]
) -> None:
    from onnxruntime import quantization as q  # the [onnx] extra, checked by the caller

    if config.quantize == "dynamic":
        q.quantize_dynamic(str(source), str(path), weight_type=q.QuantType.QInt8, nodes_to_exclude=kept)
        return
    assert calibration is not None
    q.quantize_static(
        str(source),
        str(path),
        _Calibration(calibration),
        quant_format=q.QuantFormat.QDQ,
        per_channel=True,
        reduce_range=False,
        activation_type=q.QuantType.QUInt8,
        weight_type=q.QuantType.QInt8,
        calibrate_method=q.CalibrationMethod.MinMax,
        nodes_to_exclude=kept,
    )


def logits_of(session: Any, pixels: np.ndarray) -> np.ndarray:
    """A session's logits on ``pixels``, a batch at a time."""
    parts = [session.run([LOGITS], {INPUT: pixels[i : i + BATCH]})[0] for i in range(0, len(pixels), BATCH)]
    return np.concatenate(parts) if parts else np.zeros((0, 0), np.float32)


def int8_logits(path: Path, pixels: np.ndarray) -> dict[str, np.ndarray]:
    """The int8 file's logits as each runtime that runs it here computes them: ONNX Runtime, and OpenVINO where it
    is installed (their int8 kernels differ, and so can a label): the file is held to float32 in both."""
    import torch

    from .onnx_runtime import session

    said = {"onnx": logits_of(session(path, torch.device("cpu")), pixels)}
    try:
        from .openvino_runtime import compile_onnx

        compiled = compile_onnx(path, pixels.shape[-1])
    except ConfigError:  # OpenVINO is not installed: the file is held to what ONNX Runtime makes of it
        return said
    said["openvino"] = np.concatenate([compiled(pixels[i : i + BATCH]) for i in range(0, len(pixels), BATCH)])
    return said


def agreement(before: np.ndarray, after: np.ndarray) -> float:
    """The share of images whose top class is the same."""
    return float((before.argmax(1) == after.argmax(1)).mean())


def refusal(
    split: str, agreement: dict[str, float], images: int, wanted: float, more_calibration: int | None
) -> str | None:
    """Why an int8 split is not written (its lowest ``agreement`` with float32, by runtime, on ``images`` test
    images under the ``wanted`` share), in one line naming the numbers and what to try (``more_calibration``: a
    larger calibration to try, None where it could not help: every training image was used); None when it is
    kept."""
    lowest = min(agreement.values())
    if lowest >= wanted:
        return None
    floor = math.floor(lowest * 100) / 100  # a threshold the measured agreement passes
    tries = f"--min-agreement {floor:.2f}"
    if more_calibration is not None:
        tries = f"--calibration-images {more_calibration} or {tries}"
    each = f" ({', '.join(f'{RUNTIME_NAMES[k]} {v:.1%}' for k, v in agreement.items())})" if len(agreement) > 1 else ""
    return (
        f"{split}: int8 agrees with float32 on {lowest:.1%} of {images} test images{each}, under the {wanted:.1%} "
        f"asked; nothing is written: try {tries}, or export float32 (leave out --quantize)"
    )


def more_calibration(asked: int, used: int | None) -> int | None:
    """The calibration to try after a refusal: twice the asked (at least 1000), where the split has more
    training images than were used (``used``: None for a quantisation without calibration)."""
    return None if used is None or used < asked else max(2 * asked, 1000)


class _Calibration:
    """ONNX Runtime's calibration reader: the calibration images, a batch at a time."""

    def __init__(self, pixels: np.ndarray) -> None:
        self.batches = iter([pixels[i : i + BATCH] for i in range(0, len(pixels), BATCH)])

    def get_next(self) -> dict[str, np.ndarray] | None:
        batch = next(self.batches, None)
        return None if batch is None else {INPUT: batch}
