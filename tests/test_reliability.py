"""Fault injection: eic touches only what it wrote, loses no record without a word, and keeps what a run
knew before it started, however the run ends (docs/reliability.md, rules 1-3)."""

from __future__ import annotations

import csv
import functools
import importlib
import io
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import polars as pl
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image
from typer.testing import CliRunner

from europeana_imgcls import DownloadConfig, download
from europeana_imgcls.acquisition.download import Fetcher, file_name
from europeana_imgcls.acquisition.images import ImageRejected, save_normalised
from europeana_imgcls.cli.app import app
from europeana_imgcls.core.errors import DatasetError
from europeana_imgcls.core.tables import temp_path
from europeana_imgcls.europeana.sandbox import Knobs, Sandbox

from .support import _good_rows, sandbox_config

ROOT = Path(__file__).resolve().parents[1]


def _config(table: Path, out: Path, **kw: object) -> DownloadConfig:
    settings: dict[str, object] = dict(
        table=table, output_dir=out, quiet=True, timeout=3.0, retries=0, max_side=64, concurrency=4, per_host=4
    )
    settings.update(kw)
    return DownloadConfig(**settings)  # type: ignore[arg-type]


def _failures(out: Path) -> dict[str, str]:
    with (out / "failures.csv").open(newline="", encoding="utf-8") as handle:
        return {row["ID"]: row["error"] for row in csv.DictReader(handle)}


# eic as a fresh install runs it: typer bundles its own click and installs none, so `click` is not importable
# (the dev tools here bring one in; the command must not lean on it).
FRESH_INSTALL = (
    "import runpy, sys; sys.modules['click'] = None; runpy.run_module('europeana_imgcls', run_name='__main__')"
)


def _cli(*args: str) -> subprocess.Popen[bytes]:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.Popen(
        [sys.executable, "-c", FRESH_INSTALL, *args], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )


def _wait_for(proc: subprocess.Popen[bytes], condition: Callable[[], bool]) -> None:
    """Until ``condition`` holds (an event the run causes, never a clock); the run must still be going."""
    deadline = time.monotonic() + 120  # a guard against a hang, not a pace the run must keep
    while not condition() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    assert proc.poll() is None and condition(), "the run ended (or hung) before it reached the awaited moment"


def _interrupt_when(proc: subprocess.Popen[bytes], condition: Callable[[], bool]) -> str:
    _wait_for(proc, condition)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    return err.decode()


# ---------------------------------------------------------------------------------------------
# Rule 1: eic removes only the temporary files it names itself; existing outputs are refused


def test_download_removes_only_its_own_temporary_files(sandbox: Sandbox, tmp_path: Path) -> None:
    rows = _good_rows(sandbox)[:3]
    table = tmp_path / "t.csv"
    pl.DataFrame(rows).write_csv(table)
    out = tmp_path / "img"
    theirs = [out / "movie.mkv.part", out / rows[0]["category"] / "notes.part", out / ".x.part"]
    ours = [
        temp_path(out / "failures.csv"),
        out / rows[0]["category"] / f".{file_name('/1/a')}.4242.part",
        out / ".labels.csv.part",
    ]
    for path in theirs + ours:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"keep me")
    report = download(_config(table, out))
    assert report.saved == 3
    assert all(p.read_bytes() == b"keep me" for p in theirs)
    assert not any(p.exists() for p in ours)


@pytest.mark.parametrize("command", ["subtract", "stats"])
def test_table_outputs_are_refused_unless_overwrite_and_eics_own(command: str, tmp_path: Path) -> None:
    table = tmp_path / "t.csv"
    table.write_text("ID,category,URL\n/1/a,map,http://127.0.0.1:9/a.jpg\n")
    output = tmp_path / ("out.csv" if command == "subtract" else "out.json")
    output.write_text("precious")
    args = ["subtract", str(table), str(table)] if command == "subtract" else ["stats", str(table)]
    result = CliRunner().invoke(app, [*args, "-o", str(output)])
    assert result.exit_code == 1 and "already exists" in result.stderr and "--overwrite" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert output.read_text() == "precious"
    # `overwrite` replaces only what eic wrote there: not a file of someone else's...
    result = CliRunner().invoke(app, [*args, "-o", str(output), "--overwrite"])
    assert result.exit_code == 1 and "that eic wrote" in result.stderr and output.read_text() == "precious"
    # ...but its own output, written by a first run.
    output.unlink()
    for extra in ([], ["--overwrite"]):
        result = CliRunner().invoke(app, [*args, "-o", str(output), *extra])
        assert result.exit_code == 0, result.stderr
    assert output.read_text() != "precious"


def test_twelve_bit_scans_are_scaled_by_their_depth(tmp_path: Path) -> None:
    twelve = np.tile(np.linspace(0, 4095, 48), (32, 1)).astype("<u2")  # 12 bits in a 16-bit container
    buffer = io.BytesIO()
    Image.fromarray(twelve).save(buffer, "TIFF")
    save_normalised(buffer.getvalue(), tmp_path / "x.jpg", max_side=0, max_pixels=10**7, quality=95)
    with Image.open(tmp_path / "x.jpg") as saved:
        grey = np.asarray(saved.convert("L"), dtype=np.float32)
    assert grey[:, -4:].mean() > 230 and grey[:, :4].mean() < 20


# ---------------------------------------------------------------------------------------------
# Rule 2: every row ends saved, already there, a known failure, a new failure or skipped, with a reason

PILLOW_MODES = [
    "1",
    "L",
    "P",
    "RGB",
    "RGBA",
    "CMYK",
    "YCbCr",
    "LAB",
    "I",
    "F",
    "LA",
    "PA",
    "I;16",
    "I;16B",
    "I;16L",
    "RGBX",
]


def _encoded(mode: str) -> bytes:
    gradient = np.tile(np.linspace(0, 1, 48), (32, 1))  # dark on the left, light on the right
    if mode.startswith("I;16"):
        image = Image.fromarray((gradient * 65535).astype(">u2" if mode == "I;16B" else "<u2"))
    elif mode == "F":
        image = Image.fromarray(gradient.astype(np.float32), "F")
    elif mode == "I":
        image = Image.fromarray((gradient * 65535).astype(np.int32), "I")
    else:
        image = Image.fromarray((gradient * 255).astype(np.uint8), "L").convert(mode)
    buffer = io.BytesIO()
    image.save(buffer, "TIFF")
    return buffer.getvalue()


@pytest.mark.parametrize("mode", PILLOW_MODES)
def test_every_image_mode_is_saved_as_rgb_or_rejected_with_a_reason(mode: str, tmp_path: Path) -> None:
    target = tmp_path / "x.jpg"
    try:
        data = _encoded(mode)
    except (OSError, ValueError):
        pytest.skip(f"Pillow cannot write {mode} as TIFF")
    try:
        save_normalised(data, target, max_side=32, max_pixels=10**7, quality=90)
    except ImageRejected as exc:
        # Only modes without a sensible picture may be refused; scans (16-bit, float) must be saved.
        assert str(exc) and mode not in ("I;16", "I;16B", "I;16L", "I", "F", "L", "RGB", "RGBA", "CMYK"), mode
        return
    with Image.open(target) as saved:
        assert saved.mode == "RGB" and saved.format == "JPEG"
        grey = np.asarray(saved.convert("L"), dtype=np.float32)
    if mode not in ("1", "P", "CMYK", "LAB", "YCbCr"):
        # A gradient stays a gradient: 16-bit and float scans are scaled, not clipped to white.
        assert grey[:, :4].mean() < 80 and grey[:, -4:].mean() > 170, (mode, grey[:, :4].mean(), grey[:, -4:].mean())


@pytest.fixture
def file_host(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    """A plain static file server on 127.0.0.1 over a fresh folder."""
    folder = tmp_path / "served"
    folder.mkdir()

    class Quiet(SimpleHTTPRequestHandler):
        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Quiet, directory=str(folder)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}", folder
    server.shutdown()
    server.server_close()


def test_sixteen_bit_tiff_broken_url_and_a_crash_each_end_as_a_row(
    file_host: tuple[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    base, folder = file_host
    Image.fromarray(np.linspace(0, 65535, 64 * 64).reshape(64, 64).astype(">u2")).save(folder / "scan.tif")
    Image.new("RGB", (80, 60), (200, 30, 30)).save(folder / "a.jpg")
    rows = [
        {"category": "map", "ID": "/9/tiff", "URL": f"{base}/scan.tif"},
        {"category": "map", "ID": "/9/good", "URL": f"{base}/a.jpg"},
        {"category": "map", "ID": "/9/broken", "URL": "http://[broken/x.jpg"},
        {"category": "map", "ID": "/9/crash", "URL": f"{base}/a.jpg?crash"},
        {"category": "", "ID": "/9/nocat", "URL": f"{base}/a.jpg"},
        {"category": "map", "ID": "", "URL": f"{base}/a.jpg"},
        {"category": "map", "ID": "/9/good", "URL": f"{base}/a.jpg"},  # a repeated ID
    ]
    table = tmp_path / "t.csv"
    pl.DataFrame(rows).write_csv(table)
    real_save = Fetcher.save

    async def save(self: Fetcher, url: str, path: Path) -> str | None:
        if url.endswith("?crash"):
            raise RuntimeError("boom")  # stands for any bug or surprise inside a task
        return await real_save(self, url, path)

    monkeypatch.setattr(Fetcher, "save", save)
    out = tmp_path / "img"
    report = download(_config(table, out))
    failures = _failures(out)
    assert set(failures) == {"/9/broken", "/9/crash"}
    assert failures["/9/broken"] == "invalid URL"
    assert failures["/9/crash"].startswith("unexpected error (RuntimeError: boom")
    with Image.open(out / "map" / file_name("/9/tiff")) as saved:
        assert saved.mode == "RGB"
    assert report.skipped == {"no category": 1, "no ID": 1, "repeated ID": 1}
    assert report.total == len(rows) and report.accounted == report.total
    assert report.saved == 2 and report.failed == 2


def test_broken_url_through_the_real_client(tmp_path: Path) -> None:
    table = tmp_path / "t.csv"
    table.write_text("category,ID,URL\nmap,/1/a,http://[broken/x.jpg\nmap,/1/b,http://127.0.0.1:9/x y\n")
    report = download(_config(table, tmp_path / "img"))
    assert report.failed == 2 and report.accounted == report.total == 2
    assert _failures(tmp_path / "img")["/1/a"] == "invalid URL"


# ---------------------------------------------------------------------------------------------
# Rule 3: what was known before a run is still known after it, however the run ends


@pytest.mark.slow
def test_ctrl_c_during_a_retry_keeps_every_earlier_failure(tmp_path: Path) -> None:
    with Sandbox(sandbox_config(per_level=10), Knobs(stall_seconds=30)) as sb:
        good = _good_rows(sb)[:3]
        stalls = [{"category": "map", "ID": f"/stall/{i}", "URL": f"{sb.base_url}/faults/stall/{i}"} for i in range(6)]
        dead = [{"category": "map", "ID": f"/dead/{i}", "URL": f"{sb.base_url}/faults/404/{i}"} for i in range(3)]
        table = tmp_path / "t.csv"
        pl.DataFrame(good + dead).write_csv(table)
        out = tmp_path / "img"
        download(_config(table, out))
        # The first run saw the stalls time out quickly; the retry waits on them and is interrupted.
        pl.DataFrame(good + dead + stalls).write_csv(table)
        download(_config(table, out, timeout=0.5))
        before = _failures(out)
        assert set(before) == {r["ID"] for r in dead + stalls}
        asked = sb.count("/faults/stall/")  # by the runs above
        proc = _cli(
            "download",
            str(table),
            "-o",
            str(out),
            "--retry-failed",
            "--timeout",
            "25",
            "--retries",
            "0",
            "--concurrency",
            "2",
            "--quiet",
        )
        err = _interrupt_when(proc, lambda: sb.count("/faults/stall/") >= asked + 2)  # both slots wait on stalls
        assert proc.returncode == 130 and "eic: interrupted; what was finished is kept" in err, err
        assert "Traceback" not in err
        assert "Task exception was never retrieved" not in err
        assert set(_failures(out)) == set(before)
        assert not list(out.glob(".journal/*.ndjson"))  # what it learnt is in failures.csv


@pytest.mark.slow
def test_ctrl_c_during_a_multi_label_rerun_keeps_every_label_row(tmp_path: Path) -> None:
    with Sandbox(sandbox_config(per_level=2), Knobs(stall_seconds=30)) as sb:
        good = _good_rows(sb, multi=True)
        table = tmp_path / "t.csv"
        pl.DataFrame(good).write_csv(table)
        out = tmp_path / "img"
        download(_config(table, out, mode="multi-label"))
        labels_before = pl.read_csv(out / "labels.csv")
        assert labels_before.height == len(good)
        stalls = [
            {"category": "map painting", "ID": f"/stall/{i}", "URL": f"{sb.base_url}/faults/stall/{i}"}
            for i in range(8)
        ]
        pl.DataFrame(stalls + good).write_csv(table)
        proc = _cli(
            "download",
            str(table),
            "-o",
            str(out),
            "--mode",
            "multi-label",
            "--timeout",
            "25",
            "--retries",
            "0",
            "--concurrency",
            "1",
            "--quiet",
        )
        _interrupt_when(proc, lambda: sb.count("/faults/stall/") >= 1)
        labels_after = pl.read_csv(out / "labels.csv")
        assert labels_after.sort("ID").equals(labels_before.sort("ID"))
        saved = {p.name for p in out.glob("*.jpg")}
        assert saved == set(labels_after["file"])


@pytest.mark.slow
def test_sigkill_then_rerun_keeps_failures_and_labels(tmp_path: Path) -> None:
    with Sandbox(sandbox_config(per_level=2), Knobs(stall_seconds=30)) as sb:
        good = _good_rows(sb, multi=True)
        dead = [{"category": "map", "ID": f"/dead/{i}", "URL": f"{sb.base_url}/faults/404/{i}"} for i in range(3)]
        stalls = [{"category": "map", "ID": f"/stall/{i}", "URL": f"{sb.base_url}/faults/stall/{i}"} for i in range(4)]
        table = tmp_path / "t.csv"
        pl.DataFrame(dead + good + stalls).write_csv(table)
        out = tmp_path / "img"
        proc = _cli(
            "download",
            str(table),
            "-o",
            str(out),
            "--mode",
            "multi-label",
            "--timeout",
            "25",
            "--retries",
            "0",
            "--concurrency",
            "2",
            "--quiet",
        )
        _wait_for(proc, lambda: sb.count("/faults/stall/") >= 2)  # the stalls come last: the rest is done
        proc.kill()
        proc.communicate()
        report = download(_config(table, out, mode="multi-label", timeout=0.5))
        assert report.complete and report.accounted == report.total == len(table.read_text().splitlines()) - 1
        assert {r["ID"] for r in dead + stalls} == set(_failures(out))
        assert set(pl.read_csv(out / "labels.csv")["ID"]) == {r["ID"] for r in good}


# ---------------------------------------------------------------------------------------------
# Rule 4: the API key is sent only to the origin the user configured


# ---------------------------------------------------------------------------------------------
# Rule 5: untrusted bytes meet only the decoders of image formats, within a memory budget


def test_only_image_formats_reach_a_decoder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from PIL import EpsImagePlugin

    def ghostscript(*args: object, **kwargs: object) -> None:
        raise AssertionError("an EPS body from the network reached Ghostscript")

    monkeypatch.setattr(EpsImagePlugin, "Ghostscript", ghostscript)
    eps = b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 10 10\nnewpath 0 0 moveto 10 10 lineto stroke\n%%EOF\n"
    with pytest.raises(ImageRejected, match="not an image"):
        save_normalised(eps, tmp_path / "x.jpg", max_side=64, max_pixels=10**7, quality=90)
    buffer = io.BytesIO()
    Image.new("RGB", (8, 8)).save(buffer, "ICO")
    with pytest.raises(ImageRejected, match="not an image"):
        save_normalised(buffer.getvalue(), tmp_path / "x.jpg", max_side=64, max_pixels=10**7, quality=90)


def test_max_pixels_is_ours_and_pillows_process_wide_limit_is_left_alone(
    sandbox: Sandbox, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    download_module = importlib.import_module("europeana_imgcls.acquisition.download")  # the module, not the function
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)  # Pillow refuses above 2,000 pixels
    buffer = io.BytesIO()
    Image.new("RGB", (60, 50), (10, 20, 30)).save(buffer, "PNG")  # 3,000 pixels: within our max_pixels
    assert save_normalised(buffer.getvalue(), tmp_path / "x.jpg", max_side=0, max_pixels=10**4, quality=90) == (60, 50)
    with pytest.raises(ImageRejected, match="too many pixels"):
        save_normalised(buffer.getvalue(), tmp_path / "y.jpg", max_side=0, max_pixels=2999, quality=90)

    seen: list[int | None] = []
    real = download_module.save_normalised

    def watching(*args: object, **kwargs: object) -> tuple[int, int]:
        seen.append(Image.MAX_IMAGE_PIXELS)  # what other threads of the process see during a download
        return real(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(download_module, "save_normalised", watching)
    table = tmp_path / "t.csv"
    pl.DataFrame(_good_rows(sandbox)[:2]).write_csv(table)
    assert download(_config(table, tmp_path / "img", max_pixels=10**6)).saved == 2
    assert seen == [1000, 1000]


def test_a_decode_that_would_exceed_the_memory_budget_is_a_failure_row(tmp_path: Path) -> None:
    from europeana_imgcls.acquisition.images import DecodeBudget

    buffer = io.BytesIO()
    Image.new("L", (6000, 5000), 200).save(buffer, "PNG")  # 30 MP in a few kB: decoding takes ~200 MB
    assert len(buffer.getvalue()) < 200_000
    with pytest.raises(ImageRejected, match="memory budget"):
        save_normalised(
            buffer.getvalue(),
            tmp_path / "x.jpg",
            max_side=64,
            max_pixels=10**8,
            quality=90,
            budget=DecodeBudget(64 << 20),
        )
    save_normalised(
        buffer.getvalue(), tmp_path / "x.jpg", max_side=64, max_pixels=10**8, quality=90, budget=DecodeBudget(512 << 20)
    )
    with Image.open(tmp_path / "x.jpg") as saved:
        assert saved.size == (64, 53)


def test_concurrent_decodes_share_one_budget() -> None:
    from europeana_imgcls.acquisition.images import DecodeBudget

    budget = DecodeBudget(100)
    peak, lock = [0], threading.Lock()

    def work() -> None:
        with budget.hold(60):
            with lock:
                peak[0] = max(peak[0], budget.used)
            time.sleep(0.05)

    threads = [threading.Thread(target=work) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert peak[0] == 60 and budget.used == 0  # never two 60-byte decodes in a 100-byte budget


# ---------------------------------------------------------------------------------------------
# Rule 7: names and races


def test_threads_saving_one_target_do_not_trip_over_each_other(tmp_path: Path) -> None:
    buffer = io.BytesIO()
    Image.new("RGB", (64, 48), (10, 200, 30)).save(buffer, "JPEG")
    errors: list[BaseException] = []

    def save() -> None:
        try:
            save_normalised(buffer.getvalue(), tmp_path / "same.jpg", max_side=32, max_pixels=10**6, quality=90)
        except BaseException as exc:  # noqa: BLE001 - the test collects whatever a thread raises
            errors.append(exc)

    threads = [threading.Thread(target=save) for _ in range(30)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    with Image.open(tmp_path / "same.jpg") as saved:
        assert saved.size == (32, 24)
    assert [p.name for p in tmp_path.iterdir()] == ["same.jpg"]


# ---------------------------------------------------------------------------------------------
# Rule 9: smaller ones


def test_a_filesystem_error_is_one_line(tmp_path: Path) -> None:
    table = tmp_path / "t.csv"
    table.write_text("ID,category\n/1/a,map\n")
    result = CliRunner().invoke(app, ["stats", str(table), "-o", "/dev/null/x.json"])
    assert result.exit_code == 1 and result.stderr.startswith("eic: error: ")
    assert len(result.stderr.strip().splitlines()) == 1 and "Traceback" not in result.stderr


# ---------------------------------------------------------------------------------------------
# Rules 6 and 8: a resumed run is the same run; a run that would die late for a reason known early does not start


def test_train_resume_refuses_another_run(tmp_path: Path) -> None:
    from europeana_imgcls import train
    from europeana_imgcls.core.errors import DatasetError

    from .support import config, make_folders

    data = make_folders(tmp_path / "data", per_class=6, size=32)
    other = make_folders(tmp_path / "other", per_class=6, size=32)
    run = tmp_path / "run"
    train(config(data, run, epochs=1, crossvalidation=False, gradcam_images=0))
    with pytest.raises(DatasetError, match="arch 'tiny' there, 'resnet34' now"):
        train(config(data, run, epochs=1, crossvalidation=False, gradcam_images=0, arch="resnet34", resume=True))
    with pytest.raises(DatasetError, match="data_dir"):
        train(config(other, run, epochs=1, crossvalidation=False, gradcam_images=0, resume=True))
    train(config(data, run, epochs=1, crossvalidation=False, gradcam_images=0, resume=True))  # the same run goes on


def test_a_class_held_by_one_provider_is_refused_before_training(tmp_path: Path) -> None:
    from europeana_imgcls.cli.app import app

    from .support import make_folders

    data = make_folders(tmp_path / "data", per_class=9, size=32)
    for path in (data / "specimen").iterdir():  # every specimen from one provider
        path.rename(path.with_name("[ph]7777[ph]" + path.name.split("[ph]")[-1]))
    result = CliRunner().invoke(
        app,
        [
            "train",
            str(data),
            "-o",
            str(tmp_path / "run"),
            "--group-by-provider",
            "--folds",
            "3",
            "--weights",
            "none",
            "--epochs",
            "1",
            "--quiet",
        ],
    )
    assert result.exit_code == 1, result.stderr
    assert "class 'specimen'" in result.stderr and "7777" in result.stderr and "--group-by-provider" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert not list((tmp_path / "run").glob("split_*/model.pt"))


def test_a_split_whose_validation_loss_is_never_finite_keeps_a_model(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import math

    from europeana_imgcls.modelling import training

    from .support import config, make_folders

    real = training.evaluate_loader

    def nan_loss(*args: object, **kwargs: object) -> training.Evaluation:
        result = real(*args, **kwargs)
        result.loss = math.nan
        return result

    monkeypatch.setattr(training, "evaluate_loader", nan_loss)
    data = make_folders(tmp_path / "data", per_class=6, size=32)
    report = training.train(config(data, tmp_path / "run", epochs=2, crossvalidation=False, gradcam_images=0))
    assert (tmp_path / "run" / "split_0" / "model.pt").is_file() and report.splits[0].metrics

    def refuse(constant: str) -> None:
        raise AssertionError(f"{constant} is not JSON")

    for path in (tmp_path / "run").rglob("*.json"):  # what other tools read: no NaN, which only Python accepts
        json.loads(path.read_text(), parse_constant=refuse)
    assert json.loads((tmp_path / "run" / "split_0" / "metrics.json").read_text())["best_val_loss"] is None
    assert "nan" not in (tmp_path / "run" / "MODEL_CARD.md").read_text().lower()


# ---------------------------------------------------------------------------------------------
# Properties of the pure parts: URLs and tables of any shape


@given(st.one_of(st.text(max_size=60), st.from_regex(r"https?://[^\s]{0,40}", fullmatch=True)))
@settings(max_examples=500, deadline=None)
def test_any_url_string_is_fetchable_or_has_a_reason(url: str) -> None:
    import httpx

    from europeana_imgcls.acquisition.download import url_problem

    problem = url_problem(url)
    if problem is None:
        assert httpx.URL(url).scheme in ("http", "https") and httpx.URL(url).host
    else:
        assert problem.startswith(("not an http(s) URL", "invalid URL"))


CELLS = st.one_of(
    st.just(""),
    st.just("  "),
    st.sampled_from(["map", " map ", "painting", "a/b", ".."]),
    st.text(st.characters(min_codepoint=32, max_codepoint=0x2FF, exclude_characters='"\x85\xa0'), max_size=12),
)


@given(st.lists(st.tuples(CELLS, CELLS, CELLS), max_size=25))
@settings(max_examples=60, deadline=None)
def test_every_row_of_any_table_is_a_job_or_a_skip_with_a_reason(rows: list[tuple[str, str, str]]) -> None:
    import tempfile

    from europeana_imgcls.acquisition.download import Job, _jobs

    with tempfile.TemporaryDirectory() as tmp:
        table = Path(tmp) / "t.csv"
        with table.open("w", newline="", encoding="utf-8") as handle:
            writer = csv.writer(handle)
            writer.writerow(["ID", "URL", "category", ""])  # and an unnamed column, as spreadsheets leave
            writer.writerows([*row, ""] for row in rows)
        outcomes = list(_jobs(DownloadConfig(table=table, output_dir=Path(tmp) / "img")))
    non_blank = [r for r in rows if any(cell.strip() for cell in r)]
    assert len(outcomes) == len(non_blank)
    jobs = [o for o in outcomes if isinstance(o, Job)]
    assert len({job.id for job in jobs}) == len(jobs)  # one job per record
    assert all(isinstance(o, Job) or o for o in outcomes)


def test_a_run_that_failed_before_its_first_epoch_can_be_retried(tmp_path: Path) -> None:
    from europeana_imgcls import train
    from europeana_imgcls.core.errors import ModelError

    from .support import config, make_folders

    data = make_folders(tmp_path / "data", per_class=6, size=32)
    with pytest.raises(ModelError, match="offline"):  # torchvision's weights cannot be fetched here
        train(config(data, tmp_path / "run", arch="resnet18", weights="imagenet", epochs=1, crossvalidation=False))
    report = train(config(data, tmp_path / "run", epochs=1, crossvalidation=False, gradcam_images=0))
    assert report.splits  # the natural retry with --weights none is not refused


# ---------------------------------------------------------------------------------------------
# Found in review: resumes, encodings and paths


def test_a_resumed_probe_run_keeps_every_split_loadable(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from europeana_imgcls import EvaluateConfig, evaluate, train
    from europeana_imgcls.modelling import heads

    from .support import config, make_folders

    data = make_folders(tmp_path / "data", per_class=6, size=32)
    real = heads._split

    def stop_at_split_one(*args: object, **kwargs: object) -> object:
        if args[4].folder.index == 1:  # where the split writes
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(heads, "_split", stop_at_split_one)
    probe = dict(method="linear-probe", arch="tiny", gradcam_images=0)
    with pytest.raises(KeyboardInterrupt):
        train(config(data, tmp_path / "run", **probe))
    monkeypatch.setattr(heads, "_split", real)
    monkeypatch.chdir(tmp_path)  # and the data folder named another way
    train(config(Path("data"), tmp_path / "run", resume=True, **probe))
    report = evaluate(EvaluateConfig(run=tmp_path / "run", eval_dir=data, output_dir=tmp_path / "ev", gallery=0))
    assert len(report.splits) == 3  # split 0, fitted before the interruption, still loads


def test_embed_resume_refuses_another_folder(tmp_path: Path) -> None:
    from europeana_imgcls.core.config import EmbedConfig
    from europeana_imgcls.core.errors import DatasetError
    from europeana_imgcls.modelling.embedding import embed

    from .support import make_folders

    first = make_folders(tmp_path / "first", per_class=3, size=32)
    other = make_folders(tmp_path / "other", per_class=3, size=32)
    out = tmp_path / "e.parquet"
    common = dict(output=out, arch="tiny", weights="none", input_size=32, quiet=True)
    embed(EmbedConfig(data_dir=first, shard="0/2", **common))  # a shard started on the first folder
    with pytest.raises(DatasetError, match=r"data_dir: \".*first\" then, \".*other\" now"):
        embed(EmbedConfig(data_dir=other, resume=True, **common))
    merged = embed(EmbedConfig(data_dir=first, resume=True, **common))
    assert merged.already_done + merged.embedded == 9 and merged.already_done > 0


# ---------------------------------------------------------------------------------------------
# Round two: a user's path is a path, never a pattern


def test_a_full_disk_is_not_a_records_failure_a_rerun_tries_again(
    sandbox: Sandbox, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Images that failed with "No space left on device" were skipped as known failures by the re-run the docs
    recommend: a local write error must not stick like a 404."""
    import errno

    from europeana_imgcls.acquisition import download as downloading

    rows = _good_rows(sandbox)[:4]
    table = tmp_path / "t.csv"
    pl.DataFrame(rows).write_csv(table)
    out = tmp_path / "img"
    real = downloading.save_normalised

    def full(*args: object, **kwargs: object) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(downloading, "save_normalised", full)
    with pytest.raises(DatasetError, match="No space left on device"):  # nothing saved, one local cause: said
        download(_config(table, out))
    assert all("cannot write" in e for e in _failures(out).values())  # listed for people to see...
    monkeypatch.setattr(downloading, "save_normalised", real)
    again = download(_config(table, out))
    assert again.saved == 4 and again.known_failures == 0 and not _failures(out)  # ...but not known: fetched


def test_a_thumbnail_cdn_out_of_reach_says_which_setting_and_is_retried(sandbox: Sandbox, tmp_path: Path) -> None:
    """Without EUROPEANA_THUMBNAIL_URL, a sandbox download asked the real CDN: every record failed with one cause,
    the run said "0 saved" and exited 0, and a plain re-run skipped them all as known failures."""
    rows = _good_rows(sandbox)[:4]
    table = tmp_path / "t.csv"
    pl.DataFrame(rows).write_csv(table)
    out = tmp_path / "img"
    result = CliRunner().invoke(
        app,
        [
            "download",
            str(table),
            "-o",
            str(out),
            "--source",
            "thumbnail",
            "--quiet",
            "--retries",
            "0",
            "--thumbnail-url",
            "http://127.0.0.1:9/thumbnail/v3",
        ],
    )
    assert result.exit_code == 1 and "--thumbnail-url" in result.stderr and "EUROPEANA_THUMBNAIL_URL" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    again = download(_config(table, out, source="thumbnail", thumbnail_url=f"{sandbox.base_url}/thumbnail/v3"))
    assert again.saved == 4 and again.known_failures == 0


def test_a_redirect_to_a_file_url_is_one_failure_never_retried(tmp_path: Path) -> None:
    asked = []

    class ToFile(SimpleHTTPRequestHandler):
        def do_GET(self) -> None:
            asked.append(self.path)
            self.send_response(302)
            self.send_header("Location", "file:///etc/passwd")
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), ToFile)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        table = tmp_path / "t.csv"
        table.write_text(f"category,ID,URL\nmap,/1/a,http://127.0.0.1:{server.server_address[1]}/a.jpg\n")
        report = download(_config(table, tmp_path / "img", retries=3))
    finally:
        server.shutdown()
        server.server_close()
    assert report.failed == 1 and len(asked) == 1  # the record's own failure: not a connection error, not retried
    assert _failures(tmp_path / "img")["/1/a"] == "redirected to a URL that is not http(s)"
