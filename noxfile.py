"""Task runner: `nox -s tests`, `nox -s lint`, `nox -s typecheck`, `nox -s docs`, `nox -s demo`, `nox -s slowest`.

The fast lane: `nox -s tests -- -n auto -m "not slow"` (about 80 s of CPU, 45 s on 2 free cores); the full suite,
`nox -s tests` (about 300 s of CPU, at least 150 s on 2 cores). `nox -s slowest` shows where the fast lane's time goes
(`-- --full`: the full suite's).

Sessions reuse their virtualenv (torch is 6 GB; reinstalling it every run wastes minutes).
"""

from __future__ import annotations

import nox

nox.options.reuse_existing_virtualenvs = True
nox.options.sessions = ["lint", "typecheck", "tests"]

TORCH = ["torch==2.14.1", "torchvision==0.29.1"]


def install_project(session: nox.Session, extras: str = "dev,lite,audit,tensorboard,onnx,timm") -> None:
    session.install(*TORCH)
    session.install("-e", f".[{extras}]")


@nox.session
def tests(session: nox.Session) -> None:
    install_project(session)
    session.run("python", "-m", "pytest", *(session.posargs or ["-n", "auto"]))


@nox.session
def slowest(session: nox.Session) -> None:
    """The slowest tests and files of the fast lane, and the lane's wall time (benchmarks/slowest_tests.py)."""
    install_project(session)
    session.run("python", "benchmarks/slowest_tests.py", *session.posargs)


SOURCES = ["europeana_imgcls", "tests", "benchmarks", "noxfile.py"]


@nox.session
def lint(session: nox.Session) -> None:
    """ruff's rules and format, and the import contracts (layers; no torch in the light half)."""
    session.install("ruff", "import-linter")
    session.run("ruff", "check", *SOURCES)
    session.run("ruff", "format", "--check", *SOURCES)
    session.install("-e", ".", "--no-deps")
    session.run("lint-imports")


@nox.session
def typecheck(session: nox.Session) -> None:
    """mypy over the package, with pydantic's plugin (settings in pyproject.toml)."""
    install_project(session, extras="dev")
    session.run("mypy")


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
