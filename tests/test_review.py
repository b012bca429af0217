"""The review loop's files from people: a Label Studio export is untrusted input."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import polars as pl
import pytest
from typer.testing import CliRunner

from europeana_imgcls.cli.app import app
from europeana_imgcls.core.config import ReviewImportConfig
from europeana_imgcls.core.errors import DatasetError
from europeana_imgcls.datasets.tasks import task_for
from europeana_imgcls.outputs.review import NONE_CHOICE, import_review, labelling_config

from .support import REVIEWS, TRAIN, VOCAB, task


def run(tmp_path: Path, tasks: list[Any], **kw: Any):
    export = tmp_path / "export.json"
    export.write_text(json.dumps(tasks))
    vocab = tmp_path / "vocab.json"
    vocab.write_text(json.dumps(VOCAB))
    return import_review(
        ReviewImportConfig(export=export, output=tmp_path / "out.csv", vocab=vocab, overwrite=True, **kw)
    )


def test_answers_become_rows_and_what_is_not_an_answer_is_said(tmp_path: Path) -> None:
    report = run(
        tmp_path,
        [
            task(1, "/9/a", ["map"]),
            task(2, "/9/b", ["map", "map"]),  # a choice made twice is one choice
            task(3, "/9/c", [NONE_CHOICE]),  # in no class of the run: to be taken out of the training table
            task(4, "/9/d", ["map"]),
            task(5, "/9/d", ["painting"]),  # two tasks of one record, answered differently
            task(6, "/9/e", ["map"], uri="http://data.europeana.eu/item/9/other"),  # a URI of another record
            task(7, "9/f", ["map"]),  # no Europeana record ID
            task(8, "/9/g", ["specimen"]),
            task(9, "/9/g", ["specimen"]),  # the same answer twice: one row
        ],
    )
    table = pl.read_csv(tmp_path / "out.csv")
    assert dict(zip(table["ID"], table["category"], strict=True)) == {"/9/a": "map", "/9/b": "map", "/9/g": "specimen"}
    assert set(table["URI"]) == {f"http://data.europeana.eu/item{i}" for i in ("/9/a", "/9/b", "/9/g")}
    assert report.removed == ["/9/c"] and sorted(report.conflicts) == ["4", "5"]
    assert [t for t, _ in report.refused] == ["6", "7"]
    assert "not the item URI of its record" in report.refused[0][1]
    assert f'<Choice value="{NONE_CHOICE}"/>' in labelling_config(list(VOCAB), task_for("single-label"))


CRAFTED = {
    "ID as a number": [{"id": 1, "data": {"ID": 5, "image": "http://x/1.jpg"}, "annotations": []}],
    "ID as a list": [{"id": 1, "data": {"ID": ["/9/a"], "image": "http://x/1.jpg"}}],
    "URI as an object": [{"id": 1, "data": {"ID": "/9/a", "URI": {"a": 1}}}],
    "result as a number": [{"id": 1, "data": {"ID": "/9/a"}, "annotations": [{"result": 5}]}],
    "value as a list": [
        {
            "id": 1,
            "data": {"ID": "/9/a"},
            "annotations": [{"result": [{"type": "choices", "from_name": "category", "value": ["map"]}]}],
        }
    ],
    "value as text": [
        {
            "id": 1,
            "data": {"ID": "/9/a"},
            "annotations": [{"result": [{"type": "choices", "from_name": "category", "value": "map"}]}],
        }
    ],
    "choices as text": [
        {
            "id": 1,
            "data": {"ID": "/9/a"},
            "annotations": [{"result": [{"type": "choices", "from_name": "category", "value": {"choices": "map"}}]}],
        }
    ],
    "annotations as an object": [{"id": 1, "data": {"ID": "/9/a"}, "annotations": {"result": []}}],
    "data missing": [{"id": 1}],
    "a task that is a number": [7],
    "an object, not a list": {"data": {"ID": "/9/a"}},
}


@pytest.mark.parametrize("name", sorted(CRAFTED))
def test_a_crafted_export_gets_one_line(tmp_path: Path, name: str) -> None:
    export = tmp_path / "export.json"
    export.write_text(json.dumps(CRAFTED[name]))
    result = CliRunner().invoke(app, ["review", "import", str(export), "-o", str(tmp_path / "out.csv")])
    assert result.exit_code == 1, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("eic: error: ") and "Traceback" not in result.output
    assert not (tmp_path / "out.csv").exists()


def test_deep_nesting_and_a_huge_export_are_refused_before_they_cost_memory(tmp_path: Path) -> None:
    export = tmp_path / "export.json"
    export.write_text("[" * 100_000 + "]" * 100_000)
    with pytest.raises(DatasetError, match="nested too deeply"):
        run_config = ReviewImportConfig(export=export, output=tmp_path / "out.csv")
        import_review(run_config)
    export.write_text(json.dumps([task(1, "/9/a", ["map"])] * 5000))
    with pytest.raises(DatasetError, match="more than the 1 MB eic reads at once"):
        import_review(ReviewImportConfig(export=export, output=tmp_path / "out.csv", max_export_mb=1))


def test_the_tasks_file_given_for_the_export_is_named_for_what_it_is(tmp_path: Path) -> None:
    tasks = [{"data": {"ID": "/9/a", "image": "http://x/1.jpg"}, "predictions": [{"result": []}]}]
    review = tmp_path / "review.json"
    review.write_text(json.dumps(tasks))
    result = CliRunner().invoke(app, ["review", "import", str(review), "-o", str(tmp_path / "out.csv")])
    assert result.exit_code == 1 and "not people's answers" in result.stderr


def test_a_formula_from_an_export_is_text_in_every_spreadsheet(tmp_path: Path) -> None:
    import csv

    from europeana_imgcls.core.tables import read_table

    hostile = ['=HYPERLINK("http://evil.example/","open me")', "@SUM(A1:A9)", "+1+cmd|' /C calc'!A0", "-2+3"]
    tasks = [task(i + 1, f"/9/{i}", ["map"]) for i in range(len(hostile))]
    for t, email in zip(tasks, hostile, strict=True):
        t["annotations"][0]["completed_by"]["email"] = email
    run(tmp_path, tasks)
    with (tmp_path / "out.csv").open(newline="") as handle:
        cells = [cell for row in csv.reader(handle) for cell in row]
    assert not [cell for cell in cells if cell[:1] in ("=", "+", "-", "@", "\t", "\r")]  # OWASP's rule
    assert sorted(read_table(tmp_path / "out.csv")["reviewed_by"]) == sorted(hostile)  # eic reads them back as given


def _applied(tmp_path: Path, table_rows: list[dict[str, str]], tasks: list[Any], *flags: str):
    """eic review import of ``tasks``, then eic review apply onto a table of ``table_rows``."""
    run(tmp_path, tasks)
    table = tmp_path / "train.csv"
    pl.DataFrame(table_rows).write_csv(table)
    args = ["review", "apply", str(table), str(tmp_path / "out.csv"), "-o", str(tmp_path / "new.csv"), *flags]
    return CliRunner().invoke(app, args)


def test_apply_replaces_labels_by_record_and_says_what_it_did(tmp_path: Path) -> None:
    result = _applied(tmp_path, TRAIN, REVIEWS)
    assert result.exit_code == 0, result.stderr
    said = " ".join(result.stdout.split())
    assert "4 rows written" in said and "1 labels confirmed, 1 changed, 1 records removed" in said
    assert "1 reviewed records not in the table (--add adds them)" in said and "1 where reviewers disagree" in said
    new = pl.read_csv(tmp_path / "new.csv")
    assert new.columns == ["category", "ID", "URL", "provider", "reviewed_by", "review"]
    by_id = {r["ID"]: r for r in new.to_dicts()}
    assert set(by_id) == {"/9/a", "/9/b", "/9/d", "/9/x"}
    assert (by_id["/9/a"]["category"], by_id["/9/a"]["review"]) == ("map", "confirmed")
    assert (by_id["/9/b"]["category"], by_id["/9/b"]["review"], by_id["/9/b"]["reviewed_by"]) == (
        "painting", "changed", "r0@museum.example"
    )  # fmt: skip
    assert by_id["/9/d"]["category"] == "map" and by_id["/9/d"]["review"] is None  # the disagreement left alone
    assert by_id["/9/x"]["provider"] == "Q" and by_id["/9/x"]["review"] is None  # other rows and columns kept
    notes = json.loads((tmp_path / "new.apply.json").read_text())
    assert notes["changed"] == [{"ID": "/9/b", "before": "map", "after": "painting"}] and notes["removed"] == ["/9/c"]
    added = _applied(tmp_path, TRAIN, REVIEWS, "--add", "--overwrite")
    assert added.exit_code == 0, added.stderr
    rows = pl.read_csv(tmp_path / "new.csv").filter(pl.col("ID") == "/9/z").to_dicts()
    assert rows and rows[0]["category"] == "specimen" and rows[0]["review"] == "added"


def test_apply_compares_label_sets_in_a_multi_label_table(tmp_path: Path) -> None:
    table = [
        {"category": "map painting", "ID": "/9/a", "URL": "http://x/a.jpg"},
        {"category": "map painting", "ID": "/9/b", "URL": "http://x/b.jpg"},
        {"category": "specimen", "ID": "/9/c", "URL": "http://x/c.jpg"},
    ]
    reviews = [task(1, "/9/a", ["painting", "map"]), task(2, "/9/b", ["map"]), task(3, "/9/c", ["specimen", "map"])]
    result = _applied(tmp_path, table, reviews)
    assert result.exit_code == 0, result.stderr
    new = {r["ID"]: (r["category"], r["review"]) for r in pl.read_csv(tmp_path / "new.csv").to_dicts()}
    assert new["/9/a"] == ("map painting", "confirmed")  # the same set, in another order
    assert new["/9/b"] == ("map", "changed")
    assert set(new["/9/c"][0].split()) == {"specimen", "map"} and new["/9/c"][1] == "changed"


def test_apply_refuses_a_review_of_another_table_or_vocabulary_and_keeps_the_table(tmp_path: Path) -> None:
    other = [{"category": "map", "ID": "/7/q", "URL": "http://x/q.jpg"}]
    result = _applied(tmp_path, other, REVIEWS)
    assert result.exit_code == 1 and "holds none of the" in result.stderr and "another table" in result.stderr
    narrow = [{"category": "map", "ID": "/9/a", "URL": "http://x/a.jpg"}, {"category": "map", "ID": "/9/b", "URL": "u"}]
    result = _applied(tmp_path, narrow, [task(1, "/9/a", ["map"]), task(2, "/9/b", ["painting"])])
    assert (
        result.exit_code == 1 and "class(es) painting that" in result.stderr and "another vocabulary" in result.stderr
    )
    assert not (tmp_path / "new.csv").exists()
    run(tmp_path, REVIEWS)
    table = tmp_path / "train.csv"
    pl.DataFrame(TRAIN).write_csv(table)
    same = CliRunner().invoke(app, ["review", "apply", str(table), str(tmp_path / "out.csv"), "-o", str(table)])
    assert same.exit_code == 1 and "is the table the review applies to" in same.stderr and "--overwrite" in same.stderr
    assert pl.read_csv(table).height == len(TRAIN)
    (tmp_path / "out.review.json").unlink()
    blind = CliRunner().invoke(
        app, ["review", "apply", str(table), str(tmp_path / "out.csv"), "-o", str(tmp_path / "n.csv")]
    )
    assert blind.exit_code == 1 and "out.review.json is missing" in blind.stderr
    for result in (same, blind):
        assert len(result.stderr.strip().splitlines()) == 1


def test_a_task_showing_a_local_file_keeps_its_answer_for_apply(tmp_path: Path) -> None:
    local = task(1, "/9/a", ["painting"])
    local["data"]["image"] = "/data/images/map/[ph]9[ph]a.jpg"  # eic audit's task where no table named a URL
    report = run(tmp_path, [local])
    assert report.imported == 1
    row = pl.read_csv(tmp_path / "out.csv").row(0, named=True)
    assert (row["ID"], row["category"], row["URL"]) == ("/9/a", "painting", None)
