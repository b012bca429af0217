"""modelling/heads.py: linear-probe and k-NN heads on a frozen backbone's embeddings."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import polars as pl
import pytest
from PIL import Image

from europeana_imgcls import PredictConfig, predict, train
from europeana_imgcls.core.config import EmbedConfig, TrainConfig
from europeana_imgcls.modelling.checkpoint import load_checkpoint
from europeana_imgcls.modelling.embedding import embed

from ..support import LABELS, TINY, config, make_folders, rows


def test_a_probe_on_embeddings_skips_an_image_that_cannot_be_decoded(tmp_path: Path) -> None:
    data = make_folders(tmp_path / "data", per_class=6, size=32)
    noise = np.random.default_rng(0).integers(0, 256, (200, 200, 3), dtype=np.uint8)
    Image.fromarray(noise).save(tmp_path / "big.jpg", quality=90)
    whole = (tmp_path / "big.jpg").read_bytes()
    (data / "map" / "truncated.jpg").write_bytes(whole[: len(whole) // 2])  # its header reads, its pixels do not
    table = tmp_path / "e.parquet"
    report = embed(EmbedConfig(data_dir=data, output=table, **TINY))
    assert (report.embedded, report.unreadable) == (18, 1)
    run = train(
        TrainConfig(
            data_dir=data, output_dir=tmp_path / "probe", method="linear-probe", folds=3, embeddings=table, **TINY
        )
    )
    assert len(run.splits) == 3  # as without --embeddings: the broken file is left out, not a reason to stop


def test_a_probe_on_vectors_of_another_size_is_refused_before_it_writes_a_run(tmp_path: Path) -> None:
    from europeana_imgcls.core.errors import DatasetError
    from europeana_imgcls.modelling.embedding import feature_model, feature_size

    data = make_folders(tmp_path / "data", per_class=4, size=32)
    table = tmp_path / "e.parquet"
    embed(EmbedConfig(data_dir=data, output=table, **TINY))
    wide = feature_size(feature_model("tiny", "none"), 32) + 1  # one number more than the tiny net gives
    frame = pl.read_parquet(table)
    frame = frame.with_columns(pl.Series("embedding", [[0.5] * wide] * frame.height, dtype=pl.List(pl.Float32)))
    frame.write_parquet(table)
    meta = json.loads(table.with_name("e.embedding.json").read_text()) | {"dim": wide}
    table.with_name("e.embedding.json").write_text(json.dumps(meta))
    with pytest.raises(DatasetError, match=f"its vectors have {wide} numbers, but tiny's features have {wide - 1}"):
        train(
            TrainConfig(
                data_dir=data,
                output_dir=tmp_path / "probe",
                method="linear-probe",
                folds=3,
                crossvalidation=False,
                embeddings=table,
                **TINY,
            )
        )
    assert not list((tmp_path / "probe").glob("**/model.pt"))


@pytest.mark.slow(seconds=2)  # embeddings and probes
def test_a_probe_on_embeddings_takes_their_backbone_and_refuses_another(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from europeana_imgcls.cli.app import app

    data = make_folders(tmp_path / "data", per_class=5, size=32)
    table = tmp_path / "e.parquet"
    embed(EmbedConfig(data_dir=data, output=table, **TINY))
    probe = ["train", str(data), "--method", "linear-probe", "--embeddings", str(table), "--folds", "3", "--quiet"]
    result = CliRunner().invoke(app, [*probe, "-o", str(tmp_path / "run")])  # no --arch, --weights, --input-size
    assert result.exit_code == 0, result.stderr
    saved = json.loads((tmp_path / "run" / "split_0" / "config.json").read_text())
    assert (saved["arch"], saved["weights"], saved["input_size"]) == ("tiny", "none", 32)
    refused = CliRunner().invoke(app, [*probe, "-o", str(tmp_path / "other"), "--input-size", "64"])
    assert refused.exit_code != 0 and len(refused.stderr.strip().splitlines()) == 1, refused.stderr
    assert "--input-size 64 given, 32 in e.parquet" in refused.stderr


@pytest.mark.slow  # end to end: a probe and a knn trained on the multi-label data, then predict
def test_a_probe_takes_only_the_embeddings_of_its_own_folder_wherever_it_runs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Embeddings keep each image's path as the command was given it, relative to where it ran: a probe run from
    another folder matched another project's images of the same names (another picture each), and trained on
    them. A table made from another folder is refused unless a few of its images, embedded again, give its
    vectors (a copy of the project); the same folder, named from anywhere, is matched."""
    from europeana_imgcls.core.errors import DatasetError

    make_folders(tmp_path / "a" / "imgs", per_class=4, size=32)
    make_folders(tmp_path / "b" / "imgs", per_class=4, size=40)  # the same names, other pictures
    monkeypatch.chdir(tmp_path / "a")
    embed(EmbedConfig(data_dir=Path("imgs"), output=tmp_path / "a.parquet", **TINY))
    monkeypatch.chdir(tmp_path / "b")  # the same relative names, another folder's pictures
    probe = dict(method="linear-probe", folds=3, embeddings=tmp_path / "a.parquet", **TINY)
    with pytest.raises(DatasetError, match="was embedded from .*a/imgs, and its vectors are not those of the images"):
        train(TrainConfig(data_dir=Path("imgs"), output_dir=tmp_path / "probe_b", **probe))
    monkeypatch.chdir(tmp_path)  # project a's folder, named from elsewhere: its own vectors
    run = train(TrainConfig(data_dir=Path("a/imgs"), output_dir=tmp_path / "probe_a", **probe))
    assert len(run.splits) == 3
    import shutil

    shutil.copytree(tmp_path / "a", tmp_path / "copy")  # the project moved to another machine: the same pictures
    copied = train(TrainConfig(data_dir=tmp_path / "copy" / "imgs", output_dir=tmp_path / "probe_c", **probe))
    assert len(copied.splits) == 3


def test_a_multilabel_linear_probe_and_knn_run(ml_run, tmp_path: Path) -> None:
    data, _ = ml_run
    for method in ("linear-probe", "knn"):
        out = tmp_path / method
        report = train(config(data, out, mode="multi-label", method=method, gradcam_images=0))
        assert len(report.splits) == 3 and "micro_f1" in report.summary
        ckpt = load_checkpoint(out / "split_0" / "model.pt")
        assert ckpt.meta.mode == "multi-label" and len(ckpt.meta.thresholds) == len(LABELS)
        calibration = json.loads((out / "calibration.json").read_text())
        assert calibration["mode"] == "multi-label"
        result = predict(PredictConfig(run=out, inputs=[str(data)], output=tmp_path / f"{method}.jsonl", quiet=True))
        assert result.predicted == len(rows(data / "labels.csv"))


# ---------------------------------------------------------------------------------------------
# Found in review: resumes, encodings and paths


@pytest.mark.slow(seconds=2)  # an embedding, a probe and its resume
def test_a_resumed_probe_run_keeps_every_split_loadable(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from europeana_imgcls import EvaluateConfig, evaluate, train
    from europeana_imgcls.modelling import heads

    from ..support import config, make_folders

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
    report = evaluate(
        EvaluateConfig(run=tmp_path / "run", eval_dir=data, output_dir=tmp_path / "ev", gallery=0, figures=False)
    )
    assert len(report.splits) == 3  # split 0, fitted before the interruption, still loads


def _probe_in_a_terminal(method: str, tmp_path: Path, quiet: bool) -> str:
    """``eic train --method METHOD`` of the tiny net on a terminal; its stderr."""
    from typer.testing import CliRunner

    from europeana_imgcls.cli.app import app

    from ..support import TERMINAL

    data = make_folders(tmp_path / "data", per_class=6, size=32)
    tiny = ["--arch", "tiny", "--weights", "none", "--input-size", "32", "--folds", "3", "--method", method]
    out = ["--output-dir", str(tmp_path / f"run-{quiet}"), *(["--quiet"] if quiet else [])]
    result = CliRunner().invoke(app, ["train", str(data), *out, *tiny], env=TERMINAL)
    assert result.exit_code == 0, result.stderr
    return result.stderr


@pytest.mark.parametrize("quiet", [False, True])
def test_a_knn_run_shows_its_embedding_pass_and_its_splits_in_a_terminal_unless_quiet(
    tmp_path: Path, quiet: bool
) -> None:
    from ..support import shows_progress

    stderr = _probe_in_a_terminal("knn", tmp_path, quiet)  # ten folds of a probe were a silent minute and more
    assert shows_progress(stderr, "embed") != quiet and shows_progress(stderr, "knn splits") != quiet, stderr


@pytest.mark.slow  # L-BFGS over three strengths per split: seconds
def test_a_linear_probe_shows_its_embedding_pass_and_its_splits_in_a_terminal(tmp_path: Path) -> None:
    from ..support import shows_progress

    stderr = _probe_in_a_terminal("linear-probe", tmp_path, quiet=False)
    assert shows_progress(stderr, "embed") and shows_progress(stderr, "linear-probe splits"), stderr
