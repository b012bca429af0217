"""A run's names: spelt once (core/run_names.py), and the run folder, the recogniser and the messages agree."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import polars as pl
import pytest
from typer.testing import CliRunner

from europeana_imgcls import PredictConfig, predict
from europeana_imgcls.cli.app import app
from europeana_imgcls.core.errors import ModelError
from europeana_imgcls.core.recognise import is_run, what_is
from europeana_imgcls.core.run_names import split_index, split_name
from europeana_imgcls.modelling.run_folder import FINISHED_SPLITS, RunFolder, not_a_run


@pytest.mark.parametrize("index", [0, 1, 9, 10, 123])
def test_a_split_name_gives_back_its_index(index: int) -> None:
    assert split_index(split_name(index)) == index


@pytest.mark.parametrize("name", ["split_x", "split_", "split_1a", "model", "split_1.onnx", "xsplit_1", "Split_1"])
def test_other_names_are_no_split(name: str) -> None:
    assert split_index(name) is None


def test_the_run_folder_and_the_recogniser_see_the_same_run(tmp_path: Path) -> None:
    run = RunFolder(tmp_path / "run")
    assert not is_run(run.path) and run.splits() == []
    for index in (2, 10):
        run.split(index).path.mkdir(parents=True)
        run.split(index).model.write_bytes(b"weights")
    (run.path / "split_x").mkdir()  # not a split: neither counts it
    assert is_run(run.path) and what_is(run.path) == "a training run"
    assert [s.index for s in run.splits()] == [2, 10]
    assert run.model_paths() == [run.split(2).model, run.split(10).model]
    one = RunFolder(run.split(2).path)  # a split folder stands for a run of one split
    assert one.is_split and is_run(one.path) and one.model_paths() == [run.split(2).model]


def test_a_folder_without_models_is_refused_naming_what_a_run_holds(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelError, match=r"no model\.pt in it or in split_\*/ folders"):
        RunFolder(tmp_path / "empty").model_paths()
    assert "point at an eic train output" in not_a_run(tmp_path / "empty")
    assert FINISHED_SPLITS == "split_*/metrics.json"


def test_a_folder_that_is_no_split_is_not_taken_for_one(trained: Path, eval_dir: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    shutil.copytree(trained, run)
    shutil.copytree(run / "split_0", run / "split_x")  # a copy a user made by hand
    (run / "split_backup").mkdir()
    out = tmp_path / "p.csv"
    predict(PredictConfig(run=run, inputs=[str(eval_dir / "map")], output=out, quiet=True))
    predict(PredictConfig(run=trained, inputs=[str(eval_dir / "map")], output=tmp_path / "q.csv", quiet=True))
    assert pl.read_csv(out)["top_k"].to_list() == pl.read_csv(tmp_path / "q.csv")["top_k"].to_list()  # 3 splits
    result = CliRunner().invoke(app, ["predict", str(run), str(eval_dir / "map"), "--split", "x", "-o", str(out)])
    assert result.exit_code != 0 and len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert "Traceback" not in result.output


@pytest.mark.parametrize("text", ["[]", '[{"folds": 3}]', "3", "null", '"run"'])
def test_a_split_file_that_is_no_json_object_is_a_damaged_run(tmp_path: Path, text: str) -> None:
    # A split's config.json holding a list reached calibration's `config.get` as an AttributeError (eic report).
    split = RunFolder(tmp_path).split(0)
    split.path.mkdir(parents=True)
    for path in (split.config, split.metrics):
        path.write_text(text, encoding="utf-8")
    for read in (split.read_config, split.read_metrics):
        with pytest.raises(ModelError, match="not the JSON object eic writes"):
            read()


@pytest.mark.parametrize("temperature", [[1.5], "2", None, 0, -1.0, float("nan"), True])
def test_a_temperature_that_is_no_positive_number_is_a_damaged_run(tmp_path: Path, temperature: object) -> None:
    # A list there reached calibration's float() as a TypeError (eic report's mutation test found it).
    split = RunFolder(tmp_path).split(0)
    split.path.mkdir(parents=True)
    split.metrics.write_text(json.dumps({"temperature": temperature}), encoding="utf-8")
    with pytest.raises(ModelError, match="not a positive number"):
        split.read_temperature()
    split.metrics.write_text(json.dumps({"temperature": 1.25}), encoding="utf-8")
    assert split.read_temperature() == 1.25
    split.metrics.write_text("{}", encoding="utf-8")
    assert split.read_temperature() == 1.0
