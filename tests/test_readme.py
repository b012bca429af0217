"""The README's walkthrough runs as written: every command of it, parsed from README.md, against the sandbox.

Only what the README itself says to change is changed: the sandbox's port (the test's own, free one), the weights
on the line that says what to use offline, and MODEL_ID, which the README says to read from the run's model card.
A line the test cannot run as a newcomer's shell would (anything but an eic command, an export or the sandbox) fails
the test, so the walkthrough cannot drift from what runs."""

from __future__ import annotations

import json
import re
import shlex
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

from europeana_imgcls.cli.app import app
from europeana_imgcls.core.config import SandboxConfig, build_config
from europeana_imgcls.europeana.sandbox import Sandbox

README = Path(__file__).resolve().parents[1] / "README.md"
SECTION = "## From Europeana to a classifier"
PORT = "8642"  # the sandbox's port as the README writes it
OFFLINE_WEIGHTS = "offline (the sandbox): --weights none"  # the README's words where it says to swap the weights
MODEL_ID = "MODEL_ID"  # the README's placeholder: "model_id in the run's MODEL_CARD.md"


@dataclass
class Step:
    """One command of the walkthrough, and what its comments say (a comment line goes with the command above)."""

    line: str
    comments: list[str] = field(default_factory=list)

    @property
    def words(self) -> list[str]:
        return shlex.split(self.line, comments=True)

    @property
    def said(self) -> str:
        return " ".join(self.comments)


def walkthrough(readme: Path = README) -> list[Step]:
    """The commands of the first bash block under the section's heading, in order."""
    text = readme.read_text(encoding="utf-8")
    section = text[text.index(SECTION) :]
    block = re.search(r"```bash\n(.*?)\n```", section.split("\n## ", 1)[0], flags=re.S)
    assert block, f"no bash block under {SECTION!r} in {readme}"
    steps: list[Step] = []
    for raw in block.group(1).splitlines():
        line = raw.strip()
        if line.startswith("#") and raw.startswith(" ") and steps:  # an indented comment goes on about the line above
            steps[-1].comments.append(line.lstrip("# "))
        elif line and not line.startswith("#"):
            code, _, comment = line.partition(" #")
            steps.append(Step(code.strip(), [comment.strip()] if comment else []))
    return steps


def _sandbox(words: list[str]) -> SandboxConfig:
    """The sandbox's settings as eic sandbox reads the README's flags; on a free port."""
    command = typer.main.get_command(app).commands["sandbox"]  # type: ignore[attr-defined]
    params = command.make_context("sandbox", [w for w in words[2:] if w != "&"]).params
    flags = {k: v for k, v in params.items() if k in SandboxConfig.model_fields}
    return build_config(SandboxConfig, {**flags, "port": 0}, env={})


def _as_offline(step: Step, work: Path) -> list[str]:
    """The step's words, changed only where the README says to."""
    words = step.words
    if OFFLINE_WEIGHTS in step.said:
        words = ["none" if w == "imagenet" and words[i - 1] == "--weights" else w for i, w in enumerate(words)]
    if MODEL_ID in words:
        assert "model_id in the run's MODEL_CARD.md" in step.said
        card = (work / "run" / "MODEL_CARD.md").read_text(encoding="utf-8")
        model_id = re.search(r"\bmodel_id:\s*[\"']?([0-9a-f]{16})", card)
        assert model_id, "the run's model card names no model_id"
        words = [model_id.group(1) if w == MODEL_ID else w for w in words]
    return words


def test_the_walkthrough_parses_into_commands_a_test_can_run() -> None:
    steps = walkthrough()
    kinds = [s.words[0] for s in steps]
    assert set(kinds) == {"eic", "export"}, "the walkthrough holds a line that is neither an eic command nor export"
    assert [s for s in steps if s.words[-1] == "&"] == [steps[0]] and steps[0].words[:2] == ["eic", "sandbox"]
    assert any(OFFLINE_WEIGHTS in s.said for s in steps)


@pytest.mark.slow(seconds=45)
def test_the_readme_walkthrough_runs_as_written(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    steps = walkthrough()
    monkeypatch.chdir(tmp_path)
    with Sandbox(_sandbox(steps[0].words)) as sandbox:
        port = sandbox.base_url.rsplit(":", 1)[1]
        runner = CliRunner()
        for step in steps[1:]:
            words = _as_offline(step, tmp_path)
            if words[0] == "export":
                for pair in words[1:]:
                    name, value = pair.split("=", 1)
                    monkeypatch.setenv(name, value.replace(f"127.0.0.1:{PORT}", f"127.0.0.1:{port}"))
                continue
            result = runner.invoke(app, words[1:])
            assert result.exit_code == 0, f"{step.line}\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
        published = len(sandbox.annotations.live())
    assert published == 0  # published, then withdrawn
    assert len(list((tmp_path / "run").glob("split_*/model.pt"))) == 3
    assert json.loads((tmp_path / "run" / "onnx" / "model.json").read_text())
    assert (tmp_path / "enrichments.jsonld").stat().st_size and (tmp_path / "enrichments_onnx.jsonld").is_file()
