"""eic download against the sandbox image host: exact files, exact failures, kill and resume."""

from __future__ import annotations

import csv
import functools
import hashlib
import importlib
import io
import json
import os
import re
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
from europeana_imgcls.core.errors import ConfigError, DatasetError
from europeana_imgcls.core.sharding import Shard
from europeana_imgcls.core.tables import temp_path
from europeana_imgcls.europeana.sandbox import FAULTS, Knobs, Sandbox

from ..support import (
    _good_rows,
    assert_one_line_error,
    eic,
    examples,
    looping_originals_table,
    sandbox_config,
    sandbox_records,
    sandbox_table,
    serving,
)
from ..support import download_config as config

EXPECTED_ERROR = {
    "404": "HTTP 404",
    "html": "not an image (text/html)",
    "truncated": "truncated",
    "bomb": "too many pixels (20000x20000)",
    "endless": "too many bytes",
    "stall": "timeout",
    "redirect-loop": "redirect loop",
    "empty": "empty",
}


@pytest.fixture
def faulty() -> Iterator[Sandbox]:
    # A stalled answer is held until the sandbox stops: it times out however slow or fast the machine. Every good
    # image (and its preview) is drawn before the client asks, as a real host's files are made before: served from
    # memory, the slowest of them took 0.09 s with three busy processes on two cores (drawn while the client waited,
    # 1.2 s), so that a timeout of FAULTY_TIMEOUT, which each stalled record waits out once an attempt, never takes
    # a good one.
    with Sandbox(
        sandbox_config(per_level=10, bad_every=5), Knobs(variant_every=4, image_fail_every=7, stall_seconds=120)
    ) as sb:
        for record in sandbox_records(sb):  # a bad record's preview is good (--fallback-preview)
            sb.image_bytes(record.serial, max_side=400 if record.fault else 0)
        yield sb


FAULTY_TIMEOUT = 2.0


def faulty_config(table: Path, out: Path, **kw) -> DownloadConfig:
    return config(table, out, **{"timeout": FAULTY_TIMEOUT, **kw})


def read_failures(out: Path) -> dict[str, str]:
    with (out / "failures.csv").open(newline="") as handle:
        return {row["ID"]: row["error"] for row in csv.DictReader(handle)}


@pytest.mark.waits
@pytest.mark.slow(seconds=7)
def test_every_good_image_is_saved_clean_and_every_bad_one_is_a_failure_row(faulty: Sandbox, tmp_path: Path) -> None:
    table = sandbox_table(faulty, tmp_path / "t.csv")
    out = tmp_path / "img"
    report = download(faulty_config(table, out))
    records = sandbox_records(faulty)
    bad = {r.id: r.fault for r in records if r.fault}
    assert set(bad.values()) == set(FAULTS)
    failures = read_failures(out)
    assert set(failures) == set(bad)
    for record_id, fault in bad.items():
        assert failures[record_id].startswith(EXPECTED_ERROR[fault]), (fault, failures[record_id])
    assert report.failed == len(bad) and report.saved == len(records) - len(bad)
    variants = set()
    for record in records:
        path = out / record.labels[0] / file_name(record.id)
        assert path.exists() != bool(record.fault), record
        if record.fault:
            continue
        with Image.open(path) as saved:
            assert saved.format == "JPEG" and saved.mode == "RGB"
            assert max(saved.size) == 128
            if record.variant in (None, "exif-rotated", "large"):
                variants.add(record.variant)
                truth = faulty._drawn(record.serial, saved.size if record.variant != "large" else (1600, 1200))
                truth = truth.resize(saved.size)
                diff = np.abs(np.asarray(saved, np.float32) - np.asarray(truth, np.float32)).mean()
                assert diff < 30, (record.variant, diff)  # same picture, upright
    assert {"exif-rotated", "large"} <= variants
    assert not list(out.rglob("*.part")) and not list(out.glob(".journal/*.ndjson"))


@pytest.mark.waits
@pytest.mark.slow(seconds=8)
def test_rerun_fetches_nothing_new_and_retry_failed_only_the_failures(faulty: Sandbox, tmp_path: Path) -> None:
    table = sandbox_table(faulty, tmp_path / "t.csv")
    out = tmp_path / "img"
    first = download(faulty_config(table, out))
    failed_first = read_failures(out)
    hits = dict(faulty.hits)
    again = download(faulty_config(table, out))
    assert dict(faulty.hits) == hits  # not one request
    assert again.saved == 0 and again.already_saved == first.saved
    assert again.known_failures == first.failed and read_failures(out) == failed_first
    retried = download(faulty_config(table, out, retry_failed=True, retries=0))
    new_paths = {p for p, n in faulty.hits.items() if n != hits.get(p, 0)}
    assert new_paths and all(p.startswith("/faults/") for p in new_paths)
    assert retried.failed == first.failed and set(read_failures(out)) == set(failed_first)
    assert len(new_paths) == len(failed_first)  # each known failure asked for again, nothing else


@pytest.mark.waits
@pytest.mark.slow(seconds=5)
def test_fallback_preview_rescues_failed_records(faulty: Sandbox, tmp_path: Path) -> None:
    table = sandbox_table(faulty, tmp_path / "t.csv")
    out = tmp_path / "img"
    report = download(faulty_config(table, out, fallback_preview=True))
    assert report.failed == 0
    faults = [r for r in sandbox_records(faulty) if r.fault]
    assert faulty.count("/thumbnail/") == len(faults)
    for record in faults:
        with Image.open(out / record.labels[0] / file_name(record.id)) as saved:
            assert saved.mode == "RGB" and max(saved.size) == 128


@pytest.mark.waits
@pytest.mark.slow(seconds=4)
def test_a_killed_run_resumes_to_a_complete_folder(tmp_path: Path) -> None:
    # 84 records (7 kinds of bad answer among them): the first 40 answered, the rest for the resumed run.
    with Sandbox(sandbox_config(per_level=10, bad_every=11), Knobs(stall_seconds=120)) as sb:
        table = sandbox_table(sb, tmp_path / "t.csv")
        out = tmp_path / "img"
        env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
        sb.hold_after(40)  # the run is surely stopped mid-way: the 41st image answer waits
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "europeana_imgcls",
                "download",
                str(table),
                "-o",
                str(out),
                "--quiet",
                "--concurrency",
                "2",
                "--max-side",
                "0",
                "--timeout",
                "6",
                "--retries",
                "0",
            ],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        assert sb.wait_until_held(1), "the download never reached the held answers"
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        sb.release()
        partial = len(list(out.rglob("*.jpg")))
        records = sandbox_records(sb)
        assert 0 < partial < len(records)
        report = download(config(table, out, max_side=0, timeout=2, retries=0))
        good = [r for r in records if not r.fault]
        for record in good:
            path = out / record.labels[0] / file_name(record.id)
            with Image.open(path) as saved:
                saved.load()  # complete, decodable
        assert len(list(out.rglob("*.jpg"))) == len(good)
        assert not list(out.rglob("*.part"))
        assert set(read_failures(out)) == {r.id for r in records if r.fault}
        assert report.already_saved >= partial - 2


@pytest.mark.slow(seconds=2)  # a download end to end
def test_multi_label_layout_writes_labels_csv(tmp_path: Path) -> None:
    with Sandbox(sandbox_config(per_level=2)) as sb:
        table = sandbox_table(sb, tmp_path / "t.parquet".replace(".parquet", ".csv"), multi=True)
        out = tmp_path / "img"
        download(config(table, out, mode="multi-label"))
        records = sandbox_records(sb, multi=True)
    labels = pl.read_csv(out / "labels.csv")
    assert labels.columns == ["ID", "file", "category"]
    assert dict(zip(labels["ID"], labels["category"], strict=True)) == {r.id: " ".join(r.labels) for r in records}
    assert all((out / name).is_file() for name in labels["file"])
    assert not [p for p in out.iterdir() if p.is_dir() and p.name != ".journal"]  # one folder, and the journal
    download(config(table, out, mode="multi-label"))  # a re-run keeps every label row
    assert pl.read_csv(out / "labels.csv").height == len(records)


def test_names_and_bad_tables(tmp_path: Path) -> None:
    assert file_name("/2058612/object_CHB_61df") == "[ph]2058612[ph]object_CHB_61df.jpg"
    long_name = file_name("/1/" + "x" * 400)
    assert len(long_name) == 47 and long_name.startswith("[h]") and long_name.endswith(".jpg")
    (tmp_path / "escape.csv").write_text("category,ID,URL\n../../etc,/1/a,http://127.0.0.1:9/a.jpg\n")
    escaped = download(config(tmp_path / "escape.csv", tmp_path / "img"))  # a row, not the run, is refused
    assert escaped.skipped == {"category that cannot be a folder name": 1} and escaped.accounted == 1
    assert not (tmp_path / "etc").exists()
    (tmp_path / "nourl.csv").write_text("category,ID\nmap,/1/a\n")
    result = CliRunner().invoke(app, ["download", str(tmp_path / "nourl.csv"), "-o", str(tmp_path / "img")])
    assert result.exit_code == 1 and "missing column(s) URL" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    result = CliRunner().invoke(app, ["download", str(tmp_path / "none.csv"), "-o", str(tmp_path / "img")])
    assert result.exit_code == 1 and "no such file or folder" in result.stderr


def test_rows_without_url_and_spaces_in_categories(sandbox: Sandbox, tmp_path: Path) -> None:
    record = sandbox_records(sandbox)[0]
    (tmp_path / "t.csv").write_text(
        f"category,ID,URL\n {record.labels[0]} ,{record.id},{sandbox.image_url(record)}\nmap,/1/nourl,\n"
    )
    report = download(config(tmp_path / "t.csv", tmp_path / "img"))
    assert (tmp_path / "img" / record.labels[0] / file_name(record.id)).is_file()
    assert read_failures(tmp_path / "img") == {"/1/nourl": "no URL"} and report.saved == 1


# ---------------------------------------------------------------------------------------------
# Hostile folders and files: nothing outside the folder is touched, nothing hangs, one line at worst


@pytest.mark.slow  # two downloads racing in two threads, the sandbox holding answers: 2.5 s
def test_a_shard_and_an_unsharded_download_of_one_folder_exclude_each_other(tmp_path: Path) -> None:
    import threading

    with Sandbox(sandbox_config(per_level=4)) as sb:
        table = sandbox_table(sb, tmp_path / "t.csv")
        records = len(sandbox_records(sb))
        for k, (first, second) in enumerate(((None, "0/2"), ("1/2", None))):
            out, asked_before = tmp_path / f"img{k}", sb.count("/images/")
            sb.hold_after(1)  # the first run is surely still at work when the second starts
            errors: list[BaseException] = []

            def run_first(shard: str | None = first, out: Path = out, errors: list[BaseException] = errors) -> None:
                try:
                    download(config(table, out, shard=shard, timeout=60))
                except BaseException as exc:  # reported by the assertion below
                    errors.append(exc)

            running = threading.Thread(target=run_first)
            running.start()
            try:
                assert sb.wait_until_held(1), "the first download never reached the held answers"
                with pytest.raises(DatasetError, match="being written by") as error:
                    download(config(table, out, shard=second))
                assert "\n" not in str(error.value)
            finally:
                sb.release()
                running.join(60)
            assert not errors
            merged = download(config(table, out))
            assert merged.saved + merged.already_saved == records
            assert sb.count("/images/") - asked_before == records  # no record fetched twice


def test_a_damaged_failures_csv_is_read_for_what_it_holds_and_said(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with Sandbox(sandbox_config(per_level=2)) as sb:
        table = sandbox_table(sb, tmp_path / "t.csv")
        dead = [f"/dead/{n}ü" for n in range(3)]
        with table.open("a", encoding="utf-8") as handle:
            handle.writelines(f"map,{d},{sb.base_url}/faults/404/{n},\n" for n, d in enumerate(dead))
        out = tmp_path / "img"
        runner = CliRunner()
        assert runner.invoke(app, ["download", str(table), "-o", str(out), "--quiet"]).exit_code == 0
        listed = (out / "failures.csv").read_bytes()
        (out / "failures.csv").write_bytes(listed[: listed.rindex("ü".encode()) + 1])  # cut inside the last ü
        asked = sb.count("/faults/")
        result = runner.invoke(app, ["download", str(table), "-o", str(out), "--quiet"])
        assert result.exit_code == 0 and "Traceback" not in result.stderr, result.stderr
        assert sb.count("/faults/") == asked + 1  # only the record of the damaged row is tried again
    assert "failures.csv" in caplog.text and "damaged" in caplog.text  # said
    assert set(read_failures(out)) == set(dead)


@pytest.mark.parametrize(
    "line",
    ['["/1/a",5]', '["/1/a","abc"]', '["/1/a",{"error":5}]', '["/1/a",{"file":["x"]}]', '["/1/a",{}]', "[]"],
)
def test_a_journal_line_of_the_wrong_shape_is_dropped_and_said(
    tmp_path: Path, line: str, caplog: pytest.LogCaptureFixture
) -> None:
    import json

    with Sandbox(sandbox_config(per_level=2)) as sb:
        table = sandbox_table(sb, tmp_path / "t.csv")
        record = sandbox_records(sb)[0]
        known = record.id
        out = tmp_path / "img"
        (out / ".journal").mkdir(parents=True)
        whole = json.dumps([known, {"URL": sb.image_url(record), "error": "HTTP 404"}])  # of the table's URL
        (out / ".journal" / "part.ndjson").write_text(f"{line}\n{whole}\n")
        result = CliRunner().invoke(app, ["download", str(table), "-o", str(out), "--quiet"])
    assert result.exit_code == 0 and "Traceback" not in result.stderr, result.stderr
    assert "skipped a damaged record" in caplog.text
    assert read_failures(out) == {known: "HTTP 404"}  # what the journal knew whole is kept


def test_a_museum_table_without_eics_columns_is_told_about_columns(tmp_path: Path) -> None:
    table = tmp_path / "museum.csv"
    table.write_text("object_number,image\nRM-1,http://127.0.0.1:9/a.jpg\n")
    result = eic("download", table, "-o", tmp_path / "img", "--quiet")
    assert_one_line_error(result, "missing column(s) ID, URL, category (has: object_number, image)")
    assert "--columns ID=your_column,URL=your_column,category=your_column" in result.stderr
    mapped = eic("download", table, "-o", tmp_path / "img", "--quiet", "--columns", "ID=object_number,URL=image")
    assert_one_line_error(mapped, "missing column(s) category")


# ---------------------------------------------------------------------------------------------
# Rule 1: eic removes only the temporary files it names itself; existing outputs are refused


ROOT = Path(__file__).resolve().parents[2]


def _config(table: Path, out: Path, **kw: object) -> DownloadConfig:
    settings: dict[str, object] = dict(
        table=table, output_dir=out, quiet=True, timeout=3.0, retries=0, max_side=64, concurrency=4, per_host=4
    )
    settings.update(kw)
    return DownloadConfig(**settings)  # type: ignore[arg-type]


def _failures(path: Path) -> dict[str, str]:
    """failures.csv's reason per record ID: ``path`` is the file, or the download folder that holds it."""
    if path.is_dir():
        path = path / "failures.csv"
    with path.open(newline="", encoding="utf-8") as handle:
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


# ---------------------------------------------------------------------------------------------
# Rule 2: every row ends saved, already there, a known failure, a new failure or skipped, with a reason


@pytest.fixture
def file_host(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    """A plain static file server on 127.0.0.1 over a fresh folder."""
    folder = tmp_path / "served"
    folder.mkdir()

    class Quiet(SimpleHTTPRequestHandler):
        def log_message(self, *args: object) -> None:
            pass

    with serving(functools.partial(Quiet, directory=str(folder))) as url:  # type: ignore[arg-type]
        yield url, folder


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


@pytest.mark.waits
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
# Rule 5: untrusted bytes meet only the decoders of image formats, within a memory budget


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


# ---------------------------------------------------------------------------------------------
# Properties of the pure parts: URLs and tables of any shape


@given(st.one_of(st.text(max_size=60), st.from_regex(r"https?://[^\s]{0,40}", fullmatch=True)))
@settings(max_examples=examples(500), deadline=None)
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
@settings(max_examples=examples(60), deadline=None)
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
    threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.01}, daemon=True).start()
    try:
        table = tmp_path / "t.csv"
        table.write_text(f"category,ID,URL\nmap,/1/a,http://127.0.0.1:{server.server_address[1]}/a.jpg\n")
        report = download(_config(table, tmp_path / "img", retries=3))
    finally:
        server.shutdown()
        server.server_close()
    assert report.failed == 1 and len(asked) == 1  # the record's own failure: not a connection error, not retried
    assert _failures(tmp_path / "img")["/1/a"] == "redirected to a URL that is not http(s)"


# ---------------------------------------------------------------------------------------------
# Thumbnails


def _files(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*.jpg"))}


@pytest.mark.slow(seconds=3)  # downloads from three sandboxes
def test_thumbnails_come_from_the_cdn_fall_back_to_originals_and_placeholders_are_never_kept(tmp_path: Path) -> None:
    # 34 records: thumbnails of good and of dead originals, originals without a thumbnail, and neither
    with Sandbox(sandbox_config(per_level=4, bad_every=5, thumbnail_missing_every=4)) as sb:
        table = sandbox_table(sb, tmp_path / "t.csv")
        out = tmp_path / "img"
        report = download(
            DownloadConfig(
                table=table,
                output_dir=out,
                source="thumbnail",
                quiet=True,
                timeout=3,
                retries=0,
                max_side=128,
                fallback_preview=True,
                thumbnail_url=f"{sb.base_url}/thumbnail/v3",
            )
        )
        records = sandbox_records(sb)
        failures = _failures(out / "failures.csv")
        fetched = _fetched(out)
        cases = {(sb.has_thumbnail(r.serial), bool(r.fault)) for r in records}
        assert cases == {(True, False), (True, True), (False, False), (False, True)}  # every case is tried
        for record in records:
            saved = out / record.labels[0] / file_name(record.id)
            has_thumbnail = sb.has_thumbnail(record.serial)
            if has_thumbnail:  # from the CDN, dead original or not: the 200 px rendition of the same picture
                with Image.open(saved) as image:
                    assert max(image.size) == 128
                thumbnail = f"/thumbnail/v3/200/{hashlib.md5(sb.image_url(record).encode()).hexdigest()}"
                assert thumbnail in sb.hits and fetched[record.id] == sb.base_url + thumbnail
            elif not record.fault:  # no thumbnail: the record's own image
                assert saved.is_file() and sb.hits[f"/images/{record.serial}.jpg"] == 1
                assert fetched[record.id] == sb.image_url(record)
            else:  # neither: the v2 preview would be the generic icon, which is refused
                assert not saved.exists()
                assert "thumbnail: HTTP 404" in failures[record.id] and "placeholder" in failures[record.id]
        originals_asked = sum(n for path, n in sb.hits.items() if path.startswith(("/images/", "/faults/")))
        assert originals_asked == sum(not sb.has_thumbnail(r.serial) for r in records)
        assert report.saved + report.failed == len(records) and set(failures) == {
            r.id for r in records if r.fault and not sb.has_thumbnail(r.serial)
        }


def _fetched(folder: Path) -> dict[str, str]:
    """fetched.csv's URL per record ID: where download saved each image from."""
    with (folder / "fetched.csv").open(newline="", encoding="utf-8") as handle:
        return {row["ID"]: row["URL"] for row in csv.DictReader(handle)}


@pytest.mark.slow(seconds=2)  # a download end to end
def test_each_saved_image_is_listed_with_the_url_it_came_from_a_dead_original_with_its_preview(
    tmp_path: Path,
) -> None:
    with Sandbox(sandbox_config(per_level=3), Knobs(shared_per_concept=0, triples_per_concept=0)) as sb:
        rows = looping_originals_table(sb, tmp_path / "t.csv")
        out = tmp_path / "img"
        report = download(config(tmp_path / "t.csv", out, fallback_preview=True))
        assert report.saved == len(rows) and not report.failed
        assert _fetched(out) == {row["ID"]: row["preview"] for row in rows}
        hits = dict(sb.hits)
        again = download(config(tmp_path / "t.csv", out, fallback_preview=True))
        assert again.already_saved == len(rows) and dict(sb.hits) == hits  # nothing fetched, and still known:
        assert _fetched(out) == {row["ID"]: row["preview"] for row in rows}


def test_a_record_whose_url_changed_is_fetched_again(sandbox: Sandbox, tmp_path: Path) -> None:
    """A folder kept its file for a record whose table now names another image: eic predict and enrich classified
    the old picture and annotated the new URL with it. Its thumbnail, or a size of it, is the same image."""
    first, second = sandbox_records(sandbox)[:2]
    table = tmp_path / "t.csv"
    table.write_text(f"category,ID,URL\n{first.labels[0]},{first.id},{sandbox.image_url(first)}\n")
    out = tmp_path / "img"
    download(config(table, out))
    saved = out / first.labels[0] / file_name(first.id)
    before = saved.read_bytes()
    assert download(config(table, out, max_side=64)).already_saved == 1  # another size of the same: kept
    table.write_text(f"category,ID,URL\n{first.labels[0]},{first.id},{sandbox.image_url(second)}\n")
    again = download(config(table, out))
    assert again.saved == 1 and not again.already_saved and saved.read_bytes() != before
    kept = out / ".eic-set-aside" / first.labels[0] / saved.name
    assert again.set_aside == 1 and kept.read_bytes() == before  # the old picture is kept, out of the class
    assert _fetched(out) == {first.id: sandbox.image_url(second)}
    table.write_text(f"category,ID,URL\n{first.labels[0]},{first.id},http://127.0.0.1:9/gone.jpg\n")
    kept = download(config(table, out, retry_failed=True))  # retries known failures only: this is none, and stays
    assert kept.already_saved == 1 and not kept.saved and saved.exists()
    gone = download(config(table, out, retries=0, timeout=2.0))  # port 9: refused at once
    assert gone.failed == 1 and not saved.exists()  # the old picture is not the record's any more


def test_thumbnail_source_needs_the_url_column(tmp_path: Path) -> None:
    table = tmp_path / "t.csv"
    pl.DataFrame([{"ID": "/1/a", "image": "http://127.0.0.1:9/a.jpg", "category": "map"}]).write_csv(table)
    result = CliRunner().invoke(app, ["download", str(table), "-o", str(tmp_path / "img"), "--source", "thumbnail"])
    assert result.exit_code == 1
    assert result.stderr.count("\n") == 1 and "'URL'" in result.stderr and "thumbnail" in result.stderr


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--rate", "0"], "'rate'"),
        (["--shard", "3/3"], "numbered 0 to 2"),
        (["--shard", "one of two"], "I/N"),
        (["--source", "cdn"], "'source'"),
    ],
)
def test_bad_scale_settings_are_one_line(tmp_path: Path, args: list[str], message: str) -> None:
    table = tmp_path / "t.csv"
    pl.DataFrame([{"ID": "/1/a", "URL": "http://127.0.0.1:9/a.jpg", "category": "map"}]).write_csv(table)
    result = CliRunner().invoke(app, ["download", str(table), *args])
    assert result.exit_code == 2 and result.stderr.count("\n") == 1 and message in result.stderr, result.stderr


# ---------------------------------------------------------------------------------------------
# One request rate for the whole client


@pytest.mark.waits
@pytest.mark.slow
def test_the_request_rate_holds_over_all_requests(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """At most ``rate`` starts a second, never a burst, whatever 16 tasks at once ask: what the client decides (its
    pacer's schedule, and no request before its place in it), checked as the client sees it, not by when a server
    on a loaded machine notes arrivals (a second there can hold more than 40 when some came in late)."""
    from contextvars import ContextVar

    from europeana_imgcls.europeana.ratelimit import RateLimit

    claim, wait = RateLimit._claim, RateLimit.wait
    slot: ContextVar[float] = ContextVar("slot")  # each download task's own: the start its pacer gave it
    slots: list[float] = []
    sent: list[tuple[float, float]] = []  # (the start given, when the request went)

    def claimed(self: RateLimit) -> float | None:
        delay = claim(self)
        slots.append(self._next - self.interval)
        slot.set(slots[-1])
        return delay

    async def waited(self: RateLimit) -> None:
        await wait(self)
        sent.append((slot.get(), time.monotonic()))

    monkeypatch.setattr(RateLimit, "_claim", claimed)
    monkeypatch.setattr(RateLimit, "wait", waited)
    with Sandbox(sandbox_config(per_level=8)) as sandbox:
        table = sandbox_table(sandbox, tmp_path / "t.csv")
        rows = pl.read_csv(table).height
        started = time.monotonic()
        report = download(
            DownloadConfig(
                table=table,
                output_dir=tmp_path / "img",
                quiet=True,
                rate=40,
                concurrency=16,
                per_host=16,
                max_side=64,
                timeout=5,
                retries=0,
            )
        )
    assert report.saved + report.failed == rows
    times = sorted(t for t in sandbox.request_times if t >= started)
    assert len(times) == len(sent) == rows  # every request waited for its start
    starts = sorted(slots)
    assert all(b - a >= 1 / 40 - 1e-9 for a, b in zip(starts, starts[1:], strict=False))  # 1/40 s apart
    assert all(went >= given - 1e-3 for given, went in sent)  # none sent before its start (a loop's clock tick)
    # Load only delays: the whole run lasts at least (n - 1) / 40 s as the server sees it too.
    assert times[-1] - times[0] >= (rows - 1) / 40 - 0.05


# ---------------------------------------------------------------------------------------------
# Shards


def _eic(*args: str) -> subprocess.Popen[bytes]:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.Popen(
        [sys.executable, "-m", "europeana_imgcls", *args], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )


@pytest.mark.slow(seconds=9)
def test_three_shards_killed_and_restarted_then_one_merge_equals_an_unsharded_run(tmp_path: Path) -> None:
    with Sandbox(sandbox_config(per_level=8, bad_every=9), Knobs(stall_seconds=120)) as sb:
        for record in sb.catalogue:  # drawn before any client waits on them, as in ``faulty``
            if record.type == "IMAGE" and record.has_url and not record.fault:
                sb.image_bytes(record.serial)
        rows = [
            {"category": " ".join(r.labels), "ID": r.id, "URL": sb.image_url(r)}
            for r in sb.catalogue
            if r.type == "IMAGE" and r.has_url
        ]  # one and several labels
        table = tmp_path / "t.csv"
        pl.DataFrame(rows).write_csv(table)
        common = ["--mode", "multi-label", "--quiet", "--max-side", "64", "--retries", "0", "--concurrency", "2"]
        shared = tmp_path / "shared"
        sb.hold_after(9)  # the shards are surely killed mid-way: later image answers wait
        # The killed shards wait on held answers until every shard has started, however slowly: a timeout there
        # would be journaled as those records' own failure.
        first = [
            _eic("download", str(table), "-o", str(shared), "--shard", f"{k}/3", *common, "--timeout", "60")
            for k in range(3)
        ]
        assert sb.wait_until_held(3), "the shards never reached the held answers"

        # The answers before the held ones are saved and journaled after the client has asked for the next: killed
        # at once, a loaded machine had journaled none of them (the images served from memory, nothing slows the
        # asking). Killed once a shard has journaled work, and never before, however slow the machine.
        def journaled() -> list[Path]:
            return [p for p in (shared / ".journal").glob("part.shard-*.ndjson") if p.stat().st_size]

        deadline = time.monotonic() + 120
        while not journaled() and time.monotonic() < deadline:
            time.sleep(0.05)
        for proc in first:
            proc.send_signal(signal.SIGKILL)
            proc.communicate(timeout=30)
        sb.release()
        assert journaled(), "no shard journaled its work before it was killed"
        again = [
            _eic(
                "download",
                str(table),
                "-o",
                str(shared),
                "--shard",
                f"{k}/3",
                *common,
                "--timeout",
                str(FAULTY_TIMEOUT),
            )
            for k in range(3)
        ]
        for proc in again:
            _, err = proc.communicate(timeout=120)
            assert proc.returncode == 0, err.decode()
        assert sorted(p.name for p in (shared / ".journal").glob("*.ndjson")) == [
            f"part.shard-{k}-of-3.ndjson" for k in range(3)
        ]  # each shard's outcomes wait for the merge
        hits = dict(sb.hits)
        merged = download(
            DownloadConfig(
                table=table, output_dir=shared, mode="multi-label", quiet=True, max_side=64, timeout=2, retries=0
            )
        )
        assert dict(sb.hits) == hits  # the merging run asks for nothing: every shard's work counts as done
        assert merged.saved == 0 and merged.already_saved + merged.known_failures == merged.total
        reference = tmp_path / "reference"
        download(  # the shards' timeout (a good image drawn while the reference waited once took over 2 s)
            DownloadConfig(
                table=table,
                output_dir=reference,
                mode="multi-label",
                quiet=True,
                max_side=64,
                timeout=FAULTY_TIMEOUT,
                retries=0,
            )
        )
    assert _files(shared) == _files(reference)
    assert _failures(shared / "failures.csv") == _failures(reference / "failures.csv")
    assert pl.read_csv(shared / "labels.csv").sort("ID").equals(pl.read_csv(reference / "labels.csv").sort("ID"))
    assert not list(shared.rglob("*shard-*"))  # the merge took every shard's part in
    assert not [p for p in shared.rglob("*") if p.name.endswith(".eic-part")]


# ---------------------------------------------------------------------------------------------
# Found in review


def test_thumbnail_cdn_failures_do_not_fall_back_to_the_providers(tmp_path: Path) -> None:
    with Sandbox(sandbox_config(per_level=3)) as sb:
        table = sandbox_table(sb, tmp_path / "t.csv")
        with pytest.raises(DatasetError, match="every thumbnail request failed"):  # one cause, said in one line
            download(
                DownloadConfig(
                    table=table,
                    output_dir=tmp_path / "img",
                    source="thumbnail",
                    quiet=True,
                    timeout=2,
                    retries=0,
                    thumbnail_url="http://127.0.0.1:9/thumbnail/v3",
                )
            )
        assert len(_failures(tmp_path / "img" / "failures.csv")) == pl.read_csv(table).height
        assert sb.count("/images/") == 0  # a CDN that is down is no reason to load every museum's server
        assert all(
            e.startswith("thumbnail: connection error") for e in _failures(tmp_path / "img" / "failures.csv").values()
        )


def test_the_merging_download_keeps_a_shards_newer_failure_reason(tmp_path: Path) -> None:
    with Sandbox(sandbox_config(per_level=10, bad_every=5), Knobs(stall_seconds=0.2)) as sb:  # only a 404 matters here
        record = next(r for r in sandbox_records(sb) if r.fault == "404")
        good = [r for r in sandbox_records(sb) if not r.fault][:7]
        table = sandbox_table(sb, tmp_path / "t.csv", records=[*good[:4], record, *good[4:]])
        out = tmp_path / "img"
        download(DownloadConfig(table=table, output_dir=out, quiet=True, timeout=2, retries=0, max_side=64))
        rows = _failures(out / "failures.csv")
        assert rows[record.id] == "HTTP 404"
        shard = next(f"{k}/2" for k in range(2) if Shard(k, 2).owns(record.id))
        (out / "failures.csv").write_text(  # an older reason in the merged file...
            "ID,URL,error\n" + "".join(f"{i},x,{'old reason' if i == record.id else e}\n" for i, e in rows.items())
        )
        download(
            DownloadConfig(
                table=table,
                output_dir=out,
                quiet=True,
                timeout=2,
                retries=0,
                max_side=64,
                shard=shard,
                retry_failed=True,
            )
        )  # ...and the shard's newer one
        download(DownloadConfig(table=table, output_dir=out, quiet=True, timeout=2, retries=0, max_side=64))
        assert _failures(out / "failures.csv")[record.id] == "HTTP 404"


# ---------------------------------------------------------------------------------------------
# A folder is rearranged only when asked: its table recorded, another's refused, --prune to set records aside


@pytest.fixture(scope="module")
def two_tables(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, Path, pl.DataFrame, pl.DataFrame]]:
    """A training table and an evaluation table of other records, the sandbox serving both."""
    root = tmp_path_factory.mktemp("tables")
    with Sandbox(sandbox_config(per_level=3)) as sb:
        rows = pl.read_csv(sandbox_table(sb, root / "all.csv"))
        train, evaluation = rows.head(rows.height - 4), rows.tail(4)
        train.write_csv(root / "train.csv")
        evaluation.write_csv(root / "eval.csv")
        yield root / "train.csv", root / "eval.csv", train, evaluation


def _held(out: Path) -> set[str]:
    return {p.name for p in out.glob("*/*.jpg")}


def test_a_folder_filled_from_another_table_is_refused(two_tables, tmp_path: Path) -> None:
    from europeana_imgcls.acquisition.placement import SET_ASIDE

    train, evaluation, train_rows, _ = two_tables
    out = tmp_path / "images"
    download(config(train, out, max_side=64))
    before = _held(out)
    with pytest.raises(DatasetError) as refused:  # an evaluation table, as training's folder was once the default
        download(config(evaluation, out, max_side=64))
    said = str(refused.value)
    assert str(train) in said and "`add`" in said and "`output_dir`" in said and "\n" not in said
    assert _held(out) == before and not (out / SET_ASIDE).exists()
    assert json.loads((out / "config.json").read_text())["table"] == str(train.resolve())
    assert download(config(train, out, max_side=64)).already_saved == train_rows.height  # its own table carries on
    result = CliRunner().invoke(app, ["download", str(evaluation), "-o", str(out), "--quiet"])
    assert_one_line_error(result, "holds the images of another table")
    assert "--add" in result.stderr and "--prune" in result.stderr and "--output-dir" in result.stderr


def test_add_puts_another_tables_records_beside_the_folders(two_tables, tmp_path: Path) -> None:
    from europeana_imgcls.acquisition.placement import SET_ASIDE

    train, evaluation, train_rows, eval_rows = two_tables
    out = tmp_path / "images"
    download(config(train, out, max_side=64))
    report = download(config(evaluation, out, max_side=64, add=True))
    assert _held(out) == {file_name(i) for i in [*train_rows["ID"], *eval_rows["ID"]]}
    assert not (out / SET_ASIDE).exists() and not (out / "set_aside.csv").exists()
    assert (report.set_aside, report.left) == (0, train_rows.height)


def test_a_folder_remembers_every_table_added_to_it_until_one_prunes_it(two_tables, tmp_path: Path) -> None:
    # A folder filled from a training table, then given an evaluation table with --add, holds both: a plain re-run
    # of either carries on. It used to remember only the last table, so re-running the first was refused.
    train, evaluation, train_rows, eval_rows = two_tables
    out = tmp_path / "images"
    download(config(train, out, max_side=64))
    download(config(evaluation, out, max_side=64, add=True))
    assert download(config(train, out, max_side=64)).already_saved == train_rows.height
    assert download(config(evaluation, out, max_side=64)).already_saved == eval_rows.height
    third = tmp_path / "third.csv"
    third.write_text(evaluation.read_text(encoding="utf-8"), encoding="utf-8")
    with pytest.raises(DatasetError, match="holds the images of other tables") as refused:
        download(config(third, out, max_side=64))
    assert str(train) in str(refused.value) and str(evaluation) in str(refused.value)
    download(config(evaluation, out, max_side=64, prune=True))  # the folder is the evaluation table's now
    with pytest.raises(DatasetError, match=f"another table \\({re.escape(str(evaluation.resolve()))}\\)"):
        download(config(train, out, max_side=64))


def test_what_a_folder_says_filled_it_is_read_with_suspicion(two_tables, tmp_path: Path) -> None:
    # config.json's table list is a file eic reads back: whatever it holds, a plain re-run of the folder's own
    # table carries on, and another table is refused in one line.
    train, evaluation, train_rows, _ = two_tables
    out = tmp_path / "images"
    download(config(train, out, max_side=64))
    settings = json.loads((out / "config.json").read_text())
    junk = (None, "x.csv", [1, None, {"a": 1}], ["\0bad", ""], [str(evaluation.resolve())] * 3, list(range(5000)))
    for tables in junk:
        (out / "config.json").write_text(json.dumps({**settings, "tables": tables}))
        assert download(config(train, out, max_side=64)).already_saved == train_rows.height
        (out / "config.json").write_text(json.dumps({**settings, "tables": tables}))
        if tables != [str(evaluation.resolve())] * 3:
            with pytest.raises(DatasetError, match="holds the images of another table"):
                download(config(evaluation, out, max_side=64))


def test_prune_sets_aside_the_records_the_table_does_not_hold(two_tables, tmp_path: Path) -> None:
    from europeana_imgcls.acquisition.placement import SET_ASIDE

    train, evaluation, train_rows, eval_rows = two_tables
    out = tmp_path / "images"
    download(config(train, out, max_side=64))
    report = download(config(evaluation, out, max_side=64, prune=True))
    assert _held(out) == {file_name(i) for i in eval_rows["ID"]}
    assert (report.set_aside, report.left) == (train_rows.height, 0)
    assert {p.name for p in (out / SET_ASIDE).glob("*/*.jpg")} == {file_name(i) for i in train_rows["ID"]}
    with pytest.raises(ConfigError, match="`prune`.*`retry_failed`"):  # prune needs a run over the whole table
        config(evaluation, out, prune=True, retry_failed=True)


def test_without_prune_records_the_table_dropped_stay_and_the_summary_says_so(two_tables, tmp_path: Path) -> None:
    from europeana_imgcls.acquisition.placement import SET_ASIDE

    _, _, train_rows, _ = two_tables
    table, out = tmp_path / "train.csv", tmp_path / "my images"
    train_rows.write_csv(table)
    download(config(table, out, max_side=64))
    train_rows.head(2).write_csv(table)  # the same table, fewer records (a review dropped some)
    report = download(config(table, out, max_side=64))
    assert _held(out) == {file_name(i) for i in train_rows["ID"]} and not (out / SET_ASIDE).exists()
    assert (report.set_aside, report.left) == (0, train_rows.height - 2)
    result = CliRunner().invoke(app, ["download", str(table), "-o", str(out), "--quiet"])
    said = " ".join(result.stdout.split())  # the console wraps long lines
    assert result.exit_code == 0 and "already there" in said
    assert f"into {out}" in said  # the summary names the folder
    assert f"{train_rows.height - 2} records the table does not hold left where they are" in said
    assert "--prune sets them aside" in said


def test_the_output_folder_is_required_and_may_come_from_a_config_file_or_the_environment(
    two_tables, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    train, _, train_rows, _ = two_tables
    monkeypatch.chdir(tmp_path)
    missing = eic("download", train, "--quiet")
    assert_one_line_error(missing, "--output-dir is required")
    assert "EUROPEANA_OUTPUT_DIR" in missing.stderr and not (tmp_path / "images").exists()  # no default folder
    with pytest.raises(ConfigError, match="`output_dir` is required"):
        DownloadConfig(table=train)
    assert "--output-dir" in eic("download", "--help").stdout
    settings = tmp_path / "eic.toml"
    settings.write_text(f'[download]\noutput_dir = "{tmp_path / "from_file"}"\nmax_side = 64\n')
    assert eic("download", train, "--quiet", "--config", settings).exit_code == 0
    assert len(_held(tmp_path / "from_file")) == train_rows.height
    monkeypatch.setenv("EUROPEANA_OUTPUT_DIR", str(tmp_path / "from_env"))
    assert eic("download", train, "--quiet", "--max-side", "64").exit_code == 0
    assert len(_held(tmp_path / "from_env")) == train_rows.height


def test_retry_failed_retries_a_passing_trouble_and_a_corrected_url_is_fetched(tmp_path: Path) -> None:
    """`--retry-failed` after the Thumbnail API was out of reach (what the docs say it is for) skipped every such
    record as "not a known failure" and emptied failures.csv of them; and a record whose 404 URL the table then
    corrected was skipped as a known failure for ever, failures.csv still naming the old URL."""
    with Sandbox(sandbox_config(per_level=2)) as sb:
        records = sandbox_records(sb)[:3]
        table = sandbox_table(sb, tmp_path / "t.csv", records=records)
        out = tmp_path / "img"
        with pytest.raises(DatasetError, match="every thumbnail request failed"):
            download(config(table, out, source="thumbnail", retries=0, thumbnail_url="http://127.0.0.1:9/thumbnail/v3"))
        assert len(_failures(out)) == 3
        good = f"{sb.base_url}/thumbnail/v3"
        retried = download(config(table, out, source="thumbnail", retry_failed=True, thumbnail_url=good))
        assert (retried.saved, retried.failed, _failures(out)) == (3, 0, {})

        rows = pl.read_csv(table)
        typo = rows.with_columns(pl.lit(f"{sb.base_url}/faults/404/x.jpg").alias("URL"))[:1]
        pl.concat([typo, rows[1:]]).write_csv(table)
        (out / rows["category"][0] / file_name(rows["ID"][0])).unlink()
        assert download(config(table, out)).failed == 1 and _failures(out) == {rows["ID"][0]: "HTTP 404"}
        rows.write_csv(table)  # the URL corrected
        fixed = download(config(table, out))
    assert (fixed.saved, fixed.known_failures, _failures(out)) == (1, 0, {})


def test_a_category_that_cannot_be_a_class_folder_is_its_rows_reason(tmp_path: Path) -> None:
    """A category starting with a dot was saved where training never looks (`.journal/`, `.eic-set-aside/`:
    counted as saved, never trained on); one named like the folder's own files (`failures.csv`, `config.json`)
    stopped the run with "Is a directory" / "File exists" and left a folder later runs refused; one too long for
    a file name stopped the run with nothing saved. Each is now its rows' reason, and the rest are saved."""
    bad = [".journal", ".eic-set-aside", ".hidden", "failures.csv", "config.json", "x" * 300]
    with Sandbox(sandbox_config(per_level=2)) as sb:
        records = sandbox_records(sb)[: len(bad) + 1]
        table = pl.read_csv(sandbox_table(sb, tmp_path / "t.csv", records=records))
        table.with_columns(pl.Series("category", [*bad, "map"])).write_csv(tmp_path / "t.csv")
        out = tmp_path / "img"
        report = download(config(tmp_path / "t.csv", out))
        assert report.saved == 1 and report.skipped == {"category that cannot be a folder name": len(bad)}
        assert sorted(p.relative_to(out).as_posix() for p in out.rglob("*.jpg")) == [
            f"map/{file_name(table['ID'][-1])}"
        ]
        assert (out / "failures.csv").is_file() and (out / "config.json").is_file()
        assert download(config(tmp_path / "t.csv", out)).already_saved == 1  # and the folder carries on


def test_a_download_folder_whose_failures_excel_for_mac_saved_carries_on(tmp_path: Path) -> None:
    """A failures.csv re-saved by Excel for Mac (lines ending in CR alone) was a traceback (csv.Error) when the
    folder was judged; a project's own config.json there is refused in one line naming it."""
    with Sandbox(sandbox_config(per_level=2)) as sb:
        table = sandbox_table(sb, tmp_path / "t.csv", records=sandbox_records(sb)[:3])
        out = tmp_path / "img"
        first = download(config(table, out, retries=0))
        (out / "failures.csv").write_bytes(b"ID,URL,error\r/1/x,http://127.0.0.1:9/x.jpg,HTTP 404\r")
        result = eic("download", table, "-o", out, "--quiet")
        assert result.exit_code == 0 and "Traceback" not in result.output + result.stderr, result.stderr
        assert first.saved == 3
        # Excel's "CSV UTF-8" starts with a byte order mark; a long first line may end inside a character
        (out / "failures.csv").write_bytes(b"\xef\xbb\xbfID,URL,error\r\n/1/x,http://127.0.0.1:9/x.jpg,HTTP 404\r\n")
        assert eic("download", table, "-o", out, "--quiet").exit_code == 0
        (out / "failures.csv").write_bytes(b"ID,URL,error\r" + "\u00e9".encode() * 40_000)
        result = eic("download", table, "-o", out, "--quiet")
        assert "Traceback" not in result.output + result.stderr, result.stderr
        project = tmp_path / "project"
        project.mkdir()
        (project / "config.json").write_text('{"name": "my project"}')
        assert_one_line_error(eic("download", table, "-o", project, "--quiet"), "config.json is not eic download's")
    assert (project / "config.json").read_text() == '{"name": "my project"}'


def test_a_category_spelt_in_two_unicode_forms_is_one_class_folder(tmp_path: Path) -> None:
    """ "café" composed (é) and decomposed (e + combining accent), as tables from two systems write it, made two
    class folders that look the same: one class split in two for training."""
    with Sandbox(sandbox_config(per_level=2)) as sb:
        table = pl.read_csv(sandbox_table(sb, tmp_path / "t.csv", records=sandbox_records(sb)[:2]))
        table.with_columns(pl.Series("category", ["caf\u00e9", "cafe\u0301"])).write_csv(tmp_path / "t.csv")
        report = download(config(tmp_path / "t.csv", tmp_path / "img"))
    classes = [p.name for p in (tmp_path / "img").iterdir() if p.is_dir() and not p.name.startswith(".")]
    assert report.saved == 2 and classes == ["caf\u00e9"]


def test_a_body_whose_content_encoding_does_not_decode_is_its_rows_reason(tmp_path: Path) -> None:
    """A server that says gzip and sends something else was an "unexpected error (DecodingError ...)": the body's
    encoding is the record's own failure, said as such."""
    from ..support import QuietHandler

    class BadGzip(QuietHandler):
        def do_GET(self) -> None:
            body = b"this is not gzip at all"
            self.send_response(200)
            self.send_header("Content-Type", "image/jpeg")
            self.send_header("Content-Encoding", "gzip")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

    with serving(BadGzip) as url:
        pl.DataFrame([{"ID": "/1/a", "URL": f"{url}/a.jpg", "category": "map"}]).write_csv(tmp_path / "t.csv")
        report = download(config(tmp_path / "t.csv", tmp_path / "img", retries=0))
    assert report.failed == 1 and _failures(tmp_path / "img") == {"/1/a": "undecodable body (its Content-Encoding)"}
