"""core/tables.py: CSV cells that no spreadsheet evaluates, read back as written; damaged lists read for what they
hold."""

from __future__ import annotations

import csv
import os
from pathlib import Path

import polars as pl
import pytest

from europeana_imgcls.core.tables import (
    for_spreadsheets,
    from_spreadsheets,
    read_csv_rows,
    read_csv_salvaged,
    read_table,
    write_csv,
    write_table,
)

FORMULAS = ["-1\n", "+1\n", "-1\r\n", "=1\n", "-1\n\n", "-١", "+٣e٢", "-1 ", "-0x1"]  # each begins a formula
NUMBERS = ["-1", "+3", "-0.5", "-.5", "1e5", "-2.5E-3", "0"]


@pytest.mark.parametrize("value", FORMULAS)
def test_text_that_only_looks_like_a_number_is_escaped_by_both_writers(tmp_path: Path, value: str) -> None:
    assert for_spreadsheets(value) == "'" + value and from_spreadsheets(for_spreadsheets(value)) == value
    write_csv(tmp_path / "a.csv", ["v"], [[value]])
    write_table(pl.DataFrame({"v": [value]}), tmp_path / "b.csv")
    for name in ("a.csv", "b.csv"):
        with (tmp_path / name).open(newline="", encoding="utf-8") as handle:
            assert next(csv.DictReader(handle))["v"] == "'" + value  # what a spreadsheet sees: text
    assert [r["v"] for r in read_csv_rows(tmp_path / "a.csv")] == [value]  # what eic reads: the value


@pytest.mark.parametrize("value", NUMBERS)
def test_numbers_are_left_as_they_are_by_both_writers(tmp_path: Path, value: str) -> None:
    assert for_spreadsheets(value) == value
    write_table(pl.DataFrame({"v": [value]}), tmp_path / "b.csv")
    assert (tmp_path / "b.csv").read_text(encoding="utf-8").splitlines()[1] == value
    assert read_table(tmp_path / "b.csv")["v"].to_list() == [value]


def test_a_damaged_list_is_read_for_its_whole_rows_and_said(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / "failures.csv"
    write_csv(path, ["ID", "URL", "error"], [["/1/ü", "u", "=HYPERLINK()"], ["/2/a", "u", "HTTP 404"]])
    whole = path.read_bytes()
    path.write_bytes(whole.replace("ü".encode(), b"\xc3") + b"/3/a,u\n/4/\xe2\x82")  # a byte gone; a short row; a cut
    assert read_csv_salvaged(path, "their records are tried again") == [{"ID": "/2/a", "URL": "u", "error": "HTTP 404"}]
    assert "3 damaged row(s) left out" in caplog.text and "tried again" in caplog.text
    path.write_bytes(b'ID,URL,error\n/1/a,u,x\n/2/a,"u' + b"x" * 200_000)  # a quote never closed
    assert read_csv_salvaged(path, "") == [{"ID": "/1/a", "URL": "u", "error": "x"}]


def test_hypothesis_is_derandomized_in_ci_and_keeps_its_examples_out_of_the_repository() -> None:
    from hypothesis import settings

    current = settings.default
    assert current.derandomize == bool(os.environ.get("CI"))
    if current.database is not None:  # outside CI: in pytest's cache folder, which git ignores
        assert ".pytest_cache" in str(getattr(current.database, "path", ""))
    assert ".hypothesis/" in (Path(__file__).resolve().parents[1] / ".gitignore").read_text().splitlines()
