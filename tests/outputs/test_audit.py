"""outputs/audit.py: near-duplicates, issue rates and an embeddings table refused before any work."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import polars as pl
import pytest

from europeana_imgcls import download
from europeana_imgcls.core.naming import file_name
from europeana_imgcls.datasets.tasks import task_for
from europeana_imgcls.europeana.sandbox import Knobs, Sandbox
from europeana_imgcls.outputs import audit
from europeana_imgcls.outputs.audit import near_duplicates

from ..support import (
    assert_one_line_error,
    download_config,
    eic,
    looping_originals_table,
    make_folders,
    sandbox_config,
    sandbox_records,
)


def test_near_duplicates_are_groups_above_the_similarity() -> None:
    import numpy as np

    vectors = np.array([[1, 0], [0.999, 0.04], [0, 1], [0.02, 1], [0.7, 0.7]], dtype=np.float32)
    assert near_duplicates(vectors, 0.99, chunk=2) == [[0, 1], [2, 3]]
    assert near_duplicates(vectors, 0.5) == [[0, 1, 2, 3, 4]]


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


def test_a_split_of_a_run_is_told_to_pass_the_run(trained: Path, tmp_path: Path) -> None:
    split = trained / "split_0"
    result = eic("audit", split, "-o", tmp_path / "audit", "--quiet")
    assert_one_line_error(result, f"{split} is split_0 of the run {trained}: pass {trained}")
    assert not (tmp_path / "audit").exists()


@pytest.mark.slow
def test_review_tasks_show_the_image_download_saved_not_a_dead_original(tmp_path: Path) -> None:
    """The table's URL redirects in a loop for every record; eic download saved each from its preview (the
    Thumbnail API's): that is what a reviewer must see."""

    with Sandbox(sandbox_config(per_level=4), Knobs(shared_per_concept=0, triples_per_concept=0)) as sb:
        rows = looping_originals_table(sb, tmp_path / "t.csv")
        images = tmp_path / "images"
        assert download(download_config(tmp_path / "t.csv", images, fallback_preview=True)).saved == len(rows)
    tasks = _review_tasks_of_suspects(rows, images, [r["ID"] for r in rows], tmp_path)
    preview = {row["ID"]: row["preview"] for row in rows}
    assert tasks and [t["data"]["image"] for t in tasks] == [preview[t["data"]["ID"]] for t in tasks]


@pytest.mark.slow
def test_review_tasks_of_local_images_get_label_studios_local_files_urls(tmp_path: Path) -> None:
    """Images no table names (not a download's folder): with --document-root, Label Studio's own URL of each."""
    import json
    from urllib.parse import parse_qs, urlsplit

    root = tmp_path / "museum"
    images = sorted(make_folders(root / "scans", per_class=6).rglob("*.jpg"))
    classes = sorted({p.parent.name for p in images})
    given = [classes[(classes.index(p.parent.name) + (i % 6 == 0)) % 3] for i, p in enumerate(images)]
    vectors = [np.eye(3)[classes.index(p.parent.name)].tolist() for p in images]
    pl.DataFrame({"image": [str(p) for p in images], "category": given, "embedding": vectors}).write_parquet(
        tmp_path / "e.parquet"
    )
    sidecar = {"arch": "tiny", "weights": "none", "input_size": 32, "mode": "single-label", "classes": classes}
    (tmp_path / "e.embedding.json").write_text(json.dumps(sidecar))
    review = tmp_path / "review.json"
    args = ["audit", tmp_path / "e.parquet", "-o", tmp_path / "audit", "--review-output", review, "--folds", "3"]
    result = eic(*args, "--document-root", root, "--quiet")
    assert result.exit_code == 0, result.stderr
    tasks = json.loads(review.read_text())
    assert tasks and all(t["data"]["image"].startswith("/data/local-files/?d=scans/") for t in tasks)
    for task in tasks:
        (path,) = parse_qs(urlsplit(task["data"]["image"]).query)["d"]
        assert (root / path).is_file()
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    result = eic(*args, "--document-root", elsewhere, "--overwrite", "--quiet")
    assert_one_line_error(result, f"is not under {elsewhere}, which --document-root serves")


def test_the_contact_sheet_shows_a_photograph_upright_and_an_unreadable_file_as_such(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from PIL import Image

    from europeana_imgcls.modelling import charts

    exif = Image.Exif()
    exif[0x0112] = 6  # stored lying on its side, shown turned a quarter: 300 wide x 400 high
    Image.new("RGB", (400, 300), (200, 80, 40)).save(tmp_path / "turned.jpg", exif=exif)
    (tmp_path / "broken.jpg").write_bytes(b"\xff\xd8\xff not a picture")
    drawn: list[charts.Cell] = []
    real = charts.sheet
    monkeypatch.setattr(charts, "sheet", lambda cells, path, **kw: drawn.extend(cells) or real(cells, path, **kw))
    suspects = [
        {"image": str(tmp_path / name), "ID": None, "rank": i, "given": "a", "suggested": "b", "label_quality": 0.1}
        for i, name in enumerate(("turned.jpg", "broken.jpg"))
    ]
    audit.contact_sheet(tmp_path / "suspects.png", suspects)
    assert drawn[0].image is not None and drawn[0].image.size == (192, 256)  # upright, fitted in its 256 px cell
    assert drawn[1].image is None and drawn[1].note == "unreadable"
    assert (tmp_path / "suspects.png").stat().st_size > 1000


@pytest.mark.slow(seconds=3)  # a download, then eic audit
def test_a_record_whose_id_no_file_name_holds_keeps_its_id_in_the_review_tasks(tmp_path: Path) -> None:
    """eic download names a record whose ID is over 200 bytes by a hash; its fetched.csv says which record the file
    is. Without it, the review task of that image named no record and its answer was dropped at import."""

    with Sandbox(sandbox_config(per_level=4), Knobs(shared_per_concept=0, triples_per_concept=0)) as sb:
        rows = [
            {"category": r.labels[0], "ID": r.id, "URL": sb.image_url(r)}
            for r in sandbox_records(sb)
            if len(r.labels) == 1 and not r.fault
        ]
        long_id = f"/9/{'x' * 240}"
        rows[0] = {**rows[0], "ID": long_id}
        pl.DataFrame(rows).write_csv(tmp_path / "t.csv")
        images = tmp_path / "images"
        assert download(download_config(tmp_path / "t.csv", images)).saved == len(rows)
    long_file = images / rows[0]["category"] / file_name(long_id)
    assert long_file.name.startswith("[h]") and long_file.is_file()
    # as eic embed writes a table: the ID its file name holds (none, for the hashed one, the first of the suspects)
    ids = [None if r["ID"] == long_id else r["ID"] for r in rows]
    said = [t["data"]["ID"] for t in _review_tasks_of_suspects(rows, images, ids, tmp_path)]
    assert long_id in said and "" not in said


def _review_tasks_of_suspects(
    rows: list[dict[str, str]], images: Path, ids: list[str | None], tmp_path: Path
) -> list[dict]:
    """eic audit --review-output of an embeddings table of the downloaded ``rows`` (with the ``ids`` eic embed
    would have written): embeddings that tell the classes apart, and every 6th record (the first too) given another
    class, the suspects."""
    import json

    classes = sorted({row["category"] for row in rows})
    rng = np.random.default_rng(0)
    given = [classes[(classes.index(r["category"]) + (i % 6 == 0)) % len(classes)] for i, r in enumerate(rows)]
    table = pl.DataFrame(
        {
            "image": [str(images / r["category"] / file_name(r["ID"])) for r in rows],
            "ID": ids,
            "category": given,
            "embedding": [(np.eye(3)[classes.index(r["category"])] + rng.normal(0, 0.05, 3)).tolist() for r in rows],
        }
    )
    table.write_parquet(tmp_path / "e.parquet")
    sidecar = {"arch": "tiny", "weights": "none", "input_size": 32, "mode": "single-label", "classes": classes}
    (tmp_path / "e.embedding.json").write_text(json.dumps(sidecar))
    review = tmp_path / "review.json"
    result = eic("audit", tmp_path / "e.parquet", "-o", tmp_path / "audit", "--review-output", review, "--quiet")
    assert result.exit_code == 0, result.stderr
    return json.loads(review.read_text())


def test_a_run_trained_from_a_relative_folder_is_audited_with_its_own_images_from_anywhere(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A run trained as `eic train data -o run` names its test images relative to where it ran: audited from
    another folder, whose own data/ holds other pictures under the same names, its review tasks pointed at those
    (and from a folder without data/, at files that do not exist)."""
    import json

    from europeana_imgcls.modelling.training import train

    from ..support import config

    project, other = tmp_path / "project", tmp_path / "other"
    make_folders(project / "data", per_class=6)
    make_folders(other / "data", per_class=6, size=24)  # the same names, other pictures
    monkeypatch.chdir(project)
    train(config(Path("data"), Path("run"), epochs=1, folds=3, gradcam_images=0))
    monkeypatch.chdir(other)
    review = tmp_path / "suspects.json"
    result = eic("audit", project / "run", "-o", tmp_path / "audit", "--review-output", review, "--quiet")
    assert result.exit_code == 0, result.stderr
    shown = [Path(task["data"]["image"]) for task in json.loads(review.read_text())]
    assert shown and all(p.is_file() and p.is_relative_to(project / "data") for p in shown), shown[:2]
    issues = pl.read_csv(tmp_path / "audit" / "label_issues.csv")
    assert all(Path(p).is_relative_to(project / "data") for p in issues["image"]), issues["image"][:2]


def test_a_multilabel_class_on_every_image_is_left_out_of_the_ranking_not_a_traceback(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A broad tag on every image beside specific ones ("map" on all, "painting" or "specimen" on some): cleanlab's
    one-versus-rest pass has one answer for it (ValueError: Labels must contain at least 2 classes, 184 lines)."""
    import json

    rng = np.random.default_rng(0)
    categories = ["map", "map painting", "map specimen"] * 8
    table = pl.DataFrame({"image": [f"/x/{i}.jpg" for i in range(len(categories))], "category": categories})
    table.with_columns(pl.Series("embedding", rng.normal(size=(len(categories), 4)).tolist())).write_parquet(
        tmp_path / "e.parquet"
    )
    sidecar = {"arch": "tiny", "weights": "none", "input_size": 32, "mode": "multi-label"}
    (tmp_path / "e.embedding.json").write_text(json.dumps({**sidecar, "classes": ["map", "painting", "specimen"]}))
    with caplog.at_level("WARNING", logger="europeana_imgcls"):
        result = eic("audit", tmp_path / "e.parquet", "-o", tmp_path / "audit", "--folds", "3", "--quiet")
    assert result.exit_code == 0, result.stderr[-2000:]
    assert any(r.getMessage().startswith("map: on every image") for r in caplog.records)
    assert (tmp_path / "audit" / "label_issues.csv").is_file()


def test_a_labelling_interface_of_the_users_beside_the_review_tasks_is_not_replaced(
    trained: Path, tmp_path: Path
) -> None:
    """The review tasks were claimed, the labelling interface eic writes beside them (NAME.labelling.xml) was not:
    a reviewer's own, hand-written one was replaced without a word."""
    mine = tmp_path / "suspects.labelling.xml"
    mine.write_text("<View><!-- our team's interface --></View>\n")
    args = ["audit", trained, "-o", tmp_path / "audit", "--review-output", tmp_path / "suspects.json", "--quiet"]
    assert_one_line_error(eic(*args), "suspects.labelling.xml")
    assert mine.read_text() == "<View><!-- our team's interface --></View>\n"
    assert not (tmp_path / "suspects.json").exists()
    mine.unlink()
    assert eic(*args).exit_code == 0 and mine.is_file()
    assert eic(*args, "--overwrite").exit_code == 0  # eic's own, replaced on request
    # A reviewer's edit of eic's own (a hint added to it) is theirs now: its opening alone no longer makes it eic's.
    edited = mine.read_text().replace("</View>", '  <Header value="Is this the right class?"/>\n</View>')
    mine.write_text(edited)
    assert_one_line_error(eic(*args, "--overwrite"), "suspects.labelling.xml")
    assert mine.read_text() == edited


def test_a_probe_run_trained_from_a_relative_folder_keeps_its_duplicate_search_from_anywhere(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A linear probe's own embeddings table names its images as training named them (relative): audited from
    another folder, its test images (now named absolute) were not found in it, and the duplicate search was lost."""
    from europeana_imgcls.modelling.training import train

    from ..support import config

    project = tmp_path / "project"
    make_folders(project / "data", per_class=6)
    monkeypatch.chdir(project)
    train(config(Path("data"), Path("run"), method="linear-probe", folds=3))
    monkeypatch.chdir(tmp_path)
    result = eic("audit", project / "run", "-o", tmp_path / "audit", "--quiet")
    assert result.exit_code == 0, result.stderr
    assert "does not cover" not in result.stdout + result.stderr
    assert (tmp_path / "audit" / "duplicates.csv").is_file()
