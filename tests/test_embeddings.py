"""eic embed, frozen-backbone training on an embeddings table, and the audit's pieces, with the tests' tiny net:
fast checks of what the end-to-end tests on real weights (test_embed_audit.py) cannot reach."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import polars as pl
import pytest
from PIL import Image

from europeana_imgcls.core.config import EmbedConfig, TrainConfig
from europeana_imgcls.datasets.tasks import task_for
from europeana_imgcls.modelling.embedding import embed
from europeana_imgcls.modelling.training import train
from europeana_imgcls.outputs import audit

from .conftest import make_folders

TINY = dict(arch="tiny", weights="none", input_size=32, quiet=True)


def test_a_merge_that_names_the_folder_another_way_adds_no_image_twice(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    make_folders(tmp_path / "data", per_class=4, size=32)
    monkeypatch.chdir(tmp_path)
    out = tmp_path / "e.parquet"
    shard = embed(EmbedConfig(data_dir=Path("data"), output=out, shard="0/2", **TINY))  # a relative path
    merged = embed(EmbedConfig(data_dir=tmp_path / "data", output=out, resume=True, **TINY))  # an absolute one
    assert merged.already_done == shard.embedded and merged.embedded == 12 - shard.embedded
    table = pl.read_parquet(out)
    assert table.height == 12
    assert len({str(Path(p).resolve()) for p in table["image"]}) == 12


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


def test_identical_embeddings_are_duplicates_even_at_similarity_one() -> None:
    rng = np.random.default_rng(0)
    for _ in range(50):
        vector = rng.normal(size=512).astype(np.float32)
        vectors = np.stack([vector, vector.copy(), rng.normal(size=512).astype(np.float32)])
        assert audit.near_duplicates(vectors, similarity=1.0) == [[0, 1]]


def test_issue_rates_count_a_class_whose_name_has_a_space_once(tmp_path: Path) -> None:
    classes = ["fine art", "map"]
    truth = np.array([0, 0, 1])
    findings = audit.Findings(
        task_for("single-label"),
        classes,
        ["a.jpg", "b.jpg", "c.jpg"],
        truth,
        np.array([[0.9, 0.1], [0.2, 0.8], [0.1, 0.9]]),
        [0, 1, 2],
        ["p", "p", "q"],
        [None] * 3,
        None,
    )
    audit._write_rates(tmp_path / "rates.csv", findings, np.array([1]))
    rates = pl.read_csv(tmp_path / "rates.csv").filter(pl.col("kind") == "class")
    assert dict(zip(rates["name"], rates["images"], strict=True)) == {"fine art": 2, "map": 1}


def test_an_existing_table_is_refused_with_advice_that_works(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from europeana_imgcls.cli.app import app

    from .conftest import make_folders

    data = make_folders(tmp_path / "data", per_class=3, size=32)
    out = tmp_path / "e.parquet"
    args = ["embed", str(data), "-o", str(out), "--arch", "tiny", "--weights", "none", "--input-size", "32", "--quiet"]
    assert CliRunner().invoke(app, args).exit_code == 0
    refused = CliRunner().invoke(app, args)
    assert refused.exit_code == 1 and "--resume" in refused.stderr and "--overwrite" not in refused.stderr
    again = CliRunner().invoke(app, [*args, "--resume"])  # the advice works: nothing new, nothing lost
    assert again.exit_code == 0 and "9 done" in " ".join(again.stdout.split())
