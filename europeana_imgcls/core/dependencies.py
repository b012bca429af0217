"""Which of eic's declared requirements a module it could not import belongs to, and the pip line for what is missing.

A machine may hold eic without some of its dependencies on purpose: one that only labels with an export installs eic
with ``--no-deps`` and no PyTorch (``docs/deploy.md``). A command that needs what is not there then says so in one
line, with the pip command that installs every missing requirement of that kind at once (PyTorch seldom comes
without torchvision, scikit-learn and the rest), instead of a traceback per package.
"""

from __future__ import annotations

import importlib.util
import re
import shlex
from dataclasses import dataclass
from functools import cache
from importlib import metadata

DISTRIBUTION = "europeana-imgcls"
# The requirements whose module is not named as they are (the rest: the name, "-" as "_").
MODULES = {"scikit-learn": "sklearn", "pillow": "PIL", "grad-cam": "pytorch_grad_cam"}
_NAME = re.compile(r"\s*([A-Za-z0-9][A-Za-z0-9._-]*)\s*([^;]*)")
_EXTRA = re.compile(r"""extra\s*==\s*["']([^"']+)["']""")


@dataclass(frozen=True)
class Requirement:
    """One line of eic's declared requirements: a distribution, its version range, and its extra ("" for none)."""

    name: str
    specifier: str
    extra: str

    @property
    def line(self) -> str:
        return f"{self.name}{self.specifier}"

    @property
    def module(self) -> str:
        """The top-level module it provides."""
        name = canonical(self.name)
        return MODULES.get(name, name.replace("-", "_"))

    def importable(self) -> bool:
        return not missing_package(self.module)


def canonical(name: str) -> str:
    """A distribution's name as pip compares names (PEP 503)."""
    return re.sub(r"[-_.]+", "-", name).lower()


@cache
def declared() -> tuple[Requirement, ...]:
    """eic's requirements as its installed metadata states them (none when eic runs from a source tree)."""
    try:
        lines = metadata.requires(DISTRIBUTION) or []
    except metadata.PackageNotFoundError:
        return ()
    requirements = []
    for line in lines:
        name, marker = line.split(";", 1) if ";" in line else (line, "")
        match, extra = _NAME.match(name), _EXTRA.search(marker)
        if match and not _EXTRA.sub("", marker).strip():  # a platform's or a Python's own: not everyone's to install
            requirements.append(Requirement(match[1], match[2].strip(), extra[1] if extra else ""))
    return tuple(requirements)


def missing_package(module: str) -> bool:
    """Whether the top-level package of ``module`` cannot be imported (not: a part of it missing)."""
    top = module.split(".")[0]
    try:
        return importlib.util.find_spec(top) is None
    except ValueError:  # loaded, without a spec: there
        return False


def missing_module(module: str, command: str) -> str:
    """The line for ``eic COMMAND`` stopped by ``import MODULE``: what is missing, and how to install it."""
    top = module.split(".")[0]
    requirement = next((r for r in declared() if r.module == top and r.extra != "dev"), None)
    said = f"eic {command} needs {top}, which is not installed here"
    if requirement is None:  # not one of ours: a dependency's own, or eic run from a source tree
        return f"{said}: install it, or install eic with its dependencies (pip install {DISTRIBUTION})"
    kin = [r for r in declared() if r.extra == requirement.extra and r != requirement and not r.importable()]
    lines = [r.line for r in kin]
    command_line = " ".join(shlex.quote(line) for line in [requirement.line, *lines])
    if requirement.extra:
        return f"{said} (eic's extra [{requirement.extra}]): pip install {command_line}"
    if kin:
        return f"{said}: pip install {command_line} (the {len(kin) + 1} of eic's requirements missing here)"
    return f"{said}: pip install {command_line}"
