"""acquisition/placement.py: a re-run's moves (a record whose class changed, records the table no longer holds)
and the folders and files it refuses to move through."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import polars as pl
import pytest
from PIL import Image
from typer.testing import CliRunner

from europeana_imgcls import download
from europeana_imgcls.acquisition.download import file_name
from europeana_imgcls.cli.app import app
from europeana_imgcls.core.errors import DatasetError
from europeana_imgcls.europeana.sandbox import Sandbox

from ..support import download_config as config
from ..support import sandbox_config, sandbox_records, sandbox_table

# ---------------------------------------------------------------------------------------------
# Hostile folders and files: nothing outside the folder is touched, nothing hangs, one line at worst


@pytest.mark.slow(seconds=2)  # two downloads
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
        report = download(config(tmp_path / "new.csv", out, prune=True))  # the folder made the reviewed table's
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
        download(config(tmp_path / "new.csv", out, mode="multi-label", prune=True))
        assert sb.count("/images/") == before
    labels = pl.read_csv(out / "labels.csv")
    assert dict(zip(labels["ID"], labels["category"], strict=True)) == dict(
        zip(new["ID"], new["category"], strict=True)
    )
    assert (out / SET_ASIDE / file_name(dropped)).is_file() and not (out / file_name(dropped)).exists()


def _eic_download(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    """eic download in its own process: a hang is a failure after ``timeout``, never a test suite that hangs."""
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
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


@pytest.mark.slow  # an eic process each, which a hang would leave to its timeout
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
