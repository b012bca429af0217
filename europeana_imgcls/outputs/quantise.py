"""int8 that keeps its labels (``eic export --quantize``): an exported split's float32 graph made int8, calibrated on
the split's own training images, then held to its float32 graph on the split's test images.

How (ONNX Runtime's quantiser, whose QDQ files both ONNX Runtime and OpenVINO run as int8):

- static: weights int8 per output channel, activations uint8 per tensor over the full range (reduce_range off:
  the CPUs that run int8 fast have VNNI, where the full range does not saturate), their ranges measured on
  ``calibration_images`` of the split's training and validation images (the run's data folder less the split's
  test images: never an image the agreement is then measured on);
- dynamic: int8 weights, activations quantised as they come (no calibration; slower than float32 on most CPUs);
- kept in float whatever the method: the graph's preprocessing (the cast, the resize, the normalisation, where
  int8 would round every pixel) and the temperature and activation after the classifier.

Accuracy control (static): where that file's labels agree with float32 on fewer of the calibration images
(up to ``CONTROL_IMAGES``) than ``min_agreement`` asks, in either runtime, nodes are kept in float, measured:

1. sensitivity: for each weighted node (``candidates``: a convolution or matrix product with its input, back to
   the weighted node making it, since a tensor is rounded wherever the node making it or one reading it is int8),
   the file made with it alone in float, and how near float32 its logits come (``logit_error``, as a share of the
   all-int8 file's, summed over the two runtimes: their int8 kernels differ, and so do the nodes that hurt, e.g.
   EfficientNet-Lite0's first block's depthwise convolution in OpenVINO, its projection in ONNX Runtime);
2. greedily, most sensitive first, each kept where it brings the file nearer float32 beside those kept before it
   (errors do not add: one node in float can make another's rounding worse), until the file agrees with float32 on
   ``min_agreement`` of the calibration images in both runtimes, or ``most_kept`` weighted nodes are in float (a
   tenth: each float island costs its conversions), which is logged. The file left is the last one kept.

The activations' ranges are measured once for every try (ONNX Runtime's calibration cache). The calibration images
are the control's images too: they decide which nodes stay float; the test images, never seen, judge the result.

Why this and not another way, as measured on EfficientNet-Lite0 fine-tuned 5 epochs at eic's learning rate on 16
drawn images a class (the benchmark's old recipe: 0% test accuracy, float32 top-1 margins a median 0.125 logit, a
tenth of the images under 0.05), top-1 agreement with float32 on 1,000 new images, ONNX Runtime / OpenVINO: all
int8 with MinMax ranges 94.9 / 95.1%; Entropy ranges the same; Percentile (99.999) 95.7 / 95.6%; symmetric
activations 96.3 / 97.1% (and ONNX Runtime several times slower); 7-bit weights (reduce_range) 78.8 / 78.5%;
NNCF's quantize (its bias correction, the same QDQ file for both runtimes) 93.0 / 93.0%; the old second step
(linear convolutions in float) 92.2 / 92.1%; this control 97.4 / 98.1% (at its cap: no int8 keeps labels decided
by hundredths of a logit). A Lite0 that learnt its classes (64 images a class, learning rate 1e-3; margins a median
0.53 logit) kept 99.6% of 1,000 new images in both runtimes all int8: the control did not need to act.

Then the agreement of the int8 graph with the float32 one (the same labels, as eic predict gives them, and for a
calibrated run the same annotations, as eic enrich emits them at its thresholds: ``export._labels``) on a seeded
sample of up to ``agreement_images`` (1000) of the split's test images: under ``min_agreement`` the export is
refused in one line saying both numbers, and nothing is written.
"""

from __future__ import annotations

import contextlib
import logging
import math
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

import numpy as np

from ..core.config import ExportConfig
from ..core.errors import ConfigError, DatasetError
from ..core.tables import read_csv_rows
from ..datasets.folders import DECODE_ERRORS, list_images, load_image, pixels_of
from .onnx_runtime import INPUT, LOGITS, Device

log = logging.getLogger(__name__)
RUNTIME_NAMES: Final = {"onnx": "ONNX Runtime", "openvino": "OpenVINO"}
CONTROL_IMAGES: Final = 256  # calibration images the accuracy control measures each try on, at most
BATCH: Final = 16
CPU: Final = Device("cpu")  # where the quantiser's checks run, whatever runs the export
WEIGHTED: Final = ("Conv", "Gemm", "MatMul")  # the first and last of these bound what is made int8
Decide = Callable[[np.ndarray], np.ndarray]  # logits -> the labels they give, a row of booleans an image


def top_class(logits: np.ndarray) -> np.ndarray:
    """A single-label model's decision: its top class, as one row of booleans an image."""
    return np.eye(logits.shape[1], dtype=bool)[logits.argmax(axis=1)]


@dataclass
class HeldOutImages:
    """A split's test images as the loader hands them over, with their truth where it was read; ``fold``: every
    image of the split's test fold, judged or not (none of them is a calibration image)."""

    pixels: np.ndarray
    truth: np.ndarray | None
    paths: list[Path]
    fold: list[Path]


def held_out_images(rows: Sequence[dict[str, str]], size: int, limit: int, truth_of: Any) -> HeldOutImages:
    """Up to ``limit`` readable images of a split's test predictions (``rows``), their truth by ``truth_of``: a
    seeded sample. The rows come in class order (the image folders'), and their first ``limit`` would judge int8 on
    the first classes only."""
    pictures: list[np.ndarray] = []
    truth: list[Any] = []
    paths: list[Path] = []
    fold = [Path(row["image"]) for row in rows if row.get("image")]
    for index in np.random.default_rng(0).permutation(len(rows)):
        row = rows[index]
        if len(pictures) >= limit:
            break
        try:
            pictures.append(pixels_of(load_image(Path(row["image"]), size)).numpy())
            truth.append(truth_of(row["truth"]))
            paths.append(Path(row["image"]))
        except (*DECODE_ERRORS, KeyError, ValueError):
            continue
    if not pictures:
        return HeldOutImages(np.zeros((0, 3, size, size), np.uint8), None, [], fold)
    return HeldOutImages(np.stack(pictures), np.asarray(truth), paths, fold)


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


def candidates(model: Any) -> dict[str, list[str]]:
    """What the accuracy control may keep in float, by weighted node between the graph's ends: the node with its
    input, back to the weighted node that makes it (through single-input nodes: an activation, a pool, a pad).
    Both sides, since a tensor stays int8 while the node making it or one using it is int8 (ONNX Runtime puts the
    tensor's quantise-dequantise pair at the node making it): a convolution kept in float alone reads its input
    rounded all the same."""
    ends = set(graph_ends(model))
    made_by = {output: node for node in model.graph.node for output in node.output}
    groups = {}
    for node in model.graph.node:
        if node.op_type not in WEIGHTED or node.name in ends:
            continue
        group = [node.name]
        before = made_by.get(node.input[0])
        while before is not None and before.name not in ends:
            if before.op_type not in WEIGHTED and sum(i in made_by for i in before.input) != 1:
                break  # a join (a residual's Add): the group starts after it
            group.insert(0, before.name)
            if before.op_type in WEIGHTED:
                break
            before = made_by.get(before.input[0])
        groups[node.name] = group
    return groups


@dataclass
class Quantised:
    """What ``quantise`` made: the nodes left in float32, and how the accuracy control chose them."""

    kept: list[str]  # every node left in float32: the graph's ends and ``controlled``
    controlled: list[str] = field(default_factory=list)  # kept in float by the accuracy control, in the order chosen
    agreement: dict[str, float] = field(default_factory=dict)  # with float32 on the control images, by runtime
    images: int = 0  # control images (the calibration images, at most CONTROL_IMAGES)
    capped: bool = False  # the control stopped at its cap (``most_kept``) under ``min_agreement``


def most_kept(candidates: int) -> int:
    """How many nodes the accuracy control may keep in float: a tenth of those it may choose from (at least 2);
    more float islands, each with its conversions in and out, would cost most of what int8 gains."""
    return max(2, candidates // 10)


def quantise(path: Path, config: ExportConfig, calibration: np.ndarray | None, decide: Decide = top_class) -> Quantised:
    """Replace the float32 file at ``path`` with its int8 version (the module docstring says how the nodes left in
    float are chosen); returns them, and what the accuracy control measured (labels as ``decide`` makes them)."""
    import onnx
    from onnxruntime.quantization.shape_inference import quant_pre_process

    source = path.with_name(path.name + ".float32")
    # ONNX Runtime's advice, followed: shapes inferred and the graph optimised before it is quantised.
    quant_pre_process(str(path), str(source))
    graph = onnx.load(str(source), load_external_data=False)
    path.unlink()
    maker = _Maker(source, path, config, calibration)
    try:
        ends = graph_ends(graph)
        if calibration is None:  # dynamic: nothing to measure the agreement on before the test images
            maker.make(ends)
            return Quantised(ends)
        control = _Control(maker, calibration[:CONTROL_IMAGES], config.min_agreement, decide)
        return control.run(ends, candidates(graph))
    finally:
        source.unlink(missing_ok=True)
        maker.cache.unlink(missing_ok=True)


class _Maker:
    """Makes the int8 file at ``path`` from the float32 ``source`` with given nodes left in float; the activations'
    ranges are measured once (ONNX Runtime's calibration cache) and reused by every try."""

    def __init__(self, source: Path, path: Path, config: ExportConfig, calibration: np.ndarray | None) -> None:
        self.source, self.path, self.config, self.calibration = source, path, config, calibration
        self.cache = path.with_name(path.name + ".ranges.json")
        self.made: list[str] | None = None  # the nodes in float of the file at ``path`` now

    def make(self, kept: list[str]) -> Path:
        """The file with ``kept`` in float at ``path`` (made, unless it is the file there already)."""
        from onnxruntime import quantization as q  # the [onnx] extra, checked by the caller

        if kept == self.made:
            return self.path
        self.made = list(kept)
        self.path.unlink(missing_ok=True)
        with _quantiser_quiet():
            return self._make(q, kept)

    def _make(self, q: Any, kept: list[str]) -> Path:
        if self.config.quantize == "dynamic":
            q.quantize_dynamic(str(self.source), str(self.path), weight_type=q.QuantType.QInt8, nodes_to_exclude=kept)
            return self.path
        assert self.calibration is not None
        q.quantize_static(
            str(self.source),
            str(self.path),
            _Calibration(self.calibration),
            quant_format=q.QuantFormat.QDQ,
            per_channel=True,
            reduce_range=False,
            activation_type=q.QuantType.QUInt8,
            weight_type=q.QuantType.QInt8,
            calibrate_method=q.CalibrationMethod.MinMax,
            nodes_to_exclude=kept,
            calibration_cache_path=str(self.cache),
        )
        return self.path


class _FromTheQuantiser(logging.Filter):
    """ONNX Runtime's quantiser's own warnings (on the root logger: "Axis 1 is out-of-range for weight ...", a
    line per tensor of a ConvNeXt), which say nothing a user can act on."""

    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno >= logging.ERROR or "onnxruntime/quantization/" not in record.pathname.replace("\\", "/")


@contextlib.contextmanager
def _quantiser_quiet() -> Iterator[None]:
    """While ONNX Runtime quantises: its warnings dropped, and its ``logging.warning`` kept from giving the root
    logger a handler of its own (``basicConfig``), which would print every later root record too."""
    root, quiet, holder = logging.getLogger(), _FromTheQuantiser(), logging.NullHandler()
    root.addFilter(quiet)
    root.addHandler(holder)
    try:
        yield
    finally:
        root.removeHandler(holder)
        root.removeFilter(quiet)


@dataclass
class _Try:
    """One int8 file's distance from float32 on the control images, in each runtime that runs it."""

    error: dict[str, float]  # ``logit_error``, by runtime
    agreement: dict[str, float]  # same top class, by runtime

    def objective(self, first: _Try) -> float:
        """The errors as shares of the first file's, summed over the runtimes: a node that helps one runtime and
        harms the other (their int8 kernels differ) counts as it does in both."""
        return sum(e / max(first.error[k], 1e-12) for k, e in self.error.items())


class _Control:
    """The accuracy control: the most sensitive nodes kept in float, greedily, until the int8 file agrees with
    float32 on ``wanted`` of the control images in every runtime, or ``most_kept`` are."""

    def __init__(self, maker: _Maker, images: np.ndarray, wanted: float, decide: Decide) -> None:
        from .onnx_runtime import session

        self.maker, self.images, self.wanted, self.decide = maker, images, wanted, decide
        self.before = logits_of(session(maker.source, CPU), images)

    def measure(self, kept: list[str]) -> _Try:
        said = int8_logits(self.maker.make(kept), self.images)
        return _Try(
            {k: logit_error(self.before, z) for k, z in said.items()},
            {k: agreement(self.before, z, self.decide) for k, z in said.items()},
        )

    def done(self, tried: _Try) -> bool:
        return min(tried.agreement.values()) >= self.wanted

    def run(self, ends: list[str], groups: dict[str, list[str]]) -> Quantised:
        first = self.measure(ends)
        if self.done(first) or not groups:
            return self._result(ends, [], first, capped=False)
        # Sensitivity: how much nearer float32 the file comes with each node alone (and its input) kept in float.
        gain = {node: self.measure(ends + group).objective(first) for node, group in groups.items()}
        ranked = sorted((n for n in groups if gain[n] < first.objective(first)), key=gain.__getitem__)
        kept: list[str] = []
        best, cap, capped = first, most_kept(len(groups)), False
        for node in ranked:
            if self.done(best):
                break
            more = [n for n in groups[node] if n not in kept]
            capped = len(set(kept + more) & set(groups)) > cap
            if capped:
                break
            tried = self.measure(ends + kept + more)
            # Kept only where it helps beside those kept before it: two nodes' errors do not simply add.
            if tried.objective(first) < best.objective(first):
                kept, best = kept + more, tried
        self.maker.make(ends + kept)  # the file as chosen, where the last try was a node not kept
        return self._result(ends, kept, best, capped=capped, cap=cap)

    def _result(self, ends: list[str], kept: list[str], tried: _Try, capped: bool, cap: int = 0) -> Quantised:
        if capped:
            log.warning(
                "int8: the accuracy control stopped at its cap (%d weighted nodes in float; %d nodes kept) with the "
                "file agreeing with float32 on %.1f%% of %d calibration images, under the %.1f%% asked",
                cap,
                len(kept),
                100 * min(tried.agreement.values()),
                len(self.images),
                100 * self.wanted,
            )
        return Quantised(ends + kept, kept, tried.agreement, len(self.images), capped)


def logits_of(session: Any, pixels: np.ndarray) -> np.ndarray:
    """A session's logits on ``pixels``, a batch at a time."""
    parts = [session.run([LOGITS], {INPUT: pixels[i : i + BATCH]})[0] for i in range(0, len(pixels), BATCH)]
    return np.concatenate(parts) if parts else np.zeros((0, 0), np.float32)


def int8_logits(path: Path, pixels: np.ndarray) -> dict[str, np.ndarray]:
    """The int8 file's logits as each runtime that runs it here computes them: ONNX Runtime, and OpenVINO where it
    is installed (their int8 kernels differ, and so can a label): the file is held to float32 in both."""
    from .onnx_runtime import session

    said = {"onnx": logits_of(session(path, CPU), pixels)}
    try:
        from .openvino_runtime import compile_onnx

        compiled = compile_onnx(path, pixels.shape[-1])
    except ConfigError:  # OpenVINO is not installed: the file is held to what ONNX Runtime makes of it
        return said
    said["openvino"] = np.concatenate([compiled(pixels[i : i + BATCH]) for i in range(0, len(pixels), BATCH)])
    return said


def agreement(before: np.ndarray, after: np.ndarray, decide: Decide = top_class) -> float:
    """The share of images that get the same labels from both sets of logits, as ``decide`` makes labels of them
    (a multi-label model's: every class over its threshold; its top class may stay while a label comes or goes)."""
    return float((decide(before) == decide(after)).all(axis=1).mean())


def logit_error(before: np.ndarray, after: np.ndarray) -> float:
    """The mean squared difference of two sets of logits, each image's mean taken off (softmax ignores it): what
    moves top classes, measured on every image, not only on those whose class it moved."""
    moved = (after - after.mean(1, keepdims=True)) - (before - before.mean(1, keepdims=True))
    return float((moved**2).mean())


def refusal(
    split: str,
    agreement: dict[str, float],
    images: int,
    wanted: float,
    more_calibration: int | None,
    *,
    annotations: bool = False,
) -> str | None:
    """Why an int8 split is not written (its lowest ``agreement`` with float32, by runtime, on ``images`` test
    images under the ``wanted`` share), in one line naming the numbers and what to try (``more_calibration``: a
    larger calibration to try, None where it could not help: every training image was used; ``annotations``: the
    agreement counts eic enrich's annotations too); None when it is kept."""
    lowest = min(agreement.values())
    if lowest >= wanted:
        return None
    floor = math.floor(lowest * 100) / 100  # a threshold the measured agreement passes
    tries = f"--min-agreement {floor:.2f}"
    if more_calibration is not None:
        tries = f"--calibration-images {more_calibration} or {tries}"
    each = f" ({', '.join(f'{RUNTIME_NAMES[k]} {v:.1%}' for k, v in agreement.items())})" if len(agreement) > 1 else ""
    if annotations:
        each += ", in their labels and in the annotations eic enrich emits at the run's thresholds"
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
