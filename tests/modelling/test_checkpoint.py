"""modelling/checkpoint.py: checkpoints loaded with weights_only, crafted or damaged ones refused in one line."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from europeana_imgcls import PredictConfig, predict
from europeana_imgcls.cli.app import app
from europeana_imgcls.core.errors import ModelError


def test_a_checkpoint_that_runs_code_is_refused(trained: Path, tmp_path: Path) -> None:
    class Evil:
        def __reduce__(self):
            return (os.system, (f"touch {tmp_path / 'pwned'}",))

    run = tmp_path / "run"
    shutil.copytree(trained / "split_0", run / "split_0")
    torch.save({"format": "europeana-imgcls/checkpoint-v1", "model_state": Evil()}, run / "split_0" / "model.pt")
    images = tmp_path / "imgs"  # the outputs beside, not inside, the images read
    images.mkdir()
    with pytest.raises(ModelError, match="refused"):
        predict(PredictConfig(run=run, inputs=[str(images)], output=tmp_path / "x.csv"))
    result = CliRunner().invoke(app, ["evaluate", str(run), str(images), "-o", str(tmp_path / "ev")])
    assert result.exit_code == 1 and "refused" in result.stderr and len(result.stderr.splitlines()) == 1
    assert not (tmp_path / "pwned").exists()
    torch.save({"weights": torch.zeros(2)}, run / "split_0" / "model.pt")
    with pytest.raises(ModelError, match="not a checkpoint written by eic train"):
        predict(PredictConfig(run=run, inputs=[str(images)], output=tmp_path / "x.csv"))


def _edited_run(trained: Path, tmp_path: Path, **changes: object) -> Path:
    """A copy of the run whose split 0 checkpoint has ``changes`` (a value None removes the key)."""
    run = tmp_path / "run"
    shutil.copytree(trained, run)
    model = run / "split_0" / "model.pt"
    state = torch.load(model, weights_only=True)
    for key, value in changes.items():
        if value is None:
            state.pop(key, None)
        else:
            state[key] = value
    torch.save(state, model)
    return run


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"class_names": "map painting"}, "damaged checkpoint"),
        ({"class_names": None}, "damaged checkpoint"),
        ({"backbone": "backbone.pt"}, "damaged checkpoint"),  # a head-only model without the backbone's digest
        ({"arch": 7}, "damaged checkpoint"),
    ],
)
def test_a_crafted_checkpoint_is_one_line(
    trained: Path, eval_dir: Path, tmp_path: Path, changes: dict[str, object], message: str
) -> None:
    run = _edited_run(trained, tmp_path, **changes)
    result = CliRunner().invoke(
        app, ["predict", str(run), str(eval_dir / "map"), "-o", str(tmp_path / "p.csv"), "--quiet"]
    )
    assert result.exit_code == 1 and message in result.stderr and "split_0" in result.stderr, result.stderr
    assert len(result.stderr.strip().splitlines()) == 1 and "Traceback" not in result.output
