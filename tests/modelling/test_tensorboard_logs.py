"""modelling/tensorboard_logs.py: TensorBoard event files, one folder per run."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from europeana_imgcls.cli.app import app

# ---------------------------------------------------------------------------------------------
# TensorBoard


@pytest.mark.slow  # training, then tensorboard reading its event files back
def test_tensorboard_event_files_are_written_and_readable(tmp_path: Path) -> None:
    pytest.importorskip("tensorboard", reason="the [tensorboard] extra (installed by .ci/run)")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from europeana_imgcls.modelling.training import train

    from ..support import config, make_folders

    data = make_folders(tmp_path / "data", per_class=6, size=32)
    train(
        config(data, tmp_path / "run", arch="tiny", epochs=2, patience=5, gradcam_images=0, tensorboard=tmp_path / "tb")
    )
    for k in range(3):
        events = EventAccumulator(str(tmp_path / "tb" / "run" / f"split_{k}"))
        events.Reload()
        tags = events.Tags()
        assert {"loss/train", "loss/validation", "validation/accuracy", "learning_rate", "test/accuracy"} <= set(
            tags["scalars"]
        )
        assert [e.step for e in events.Scalars("loss/train")] == [1, 2]
        assert tags["images"] == ["test/confusion_matrix"]
    hparams = EventAccumulator(str(tmp_path / "tb" / "run"))
    hparams.Reload()
    assert "hparam/accuracy" in hparams.Tags()["scalars"]


@pytest.mark.slow  # four trainings logging through the tensorboard extra
def test_runs_named_alike_never_share_a_tensorboard_folder_and_a_resumed_run_keeps_its_own(tmp_path: Path) -> None:
    pytest.importorskip("tensorboard", reason="the [tensorboard] extra (installed by .ci/run)")
    from europeana_imgcls.modelling.training import train

    from ..support import config, make_folders

    data = make_folders(tmp_path / "data", per_class=4, size=32)
    board = tmp_path / "tb"
    settings = dict(arch="tiny", epochs=1, gradcam_images=0, crossvalidation=False, tensorboard=board)
    for experiment in ("a", "b"):  # two experiments, each with its run folder called "run"
        train(config(data, tmp_path / experiment / "run", **settings))
    assert sorted(p.name for p in board.iterdir()) == ["run", "run-2"]
    train(config(data, tmp_path / "a" / "run", **{**settings, "epochs": 2}, resume=True))
    assert sorted(p.name for p in board.iterdir()) == ["run", "run-2"]  # carried on where it was logged
    shutil.rmtree(tmp_path / "b" / "run")  # a new run where an old one was: a new folder, not the old one's
    train(config(data, tmp_path / "b" / "run", **settings))
    assert sorted(p.name for p in board.iterdir()) == ["run", "run-2", "run-3"]


def test_tensorboard_without_its_extra_is_one_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from ..support import make_folders

    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)  # as if the extra were not installed
    data = make_folders(tmp_path / "data", per_class=4, size=32)
    result = CliRunner().invoke(
        app,
        ["train", str(data), "-o", str(tmp_path / "run"), "--weights", "none", "--tensorboard", str(tmp_path / "tb")],
    )
    assert result.exit_code != 0 and result.stderr.count("\n") == 1
    assert "europeana-imgcls[tensorboard]" in result.stderr and not (tmp_path / "run").exists()
