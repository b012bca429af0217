"""A run's names: spelt once (core/run_names.py), and the run folder, the recogniser and the messages agree."""

from __future__ import annotations

from pathlib import Path

import pytest

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
