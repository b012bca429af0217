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
from europeana_imgcls.outputs.review import NONE_CHOICE, import_review, labelling_config

from .conftest import VOCAB


def task(number: int, record: str, *answers: list[str], uri: str | None = None) -> dict[str, Any]:
    """A task of an eic review project as Label Studio exports it, with one annotation per answer."""
    data = {"image": f"http://127.0.0.1:9/images/{number}.jpg", "ID": record, "reason": "abstained"}
    if uri is not None:
        data["URI"] = uri
    return {
        "id": number,
        "data": data,
        "annotations": [
            {
                "id": 100 * number + k,
                "completed_by": {"id": k, "email": f"r{k}@museum.example"},
                "was_cancelled": False,
                "result": [
                    {
                        "id": "x",
                        "from_name": "category",
                        "to_name": "image",
                        "type": "choices",
                        "value": {"choices": answer},
                    }
                ],
            }
            for k, answer in enumerate(answers)
        ],
    }


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
    assert f'<Choice value="{NONE_CHOICE}"/>' in labelling_config(list(VOCAB), False)


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
