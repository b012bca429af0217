"""Reference pages generated from the code, so the docs cannot drift from it.

python -m europeana_imgcls.cli.reference docs/reference        # write
python -m europeana_imgcls.cli.reference docs/reference --check  # exit 1 when out of date
"""

from __future__ import annotations

import sys
import typing
from pathlib import Path

from ..core.config import ALL_CONFIGS, ENV_PREFIX, FROM_FILE_TOO, SECRET_FIELDS

PAGES = {"cli.md": lambda: cli_reference(), "configuration.md": lambda: config_reference()}


def cli_reference() -> str:
    import typer.main

    from .app import app

    group = typer.main.get_command(app)
    lines = [
        "# Command-line reference",
        "",
        "Generated from the `eic` command itself "
        "(`python -m europeana_imgcls.cli.reference docs/reference`); `eic COMMAND --help` shows the same.",
        "",
    ]
    for name, command in _flat(group):
        lines += [f"## `eic {name}`", "", (command.help or "").strip(), ""]
        arguments = [p for p in command.params if p.param_type_name == "argument"]
        options = [p for p in command.params if p.param_type_name == "option"]
        if arguments:
            lines += ["| argument | meaning |", "| --- | --- |"]
            lines += [
                f"| `{(p.metavar or p.name).upper()}`{'...' if p.nargs == -1 else ''} | {_cell(p.help)} |"
                for p in arguments
            ]
            lines.append("")
        lines += ["| option | meaning | default |", "| --- | --- | --- |"]
        for p in options:
            flags = ", ".join(f"`{o}`" for o in [*p.opts, *p.secondary_opts])
            default = (
                p.show_default
                if isinstance(p.show_default, str)
                else ("" if p.default is None or p.show_default is False else str(p.default))
            )
            lines.append(f"| {flags} | {_cell(p.help)} | {_cell(default)} |")
        lines.append("")
    return "\n".join(lines)


def _flat(group: typing.Any, prefix: str = "") -> list[tuple[str, typing.Any]]:
    """Every command, with the commands of a group (``eic review import``) under their full name."""
    found = []
    for name, command in sorted(group.commands.items()):
        if hasattr(command, "commands"):
            found += _flat(command, f"{prefix}{name} ")
        else:
            found.append((f"{prefix}{name}", command))
    return found


def config_reference() -> str:
    lines = [
        "# Configuration reference",
        "",
        "Generated from the pydantic models in `europeana_imgcls/core/config.py`. Each setting can be given as a "
        "flag, in a `--config` file (flat, or in the stage's table), or as the environment variable shown; "
        "flags win over the file, the file over the environment, the environment over the default. A required "
        "setting shown without a variable is given on the command line, as its flag or argument (in Python, in the "
        "config object): a variable every stage reads (EUROPEANA_OUTPUT) would otherwise choose it for commands it "
        "was not meant for.",
        "",
    ]
    for model in ALL_CONFIGS:
        lines += [
            f"## `[{model.stage}]` — `{model.__name__}`",
            "",
            (model.__doc__ or "").strip(),
            "",
            "| setting | type | default | environment | meaning |",
            "| --- | --- | --- | --- | --- |",
        ]
        for name, field in model.model_fields.items():
            variable = f"`{ENV_PREFIX}{name.upper()}`"
            if field.is_required():
                default = "required"
                variable = variable if field.json_schema_extra == FROM_FILE_TOO else "—"
            else:
                value = field.get_default(call_default_factory=True)
                value = str(value) if isinstance(value, Path) else value
                default = "the public demo key" if name in SECRET_FIELDS and value is not None else repr(value)
            lines.append(
                f"| `{name}` | {_cell(_type(field.annotation))} | {_cell(default)} | "
                f"{variable} | {_cell(field.description)} |"
            )
        lines.append("")
    return "\n".join(lines)


def _type(annotation: object) -> str:
    text = str(annotation) if typing.get_origin(annotation) else getattr(annotation, "__name__", str(annotation))
    return text.replace("typing.", "").replace("pathlib.", "").replace("pydantic.types.", "")


def _cell(text: object) -> str:
    return str(text or "").replace("|", "\\|").replace("\n", " ")


def main(argv: list[str]) -> int:
    folder = Path(argv[0]) if argv else Path("docs/reference")
    check = "--check" in argv
    stale = []
    for name, render in PAGES.items():
        path, text = folder / name, render() + "\n"
        if check:
            if not path.exists() or path.read_text(encoding="utf-8") != text:
                stale.append(str(path))
        else:
            folder.mkdir(parents=True, exist_ok=True)
            path.write_text(text, encoding="utf-8")
    if stale:
        print(
            f"out of date: {', '.join(stale)}; run: python -m europeana_imgcls.cli.reference {folder}", file=sys.stderr
        )
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
