"""modelling/calibration.py: temperatures and precision-targeted thresholds, on known answers and on a
cross-validated run of the sandbox's records."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from europeana_imgcls import TrainConfig, train
from europeana_imgcls.cli.app import app
from europeana_imgcls.core.config import EnrichConfig
from europeana_imgcls.core.errors import CalibrationError
from europeana_imgcls.datasets.tasks import task_for
from europeana_imgcls.modelling.calibration import (
    choose_thresholds,
    expected_calibration_error,
    fit_temperature,
    score_thresholds,
)
from europeana_imgcls.outputs.enrichment import enrich

from ..support import TARGET

# ---------------------------------------------------------------------------------------------
# The numbers, on data with known answers


@pytest.mark.slow
def test_training_writes_a_calibration_a_diagram_and_a_model_card(world) -> None:
    run = world["root"] / "run"
    calibration = world["train"].calibration
    assert calibration is not None and calibration.precision_target == TARGET
    assert json.loads((run / "calibration.json").read_text())["precision_target"] == TARGET
    assert (run / "reliability.png").stat().st_size > 10_000
    assert calibration.ece_after <= calibration.ece_before
    emitted = [c for c in calibration.per_class if c.threshold is not None]
    assert emitted, "no class reaches the target: the test set-up is too hard to test anything"
    for c in emitted:
        assert c.precision >= TARGET and c.labelled >= 5 and 0 < c.coverage <= 1
    card = (run / "MODEL_CARD.md").read_text()
    for section in (
        "## Model details",
        "## Intended use",
        "## Out-of-scope use",
        "## Training data",
        "## Metrics",
        "## Calibration",
        "## Bias, risks and limitations",
    ):
        assert section in card
    for c in calibration.per_class:
        assert (f"| {c.name} | never emitted |" in card) == (c.threshold is None)


@pytest.mark.slow
def test_a_run_without_out_of_fold_predictions_says_how_to_get_them(world, tmp_path: Path) -> None:
    run = tmp_path / "single"
    report = train(
        TrainConfig(
            data_dir=world["root"] / "images",
            output_dir=run,
            arch="tiny",  # not the point here: a run of one split
            weights="none",
            figures=False,
            epochs=1,
            input_size=32,
            batch_size=16,
            folds=3,
            quiet=True,
            gradcam_images=0,
            crossvalidation=False,
        )
    )
    assert report.calibration is None and "cross-validation" in report.calibration_note
    assert "Not calibrated" in (run / "MODEL_CARD.md").read_text()
    with pytest.raises(CalibrationError, match="cross-validation"):
        enrich(EnrichConfig(run=run, table=world["root"] / "new.csv", output=tmp_path / "x.jsonld"))
    assert not (tmp_path / "x.jsonld").exists()


def test_temperature_scaling_recovers_an_overconfident_model() -> None:
    rng = np.random.default_rng(0)
    logits = rng.normal(0, 1.5, size=(4000, 5))
    honest = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    truth = np.array([rng.choice(5, p=p) for p in honest])
    task = task_for("single-label")
    overconfident = logits * 3  # logits three times too large
    temperature = fit_temperature(task, overconfident, truth)
    assert 2.5 < temperature < 3.6
    assert (
        expected_calibration_error(task, task.from_logits(overconfident / temperature), truth)
        < expected_calibration_error(task, task.from_logits(overconfident), truth) / 3
    )


def test_thresholds_are_the_lowest_that_reach_the_target() -> None:
    task = task_for("multi-label")
    # Label 0: right above 0.6, wrong below; label 1: right one time in two everywhere.
    scores = np.array([0.95, 0.9, 0.85, 0.8, 0.75, 0.7, 0.65, 0.55, 0.5, 0.45])
    probs = np.stack([scores, scores], axis=1)
    truth = np.stack([(scores > 0.6).astype(int), np.arange(10) % 2], axis=1)
    zero, one = choose_thresholds(task, probs, truth, ["a", "b"], 0.9)
    assert zero.threshold == 0.65 and zero.precision == 1.0 and zero.coverage == 1.0 and zero.labelled == 7
    assert one.threshold is None and one.coverage == 0.0
    rows = score_thresholds(task, probs, truth, ["a", "b"], np.array([0.65, np.inf]))
    assert rows[0]["precision"] == 1.0 and rows[0]["labelled"] == 7 and rows[1]["labelled"] == 0


@pytest.mark.slow
def test_calibrate_keeps_the_runs_calibration_unless_asked(world, tmp_path: Path) -> None:
    import shutil

    run = tmp_path / "run"
    shutil.copytree(world["root"] / "run", run)
    before = (run / "calibration.json").read_text()
    kept = CliRunner().invoke(app, ["calibrate", str(run), "--precision", "0.5"])
    assert kept.exit_code == 1 and len(kept.stderr.strip().splitlines()) == 1, kept.stderr
    assert f"calibrated for a precision of {TARGET}" in kept.stderr and "--overwrite" in kept.stderr
    assert (run / "calibration.json").read_text() == before
    replaced = CliRunner().invoke(app, ["calibrate", str(run), "--precision", "0.5", "--overwrite"])
    assert replaced.exit_code == 0, replaced.stderr
    assert json.loads((run / "calibration.json").read_text())["precision_target"] == 0.5
    again = CliRunner().invoke(app, ["calibrate", str(run), "--precision", "0.5"])  # the same target: no harm
    assert again.exit_code == 0, again.stderr


def test_a_calibration_of_another_run_is_refused_in_one_line(trained_run: Path, tmp_path: Path) -> None:
    """calibration.json names no model: another run's, copied in (or the run's splits trained again since), gave
    enrich another model's thresholds and published at a precision nobody measured. Its temperatures are each
    split's own: a calibration whose temperatures are not the run's splits' is refused."""
    import shutil

    from europeana_imgcls.core.config import ExportConfig
    from europeana_imgcls.modelling.calibration import load_calibration
    from europeana_imgcls.outputs.export import export

    run = Path(shutil.copytree(trained_run, tmp_path / "run"))
    load_calibration(run)  # its own
    calibration = json.loads((run / "calibration.json").read_text())
    calibration["temperatures"] = {name: t * 3 for name, t in calibration["temperatures"].items()}
    (run / "calibration.json").write_text(json.dumps(calibration))
    said = "is not this run's calibration (split_0's temperature there is not the split's)"
    for check in (lambda: load_calibration(run), lambda: export(ExportConfig(run=run, quiet=True))):
        with pytest.raises(CalibrationError, match=re.escape(said)):
            check()
    assert not (run / "onnx").exists()


@pytest.mark.parametrize(
    "damage",
    [
        "a truth of no class",
        "logits a list",
        "a class missing from the logits",
        "a logit of text",
        "class index a list",
    ],
)
def test_a_damaged_test_fold_or_class_index_is_one_line(trained_run: Path, tmp_path: Path, damage: str) -> None:
    """calibrate reads every split's test predictions and class index back: a damaged one was a ValueError,
    TypeError or KeyError traceback."""
    import csv
    import shutil

    run = Path(shutil.copytree(trained_run, tmp_path / "run"))
    split = run / ("split_0" if damage == "class index a list" else "split_1")  # the classes are split 0's
    if damage == "class index a list":
        (split / "class_index.json").write_text("[1, 2]")
    else:
        with (split / "test_predictions.csv").open(newline="") as handle:
            table = list(csv.DictReader(handle))
        row, logits = table[2], json.loads(table[2]["logits"])
        first = next(iter(logits))
        if damage == "a truth of no class":
            row["truth"] = "zzz"
        elif damage == "logits a list":
            row["logits"] = "[1, 2, 3]"
        elif damage == "a class missing from the logits":
            row["logits"] = json.dumps({k: v for k, v in logits.items() if k != first})
        else:
            row["logits"] = json.dumps({**logits, first: "many"})
        with (split / "test_predictions.csv").open("w", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=list(table[0]))
            writer.writeheader()
            writer.writerows(table)
    result = CliRunner().invoke(app, ["calibrate", str(run), "--precision", "0.9", "--overwrite"])
    lines = result.stderr.strip().splitlines()
    assert result.exit_code != 0 and len(lines) == 1 and lines[0].startswith("eic: error:"), result.output
    assert split.name in lines[0] and "Traceback" not in result.output, lines[0]


def test_calibrate_writes_its_figure_into_the_run_never_through_a_link(trained_run: Path, tmp_path: Path) -> None:
    """The reliability diagram was saved through whatever stood at RUN/reliability.png: a link there (a run folder
    kept in DVC or git-annex is links into a cache) had its target replaced by the plot."""
    from ..support import copy_of

    run = copy_of(trained_run, tmp_path)
    photo = tmp_path / "photo.png"
    photo.write_bytes(b"\x89PNG the user's own")
    (run / "reliability.png").unlink(missing_ok=True)
    (run / "reliability.png").symlink_to(photo)
    result = CliRunner().invoke(app, ["calibrate", str(run), "--precision", "0.9", "--overwrite"])
    assert result.exit_code == 0, result.stderr
    assert photo.read_bytes() == b"\x89PNG the user's own"
    assert not (run / "reliability.png").is_symlink() and (run / "reliability.png").read_bytes()[:4] == b"\x89PNG"
