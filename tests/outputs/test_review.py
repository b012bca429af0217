"""The review loop's files from people: a Label Studio export is untrusted input."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import polars as pl
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from europeana_imgcls import DownloadConfig, download
from europeana_imgcls.cli.app import app
from europeana_imgcls.core.config import ReviewImportConfig
from europeana_imgcls.core.errors import DatasetError
from europeana_imgcls.datasets.tasks import task_for
from europeana_imgcls.outputs.review import NONE_CHOICE, import_review, labelling_config

from ..hostile import assert_untouched, cli_works_or_one_line, mutated_bytes, scratch, snapshot, without_hanging
from ..support import REVIEWS, VOCAB, WORDS, _apply, _import, _setup, examples, task
from ..support import review_import as run


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


def test_a_task_showing_a_local_file_keeps_its_answer_for_apply(tmp_path: Path) -> None:
    local = task(1, "/9/a", ["painting"])
    local["data"]["image"] = "/data/images/map/[ph]9[ph]a.jpg"  # eic audit's task where no table named a URL
    report = run(tmp_path, [local])
    assert report.imported == 1
    row = pl.read_csv(tmp_path / "out.csv").row(0, named=True)
    assert (row["ID"], row["category"], row["URL"]) == ("/9/a", "painting", None)


# ---------------------------------------------------------------------------------------------
# The numbers, on data with known answers


def _export(tasks: list[dict], truth: dict[str, str]) -> list[dict]:
    """A Label Studio JSON export of the review project, as the documented format has it."""
    exported = []
    for i, item in enumerate(tasks):
        answer = truth[item["data"]["ID"]]
        annotation = {
            "id": 1000 + i,
            "completed_by": {"id": 7, "email": "curator@museum.example"},
            "was_cancelled": False,
            "ground_truth": False,
            "task": i + 1,
            "lead_time": 3.2,
            "result": [
                {
                    "id": f"r{i}",
                    "from_name": "category",
                    "to_name": "image",
                    "type": "choices",
                    "value": {"choices": [answer]},
                }
            ],
        }
        entry = {
            "id": i + 1,
            "data": item["data"],
            "project": 1,
            "predictions": item["predictions"],
            "annotations": [annotation],
        }
        exported.append(entry)
    exported[0]["annotations"] = []  # nobody labelled it
    exported[1]["annotations"][0]["was_cancelled"] = True
    other = "painting" if truth[tasks[2]["data"]["ID"]] != "painting" else "map"
    second = json.loads(json.dumps(exported[2]["annotations"][0]))
    second["result"][0]["value"]["choices"] = [other]
    exported[2]["annotations"].append(second)  # two reviewers disagree
    nothing = json.loads(json.dumps(exported[3]["annotations"][0]))
    nothing["result"] = []  # a second reviewer submitted nothing: no answer (never a removal); the first's stands
    exported[3]["annotations"].append(nothing)
    return exported


@pytest.mark.slow
def test_a_label_studio_export_round_trips_into_training_data(world, tmp_path: Path) -> None:
    tasks = json.loads((world["root"] / "review.json").read_text())
    export = tmp_path / "export.json"
    export.write_text(json.dumps(_export(tasks, world["truth"])))
    table = tmp_path / "reviewed.csv"
    result = CliRunner().invoke(app, ["review", "import", str(export), "--output", str(table)])
    assert result.exit_code == 0, result.stderr
    said = " ".join(result.stdout.split())
    assert "2 tasks skipped" in said and "1 tasks where reviewers disagree" in said
    df = pl.read_csv(table)
    assert df.columns == ["ID", "URI", "URL", "category", "skos_concept", "reviewed_by"]
    assert df.height == len(tasks) - 3
    assert all(world["truth"][i] == c for i, c in zip(df["ID"], df["category"], strict=True))
    assert set(df["reviewed_by"]) == {"curator@museum.example"}
    assert all(VOCAB[c] == s for c, s in zip(df["category"], df["skos_concept"], strict=True))
    side = json.loads((tmp_path / "reviewed.review.json").read_text())
    assert side["skipped"] == ["1", "2"] and side["conflicts"] == ["3"] and "4" not in side.get("removed", [])
    # The corrections are training data: eic download takes the table as it is.
    saved = download(DownloadConfig(table=table, output_dir=tmp_path / "img", quiet=True, max_side=32))
    assert saved.saved == df.height and saved.failed == 0


# ---------------------------------------------------------------------------------------------
# The export: only a regular file, only up to the cap


@pytest.mark.skipif(not Path("/dev/zero").exists(), reason="no /dev/zero")
def test_only_none_of_these_classes_takes_a_record_out(tmp_path: Path) -> None:
    """A comment alone or an empty submit is no answer, never a removal; an answer in a choices field eic did not
    name (a renamed template) is refused in one line, not read as "no class" for every task."""

    def answered(result: list[dict]) -> list[dict]:
        item = task(1, "/9/a", ["map"])
        item["annotations"][0]["result"] = result
        return [item]

    comment = [{"from_name": "notes", "to_name": "image", "type": "textarea", "value": {"text": ["blurry"]}}]
    for result in ([], comment, [{"from_name": "category", "type": "choices", "value": {"choices": []}}]):
        report = run(tmp_path, answered(result))
        assert report.removed == [] and report.imported == 0 and report.skipped == ["1"], result
    chosen = {"from_name": "category", "to_name": "image", "type": "choices", "value": {"choices": [NONE_CHOICE]}}
    assert run(tmp_path, answered([chosen])).removed == ["/9/a"]
    renamed = {**chosen, "from_name": "choice", "value": {"choices": ["painting"]}}
    with pytest.raises(DatasetError, match="answered in a choices field named 'choice', not 'category'"):
        run(tmp_path, answered([renamed]))


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
# Hypothesis: mutated exports and notes


@given(st.data())
@settings(max_examples=examples(60), deadline=None)
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
