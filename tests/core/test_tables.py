"""core/tables.py: CSV cells that no spreadsheet evaluates, read back as written; damaged lists read for what they
hold."""

from __future__ import annotations

import csv
import json
import os
import re
from pathlib import Path

import polars as pl
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from europeana_imgcls.cli.app import app
from europeana_imgcls.core.tables import (
    atomic_path,
    for_spreadsheets,
    from_spreadsheets,
    is_own_temp,
    iter_table,
    read_csv_rows,
    read_csv_salvaged,
    read_table,
    table_columns,
    temp_path,
    write_csv,
    write_table,
)
from europeana_imgcls.europeana.sandbox import Sandbox

from ..support import VOCAB, _good_rows, examples

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
    assert ".hypothesis/" in (Path(__file__).resolve().parents[2] / ".gitignore").read_text().splitlines()


def test_the_fast_lane_tries_a_quarter_of_the_examples_and_the_full_suite_all(request: pytest.FixtureRequest) -> None:
    """support.examples: the fast lane's Hypothesis profile scales a property test's count, the full suite's not."""
    if request.config.getoption("hypothesis_profile", None):
        pytest.skip("a profile chosen on the command line decides the counts")
    fast = "not slow" in (request.config.option.markexpr or "")
    assert (examples(60), examples(300), examples(20)) == ((15, 75, 10) if fast else (60, 300, 20))


def test_a_museum_table_of_its_own_shape_works_with_columns(sandbox: Sandbox, tmp_path: Path) -> None:
    """`--columns ID=id,URL=image_url,category=label` (also in --config): eic works on any collection."""
    from typer.testing import CliRunner

    from europeana_imgcls import DownloadConfig, download
    from europeana_imgcls.cli.app import app

    records = [r for r in sandbox.catalogue if r.type == "IMAGE" and r.has_url and len(r.labels) == 1][:6]
    museum = tmp_path / "museum.csv"
    pl.DataFrame(
        {
            "id": [r.id for r in records],
            "image_url": [sandbox.image_url(r) for r in records],
            "label": [r.labels[0] for r in records],
            "notes": ["x"] * 6,
        }
    ).write_csv(museum)
    refused = CliRunner().invoke(app, ["download", str(museum), "-o", str(tmp_path / "img")])
    assert refused.exit_code == 1 and "missing column(s) ID, URL, category" in refused.stderr
    mapping = "ID=id,URL=image_url,category=label"
    report = download(
        DownloadConfig(table=museum, output_dir=tmp_path / "img", columns=mapping, quiet=True, max_side=32)
    )
    assert report.saved == 6 and report.accounted == 6
    result = CliRunner().invoke(app, ["stats", str(museum), "--columns", mapping])
    assert result.exit_code == 0 and "6" in result.stdout
    config = tmp_path / "eic.toml"
    config.write_text('[subtract]\ncolumns = {ID = "id"}\n')
    result = CliRunner().invoke(
        app, ["subtract", str(museum), str(museum), "-o", str(tmp_path / "left.csv"), "--config", str(config)]
    )
    assert result.exit_code == 0, result.stderr
    assert "removed 6" in " ".join(result.stdout.split())
    bad = CliRunner().invoke(app, ["stats", str(museum), "--columns", "ID=identifier"])
    assert bad.exit_code == 1 and "no column 'identifier' to use as ID" in bad.stderr
    wrong = CliRunner().invoke(app, ["stats", str(museum), "--columns", "Identifier=id"])
    assert wrong.exit_code == 2 and "not a column eic reads" in wrong.stderr


# ---------------------------------------------------------------------------------------------
# Rule 1: eic removes only the temporary files it names itself; existing outputs are refused


def test_temporary_names_are_unique_per_call_and_recognised() -> None:
    target = Path("/x/labels.csv")
    names = {temp_path(target).name for _ in range(1000)}
    assert len(names) == 1000 and all(is_own_temp(n) for n in names)
    assert not any(is_own_temp(n) for n in ("movie.mkv.part", ".movie.mkv.part", "labels.csv", ".x.part"))


def test_atomic_writes_follow_the_umask(tmp_path: Path) -> None:
    old = os.umask(0o022)
    try:
        with atomic_path(tmp_path / "out.txt") as tmp:
            tmp.write_text("x")
    finally:
        os.umask(old)
    assert (tmp_path / "out.txt").stat().st_mode & 0o777 == 0o644


# ---------------------------------------------------------------------------------------------
# Found in review: resumes, encodings and paths


def test_one_columns_setting_serves_a_museum_table_and_a_harvested_one(tmp_path: Path) -> None:
    from europeana_imgcls.core.tables import read_table

    museum, harvested = tmp_path / "museum.csv", tmp_path / "harvested.csv"
    museum.write_text("id,image_url\n/1/a,http://x/a.jpg\n")
    harvested.write_text("ID,URL,category\n/1/b,http://x/b.jpg,map\n")
    mapping = {"ID": "id", "URL": "image_url"}
    assert read_table(museum, ("ID", "URL"), mapping).columns == ["ID", "URL"]
    assert read_table(harvested, ("ID", "URL", "category"), mapping).columns == ["ID", "URL", "category"]


# ---------------------------------------------------------------------------------------------
# A table as a spreadsheet saved it

EXCEL_ROWS = [
    ("ID", "URL", "category", "data_provider"),
    ("/9001/a", "http://x.example/a.jpg", "géographie", "Musée d’Orsay"),
    ("/9001/b", "http://x.example/b.jpg", "peinture", "Musée d’Orsay"),
    ("/9002/c", "http://x.example/c.jpg", "géographie", "Národní muzeum"),
]


@pytest.mark.parametrize(
    ("separator", "encoding"),
    [(";", "cp1252"), (";", "utf-8-sig"), ("\t", "utf-16"), (",", "cp1252")],
    ids=["excel-csv-in-europe", "excel-csv-utf8-in-europe", "excel-unicode-text", "excel-csv"],
)
def test_a_table_saved_by_excel_is_read_as_it_is(separator: str, encoding: str, tmp_path: Path) -> None:
    table = tmp_path / "museum.csv"  # what Excel writes: its separator, its encoding, CRLF line ends
    table.write_bytes("".join(separator.join(row) + "\r\n" for row in EXCEL_ROWS).encode(encoding))
    result = CliRunner().invoke(app, ["stats", str(table), "-o", str(tmp_path / "stats.json")])
    assert result.exit_code == 0, result.stderr
    stats = json.loads((tmp_path / "stats.json").read_text(encoding="utf-8"))
    assert stats["per_category"] == {"géographie": 2, "peinture": 1}
    assert stats["per_provider"] == {"Musée d’Orsay": 2, "Národní muzeum": 1}
    assert read_table(table, required=("ID", "URL")).row(0) == EXCEL_ROWS[1]
    # download streams its table: the same cells, chunk by chunk
    assert table_columns(table) == list(EXCEL_ROWS[0])
    assert [row for chunk in iter_table(table, ("ID", "URL")) for row in chunk.rows()] == EXCEL_ROWS[1:]


def test_a_table_in_no_known_encoding_is_told_to_be_saved_as_csv_utf8(tmp_path: Path) -> None:
    table = tmp_path / "museum.csv"
    table.write_bytes(b"ID,URL,category\r\n/9001/a,http://x.example/a.jpg,\x81\x8d\r\n")  # no cp1252 either
    result = CliRunner().invoke(app, ["stats", str(table)])
    assert result.exit_code != 0 and len(result.stderr.strip().splitlines()) == 1
    assert "neither UTF-8 nor Windows-1252" in result.stderr and "save it as CSV UTF-8" in result.stderr


def test_a_binary_file_given_as_a_table_is_told_to_be_saved_as_csv(tmp_path: Path) -> None:
    """A workbook or other binary file was read as Windows-1252 (any bytes are letters there) and refused for its
    "missing column(s) ... (has: \x00\x01ÿþ garbage)"."""
    table = tmp_path / "museum.csv"
    table.write_bytes(b"PK\x03\x04\x14\x00\x06\x00\x08\x00\x00\x00!\x00\xff\xfe garbage")  # an .xlsx renamed
    result = CliRunner().invoke(app, ["stats", str(table)])
    assert result.exit_code != 0 and len(result.stderr.strip().splitlines()) == 1
    assert "not a text table" in result.stderr and "save it as CSV UTF-8" in result.stderr


# ---------------------------------------------------------------------------------------------
# Round two: a user's path is a path, never a pattern


def test_brackets_and_stars_in_paths_are_names_not_patterns(sandbox: Sandbox, tmp_path: Path, trained_run) -> None:
    """polars reads a path with `[` as a glob by default: `tab[1].csv` matched nothing and crashed."""
    from europeana_imgcls import EnrichConfig, PredictConfig, enrich, predict

    rows = _good_rows(sandbox)[:3]
    table = tmp_path / "tab[1].csv"
    pl.DataFrame(rows).write_csv(table)
    runner = CliRunner()
    stats = runner.invoke(app, ["stats", str(table)])
    assert stats.exit_code == 0, stats.stderr
    fetched = runner.invoke(app, ["download", str(table), "-o", str(tmp_path / "img[2]"), "--quiet"])
    assert fetched.exit_code == 0, fetched.stderr
    assert len(list((tmp_path / "img[2]").rglob("*.jpg"))) == 3
    out = tmp_path / "p[1].csv"
    report = predict(PredictConfig(run=trained_run, table=table, output=out, quiet=True))
    assert report.predicted == 3 and len(list(report.rows())) == 3
    again = predict(PredictConfig(run=trained_run, table=table, output=out, quiet=True, resume=True))
    assert again.already_done == 3
    annotated = enrich(
        EnrichConfig(
            run=trained_run,
            table=table,
            output=tmp_path / "a[1]*.jsonld",
            quiet=True,
            vocab=_vocab_file(tmp_path),
            precision=0.5,
        )
    )
    assert annotated.records == 3 and (tmp_path / "a[1]*.jsonld").is_file()


def _vocab_file(tmp_path: Path) -> Path:
    path = tmp_path / "vocab.json"
    path.write_text(json.dumps(VOCAB))
    return path


_CELL = st.text(alphabet=st.sampled_from(list("=+-@'\t\r a1.,\"é\n")), max_size=8)


@given(st.lists(st.tuples(_CELL, _CELL), min_size=1, max_size=6))
@settings(max_examples=examples(300), deadline=None)
def test_any_text_reads_back_from_eics_csvs_as_written_and_no_cell_starts_a_formula(
    rows: list[tuple[str, str]],
) -> None:
    import tempfile

    from europeana_imgcls.core.tables import read_csv_rows, read_table, write_csv, write_table

    with tempfile.TemporaryDirectory() as folder:
        by_csv, by_polars = Path(folder) / "a.csv", Path(folder) / "b.csv"
        write_csv(by_csv, ["=left", "right"], rows)
        write_table(pl.DataFrame(rows, schema=["=left", "right"], orient="row"), by_polars)
        assert [(r["=left"], r["right"]) for r in read_csv_rows(by_csv)] == rows
        for path in (by_csv, by_polars):
            with path.open(newline="", encoding="utf-8") as handle:
                cells = [cell for row in csv.reader(handle) for cell in row]
            started = [c for c in cells if c[:1] in ("=", "+", "-", "@", "\t", "\r")]
            assert all(re.fullmatch(r"[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?", c) for c in started), started
        # eic's table reader strips cells, reads a blank one as missing and drops wholly blank rows
        expected = [tuple(c.strip() or None for c in row) for row in rows]
        read = read_table(by_polars)
        assert list(read.iter_rows()) == [row for row in expected if row != (None, None)]


def test_a_header_that_repeats_a_name_once_stripped_and_a_list_column_are_one_line(tmp_path: Path) -> None:
    """`ID,category,ID ` (a trailing space) made two ID columns once stripped, and a Parquet column of lists could
    not be read as text: both tracebacks."""
    from europeana_imgcls.core.errors import DatasetError
    from europeana_imgcls.core.tables import read_table

    (tmp_path / "dup.csv").write_text("ID,category,ID \n/1/a,map,/1/a\n")
    with pytest.raises(DatasetError, match="ID"):
        read_table(tmp_path / "dup.csv", required=("ID",))
    pl.DataFrame({"ID": ["/1/a"], "category": [["map", "photo"]]}).write_parquet(tmp_path / "lists.parquet")
    with pytest.raises(DatasetError, match="category"):
        read_table(tmp_path / "lists.parquet", required=("ID",))
    pl.DataFrame({"ID": ["/1/a"], "blob": [b"\xff\xfe"]}).write_parquet(tmp_path / "bytes.parquet")
    with pytest.raises(DatasetError, match="blob"):
        read_table(tmp_path / "bytes.parquet", required=("ID",))
