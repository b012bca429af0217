"""Fault injection: eic touches only what it wrote, loses no record without a word, and keeps what a run
knew before it started, however the run ends (docs/reliability.md, rules 1-3)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from europeana_imgcls.cli.app import app

# ---------------------------------------------------------------------------------------------
# Rule 1: eic removes only the temporary files it names itself; existing outputs are refused


# ---------------------------------------------------------------------------------------------
# Rule 2: every row ends saved, already there, a known failure, a new failure or skipped, with a reason


# ---------------------------------------------------------------------------------------------
# Rule 3: what was known before a run is still known after it, however the run ends


# ---------------------------------------------------------------------------------------------
# Rule 4: the API key is sent only to the origin the user configured


# ---------------------------------------------------------------------------------------------
# Rule 5: untrusted bytes meet only the decoders of image formats, within a memory budget


# ---------------------------------------------------------------------------------------------
# Rule 7: names and races


# ---------------------------------------------------------------------------------------------
# Rule 9: smaller ones


def test_a_filesystem_error_is_one_line(tmp_path: Path) -> None:
    table = tmp_path / "t.csv"
    table.write_text("ID,category\n/1/a,map\n")
    result = CliRunner().invoke(app, ["stats", str(table), "-o", "/dev/null/x.json"])
    assert result.exit_code == 1 and result.stderr.startswith("eic: error: ")
    assert len(result.stderr.strip().splitlines()) == 1 and "Traceback" not in result.stderr


# ---------------------------------------------------------------------------------------------
# Rules 6 and 8: a resumed run is the same run; a run that would die late for a reason known early does not start


def test_train_resume_refuses_another_run(tmp_path: Path) -> None:
    from europeana_imgcls import train
    from europeana_imgcls.core.errors import DatasetError

    from .support import config, make_folders

    data = make_folders(tmp_path / "data", per_class=6, size=32)
    other = make_folders(tmp_path / "other", per_class=6, size=32)
    run = tmp_path / "run"
    train(config(data, run, epochs=1, crossvalidation=False, gradcam_images=0))
    with pytest.raises(DatasetError, match="arch 'tiny' there, 'resnet34' now"):
        train(config(data, run, epochs=1, crossvalidation=False, gradcam_images=0, arch="resnet34", resume=True))
    with pytest.raises(DatasetError, match="data_dir"):
        train(config(other, run, epochs=1, crossvalidation=False, gradcam_images=0, resume=True))
    train(config(data, run, epochs=1, crossvalidation=False, gradcam_images=0, resume=True))  # the same run goes on


def test_a_class_held_by_one_provider_is_refused_before_training(tmp_path: Path) -> None:
    from europeana_imgcls.cli.app import app

    from .support import make_folders

    data = make_folders(tmp_path / "data", per_class=9, size=32)
    for path in (data / "specimen").iterdir():  # every specimen from one provider
        path.rename(path.with_name("[ph]7777[ph]" + path.name.split("[ph]")[-1]))
    result = CliRunner().invoke(
        app,
        [
            "train",
            str(data),
            "-o",
            str(tmp_path / "run"),
            "--group-by-provider",
            "--folds",
            "3",
            "--weights",
            "none",
            "--epochs",
            "1",
            "--quiet",
        ],
    )
    assert result.exit_code == 1, result.stderr
    assert "class 'specimen'" in result.stderr and "7777" in result.stderr and "--group-by-provider" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert not list((tmp_path / "run").glob("split_*/model.pt"))


def test_a_split_whose_validation_loss_is_never_finite_keeps_a_model(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import math

    from europeana_imgcls.modelling import training

    from .support import config, make_folders

    real = training.evaluate_loader

    def nan_loss(*args: object, **kwargs: object) -> training.Evaluation:
        result = real(*args, **kwargs)
        result.loss = math.nan
        return result

    monkeypatch.setattr(training, "evaluate_loader", nan_loss)
    data = make_folders(tmp_path / "data", per_class=6, size=32)
    report = training.train(config(data, tmp_path / "run", epochs=2, crossvalidation=False, gradcam_images=0))
    assert (tmp_path / "run" / "split_0" / "model.pt").is_file() and report.splits[0].metrics

    def refuse(constant: str) -> None:
        raise AssertionError(f"{constant} is not JSON")

    for path in (tmp_path / "run").rglob("*.json"):  # what other tools read: no NaN, which only Python accepts
        json.loads(path.read_text(), parse_constant=refuse)
    assert json.loads((tmp_path / "run" / "split_0" / "metrics.json").read_text())["best_val_loss"] is None
    assert "nan" not in (tmp_path / "run" / "MODEL_CARD.md").read_text().lower()


# ---------------------------------------------------------------------------------------------
# Properties of the pure parts: URLs and tables of any shape


def test_a_run_that_failed_before_its_first_epoch_can_be_retried(tmp_path: Path) -> None:
    from europeana_imgcls import train
    from europeana_imgcls.core.errors import ModelError

    from .support import config, make_folders

    data = make_folders(tmp_path / "data", per_class=6, size=32)
    with pytest.raises(ModelError, match="offline"):  # torchvision's weights cannot be fetched here
        train(config(data, tmp_path / "run", arch="resnet18", weights="imagenet", epochs=1, crossvalidation=False))
    report = train(config(data, tmp_path / "run", epochs=1, crossvalidation=False, gradcam_images=0))
    assert report.splits  # the natural retry with --weights none is not refused


# ---------------------------------------------------------------------------------------------
# Found in review: resumes, encodings and paths


def test_a_resumed_probe_run_keeps_every_split_loadable(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from europeana_imgcls import EvaluateConfig, evaluate, train
    from europeana_imgcls.modelling import heads

    from .support import config, make_folders

    data = make_folders(tmp_path / "data", per_class=6, size=32)
    real = heads._split

    def stop_at_split_one(*args: object, **kwargs: object) -> object:
        if args[4].folder.index == 1:  # where the split writes
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(heads, "_split", stop_at_split_one)
    probe = dict(method="linear-probe", arch="tiny", gradcam_images=0)
    with pytest.raises(KeyboardInterrupt):
        train(config(data, tmp_path / "run", **probe))
    monkeypatch.setattr(heads, "_split", real)
    monkeypatch.chdir(tmp_path)  # and the data folder named another way
    train(config(Path("data"), tmp_path / "run", resume=True, **probe))
    report = evaluate(EvaluateConfig(run=tmp_path / "run", eval_dir=data, output_dir=tmp_path / "ev", gallery=0))
    assert len(report.splits) == 3  # split 0, fitted before the interruption, still loads


def test_embed_resume_refuses_another_folder(tmp_path: Path) -> None:
    from europeana_imgcls.core.config import EmbedConfig
    from europeana_imgcls.core.errors import DatasetError
    from europeana_imgcls.modelling.embedding import embed

    from .support import make_folders

    first = make_folders(tmp_path / "first", per_class=3, size=32)
    other = make_folders(tmp_path / "other", per_class=3, size=32)
    out = tmp_path / "e.parquet"
    common = dict(output=out, arch="tiny", weights="none", input_size=32, quiet=True)
    embed(EmbedConfig(data_dir=first, shard="0/2", **common))  # a shard started on the first folder
    with pytest.raises(DatasetError, match=r"data_dir: \".*first\" then, \".*other\" now"):
        embed(EmbedConfig(data_dir=other, resume=True, **common))
    merged = embed(EmbedConfig(data_dir=first, resume=True, **common))
    assert merged.already_done + merged.embedded == 9 and merged.already_done > 0


# ---------------------------------------------------------------------------------------------
# Round two: a user's path is a path, never a pattern
