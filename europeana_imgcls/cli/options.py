"""A command's options, derived from its config: each field of the pydantic model is one flag (or one
positional argument), with the field's description as its help and the field's default as its shown default.

So a setting is declared once. A command says only which fields it takes as arguments, which flags get a
short form (``-o``) or another spelling, and what it does with the config once it is built. Every option
defaults to None ("not given"), so that ``build_config`` can apply the precedence flag > ``--config`` file >
``EUROPEANA_*`` environment > default.
"""

from __future__ import annotations

import inspect
import types
import typing
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any

import typer
from pydantic import SecretStr
from pydantic.fields import FieldInfo

from ..core.config import ENV_PREFIX, FROM_FILE_TOO, build_config
from ..core.errors import ConfigError

CONFIG_FILE_HELP = "TOML or JSON settings file; flags override it, it overrides EUROPEANA_* env."
COMMANDS: dict[str, type[Any]] = {}  # every command made here (``review import`` by its full name) -> its config


@dataclass(frozen=True)
class Arg:
    """A field taken as a positional argument."""

    field: str
    metavar: str | None = None
    help: str | None = None  # default: the field's description


def flag(name: str) -> str:
    return "--" + name.replace("_", "-")


@dataclass(frozen=True)
class CommandSpec:
    """A command as ``cli/app.py`` declares it: its name, its config, the fields it takes as arguments, the flags
    spelt otherwise than from their field (``-o``), its help, and the group it belongs to (``review``; "": none)."""

    name: str
    model: type[Any]
    arguments: Sequence[Arg] = ()
    names: Mapping[str, Sequence[str]] = field(default_factory=dict)
    help: str = ""
    group: str = ""

    @property
    def full_name(self) -> str:
        return f"{self.group} {self.name}" if self.group else self.name


def config_command(
    app: typer.Typer,
    spec: CommandSpec,
    action: Callable[[Any], None],
    run: Callable[[Callable[[], Any], str], Any],
) -> None:
    """Add ``spec``'s command to ``app`` (for a grouped one, its group's sub-app): its parameters from the config's
    fields, ``action(config)`` its body; ``run`` turns what fails in building the config into one line."""
    model, name = spec.model, spec.name

    def command(**values: Any) -> None:
        stray = [a for a in values.pop("context").args if not a.startswith("-")]
        if stray:
            run(lambda: _refuse_stray(stray, model), name)
        config_file = values.pop("config", None)
        flags = {k: (None if isinstance(v, list) and not v else v) for k, v in values.items()}
        action(run(lambda: _checked(build_config(model, flags, config_file)), name))

    COMMANDS[spec.full_name] = model
    command.__signature__ = inspect.Signature(_parameters(spec))  # type: ignore[attr-defined]
    command.__name__ = name.replace("-", "_")
    command.__doc__ = spec.help
    app.command(name, context_settings={"allow_extra_args": True})(command)


def _parameters(spec: CommandSpec) -> list[inspect.Parameter]:
    """The command's arguments, then an option per other field of its config, then ``--config``."""
    fields = spec.model.model_fields
    taken = {a.field for a in spec.arguments}
    params = [_argument(fields[a.field], a) for a in spec.arguments]
    params += [
        _option(field_name, fields[field_name], spec.names.get(field_name))
        for field_name in _ordered(spec.model)
        if field_name not in taken
    ]
    params.append(
        inspect.Parameter(
            "config",
            inspect.Parameter.KEYWORD_ONLY,
            default=None,
            annotation=Annotated[Path | None, typer.Option("--config", help=CONFIG_FILE_HELP, dir_okay=False)],
        )
    )
    # Arguments beyond the command's are taken (not shown in its usage) only to say in one line what such a
    # stray argument is for: `eic download t.csv images/`.
    params.append(inspect.Parameter("context", inspect.Parameter.KEYWORD_ONLY, annotation=typer.Context))
    return params


def _checked(config: Any) -> Any:
    config.check_inputs()
    return config


def _refuse_stray(stray: list[str], model: type[Any]) -> None:
    """One line for arguments a command does not take: where a path given so most likely belongs."""
    if "output_dir" in model.model_fields:
        hint = f": to write into {stray[0]}, pass `output_dir` {stray[0]}"
    elif "output" in model.model_fields:
        hint = f": to write {stray[0]}, pass `output` {stray[0]}"
    else:
        hint = ""
    said = " ".join(stray)
    raise ConfigError(f"{said}: {'one argument' if len(stray) == 1 else 'arguments'} too many{hint}")


def _ordered(model: type[Any]) -> list[str]:
    """The command's own settings first, in the order its config declares them; then those it shares with other
    commands (the shared groups: API, runtime, fetching, shards); ``quiet`` last."""
    own = [name for name in getattr(model, "__annotations__", {}) if name in model.model_fields]
    rest = [name for name in model.model_fields if name not in own and name != "quiet"]
    return own + rest + (["quiet"] if "quiet" in model.model_fields else [])


def _argument(field: FieldInfo, arg: Arg) -> inspect.Parameter:
    kind, many = _cli_type(field.annotation)
    required = field.is_required()
    annotation = list[kind] | None if many else (kind if required else kind | None)  # type: ignore[valid-type]
    info = typer.Argument(
        help=arg.help or field.description, metavar=arg.metavar or arg.field.upper(), show_default=False
    )
    return inspect.Parameter(
        _identifier(arg.field),
        inspect.Parameter.KEYWORD_ONLY,
        default=inspect.Parameter.empty if required and not many else None,
        annotation=Annotated[annotation, info],
    )


def _option(name: str, field: FieldInfo, decls: Sequence[str] | None) -> inspect.Parameter:
    kind, many = _cli_type(field.annotation)
    if decls is None:
        decls = (f"{flag(name)}/--no-{name.replace('_', '-')}",) if kind is bool else (flag(name),)
    annotation = list[kind] | None if many else kind | None  # type: ignore[valid-type]
    # A required setting is a required option (no default), marked so in --help; a --config file cannot stand in,
    # unless the config says it may (FROM_FILE_TOO): then building the config says what is missing.
    required = field.is_required()
    elsewhere = required and field.json_schema_extra == FROM_FILE_TOO
    described = f"{field.description} Required: here, in a --config file or as {ENV_PREFIX}{name.upper()}."
    info = typer.Option(
        *decls,
        help=described if elsewhere else field.description,
        show_default=False if required else _shown_default(field),
    )
    return inspect.Parameter(
        _identifier(name),
        inspect.Parameter.KEYWORD_ONLY,
        default=inspect.Parameter.empty if required and not elsewhere else None,
        annotation=Annotated[annotation, info],
    )


def _identifier(name: str) -> str:
    return name if name.isidentifier() else name.replace("-", "_")


def _cli_type(annotation: Any) -> tuple[type, bool]:
    """What the command line reads for a field's type: a bool, an int, a float, a path or text; and whether the
    flag may be repeated (a list). Everything else (a literal, a secret, a mapping written ``A=b,C=d``) is text
    that the config's validators check."""
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        options = [a for a in typing.get_args(annotation) if a is not type(None)]
        return _cli_type(options[0])
    if origin is list:
        inner, _ = _cli_type(typing.get_args(annotation)[0])
        return inner, True
    if annotation in (bool, int, float, Path):
        return annotation, False
    if annotation is SecretStr or origin in (dict, typing.Literal) or annotation is str:
        return str, False
    return str, False


def _shown_default(field: FieldInfo) -> str | bool:
    default = field.get_default(call_default_factory=True)
    if default is None or default == {} or default == []:
        return False
    if isinstance(default, SecretStr):
        return "the public demo key"
    if isinstance(default, list):
        return " ".join(map(str, default))
    return str(default)
