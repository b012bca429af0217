"""--runtime openvino: the export ``runtime`` onnx runs, run by OpenVINO with the labels PyTorch gives, through the
same journal, resume, shards and refusals."""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from europeana_imgcls import PredictConfig, predict
from europeana_imgcls.cli.app import app
from europeana_imgcls.core.config import ExportConfig
from europeana_imgcls.core.errors import ConfigError, DatasetError, ModelError
from europeana_imgcls.outputs.export import export
from europeana_imgcls.outputs.openvino_runtime import compile_onnx

from ..support import make_folders, rows


@pytest.fixture(scope="module")
def exported(shared_trained_run: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A copy of the shared run with every split exported (RUN/onnx), read only by the tests."""
    run = Path(shutil.copytree(shared_trained_run, tmp_path_factory.mktemp("ov") / "run"))
    export(ExportConfig(run=run, split="all", quiet=True))
    return run


@pytest.fixture(scope="module")
def images(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_folders(tmp_path_factory.mktemp("new"), per_class=4, size=44)


def _predict(run: Path, images: Path, out: Path, **settings: object) -> int:
    return predict(PredictConfig(run=run, inputs=[str(images)], output=out, quiet=True, **settings)).predicted  # type: ignore[arg-type]


def test_openvino_labels_as_pytorch_does(exported: Path, images: Path, tmp_path: Path) -> None:
    out = {runtime: tmp_path / f"{runtime}.csv" for runtime in ("torch", "openvino")}
    for runtime, path in out.items():
        assert _predict(exported, images, path, split="all", runtime=runtime) == 12  # an ensemble of three
    torch_rows, ov_rows = (sorted(rows(p), key=lambda r: r["image"]) for p in out.values())
    assert [r["prediction"] for r in torch_rows] == [r["prediction"] for r in ov_rows]
    for a, b in zip(torch_rows, ov_rows, strict=True):
        assert abs(float(a["confidence"]) - float(b["confidence"])) < 1e-4  # float32 throughout, not bfloat16


def test_a_batch_cut_across_streams_answers_as_one_pass(exported: Path) -> None:
    """The slices of a batch come back in the batch's order, whatever the number of streams."""
    compiled = compile_onnx(exported / "onnx" / "split_0.onnx", 32)
    pixels = np.random.default_rng(0).integers(0, 256, (13, 3, 32, 32), dtype=np.uint8)
    whole = compiled(pixels)
    one_by_one = np.concatenate([compiled(pixels[i : i + 1]) for i in range(len(pixels))])
    assert whole.shape == (13, 3) and whole.dtype == np.float32
    np.testing.assert_allclose(whole, one_by_one, atol=1e-5)
    assert compiled(pixels[:0]).shape == (0, 3)


def test_openvino_shards_merge_and_a_resume_names_the_runtime(exported: Path, images: Path, tmp_path: Path) -> None:
    whole, sharded = tmp_path / "whole.csv", tmp_path / "sharded.csv"
    _predict(exported, images, whole, runtime="openvino")
    parts = [_predict(exported, images, sharded, runtime="openvino", shard=f"{k}/2") for k in (0, 1)]
    merged = predict(
        PredictConfig(run=exported, inputs=[str(images)], output=sharded, runtime="openvino", resume=True, quiet=True)
    )
    assert sum(parts) == merged.already_done == 12 and merged.predicted == 0
    assert sorted(rows(sharded), key=lambda r: r["image"]) == sorted(rows(whole), key=lambda r: r["image"])
    settings = json.loads((tmp_path / "sharded.csv.journal" / "settings.json").read_text())
    assert settings["runtime"] == "openvino" and len(settings["onnx_files"]) == 1
    # The same files run by ONNX Runtime are another runtime: a resume with it is refused, naming it.
    with pytest.raises(DatasetError, match="runtime: .* then"):
        predict(
            PredictConfig(run=exported, inputs=[str(images)], output=sharded, runtime="onnx", resume=True, quiet=True)
        )


def test_what_runtime_openvino_refuses(exported: Path, shared_trained_run: Path, images: Path, tmp_path: Path) -> None:
    common = dict(inputs=[str(images)], runtime="openvino", quiet=True)
    with pytest.raises(ModelError, match="no such export; run eic export"):
        predict(PredictConfig(run=exported, output=tmp_path / "a.csv", onnx_model=tmp_path / "none", **common))
    with pytest.raises(ConfigError, match="gradcam_dir"):
        predict(PredictConfig(run=exported, output=tmp_path / "b.csv", gradcam_dir=tmp_path / "cams", **common))
    # A file moved beside another split's entry: its digest is right for the sidecar rewritten to match, but the
    # file says it is another split.
    folder = Path(shutil.copytree(exported / "onnx", tmp_path / "swapped"))
    sidecar = json.loads((folder / "model.json").read_text())
    first, second = sidecar["splits"][:2]
    (folder / first["file"]).write_bytes((folder / second["file"]).read_bytes())
    first["sha256"] = second["sha256"]
    (folder / "model.json").write_text(json.dumps(sidecar))
    with pytest.raises(ModelError, match=r"says it is split_1 of model \w+, but .* describes split_0"):
        predict(PredictConfig(run=exported, output=tmp_path / "c.csv", onnx_model=folder, split="0", **common))
    # A file that is not a model at all, its digest written into the sidecar.
    (folder / first["file"]).write_bytes(b"not an onnx file")
    first["sha256"] = __import__("hashlib").sha256(b"not an onnx file").hexdigest()
    (folder / "model.json").write_text(json.dumps(sidecar))
    with pytest.raises(ModelError, match="OpenVINO cannot load it"):
        predict(PredictConfig(run=exported, output=tmp_path / "d.csv", onnx_model=folder, split="0", **common))
    assert not any(tmp_path.glob("*.csv"))


def test_without_the_openvino_extra_one_line_names_it(
    exported: Path, images: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "openvino", None)  # as if it were not installed
    args = ["predict", str(exported), str(images), "-o", str(tmp_path / "p.csv"), "--runtime", "openvino"]
    result = CliRunner().invoke(app, [*args, "--quiet"])
    assert result.exit_code != 0
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "pip install 'europeana-imgcls[openvino]'" in lines[0], result.stderr
