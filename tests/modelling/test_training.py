"""eic train on the CPU: tiny images, --weights none (or the offline EfficientNet-Lite0 weights)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn
from typer.testing import CliRunner

from europeana_imgcls import train
from europeana_imgcls.cli.app import app
from europeana_imgcls.core.errors import DatasetError
from europeana_imgcls.datasets.tasks import task_for
from europeana_imgcls.modelling import training
from europeana_imgcls.modelling.checkpoint import load_checkpoint, model_from_checkpoint

from ..support import CLASSES, HERITAGE, LABELS, config, make_folders, rows, torchrun


def test_a_learnable_set_is_learnt(run) -> None:
    _, report = run
    assert len(report.splits) == 3
    assert report.summary["accuracy"]["mean"] > 0.8  # chance is 0.33
    assert report.summary["f1"]["mean"] > 0.75


def test_outputs_exist_and_parse(run, folders: Path) -> None:
    out, report = run
    summary = json.loads((out / "summary.json").read_text())
    accuracies = summary["metrics"]["accuracy"]["per_split"]
    assert len(accuracies) == 3
    assert summary["metrics"]["accuracy"]["mean"] == pytest.approx(np.mean(accuracies))
    assert summary["metrics"]["accuracy"]["std"] == pytest.approx(np.std(accuracies, ddof=1))
    for i in range(3):
        split = out / f"split_{i}"
        ckpt = load_checkpoint(split / "model.pt")
        assert ckpt.meta.arch == "tiny" and ckpt.meta.class_names == list(CLASSES)
        assert ckpt.meta.input_size == 32 and len(ckpt.meta.mean) == 3 and len(ckpt.meta.std) == 3
        assert ckpt.meta.config["epochs"] == 8 and "api_key" not in ckpt.meta.config
        assert 1 <= ckpt.meta.epoch <= 8 and ckpt.meta.best_val_loss >= 0
        assert json.loads((split / "class_index.json").read_text()) == {c: n for n, c in enumerate(CLASSES)}
        assert json.loads((split / "config.json").read_text())["folds"] == 3
        history = rows(split / "history.csv")
        assert list(history[0]) == task_for("single-label").history_columns
        assert [int(r["epoch"]) for r in history] == list(range(1, len(history) + 1))
        metrics = json.loads((split / "metrics.json").read_text())
        assert set(metrics["test"]) >= {"accuracy", "precision", "recall", "f1", "sensitivity", "specificity"}
        predictions = rows(split / "test_predictions.csv")
        assert len(predictions) == metrics["test_images"]
        assert metrics["test"]["accuracy"] == pytest.approx(
            np.mean([p["truth"] == p["prediction"] for p in predictions])
        )
        assert (split / "curves.png").read_bytes()[:4] == b"\x89PNG"
        cams = sorted((split / "gradcam").iterdir())
        assert len(cams) == 3 and all("_true-" in c.name and "_pred-" in c.name for c in cams)
        assert not (split / "last.pt").exists()
    # folds are disjoint and cover every image
    tested = [p["image"] for i in range(3) for p in rows(out / f"split_{i}" / "test_predictions.csv")]
    assert len(tested) == len(set(tested)) == 36


def test_the_model_returns_logits_and_the_loss_applies_softmax_once(run) -> None:
    out, _ = run
    model = model_from_checkpoint(load_checkpoint(out / "split_0" / "model.pt"))
    assert not any(isinstance(m, nn.Softmax | nn.LogSoftmax) for m in model.modules())
    with torch.no_grad():
        logits = model(torch.randn(4, 3, 32, 32))
    assert not torch.allclose(logits.sum(dim=1), torch.ones(4))
    assert (logits < 0).any()


@pytest.mark.slow
def test_early_stopping_triggers(folders: Path, tmp_path: Path) -> None:
    # A wild learning rate makes the validation loss stop improving at once.
    report = train(
        config(
            folders, tmp_path / "run", epochs=40, patience=2, learning_rate=5.0, crossvalidation=False, gradcam_images=0
        )
    )
    split = report.splits[0]
    assert split.epochs_run < 40
    assert split.epochs_run == split.best_epoch + 2


@pytest.mark.slow
def test_same_seed_same_run_on_cpu(folders: Path, tmp_path: Path) -> None:
    histories = []
    for name in ("a", "b"):
        train(config(folders, tmp_path / name, epochs=2, crossvalidation=False, gradcam_images=0))
        histories.append([(r["train_loss"], r["val_loss"]) for r in rows(tmp_path / name / "split_0" / "history.csv")])
    assert histories[0] == histories[1]


@pytest.mark.slow
def test_resume_after_an_interruption(folders: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls = {"n": 0}
    real = training.train_one_epoch

    def interrupted(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 5:  # split 0 ran 3 epochs, split 1 one: stop in its second
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(training, "train_one_epoch", interrupted)
    out = tmp_path / "run"
    with pytest.raises(KeyboardInterrupt):
        train(config(folders, out, epochs=3, patience=5, gradcam_images=0))
    assert (out / "split_0" / "metrics.json").exists()
    assert (out / "split_1" / "last.pt").exists() and not (out / "split_1" / "metrics.json").exists()
    with pytest.raises(DatasetError, match="pass `resume`"):
        train(config(folders, out, epochs=3, patience=5, gradcam_images=0))
    before = (out / "split_0" / "model.pt").stat().st_mtime_ns
    calls["n"] = -100
    report = train(config(folders, out, epochs=3, patience=5, gradcam_images=0, resume=True))
    assert calls["n"] == -100 + 2 + 3  # two epochs left in split 1, three in split 2
    assert (out / "split_0" / "model.pt").stat().st_mtime_ns == before
    epochs = [int(r["epoch"]) for r in rows(out / "split_1" / "history.csv")]
    assert epochs == [1, 2, 3] and len(report.splits) == 3


def test_a_resumed_split_trains_as_one_that_was_never_stopped(
    folders: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The training loader's shuffle was seeded at every start: a split resumed after its first epoch saw its
    images in the first epoch's order again, and ended with other weights than a run never stopped (the docs
    promise a deterministic run on the CPU, given its seed). Each epoch's order now follows from the seed and
    the epoch alone."""
    settings = dict(epochs=3, patience=5, gradcam_images=0, crossvalidation=False, batch_size=4)
    whole = tmp_path / "whole"
    train(config(folders, whole, **settings))
    calls = {"n": 0}
    real = training.train_one_epoch

    def stopped(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(training, "train_one_epoch", stopped)
    resumed = tmp_path / "resumed"
    with pytest.raises(KeyboardInterrupt):
        train(config(folders, resumed, **settings))
    monkeypatch.setattr(training, "train_one_epoch", real)
    train(config(folders, resumed, **settings, resume=True))
    losses = [[r["train_loss"] for r in rows(run / "split_0" / "history.csv")] for run in (whole, resumed)]
    assert losses[0] == losses[1]
    assert rows(whole / "split_0" / "test_predictions.csv") == rows(resumed / "split_0" / "test_predictions.csv")


@pytest.mark.slow(seconds=10)
def test_torchrun_with_gloo_and_two_processes(folders: Path, tmp_path: Path) -> None:
    out = tmp_path / "ddp"
    done = torchrun(
        "train",
        str(folders),
        "-o",
        str(out),
        "--arch",
        "tiny",
        "--weights",
        "none",
        "--epochs",
        "2",
        "--input-size",
        "32",
        "--batch-size",
        "4",
        "--folds",
        "3",
        "--no-crossvalidation",
        "--quiet",
        # Rank 0 draws the figures after the ranks have trained, on its own, as a plain run does (the tests of the
        # figures draw them): in this run they would cost more CPU than training, the heatmaps' packages alone 3 s.
        "--gradcam-images",
        "0",
        "--no-figures",
        "--device",
        "cpu",
    )
    assert done.returncode == 0, done.stderr[-3000:]
    history = rows(out / "split_0" / "history.csv")
    assert len(history) == 2
    assert load_checkpoint(out / "split_0" / "model.pt").meta.class_names == list(CLASSES)
    assert json.loads((out / "summary.json").read_text())["splits"] == 1


@pytest.mark.skipif(not HERITAGE.is_dir(), reason="shared heritage sample not present")
@pytest.mark.slow(seconds=7)
def test_pretrained_efficientnet_lite0_on_real_heritage_images(tmp_path: Path) -> None:
    data = tmp_path / "heritage"
    data.mkdir()
    for name in CLASSES:
        (data / name).symlink_to(HERITAGE / name, target_is_directory=True)
    report = train(
        config(
            data,
            tmp_path / "run",
            arch="efficientnet_lite0",
            weights="imagenet",
            input_size=128,
            epochs=2,  # the ImageNet features: 1.0 after two epochs here (3 took 1.5 s of CPU more for the same)
            batch_size=16,
            folds=4,
            crossvalidation=False,
            gradcam_images=2,
        )
    )
    assert report.splits[0].metrics["accuracy"] >= 0.85  # 16 held-out images, chance 0.39
    assert len(list((tmp_path / "run" / "split_0" / "gradcam").iterdir())) == 2


def test_bad_inputs_are_one_line(folders: Path, tmp_path: Path) -> None:
    runner = CliRunner()

    def fails(args: list[str], text: str) -> None:
        result = runner.invoke(app, ["train", *map(str, args), "--quiet", "--weights", "none"])
        assert result.exit_code != 0
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and text in lines[0], result.stderr

    fails([tmp_path / "nowhere"], "no such file or folder")
    one = make_folders(tmp_path / "one", per_class=4, classes=("map",))
    fails([one], "at least two class folders")
    few = make_folders(tmp_path / "few", per_class=2)
    fails([few, "--folds", "3"], "fewer than the 3 folds")
    (tmp_path / "empty" / "a").mkdir(parents=True)
    (tmp_path / "empty" / "a" / "x.jpg").write_bytes(b"not an image")
    fails([tmp_path / "empty"], "no readable images")
    fails([folders, "--arch", "vgg11"], "unknown arch 'vgg11'")
    # A device this machine lacks, and (on a CUDA machine, where every device named exists) one nobody has.
    if not torch.cuda.is_available():
        fails([folders, "--device", "cuda"], "--device")
    fails([folders, "--device", "tpu"], "invalid setting 'device'")
    result = runner.invoke(app, ["train", str(folders), "-o", str(tmp_path / "r"), "--weights", "imagenet", "--quiet"])
    assert result.exit_code == 1
    assert result.stderr.strip().count("\n") == 0 and "--weights none" in result.stderr


def test_sample_takes_a_stratified_fraction(folders: Path, tmp_path: Path) -> None:
    report = train(config(folders, tmp_path / "run", sample=0.5, epochs=1, crossvalidation=False, gradcam_images=0))
    metrics = json.loads((tmp_path / "run" / "split_0" / "metrics.json").read_text())
    assert metrics["train_images"] + metrics["val_images"] + metrics["test_images"] == 18
    assert report.counts == {"map": 6, "painting": 6, "specimen": 6}


@pytest.mark.slow
def test_a_cross_validation_run_decodes_each_image_once(
    folders: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from europeana_imgcls.datasets import folders as data

    decoded: list[Path] = []
    real = data.load_image

    def counting(path: Path, size: int):
        decoded.append(path)
        return real(path, size)

    monkeypatch.setattr(data, "load_image", counting)
    report = train(config(folders, tmp_path / "run", epochs=2, patience=5, gradcam_images=0))
    assert len(report.splits) == 3
    assert sorted(decoded) == sorted(data.list_images(folders))  # 3 splits x 2 epochs, one decode each

    decoded.clear()  # without the cache every epoch of every split decodes again
    train(config(folders, tmp_path / "uncached", epochs=2, patience=5, gradcam_images=0, cache_mb=0))
    assert len(decoded) > 3 * len(data.list_images(folders))


def test_training_curves_mark_the_kept_epoch(tmp_path: Path) -> None:
    from europeana_imgcls.modelling.training import plot_curves

    history = [
        {"epoch": e, "train_loss": 1 / e, "val_loss": abs(e - 3) + 0.5, "accuracy": 0.5, "f1": 0.5} for e in range(1, 7)
    ]
    plot_curves(history, tmp_path / "curves.png", best_epoch=3)
    plot_curves(history, tmp_path / "plain.png")
    assert (tmp_path / "curves.png").read_bytes() != (tmp_path / "plain.png").read_bytes()


def test_a_run_without_figures_draws_none_and_its_card_names_none(folders: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    report = train(config(folders, out, epochs=2, figures=False, gradcam_images=0))
    assert report.calibration is not None and (out / "calibration.json").is_file()
    assert not list(out.rglob("*.png"))
    assert "reliability.png" not in (out / "MODEL_CARD.md").read_text()
    drawn = CliRunner().invoke(app, ["calibrate", str(out), "--precision", "0.9", "--overwrite"])
    assert drawn.exit_code == 0, drawn.stderr
    assert (out / "reliability.png").is_file() and "reliability.png" in (out / "MODEL_CARD.md").read_text()
    again = train(config(folders, out, epochs=2, figures=False, gradcam_images=0, resume=True))
    assert again.calibration is not None  # the thresholds drawn before are not this calibration's: gone
    assert not (out / "reliability.png").exists() and "reliability.png" not in (out / "MODEL_CARD.md").read_text()


@pytest.mark.slow  # the shared multi-label run is trained for it (and the other multi-label end-to-end tests)
def test_a_learnable_multilabel_set_is_learnt(ml_run) -> None:
    from sklearn.metrics import f1_score

    data, out = ml_run
    summary = json.loads((out / "summary.json").read_text())["metrics"]
    truth = np.array([[label in r["category"].split() for label in LABELS] for r in rows(data / "labels.csv")])
    # the best constant predictor for micro-F1 says "every label" (or the frequent ones)
    constant = max(
        f1_score(truth, np.tile(truth.mean(0) >= cut, (len(truth), 1)), average="micro") for cut in (0.0, 0.3, 0.5)
    )
    assert summary["micro_f1"]["mean"] > constant + 0.25
    assert summary["mean_average_precision"]["mean"] > 0.8
    for i in range(3):
        ckpt = load_checkpoint(out / f"split_{i}" / "model.pt")
        assert ckpt.meta.mode == "multi-label" and len(ckpt.meta.thresholds) == len(LABELS)
        assert all(0 < t < 1 for t in ckpt.meta.thresholds)
        history = rows(out / f"split_{i}" / "history.csv")
        assert {"exact_match", "micro_f1", "macro_f1", "mean_average_precision"} <= set(history[0])
        assert len(list((out / f"split_{i}" / "gradcam").iterdir())) == 2


# ---------------------------------------------------------------------------------------------
# Rules 6 and 8: a resumed run is the same run; a run that would die late for a reason known early does not start


def test_train_resume_refuses_another_run(tmp_path: Path) -> None:
    from europeana_imgcls import train
    from europeana_imgcls.core.errors import DatasetError

    from ..support import config, make_folders

    data = make_folders(tmp_path / "data", per_class=6, size=32)
    other = make_folders(tmp_path / "other", per_class=6, size=32)
    run = tmp_path / "run"
    train(config(data, run, epochs=1, crossvalidation=False, gradcam_images=0))
    with pytest.raises(DatasetError, match="arch 'tiny' there, 'resnet34' now"):
        train(config(data, run, epochs=1, crossvalidation=False, gradcam_images=0, arch="resnet34", resume=True))
    with pytest.raises(DatasetError, match="data_dir"):
        train(config(other, run, epochs=1, crossvalidation=False, gradcam_images=0, resume=True))
    # What shapes the model is the run's: a resume with another would leave splits made two ways.
    for changed in (
        {"learning_rate": 0.5},
        {"patience": 1},
        {"weighted_loss": False},
        {"hflip": 0.0},
        {"vflip": 0.5},
        {"neighbours": 1},
        {"batch_size": 3},
    ):
        with pytest.raises(DatasetError, match=f"{next(iter(changed))} .* there, .* now"):
            train(config(data, run, epochs=1, crossvalidation=False, gradcam_images=0, resume=True, **changed))
    train(config(data, run, epochs=1, crossvalidation=False, gradcam_images=0, resume=True))  # the same run goes on


def test_train_resume_refuses_a_data_folder_whose_images_changed(tmp_path: Path) -> None:
    """The folds are made anew from the folder at every start: with images added, removed or moved to another class
    since, the finished splits' test folds and the new ones' would overlap and leave images out of any."""
    data = make_folders(tmp_path / "data", per_class=6, size=32)
    run = tmp_path / "run"
    settings = dict(epochs=1, crossvalidation=False, gradcam_images=0)
    train(config(data, run, **settings))
    make_folders(data, per_class=9, size=32)  # three more images a class
    with pytest.raises(DatasetError, match=r"its images are not those in .*data.* now \(added, removed or moved"):
        train(config(data, run, **settings, resume=True))
    added = [p for p in data.rglob("*.jpg") if p.stem.rsplit("_", 1)[1] in ("6", "7", "8")]
    for path in added:
        path.unlink()
    moved = sorted((data / CLASSES[0]).iterdir())[0]
    moved.rename(data / CLASSES[1] / moved.name)  # the same files, one in another class
    with pytest.raises(DatasetError, match="its images are not those"):
        train(config(data, run, **settings, resume=True))
    (data / CLASSES[1] / moved.name).rename(moved)
    train(config(data, run, **settings, resume=True))  # as it was: the same run goes on


def test_a_grad_cam_figure_of_any_class_name_has_a_file_name_the_disk_takes(tmp_path: Path) -> None:
    """Figure names held the true and predicted classes: a class of 250 characters made a name the file system
    refused, after the split's metrics were written, and a resume failed the same way in the next split. A
    multi-label image's labels, joined, did the same at the default eight figures."""
    long, odd = "b" * 250, "a/b:c"
    data = make_folders(tmp_path / "data", per_class=6, size=32)
    (data / "map").rename(data / long)
    report = train(config(data, tmp_path / "run", epochs=1, crossvalidation=False, gradcam_images=6))
    figures = sorted((tmp_path / "run" / "split_0" / "gradcam").iterdir())
    assert report.splits and len(figures) == 6 and all(len(f.name.encode()) <= 120 for f in figures)
    from europeana_imgcls.datasets.tasks import task_for

    labels = task_for("multi-label").truth_text(np.ones(3), [long, odd, "x"])  # what a multi-label figure names
    cjk = "中国古代绘画" * 8  # 48 characters, 144 bytes
    for name in (
        training.figure_name(3, labels, odd, 0.5),
        training.figure_name(0, odd, long, 0.25),
        training.figure_name(1, cjk, cjk, 0.75),
    ):
        assert name[:4] in ("003_", "000_", "001_") and "/" not in name and len(name.encode()) <= 120, name
    assert training.figure_name(0, "绘画", "map", 0.5) != training.figure_name(0, "地图", "map", 0.5)


def test_a_run_of_split_0_carried_on_to_every_split_is_calibrated(tmp_path: Path) -> None:
    """--no-crossvalidation trains split 0; --resume with cross-validation trains the others. Calibration read
    split 0's settings (crossvalidation off) and refused the finished run forever; it is judged by the splits."""
    data = make_folders(tmp_path / "data", per_class=6, size=32)
    run = tmp_path / "run"
    train(config(data, run, epochs=1, crossvalidation=False, gradcam_images=0))
    assert not (run / "calibration.json").exists()
    report = train(config(data, run, epochs=1, gradcam_images=0, resume=True))
    assert len(report.splits) == 3 and json.loads((run / "calibration.json").read_text())["per_class"]


def test_a_run_folder_inside_its_data_folder_is_refused(tmp_path: Path) -> None:
    """A run written into its own data folder is a class folder to the next scan (its curves and Grad-CAM figures
    images of a class "run")."""
    data = make_folders(tmp_path / "data", per_class=6, size=32)
    args = ["-o", str(data / "run"), "--arch", "tiny", "--weights", "none", "--epochs", "1", "--folds", "3"]
    result = CliRunner().invoke(app, ["train", str(data), *args])
    assert result.exit_code != 0 and "inside" in result.stderr and "Traceback" not in result.output, result.output
    assert not (data / "run").exists()


@pytest.mark.parametrize("resume", [False, True])
def test_a_folder_of_the_users_that_looks_like_a_run_is_not_trained_into(tmp_path: Path, resume: bool) -> None:
    """Any folder holding split_0/ was carried on as a run without --resume (a user's own folds: their files
    overwritten), and with --resume any folder holding a model.pt (a Hugging Face download: its summary.json and
    model card overwritten); a split_0/config.json of someone else's made --resume a traceback. A run is a folder
    whose split settings are eic's."""
    from ..support import assert_one_line_error, eic

    data = make_folders(tmp_path / "data", per_class=4, size=32)
    folds = tmp_path / "folds"
    (folds / "split_0").mkdir(parents=True)
    (folds / "split_0" / "history.csv").write_text("mine\n")
    (folds / "split_0" / "config.json").write_text('{"fold": 0, "model": "mine"}')
    hub = tmp_path / "hub"
    hub.mkdir()
    (hub / "model.pt").write_bytes(b"weights")
    (hub / "config.json").write_text('{"architectures": ["ResNet"]}')
    (hub / "summary.json").write_text("{}")
    for folder in (folds, hub):
        before = {p: p.read_bytes() for p in folder.rglob("*") if p.is_file()}
        args = ["train", data, "-o", folder, "--arch", "tiny", "--weights", "none", "--epochs", "1", "--folds", "3"]
        result = eic(*args, *(["--resume"] if resume else []))
        assert_one_line_error(result, str(folder))
        assert {p: p.read_bytes() for p in folder.rglob("*") if p.is_file()} == before


def test_a_class_held_by_one_provider_is_refused_before_training(tmp_path: Path) -> None:
    from europeana_imgcls.cli.app import app

    from ..support import make_folders

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

    from ..support import config, make_folders

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


def test_a_run_that_failed_before_its_first_epoch_can_be_retried(tmp_path: Path) -> None:
    from europeana_imgcls import train
    from europeana_imgcls.core.errors import ModelError

    from ..support import config, make_folders

    data = make_folders(tmp_path / "data", per_class=6, size=32)
    with pytest.raises(ModelError, match="offline"):  # torchvision's weights cannot be fetched here
        train(config(data, tmp_path / "run", arch="resnet18", weights="imagenet", epochs=1, crossvalidation=False))
    report = train(config(data, tmp_path / "run", epochs=1, crossvalidation=False, gradcam_images=0))
    assert report.splits  # the natural retry with --weights none is not refused


@pytest.mark.slow(seconds=2)  # a 3-fold training
def test_a_run_that_fails_before_its_first_epoch_leaves_nothing_behind(tmp_path: Path) -> None:
    from europeana_imgcls.core.errors import ModelError

    data = make_folders(tmp_path / "data", per_class=6, size=24)
    with pytest.raises(ModelError, match="no ImageNet weights"):  # as offline: the model cannot be built
        train(config(data, tmp_path / "run", weights="imagenet"))
    assert not (tmp_path / "run").exists()  # was: run/split_0/ with config.json and class_index.json
    mine = tmp_path / "mine"
    mine.mkdir()  # a folder that was there before the run stays, as it was
    with pytest.raises(ModelError):
        train(config(data, mine, weights="imagenet"))
    assert mine.is_dir() and not any(mine.iterdir())
    assert len(train(config(data, tmp_path / "run", epochs=1, gradcam_images=0)).splits) == 3  # the retry


def test_an_epoch_of_one_batch_shows_no_absurd_images_per_second() -> None:
    # The bar's clock started after the epoch's only batch, which then showed 6,999,392 images/s; a rate is shown
    # once measured over enough work, a dash until then.
    import io
    import re

    from rich.console import Console

    out = io.StringIO()
    with training._EpochProgress(False, 0, 1, 1) as progress:
        progress.tick(0, 0.5, 7)  # the epoch's only batch: 7 images
        Console(file=out, width=200).print(progress.bar.get_renderable())
    shown = out.getvalue()
    assert "split 0 epoch 1" in shown and "1/1" in shown, shown
    rate = re.search(r"(\S+) images/s", shown)
    assert rate is not None and rate.group(1) == "—", shown
