"""eic demo runs every stage offline against the sandbox."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from europeana_imgcls.cli.app import app


@pytest.mark.slow(seconds=10)
def test_demo_runs_the_whole_pipeline_offline(tmp_path: Path) -> None:
    out = tmp_path / "demo"
    # The tests' tiny net: what is tested is that every stage runs and hands on to the next, not the model.
    smallest = ["--arch", "tiny", "--epochs", "2", "--input-size", "32", "--device", "cpu"]
    result = CliRunner().invoke(app, ["demo", "--output-dir", str(out), *smallest])
    assert result.exit_code == 0, result.output + result.stderr
    for stage in ("harvest", "subtract", "download", "train", "evaluate", "predict", "enrich", "publish", "report"):
        assert stage in result.stdout
    assert "the whole pipeline ran offline" in result.stdout
    assert (out / "images" / "failures.csv").read_text().count("\n") > 1  # the bad answers were met
    classes = {p.name for p in (out / "images").iterdir() if p.is_dir() and not p.name.startswith(".")}
    assert classes == {"map", "painting", "photograph", "specimen"}
    assert json.loads((out / "run" / "summary.json").read_text())["splits"] == 3
    assert "accuracy" in json.loads((out / "evaluation" / "metrics.json").read_text())
    assert (out / "predictions.csv").read_text().count("\n") == 6  # header, one per class, one URL
    assert len(list((out / "heatmaps").glob("*.jpg"))) == 5
    page = json.loads((out / "annotations.jsonld").read_text())
    assert page["type"] == "AnnotationPage" and page["items"]  # the body of Europeana's batch upload
    assert f"{len(page['items'])} annotations sent to the sandbox's Annotations API" in " ".join(result.stdout.split())
    assert (out / "run" / "MODEL_CARD.md").is_file() and (out / "review.labelling.xml").is_file()
    page = (out / "report.html").read_text(encoding="utf-8")  # the run's page, with its evaluation
    assert 'id="confusion-evaluation"' in page and 'id="calibration"' in page
    assert str(out / "report.html") in "".join(result.stdout.split())  # the console wraps a long path anywhere
    again = CliRunner().invoke(app, ["demo", "--output-dir", str(out)])
    assert again.exit_code == 1 and "already exists: choose another --output-dir" in again.stderr


@pytest.mark.parametrize(
    ("flags", "said"),
    [
        (["--arch", "resnet_nope"], "unknown arch 'resnet_nope'"),
        (["--weights", "nope.pt"], "nope.pt"),
        # offline (the tests reach 127.0.0.1 alone): ImageNet's weights cannot be fetched, said before the harvest
        pytest.param(
            ["--arch", "resnet18", "--weights", "imagenet"], "ImageNet weights", marks=pytest.mark.slow(seconds=1)
        ),
    ],
)
def test_a_demo_that_cannot_train_stops_before_it_writes_anything(tmp_path: Path, flags: list[str], said: str) -> None:
    """`eic demo --arch resnet_nope` harvested and downloaded for seconds, then failed, and left a folder that made
    every later demo there refuse to start."""
    out = tmp_path / "demo"
    empty_cache = {"TORCH_HOME": str(tmp_path / "torch")}  # whatever this machine has fetched before
    result = CliRunner().invoke(app, ["demo", "-o", str(out), *flags], env=empty_cache)
    lines = result.stderr.strip().splitlines()
    assert result.exit_code != 0 and len(lines) == 1 and said in lines[0], result.output
    assert not out.exists()


def test_an_interrupted_demo_says_how_to_run_it_again(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Ctrl-C said "run it again", and running it again was refused (the folder exists, and the demo has no
    --resume): the line now says what to do."""
    from europeana_imgcls.cli import demo

    def interrupted(*args: object, **kwargs: object) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(demo, "harvest", interrupted)
    out = tmp_path / "demo"
    result = CliRunner().invoke(app, ["demo", "-o", str(out)])
    assert result.exit_code == 130
    assert str(out) in result.stderr and "another --output-dir" in result.stderr, result.stderr
