"""Predict and enrich with an exported model (runtime onnx, openvino) never import torch: over a second of every
start, and a machine that only labels need not install it. They run where only what docs/deploy.md installs can be
imported, their labels PyTorch's and their output what it was when they ran with everything installed; a command
that needs more says what, in one line."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from europeana_imgcls.core.config import EnrichConfig, ExportConfig, PredictConfig
from europeana_imgcls.core.dependencies import canonical, declared
from europeana_imgcls.datasets.batches import array_batches
from europeana_imgcls.datasets.folders import ImageDataset
from europeana_imgcls.datasets.imageset import UNREADABLE, ImageSet
from europeana_imgcls.datasets.tasks import task_for, unlabelled
from europeana_imgcls.europeana.annotations import CONFIDENCE
from europeana_imgcls.modelling.processes import cores
from europeana_imgcls.outputs.enrichment import enrich
from europeana_imgcls.outputs.export import export
from europeana_imgcls.outputs.prediction import predict

from ..support import ROOT, VOCAB, deploy_recipe, eic_on_a_deploy_machine, make_folders, on_a_deploy_machine, rows

HEAVY = ("torch", "torchvision", "pytorch_grad_cam", "sklearn", "scipy", "matplotlib")
# After the body: which of them the process holds (none can be imported there, so: whether it tried and went on).
HELD = f"print(sorted(m for m, module in sys.modules.items() if m.split('.')[0] in {HEAVY!r} and module is not None))"


def _on_a_deploy_machine(body: str, runtime: str | None = "onnx") -> subprocess.CompletedProcess[str]:
    return on_a_deploy_machine(f"{body}\n{HELD}", runtime)


def _eic(*args: str, runtime: str | None = "onnx", code: int = 0) -> subprocess.CompletedProcess[str]:
    """``eic ARGS`` on a machine that only labels with ``runtime``; it must end with exit code ``code``."""
    return eic_on_a_deploy_machine(*args, runtime=runtime, code=code, then=HELD)


def test_the_deploy_recipe_is_eics_own_requirements() -> None:
    """What docs/deploy.md installs beside eic: requirements eic declares (its dependencies, a runtime's extra), each
    with pyproject's version range, as eic's installed metadata states it too."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    extras = project["optional-dependencies"]
    recipe = deploy_recipe()
    assert set(recipe) == {None, "onnx", "openvino"}
    for runtime, lines in recipe.items():
        allowed = project["dependencies"] if runtime is None else extras[runtime]
        for line in lines:
            assert _spec(line) in {_spec(a.split("#")[0]) for a in allowed}, (runtime, line)
    installed = {_spec(r.line) for r in declared() if r.extra in ("", "onnx", "openvino")}
    assert {_spec(line) for lines in recipe.values() for line in lines} <= installed
    assert "onnxruntime" in {_spec(line)[0] for line in recipe["onnx"]}
    assert "openvino" in {_spec(line)[0] for line in recipe["openvino"]}


def _spec(line: str) -> tuple[str, frozenset[str]]:
    """A requirement's name as pip compares it, and its version clauses in any order."""
    from packaging.requirements import Requirement as Parsed

    parsed = Parsed(line.strip())
    return parsed.name.lower().replace("_", "-"), frozenset(str(s) for s in parsed.specifier)


def test_every_declared_requirement_knows_its_module() -> None:
    """The module a requirement provides, as an install says (which the missing-module line names it by)."""
    from importlib import metadata

    provided = metadata.packages_distributions()
    checked = 0
    for requirement in declared():
        try:
            metadata.distribution(requirement.name)
        except metadata.PackageNotFoundError:  # an extra this environment left out
            continue
        if requirement.extra != "dev":
            assert canonical(requirement.name) in {canonical(n) for n in provided[requirement.module]}, requirement
            checked += 1
    assert checked >= 15  # eic's own dependencies at least


@pytest.mark.slow(seconds=2)  # eic processes without torch
def test_predict_and_enrich_import_no_torch() -> None:
    """What the commands import before any work (the command line, predict, enrich, the runtimes)."""
    done = _on_a_deploy_machine(
        "import europeana_imgcls.cli.app, europeana_imgcls.outputs.prediction, europeana_imgcls.outputs.enrichment\n"
        "import europeana_imgcls.outputs.runtimes, europeana_imgcls.outputs.onnx_runtime"
    )
    assert done.returncode == 0 and done.stdout.strip() == "[]", done.stdout + done.stderr[-3000:]


@pytest.mark.slow(seconds=3)  # eic processes without torch
def test_a_command_that_needs_what_is_not_installed_says_what_in_one_line(tmp_path: Path) -> None:
    """Training on a machine that only labels: one line naming torch, and the pip command that installs it with the
    rest of eic's requirements missing there; no traceback, nothing written."""
    images = make_folders(tmp_path / "images", per_class=2, size=32)
    done = _eic("train", str(images), "-o", str(tmp_path / "run"), "--weights", "none", code=1)
    assert done.returncode == 0, done.stderr[-3000:]
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("eic: error: eic train needs torch, which is not installed"), lines
    wanted = [r.line for r in declared() if not r.extra and r.module in HEAVY]
    assert lines[0].split(": pip install ")[1].split(" (")[0].split() == [f"'{line}'" for line in wanted]
    assert not (tmp_path / "run").exists()
    done = _eic("embed", str(images), "-o", str(tmp_path / "emb.parquet"), runtime="openvino", code=1)
    assert done.returncode == 0 and done.stderr.startswith("eic: error: eic embed needs torch"), done.stderr[-3000:]
    assert len(done.stderr.strip().splitlines()) == 1 and not list(tmp_path.glob("emb*"))


def test_array_batches_keep_the_order_and_mark_what_cannot_be_read(tmp_path: Path) -> None:
    """What feeds an exported model: PyTorch's loader's batches in numpy, decoded ahead in threads or not."""
    folder = make_folders(tmp_path / "images", per_class=3, size=40)
    paths = sorted(folder.rglob("*.jpg"))
    (tmp_path / "broken.jpg").write_bytes(b"\xff\xd8\xff not a picture")
    paths.insert(4, tmp_path / "broken.jpg")
    single = unlabelled(paths, ["a", "b"])
    multi = ImageSet(paths, np.ones((len(paths), 2), dtype=np.int64), ["a", "b"], task_for("multi-label"))
    for images in (single, multi):
        sequential = list(array_batches(images, 32, 4, threads=0))
        for batches in (sequential, list(array_batches(images, 32, 4, threads=3))):
            assert [index.tolist() for _, _, index in batches] == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9]]
            pixels, targets, _ = batches[1]
            assert pixels.shape == (4, 3, 32, 32) and pixels.dtype == np.uint8
            assert not pixels[0].any() and pixels[1].any()  # the broken file: zeros, its target unreadable
            assert (targets[0] == UNREADABLE).all() and (targets[1] != UNREADABLE).all()
            assert not images.task.readable(targets).tolist()[0] and all(images.task.readable(targets)[1:])
            for (ours, _, _), (theirs, _, _) in zip(batches, sequential, strict=True):
                assert np.array_equal(ours, theirs)
        dataset = ImageDataset(images, 32)  # PyTorch's loader reads the same pixels
        assert all(np.array_equal(dataset[i][0].numpy(), sequential[i // 4][0][i % 4]) for i in range(len(paths)))


@pytest.mark.slow  # eic in processes of its own
def test_an_export_labels_without_torch_as_it_did_with_it(shared_trained_run: Path, tmp_path: Path) -> None:
    run = Path(shutil.copytree(shared_trained_run, tmp_path / "run"))
    export(ExportConfig(run=run, split="all", quiet=True))
    images = make_folders(tmp_path / "new", per_class=4, size=44)
    (images / "map" / "broken.jpg").write_bytes(b"\xff\xd8\xff cut short")  # a row of failures, as before
    torch_out = tmp_path / "torch.csv"
    predict(PredictConfig(run=run, inputs=[str(images)], output=torch_out, split="all", quiet=True))
    for runtime in ("onnx", "openvino"):
        before, after = tmp_path / f"{runtime}_before.csv", tmp_path / f"{runtime}_after.csv"
        predict(PredictConfig(run=run, inputs=[str(images)], output=before, split="all", runtime=runtime, quiet=True))
        done = _eic(
            "predict", str(run), str(images), "-o", str(after), "--split", "all", "--runtime", runtime, runtime=runtime
        )
        assert done.returncode == 0 and done.stdout.strip().endswith("[]"), done.stdout + done.stderr[-3000:]
        assert after.read_bytes() == before.read_bytes()  # the same rows, the same bytes
        assert [r["prediction"] for r in rows(after)] == [r["prediction"] for r in rows(torch_out)]
        assert len(rows(after)) == 12
    vocab = tmp_path / "vocab.json"
    vocab.write_text(json.dumps(VOCAB))
    for runtime in ("onnx", "openvino"):
        settings = dict(run=run, inputs=[str(images)], vocab=vocab, precision=0.5, runtime=runtime, quiet=True)
        before = tmp_path / f"{runtime}_before" / "a.jsonld"
        enrich(EnrichConfig(output=before, **settings))  # type: ignore[arg-type]
        after = tmp_path / f"{runtime}_after" / "a.jsonld"
        after.parent.mkdir()
        args = ["--vocab", str(vocab), "--precision", "0.5", "--runtime", runtime, "-o", str(after)]
        done = _eic("enrich", str(run), str(images), *args, runtime=runtime)
        assert done.returncode == 0 and done.stdout.strip().endswith("[]"), done.stdout + done.stderr[-3000:]
        predicted = "a.predictions.jsonl"
        assert (after.parent / predicted).read_bytes() == (before.parent / predicted).read_bytes()
        assert _said(after) == _said(before) and len(_said(after)) >= 4


def _said(annotations: Path) -> list[tuple[str, str, float]]:
    """What annotations state (not when they were made): the record, the class's concept, the confidence."""
    items = json.loads(annotations.read_text())["items"]
    return sorted((json.dumps(a["target"]), json.dumps(a["body"]), round(a[CONFIDENCE], 4)) for a in items)


def test_an_exported_model_finds_its_device_without_torch(monkeypatch: pytest.MonkeyPatch) -> None:
    """CUDA where it is named (or auto) and ONNX Runtime has it, on the GPU named or the torchrun rank's; else the
    CPU, and a `device` cuda that cannot be had is said."""
    from europeana_imgcls.outputs import onnx_runtime
    from europeana_imgcls.outputs.onnx_runtime import Device, device_of

    providers = ["CPUExecutionProvider"]
    monkeypatch.setattr(onnx_runtime, "onnxruntime", lambda: SimpleNamespace(get_available_providers=lambda: providers))
    warned: list[str] = []
    monkeypatch.setattr(onnx_runtime.log, "warning", lambda *said: warned.append(said[0] % said[1:]))
    assert [device_of(name) for name in ("auto", "cpu", "mps", "cuda:1")] == [Device("cpu")] * 4
    assert warned == [
        "`device` cuda:1: this ONNX Runtime has no CUDA (pip install onnxruntime-gpu): it runs on the CPU"
    ]
    providers.insert(0, "CUDAExecutionProvider")
    monkeypatch.setenv("LOCAL_RANK", "1")
    assert [device_of(name) for name in ("auto", "cuda", "cuda:0", "cpu")] == [
        Device("cuda", 1),
        Device("cuda", 1),
        Device("cuda", 0),
        Device("cpu"),
    ]


def test_the_cores_a_process_is_given_are_known_without_torch(monkeypatch: pytest.MonkeyPatch) -> None:
    """torch's count where torch is loaded (it follows torch.set_num_threads), else OMP_NUM_THREADS, else the CPUs
    this process may run on."""
    import torch

    assert cores() == torch.get_num_threads()
    monkeypatch.setitem(sys.modules, "torch", None)  # as in a process without it
    monkeypatch.setenv("OMP_NUM_THREADS", "3")
    assert cores() == 3
    monkeypatch.setenv("OMP_NUM_THREADS", "")
    assert cores() == len(os.sched_getaffinity(0))
