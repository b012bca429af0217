"""cli/options.py: every command's flags derived from its config, and every flag a message names exists."""

from __future__ import annotations

from pathlib import Path

import pytest

import europeana_imgcls
from europeana_imgcls.cli.app import app

from ..support import eic


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
