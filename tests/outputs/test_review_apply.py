"""outputs/review_apply.py: reviewed labels into a training table, and the notes and rows it refuses."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

import polars as pl
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner, Result

from europeana_imgcls.cli.app import app

from ..hostile import assert_untouched, cli_works_or_one_line, mutated_bytes, scratch, snapshot, without_hanging
from ..support import REVIEWS, TRAIN, WORDS, _apply, _import, _setup, examples, task
from ..support import review_import as run


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


def test_the_same_review_applied_again_keeps_what_it_changed_said(tmp_path: Path) -> None:
    """Applied a second time, to the table it made, a review finds its own changes already made: they stay
    "changed", not "confirmed", so the table still says what the review changed."""
    assert _applied(tmp_path, TRAIN, REVIEWS).exit_code == 0
    shutil.copy(tmp_path / "new.csv", tmp_path / "train.csv")
    again = CliRunner().invoke(
        app,
        ["review", "apply", str(tmp_path / "train.csv"), str(tmp_path / "out.csv"), "-o", str(tmp_path / "again.csv")],
    )
    assert again.exit_code == 0, again.stderr
    by_id = {r["ID"]: r for r in pl.read_csv(tmp_path / "again.csv").to_dicts()}
    assert (by_id["/9/b"]["category"], by_id["/9/b"]["review"]) == ("painting", "changed")
    assert by_id["/9/a"]["review"] == "confirmed"


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


# ---------------------------------------------------------------------------------------------
# The notes eic review import writes beside its table


TAG = {"format": "europeana-imgcls/review-notes-v1"}
NOTES = {
    "a list": [],
    "null": None,
    "removed as a number": {**TAG, "removed": 5},
    "removed as text": {**TAG, "removed": "/9/c"},
    "a conflicting record as a list": {**TAG, "conflicting_records": [["/9/d"]]},
    "a conflicting record as a number": {**TAG, "conflicting_records": [7]},
    "another program's file": {"format": "label-studio/export-v1", "removed": []},
    "without the format tag": {"removed": ["/9/c"], "conflicting_records": []},
    "a hostile record ID": {**TAG, "removed": ["/9/c\x00/../../x"]},
    "an unknown key": {**TAG, "remove\n[/b]": ["/9/c"]},
    "cut short": '{"format": "europeana-imgcls/review-notes-v1", "removed": ["/9/',
    "not UTF-8": b'{"removed": ["\xff"]}',
    "nested deeply": "[" * 100_000 + "]" * 100_000,
}


@pytest.mark.parametrize("name", sorted(NOTES))
def test_damaged_or_foreign_notes_are_one_line_naming_the_file_and_what_to_do(tmp_path: Path, name: str) -> None:
    _setup(tmp_path, REVIEWS)
    assert _import(tmp_path).exit_code == 0
    notes = tmp_path / "out.review.json"
    value = NOTES[name]
    if isinstance(value, bytes):
        notes.write_bytes(value)
    else:
        notes.write_text(value if isinstance(value, str) else json.dumps(value))
    result = _apply(tmp_path)
    assert result.exit_code == 1, result.output
    cli_works_or_one_line(result)
    assert "out.review.json" in result.stderr and "eic review import" in result.stderr
    assert not (tmp_path / "new.csv").exists()


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="no named pipes")
def test_notes_that_are_a_pipe_are_refused_without_waiting(tmp_path: Path) -> None:
    _setup(tmp_path, REVIEWS)
    assert _import(tmp_path).exit_code == 0
    notes = tmp_path / "out.review.json"
    notes.unlink()
    os.mkfifo(notes)
    result = without_hanging(lambda: _apply(tmp_path), notes)
    assert isinstance(result, Result) and result.exit_code == 1 and "not a regular file" in result.stderr
    cli_works_or_one_line(result)


# ---------------------------------------------------------------------------------------------
# A reviewed table with two rows for one record


def test_two_reviewed_rows_of_one_record_that_disagree_are_a_conflict_and_agreeing_ones_apply_once(
    tmp_path: Path,
) -> None:
    _setup(tmp_path, [task(1, "/9/a", ["map"]), task(2, "/9/b", ["painting"])])
    assert _import(tmp_path).exit_code == 0
    reviewed = pl.read_csv(tmp_path / "out.csv")
    doubled = pl.concat(
        [
            reviewed,  # /9/a: map (the table's), /9/b: painting
            reviewed.with_columns(
                category=pl.when(pl.col("ID") == "/9/a").then(pl.lit("painting")).otherwise(pl.col("category")),
                reviewed_by=pl.lit("r9@museum.example"),
            ),  # /9/a: painting, /9/b: painting again
            pl.DataFrame(  # a record the table does not hold, answered twice differently: not added either
                {"ID": ["/9/z", "/9/z"], "URI": ["u", "u"], "URL": ["http://x/z.jpg"] * 2},
                schema_overrides={"URL": pl.Utf8},
            ).with_columns(
                category=pl.Series(["map", "specimen"]),
                skos_concept=pl.lit(None, pl.Utf8),
                reviewed_by=pl.lit(None, pl.Utf8),
            ),
        ],
        how="diagonal_relaxed",
    ).select(reviewed.columns)
    doubled.write_csv(tmp_path / "out.csv")
    result = _apply(tmp_path, "--add")
    assert result.exit_code == 0, result.stderr
    assert "2 where reviewers disagree" in " ".join(result.stdout.split())
    new = pl.read_csv(tmp_path / "new.csv")
    assert new["ID"].to_list() == ["/9/a", "/9/b", "/9/c", "/9/d", "/9/x"]  # each record once; /9/z not added
    by_id = {row["ID"]: row for row in new.to_dicts()}
    assert (by_id["/9/a"]["category"], by_id["/9/a"]["review"]) == ("map", None)  # the conflict left alone
    assert (by_id["/9/b"]["category"], by_id["/9/b"]["review"]) == ("painting", "changed")
    assert set(by_id["/9/b"]["reviewed_by"].split()) == {"r0@museum.example", "r9@museum.example"}
    notes = json.loads((tmp_path / "new.apply.json").read_text())
    assert notes["conflicting"] == ["/9/a", "/9/z"] and notes["unknown"] == []


def test_a_record_the_notes_put_in_no_class_that_also_has_a_row_is_a_conflict(tmp_path: Path) -> None:
    _setup(tmp_path, REVIEWS)  # /9/c: put in no class
    assert _import(tmp_path).exit_code == 0
    reviewed = pl.read_csv(tmp_path / "out.csv")
    again = reviewed.head(1).with_columns(ID=pl.lit("/9/c"), category=pl.lit("map"))  # and labelled map elsewhere
    pl.concat([reviewed, again]).write_csv(tmp_path / "out.csv")
    result = _apply(tmp_path)
    assert result.exit_code == 0, result.stderr
    new = {row["ID"]: row for row in pl.read_csv(tmp_path / "new.csv").to_dicts()}
    assert (new["/9/c"]["category"], new["/9/c"]["review"]) == ("painting", None)  # neither answer taken
    notes = json.loads((tmp_path / "new.apply.json").read_text())
    assert "/9/c" in notes["conflicting"] and notes["removed"] == []


def test_a_reviewed_row_with_a_hostile_record_id_is_refused(tmp_path: Path) -> None:
    _setup(tmp_path, REVIEWS)
    assert _import(tmp_path).exit_code == 0
    reviewed = pl.read_csv(tmp_path / "out.csv")
    hostile = reviewed.head(1).with_columns(ID=pl.lit("/../../home/x\u202e"))
    pl.concat([reviewed, hostile]).write_csv(tmp_path / "out.csv")
    result = _apply(tmp_path, "--add")
    assert result.exit_code == 1 and "out.csv" in result.stderr and "eic review import" in result.stderr
    cli_works_or_one_line(result)
    assert not (tmp_path / "new.csv").exists()


@pytest.mark.parametrize(
    ("category", "said"),
    [
        (None, 'has no category; a record is taken out by choosing "none of these classes"'),
        ("map painting", "gives record /9/a several classes (map painting) where"),
    ],
)
def test_a_reviewed_row_no_single_label_table_can_take_is_refused(
    tmp_path: Path, category: str | None, said: str
) -> None:
    """A blank cell (a curator's "remove") was a traceback; two classes for a record of a single-label table
    became a class folder "map painting" at eic download, and a class of its own at the next training."""
    _setup(tmp_path, REVIEWS)
    assert _import(tmp_path).exit_code == 0
    reviewed = pl.read_csv(tmp_path / "out.csv")
    reviewed = reviewed.with_columns(
        category=pl.when(pl.col("ID") == "/9/a").then(pl.lit(category, pl.Utf8)).otherwise(pl.col("category"))
    )
    reviewed.write_csv(tmp_path / "out.csv")
    result = _apply(tmp_path)
    assert result.exit_code == 1 and said in result.stderr, result.stderr
    cli_works_or_one_line(result)
    assert not (tmp_path / "new.csv").exists()


# ---------------------------------------------------------------------------------------------
# Hypothesis: mutated exports and notes


@given(st.data())
@settings(max_examples=examples(60), deadline=None)
def test_mutated_notes_are_applied_or_refused_in_one_line(data: st.DataObject) -> None:
    with scratch() as folder:
        _setup(folder, REVIEWS)
        assert _import(folder).exit_code == 0
        notes = folder / "out.review.json"
        notes.write_bytes(data.draw(mutated_bytes(json.loads(notes.read_text()), WORDS)))
        before = snapshot(folder)
        cli_works_or_one_line(_apply(folder))
        assert_untouched(before, snapshot(folder), {"new.csv", "new.apply.json"})


def test_an_input_is_never_the_output_of_another_role(tmp_path: Path) -> None:
    """`--overwrite` let a table given as one input be the output: subtract wrote the training rows over the
    evaluation table, review apply over the reviewers' table, and review import (a table of another stage's
    kind) turned the training table into its ten reviewed rows, leaving the stale settings beside it."""
    from ..support import assert_one_line_error, eic

    _setup(tmp_path, [task(1, "/9/a", ["painting"])])
    pl.DataFrame({"ID": ["/9/b"]}).write_csv(tmp_path / "eval.csv")
    assert eic("subtract", tmp_path / "train.csv", tmp_path / "eval.csv", "-o", tmp_path / "t.csv").exit_code == 0
    assert _import(tmp_path).exit_code == 0
    tables = {p: p.read_bytes() for p in tmp_path.iterdir() if p.is_file()}
    for args, said in (
        (["subtract", tmp_path / "t.csv", tmp_path / "eval.csv", "-o", tmp_path / "eval.csv"], "eval.csv"),
        (["review", "apply", tmp_path / "t.csv", tmp_path / "out.csv", "-o", tmp_path / "out.csv"], "out.csv"),
        (["review", "import", tmp_path / "export.json", "-o", tmp_path / "t.csv", "--vocab", tmp_path / "vocab.json"],
         "t.csv"),
    ):  # fmt: skip
        assert_one_line_error(eic(*args, "--overwrite"), said)
    assert {p: p.read_bytes() for p in tmp_path.iterdir() if p.is_file()} == tables


def test_the_table_a_command_works_on_is_rewritten_in_place_with_overwrite(tmp_path: Path) -> None:
    """The review loop in place: `review apply train.csv reviewed.csv -o train.csv --overwrite` (train.csv made by
    subtract) and then `subtract` on the applied table into itself were refused as "a table another eic command
    made", which the docs (and the refusal's own advice) say `--overwrite` replaces."""
    from ..support import eic

    _setup(tmp_path, [task(1, "/9/a", ["painting"])])
    pl.DataFrame({"ID": ["/9/x"]}).write_csv(tmp_path / "eval.csv")
    assert eic("subtract", tmp_path / "train.csv", tmp_path / "eval.csv", "-o", tmp_path / "t.csv").exit_code == 0
    assert _import(tmp_path).exit_code == 0
    applied = eic("review", "apply", tmp_path / "t.csv", tmp_path / "out.csv", "-o", tmp_path / "t.csv", "--overwrite")
    assert applied.exit_code == 0, applied.stderr
    assert pl.read_csv(tmp_path / "t.csv").filter(pl.col("ID") == "/9/a")["category"].to_list() == ["painting"]
    again = eic("subtract", tmp_path / "t.csv", tmp_path / "eval.csv", "-o", tmp_path / "t.csv", "--overwrite")
    assert again.exit_code == 0, again.stderr
