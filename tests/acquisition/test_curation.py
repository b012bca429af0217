"""subtract and stats on real pilot tables and on small hand-made ones."""

from __future__ import annotations

import csv
import json
import logging
from pathlib import Path

import polars as pl
import pytest
from typer.testing import CliRunner

from europeana_imgcls import StatsConfig, SubtractConfig, stats, subtract
from europeana_imgcls.cli.app import app
from europeana_imgcls.core.errors import DatasetError

from ..support import SEED_TABLES, assert_one_line_error, eic

needs_seed = pytest.mark.skipif(not SEED_TABLES.is_dir(), reason="shared seed tables not present")


def csv_ids(path: Path) -> list[str]:
    with path.open(newline="", encoding="utf-8") as handle:
        rows = [row for row in csv.DictReader(handle) if any((v or "").strip() for v in row.values())]
    return [(row.get("ID") or "").strip() for row in rows]


@needs_seed
@pytest.mark.parametrize(
    ("train_name", "removed"),
    [
        ("clean_training_data.csv", 0),
        ("crowdheritage_dataset.csv", 10),
        ("multilabel_dataset_open_permission.csv", 8),
    ],
)
def test_subtract_on_the_pilot_tables_is_exact(tmp_path: Path, train_name: str, removed: int) -> None:
    train, evaluation = SEED_TABLES / train_name, SEED_TABLES / "eval_dataset.csv"
    eval_ids = {i for i in csv_ids(evaluation) if i}
    expected = [i for i in csv_ids(train) if i not in eval_ids]
    report = subtract(SubtractConfig(train=train, eval=evaluation, output=tmp_path / "out.csv"))
    out = pl.read_csv(tmp_path / "out.csv")
    assert out["ID"].fill_null("").to_list() == expected
    assert report.kept == len(expected) and report.removed == len(csv_ids(train)) - len(expected)
    assert report.removed == removed
    assert not any(c == "" or c.startswith("_duplicated") for c in out.columns)


def test_subtract_strips_spaces_and_ignores_blank_columns(tmp_path: Path) -> None:
    (tmp_path / "t.csv").write_text("category,ID,URL,,\npaint,/1/a ,u1,,\nmap,/1/b,u2,,\nmap,/1/c,u3,,\n")
    (tmp_path / "e.parquet").unlink(missing_ok=True)
    pl.DataFrame({"ID": [" /1/a", "/1/c", None]}).write_parquet(tmp_path / "e.parquet")
    report = subtract(
        SubtractConfig(train=tmp_path / "t.csv", eval=tmp_path / "e.parquet", output=tmp_path / "o.parquet")
    )
    assert pl.read_parquet(tmp_path / "o.parquet").to_dicts() == [{"category": "map", "ID": "/1/b", "URL": "u2"}]
    assert (report.kept, report.removed) == (1, 2)
    assert json.loads((tmp_path / "o.config.json").read_text())["train"] == str(tmp_path / "t.csv")


def test_unreadable_tables_are_one_clear_error(tmp_path: Path) -> None:
    (tmp_path / "no_id.csv").write_text("category,URL\na,b\n")
    with pytest.raises(DatasetError, match="missing column\\(s\\) ID"):
        subtract(SubtractConfig(train=tmp_path / "no_id.csv", eval=tmp_path / "no_id.csv", output=tmp_path / "o.csv"))
    (tmp_path / "bad.parquet").write_bytes(b"not parquet")
    with pytest.raises(DatasetError, match="cannot read table"):
        stats(StatsConfig(table=tmp_path / "bad.parquet"))
    with pytest.raises(DatasetError, match="must end in .csv or .parquet"):
        stats(StatsConfig(table=tmp_path / "t.xlsx"))
    with pytest.raises(DatasetError, match="no such table"):
        stats(StatsConfig(table=tmp_path / "missing.csv"))


@needs_seed
def test_stats_finds_what_is_wrong_in_the_pilot_eval_table() -> None:
    path = SEED_TABLES / "eval_dataset.csv"
    with path.open(newline="", encoding="utf-8") as handle:
        rows = [r for r in csv.DictReader(handle) if any((v or "").strip() for v in r.values())]
    result = stats(StatsConfig(table=path))
    assert result.rows == len(rows)
    assert result.unique_ids == len({r["ID"].strip() for r in rows} - {""})  # a row without an ID is no record
    assert "furniiture" in result.unknown_categories
    assert result.without_category == sum(1 for r in rows if not r["category"].strip())
    assert sum(result.per_category.values()) == len(rows) - result.without_category
    assert "painting " not in result.per_category  # trailing spaces stripped


def test_stats_counts_labels_levels_providers_and_conflicts(tmp_path: Path) -> None:
    pl.DataFrame(
        {
            "category": ["map painting", "map", "painting", "map", "statue"],
            "ID": ["/1/a", "/1/b", "/1/b", "/2/c", "/2/d"],
            "URL": ["u", "u", None, "u", "u"],
            "reusability": ["open", "open", "open", "permission", "open"],
        }
    ).write_csv(tmp_path / "t.csv")
    (tmp_path / "v.json").write_text('{"map": "http://x/1", "painting": "http://x/2"}')
    result = stats(StatsConfig(table=tmp_path / "t.csv", vocab=tmp_path / "v.json"))
    assert result.per_category == {"map": 3, "painting": 2, "statue": 1}
    assert result.per_reusability == {"open": 4, "permission": 1}
    assert result.provider_column == "dataset" and result.per_provider == {"1": 3, "2": 2}
    assert result.without_url == 1 and result.ids_in_several_categories == 1
    assert result.unknown_categories == {"statue": 1}


def test_subtract_and_stats_commands(tmp_path: Path) -> None:
    (tmp_path / "t.csv").write_text("category,ID,URL\nmap,/1/a,u\nmap,/1/b,u\n")
    (tmp_path / "e.csv").write_text("ID,category,,\n/1/a ,map,,\n")
    result = eic("subtract", tmp_path / "t.csv", tmp_path / "e.csv", "-o", tmp_path / "o.csv")
    assert result.exit_code == 0 and "kept 1 rows, removed 1" in result.stdout
    result = eic("stats", tmp_path / "o.csv", "-o", tmp_path / "s.json")
    assert result.exit_code == 0
    assert json.loads((tmp_path / "s.json").read_text())["per_category"] == {"map": 1}
    assert_one_line_error(
        eic("subtract", tmp_path / "nope.csv", tmp_path / "e.csv", "-o", tmp_path / "x.csv"),
        "nope.csv: no such file or folder",
    )
    (tmp_path / "broken.csv").write_bytes(b"\xff\xfe\x00garbage\n\x00\x00")
    assert_one_line_error(eic("stats", tmp_path / "broken.csv"), "broken.csv")


# ---------------------------------------------------------------------------------------------
# Rule 1: eic removes only the temporary files it names itself; existing outputs are refused


@pytest.mark.parametrize("command", ["subtract", "stats"])
def test_table_outputs_are_refused_unless_overwrite_and_eics_own(command: str, tmp_path: Path) -> None:
    table = tmp_path / "t.csv"
    table.write_text("ID,category,URL\n/1/a,map,http://127.0.0.1:9/a.jpg\n")
    output = tmp_path / ("out.csv" if command == "subtract" else "out.json")
    output.write_text("precious")
    args = ["subtract", str(table), str(table)] if command == "subtract" else ["stats", str(table)]
    result = CliRunner().invoke(app, [*args, "-o", str(output)])
    # not offered --overwrite, which would refuse it too
    assert result.exit_code == 1 and "already exists" in result.stderr and "--overwrite" not in result.stderr
    assert "that eic wrote" in result.stderr and len(result.stderr.strip().splitlines()) == 1
    assert output.read_text() == "precious"
    # `overwrite` replaces only what eic wrote there: not a file of someone else's...
    result = CliRunner().invoke(app, [*args, "-o", str(output), "--overwrite"])
    assert result.exit_code == 1 and "that eic wrote" in result.stderr and output.read_text() == "precious"
    # ...but its own output, written by a first run.
    output.unlink()
    for extra in ([], ["--overwrite"]):
        result = CliRunner().invoke(app, [*args, "-o", str(output), *extra])
        assert result.exit_code == 0, result.stderr
    assert output.read_text() != "precious"
    again = CliRunner().invoke(app, [*args, "-o", str(output)])  # eic's own: --overwrite is what replaces it
    assert again.exit_code == 1 and "already exists" in again.stderr and "--overwrite" in again.stderr


def test_subtract_warns_when_it_removes_most_of_a_class_or_a_level(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    rows = [
        {"ID": f"/1/{c}{level}{i}", "category": c, "reusability": level}
        for c in ("map", "painting")
        for level in ("open", "permission")
        for i in range(4)
    ]
    pl.DataFrame(rows).write_csv(tmp_path / "train.csv")

    def subtracted(evaluation: list[dict[str, str]], name: str) -> list[str]:
        pl.DataFrame(evaluation).write_csv(tmp_path / f"{name}.csv")
        config = SubtractConfig(
            train=tmp_path / "train.csv", eval=tmp_path / f"{name}.csv", output=tmp_path / f"{name}.out.csv"
        )
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="europeana_imgcls"):
            report = subtract(config)
        assert [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING] == report.warnings
        return report.warnings

    # An evaluation harvest whose --n reached every open record: training keeps no open record at all.
    (level,) = subtracted([r for r in rows if r["reusability"] == "open"], "open")
    assert "8 of 8 records of reusability level 'open' (100%)" in level and "--n" in level
    (category,) = subtracted([r for r in rows if r["category"] == "map"][:5], "maps")  # 4 open of 8: half, no more
    assert "5 of 8 records of class 'map'" in category
    assert subtracted(rows[:1], "one") == []  # one record of a class: nothing to say


def test_subtract_matches_a_record_however_its_id_is_written(tmp_path: Path) -> None:
    """An evaluation table from elsewhere writes a record's ID as its URI, its page on europeana.eu (as the Search
    API's `guid` gives it, with its tracking query, or as a browser's address bar shows it), its Record API
    address, without the leading slash (the pilot's eval_multilabel.csv), or with a trailing one: each is the same
    record."""
    ids = [f"/9001/{x}" for x in "abcdefghijkl"] + ["/9001/kept"]
    pl.DataFrame({"category": ["map"] * len(ids), "ID": ids}).write_csv(tmp_path / "t.csv")
    written = [  # IDs as other tables write them: text subtract reads, never addresses it fetches
        "http://data.europeana.eu/item/9001/a",
        "https://www.europeana.eu/en/item/9001/b",
        "9001/c",
        "/9001/d/",
        " /9001/e ",
        "https://www.europeana.eu/item/9001/f",
        "https://www.europeana.eu/portal/de/record/9001/g.html",
        "https://www.europeana.eu/item/9001/h?utm_source=api&utm_medium=api&utm_campaign=api2demo",
        "https://www.europeana.eu/de/item/9001/i?query=map&page=2#media",
        "https://api.europeana.eu/record/v2/9001/j.json",
        "https://api.europeana.eu/record/9001/k.jsonld?wskey=api2demo",
        "http://data.europeana.eu/item/9001/l#this",
    ]
    pl.DataFrame({"ID": written}).write_csv(tmp_path / "e.csv")
    report = subtract(SubtractConfig(train=tmp_path / "t.csv", eval=tmp_path / "e.csv", output=tmp_path / "o.csv"))
    assert pl.read_csv(tmp_path / "o.csv")["ID"].to_list() == ["/9001/kept"]
    assert (report.kept, report.removed) == (1, 12)


def test_a_table_with_old_mac_line_ends_reads_as_its_rows(tmp_path: Path) -> None:
    """Excel's "CSV (Macintosh)" ends lines with CR alone: it read as one header line and no rows (0 rows, exit 0,
    subtract removing nothing)."""
    (tmp_path / "t.csv").write_bytes(b"category,ID\rmap,/1/a\rmap,/1/b\rphoto,/1/c\r")
    (tmp_path / "e.csv").write_bytes(b"ID\r/1/b\r")
    report = subtract(SubtractConfig(train=tmp_path / "t.csv", eval=tmp_path / "e.csv", output=tmp_path / "o.csv"))
    assert pl.read_csv(tmp_path / "o.csv")["ID"].to_list() == ["/1/a", "/1/c"] and report.removed == 1
    assert stats(StatsConfig(table=tmp_path / "t.csv")).rows == 3


def test_the_settings_file_beside_an_output_is_claimed_with_it(tmp_path: Path) -> None:
    """eic writes NAME.config.json beside a table: a user's own file of that name was replaced without a word, and
    eic's settings of x.csv replaced by those of x.parquet (then x.csv was no table of eic's, and could be neither
    resumed nor overwritten). Both refused in one line, before any work, and left as they were."""
    pl.DataFrame({"category": ["map", "map"], "ID": ["/1/a", "/1/b"]}).write_csv(tmp_path / "t.csv")
    pl.DataFrame({"ID": ["/1/b"]}).write_csv(tmp_path / "e.csv")
    mine = tmp_path / "results.config.json"
    mine.write_text('{"my": "precious settings"}')
    result = eic("subtract", tmp_path / "t.csv", tmp_path / "e.csv", "--output", tmp_path / "results.csv")
    assert_one_line_error(result, "results.config.json")
    assert mine.read_text() == '{"my": "precious settings"}' and not (tmp_path / "results.csv").exists()
    first = eic("subtract", tmp_path / "t.csv", tmp_path / "e.csv", "--output", tmp_path / "x.csv")
    assert first.exit_code == 0, first.stderr
    kept = (tmp_path / "x.config.json").read_text()
    result = eic("subtract", tmp_path / "t.csv", tmp_path / "e.csv", "--output", tmp_path / "x.parquet")
    assert_one_line_error(result, "x.csv")
    assert (tmp_path / "x.config.json").read_text() == kept and not (tmp_path / "x.parquet").exists()
    again = eic("subtract", tmp_path / "t.csv", tmp_path / "e.csv", "--output", tmp_path / "x.csv", "--overwrite")
    assert again.exit_code == 0, again.stderr


def test_a_users_json_config_named_like_the_settings_file_is_kept(tmp_path: Path) -> None:
    """A JSON --config file of the user's, named NAME.config.json and naming NAME.csv as its output, was taken for
    eic's settings and replaced: its [download] section (and its key) gone. eic's settings file holds one stage's
    settings and nothing else; this one is refused in one line and kept, and the user's own table beside it is
    not taken for eic's (--overwrite refuses it)."""
    pl.DataFrame({"category": ["map", "map"], "ID": ["/1/a", "/1/b"]}).write_csv(tmp_path / "t.csv")
    pl.DataFrame({"ID": ["/1/b"]}).write_csv(tmp_path / "e.csv")
    mine = tmp_path / "x.config.json"
    text = json.dumps({"output": "x.csv", "api_key": "mine", "download": {"max_side": 512}})
    mine.write_text(text)
    result = eic("subtract", tmp_path / "t.csv", tmp_path / "e.csv", "--output", tmp_path / "x.csv")
    assert_one_line_error(result, "x.config.json")
    assert mine.read_text() == text and not (tmp_path / "x.csv").exists()
    (tmp_path / "x.csv").write_text("ID,notes\n/9/a,the museum's own\n")
    result = eic("subtract", tmp_path / "t.csv", tmp_path / "e.csv", "--output", tmp_path / "x.csv", "--overwrite")
    assert result.exit_code != 0 and "Traceback" not in result.output + result.stderr
    assert (tmp_path / "x.csv").read_text() == "ID,notes\n/9/a,the museum's own\n" and mine.read_text() == text
    # eic's own settings, as this version writes them or as a person copied them, stay eic's to replace
    first = eic("subtract", tmp_path / "t.csv", tmp_path / "e.csv", "--output", tmp_path / "y.csv")
    assert first.exit_code == 0, first.stderr
    again = eic("subtract", tmp_path / "t.csv", tmp_path / "e.csv", "--output", tmp_path / "y.csv", "--overwrite")
    assert again.exit_code == 0, again.stderr


def test_stats_counts_ids_and_labels_as_they_are_meant(tmp_path: Path) -> None:
    """A row without an ID was one more unique ID (the pilot's eval_dataset.csv: 420 for 419), a double space in
    a category made a category '' (said not to be in the vocabulary), and the same labels in another order made
    a record "in several categories"."""
    rows = "ID,category\n/1/a,map  photograph\n/1/b,ceramics drawing\n/1/b,drawing ceramics\n,map\n/1/c,map\n"
    (tmp_path / "t.csv").write_text(rows)
    found = stats(StatsConfig(table=tmp_path / "t.csv"))
    assert found.unique_ids == 3
    assert "" not in found.per_category and "" not in found.unknown_categories
    assert found.ids_in_several_categories == 0


@pytest.mark.slow(seconds=3)  # a table over 64 MiB, written three times
def test_a_large_table_eic_wrote_is_still_eics(tmp_path: Path) -> None:
    """A table was judged eic's only if it was under 64 MiB (the limit for the sidecars read to judge it): a
    subtract of a large training table could then be neither run again with --overwrite nor told apart from a
    user's file ("already exists and is not a table that eic wrote")."""
    pl.DataFrame({"ID": [f"/1/{i}" for i in range(70_000)], "title": ["x" * 1000] * 70_000}).write_csv(
        tmp_path / "t.csv"
    )
    pl.DataFrame({"ID": ["/1/0"]}).write_csv(tmp_path / "e.csv")
    args = ["subtract", tmp_path / "t.csv", tmp_path / "e.csv", "-o", tmp_path / "o.csv"]
    assert eic(*args).exit_code == 0 and (tmp_path / "o.csv").stat().st_size > 64 * 2**20
    again = eic(*args, "--overwrite")
    assert again.exit_code == 0, again.stderr
