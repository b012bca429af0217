"""The package's shape holds: its layers, its torch-free half, its public API."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

import europeana_imgcls
from europeana_imgcls.europeana.sandbox import Sandbox

from .support import VOCAB, deploy_machine, sandbox_config

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow(seconds=2)  # a lint-imports process
def test_the_import_contracts_are_kept() -> None:
    """pyproject.toml's import-linter contracts: the layers, and no torch below the modelling half."""
    done = subprocess.run(
        [Path(sys.executable).with_name("lint-imports"), "--config", str(ROOT / "pyproject.toml")],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=300,
    )
    assert done.returncode == 0 and "0 broken" in done.stdout, done.stdout[-3000:]


@pytest.mark.slow  # a process that runs the light stages on the sandbox
def test_the_light_commands_never_load_torch(tmp_path: Path) -> None:
    """Importing the package and running harvest, subtract, stats and download loads no torch (seconds of
    start-up): they run where only what docs/deploy.md installs beside eic can be imported."""
    with Sandbox(sandbox_config(per_level=3)) as sb:
        script = f"""
import sys
from pathlib import Path
import europeana_imgcls as eic
out = Path({str(tmp_path)!r})
vocab = {json.dumps(VOCAB)}
eic.harvest(eic.HarvestConfig(api_url={sb.api_url!r}, vocab=vocab, n=3, output=out / "h.csv", quiet=True))
eic.harvest(eic.HarvestConfig(api_url={sb.api_url!r}, vocab=vocab, n=1, seed=1, output=out / "e.csv", quiet=True))
eic.subtract(eic.SubtractConfig(train=out / "h.csv", eval=out / "e.csv", output=out / "t.csv"))
eic.stats(eic.StatsConfig(table=out / "t.csv"))
eic.download(eic.DownloadConfig(table=out / "t.csv", output_dir=out / "img", max_side=32, quiet=True))
from europeana_imgcls.cli import app  # and the command line that runs them
heavy = ("torch", "torchvision", "sklearn", "matplotlib")
print(sorted(m for m, v in sys.modules.items() if v and m.split(".")[0] in heavy)[:5])
"""
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        done = subprocess.run(
            [sys.executable, "-c", deploy_machine(script)], capture_output=True, text=True, env=env, timeout=300
        )
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.strip() == "[]"
    assert any((tmp_path / "img").rglob("*.jpg"))


@pytest.mark.slow  # a process that imports torch
def test_the_torch_stages_load_heavy_packages_only_to_use_them() -> None:
    """Predict and enrich import neither scikit-learn nor scipy (nor the pandas scikit-learn loads; ~1 s of CPU):
    they never make folds or compute scores, so each of their processes (a torchrun rank, a shard) starts that much
    sooner. Training and evaluation make their folds and per-class scores without scikit-learn (a training process
    started ~1 s sooner; it is kept for the folds that keep groups together and the multi-label scores). Training,
    prediction and evaluation import neither torchvision (~1.5 s: its detection ops load torch._dynamo) nor the
    grad-cam package (matplotlib's pyplot) until a heatmap (or a torchvision model) is asked. One process asks all
    of it in turn (each such process costs ~3 s of CPU)."""
    script = """
import sys
import numpy as np
import europeana_imgcls.outputs.prediction, europeana_imgcls.outputs.enrichment
print(sorted({m.split(".")[0] for m in sys.modules} & {"sklearn", "scipy", "pandas"}))
import europeana_imgcls.modelling.training, europeana_imgcls.outputs.evaluation
from europeana_imgcls.datasets.class_folders import make_splits
from europeana_imgcls.datasets.metrics import per_class_scores
make_splits(np.arange(30) % 3, 3, 0)
per_class_scores(np.eye(3, dtype=bool), np.eye(3, dtype=bool))
print(sorted({m.split(".")[0] for m in sys.modules} & {"sklearn", "pandas"}))
from europeana_imgcls.modelling.explain import cam_class
print(sorted(m for m in ("torchvision", "pytorch_grad_cam") if m in sys.modules))
cam_class("gradcam")
print(sorted(m for m in ("torchvision", "pytorch_grad_cam") if m in sys.modules))
"""
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    said = done.stdout.split("\n")[:4]
    assert said == ["[]", "[]", "[]", "['pytorch_grad_cam', 'torchvision']"], done.stdout + done.stderr[-3000:]


def test_the_public_api_is_what_docs_api_md_promises() -> None:
    for name in europeana_imgcls.__all__:
        assert getattr(europeana_imgcls, name) is not None, name
    # Every stage's settings are public (as httpx's tests hold its exported members), and docs/api.md names
    # every stage function.
    from europeana_imgcls.core import config

    stages = {n for n, v in vars(config).items() if n.endswith("Config") and getattr(v, "stage", None)}
    assert stages - {"DemoConfig", "SandboxConfig"} <= set(europeana_imgcls.__all__)
    page = (ROOT / "docs" / "api.md").read_text(encoding="utf-8")
    functions = [n for n in europeana_imgcls.__all__ if n[0].islower() and n != "build_config"]
    assert [n for n in functions if f"`{n}`" not in page] == []


def test_every_package_the_code_imports_is_declared() -> None:
    """A fresh `pip install` brings what the code imports (typer 0.29 no longer brings click, for one)."""
    import ast
    import importlib.metadata
    import re
    import tomllib

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    wanted = [*project["dependencies"], *(d for extra in project["optional-dependencies"].values() for d in extra)]
    declared = {re.split(r"[<>=!~\[ ;]", d, maxsplit=1)[0].lower().replace("_", "-") for d in wanted}
    distributions = importlib.metadata.packages_distributions()
    stdlib = sys.stdlib_module_names
    undeclared = {}
    for path in (ROOT / "europeana_imgcls").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            names = (
                [a.name for a in node.names]
                if isinstance(node, ast.Import)
                else [node.module]
                if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module
                else []
            )
            for name in names:
                top = name.split(".")[0]
                if top in stdlib or top == "europeana_imgcls":
                    continue
                dists = {d.lower().replace("_", "-") for d in distributions.get(top, [top])}
                if not dists & declared:
                    undeclared[top] = path.name
    assert not undeclared, undeclared


def test_the_library_exports_what_it_says_both_ways() -> None:
    public = {name for name in dir(europeana_imgcls) if not name.startswith("_")} | set(europeana_imgcls._LAZY)
    modules = {name for name in public if isinstance(getattr(europeana_imgcls, name, None), type(europeana_imgcls))}
    assert set(europeana_imgcls.__all__) == public - modules - {"annotations"}


def _constants_and_attributes(path: Path) -> tuple[set[str], set[str]]:
    """The string constants (docstrings left out) and the attribute names a module's code uses."""
    import ast

    tree = ast.parse(path.read_text(encoding="utf-8"))
    docstrings = {
        id(node.body[0].value)
        for node in ast.walk(tree)
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef))
        and node.body
        and isinstance(node.body[0], ast.Expr)
        and isinstance(node.body[0].value, ast.Constant)
    }
    strings = {
        n.value
        for n in ast.walk(tree)
        if isinstance(n, ast.Constant) and isinstance(n.value, str) and id(n) not in docstrings
    }
    return strings, {n.attr for n in ast.walk(tree) if isinstance(n, ast.Attribute)}


def test_outputs_ask_the_task_and_the_run_folder_never_a_mode_or_a_file_name() -> None:
    """The seams of issue 32, kept: what an output does for a task it asks the Task (never its mode's string or
    ``multilabel``), and a run's file names are written in one module (core/run_names.py)."""
    package = ROOT / "europeana_imgcls"
    asking = [*sorted((package / "outputs").glob("*.py")), package / "modelling" / "embedding.py"]
    for path in asking:
        strings, attributes = _constants_and_attributes(path)
        assert "multilabel" not in attributes, f"{path.name} asks a task whether it is multi-label"
        assert not strings & {"single-label", "multi-label"}, f"{path.name} compares a mode's name"
    for path in sorted(package.rglob("*.py")):
        if path.name != "run_names.py":
            strings, _ = _constants_and_attributes(path)
            named = {s for s in strings if s == "model.pt" or s.startswith("split_")}
            assert not named, f"{path.relative_to(package)} spells a run's file names: {named}"
