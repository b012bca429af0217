"""Fault injection: eic touches only what it wrote, loses no record without a word, and keeps what a run
knew before it started, however the run ends (docs/reliability.md, rules 1-3)."""

from __future__ import annotations

from pathlib import Path

from typer.testing import CliRunner

from europeana_imgcls.cli.app import app

# ---------------------------------------------------------------------------------------------
# Rule 1: eic removes only the temporary files it names itself; existing outputs are refused


# ---------------------------------------------------------------------------------------------
# Rule 2: every row ends saved, already there, a known failure, a new failure or skipped, with a reason


# ---------------------------------------------------------------------------------------------
# Rule 3: what was known before a run is still known after it, however the run ends


# ---------------------------------------------------------------------------------------------
# Rule 4: the API key is sent only to the origin the user configured


# ---------------------------------------------------------------------------------------------
# Rule 5: untrusted bytes meet only the decoders of image formats, within a memory budget


# ---------------------------------------------------------------------------------------------
# Rule 7: names and races


# ---------------------------------------------------------------------------------------------
# Rule 9: smaller ones


def test_a_filesystem_error_is_one_line(tmp_path: Path) -> None:
    table = tmp_path / "t.csv"
    table.write_text("ID,category\n/1/a,map\n")
    result = CliRunner().invoke(app, ["stats", str(table), "-o", "/dev/null/x.json"])
    assert result.exit_code == 1 and result.stderr.startswith("eic: error: ")
    assert len(result.stderr.strip().splitlines()) == 1 and "Traceback" not in result.stderr


# ---------------------------------------------------------------------------------------------
# Rules 6 and 8: a resumed run is the same run; a run that would die late for a reason known early does not start


# ---------------------------------------------------------------------------------------------
# Properties of the pure parts: URLs and tables of any shape


# ---------------------------------------------------------------------------------------------
# Found in review: resumes, encodings and paths


# ---------------------------------------------------------------------------------------------
# Round two: a user's path is a path, never a pattern
