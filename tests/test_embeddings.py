"""eic embed, frozen-backbone training on an embeddings table, and the audit's pieces, with the tests' tiny net:
fast checks of what the end-to-end tests on real weights (test_embed_audit.py) cannot reach."""

from __future__ import annotations

import json
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

from .support import make_folders

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

    from .support import make_folders

    data = make_folders(tmp_path / "data", per_class=3, size=32)
    out = tmp_path / "e.parquet"
    args = ["embed", str(data), "-o", str(out), "--arch", "tiny", "--weights", "none", "--input-size", "32", "--quiet"]
    assert CliRunner().invoke(app, args).exit_code == 0
    refused = CliRunner().invoke(app, args)
    assert refused.exit_code == 1 and "--resume" in refused.stderr and "--overwrite" not in refused.stderr
    again = CliRunner().invoke(app, [*args, "--resume"])  # the advice works: nothing new, nothing lost
    assert again.exit_code == 0 and "9 done" in " ".join(again.stdout.split())


def _crafted(tmp_path: Path, name: str, vectors: object, categories: object = None, **meta: object) -> Path:
    """A table in eic embed's shape with the given vectors and categories, and its sidecar (with ``meta``)."""
    import json

    n = len(vectors)  # type: ignore[arg-type]
    cells = categories if categories is not None else ["map", "painting"] * (n // 2) + ["map"] * (n % 2)
    table = pl.DataFrame({"image": [f"/x/{i}.jpg" for i in range(n)], "category": cells}, schema_overrides={})
    table = table.with_columns(pl.Series("embedding", vectors))
    path = tmp_path / f"{name}.parquet"
    table.write_parquet(path)
    sidecar = {"arch": "tiny", "weights": "none", "input_size": 32, "mode": "single-label"} | meta
    sidecar.setdefault("classes", ["map", "painting"])
    path.with_name(f"{name}.embedding.json").write_text(json.dumps(sidecar))
    return path


GOOD = [[0.1 * i, 1.0, -0.5] for i in range(8)]
CRAFTED = {
    "ragged": (dict(vectors=[*GOOD[:7], [1.0, 2.0]]), "differ in length (2 to 3)"),
    "nan": (dict(vectors=[*GOOD[:7], [1.0, float("nan"), 0.0]]), "1 row(s) with a vector with numbers that are not"),
    "inf": (dict(vectors=[[float("inf"), 0.0, 0.0], *GOOD[1:]]), "e.g. row 1 (/x/0.jpg)"),
    "null row": (dict(vectors=[*GOOD[:7], None]), "with no vector, e.g. row 8"),
    "null number": (dict(vectors=[*GOOD[:7], [1.0, None, 0.0]]), "not finite (NaN, infinite or null)"),
    "no rows": (dict(vectors=pl.Series([], dtype=pl.List(pl.Float32)), categories=[]), "holds no rows"),
    "empty vectors": (
        dict(vectors=pl.Series([[] for _ in GOOD], dtype=pl.List(pl.Float32))),
        "row(s) with an empty vector",
    ),
    "null category": (dict(vectors=GOOD, categories=["map"] * 7 + [None]), "with no category, e.g. row 8"),
    "unknown class": (dict(vectors=GOOD, categories=["map"] * 7 + ["statue"]), "not one of its sidecar's classes"),
    "multi cells": (dict(vectors=GOOD, categories=["map painting"] * 8), "not one of its sidecar's classes"),
    "classes not a list": (dict(vectors=GOOD, classes="map painting"), "classes: Input should be a valid array"),
    "classes twice": (dict(vectors=GOOD, classes=["map", "map"]), "classes are not a list of distinct"),
    "unknown mode": (dict(vectors=GOOD, mode="multi"), "mode: Input should be 'single-label' or 'multi-label'"),
    "dim differs": (dict(vectors=GOOD, dim=4), "its vectors have 3 numbers but its sidecar says 4"),
    "text vectors": (dict(vectors=[["a", "b"] for _ in GOOD]), "not lists of numbers"),
}


@pytest.mark.parametrize("case", CRAFTED)
def test_a_broken_embeddings_table_is_one_line_before_any_work(case: str, tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from europeana_imgcls.cli.app import app

    given, message = CRAFTED[case]
    source = _crafted(tmp_path, "e", **given)  # type: ignore[arg-type]
    result = CliRunner().invoke(app, ["audit", str(source), "-o", str(tmp_path / "audit"), "--quiet"])
    assert result.exit_code == 1 and message in result.stderr, result.stderr
    assert len(result.stderr.strip().splitlines()) == 1 and "Traceback" not in result.output
    assert not (tmp_path / "audit").exists()


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
