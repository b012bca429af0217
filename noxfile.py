"""Task runner: `nox -s tests`, `nox -s lint`, `nox -s docs`, `nox -s demo`.

Sessions reuse their virtualenv (torch is 6 GB; reinstalling it every run wastes minutes).
"""

from __future__ import annotations

import nox

nox.options.reuse_existing_virtualenvs = True
nox.options.sessions = ["lint", "tests"]

TORCH = ["torch==2.14.1", "torchvision==0.29.1"]


def install_project(session: nox.Session, extras: str = "dev,lite,audit,tensorboard") -> None:
    session.install(*TORCH)
    session.install("-e", f".[{extras}]")


@nox.session
def tests(session: nox.Session) -> None:
    install_project(session)
    session.run("python", "-m", "pytest", *(session.posargs or ["-n", "auto"]))


@nox.session
def lint(session: nox.Session) -> None:
    session.install("ruff")
    session.run("ruff", "check", "europeana_imgcls", "tests", "benchmarks", "noxfile.py")


@nox.session
def docs(session: nox.Session) -> None:
    """Check that the generated reference pages match the code (`-- --write` regenerates them)."""
    install_project(session, extras="dev")
    if "--write" in session.posargs:
        session.run("python", "-m", "europeana_imgcls.cli.reference", "docs/reference")
    session.run("python", "-m", "europeana_imgcls.cli.reference", "docs/reference", "--check")
    session.run("python", "-m", "pytest", "tests/test_docs.py")


@nox.session
def demo(session: nox.Session) -> None:
    install_project(session, extras="dev")
    output = session.posargs[0] if session.posargs else f"{session.create_tmp()}/eic-demo"
    session.run("rm", "-rf", output, external=True)
    session.run("eic", "demo", "--output-dir", output)
