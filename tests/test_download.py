"""eic download against the sandbox image host: exact files, exact failures, kill and resume."""

from __future__ import annotations

import csv
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import polars as pl
import pytest
from PIL import Image
from typer.testing import CliRunner

from europeana_imgcls import DownloadConfig, download
from europeana_imgcls.acquisition.download import file_name
from europeana_imgcls.cli.app import app
from europeana_imgcls.core.errors import DatasetError
from europeana_imgcls.europeana.sandbox import FAULTS, Knobs, Sandbox

from .support import sandbox_config, sandbox_records, sandbox_table

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
    # A stalled answer is held until the sandbox stops: it times out however slow or fast the machine.
    with Sandbox(
        sandbox_config(per_level=10, bad_every=5), Knobs(variant_every=4, image_fail_every=7, stall_seconds=120)
    ) as sb:
        yield sb


def config(table: Path, out: Path, **kw) -> DownloadConfig:
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


def read_failures(out: Path) -> dict[str, str]:
    with (out / "failures.csv").open(newline="") as handle:
        return {row["ID"]: row["error"] for row in csv.DictReader(handle)}


@pytest.mark.slow
def test_every_good_image_is_saved_clean_and_every_bad_one_is_a_failure_row(faulty: Sandbox, tmp_path: Path) -> None:
    table = sandbox_table(faulty, tmp_path / "t.csv")
    out = tmp_path / "img"
    report = download(config(table, out))
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


@pytest.mark.slow
def test_rerun_fetches_nothing_new_and_retry_failed_only_the_failures(faulty: Sandbox, tmp_path: Path) -> None:
    table = sandbox_table(faulty, tmp_path / "t.csv")
    out = tmp_path / "img"
    first = download(config(table, out))
    failed_first = read_failures(out)
    hits = dict(faulty.hits)
    again = download(config(table, out))
    assert dict(faulty.hits) == hits  # not one request
    assert again.saved == 0 and again.already_saved == first.saved
    assert again.known_failures == first.failed and read_failures(out) == failed_first
    retried = download(config(table, out, retry_failed=True, retries=0))
    new_paths = {p for p, n in faulty.hits.items() if n != hits.get(p, 0)}
    assert new_paths and all(p.startswith("/faults/") for p in new_paths)
    assert retried.failed == first.failed and set(read_failures(out)) == set(failed_first)
    assert len(new_paths) == len(failed_first)  # each known failure asked for again, nothing else


@pytest.mark.slow
def test_fallback_preview_rescues_failed_records(faulty: Sandbox, tmp_path: Path) -> None:
    table = sandbox_table(faulty, tmp_path / "t.csv")
    out = tmp_path / "img"
    report = download(config(table, out, fallback_preview=True))
    assert report.failed == 0
    faults = [r for r in sandbox_records(faulty) if r.fault]
    assert faulty.count("/thumbnail/") == len(faults)
    for record in faults:
        with Image.open(out / record.labels[0] / file_name(record.id)) as saved:
            assert saved.mode == "RGB" and max(saved.size) == 128


@pytest.mark.slow
def test_a_killed_run_resumes_to_a_complete_folder(tmp_path: Path) -> None:
    with Sandbox(sandbox_config(per_level=40, bad_every=11), Knobs(stall_seconds=120)) as sb:
        table = sandbox_table(sb, tmp_path / "t.csv")
        out = tmp_path / "img"
        env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
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
    result = CliRunner().invoke(app, ["download", str(tmp_path / "none.csv")])
    assert result.exit_code == 1 and "no such file or folder" in result.stderr


def test_rows_without_url_and_spaces_in_categories(sandbox: Sandbox, tmp_path: Path) -> None:
    record = sandbox_records(sandbox)[0]
    (tmp_path / "t.csv").write_text(
        f"category,ID,URL\n {record.labels[0]} ,{record.id},{sandbox.image_url(record)}\nmap,/1/nourl,\n"
    )
    report = download(config(tmp_path / "t.csv", tmp_path / "img"))
    assert (tmp_path / "img" / record.labels[0] / file_name(record.id)).is_file()
    assert read_failures(tmp_path / "img") == {"/1/nourl": "no URL"} and report.saved == 1


def test_a_rerun_with_changed_classes_moves_files_and_sets_aside_the_rest(tmp_path: Path) -> None:
    from europeana_imgcls.acquisition.placement import SET_ASIDE

    with Sandbox(sandbox_config(per_level=4)) as sb:
        table = sandbox_table(sb, tmp_path / "t.csv")
        out = tmp_path / "img"
        download(config(table, out))
        before = sb.count("/images/")
        rows = pl.read_csv(table)
        changed, dropped = rows.row(0, named=True), rows.row(1, named=True)
        assert changed["category"] != "specimen"
        own = out / changed["category"] / "my_own_notes.jpg"  # a file eic did not write
        Image.new("RGB", (8, 8)).save(own)
        reviewed = rows.with_columns(
            pl.when(pl.col("ID") == changed["ID"])
            .then(pl.lit("specimen"))
            .otherwise(pl.col("category"))
            .alias("category")
        ).filter(pl.col("ID") != dropped["ID"])
        reviewed.write_csv(tmp_path / "new.csv")
        report = download(config(tmp_path / "new.csv", out))
        assert sb.count("/images/") == before  # nothing fetched twice
    name = file_name(changed["ID"])
    assert (out / "specimen" / name).is_file() and not (out / changed["category"] / name).exists()
    gone = file_name(dropped["ID"])
    assert (
        not [p for p in out.glob("*/*.jpg") if p.name == gone]
        and (out / SET_ASIDE / dropped["category"] / gone).is_file()
    )
    assert own.is_file()  # nothing eic did not write is moved
    assert (report.moved, report.set_aside) == (1, 1)
    assert pl.read_csv(out / "set_aside.csv").to_dicts() == [
        {"ID": dropped["ID"], "was": f"{dropped['category']}/{gone}"}
    ]
    held = [p for p in out.glob("*/*.jpg") if p.name != own.name]  # the folder holds exactly the table's records
    assert sorted(p.name for p in held) == sorted(file_name(i) for i in reviewed["ID"])
    from europeana_imgcls.datasets.tasks import scan_images

    images = scan_images(out, "single-label")  # and training reads exactly those, each in its class
    assert sorted(p.name for p in images.paths if p.name != own.name) == sorted(file_name(i) for i in reviewed["ID"])


def test_a_multi_label_rerun_rewrites_labels_and_sets_aside_what_left_the_table(tmp_path: Path) -> None:
    from europeana_imgcls.acquisition.placement import SET_ASIDE

    with Sandbox(sandbox_config(per_level=2)) as sb:
        table = sandbox_table(sb, tmp_path / "t.csv", multi=True)
        out = tmp_path / "img"
        download(config(table, out, mode="multi-label"))
        before = sb.count("/images/")
        rows = pl.read_csv(table)
        first, dropped = rows["ID"][0], rows["ID"][1]
        new = rows.filter(pl.col("ID") != dropped).with_columns(
            pl.when(pl.col("ID") == first).then(pl.lit("map")).otherwise(pl.col("category")).alias("category")
        )
        new.write_csv(tmp_path / "new.csv")
        download(config(tmp_path / "new.csv", out, mode="multi-label"))
        assert sb.count("/images/") == before
    labels = pl.read_csv(out / "labels.csv")
    assert dict(zip(labels["ID"], labels["category"], strict=True)) == dict(
        zip(new["ID"], new["category"], strict=True)
    )
    assert (out / SET_ASIDE / file_name(dropped)).is_file() and not (out / file_name(dropped)).exists()


# ---------------------------------------------------------------------------------------------
# Hostile folders and files: nothing outside the folder is touched, nothing hangs, one line at worst


def _eic_download(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    """eic download in its own process: a hang is a failure after ``timeout``, never a test suite that hangs."""
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    return subprocess.run(
        [sys.executable, "-m", "europeana_imgcls", "download", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def test_a_symlinked_class_folder_is_refused_and_what_it_leads_to_is_untouched(tmp_path: Path) -> None:
    from europeana_imgcls.acquisition.placement import SET_ASIDE

    with Sandbox(sandbox_config(per_level=2)) as sb:
        table = sandbox_table(sb, tmp_path / "t.csv")
        out = tmp_path / "img"
        download(config(table, out))
        elsewhere = tmp_path / "my_photos"  # a user's folder, some of its files named as eic names them
        (out / "map").rename(elsewhere)
        (elsewhere / file_name("/9/not_in_the_table")).write_bytes(b"\xff\xd8mine\xff\xd9")
        (out / "map").symlink_to(elsewhere, target_is_directory=True)
        before = {p.name: p.read_bytes() for p in elsewhere.iterdir()}
        result = CliRunner().invoke(app, ["download", str(table), "-o", str(out), "--quiet"])
        hits = sb.count("/images/")
    assert result.exit_code == 1 and "symbolic link" in result.stderr and str(out / "map") in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert {p.name: p.read_bytes() for p in elsewhere.iterdir()} == before  # nothing moved, set aside or written
    assert not (out / SET_ASIDE).exists() and hits == len(sandbox_records(sb))  # refused before any request


@pytest.mark.parametrize("kind", ["symlink", "fifo", "folder"])
def test_a_record_path_that_is_not_a_regular_file_is_refused_without_hanging(tmp_path: Path, kind: str) -> None:
    (tmp_path / "t.csv").write_text("category,ID,URL\nmap,/1/a,http://127.0.0.1:9/a.jpg\n")
    record = tmp_path / "img" / "map" / file_name("/1/a")
    record.parent.mkdir(parents=True)
    outside = tmp_path / "precious.jpg"
    outside.write_bytes(b"\xff\xd8mine\xff\xd9")
    if kind == "symlink":
        record.symlink_to(outside)
    elif kind == "fifo":
        os.mkfifo(record)  # opening it to read would wait for a writer for ever
    else:
        record.mkdir()
    result = _eic_download(str(tmp_path / "t.csv"), "-o", str(tmp_path / "img"), "--quiet", "--retries", "0")
    assert result.returncode == 1 and str(record) in result.stderr, result.stderr
    assert len(result.stderr.strip().splitlines()) == 1 and "Traceback" not in result.stderr
    assert outside.read_bytes() == b"\xff\xd8mine\xff\xd9" and os.path.lexists(record)


def test_a_set_aside_folder_that_leads_out_is_refused(tmp_path: Path) -> None:
    from europeana_imgcls.acquisition.placement import SET_ASIDE

    (tmp_path / "t.csv").write_text("category,ID,URL\nmap,/1/a,http://127.0.0.1:9/a.jpg\n")
    out = tmp_path / "img"
    (out / "map").mkdir(parents=True)
    (out / "map" / file_name("/1/gone")).write_bytes(b"\xff\xd8old\xff\xd9")  # no longer in the table
    (tmp_path / "elsewhere").mkdir()
    (out / SET_ASIDE).symlink_to(tmp_path / "elsewhere", target_is_directory=True)
    with pytest.raises(DatasetError, match="symbolic link"):
        download(config(tmp_path / "t.csv", out, retries=0))
    assert not list((tmp_path / "elsewhere").iterdir()) and (out / "map" / file_name("/1/gone")).is_file()


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
        known = sandbox_records(sb)[0].id
        out = tmp_path / "img"
        (out / ".journal").mkdir(parents=True)
        whole = json.dumps([known, {"URL": "u", "error": "HTTP 404"}])
        (out / ".journal" / "part.ndjson").write_text(f"{line}\n{whole}\n")
        result = CliRunner().invoke(app, ["download", str(table), "-o", str(out), "--quiet"])
    assert result.exit_code == 0 and "Traceback" not in result.stderr, result.stderr
    assert "skipped a damaged record" in caplog.text
    assert read_failures(out) == {known: "HTTP 404"}  # what the journal knew whole is kept
