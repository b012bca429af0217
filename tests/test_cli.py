"""The eic command as a user runs it: exit codes, one-line errors, config precedence."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

import europeana_imgcls
from europeana_imgcls.cli.app import app
from europeana_imgcls.core.config import build_config
from europeana_imgcls.core.errors import ConfigError

from .support import assert_one_line_error, eic


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
    (tmp_path / "out.csv").write_text("x")
    with pytest.raises(europeana_imgcls.DatasetError, match="pass `overwrite` to replace it"):
        subtract(SubtractConfig(train=table, eval=table, output=tmp_path / "out.csv"))
    result = eic("subtract", table, table, "-o", tmp_path / "out.csv")
    assert_one_line_error(result, "pass --overwrite to replace it")


def _click_commands() -> dict[str, object]:
    import typer.main

    from europeana_imgcls.cli.reference import _flat

    return dict(_flat(typer.main.get_command(app)))


def test_every_setting_of_a_command_is_a_flag_and_every_flag_a_setting() -> None:
    from europeana_imgcls.cli.options import COMMANDS

    commands = _click_commands()
    assert set(COMMANDS) == set(commands)  # every command is made from a config
    for name, model in COMMANDS.items():
        params = {p.name for p in commands[name].params} - {"config"}  # type: ignore[attr-defined]
        assert params == set(model.model_fields), name


def test_every_option_a_message_names_exists() -> None:
    """An error that says "pass `overwrite`" (shown as --overwrite) names a flag that some command has."""
    import ast
    import re

    flags = {
        opt
        for command in _click_commands().values()
        for p in command.params  # type: ignore[attr-defined]
        for opt in (*p.opts, *p.secondary_opts)
    } | {"--help"}
    named: dict[str, str] = {}
    for path in Path(europeana_imgcls.__file__).parent.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Call) and getattr(node.func, "id", getattr(node.func, "attr", "")).endswith(
                ("Error", "warning", "info", "echo")
            ):
                texts = (n.value for n in ast.walk(node) if isinstance(n, ast.Constant) and isinstance(n.value, str))
                for text in texts:
                    for name in re.findall(r"(?<!`)`([a-z][a-z0-9_]*)`(?!`)", text):
                        named["--" + name.replace("_", "-")] = path.name
                    for option in re.findall(r"(?<![\w-])(--[a-z][a-z0-9-]*)", text):
                        named[option] = path.name
    named.pop("--no-crossvalidation", None)  # as_flags spells "`crossvalidation` off" so; checked below
    assert "--crossvalidation" in flags
    missing = {
        option: where
        for option, where in named.items()
        if option not in flags and not (option.startswith("--no-") and "--" + option[5:] in flags)
    }
    assert len(named) > 20 and not missing, missing


@pytest.mark.parametrize(
    ("command", "option"), [("review import x.json", "--output"), ("subtract a.csv b.csv", "--output")]
)
def test_a_required_option_is_marked_required(command: str, option: str) -> None:
    words = command.split()[:-1] if command.startswith("review") else command.split()[:1]
    help_text = eic(*words, "--help").stdout
    line = next(i for i, text in enumerate(help_text.splitlines()) if option in text)
    assert "*" in help_text.splitlines()[line].split(option)[0]  # rich marks a required option with a star
    missing = eic(*command.split())
    assert missing.exit_code == 2 and f"Missing option '{option}'" in missing.stderr


@pytest.mark.parametrize(
    "args",
    [
        ["train", "/no/such/folder", "-o", "r"],
        ["evaluate", "/no/such/run", "/no/such/folder"],
        ["predict", "/no/such/run", "x.jpg"],
        ["embed", "/no/such/folder"],
        ["audit", "/no/such/run"],
        ["calibrate", "/no/such/run"],
        ["enrich", "/no/such/run", "x.jpg"],
    ],
)
def test_a_missing_path_is_refused_before_torch_is_imported(args: list[str]) -> None:
    # In a fresh process: the test session has imported torch long ago.
    code = (
        "import sys\nfrom europeana_imgcls.cli.app import main\nsys.argv = ['eic', *sys.argv[1:]]\n"
        "try:\n    main()\nexcept SystemExit as exit:\n"
        "    print('torch' in sys.modules, exit.code, file=sys.stdout)\n"
    )
    result = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, timeout=120)
    assert result.stdout.split() == ["False", "1"], result.stdout + result.stderr
    assert "no such file or folder" in result.stderr and len(result.stderr.strip().splitlines()) == 1
