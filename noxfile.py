"""Task runner: `nox -s tests`, `nox -s lint`, `nox -s docs`.

Sessions reuse their virtualenv (torch is 6 GB; reinstalling it every run wastes minutes).
"""

from __future__ import annotations

import nox

nox.options.reuse_existing_virtualenvs = True
nox.options.sessions = ["lint", "tests"]

TORCH = ["torch==2.14.1", "torchvision==0.29.1"]


def install_project(session: nox.Session, extras: str = "dev,lite") -> None:
    session.install(*TORCH)
    session.install("-e", f".[{extras}]")


@nox.session
def tests(session: nox.Session) -> None:
    install_project(session)
    session.run("python", "-m", "pytest", *session.posargs)


@nox.session
def lint(session: nox.Session) -> None:
    session.install("ruff")
    session.run("ruff", "check", "europeana_imgcls", "tests", "benchmarks", "noxfile.py")
