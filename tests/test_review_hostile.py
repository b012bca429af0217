"""The review loop's files read back as hostile input: Label Studio exports, eic review import's notes
(``REVIEWED.review.json``) and reviewed tables someone edited. Each either works, or says one line on stderr
and exits non-zero; nothing eic did not write is touched."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import polars as pl
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner, Result

from europeana_imgcls.cli.app import app
from europeana_imgcls.core.config import ReviewImportConfig
from europeana_imgcls.core.errors import DatasetError
from europeana_imgcls.outputs.review import NONE_CHOICE, import_review

from .hostile import assert_untouched, cli_works_or_one_line, mutated_bytes, scratch, snapshot, without_hanging
from .support import REVIEWS, TRAIN, VOCAB, task

# Words of the review loop's files, for the values Hypothesis puts in them.
WORDS = ("map", "painting", NONE_CHOICE, "/9/a", "/../../x", "/9/a\x00", "choices")


def _import(folder: Path, *extra: str) -> Result:
    args = ["review", "import", str(folder / "export.json"), "-o", str(folder / "out.csv")]
    return CliRunner().invoke(app, [*args, "--vocab", str(folder / "vocab.json"), *extra])


def _apply(folder: Path, *extra: str) -> Result:
    args = ["review", "apply", str(folder / "train.csv"), str(folder / "out.csv"), "-o", str(folder / "new.csv")]
    return CliRunner().invoke(app, [*args, *extra])


def _setup(folder: Path, tasks: Any) -> None:
    (folder / "export.json").write_text(json.dumps(tasks))
    (folder / "vocab.json").write_text(json.dumps(VOCAB))
    pl.DataFrame(TRAIN).write_csv(folder / "train.csv")
    (folder / "bystander.txt").write_text("not eic's")


# ---------------------------------------------------------------------------------------------
# The export: only a regular file, only up to the cap


@pytest.mark.skipif(not Path("/dev/zero").exists(), reason="no /dev/zero")
def test_a_device_given_as_the_export_is_refused_before_it_is_read(tmp_path: Path) -> None:
    result = CliRunner().invoke(app, ["review", "import", "/dev/zero", "-o", str(tmp_path / "out.csv")])
    assert result.exit_code == 1 and "not a regular file" in result.stderr, result.output
    cli_works_or_one_line(result)
    assert not (tmp_path / "out.csv").exists()


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="no named pipes")
def test_a_named_pipe_given_as_the_export_is_refused_without_waiting_for_a_writer(tmp_path: Path) -> None:
    fifo = tmp_path / "export.json"
    os.mkfifo(fifo)

    def read() -> object:
        return import_review(ReviewImportConfig(export=fifo, output=tmp_path / "o.csv"))

    outcome = without_hanging(read, fifo)
    assert isinstance(outcome, DatasetError) and "not a regular file" in str(outcome)


@pytest.mark.skipif(not os.access("/proc/self/pagemap", os.R_OK), reason="no /proc/self/pagemap")
def test_a_file_that_says_it_is_empty_is_read_only_up_to_the_cap(tmp_path: Path) -> None:
    # /proc files are regular files of size 0 that hold much more (this one: 8 bytes per page of the address
    # space, hundreds of GB); FUSE and network file systems can under-report a size too.
    with pytest.raises(DatasetError, match="more than the 1 MB eic reads at once"):
        import_review(
            ReviewImportConfig(export=Path("/proc/self/pagemap"), output=tmp_path / "out.csv", max_export_mb=1)
        )


# ---------------------------------------------------------------------------------------------
# Record IDs that would reach file names and tables

HOSTILE_IDS = [
    "/9/a\x00b",  # NUL: cuts a C string, a file name
    "/../../etc",  # a way out of a folder
    "/9/../../x",
    "/9/./x",
    "/9/a\u202egpj.exe",  # right-to-left override: shows another name than it has
    "/9/a\x1b[31mb",  # a terminal escape
    "/9/a\x7fb",
    "/9/a\u2028b",  # a line separator
    "/9/a\u200bb",  # a zero-width space
]


def test_record_ids_a_file_name_or_a_terminal_would_misread_are_refused_with_their_reason(tmp_path: Path) -> None:
    _setup(tmp_path, [])
    tasks = [task(i + 1, record, ["map"]) for i, record in enumerate(HOSTILE_IDS)]
    tasks += [task(50, "/9/q\x00", ["map"], ["painting"]), task(51, "/9/fine", ["map"])]  # a conflict too
    report = import_review(
        ReviewImportConfig(
            export=_write(tmp_path / "export.json", tasks), output=tmp_path / "out.csv", vocab=tmp_path / "vocab.json"
        )
    )
    assert sorted(t for t, _ in report.refused) == sorted(str(t["id"]) for t in tasks[:-1])
    assert all(reason.isprintable() for _, reason in report.refused)
    assert pl.read_csv(tmp_path / "out.csv")["ID"].to_list() == ["/9/fine"]
    notes = (tmp_path / "out.review.json").read_text()
    assert not any(record in json.loads(notes)["conflicting_records"] for record in HOSTILE_IDS + ["/9/q\x00"])


def test_an_image_url_with_characters_a_url_cannot_hold_is_left_out_of_the_row(tmp_path: Path) -> None:
    _setup(tmp_path, [])
    tasks = [task(1, "/9/a", ["map"]), task(2, "/9/b", ["map"]), task(3, "/9/c", ["map"])]
    tasks[0]["data"]["image"] = "http://x/a\u202egpj.exe"
    tasks[1]["data"]["image"] = "http://x/b.jpg\r\nX-Injected: 1"
    import_review(
        ReviewImportConfig(
            export=_write(tmp_path / "export.json", tasks), output=tmp_path / "out.csv", vocab=tmp_path / "vocab.json"
        )
    )
    urls = dict(pl.read_csv(tmp_path / "out.csv").select("ID", "URL").iter_rows())
    assert urls == {"/9/a": None, "/9/b": None, "/9/c": "http://127.0.0.1:9/images/3.jpg"}  # apply has the table's


def _write(path: Path, data: Any) -> Path:
    path.write_text(json.dumps(data))
    return path


@pytest.mark.parametrize(
    "tasks",
    [
        [{"id": "a\nb[/b]", "data": {"ID": 5}}],  # a task id that would start a second line
        [task(1, "/9/a", ["ma\np"])],  # a label that is not in the vocabulary, with a line break
        [{"id": 1, "data": {"ID": "/9/a"}, "annotations": [{"result": [{"type": "choices", "value": 5}]}]}],
    ],
)
def test_what_an_export_holds_never_breaks_the_one_line(tmp_path: Path, tasks: list[Any]) -> None:
    _setup(tmp_path, tasks)
    result = _import(tmp_path)
    assert result.exit_code == 1
    cli_works_or_one_line(result)


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


# ---------------------------------------------------------------------------------------------
# Hypothesis: mutated exports and notes


@given(st.data())
@settings(max_examples=60, deadline=None)
def test_a_mutated_export_is_imported_or_refused_in_one_line(data: st.DataObject) -> None:
    with scratch() as folder:
        _setup(folder, REVIEWS)
        (folder / "export.json").write_bytes(data.draw(mutated_bytes(REVIEWS, WORDS)))
        before = snapshot(folder)
        result = _import(folder)
        cli_works_or_one_line(result)
        assert_untouched(before, snapshot(folder), {"out.csv", "out.review.json"})
        if result.exit_code == 0:  # what it wrote, apply reads back
            cli_works_or_one_line(_apply(folder))
            assert_untouched(before, snapshot(folder), {"out.csv", "out.review.json", "new.csv", "new.apply.json"})


@given(st.data())
@settings(max_examples=60, deadline=None)
def test_mutated_notes_are_applied_or_refused_in_one_line(data: st.DataObject) -> None:
    with scratch() as folder:
        _setup(folder, REVIEWS)
        assert _import(folder).exit_code == 0
        notes = folder / "out.review.json"
        notes.write_bytes(data.draw(mutated_bytes(json.loads(notes.read_text()), WORDS)))
        before = snapshot(folder)
        cli_works_or_one_line(_apply(folder))
        assert_untouched(before, snapshot(folder), {"new.csv", "new.apply.json"})
