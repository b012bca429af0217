"""eic export and --runtime onnx: ONNX files that ONNX Runtime runs as eic's PyTorch models do, with the tests'
tiny net (fine-tuned and linear-probe runs), and what is refused."""

from __future__ import annotations

import json
import re
import shutil
import sys
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
from PIL import Image
from typer.testing import CliRunner

from europeana_imgcls import PredictConfig, predict, train
from europeana_imgcls.cli.app import app
from europeana_imgcls.core.config import EmbedConfig, ExportConfig, TrainConfig
from europeana_imgcls.core.errors import ConfigError, DatasetError, ModelError
from europeana_imgcls.datasets.folders import list_images
from europeana_imgcls.modelling.embedding import embed
from europeana_imgcls.modelling.run_folder import RunFolder
from europeana_imgcls.outputs import quantise
from europeana_imgcls.outputs.export import export

from ..support import diverge, make_folders, rows

TINY = dict(arch="tiny", weights="none", input_size=32, quiet=True)


@pytest.fixture
def run(trained_run: Path, tmp_path: Path) -> Path:
    """A copy of the shared run: an export writes into its run folder."""
    return Path(shutil.copytree(trained_run, tmp_path / "run"))


@pytest.fixture(scope="module")
def images(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_folders(tmp_path_factory.mktemp("new"), per_class=5, size=48)


def _top1(path: Path) -> dict[str, str]:
    return {r["image"]: r["prediction"] for r in rows(path)}


def test_an_export_runs_in_onnx_runtime_as_the_run_does_in_pytorch(run: Path, images: Path) -> None:
    report = export(ExportConfig(run=run, split="all", quiet=True))
    folder = RunFolder(run).onnx
    assert report.output == folder and [p.name for p in report.files] == [
        "split_0.onnx",
        "split_1.onnx",
        "split_2.onnx",
    ]
    assert max(report.max_difference.values()) <= 1e-3
    assert all(said.endswith("of its test images") for said in report.checked_on.values())
    sidecar = json.loads((folder / "model.json").read_text())
    assert sidecar["model_id"] == RunFolder(run).model_id() == report.model_id
    assert sidecar["classes"] == ["map", "painting", "specimen"] and sidecar["input"]["size"] == 32
    calibration = json.loads((run / "calibration.json").read_text())
    assert sidecar["thresholds"] == {c["name"]: c["threshold"] for c in calibration["per_class"]}  # enrich's
    assert sidecar["best"] in sidecar["run_splits"]

    # What Java or a browser does: decoded pixels of any size, no eic.
    session = ort.InferenceSession(str(folder / "split_0.onnx"), providers=["CPUExecutionProvider"])
    assert session.get_modelmeta().custom_metadata_map["model_id"] == report.model_id
    picture = np.asarray(Image.open(next((images / "map").iterdir())).convert("RGB").resize((61, 47)))
    batch = np.stack([picture, picture]).transpose(0, 3, 1, 2).copy()
    logits, probs = session.run(["logits", "probabilities"], {"pixels": batch})
    assert logits.shape == probs.shape == (2, 3)
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, atol=1e-5)

    out = {}
    for runtime in ("torch", "onnx"):
        out[runtime] = run.parent / f"{runtime}.csv"
        predict(
            PredictConfig(run=run, inputs=[str(images)], output=out[runtime], split="all", runtime=runtime, quiet=True)
        )
    torch_rows, onnx_rows = rows(out["torch"]), rows(out["onnx"])
    assert len(torch_rows) == len(onnx_rows) == 15
    assert _top1(out["torch"]) == _top1(out["onnx"])
    for a, b in zip(torch_rows, onnx_rows, strict=True):
        assert abs(float(a["confidence"]) - float(b["confidence"])) < 1e-4


@pytest.mark.slow  # end to end: embed, train a probe, export, predict with both runtimes
@pytest.mark.parametrize("method", ["linear-probe", "knn"])
def test_a_probe_run_exports_and_predicts_alike(method: str, tmp_path: Path, images: Path) -> None:
    data = make_folders(tmp_path / "data", per_class=6, size=32)
    table = tmp_path / "e.parquet"
    embed(EmbedConfig(data_dir=data, output=table, **TINY))
    probe = tmp_path / "probe"
    train(TrainConfig(data_dir=data, output_dir=probe, method=method, folds=3, embeddings=table, **TINY))
    report = export(ExportConfig(run=probe, output=tmp_path / "exported", quiet=True))
    assert len(report.files) == 1 and report.max_difference[report.splits[0]] <= 1e-3
    for runtime in ("torch", "onnx"):
        predict(
            PredictConfig(
                run=probe,
                inputs=[str(images)],
                output=tmp_path / f"{runtime}.csv",
                runtime=runtime,
                onnx_model=tmp_path / "exported" if runtime == "onnx" else None,
                quiet=True,
            )
        )
    assert _top1(tmp_path / "torch.csv") == _top1(tmp_path / "onnx.csv")


def test_onnx_shards_merge_into_the_output_a_whole_run_writes(run: Path, images: Path, tmp_path: Path) -> None:
    export(ExportConfig(run=run, quiet=True))
    whole, sharded = tmp_path / "whole.csv", tmp_path / "sharded.csv"
    common = dict(run=run, inputs=[str(images)], runtime="onnx", quiet=True)
    predict(PredictConfig(**common, output=whole))
    parts = [predict(PredictConfig(**common, output=sharded, shard=f"{k}/2")).predicted for k in (0, 1)]
    merged = predict(PredictConfig(**common, output=sharded, resume=True))
    assert sum(parts) == merged.already_done == 15 and merged.predicted == 0
    assert sorted(rows(sharded), key=lambda r: r["image"]) == sorted(rows(whole), key=lambda r: r["image"])
    # A resume of that output with the PyTorch models is another model: refused, naming the runtime.
    with pytest.raises(DatasetError, match="runtime: .* then"):
        predict(PredictConfig(run=run, inputs=[str(images)], output=sharded, resume=True, quiet=True))


@pytest.mark.slow  # quantised, then labelled by both runtimes
def test_static_int8_is_calibrated_on_training_images_and_held_to_float32(run: Path, images: Path) -> None:
    report = export(ExportConfig(run=run, quantize="static", output=run / "int8", min_agreement=0.5, quiet=True))
    (check,) = report.quantisation
    assert check.images > 0 and 0.5 <= check.agreement <= 1 and check.metric == "accuracy"
    assert check.before is not None and check.after is not None
    sidecar = json.loads((run / "int8" / "model.json").read_text())
    (split,) = sidecar["splits"]
    record = split["int8"]
    assert sidecar["quantize"] == "static" and record["method"] == "static"
    assert record["annotations"]  # the run is calibrated: held to enrich's annotations as well as to its labels
    assert (record["agreement"], record["images"], record["min_agreement"]) == (check.agreement, check.images, 0.5)
    by_runtime = record["by_runtime"]  # held in both runtimes: the lowest is the agreement
    assert set(by_runtime) == {"onnx", "openvino"} and record["agreement"] == min(by_runtime.values())
    # Calibrated on the split's training images: every image of the run's data folder but its test images.
    data = Path(json.loads((run / split["split"] / "config.json").read_text())["data_dir"])
    tested = rows(run / split["split"] / "test_predictions.csv")
    assert record["calibration_images"] == len(list_images(data)) - len(tested) > 0
    assert record["per_channel"] and not record["reduce_range"] and {"/Cast", "/Softmax"} <= set(record["kept_float"])
    # In float: the graph's ends, and what the accuracy control kept (on the calibration images, in both runtimes).
    assert set(check.controlled) <= set(record["kept_float"]) and set(check.control_agreement) == {"onnx", "openvino"}
    assert check.control_images == record["calibration_images"] and not check.capped
    said = (record["controlled"], record["control_agreement"], record["control_images"], record["capped"])
    assert said == (check.controlled, check.control_agreement, check.control_images, check.capped)  # kept in model.json
    # One int8 file, run by both runtimes: the same labels.
    out = {name: run.parent / f"int8_{name}.csv" for name in ("onnx", "openvino")}
    for name, path in out.items():
        predict(
            PredictConfig(run=run, inputs=[str(images)], output=path, runtime=name, onnx_model=run / "int8", quiet=True)
        )
    assert len(rows(out["onnx"])) == 15 and _top1(out["onnx"]) == _top1(out["openvino"])


@pytest.mark.slow(seconds=2)  # an int8 export end to end
def test_int8_under_its_threshold_is_refused_in_one_line_and_nothing_is_written(
    run: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(quantise, "agreement", lambda before, after, decide: 0.972)  # as a model of small margins gives
    args = ["export", str(run), "--quantize", "static", "--calibration-images", "5", "--output", str(tmp_path / "int8")]
    line = _one_line_refusal(args)  # 5 of the split's 18 training images: more could help, and 1000 is said
    assert re.fullmatch(
        r"eic: error: split_\d: int8 agrees with float32 on 97\.2% of \d+ test images \(ONNX Runtime 97\.2%, "
        r"OpenVINO 97\.2%\), in their labels and in the annotations eic enrich emits at the run's thresholds, under "
        r"the 99\.0% asked; "
        r"nothing is written: try --calibration-images 1000 or --min-agreement 0\.97, or export float32 "
        r"\(leave out --quantize\)",
        line,
    ), line
    assert not (tmp_path / "int8").exists() and not any(p.name.startswith(".") for p in tmp_path.iterdir())


@pytest.mark.slow(seconds=2)  # an int8 export end to end
def test_int8_is_held_to_float32_on_as_many_test_images_as_asked(run: Path, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr(quantise, "agreement", lambda before, after, decide: 0.5)
    args = ["export", str(run), "--quantize", "static", "--agreement-images", "3", "--output", str(tmp_path / "q")]
    assert " on 50.0% of 3 test images " in _one_line_refusal(args)  # the split has more: 3 were asked


def test_the_int8_verdict_names_both_numbers_and_what_to_try() -> None:
    assert quantise.refusal("split_0", {"onnx": 0.99}, 500, 0.99, 1000) is None  # at the threshold: kept
    assert quantise.refusal("split_0", {"onnx": 1.0, "openvino": 1.0}, 7, 1.0, None) is None
    assert quantise.refusal("split_2", {"onnx": 0.972}, 500, 0.99, 1000) == (
        "split_2: int8 agrees with float32 on 97.2% of 500 test images, under the 99.0% asked; nothing is written: "
        "try --calibration-images 1000 or --min-agreement 0.97, or export float32 (leave out --quantize)"
    )
    # Held in every runtime that runs it: the lowest decides, and each is said.
    assert quantise.refusal("split_0", {"onnx": 0.995, "openvino": 0.985}, 200, 0.99, 1000) == (
        "split_0: int8 agrees with float32 on 98.5% of 200 test images (ONNX Runtime 99.5%, OpenVINO 98.5%), under "
        "the 99.0% asked; nothing is written: try --calibration-images 1000 or --min-agreement 0.98, or export "
        "float32 (leave out --quantize)"
    )
    # Every training image calibrated it already: only the threshold is left to try.
    said = quantise.refusal("split_0", {"onnx": 0.909}, 22, 0.99, None)
    assert said is not None and "try --min-agreement 0.90, or export float32" in said
    assert quantise.more_calibration(300, 300) == 1000 and quantise.more_calibration(800, 800) == 1600
    assert quantise.more_calibration(300, 42) is None and quantise.more_calibration(300, None) is None


def test_int8_keeps_in_float_the_graph_ends_and_may_keep_a_node_with_its_input() -> None:
    import onnx
    from onnx import helper

    def node(op: str, inputs: list[str], output: str) -> onnx.NodeProto:
        return helper.make_node(op, inputs, [output], name=output)

    graph = helper.make_graph(
        [
            node("Cast", ["pixels"], "cast"),
            node("Mul", ["cast", "s"], "scaled"),
            node("Conv", ["scaled", "w1"], "stem"),
            node("Relu", ["stem"], "relu"),
            node("Conv", ["relu", "w2"], "branch"),  # a residual branch's last
            node("Add", ["branch", "relu"], "sum"),
            node("Conv", ["sum", "w3"], "project"),  # a projection
            node("Conv", ["project", "w4"], "expand"),
            node("Clip", ["expand"], "clip"),
            node("Gemm", ["clip", "w5"], "classifier"),
            node("Mul", ["classifier", "t"], "logits"),
            node("Softmax", ["logits"], "probabilities"),
        ],
        "g",
        [],
        [],
    )
    model = helper.make_model(graph)
    assert quantise.graph_ends(model) == ["cast", "scaled", "logits", "probabilities"]
    # What the accuracy control may keep in float: each weighted node with its input, back to the weighted node
    # making it (a join, the residual's Add, or the graph's ends stop it).
    assert quantise.candidates(model) == {
        "stem": ["stem"],
        "branch": ["stem", "relu", "branch"],
        "project": ["project"],
        "expand": ["project", "expand"],
        "classifier": ["expand", "clip", "classifier"],
    }


def test_int8_needs_the_runs_training_images(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match="no training image of the run could be read here"):
        quantise.calibration_images(tmp_path / "moved", [], 32, 300)
    folder = make_folders(tmp_path / "data", per_class=2, size=40)
    every = list_images(folder)
    assert len(quantise.calibration_images(folder, every[:4], 32, 300)) == len(every) - 4
    assert len(quantise.calibration_images(folder, [], 32, 3)) == 3


def test_what_runtime_onnx_refuses(run: Path, trained_run: Path, images: Path, tmp_path: Path) -> None:
    common = dict(inputs=[str(images)], runtime="onnx", quiet=True)
    with pytest.raises(ModelError, match="no such export; run eic export"):
        predict(PredictConfig(run=run, output=tmp_path / "a.csv", **common))
    export(ExportConfig(run=run, quiet=True))
    with pytest.raises(ModelError, match="holds split_"):  # exported: the best split only
        predict(PredictConfig(run=run, output=tmp_path / "b.csv", split="all", **common))
    with pytest.raises(ConfigError, match="gradcam_dir"):
        predict(PredictConfig(run=run, output=tmp_path / "c.csv", gradcam_dir=tmp_path / "cams", **common))

    # Another run's export: its sidecar names another model (another run: other checkpoints, another model id).
    other = Path(shutil.copytree(trained_run, tmp_path / "other"))
    (other / "split_0" / "model.pt").write_bytes((other / "split_0" / "model.pt").read_bytes() + b"\0")
    with pytest.raises(ModelError, match=r"was exported from run run \(model \w+\), not from .*other \(model \w+\)"):
        predict(PredictConfig(run=other, output=tmp_path / "d.csv", onnx_model=RunFolder(run).onnx, **common))

    # A file that is not the one the sidecar describes.
    folder = RunFolder(run).onnx
    sidecar = json.loads((folder / "model.json").read_text())
    (name,) = [s["file"] for s in sidecar["splits"]]
    (folder / name).write_bytes((folder / name).read_bytes() + b"\0")
    with pytest.raises(ModelError, match="is not the file .*model.json describes"):
        predict(PredictConfig(run=run, output=tmp_path / "e.csv", **common))


def test_export_refuses_to_overwrite_and_says_when_a_run_has_no_thresholds(
    run: Path, caplog: pytest.LogCaptureFixture
) -> None:
    (run / "calibration.json").unlink()
    export(ExportConfig(run=run, quiet=True))
    assert "no calibration" in caplog.text
    assert json.loads((RunFolder(run).onnx / "model.json").read_text())["thresholds"] is None
    with pytest.raises(DatasetError, match="already exists: pass `overwrite` to replace it"):
        export(ExportConfig(run=run, quiet=True))
    export(ExportConfig(run=run, overwrite=True, quiet=True))


@pytest.mark.parametrize("command", ["predict", "export"])
def test_without_the_onnx_extra_one_line_names_it(
    command: str, run: Path, images: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # as if it were not installed
    args = [command, str(run)] + (
        [str(images), "-o", str(tmp_path / "p.csv"), "--runtime", "onnx"] if command == "predict" else []
    )
    result = CliRunner().invoke(app, [*args, "--quiet"])
    assert result.exit_code != 0
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "pip install 'europeana-imgcls[onnx]'" in lines[0], result.stderr


def test_a_refused_export_leaves_nothing_and_an_earlier_export_stays_whole(
    run: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from europeana_imgcls.outputs import export as module

    first = export(ExportConfig(run=run, quiet=True))
    before = {p.name: p.read_bytes() for p in first.output.iterdir()}
    calls = []
    real = module._difference
    monkeypatch.setattr(module, "_difference", lambda *a: calls.append(1) or (1.0 if len(calls) == 2 else real(*a)))
    with pytest.raises(ModelError, match="differ from PyTorch's by 1"):
        export(ExportConfig(run=run, split="all", overwrite=True, quiet=True))
    assert {p.name: p.read_bytes() for p in first.output.iterdir()} == before  # the earlier export, untouched
    assert sorted(p.name for p in run.iterdir() if p.name.startswith(".")) == []  # no staging folder left
    calls.clear()
    with pytest.raises(ModelError):
        export(ExportConfig(run=run, split="all", output=run / "fresh", quiet=True))
    assert not (run / "fresh").exists()


def test_a_split_folder_exports_checked_on_its_own_test_images(run: Path, images: Path, tmp_path: Path) -> None:
    report = export(ExportConfig(run=run / "split_1", output=tmp_path / "one", quiet=True))
    assert report.splits == ["split_1"] and report.checked_on["split_1"].endswith("of its test images")


def test_a_split_whose_validation_loss_was_never_finite_loads(run: Path, images: Path, tmp_path: Path) -> None:
    export(ExportConfig(run=run, quiet=True))
    sidecar_path = RunFolder(run).onnx / "model.json"
    sidecar = json.loads(sidecar_path.read_text())
    sidecar["splits"][0]["meta"]["best_val_loss"] = None  # how JSON keeps an infinite loss
    sidecar_path.write_text(json.dumps(sidecar))
    report = predict(
        PredictConfig(run=run, inputs=[str(images)], output=tmp_path / "p.csv", runtime="onnx", quiet=True)
    )
    assert report.predicted == 15


def test_an_onnx_model_without_runtime_onnx_is_refused(run: Path, images: Path, tmp_path: Path) -> None:
    said = "`onnx_model` is what `runtime` onnx or openvino runs: pass `runtime` onnx or openvino too"
    with pytest.raises(ConfigError, match=said):
        predict(
            PredictConfig(run=run, inputs=[str(images)], output=tmp_path / "p.csv", onnx_model=tmp_path, quiet=True)
        )


# ---------------------------------------------------------------------------------------------
# The output policy and the typed sidecar (issue 31): each of these passed unnoticed before.


def _one_line_refusal(args: list[str]) -> str:
    result = CliRunner().invoke(app, [*args, "--quiet"])
    assert result.exit_code != 0 and result.exception is None or isinstance(result.exception, SystemExit)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in result.output, result.output
    return lines[0]


def test_overwrite_replaces_an_export_but_never_a_file_eic_did_not_write(run: Path, tmp_path: Path) -> None:
    folder = tmp_path / "deploy"
    export(ExportConfig(run=run, output=folder, quiet=True))
    (folder / "notes.txt").write_text("the curator's notes")
    line = _one_line_refusal(["export", str(run), "-o", str(folder), "--overwrite"])
    assert "notes.txt, which eic did not write" in line
    assert (folder / "notes.txt").read_text() == "the curator's notes" and (folder / "model.json").is_file()
    (folder / "notes.txt").unlink()
    export(ExportConfig(run=run, output=folder, overwrite=True, quiet=True))  # its own export: replaced
    # A folder of someone else's files is refused with or without `overwrite`, and left as it was.
    theirs = tmp_path / "theirs"
    theirs.mkdir()
    (theirs / "model.json").write_text("{}")
    for extra in ([], ["--overwrite"]):
        _one_line_refusal(["export", str(run), "-o", str(theirs), *extra])
    assert [p.name for p in theirs.iterdir()] == ["model.json"]


def test_export_into_the_current_folder_is_one_line(run: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    here = tmp_path / "here"
    here.mkdir()
    (here / "keep.txt").write_text("mine")
    monkeypatch.chdir(here)
    assert "holds the current folder" in _one_line_refusal(["export", str(run), "-o", "."])
    assert [p.name for p in here.iterdir()] == ["keep.txt"]


def test_a_second_export_of_one_folder_is_refused_while_the_first_writes(run: Path) -> None:
    from europeana_imgcls.core.outputs import output_lock

    with output_lock(RunFolder(run).onnx), pytest.raises(DatasetError, match="is being written by process"):
        export(ExportConfig(run=run, quiet=True))
    export(ExportConfig(run=run, quiet=True))  # the lock is gone with its holder


def test_what_a_killed_export_left_is_cleaned_at_the_next_start(run: Path) -> None:
    # (An old export renamed aside, .onnx.eic-replaced, is put back instead: tests/core/test_outputs.py.)
    for leftover in (".onnx.exporting", ".onnx.eic-building"):
        (run / leftover).mkdir()
        (run / leftover / "split_0.onnx").write_bytes(b"half")
    export(ExportConfig(run=run, quiet=True))
    assert sorted(p.name for p in run.iterdir() if p.name.startswith(".")) == []


def test_a_diverged_split_asked_for_by_number_says_it_diverged(run: Path) -> None:
    diverge(run, split=1)
    with pytest.raises(ModelError, match="split 1's model holds weights that are not finite"):
        export(ExportConfig(run=run, split="1", quiet=True))


def _meta(sidecar: dict, key: str, value: object) -> None:
    sidecar["splits"][0]["meta"][key] = value


INT8 = dict(
    method="static",
    agreement=0.995,
    images=200,
    min_agreement=0.99,
    calibration_images=300,
    per_channel=True,
    reduce_range=False,
    kept_float=[],
    metric="accuracy",
)
INT8_UNDER = {**INT8, "agreement": 0.9}

SIDECAR_ATTACKS = {
    "classes reordered": lambda s: s.update(classes=s["classes"][::-1]),
    "a class named twice": lambda s: s.update(classes=[s["classes"][0], *s["classes"]]),
    "an extra class": lambda s: s.update(classes=[*s["classes"], "sculpture"]),
    "the split's classes short": lambda s: _meta(s, "class_names", s["classes"][:1]),
    "the split's classes as text": lambda s: _meta(s, "class_names", "map"),
    "temperature -1": lambda s: _meta(s, "temperature", -1),
    "temperature 0": lambda s: _meta(s, "temperature", 0),
    "input size -5": lambda s: s["input"].update(size=-5),
    "input size 0": lambda s: s["input"].update(size=0),
    "input size 1e9": lambda s: s["input"].update(size=10**9),
    "std 0": lambda s: s["input"].update(std=[0, 1, 1]),
    "no run splits": lambda s: s.update(run_splits=[]),
    "a file outside the export": lambda s: s["splits"][0].update(file="../other/split_1.onnx"),
    "an absolute file": lambda s: s["splits"][0].update(file="/etc/passwd"),
    "a split named twice": lambda s: s.update(splits=s["splits"] * 2),
    "splits not a list": lambda s: s.update(splits={"split_0": 1}),
    "deep nesting": lambda s: json.dumps(s)[:-1] + ', "outputs": ' + "[" * 5000 + "]" * 5000 + "}",
    "another format": lambda s: s.update(format="someone-else/v9"),
    "a number for the model id": lambda s: s.update(model_id=5),
    "a float32 export describing an int8 file": lambda s: s["splits"][0].update(int8=INT8),
    "int8 under its threshold": lambda s: [s.update(quantize="static"), s["splits"][0].update(int8=INT8_UNDER)],
    "int8 under its threshold in one runtime": lambda s: [
        s.update(quantize="static"),
        s["splits"][0].update(int8={**INT8, "by_runtime": {"onnx": 0.995, "openvino": 0.9}}),
    ],
}


@pytest.mark.parametrize("attack", SIDECAR_ATTACKS)
def test_a_damaged_or_foreign_sidecar_is_one_line(attack: str, run: Path, images: Path, tmp_path: Path) -> None:
    export(ExportConfig(run=run, quiet=True))
    path = RunFolder(run).onnx / "model.json"
    sidecar = json.loads(path.read_text())
    text = SIDECAR_ATTACKS[attack](sidecar)  # the sidecar changed in place, or its text
    path.write_text(text if isinstance(text, str) else json.dumps(sidecar))
    args = ["predict", str(run), str(images), "-o", str(tmp_path / "p.csv"), "--runtime", "onnx"]
    assert "model.json is not the sidecar of an eic export" in _one_line_refusal(args)
    assert not (tmp_path / "p.csv").exists()


def test_tensor_data_beside_an_onnx_file_is_covered_by_the_sidecar(
    run: Path, images: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Graphs over 2 GB keep their tensors in a file beside them: the sidecar names it with its digest."""
    import onnx

    from europeana_imgcls.outputs import export as module

    real = module._write_graph

    def external(model: object, path: Path, opset: int) -> None:  # as torch writes a graph over 2 GB
        real(model, path, opset)  # type: ignore[arg-type]
        onnx.save(onnx.load(str(path)), str(path), save_as_external_data=True, location=path.name + ".data")

    monkeypatch.setattr(module, "_write_graph", external)
    report = export(ExportConfig(run=run, quiet=True))
    (split,) = json.loads((report.output / "model.json").read_text())["splits"]
    assert list(split["external"]) == [split["file"] + ".data"]
    out = tmp_path / "p.csv"
    predict(PredictConfig(run=run, inputs=[str(images)], output=out, runtime="onnx", quiet=True))
    assert len(rows(out)) == 15
    data = report.output / (split["file"] + ".data")
    data.write_bytes(data.read_bytes()[:-4] + b"\0\0\0\0")
    with pytest.raises(ModelError, match="tensor data of .* is missing or not the file"):
        predict(PredictConfig(run=run, inputs=[str(images)], output=tmp_path / "q.csv", runtime="onnx", quiet=True))


@pytest.mark.slow  # end to end on the shared multi-label run
def test_a_multilabel_export_has_a_sigmoid_per_label_in_its_graph(ml_run, tmp_path: Path) -> None:
    pytest.importorskip("onnxruntime")
    from europeana_imgcls.core.config import ExportConfig
    from europeana_imgcls.outputs.export import export

    run = Path(shutil.copytree(ml_run[1], tmp_path / "run"))
    report = export(ExportConfig(run=run, split="0", quiet=True))  # checked against PyTorch, else refused
    assert max(report.max_difference.values()) <= 1e-3
    sidecar = json.loads((report.output / "model.json").read_text())
    assert sidecar["mode"] == "multi-label"
    assert sidecar["outputs"]["probabilities"]["what"].startswith("sigmoid per label")


def test_calibrating_again_says_that_the_export_holds_the_old_thresholds(
    run: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """model.json hands enrich's thresholds to callers without eic: after eic calibrate changes them, the export still
    holds the old ones, and calibrate says to export again. Unchanged, it says nothing."""
    from europeana_imgcls.core.config import CalibrateConfig
    from europeana_imgcls.modelling.calibration import calibrate

    export(ExportConfig(run=run, quiet=True))
    export(ExportConfig(run=run, output=run / "onnx-int8", quiet=True))  # the folder --quantize's help suggests
    exported = json.loads((run / "onnx" / "model.json").read_text())
    calibrate(CalibrateConfig(run=run, precision=exported["precision_target"], overwrite=True))
    assert "holds the thresholds of the calibration before this one" not in caplog.text
    calibrate(CalibrateConfig(run=run, precision=0.5, overwrite=True))
    for folder in ("onnx", "onnx-int8"):
        assert f"{run / folder / 'model.json'} holds the thresholds of the calibration before this one" in caplog.text
    assert f"export the run again (eic export {run} --overwrite)" in caplog.text


@pytest.mark.slow(seconds=4)  # three exports, two of them int8
def test_int8_is_held_to_the_annotations_enrich_emits_at_the_runs_thresholds(run: Path) -> None:
    """eic enrich publishes a class only over its calibrated threshold: an int8 file that keeps every top class but
    moves a probability across a threshold changes what reaches Europeana, and that is no agreement."""
    import torch

    from europeana_imgcls.outputs import export as exporting
    from europeana_imgcls.outputs.inference import load_run
    from europeana_imgcls.outputs.onnx_runtime import session

    # Dynamic: no accuracy control, which (static) would keep in float what moves the annotation: the same int8 file.
    first = export(ExportConfig(run=run, quantize="dynamic", output=run / "q", min_agreement=0.0, quiet=True))
    (check,) = first.quantisation
    export(ExportConfig(run=run, split=check.split.removeprefix("split_"), output=run / "f32", quiet=True))
    cpu = torch.device("cpu")
    model = next(m for m in load_run(run, cpu, "all") if m.split == check.split)
    test = exporting._test_images(RunFolder(run), model, 1000)
    said = [quantise.logits_of(session(run / f / f"{check.split}.onnx", cpu), test.pixels) for f in ("f32", "q")]
    before, after = (model.task.from_logits(z / model.temperature) for z in said)
    same = np.flatnonzero(before.argmax(1) == after.argmax(1))
    moved = np.abs(before - after).max(1)[same]
    assert len(same) and moved.max() > 0, "int8 moved no probability of an image whose class it kept"
    image = same[moved.argmax()]
    top = int(before[image].argmax())
    # The run's threshold for that class, set between the two probabilities: the same class, one annotation fewer.
    calibration = json.loads((run / "calibration.json").read_text())
    calibration["per_class"][top]["threshold"] = float(before[image, top] + after[image, top]) / 2
    (run / "calibration.json").write_text(json.dumps(calibration))
    args = ["export", str(run), "--quantize", "dynamic", "--min-agreement", str(check.agreement), "-o", str(run / "q2")]
    line = _one_line_refusal(args)
    assert re.fullmatch(
        r"eic: error: split_\d: int8 agrees with float32 on [\d.]+% of \d+ test images \(ONNX Runtime [\d.]+%, "
        r"OpenVINO [\d.]+%\), in their labels and in the "
        r"annotations eic enrich emits at the run's thresholds, under the [\d.]+% asked; nothing is written: .*",
        line,
    ), line
    assert not (run / "q2").exists()


@pytest.mark.parametrize("edit", ["classes swapped", "another temperature"])
def test_a_sidecar_edited_to_say_other_classes_or_temperature_is_refused(
    run: Path, images: Path, tmp_path: Path, edit: str
) -> None:
    """model.json's classes and temperature were trusted as read (its digest covers the files, not itself): with two
    classes swapped in it, every label of an export came out as the other class, and a tiny temperature made every
    record pass every threshold. The file says them too, where its digest covers them."""
    export(ExportConfig(run=run, quiet=True))
    sidecar_path = run / "onnx" / "model.json"
    sidecar = json.loads(sidecar_path.read_text())
    for split in sidecar["splits"]:
        meta = split["meta"]
        if edit == "classes swapped":
            meta["class_names"][0], meta["class_names"][1] = meta["class_names"][1], meta["class_names"][0]
        else:
            meta["temperature"] = 1e-30
    if edit == "classes swapped":
        sidecar["classes"][0], sidecar["classes"][1] = sidecar["classes"][1], sidecar["classes"][0]
    sidecar_path.write_text(json.dumps(sidecar))
    args = ["predict", str(run), str(images), "--runtime", "onnx", "-o", str(tmp_path / "p.csv")]
    line = _one_line_refusal(args)
    assert "the sidecar was edited since the export" in line and ("classes" in line or "temperature" in line), line
    assert not (tmp_path / "p.csv").exists()
