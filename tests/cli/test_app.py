"""The eic command as a user runs it: exit codes, one-line errors, config precedence."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

import europeana_imgcls
from europeana_imgcls.cli.app import app
from europeana_imgcls.core.config import build_config
from europeana_imgcls.core.errors import ConfigError

from ..support import assert_one_line_error, eic


@pytest.mark.slow  # an eic process
def test_python_dash_m_and_public_surface() -> None:
    done = subprocess.run([sys.executable, "-m", "europeana_imgcls", "--help"], capture_output=True, text=True)
    assert done.returncode == 0 and "harvest" in done.stdout
    for name in europeana_imgcls.__all__:
        assert hasattr(europeana_imgcls, name), name


def test_first_hour_rough_edges(tmp_path: Path) -> None:
    """Mistakes a newcomer makes, each answered with one line that says what to do."""
    typo = tmp_path / "typo.toml"
    typo.write_text("[train]\nepoch = 3\n")
    from europeana_imgcls.core.config import TrainConfig

    with pytest.raises(ConfigError, match=r"typo.toml: unknown setting 'epoch' in \[train\]; did you mean 'epochs'"):
        build_config(TrainConfig, {"data_dir": tmp_path}, typo, env={})
    result = eic("train", tmp_path, "--folds", "2")
    assert_one_line_error(result, "folds")
    assert result.exit_code == 2 and not (tmp_path / "run").exists()
    result = eic("train", tmp_path, "--learning-rate", "-1")  # refused before torch is imported
    assert_one_line_error(result, "learning_rate")


def test_library_messages_name_settings_and_the_command_line_shows_flags(tmp_path: Path) -> None:
    from europeana_imgcls import SubtractConfig, subtract

    table = tmp_path / "t.csv"
    table.write_text("ID\n/1/a\n")
    subtract(SubtractConfig(train=table, eval=table, output=tmp_path / "out.csv"))  # eic's own table, there
    with pytest.raises(europeana_imgcls.DatasetError, match="pass `overwrite` to replace it"):
        subtract(SubtractConfig(train=table, eval=table, output=tmp_path / "out.csv"))
    result = eic("subtract", table, table, "-o", tmp_path / "out.csv")
    assert_one_line_error(result, "pass --overwrite to replace it")


MISSING = [
    ["train", "/no/such/folder", "-o", "r"],
    ["evaluate", "/no/such/run", "/no/such/folder"],
    ["predict", "/no/such/run", "x.jpg"],
    ["embed", "/no/such/folder"],
    ["audit", "/no/such/run"],
    ["calibrate", "/no/such/run"],
    ["enrich", "/no/such/run", "x.jpg"],
]


@pytest.fixture(scope="module")
def refusals() -> dict[str, dict[str, Any]]:
    """Each command of MISSING run in turn in one fresh process (the test session has imported torch long ago):
    its exit code, its stderr, and whether torch had been imported by then."""
    code = """
import contextlib, io, json, sys
from europeana_imgcls.cli.app import command_line
for args in json.loads(sys.argv[1]):
    sys.argv, err, status = ["eic", *args], io.StringIO(), 0
    with contextlib.redirect_stderr(err):
        try:
            command_line()
        except SystemExit as exit:
            status = exit.code
    print(json.dumps({"args": args, "torch": "torch" in sys.modules, "status": status, "stderr": err.getvalue()}))
"""
    done = subprocess.run(
        [sys.executable, "-c", code, json.dumps(MISSING)], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    return {" ".join(r["args"]): r for r in map(json.loads, done.stdout.splitlines())}


@pytest.mark.slow(seconds=2)  # an eic process
@pytest.mark.parametrize("args", MISSING)
def test_a_missing_path_is_refused_before_torch_is_imported(
    refusals: dict[str, dict[str, Any]], args: list[str]
) -> None:
    result = refusals[" ".join(args)]
    assert not result["torch"] and result["status"] == 1, result
    assert "no such file or folder" in result["stderr"] and len(result["stderr"].strip().splitlines()) == 1


def test_arguments_in_the_wrong_place_are_told_what_to_pass(trained: Path, eval_dir: Path, tmp_path: Path) -> None:
    table = tmp_path / "eval.csv"
    table.write_text("category,ID,URL\nmap,/1/a,http://127.0.0.1:9/a.jpg\n")
    image = next((eval_dir / "map").glob("*.jpg"))
    notes = tmp_path / "notes.jpg"
    notes.write_text("not an image")
    out = str(tmp_path / "e.jsonld")
    said = {
        ("enrich", str(trained), str(table), "-o", out): f"{table} is a table: pass it as --table {table}",
        ("predict", str(image), str(trained), "-o", str(tmp_path / "p.csv")): "the run comes first, then the images",
        ("evaluate", str(eval_dir), str(trained), "-o", str(tmp_path / "ev")): "the run comes first",
        ("evaluate", str(trained), str(table), "-o", str(tmp_path / "ev")): f"{table} is a table: fetch its images",
        ("train", str(table), "-o", str(tmp_path / "r")): "eic download",
        ("calibrate", str(table)): f"{table} is a table, not a training run",
        ("download", str(table), str(tmp_path / "images")): f"one argument too many: to write into {tmp_path}",
        ("enrich", str(trained), str(notes), "-o", out): "nothing could be labelled",  # not an empty output, exit 0
    }
    for args, message in said.items():
        result = CliRunner().invoke(app, [*args, "--quiet"] if args[0] not in ("calibrate",) else list(args))
        assert result.exit_code != 0, (args, result.stdout)
        assert message in result.stderr and len(result.stderr.strip().splitlines()) == 1, (args, result.stderr)
    assert not list(tmp_path.glob("e.*jsonl")) and not (tmp_path / "e.jsonld").exists()


# ---------------------------------------------------------------------------------------------
# Rule 9: smaller ones


def test_a_filesystem_error_is_one_line(tmp_path: Path) -> None:
    table = tmp_path / "t.csv"
    table.write_text("ID,category\n/1/a,map\n")
    result = CliRunner().invoke(app, ["stats", str(table), "-o", "/dev/null/x.json"])
    assert result.exit_code == 1 and result.stderr.startswith("eic: error: ")
    assert len(result.stderr.strip().splitlines()) == 1 and "Traceback" not in result.stderr


@pytest.mark.parametrize(
    ("args", "said"),
    [
        (["withdraw"], "Missing option '--model'"),
        (["subtract", "a.csv", "b.csv"], "Missing option '--output'"),
        (["harvest", "--bogus"], "No such option: --bogus"),
        (["harvest", "--n", "abc"], "'--n'"),
        (["harvest", "--n"], "`eic harvest --help`"),  # a value missing: no context of the command's yet
        (["review", "apply", "--columns"], "`eic review apply --help`"),
        (["predict"], "Missing argument 'RUN'"),
        (["harvset"], "No such command 'harvset'"),
        (["review", "aply"], "No such command 'aply'"),
    ],
)
def test_a_usage_error_is_one_line_that_says_where_help_is(args: list[str], said: str) -> None:
    """Click's usage errors were a box of five lines (usage, a hint, a frame around the error): bad input is one
    line on stderr, as every other refusal, with the exit code 2 of a usage error."""
    result = CliRunner().invoke(app, args)
    lines = result.stderr.strip().splitlines()
    assert result.exit_code == 2 and len(lines) == 1 and lines[0].startswith("eic: error:"), result.stderr
    assert said in lines[0] and "--help" in lines[0]
