"""Fault injection: eic touches only what it wrote, loses no record without a word, and keeps what a run
knew before it started, however the run ends (docs/reliability.md, rules 1-3)."""

from __future__ import annotations

import csv
import functools
import io
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import polars as pl
import pytest
from PIL import Image
from typer.testing import CliRunner

from europeana_imgcls import DownloadConfig, download
from europeana_imgcls.cli import app
from europeana_imgcls.download import Fetcher, file_name
from europeana_imgcls.images import ImageRejected, save_normalised
from europeana_imgcls.sandbox import Sandbox
from europeana_imgcls.tables import atomic_path, is_own_temp, temp_path

from .conftest import VOCAB

ROOT = Path(__file__).resolve().parents[1]


def _config(table: Path, out: Path, **kw: object) -> DownloadConfig:
    settings: dict[str, object] = dict(table=table, output_dir=out, quiet=True, timeout=3.0, retries=0,
                                       max_side=64, concurrency=4, per_host=4)
    settings.update(kw)
    return DownloadConfig(**settings)  # type: ignore[arg-type]


def _good_rows(sb: Sandbox, multi: bool = False) -> list[dict[str, str]]:
    records = [r for r in sb.catalogue if r.type == "IMAGE" and r.has_url and not r.fault
               and (len(r.labels) > 1) == multi]
    return [{"category": " ".join(r.labels), "ID": r.id, "URL": sb.image_url(r)} for r in records]


def _failures(out: Path) -> dict[str, str]:
    with (out / "failures.csv").open(newline="", encoding="utf-8") as handle:
        return {row["ID"]: row["error"] for row in csv.DictReader(handle)}


def _cli(*args: str) -> subprocess.Popen[bytes]:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.Popen([sys.executable, "-m", "europeana_imgcls", *args], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def _interrupt_after(proc: subprocess.Popen[bytes], seconds: float) -> str:
    time.sleep(seconds)
    assert proc.poll() is None, "the run ended before it could be interrupted"
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
    ours = [temp_path(out / "failures.csv"), out / rows[0]["category"] / f".{file_name('/1/a')}.4242.part",
            out / ".labels.csv.part"]
    for path in theirs + ours:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"keep me")
    report = download(_config(table, out))
    assert report.saved == 3
    assert all(p.read_bytes() == b"keep me" for p in theirs)
    assert not any(p.exists() for p in ours)


def test_temporary_names_are_unique_per_call_and_recognised() -> None:
    target = Path("/x/labels.csv")
    names = {temp_path(target).name for _ in range(1000)}
    assert len(names) == 1000 and all(is_own_temp(n) for n in names)
    assert not any(is_own_temp(n) for n in ("movie.mkv.part", ".movie.mkv.part", "labels.csv", ".x.part"))


def test_atomic_writes_follow_the_umask(tmp_path: Path) -> None:
    old = os.umask(0o022)
    try:
        with atomic_path(tmp_path / "out.txt") as tmp:
            tmp.write_text("x")
    finally:
        os.umask(old)
    assert (tmp_path / "out.txt").stat().st_mode & 0o777 == 0o644


@pytest.mark.parametrize("command", ["subtract", "stats"])
def test_table_outputs_are_refused_unless_overwrite(command: str, tmp_path: Path) -> None:
    table = tmp_path / "t.csv"
    table.write_text("ID,category,URL\n/1/a,map,http://127.0.0.1:9/a.jpg\n")
    output = tmp_path / ("out.csv" if command == "subtract" else "out.json")
    output.write_text("precious")
    args = ["subtract", str(table), str(table)] if command == "subtract" else ["stats", str(table)]
    result = CliRunner().invoke(app, [*args, "-o", str(output)])
    assert result.exit_code == 1 and "already exists" in result.stderr and "--overwrite" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert output.read_text() == "precious"
    result = CliRunner().invoke(app, [*args, "-o", str(output), "--overwrite"])
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

PILLOW_MODES = ["1", "L", "P", "RGB", "RGBA", "CMYK", "YCbCr", "LAB", "I", "F", "LA", "PA", "I;16", "I;16B",
                "I;16L", "RGBX"]


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
        file_host: tuple[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
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


def test_ctrl_c_during_a_retry_keeps_every_earlier_failure(tmp_path: Path) -> None:
    with Sandbox(VOCAB, per_level=10, stall_seconds=30) as sb:
        good = _good_rows(sb)[:3]
        stalls = [{"category": "map", "ID": f"/stall/{i}", "URL": f"{sb.base_url}/faults/stall/{i}"}
                  for i in range(6)]
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
        proc = _cli("download", str(table), "-o", str(out), "--retry-failed", "--timeout", "25", "--retries", "0",
                    "--concurrency", "2", "--quiet")
        err = _interrupt_after(proc, 4.0)
        assert proc.returncode != 0
        assert "Task exception was never retrieved" not in err
        assert set(_failures(out)) == set(before)
        assert not (out / ".failures.journal.csv").exists()


def test_ctrl_c_during_a_multi_label_rerun_keeps_every_label_row(tmp_path: Path) -> None:
    with Sandbox(VOCAB, per_level=2, stall_seconds=30) as sb:
        good = _good_rows(sb, multi=True)
        table = tmp_path / "t.csv"
        pl.DataFrame(good).write_csv(table)
        out = tmp_path / "img"
        download(_config(table, out, mode="multi-label"))
        labels_before = pl.read_csv(out / "labels.csv")
        assert labels_before.height == len(good)
        stalls = [{"category": "map painting", "ID": f"/stall/{i}", "URL": f"{sb.base_url}/faults/stall/{i}"}
                  for i in range(8)]
        pl.DataFrame(stalls + good).write_csv(table)
        proc = _cli("download", str(table), "-o", str(out), "--mode", "multi-label", "--timeout", "25",
                    "--retries", "0", "--concurrency", "1", "--quiet")
        _interrupt_after(proc, 4.0)
        labels_after = pl.read_csv(out / "labels.csv")
        assert labels_after.sort("ID").equals(labels_before.sort("ID"))
        saved = {p.name for p in out.glob("*.jpg")}
        assert saved == set(labels_after["file"])


def test_sigkill_then_rerun_keeps_failures_and_labels(tmp_path: Path) -> None:
    with Sandbox(VOCAB, per_level=2, stall_seconds=30) as sb:
        good = _good_rows(sb, multi=True)
        dead = [{"category": "map", "ID": f"/dead/{i}", "URL": f"{sb.base_url}/faults/404/{i}"} for i in range(3)]
        stalls = [{"category": "map", "ID": f"/stall/{i}", "URL": f"{sb.base_url}/faults/stall/{i}"}
                  for i in range(4)]
        table = tmp_path / "t.csv"
        pl.DataFrame(dead + good + stalls).write_csv(table)
        out = tmp_path / "img"
        proc = _cli("download", str(table), "-o", str(out), "--mode", "multi-label", "--timeout", "25",
                    "--retries", "0", "--concurrency", "2", "--quiet")
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and len(list(out.glob("*.jpg"))) < len(good):
            time.sleep(0.05)
        time.sleep(0.5)
        proc.kill()
        proc.communicate()
        report = download(_config(table, out, mode="multi-label", timeout=0.5))
        assert report.complete and report.accounted == report.total == len(table.read_text().splitlines()) - 1
        assert {r["ID"] for r in dead + stalls} == set(_failures(out))
        assert set(pl.read_csv(out / "labels.csv")["ID"]) == {r["ID"] for r in good}


# ---------------------------------------------------------------------------------------------
# Rule 4: the API key is sent only to the origin the user configured


def test_api_key_never_follows_a_redirect_to_another_origin(caplog: pytest.LogCaptureFixture) -> None:
    import httpx

    from europeana_imgcls.search_api import SearchClient

    seen: dict[str, str | None] = {}

    def handler(request: httpx.Request) -> httpx.Response:
        seen[f"{request.url.host}:{request.url.port}"] = request.headers.get("X-Api-Key")
        if request.url.host == "api.test" and request.url.port is None:
            return httpx.Response(302, headers={"Location": "https://api.test:8443/elsewhere"})
        if request.url.host == "api.test":
            return httpx.Response(302, headers={"Location": "https://evil.test/search.json"})
        return httpx.Response(200, json={"success": True, "items": [], "totalResults": 0, "itemsCount": 0})

    with SearchClient("https://api.test/record/v2/search.json", "secret-key", retries=0,
                      transport=httpx.MockTransport(handler)) as client:
        client.search([("query", "*")])
    assert seen == {"api.test:None": "secret-key", "api.test:8443": None, "evil.test:None": None}
    assert not caplog.records
    with caplog.at_level("WARNING"):
        SearchClient("http://api.example.org/search.json", "k").close()
        SearchClient("http://127.0.0.1:8642/search.json", "k").close()
    assert [r.getMessage() for r in caplog.records] == [
        "the API key travels unencrypted to api.example.org: use an https:// API URL"]
