"""What the test modules share: plain helpers and constants (fixtures and hooks are conftest.py's).

Import them as ``from ..support import make_folders`` (``from .support import ...`` at the top of tests/)."""

from __future__ import annotations

import csv
import functools
import json
import os
import pickle
import re
import shlex
import subprocess
import sys
import tempfile
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler
from importlib import metadata
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import polars as pl
import pytest
from hypothesis import settings
from typer.testing import CliRunner, Result

from europeana_imgcls import DownloadConfig, TrainConfig
from europeana_imgcls.cli.app import app
from europeana_imgcls.core.config import PublishConfig, ReviewImportConfig, SandboxConfig
from europeana_imgcls.europeana.annotation_standin import SANDBOX_TOKEN
from europeana_imgcls.europeana.sandbox import LoopbackServer, Sandbox, SandboxRecord, draw_image
from europeana_imgcls.outputs.review import NONE_CHOICE, import_review

# ---------------------------------------------------------------------------------------------
# The tests' data: the shared samples beside the checkout, the sandbox's vocabulary, learnable image folders


SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
SEED_TABLES = SHARED / "seed_tables"
HERITAGE = SHARED / "heritage_sample"

VOCAB = {
    "map": "http://data.europeana.eu/concept/base/43",
    "painting": "http://data.europeana.eu/concept/base/47",
    "specimen": "http://data.europeana.eu/concept/base/167",
}


def sandbox_config(**settings: Any) -> SandboxConfig:
    """The tests' sandbox: VOCAB's concepts on a free port, with ``settings``."""
    return SandboxConfig(vocab=VOCAB, port=0, **settings)


CLASSES = ("map", "painting", "specimen")


def make_folders(root: Path, per_class: int = 12, size: int = 40, classes=CLASSES) -> Path:
    """Learnable synthetic classes, files named like eic download names them (3 providers per class)."""
    for k, name in enumerate(classes):
        (root / name).mkdir(parents=True, exist_ok=True)
        for j in range(per_class):
            image = draw_image((k,), len(classes), seed=1000 * k + j, size=(size, size))
            image.save(root / name / f"[ph]{9000 + 10 * k + j % 3}[ph]obj_{name}_{j}.jpg", quality=90)
    return root


def rows(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as handle:
        return list(csv.DictReader(handle))


def config(data: Path, out: Path, **kw) -> TrainConfig:
    """Training settings for tests: the tiny net, no weights, tiny images, few epochs, and no figures or heatmaps
    where they are not the point (a tenth of a second of CPU each, most of a tiny run's, and the heatmaps' packages
    1.8 s of each worker's first: the runs that the tests of the figures, the heatmaps and the model card read draw
    them) (override any with ``kw``)."""
    settings = dict(
        figures=False,
        data_dir=data,
        output_dir=out,
        arch="tiny",
        weights="none",
        epochs=6,
        input_size=32,
        batch_size=8,
        learning_rate=1e-3,
        folds=3,
        patience=3,
        quiet=True,
        gradcam_images=0,
    )
    settings.update(kw)
    return TrainConfig(**settings)


def sandbox_records(sb: Sandbox, multi: bool = False) -> list[SandboxRecord]:
    """The sandbox's image records with a URL: single-concept ones, or (``multi``) those of several concepts."""
    return [r for r in sb.catalogue if r.type == "IMAGE" and r.has_url and (len(r.labels) > 1) == multi]


def sandbox_table(sb: Sandbox, path: Path, multi: bool = False, records: list[SandboxRecord] | None = None) -> Path:
    """A harvest-like table of those records (or of ``records``: category, ID, URL, preview) at ``path``."""
    rows = [
        {
            "category": " ".join(r.labels),
            "ID": r.id,
            "URL": sb.image_url(r),
            "preview": sb.item(r, "k")["edmPreview"][0],
        }
        for r in (sandbox_records(sb, multi) if records is None else records)
    ]
    pl.DataFrame(rows).write_csv(path)
    return path


# What rich takes for a terminal (it draws no progress bar into a pipe or a file).
TERMINAL = {"TTY_COMPATIBLE": "1", "TTY_INTERACTIVE": "1"}


def shows_progress(stderr: str, description: str) -> bool:
    """Whether a command drew its progress bar (``description``, a done/total count) on stderr."""
    return description in stderr and bool(re.search(r"\d+/\d+", stderr))


def diverge(run: Path, split: int) -> None:
    """Make split ``split`` of ``run`` look as if its training diverged: every floating-point weight NaN."""
    import torch

    from europeana_imgcls.modelling.run_folder import RunFolder

    model = RunFolder(run).split(split).model
    checkpoint = torch.load(model, weights_only=True)
    for tensor in checkpoint["model_state"].values():
        if tensor.is_floating_point():
            tensor.fill_(float("nan"))
    torch.save(checkpoint, model)


class QuietHandler(BaseHTTPRequestHandler):
    """A loopback server's handler that logs nothing: its log lines would land in the stderr a test reads."""

    def log_message(self, *args: object) -> None:
        pass


def send_json(handler: BaseHTTPRequestHandler, status: int, payload: object) -> None:
    """Answer a loopback server's request with ``payload`` as JSON."""
    body = json.dumps(payload).encode()
    handler.send_response(status)
    handler.send_header("Content-Type", "application/json")
    handler.send_header("Content-Length", str(len(body)))
    handler.end_headers()
    handler.wfile.write(body)


@contextmanager
def serving(handler: type[BaseHTTPRequestHandler]) -> Iterator[str]:
    """A server on 127.0.0.1 answering with ``handler`` while the block runs; yields its ``http://host:port``."""
    server = LoopbackServer(("127.0.0.1", 0), handler)
    # shutdown() waits for the loop to look at its flag: every half second by default, every 10 ms here.
    threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.01}, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


# ---------------------------------------------------------------------------------------------
# What the fixtures share across tests (and pytest-xdist's workers), and the lanes

T = TypeVar("T")


def built_once(factory: pytest.TempPathFactory, name: str, build: Callable[[Path], T]) -> T:
    """What ``build(folder)`` returns, built once for the whole run: under pytest-xdist by the first worker that
    asks, under a lock in the folder the workers' temporary folders share, while the others wait and then read
    what it returned (pickled); without xdist, once per session (pytest-xdist's pattern for session fixtures)."""
    if not os.environ.get("PYTEST_XDIST_WORKER"):
        return build(factory.mktemp(name))
    import fcntl

    root = factory.getbasetemp().parent
    done = root / f"{name}.pickle"
    with (root / f"{name}.lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not done.exists():  # a fresh folder for each try: a build that failed leaves its half behind
            result = build(Path(tempfile.mkdtemp(prefix=f"{name}-", dir=root)))
            done.write_bytes(pickle.dumps(result))
        return pickle.loads(done.read_bytes())


@contextmanager
def unchanged(folder: Path, what: str) -> Iterator[None]:
    """Fail the test that wrote into ``folder``, a fixture shared with other tests (and other workers)."""

    def state() -> dict[str, tuple[int, int]]:
        return {str(p): (p.stat().st_size, p.stat().st_mtime_ns) for p in [folder, *folder.rglob("*")]}

    before = state()
    yield
    # Under xdist another worker's test may be the writer: that one fails too, where its own guard looks.
    assert state() == before, f"{what} changed: the tests share it, so one that writes must copy it into tmp_path"


def copy_of(run: Path, tmp_path: Path) -> Path:
    """A shared run copied into ``tmp_path``, for a test whose command writes into its run (evaluate keeps the run's
    latest evaluation and model card, export its ONNX files)."""
    import shutil

    return Path(shutil.copytree(run, tmp_path / run.name))


def examples(count: int) -> int:
    """A property test's ``max_examples``: ``count`` in the full suite (and CI), a quarter of it in the fast lane,
    whose Hypothesis profile asks 25 examples where Hypothesis's default asks 100 (conftest.py)."""
    return max(10, count * settings.default.max_examples // 100)


# ---------------------------------------------------------------------------------------------
# The eic command in this process


runner = CliRunner()


def eic(*args: str, env: dict[str, str] | None = None):
    return runner.invoke(app, [str(a) for a in args], env=env)


def assert_one_line_error(result, text: str) -> None:
    assert result.exit_code != 0
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("eic: error:"), result.stderr
    assert text in lines[0]
    assert "Traceback" not in result.output + result.stderr


def download_config(table: Path, out: Path, **kw) -> DownloadConfig:
    # A timeout far above what a good image takes even on a loaded machine; the sandbox's stalls never answer.
    settings = dict(
        table=table,
        output_dir=out,
        quiet=True,
        timeout=6.0,
        retries=1,
        max_side=128,
        max_bytes=3_000_000,
        concurrency=8,
        per_host=8,
    )
    settings.update(kw)
    return DownloadConfig(**settings)


# ---------------------------------------------------------------------------------------------
# Training, calibration and multi-label data


TINY = dict(arch="tiny", weights="none", input_size=32, quiet=True)


TARGET = 0.9


def _rows(sb: Sandbox) -> list[dict[str, str]]:
    """Single-concept records, and records of 2 or 3 concepts whose images blend their classes' looks,
    labelled with their first concept: real labels, some of them hard to tell apart."""
    records = [r for r in sb.catalogue if r.type == "IMAGE" and r.has_url]
    return [{"category": r.labels[0], "ID": r.id, "URL": sb.image_url(r)} for r in records]


LABELS = ("map", "painting", "specimen", "textile")


def make_multilabel_folder(root: Path, count: int = 120, seed: int = 0) -> Path:
    """Images that combine one or two class patterns, with labels.csv as eic download writes it."""
    rng = np.random.default_rng(seed)
    root.mkdir(parents=True, exist_ok=True)
    with (root / "labels.csv").open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["ID", "file", "category"])
        for i in range(count):
            chosen = sorted(int(k) for k in rng.choice(len(LABELS), size=rng.integers(1, 3), replace=False))
            name = f"[ph]{900 + i % 6}[ph]obj_{seed}_{i}.jpg"
            draw_image(tuple(chosen), len(LABELS), seed=seed * 10_000 + i, size=(48, 48)).save(root / name)
            writer.writerow([f"/{900 + i % 6}/obj_{seed}_{i}", name, " ".join(LABELS[k] for k in chosen)])
    return root


# ---------------------------------------------------------------------------------------------
# Annotations as eic enrich writes them, and eic publish's settings


def _items(path: Path) -> list[dict[str, Any]]:
    if path.suffix == ".jsonl":
        return [json.loads(line) for line in path.read_bytes().split(b"\n") if line]
    data = json.loads(path.read_text())
    return data["items"] if data["type"] == "AnnotationPage" else data["first"]["items"]


def _config(path: Path, sb: Sandbox, **kw: Any) -> PublishConfig:
    return PublishConfig(enrichments=path, annotation_api=sb.base_url, annotation_token=SANDBOX_TOKEN, quiet=True, **kw)


MODEL_A, MODEL_B = "0123456789abcdef", "fedcba9876543210"


def _made(n: int, digest: str = MODEL_A, start: int = 0) -> list[dict[str, Any]]:
    """``n`` annotations of the europeana profile as eic enrich writes them, without a model to train."""
    from europeana_imgcls.outputs.enrichment import ModelInfo, annotation

    model = ModelInfo(digest, "run", ["split_1"], 0.9)
    return [
        annotation(
            {"scope": f"http://data.europeana.eu/item/9000/r{i}", "source": f"https://images.example.org/{i}.jpg"},
            VOCAB["map"],
            0.97,
            model,
            "map",
            0.5,
        )
        for i in range(start, start + n)
    ]


def _write(path: Path, items: list[dict[str, Any]]) -> Path:
    path.write_text("".join(json.dumps(item) + "\n" for item in items))
    return path


def _one_line(result: Any) -> str:
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(result.exception)
    lines = result.stderr.strip().splitlines()
    assert result.exit_code != 0 and len(lines) == 1 and lines[0].startswith("eic: error: "), result.output
    return lines[0]


# ---------------------------------------------------------------------------------------------
# The review loop: Label Studio tasks and exports, a table the reviews apply to


def task(number: int, record: str, *answers: list[str], uri: str | None = None) -> dict[str, Any]:
    """A task of an eic review project as Label Studio exports it, with one annotation per answer."""
    data = {"image": f"http://127.0.0.1:9/images/{number}.jpg", "ID": record, "reason": "abstained"}
    if uri is not None:
        data["URI"] = uri
    return {
        "id": number,
        "data": data,
        "annotations": [
            {
                "id": 100 * number + k,
                "completed_by": {"id": k, "email": f"r{k}@museum.example"},
                "was_cancelled": False,
                "result": [
                    {
                        "id": "x",
                        "from_name": "category",
                        "to_name": "image",
                        "type": "choices",
                        "value": {"choices": answer},
                    }
                ],
            }
            for k, answer in enumerate(answers)
        ],
    }


def review_import(tmp_path: Path, tasks: list[Any], **kw: Any):
    export = tmp_path / "export.json"
    export.write_text(json.dumps(tasks))
    vocab = tmp_path / "vocab.json"
    vocab.write_text(json.dumps(VOCAB))
    return import_review(
        ReviewImportConfig(export=export, output=tmp_path / "out.csv", vocab=vocab, overwrite=True, **kw)
    )


TRAIN = [
    {"category": "map", "ID": "/9/a", "URL": "http://x/a.jpg", "provider": "P"},
    {"category": "map", "ID": "/9/b", "URL": "http://x/b.jpg", "provider": "P"},
    {"category": "painting", "ID": "/9/c", "URL": "http://x/c.jpg", "provider": "Q"},
    {"category": "map", "ID": "/9/d", "URL": "http://x/d.jpg", "provider": "Q"},
    {"category": "specimen", "ID": "/9/x", "URL": "http://x/x.jpg", "provider": "Q"},
]
REVIEWS = [
    task(1, "/9/a", ["map"]),  # confirmed
    task(2, "/9/b", ["painting"]),  # changed
    task(3, "/9/c", [NONE_CHOICE]),  # removed
    task(4, "/9/d", ["map"], ["painting"]),  # reviewers disagree: never applied
    task(5, "/9/z", ["specimen"]),  # not in the table
]


# Words of the review loop's files, for the values Hypothesis puts in them.
WORDS = ("map", "painting", NONE_CHOICE, "/9/a", "/../../x", "/9/a\x00", "choices")


def _import(folder: Path, *extra: str) -> Result:
    args = ["review", "import", str(folder / "export.json"), "-o", str(folder / "out.csv")]
    return CliRunner().invoke(app, [*args, "--vocab", str(folder / "vocab.json"), *extra])


def _apply(folder: Path, *extra: str) -> Result:
    args = ["review", "apply", str(folder / "train.csv"), str(folder / "out.csv"), "-o", str(folder / "new.csv")]
    return CliRunner().invoke(app, [*args, *extra])


def _setup(folder: Path, tasks: Any) -> None:
    (folder / "export.json").write_text(json.dumps(tasks))
    (folder / "vocab.json").write_text(json.dumps(VOCAB))
    pl.DataFrame(TRAIN).write_csv(folder / "train.csv")
    (folder / "bystander.txt").write_text("not eic's")


# ---------------------------------------------------------------------------------------------
# A machine that only labels: eic without PyTorch, as docs/deploy.md installs it

ROOT = Path(__file__).resolve().parents[1]
DEPLOY_DOC = ROOT / "docs" / "deploy.md"


def deploy_recipe() -> dict[str | None, list[str]]:
    """The requirements docs/deploy.md installs beside eic (installed with --no-deps): None, those of every such
    machine; a runtime's name, that runtime's own."""
    block = re.search(r"```sh\npip install --no-deps europeana-imgcls\b[^\n]*\n(.*?)```", DEPLOY_DOC.read_text(), re.S)
    assert block, "docs/deploy.md holds no install of eic without its dependencies"
    recipe: dict[str | None, list[str]] = {}
    for line in block[1].splitlines():
        command, _, comment = line.partition("#")
        words = shlex.split(command)
        assert words[:2] == ["pip", "install"], line
        runtime = re.search(r"--runtime (\w+)", comment)
        recipe[runtime[1] if runtime else None] = words[2:]
    return recipe


def deploy_machine(body: str, runtime: str | None = None) -> str:
    """A script that runs ``body`` where only what the recipe installs (with ``runtime``'s line) can be imported:
    every other installed distribution's modules are taken away (``import torch`` raises ModuleNotFoundError,
    ``importlib.util.find_spec`` answers None), as on a machine that never installed them."""
    # What the interpreter loaded as it started (a .pth file's) stays: a machine has its own.
    return f"import sys\nfor name in {_lacking(runtime)!r}:\n    sys.modules.setdefault(name, None)\n{body}"


def on_a_deploy_machine(
    body: str, runtime: str | None, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """``body`` run by a Python that can import only what docs/deploy.md installs (with ``runtime``'s line)."""
    # EIC_FULL_EXIT: eic's end raises SystemExit as Python's exit does, so a body can go on after eic.
    env = {**os.environ, **(env or {}), "PYTHONPATH": str(ROOT), "EIC_FULL_EXIT": "1"}
    script = deploy_machine(body, runtime)
    return subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=300)


def eic_on_a_deploy_machine(
    *args: str, runtime: str | None = "onnx", code: int = 0, then: str = "", env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """``eic ARGS`` on a machine that only labels with ``runtime``: the process fails unless eic ends with exit code
    ``code``; ``then``: what it runs after."""
    run = f"import runpy\nsys.argv = ['eic', *{list(args)!r}]\n"
    run += "try:\n    runpy.run_module('europeana_imgcls', run_name='__main__')\n"
    run += f"except SystemExit as end:\n    assert (end.code or 0) == {code}, end.code\n{then}"
    return on_a_deploy_machine(run, runtime, env)


@functools.cache  # 0.3 s of reading every installed distribution's metadata
def _lacking(runtime: str | None) -> list[str]:
    """The top-level modules of the installed distributions the recipe (with ``runtime``'s line) does not bring."""
    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name

    recipe = deploy_recipe()
    todo = [Requirement(line).name for line in recipe[None] + (recipe[runtime] if runtime else [])]
    have = {"europeana-imgcls"}  # without its requirements
    while todo:
        name = canonicalize_name(todo.pop())
        if name not in have:
            have.add(name)
            for line in metadata.requires(name) or []:
                requirement = Requirement(line)
                if not requirement.marker or requirement.marker.evaluate({"extra": ""}):
                    todo.append(requirement.name)
    return sorted(
        module
        for module, names in metadata.packages_distributions().items()
        if not any(canonicalize_name(name) in have for name in names)
    )


# ---------------------------------------------------------------------------------------------
# Tables of the sandbox's records


def _good_rows(sb: Sandbox, multi: bool = False) -> list[dict[str, str]]:
    records = [
        r for r in sb.catalogue if r.type == "IMAGE" and r.has_url and not r.fault and (len(r.labels) > 1) == multi
    ]
    return [{"category": " ".join(r.labels), "ID": r.id, "URL": sb.image_url(r)} for r in records]


def torchrun(*args: str) -> subprocess.CompletedProcess[str]:
    """``eic ARGS`` as two processes under torchrun (gloo, one thread each), with the tests' tiny net known."""
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1]), "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
    return subprocess.run(
        [*command, "-m", "tests.eic_tiny", *args], env=env, capture_output=True, text=True, timeout=300
    )


def looping_originals_table(sb: Sandbox, path: Path) -> list[dict[str, str]]:
    """A table of the sandbox's image records whose originals all redirect in a loop while their previews (the
    Thumbnail API's) answer, written at ``path``; its rows."""
    rows = [
        {
            "category": r.labels[0],
            "ID": r.id,
            "URL": f"{sb.base_url}/faults/redirect-loop/{r.serial}",
            "preview": sb.item(r, "k")["edmPreview"][0],
        }
        for r in sandbox_records(sb)
    ]
    pl.DataFrame(rows).write_csv(path)
    return rows
