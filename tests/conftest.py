"""Shared fixtures. Tests reach nothing but 127.0.0.1: any other connection fails loudly."""

from __future__ import annotations

import csv
import json
import os
import re
import socket
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import polars as pl
import pytest
from hypothesis import settings
from hypothesis.database import DirectoryBasedExampleDatabase

from europeana_imgcls.core.config import SandboxConfig, TrainConfig
from europeana_imgcls.europeana.sandbox import Sandbox, SandboxRecord, draw_image

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
SEED_TABLES = SHARED / "seed_tables"
HERITAGE = SHARED / "heritage_sample"

VOCAB = {
    "map": "http://data.europeana.eu/concept/base/43",
    "painting": "http://data.europeana.eu/concept/base/47",
    "specimen": "http://data.europeana.eu/concept/base/167",
}

_real_connect = socket.socket.connect

# Hypothesis: in CI (the CI variable set, as CI services and .ci/run set it) the same examples every run, so a fresh
# clone's test command cannot fail at random, and no example database; elsewhere random examples, with the failures
# it found kept to try first next time in pytest's cache folder, out of the repository. `--hypothesis-profile`
# chooses either.
settings.register_profile("ci", derandomize=True, database=None)
settings.register_profile(
    "dev", database=DirectoryBasedExampleDatabase(Path(__file__).resolve().parents[1] / ".pytest_cache" / "hypothesis")
)
settings.load_profile("ci" if os.environ.get("CI") else "dev")


def pytest_configure(config: pytest.Config) -> None:
    """torch and the tests' tiny net (arch "tiny") where tests run. Not in the process that only hands tests out
    to xdist workers: importing torch there would take seconds of a core from the workers as they start."""
    if getattr(config.option, "numprocesses", None) and not hasattr(config, "workerinput"):
        return
    import torch

    from . import tiny  # noqa: F401  registers "tiny"

    if os.environ.get("PYTEST_XDIST_WORKER"):
        # Under pytest -n N each worker is one of N processes on the same cores: a thread each, not a pool
        # each, and so for the eic processes the tests start (torchrun, kill and resume): they inherit it.
        torch.set_num_threads(1)
        os.environ.setdefault("OMP_NUM_THREADS", "1")


def _loopback_only(self: socket.socket, address: object) -> None:
    host = address[0] if isinstance(address, tuple) else address
    if self.family in (socket.AF_INET, socket.AF_INET6) and host not in ("127.0.0.1", "::1", "localhost"):
        raise ConnectionRefusedError(f"tests may not reach {host}")
    _real_connect(self, address)  # type: ignore[arg-type]


@pytest.fixture(autouse=True)
def no_network(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(socket.socket, "connect", _loopback_only)
    for name in ("EUROPEANA_API_URL", "EUROPEANA_API_KEY"):
        monkeypatch.delenv(name, raising=False)


@pytest.fixture
def vocab_file(tmp_path: Path) -> Path:
    path = tmp_path / "vocab.json"
    path.write_text(json.dumps(VOCAB))
    return path


@pytest.hookimpl(optionalhook=True)  # a hook of pytest-xdist: pytest without it must not refuse it
def pytest_xdist_auto_num_workers(config: pytest.Config) -> int:
    """``-n auto``: three workers per two cores. About a third of the suite's time is spent waiting (on loopback
    servers, on eic in other processes), so one worker per core leaves cores idle: on the 2-core development
    machine the full suite took 101 s with 2 workers and 89 s with 3."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    return max(1, cores * 3 // 2)


def sandbox_config(**settings: Any) -> SandboxConfig:
    """The tests' sandbox: VOCAB's concepts on a free port, with ``settings``."""
    return SandboxConfig(vocab=VOCAB, port=0, **settings)


@pytest.fixture
def sandbox() -> Iterator[Sandbox]:
    with Sandbox(sandbox_config(per_level=40)) as server:
        yield server


# ---------------------------------------------------------------------------------------------
# Helpers the test modules share

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
    """Training settings for tests: the tiny net, no weights, tiny images, few epochs (override any with ``kw``)."""
    settings = dict(
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
        gradcam_images=3,
    )
    settings.update(kw)
    return TrainConfig(**settings)


@pytest.fixture(scope="session")
def trained_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One 3-fold run of the tiny net shared by every test that needs a trained model but is not about training.
    Tests that run eic on it in other processes start ``python -m tests.eic_tiny``, which knows the tiny net."""
    from europeana_imgcls.modelling.training import train

    data = make_folders(tmp_path_factory.mktemp("train"), per_class=9, size=40)
    out = tmp_path_factory.mktemp("runs") / "run"
    train(config(data, out, epochs=3, gradcam_images=0))
    return out


def sandbox_records(sb: Sandbox, multi: bool = False) -> list[SandboxRecord]:
    """The sandbox's image records with a URL: single-concept ones, or (``multi``) those of several concepts."""
    return [r for r in sb.catalogue if r.type == "IMAGE" and r.has_url and (len(r.labels) > 1) == multi]


def sandbox_table(sb: Sandbox, path: Path, multi: bool = False) -> Path:
    """A harvest-like table of those records (category, ID, URL, preview) at ``path``."""
    rows = [
        {
            "category": " ".join(r.labels),
            "ID": r.id,
            "URL": sb.image_url(r),
            "preview": sb.item(r, "k")["edmPreview"][0],
        }
        for r in sandbox_records(sb, multi)
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
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
