"""outputs/evaluation.py: eic evaluate's scores, checked against scikit-learn, on a run trained in the tests."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from europeana_imgcls import EvaluateConfig, PredictConfig, evaluate, predict
from europeana_imgcls.cli.app import app
from europeana_imgcls.modelling.checkpoint import load_checkpoint
from europeana_imgcls.outputs.evaluation import evaluate_run

from ..support import CLASSES, LABELS, TARGET, copy_of, make_multilabel_folder, rows

# ---------------------------------------------------------------------------------------------
# The numbers, on data with known answers


@pytest.mark.slow
def test_evaluate_reports_the_promise_on_unseen_images(world, tmp_path: Path) -> None:
    report = evaluate_run(
        EvaluateConfig(
            run=world["root"] / "run",
            eval_dir=world["root"] / "eval_images",
            output_dir=tmp_path / "ev",
            gallery=0,
            figures=False,
        )
    )
    rows = report.calibration_check
    assert [r["class"] for r in rows] == report.classes
    for row in rows:
        if row["threshold"] is None:
            assert row["labelled"] == 0 and row["out_of_fold_precision"] is None
        else:
            assert row["out_of_fold_precision"] >= TARGET and row["labelled"] > 0
    labelled = sum(r["labelled"] for r in rows)
    right = sum(r["precision"] * r["labelled"] for r in rows if r["labelled"])
    assert right / labelled >= TARGET - 0.1  # the promise, on images the run never saw
    assert (tmp_path / "ev" / "calibration_check.csv").read_text().startswith("class,threshold,out_of_fold_precision")


def test_evaluate_matches_scikit_learn(trained: Path, eval_dir: Path, tmp_path: Path) -> None:
    from sklearn.metrics import accuracy_score, precision_recall_fscore_support

    report = evaluate(EvaluateConfig(run=copy_of(trained, tmp_path), eval_dir=eval_dir, output_dir=tmp_path / "ev"))
    out = tmp_path / "ev"
    metrics = json.loads((out / "metrics.json").read_text())
    predictions = rows(out / "predictions.csv")
    assert report.images == 21 and report.splits == ["split_0", "split_1", "split_2"]
    assert report.unknown_classes == {"statue": 3}
    assert any(p.endswith("broken.jpg") for p in report.unreadable)
    for k, split in enumerate(report.splits):
        mine = [p for p in predictions if p["split"] == split]
        truth = [p["truth"] for p in mine]
        predicted = [p["prediction"] for p in mine]
        assert metrics["accuracy"]["per_split"][k] == pytest.approx(accuracy_score(truth, predicted))
        labels = sorted(set(truth) | set(predicted))
        p, r, f, _ = precision_recall_fscore_support(truth, predicted, labels=labels, average="macro", zero_division=0)
        assert metrics["precision"]["per_split"][k] == pytest.approx(p)
        assert metrics["recall"]["per_split"][k] == pytest.approx(r)
        assert metrics["f1"]["per_split"][k] == pytest.approx(f)
        assert metrics["sensitivity"]["per_split"][k] == pytest.approx(r)
    for name, values in metrics.items():
        assert values["mean"] == pytest.approx(np.mean(values["per_split"])), name
        assert values["std"] == pytest.approx(np.std(values["per_split"], ddof=1)), name
    with (out / "confusion_matrix.csv").open() as handle:
        table = list(csv.reader(handle))
    assert table[0][1:] == list(CLASSES)
    per_class = {r["class"]: int(r["support"]) for r in rows(out / "per_class.csv")}
    for line in table[1:]:
        assert sum(map(int, line[1:])) == 3 * per_class[line[0]]  # summed over three splits
    assert per_class == {"map": 7, "painting": 7, "specimen": 7}
    for figure in ("confusion_matrix.png", "misclassified.png"):
        assert (out / figure).read_bytes()[:4] == b"\x89PNG"


def test_an_evaluation_without_figures_writes_its_tables_and_no_figure(
    trained: Path, eval_dir: Path, tmp_path: Path
) -> None:
    out = tmp_path / "ev"
    evaluate(EvaluateConfig(run=copy_of(trained, tmp_path), eval_dir=eval_dir, output_dir=out, figures=False))
    assert {"metrics.json", "confusion_matrix.csv", "predictions.csv", "per_class.csv"} <= {
        p.name for p in out.iterdir()
    }
    assert not list(out.glob("*.png"))
    again = CliRunner().invoke(
        app, ["evaluate", str(tmp_path / trained.name), str(eval_dir), "-o", str(out), "--overwrite"]
    )
    assert again.exit_code == 0, again.stderr  # the figures are drawn by default, over an evaluation without them
    assert {"confusion_matrix.png", "misclassified.png"} <= {p.name for p in out.iterdir()}


def test_specificity_from_the_confusion_matrix(trained: Path, eval_dir: Path, tmp_path: Path) -> None:
    evaluate(
        EvaluateConfig(run=trained / "split_1", eval_dir=eval_dir, output_dir=tmp_path / "ev", gallery=0, figures=False)
    )
    predictions = rows(tmp_path / "ev" / "predictions.csv")
    specificities = []
    for c in CLASSES:
        negatives = [p for p in predictions if p["truth"] != c]
        specificities.append(np.mean([p["prediction"] != c for p in negatives]))
    present = {p["truth"] for p in predictions} | {p["prediction"] for p in predictions}
    expected = np.mean([s for c, s in zip(CLASSES, specificities, strict=True) if c in present])
    metrics = json.loads((tmp_path / "ev" / "metrics.json").read_text())
    assert metrics["specificity"]["mean"] == pytest.approx(expected)


@pytest.mark.slow  # end to end on the shared multi-label run
def test_evaluate_and_predict_use_the_tuned_thresholds(ml_run, tmp_path: Path) -> None:
    from sklearn.metrics import f1_score

    out = copy_of(ml_run[1], tmp_path)
    held_out = make_multilabel_folder(tmp_path / "eval", count=24, seed=7)
    report = evaluate(EvaluateConfig(run=out, eval_dir=held_out, output_dir=tmp_path / "ev", gallery=0, figures=False))
    metrics = json.loads((tmp_path / "ev" / "metrics.json").read_text())
    thresholds = json.loads((tmp_path / "ev" / "report.json").read_text())["thresholds"]
    predictions = rows(tmp_path / "ev" / "predictions.csv")
    for k, split in enumerate(report.splits):
        mine = [p for p in predictions if p["split"] == split]
        truth = np.array([[c in p["truth"].split() for c in LABELS] for p in mine])
        probs = np.array([[json.loads(p["probabilities"])[c] for c in LABELS] for p in mine])
        predicted = probs >= np.array(thresholds[split])
        assert [" ".join(c for c, v in zip(LABELS, row, strict=True) if v) for row in predicted] == [
            p["prediction"] for p in mine
        ]
        assert metrics["micro_f1"]["per_split"][k] == pytest.approx(f1_score(truth, predicted, average="micro"))
    assert metrics["micro_f1"]["mean"] > 0.6
    per_label = rows(tmp_path / "ev" / "per_label.csv")
    assert [r["label"] for r in per_label] == list(LABELS)
    everything = evaluate(
        EvaluateConfig(run=out, eval_dir=held_out, output_dir=tmp_path / "ev0", threshold=0.0, gallery=0, figures=False)
    )
    assert everything.summary["micro_recall"]["mean"] == 1.0  # a threshold of 0 says yes to every label

    result = predict(
        PredictConfig(
            run=out,
            inputs=[str(held_out)],
            output=tmp_path / "p.jsonl",
            split="all",
            gradcam_dir=tmp_path / "cams",
            quiet=True,
        )
    )
    lines = [json.loads(line) for line in (tmp_path / "p.jsonl").read_text().splitlines()]
    assert result.predicted == len(lines) == 24
    cuts = np.mean([load_checkpoint(out / f"split_{i}" / "model.pt").meta.thresholds for i in range(3)], axis=0)
    for line in lines:
        expected = [c for c, t in zip(LABELS, cuts, strict=True) if line["probabilities"][c] >= t]
        assert line["labels"] == expected
    assert len(list((tmp_path / "cams").glob("*.jpg"))) == 24


@pytest.mark.parametrize("count", [2, 3, 20, pytest.param(40, marks=pytest.mark.slow(seconds=1))])  # 40: a second
def test_the_confusion_matrix_shows_every_label_and_title_whole(count: int) -> None:
    """Every title, axis label and class name of the figure lies inside the saved image: with 20 classes (the
    pilot's vocabulary) the "prediction" under the matrices was cut off."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    from europeana_imgcls.outputs.evaluation import confusion_figure

    names = ["archaeological_site_of_the_later_bronze_age", "map", "costume_accessories", "woodwork", "inscription"]
    classes = [f"{names[i % len(names)]}{'_' + str(i) if i >= len(names) else ''}" for i in range(count)]
    matrix = np.random.default_rng(count).integers(0, 200, (count, count))
    figure = confusion_figure(matrix, classes)
    canvas = FigureCanvasAgg(figure)
    figure.set_dpi(100)  # as it is saved
    canvas.draw()
    page, renderer = figure.bbox, canvas.get_renderer()
    for ax in figure.axes:
        if not ax.get_visible() or not ax.get_xticks().size:  # a colour bar
            continue
        texts = [ax.title, ax.xaxis.label, ax.yaxis.label, *ax.get_xticklabels(), *ax.get_yticklabels()]
        for text in [t for t in texts if t.get_text()]:
            box = text.get_window_extent(renderer)
            inside = page.x0 <= box.x0 and box.x1 <= page.x1 and page.y0 <= box.y0 and box.y1 <= page.y1
            assert inside, (count, text.get_text(), box, page)


def test_evaluating_on_the_runs_own_images_is_said(tmp_path: Path, caplog, monkeypatch) -> None:
    """The run's own data folder as the evaluation set was scored without a word, and the model card then called
    it an evaluation: the share of the evaluation's images the run was trained on is said, wherever the commands
    ran (a run trained on a relative folder records where it was)."""
    import logging

    from europeana_imgcls import train

    from ..support import config, make_folders

    (tmp_path / "project").mkdir()
    monkeypatch.chdir(tmp_path / "project")
    make_folders(Path("data"), per_class=4, size=32)
    train(config(Path("data"), Path("run"), epochs=1, crossvalidation=False, gradcam_images=0))
    elsewhere = tmp_path / "elsewhere"
    make_folders(elsewhere / "data", per_class=2, size=40)  # another folder of the same name
    monkeypatch.chdir(elsewhere)
    run = tmp_path / "project" / "run"
    with caplog.at_level(logging.WARNING):
        evaluate(EvaluateConfig(run=run, eval_dir=Path("data"), output_dir=tmp_path / "ev", quiet=True))
    assert "training images" not in caplog.text
    with caplog.at_level(logging.WARNING):
        trained = tmp_path / "project" / "data"
        evaluate(EvaluateConfig(run=run, eval_dir=trained, output_dir=tmp_path / "ev2", quiet=True))
    assert "12 of the 12 evaluation images are the run's own training images" in caplog.text
    assert "not unseen" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING):  # one split folder given as the run
        evaluate(EvaluateConfig(run=run / "split_0", eval_dir=trained, output_dir=tmp_path / "ev3", quiet=True))
    assert "12 of the 12 evaluation images are the run's own training images" in caplog.text


def test_an_evaluation_of_a_relative_folder_names_its_images_from_anywhere(
    trained: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """predictions.csv named the images as evaluate was given them (`data/...`): the report, run from another
    folder with its own data/, showed that folder's pictures of the same names."""
    from ..support import make_folders

    make_folders(tmp_path / "project" / "data", per_class=3)
    monkeypatch.chdir(tmp_path / "project")
    run = copy_of(trained, tmp_path / "run")
    evaluate_run(EvaluateConfig(run=run, eval_dir=Path("data"), output_dir=tmp_path / "ev", gallery=0, figures=False))
    with (tmp_path / "ev" / "predictions.csv").open(newline="") as handle:
        images = [Path(row["image"]) for row in csv.DictReader(handle)]
    assert images and all(p.is_absolute() and p.is_relative_to(tmp_path / "project" / "data") for p in images)
