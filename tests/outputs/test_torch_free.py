"""Predict and enrich with an exported model (runtime onnx, openvino) never import torch: over a second of every
start, and a deploy machine need not install it. Their labels are PyTorch's, their output what it was when they ran
with torch loaded."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from europeana_imgcls.core.config import EnrichConfig, ExportConfig, PredictConfig
from europeana_imgcls.datasets.batches import array_batches
from europeana_imgcls.datasets.folders import ImageDataset
from europeana_imgcls.datasets.imageset import UNREADABLE, ImageSet
from europeana_imgcls.datasets.tasks import task_for, unlabelled
from europeana_imgcls.europeana.annotations import CONFIDENCE
from europeana_imgcls.modelling.processes import cores
from europeana_imgcls.outputs.enrichment import enrich
from europeana_imgcls.outputs.export import export
from europeana_imgcls.outputs.prediction import predict

from ..support import VOCAB, make_folders, rows

ROOT = Path(__file__).resolve().parents[2]
HEAVY = ("torch", "torchvision", "pytorch_grad_cam")
# A process in which torch, torchvision and grad-cam cannot be imported (as on a machine without them), that runs
# what it is given and says which of them it holds.
NO_TORCH = f"""
import runpy, sys
for name in {HEAVY!r}:
    sys.modules[name] = None  # `import torch` raises ImportError; importlib.util.find_spec answers None
{{body}}
print(sorted(m for m, module in sys.modules.items() if m.split(".")[0] in {HEAVY!r} and module is not None))
"""


def _without_torch(body: str) -> subprocess.CompletedProcess[str]:
    # EIC_FULL_EXIT: eic's end raises SystemExit as Python's exit does, so the script goes on to say what it holds.
    env = {**os.environ, "PYTHONPATH": str(ROOT), "EIC_FULL_EXIT": "1"}
    script = NO_TORCH.format(body=body)
    return subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=300)


def _eic(*args: str) -> subprocess.CompletedProcess[str]:
    """``eic ARGS`` in a process that cannot import torch."""
    run = f"sys.argv = ['eic', *{list(args)!r}]\ntry:\n    runpy.run_module('europeana_imgcls', run_name='__main__')\n"
    return _without_torch(run + "except SystemExit as end:\n    assert not end.code, end.code")


@pytest.mark.slow(seconds=2)  # eic processes without torch
def test_predict_and_enrich_import_no_torch() -> None:
    """What the commands import before any work (the command line, predict, enrich, the runtimes)."""
    done = _without_torch(
        "import europeana_imgcls.cli.app, europeana_imgcls.outputs.prediction, europeana_imgcls.outputs.enrichment\n"
        "import europeana_imgcls.outputs.runtimes, europeana_imgcls.outputs.onnx_runtime"
    )
    assert done.returncode == 0 and done.stdout.strip() == "[]", done.stdout + done.stderr[-3000:]


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
        done = _eic("predict", str(run), str(images), "-o", str(after), "--split", "all", "--runtime", runtime)
        assert done.returncode == 0 and done.stdout.strip().endswith("[]"), done.stdout + done.stderr[-3000:]
        assert after.read_bytes() == before.read_bytes()  # the same rows, the same bytes
        assert [r["prediction"] for r in rows(after)] == [r["prediction"] for r in rows(torch_out)]
        assert len(rows(after)) == 12
    vocab = tmp_path / "vocab.json"
    vocab.write_text(json.dumps(VOCAB))
    settings = dict(run=run, inputs=[str(images)], vocab=vocab, precision=0.5, runtime="onnx", quiet=True)
    enrich(EnrichConfig(output=tmp_path / "before" / "a.jsonld", **settings))  # type: ignore[arg-type]
    after = tmp_path / "after" / "a.jsonld"
    after.parent.mkdir()
    args = ["--vocab", str(vocab), "--precision", "0.5", "--runtime", "onnx", "-o", str(after)]
    done = _eic("enrich", str(run), str(images), *args)
    assert done.returncode == 0 and done.stdout.strip().endswith("[]"), done.stdout + done.stderr[-3000:]
    predicted = "a.predictions.jsonl"
    assert (after.parent / predicted).read_bytes() == (tmp_path / "before" / predicted).read_bytes()
    assert _said(after) == _said(tmp_path / "before" / "a.jsonld") and len(_said(after)) >= 4


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
