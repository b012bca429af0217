"""The docs cannot drift: reference pages match the code, every option is explained, README commands hold."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import typer.main

from europeana_imgcls.cli import reference
from europeana_imgcls.cli.app import app

ROOT = Path(__file__).resolve().parents[1]
PAGES = {
    "harvest": "harvest.md",
    "subtract": "harvest.md",
    "stats": "harvest.md",
    "sandbox": "harvest.md",
    "download": "download.md",
    "train": "train.md",
    "evaluate": "evaluate.md",
    "predict": "evaluate.md",
    "demo": "demo.md",
    "enrich": "enrich.md",
    "calibrate": "enrich.md",
    "review import": "enrich.md",
    "review apply": "review.md",
    "embed": "embed.md",
    "audit": "audit.md",
    "publish": "publish.md",
    "withdraw": "publish.md",
    "export": "deploy.md",
    "report": "report.md",
}


def test_reference_pages_are_current() -> None:
    assert reference.main([str(ROOT / "docs" / "reference"), "--check"]) == 0, (
        "run: python -m europeana_imgcls.cli.reference docs/reference"
    )


@pytest.mark.parametrize("command", sorted(PAGES))
def test_every_option_is_explained_on_its_page(command: str) -> None:
    cli = typer.main.get_command(app)
    for word in command.split():  # "review import" is a command of the group "review"
        cli = cli.commands[word]
    page = (ROOT / "docs" / PAGES[command]).read_text(encoding="utf-8")
    missing = [
        p.opts[0]
        for p in cli.params
        if p.param_type_name == "option" and p.opts[0] != "--config" and p.opts[0] not in page
    ]
    assert not missing, f"docs/{PAGES[command]} does not mention {missing}"


def test_readme_has_the_two_commands_and_ci_runs_the_test_one() -> None:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    blocks = re.findall(r"```bash\n(.*?)\n```", readme, flags=re.S)
    demo = next(b for b in blocks if "eic demo" in b)
    tests = next(b for b in blocks if "pytest" in b)
    assert "pip install" in demo and "pip install" in tests
    test_command = re.search(r"python -m pytest[^\n&|;]*", tests).group(0).strip()
    assert test_command in (ROOT / ".ci" / "run").read_text(encoding="utf-8")


def test_the_setup_says_what_it_costs_beside_the_commands_and_ci_measures_it() -> None:
    """A newcomer learns before running it that the first command installs gigabytes, and how to avoid them; the
    numbers are the ones .ci/run prints on a fresh machine."""
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    setup = readme.split("## Set up on a fresh machine", 1)[1].split("\n## ", 1)[0]
    assert re.search(r"takes\s+[\d.]+ GB", setup) and re.search(r"took [\d.]+ s on a fresh 2-core machine", setup)
    assert "--index-url https://download.pytorch.org/whl/cpu" in setup  # the CPU-only build, beside it
    ci = (ROOT / ".ci" / "run").read_text(encoding="utf-8")
    assert "installed in" in ci and "on disk" in ci


@pytest.mark.slow
def test_the_api_page_example_runs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    page = (ROOT / "docs" / "api.md").read_text(encoding="utf-8")
    example = re.findall(r"## A worked example.*?```python\n(.*?)\n```", page, flags=re.S)[0]
    monkeypatch.chdir(tmp_path)
    exec(compile(example, "docs/api.md", "exec"), {})  # noqa: S102 - the page's own code
    said = capsys.readouterr().out
    assert "records harvested" in said and "images saved" in said and "accuracy" in said
    assert "invalid setting 'folds'" in said
    assert (tmp_path / "api-example" / "predictions.csv").is_file()
