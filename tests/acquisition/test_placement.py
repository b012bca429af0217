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
        {"ID": dropped["ID"], "was": f"{dropped['category']}/{gone}", "kept_as": f"{dropped['category']}/{gone}"}
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


@pytest.mark.slow(seconds=2)  # three downloads
def test_a_record_of_any_id_moves_with_its_class_and_is_pruned_when_dropped(tmp_path: Path) -> None:
    """Only files named `[ph]...` were moved or set aside: a museum's ID without a leading slash (`obj1.jpg`) or one
    long enough to be hashed (`[h]<sha1>.jpg`) stayed in its old class after its class changed (the record in
    two classes, without a word), and a dropped one was never pruned. A file of the user's in a class folder that
    no run saved stays where it is, even when its name could be an ID's."""
    from europeana_imgcls.acquisition.placement import SET_ASIDE

    long_id = "/r/" + "y" * 250
    with Sandbox(sandbox_config(per_level=2)) as sb:
        records = sandbox_records(sb)[:4]
        table = pl.read_csv(sandbox_table(sb, tmp_path / "t.csv", records=records))
        table = table.with_columns(pl.Series("ID", ["obj1", "obj2", long_id, "/r/kept"]), pl.lit("A").alias("category"))
        table.write_csv(tmp_path / "t.csv")
        out = tmp_path / "img"
        download(config(tmp_path / "t.csv", out))
        mine = out / "A" / "beach.jpg"
        Image.new("RGB", (8, 8)).save(mine)
        fetched = sb.count("/images/")
        moved = pl.when(pl.col("ID").is_in(["obj1", long_id])).then(pl.lit("B")).otherwise(pl.col("category"))
        table.with_columns(moved.alias("category")).filter(pl.col("ID") != "obj2").write_csv(tmp_path / "new.csv")
        report = download(config(tmp_path / "new.csv", out, prune=True))
        assert sb.count("/images/") == fetched  # moved, not fetched again
    held = sorted(p.relative_to(out).as_posix() for p in out.glob("*/*.jpg"))
    assert held == sorted(["A/beach.jpg", "A/[ph]r[ph]kept.jpg", "B/obj1.jpg", f"B/{file_name(long_id)}"])
    assert (out / SET_ASIDE / "A" / "obj2.jpg").is_file() and mine.is_file()
    assert (report.moved, report.set_aside) == (2, 1)
    assert pl.read_csv(out / "set_aside.csv")["ID"].to_list() == ["obj2"]


@pytest.mark.slow(seconds=2)  # three downloads
def test_an_image_set_aside_twice_keeps_both_and_the_list_keeps_every_run(tmp_path: Path) -> None:
    """A record's file set aside a second time (its URL changed twice) replaced the first one set aside, and each
    run's set_aside.csv replaced the last run's list: set-aside files gone or unlisted."""
    from europeana_imgcls.acquisition.placement import SET_ASIDE

    with Sandbox(sandbox_config(per_level=2)) as sb:
        records = sandbox_records(sb)[:5]
        table = pl.read_csv(sandbox_table(sb, tmp_path / "t.csv", records=records))
        out = tmp_path / "img"
        download(config(tmp_path / "t.csv", out))
        first, urls = table["ID"][0], table["URL"].to_list()
        saved = []
        for turn, url in enumerate(urls[1:3]):  # its URL changed twice: two other images in turn
            saved.append((out / table["category"][0] / file_name(first)).read_bytes())
            table.with_columns(pl.when(pl.col("ID") == first).then(pl.lit(url)).otherwise(pl.col("URL")).alias("URL"))[
                : 4 - turn
            ].write_csv(tmp_path / "t.csv")
            download(config(tmp_path / "t.csv", out, prune=True))
    aside = sorted((out / SET_ASIDE).rglob("*.jpg"))
    assert sorted(p.read_bytes() for p in aside if first.rsplit("/", 1)[1] in p.name) == sorted(saved)
    listed = pl.read_csv(out / "set_aside.csv")
    assert listed["ID"].to_list() == [first, table["ID"][4], first, table["ID"][3]]
    assert sorted((out / SET_ASIDE / p).as_posix() for p in listed["kept_as"]) == sorted(p.as_posix() for p in aside)


def test_a_set_aside_list_eic_cannot_take_whole_is_kept_beside(tmp_path: Path) -> None:
    """A set_aside.csv with a column someone added lost that column when the next run rewrote the list."""
    from europeana_imgcls.acquisition.placement import write_set_aside

    mine = "ID,was,kept_as,note\n/1/a,map/[ph]1[ph]a.jpg,map/[ph]1[ph]a.jpg,checked by Ana\n"
    (tmp_path / "set_aside.csv").write_text(mine)
    write_set_aside(tmp_path, [("/1/b", "map/[ph]1[ph]b.jpg", "map/[ph]1[ph]b.jpg")], None)
    assert (tmp_path / "set_aside.earlier1.csv").read_text() == mine
    assert pl.read_csv(tmp_path / "set_aside.csv")["ID"].to_list() == ["/1/b"]
    write_set_aside(tmp_path, [("/1/c", "map/[ph]1[ph]c.jpg", "map/[ph]1[ph]c.jpg")], None)  # its own: added to
    assert pl.read_csv(tmp_path / "set_aside.csv")["ID"].to_list() == ["/1/b", "/1/c"]


@pytest.mark.parametrize("kind", ["file", "link to a file"])
def test_a_file_where_a_class_folder_goes_is_one_line_naming_it(tmp_path: Path, kind: str) -> None:
    """A file (or a link to one) standing where a class folder goes stopped the run with the system's terse
    "img/B: File exists"."""
    from ..support import assert_one_line_error, eic

    with Sandbox(sandbox_config(per_level=2)) as sb:
        table = sandbox_table(sb, tmp_path / "t.csv", records=sandbox_records(sb)[:1])
        category = pl.read_csv(table)["category"][0]
        out = tmp_path / "img"
        download(config(table, out))
        (out / category).rename(tmp_path / "moved")
        (tmp_path / "notes.txt").write_text("mine")
        if kind == "file":
            (out / category).write_text("mine")
        else:
            (out / category).symlink_to(tmp_path / "notes.txt")
        result = eic("download", table, "-o", out, "--quiet")
    assert_one_line_error(result, f"{out / category} is a")
    assert "File exists" not in result.stderr and (tmp_path / "notes.txt").read_text() == "mine"
