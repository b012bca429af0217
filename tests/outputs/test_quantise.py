"""int8's accuracy control (outputs/quantise.py) on a hand-built ONNX graph with one node that int8 cannot take:
a convolution whose input holds a channel a thousand times wider than the others, which per-tensor activations
crush the others under."""

from __future__ import annotations

import logging
import math
import shutil
from pathlib import Path

import numpy as np
import pytest

from europeana_imgcls.core.config import ExportConfig
from europeana_imgcls.outputs import quantise

pytest.importorskip("onnxruntime")
onnx = pytest.importorskip("onnx")
SIZE = 8


def _graph(path: Path) -> Path:
    """pixels -> /255 -> conv, relu -> "spread" (adds a channel of 1000: the wide range) -> "gather" (drops it),
    relu -> pool -> classifier -> logits, temperature, softmax: the class is the brightest colour, with wide
    margins. "spread" is linear (a convolution follows it): what the old recipe kept in float, to no avail."""
    from onnx import TensorProto, helper, numpy_helper

    def node(op: str, inputs: list[str], output: str, **attrs: object) -> onnx.NodeProto:
        return helper.make_node(op, inputs, [output], name=output, **attrs)

    eye = np.eye(3, dtype=np.float32)
    weights = {
        "inverse255": np.array(1 / 255, np.float32),
        "w1": eye.reshape(3, 3, 1, 1),
        "w2": np.vstack([eye, np.zeros((1, 3), np.float32)]).reshape(4, 3, 1, 1),
        "b2": np.array([0, 0, 0, 1000], np.float32),
        "w3": np.hstack([eye, np.zeros((3, 1), np.float32)]).reshape(3, 4, 1, 1),
        "w4": 10 * eye,
        "t": np.array(1.0, np.float32),
    }
    nodes = [
        node("Cast", ["pixels"], "cast", to=TensorProto.FLOAT),
        node("Mul", ["cast", "inverse255"], "scaled"),
        node("Conv", ["scaled", "w1"], "first"),
        node("Relu", ["first"], "relu"),
        node("Conv", ["relu", "w2", "b2"], "spread"),
        node("Conv", ["spread", "w3"], "gather"),
        node("Relu", ["gather"], "relu2"),
        node("GlobalAveragePool", ["relu2"], "pool"),
        node("Flatten", ["pool"], "flat"),
        node("Gemm", ["flat", "w4"], "classifier"),
        helper.make_node("Mul", ["classifier", "t"], ["logits"], name="logits"),
        helper.make_node("Softmax", ["logits"], ["probabilities"], name="probabilities"),
    ]
    graph = helper.make_graph(
        nodes,
        "wide",
        [helper.make_tensor_value_info("pixels", TensorProto.UINT8, ["batch", 3, "height", "width"])],
        [
            helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 3]),
            helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, ["batch", 3]),
        ],
        [numpy_helper.from_array(v, k) for k, v in weights.items()],
    )
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)]), str(path))
    return path


def _pictures(count: int, seed: int) -> np.ndarray:
    """Noisy pictures of one bright colour each (the class), the others dim."""
    rng = np.random.default_rng(seed)
    pixels = rng.integers(0, 90, (count, 3, SIZE, SIZE), dtype=np.uint8)
    for i, colour in enumerate(rng.integers(0, 3, count)):
        pixels[i, colour] += np.uint8(150)
    return pixels


def _agreement(float32: Path, int8: Path, pixels: np.ndarray) -> dict[str, float]:
    import torch

    from europeana_imgcls.outputs.onnx_runtime import session

    before = quantise.logits_of(session(float32, torch.device("cpu")), pixels)
    return {k: quantise.agreement(before, z) for k, z in quantise.int8_logits(int8, pixels).items()}


@pytest.mark.slow(seconds=2)  # the accuracy control in two runtimes
def test_the_control_keeps_in_float_the_node_int8_cannot_take_and_only_it(tmp_path: Path) -> None:
    float32 = _graph(tmp_path / "float32.onnx")
    graph = onnx.load(str(float32))
    assert quantise.graph_ends(graph) == ["cast", "scaled", "logits", "probabilities"]
    assert quantise.candidates(graph) == {  # each with its input, back to the weighted node making it
        "first": ["first"],
        "spread": ["first", "relu", "spread"],
        "gather": ["spread", "gather"],
        "classifier": ["gather", "relu2", "pool", "flat", "classifier"],
    }
    calibration, unseen = _pictures(48, 0), _pictures(200, 1)
    config = ExportConfig(run=tmp_path, quantize="static")

    # What the old recipe made: everything int8 but the ends, then also the linear convolution ("spread"): both
    # crush the wide input of "gather", and the top classes with it; so does "gather" alone in float.
    maker = quantise._Maker(float32, tmp_path / "old.onnx", config, calibration)
    for kept in ([], ["spread"], ["gather"]):
        old = _agreement(float32, maker.make(quantise.graph_ends(graph) + kept), unseen)
        assert max(old.values()) < 0.9, (kept, old)

    int8 = Path(shutil.copy(float32, tmp_path / "int8.onnx"))
    made = quantise.quantise(int8, config, calibration)
    assert made.controlled == ["spread", "gather"]
    assert made.kept == ["cast", "scaled", "logits", "probabilities", "spread", "gather"]
    assert made.images == 48 and not made.capped and min(made.agreement.values()) >= 0.99
    assert set(made.agreement) == {"onnx", "openvino"}  # held in both runtimes, as the test images will be
    # On pictures it never saw, in both runtimes; and still int8 where it can be (its other convolutions).
    assert min(_agreement(float32, int8, unseen).values()) >= 0.99
    types = {n.op_type for n in onnx.load(str(int8)).graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= types
    assert not any(p.name != "float32.onnx" and p.name.startswith("int8.onnx.") for p in tmp_path.iterdir())


def test_the_control_stops_at_its_cap_and_says_so(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    assert [quantise.most_kept(n) for n in (1, 4, 20, 49, 50, 120)] == [2, 2, 2, 4, 5, 12]
    monkeypatch.setattr(quantise, "most_kept", lambda candidates: 0)
    int8 = _graph(tmp_path / "int8.onnx")
    with caplog.at_level(logging.WARNING, logger=quantise.__name__):
        made = quantise.quantise(int8, ExportConfig(run=tmp_path, quantize="static"), _pictures(32, 0))
    assert made.capped and made.controlled == [] and min(made.agreement.values()) < 0.9
    assert "stopped at its cap (0 weighted nodes in float; 0 nodes kept)" in caplog.text
    assert "% of 32 calibration images, under the 99.0% asked" in caplog.text


def test_the_cap_is_said_only_where_it_stopped_the_control_short(caplog: pytest.LogCaptureFixture) -> None:
    # Three nodes to choose from, at most two kept (most_kept): the second kept reaches the agreement. The third
    # would pass the cap, but the control is done before it asks: no cap to say, and the file is the second try's.
    tries = {
        (): quantise._Try({"onnx": 1.0}, {"onnx": 0.90}),
        ("a",): quantise._Try({"onnx": 0.5}, {"onnx": 0.95}),
        ("b",): quantise._Try({"onnx": 0.6}, {"onnx": 0.94}),
        ("c",): quantise._Try({"onnx": 0.7}, {"onnx": 0.93}),
        ("a", "b"): quantise._Try({"onnx": 0.1}, {"onnx": 0.995}),
    }

    class Maker:
        made: list[tuple[str, ...]] = []

        def make(self, kept: list[str]) -> None:
            self.made.append(tuple(kept))

    control = object.__new__(quantise._Control)
    control.maker, control.images, control.wanted = Maker(), np.zeros((40, 3, 8, 8), np.uint8), 0.99
    control.measure = lambda kept: tries[tuple(kept)]  # type: ignore[method-assign]
    with caplog.at_level(logging.WARNING, logger=quantise.__name__):
        made = control.run([], {"a": ["a"], "b": ["b"], "c": ["c"]})
    assert made.controlled == ["a", "b"] and made.agreement == {"onnx": 0.995}
    assert not made.capped and "cap" not in caplog.text
    assert control.maker.made == [("a", "b")]


def test_int8_is_judged_on_a_sample_of_every_class_and_calibrated_on_no_test_image(tmp_path: Path) -> None:
    """A split's test predictions come in class order: the first rows would judge int8 on the first classes only.
    The judged images are a seeded sample of all the rows, and no image of the test fold, judged or not, is a
    calibration image."""
    from ..support import make_folders

    folder = make_folders(tmp_path / "images", per_class=12, size=SIZE)
    images = sorted(folder.rglob("*.jpg"))  # class by class, as test_predictions.csv lists them
    rows = [{"image": str(p), "truth": p.parent.name} for p in images[::2]]  # every other image: the test fold
    held = quantise.held_out_images(rows, SIZE, 4, lambda said: said)
    assert len(held.paths) == 4 and len({p.parent.name for p in held.paths}) > 1
    assert held.paths == quantise.held_out_images(rows, SIZE, 4, lambda said: said).paths  # the same sample
    assert held.fold == [Path(row["image"]) for row in rows]
    calibration = quantise.calibration_images(folder, held.fold, SIZE, 1000)
    assert len(calibration) == len(images) - len(rows)  # the rest of the data folder: the training images


def test_a_multilabel_model_is_held_to_the_same_labels_not_the_same_top_class() -> None:
    """eic predict labels a multi-label image with every class over its threshold: int8 may keep the top class and
    add or drop a label. Agreement is the share of images given the same labels, as predict gives them."""
    from types import SimpleNamespace

    from europeana_imgcls.datasets.tasks import task_for
    from europeana_imgcls.outputs.export import _labels

    before = np.array([[3.0, 0.2, -2.0], [2.0, -1.0, -1.0]])
    after = np.array([[3.0, -0.2, -2.0], [2.0, -1.0, -1.0]])  # the first image's second label drops out
    assert quantise.agreement(before, after) == 1.0  # the top classes: the same
    multi = SimpleNamespace(task=task_for("multi-label"), thresholds=lambda: np.array([0.5, 0.5, 0.5]))
    assert quantise.agreement(before, after, _labels(multi, None)) == 0.5  # type: ignore[arg-type]
    single = SimpleNamespace(task=task_for("single-label"), thresholds=lambda: None)
    assert quantise.agreement(before, after, _labels(single, None)) == 1.0  # type: ignore[arg-type]
    # eic enrich annotates a class only over the calibration's threshold, on the probabilities with the temperature:
    # the first image keeps its top class and loses its annotation (0.74 < 0.8); the second keeps both.
    single.temperature = 1.0
    enrich = SimpleNamespace(thresholds=lambda: np.array([0.8, math.inf, math.inf]))
    moved = np.array([[2.0, 0.9, -2.0], [2.0, -1.0, -1.0]])
    assert quantise.agreement(before, moved, _labels(single, None)) == 1.0  # type: ignore[arg-type]
    assert quantise.agreement(before, moved, _labels(single, enrich)) == 0.5  # type: ignore[arg-type]
    assert quantise.agreement(before, before, _labels(single, enrich)) == 1.0  # type: ignore[arg-type]


def test_the_quantiser_s_own_warnings_are_kept_off_the_terminal(capsys: pytest.CaptureFixture[str]) -> None:
    """ONNX Runtime's quantiser warns on the root logger ("Axis 1 is out-of-range for weight ...", a line per
    tensor of a ConvNeXt), whose first call gives the root a handler printing every later record too."""
    root = logging.getLogger()
    handlers = list(root.handlers)
    seen: list[logging.LogRecord] = []
    listener = logging.Handler()
    listener.emit = seen.append  # type: ignore[method-assign]
    quantiser = "/site-packages/onnxruntime/quantization/qdq_quantizer.py"
    with quantise._quantiser_quiet():
        root.addHandler(listener)
        try:
            root.handle(logging.LogRecord("root", logging.WARNING, quantiser, 1, "Axis 1 is out-of-range", None, None))
            root.handle(logging.LogRecord("root", logging.ERROR, quantiser, 1, "a real failure", None, None))
            root.handle(logging.LogRecord("root", logging.WARNING, "/elsewhere.py", 1, "someone else's", None, None))
        finally:
            root.removeHandler(listener)
    assert [r.getMessage() for r in seen] == ["a real failure", "someone else's"]
    assert root.handlers == handlers and not root.filters
