"""Shared fixtures. Tests reach nothing but 127.0.0.1: any other connection fails loudly.

Under pytest-xdist this file is loaded by the process that only hands tests out, too, before it starts the workers:
what it imports at the top (not the package, polars or the tests' helpers: 0.7 s of CPU) is what they wait for.
The fixtures import what they build with; the workers import it all with the first test module anyway."""

from __future__ import annotations

import atexit
import functools
import gc
import json
import logging
import os
import shlex
import shutil
import socket
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
from hypothesis import settings
from hypothesis.database import DirectoryBasedExampleDatabase

if TYPE_CHECKING:
    from europeana_imgcls.europeana.sandbox import Sandbox

# Where the environment sets PYTHONDONTWRITEBYTECODE, pytest could keep none of the test modules it rewrites (for
# its assert messages) and Python none of the package's modules it compiles: each xdist worker would rewrite and
# compile them all anew on every run, 2.5 s of a core each (collection 5.6 s of CPU, 3.3 s with them kept). They
# are kept where Python keeps them without the variable (__pycache__, which git ignores); the processes the tests
# start inherit the variable, and read them.
sys.dont_write_bytecode = False

# Python collects the youngest garbage every 700 new objects (and all of it every 100 such collections): in a
# worker that holds torch, the tests' modules and their fixtures, that was 5.8 s of CPU of the fast lane's 60;
# every 10,000, 2.7 s. The older generations keep Python's ratios, so cycles (a matplotlib figure) are freed as
# often, counted in objects, as before.
gc.set_threshold(10_000, 10, 10)

_real_connect = socket.socket.connect
WAITING = "eic_waiting_tests"  # the workers' input naming the file of the tests that mostly wait (scheduling.py)

# Hypothesis: in CI (the CI variable set, as CI services and .ci/run set it) the same examples every run, so a fresh
# clone's test command cannot fail at random, and no example database; elsewhere random examples, with the failures
# it found kept to try first next time in pytest's cache folder, out of the repository. `--hypothesis-profile`
# chooses either. The fast lane (-m "not slow") loads the "-fast" variant of either, whose max_examples (25 of
# Hypothesis's default 100) scales the costliest property tests' own counts down to a quarter (support.examples);
# the full suite, and so CI, runs every example they ask for.
settings.register_profile("ci", derandomize=True, database=None)
settings.register_profile(
    "dev", database=DirectoryBasedExampleDatabase(Path(__file__).resolve().parents[1] / ".pytest_cache" / "hypothesis")
)
for _name in ("ci", "dev"):
    settings.register_profile(f"{_name}-fast", parent=settings.get_profile(_name), max_examples=25)
PROFILE = "ci" if os.environ.get("CI") else "dev"
settings.load_profile(PROFILE)


def fast_lane(config: pytest.Config) -> bool:
    """Whether this run leaves the slow tests out (``-m "not slow"``)."""
    return "not slow" in (config.option.markexpr or "")


def pytest_configure(config: pytest.Config) -> None:
    """The lane's Hypothesis profile; torch and the tests' tiny net (arch "tiny") where tests run. Not torch in the
    process that only hands tests out to xdist workers: importing it there would take seconds of a core from the
    workers as they start."""
    if not config.getoption("hypothesis_profile", None):
        settings.load_profile(PROFILE + ("-fast" if fast_lane(config) else ""))
    if getattr(config.option, "numprocesses", None) and not hasattr(config, "workerinput"):
        _hand_out_slow_tests_one_by_one(config)
        if not fast_lane(config):  # tests/scheduling.py: where the first worker says which tests mostly wait
            handle, path = tempfile.mkstemp(prefix="eic-waiting-", suffix=".txt")
            os.close(handle)
            config.stash[WAITING_FILE] = Path(path)
            config.add_cleanup(functools.partial(Path(path).unlink, missing_ok=True))
        return
    import torch
    import typer.main
    import typer.testing

    from . import tiny  # noqa: F401  registers "tiny"

    # typer builds the click command anew on every CliRunner.invoke: 16 ms for eic's commands, a thousand times a
    # run (most of the time of the tests that run eic on hostile files). The app does not change while tests run.
    typer.testing._get_command = functools.cache(typer.main.get_command)  # type: ignore[attr-defined]

    if os.environ.get("PYTEST_XDIST_WORKER"):
        # Under pytest -n N each worker is one of N processes on the same cores: a thread each, not a pool
        # each, and so for the eic processes the tests start (torchrun, kill and resume): they inherit it.
        torch.set_num_threads(1)
        os.environ.setdefault("OMP_NUM_THREADS", "1")
    if hasattr(config, "workerinput"):  # an xdist worker (not a pytest a test starts, which inherits the variable)
        atexit.register(_leave_worker)


def _leave_worker() -> None:
    """A worker's exit, once it has sent its reports and the controller has told it to stop: what is left is
    Python tearing torch down, 1.5 to 2.5 s of a core per worker with the whole suite loaded, which the controller
    waited for at the end of every run. The exit handlers registered after this one (after torch's import) have
    run; of those registered before, the two that matter run here: multiprocessing's (its children stopped, its
    temporary folders removed) and logging's flush. eic itself ends the same way (``cli/app.leave``)."""
    children = sys.modules.get("multiprocessing.util")
    if children is not None:
        children._exit_function()  # type: ignore[attr-defined]
    logging.shutdown()
    from europeana_imgcls.cli.app import end_process

    end_process(0)


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
    from .support import VOCAB

    path = tmp_path / "vocab.json"
    path.write_text(json.dumps(VOCAB))
    return path


def _hand_out_slow_tests_one_by_one(config: pytest.Config) -> None:
    """pytest-xdist hands each worker a quarter of its share of the tests at once, in order: in the full suite the
    first worker got the first 72 of 864 tests, nearly all of the 88 slow ones (154 of the 310 s the tests took,
    the run 168 s). Two at a time, as each finishes, the slow tests spread over all the workers, the longest first
    (``pytest_collection_modifyitems``). The fast lane has none: there each worker takes half the tests and one that
    runs out takes from the other's end (xdist's worksteal), so that both finish together; under ``load`` one
    waited 0.6 to 1 s for the other's last batch."""
    if fast_lane(config):
        given = [*config.invocation_params.args, *config.getini("addopts")]
        given += shlex.split(os.environ.get("PYTEST_ADDOPTS", ""))
        if not any(arg.startswith(("--dist", "-d")) for arg in given):
            config.option.dist = "worksteal"  # given on the command line, that is kept
    elif getattr(config.option, "maxschedchunk", None) is None:
        config.option.maxschedchunk = 2  # xdist's --maxschedchunk; given on the command line, that is kept


def _order(item: pytest.Item) -> tuple[bool, float]:
    slow = item.get_closest_marker("slow")
    return (slow is None, -float(slow.kwargs.get("seconds", 0)) if slow else 0.0)


WAITING_FILE = pytest.StashKey[Path]()


@pytest.hookimpl(optionalhook=True)  # pytest-xdist's, in this process: what each worker is told as it starts
def pytest_configure_node(node: Any) -> None:
    path = node.config.stash.get(WAITING_FILE, None)
    if path is not None:
        node.workerinput[WAITING] = str(path)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """The slow tests first, the longest of them first (``@pytest.mark.slow(seconds=N)``: about how long it runs on
    a 2-core machine; the rest in their order), then the fast ones: under xdist the workers take tests in this
    order, and an end-to-end test of 40 s that starts last is a tail that one worker runs while the others wait.
    Started first, the short tests fill in around them. The first worker of the full suite writes down which tests
    mostly wait (``@pytest.mark.waits``), for the scheduler (tests/scheduling.py)."""
    items.sort(key=_order)
    told = getattr(config, "workerinput", {})
    path = told.get(WAITING)
    if path and told.get("workerid") == "gw0":
        part = Path(f"{path}.part")
        part.write_text("".join(f"{item.nodeid}\n" for item in items if item.get_closest_marker("waits")))
        part.replace(path)  # whole, before this worker hands its collection over


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_make_scheduler(config: pytest.Config, log: Any) -> Any:
    """The full suite's ``load`` hand-out with the waiting tests on a worker of their own (tests/scheduling.py)."""
    if fast_lane(config) or config.getvalue("dist") != "load":
        return None  # xdist's own
    from .scheduling import WaitingApart

    return WaitingApart(config, log)


@pytest.hookimpl(optionalhook=True)  # a hook of pytest-xdist: pytest without it must not refuse it
def pytest_xdist_auto_num_workers(config: pytest.Config) -> int:
    """``-n auto``: a worker per core, and for the full suite one more, the last, for the tests that mostly wait
    (``@pytest.mark.waits``: tests/scheduling.py), which runs them alone and stops. On two cores three workers
    taking turns cost ~15 s of CPU more than two (the third's start, and the turns), and two alone left a core idle
    whenever a test waited: on the 2-core development machine the full suite took 125 s with 2 workers, 120 s with
    3 sharing every test, and 114 s with the third for the waiting ones. The fast lane hardly waits, and a worker's
    start (torch, the package, collecting the tests: ~5 s of a core, and ~4 s more at the first use of
    torch._dynamo, scipy, scikit-learn, matplotlib) is what a third worker would add: 90 s of CPU with 2 workers,
    101 s with 3 (an earlier suite)."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    return max(1, cores if fast_lane(config) else cores + 1)


@pytest.fixture
def sandbox() -> Iterator[Sandbox]:
    from europeana_imgcls.europeana.sandbox import Sandbox

    from .support import sandbox_config

    with Sandbox(sandbox_config(per_level=40)) as server:
        yield server


# ---------------------------------------------------------------------------------------------
# Fixtures several test modules share (the costly ones built once per run)


@pytest.fixture(scope="session")
def shared_trained_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One 3-fold run of the tiny net shared by every test that needs a trained model but is not about training,
    built once a run. Tests that run eic on it in other processes start ``python -m tests.eic_tiny``, which knows the
    tiny net."""

    from .support import built_once

    def build(root: Path) -> Path:
        from europeana_imgcls.modelling.training import train

        from .support import config, make_folders

        data = make_folders(root / "train", per_class=9, size=40)
        train(config(data, root / "run", epochs=3, gradcam_images=0))
        return root / "run"

    return built_once(tmp_path_factory, "trained_run", build)


@pytest.fixture
def trained_run(shared_trained_run: Path) -> Iterator[Path]:
    """The shared run, read only: a test that writes into it fails (copy it into tmp_path to change it)."""
    from .support import unchanged

    with unchanged(shared_trained_run, "the shared trained run"):
        yield shared_trained_run


# ---------------------------------------------------------------------------------------------
# The numbers, on data with known answers


def _world_sandbox() -> Sandbox:
    """The world's sandbox: the same catalogue whenever it is made with these settings."""
    from europeana_imgcls.europeana.sandbox import Knobs, Sandbox

    from .support import sandbox_config

    return Sandbox(sandbox_config(per_level=12), Knobs(shared_per_concept=6, triples_per_concept=4))


@pytest.fixture(scope="session")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """A cross-validated run trained on half the sandbox's records, and the other half to enrich: built once a run
    (shared_world), each worker given a copy whose tables and files name its own sandbox, which serves the same
    records (the catalogue is the same for the same settings; only the port differs)."""
    from .support import built_once

    shared = built_once(tmp_path_factory, "world", _world)
    with _world_sandbox() as sb:
        root = Path(shutil.copytree(shared["root"], tmp_path_factory.mktemp("world") / "root"))
        for path in root.rglob("*"):
            if path.suffix in (".csv", ".json", ".jsonld", ".jsonl") and path.is_file():
                text = path.read_text(encoding="utf-8")
                if shared["base_url"] in text:
                    path.write_text(text.replace(shared["base_url"], sb.base_url), encoding="utf-8")
        yield {**shared, "root": root, "sandbox": sb}


def _world(root: Path) -> dict[str, Any]:
    import polars as pl

    from europeana_imgcls import DownloadConfig, download, train
    from europeana_imgcls.core.config import EnrichConfig
    from europeana_imgcls.outputs.enrichment import enrich

    from .support import TARGET, _rows, config

    with _world_sandbox() as sb:
        rows = _rows(sb)
        training, fresh = rows[0::2], rows[1::2]
        pl.DataFrame(training).write_csv(root / "train.csv")
        pl.DataFrame(fresh).write_csv(root / "new.csv")
        download(DownloadConfig(table=root / "train.csv", output_dir=root / "images", quiet=True, max_side=64))
        download(DownloadConfig(table=root / "new.csv", output_dir=root / "eval_images", quiet=True, max_side=64))
        # The tests' tiny net: what is tested is calibration and enrichment, not the model.
        report = train(
            config(
                root / "images",
                root / "run",
                epochs=10,
                batch_size=16,
                learning_rate=3e-3,
                gradcam_images=0,
                precision=TARGET,
                figures=True,  # its reliability diagram and model card are tested
            )
        )
        out = root / "out.jsonld"
        result = enrich(
            EnrichConfig(
                run=root / "run",
                table=root / "new.csv",
                output=out,
                quiet=True,
                review_output=root / "review.json",
                review_n=5,
            )
        )
        return {
            "root": root,
            "train": report,
            "enrich": result,
            "truth": {r["ID"]: r["category"] for r in fresh},
            "base_url": sb.base_url,
        }


@pytest.fixture
def trained(trained_run: Path) -> Path:
    return trained_run


@pytest.fixture(scope="module")
def eval_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from .support import make_folders

    root = tmp_path_factory.mktemp("eval")
    make_folders(root, per_class=7, size=48)
    make_folders(root, per_class=3, size=48, classes=("statue",))  # a class the model does not know
    jpeg = next((root / "map").iterdir()).read_bytes()
    (root / "map" / "broken.jpg").write_bytes(jpeg[: len(jpeg) // 3])  # header fine, body cut
    return root


@pytest.fixture(scope="session")
def shared_ml_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A multi-label run of the tiny net and its data, built once a run."""
    from .support import built_once

    def build(root: Path) -> tuple[Path, Path]:
        from europeana_imgcls import train

        from .support import config, make_multilabel_folder

        data = make_multilabel_folder(root / "data")
        train(config(data, root / "run", mode="multi-label", epochs=8, batch_size=16, gradcam_images=2, arch="tiny"))
        return data, root / "run"

    return built_once(tmp_path_factory, "ml_run", build)


@pytest.fixture
def ml_run(shared_ml_run: tuple[Path, Path]) -> Iterator[tuple[Path, Path]]:
    """The shared multi-label data and run, read only."""
    from .support import unchanged

    with unchanged(shared_ml_run[0], "the shared multi-label data"), unchanged(shared_ml_run[1], "the shared run"):
        yield shared_ml_run


# ---------------------------------------------------------------------------------------------
# The profiles


@pytest.fixture(scope="session")
def shared_enriched(shared_trained_run: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """The shared run's annotations of 24 records (files named after their record, as eic download names them),
    in both profiles and both formats, made once a run."""
    from .support import built_once

    return built_once(tmp_path_factory, "enriched", functools.partial(_enrich, shared_trained_run))


@pytest.fixture
def enriched(shared_enriched: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """The shared annotations, read only."""
    from .support import unchanged

    with unchanged(shared_enriched["images"].parent, "the shared annotations"):
        yield shared_enriched


def _enrich(trained_run: Path, root: Path) -> dict[str, Any]:
    from europeana_imgcls.core.config import EnrichConfig
    from europeana_imgcls.outputs.enrichment import enrich

    from .support import VOCAB, make_folders

    images = make_folders(root / "images", per_class=8, size=40)
    vocab = root / "vocab.json"
    vocab.write_text(json.dumps(VOCAB))
    made, paths = {}, {}
    for profile in ("europeana", "w3c"):
        for fmt in ("jsonld", "jsonl"):
            out = root / f"{profile}_{fmt}" / f"{profile}.{fmt}"  # a folder each: they share a stem
            made[out.name] = enrich(
                EnrichConfig(
                    run=trained_run,
                    inputs=[str(images)],
                    output=out,
                    vocab=vocab,
                    profile=profile,
                    precision=0.5,
                    quiet=True,
                )
            )
            paths[out.name] = out
    assert made["europeana.jsonld"].annotations >= 10
    return {
        "path": paths,
        "reports": made,
        "model": made["europeana.jsonld"].model_id,
        "images": images,
        "trained_run": trained_run,
    }


@pytest.fixture(scope="session")
def shared_folders(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Three learnable classes of 12 images each, made once a run."""
    from .support import built_once, make_folders

    return built_once(tmp_path_factory, "folders", make_folders)


@pytest.fixture
def folders(shared_folders: Path) -> Iterator[Path]:
    """The shared image folders, read only."""
    from .support import unchanged

    with unchanged(shared_folders, "the shared image folders"):
        yield shared_folders
