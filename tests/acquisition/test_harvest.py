"""Harvest through the real client against the sandbox Search API on 127.0.0.1."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import polars as pl
import pytest
from typer.testing import CliRunner

from europeana_imgcls import HarvestConfig, harvest
from europeana_imgcls.acquisition.harvest import COLUMNS
from europeana_imgcls.cli.app import app
from europeana_imgcls.core.errors import ApiError, DatasetError
from europeana_imgcls.core.journal import read_records
from europeana_imgcls.europeana.sandbox import SEARCH_PATHS, Knobs, Sandbox
from europeana_imgcls.europeana.search_api import SearchClient

from ..support import VOCAB, QuietHandler, assert_one_line_error, eic, sandbox_config, send_json, serving


def config(sandbox: Sandbox, vocab_file: Path, output: Path, **kw) -> HarvestConfig:
    return HarvestConfig(api_url=sandbox.api_url, vocab=vocab_file, output=output, quiet=True, **kw)


def test_exactly_n_per_category_and_level_with_faults_hidden(vocab_file: Path, tmp_path: Path) -> None:
    # No shared records, so nothing is dropped as ambiguous; every 4th search answers 429 or 503.
    with Sandbox(sandbox_config(per_level=40, fail_every=4), Knobs(shared_per_concept=0, triples_per_concept=0)) as sb:
        out = tmp_path / "h.csv"
        report = harvest(config(sb, vocab_file, out, n=25, reusability=["open", "permission"]))
        df = pl.read_csv(out)
    assert df.columns == COLUMNS
    counts = df.group_by("category", "reusability").len()
    assert counts.height == 6 and set(counts["len"]) == {25}
    assert df["ID"].n_unique() == df.height == 150
    assert report.fetched == {f"{c}|{lvl}": 25 for c in VOCAB for lvl in ("open", "permission")}
    assert df["URL"].null_count() == 0
    row = df.row(0, named=True)
    assert row["URI"] == "http://data.europeana.eu/item" + row["ID"]
    assert row["skos_concept"] == VOCAB[row["category"]]
    assert row["rights"].startswith("http://creativecommons.org/publicdomain/zero")


def test_records_without_image_url_are_skipped_and_counted(sandbox: Sandbox, vocab_file: Path, tmp_path: Path) -> None:
    report = harvest(config(sandbox, vocab_file, tmp_path / "h.csv", n=1000))
    no_url = sum(1 for r in sandbox.catalogue if not r.has_url and r.level == "open" and r.type == "IMAGE")
    assert report.skipped_no_url == no_url > 0


def test_ambiguous_records_are_dropped_or_kept_in_the_first_category(
    sandbox: Sandbox, vocab_file: Path, tmp_path: Path
) -> None:
    shared = {
        r.id for r in sandbox.catalogue if len(r.labels) > 1 and r.level == "open" and r.has_url and r.type == "IMAGE"
    }
    dropped = pl.read_csv(harvest(config(sandbox, vocab_file, tmp_path / "a.csv", n=1000)).output)
    assert shared and not shared & set(dropped["ID"])
    report = harvest(config(sandbox, vocab_file, tmp_path / "b.csv", n=1000, keep_ambiguous=True))
    kept = pl.read_csv(report.output)
    assert shared <= set(kept["ID"]) and kept["ID"].n_unique() == kept.height
    assert report.ambiguous == len(shared)
    # the first category queried (vocabulary order) keeps it
    first = {r.id: min(r.labels, key=list(VOCAB).index) for r in sandbox.catalogue}
    for row in kept.filter(pl.col("ID").is_in(list(shared))).iter_rows(named=True):
        assert row["category"] == first[row["ID"]]


def test_multi_label_rows_carry_the_union_of_labels(sandbox: Sandbox, vocab_file: Path, tmp_path: Path) -> None:
    out = harvest(config(sandbox, vocab_file, tmp_path / "m.csv", n=100, mode="multi-label")).output
    df = pl.read_csv(out)
    truth = {r.id: " ".join(sorted(r.labels, key=list(VOCAB).index)) for r in sandbox.catalogue}
    assert df.height == df["ID"].n_unique() > 0
    for row in df.iter_rows(named=True):
        assert row["category"] == truth[row["ID"]]
        assert row["skos_concept"] == " ".join(VOCAB[c] for c in row["category"].split())
    # the 3-concept records (found by 4 queries each) have all three labels
    triples = {
        r.id for r in sandbox.catalogue if len(r.labels) == 3 and r.level == "open" and r.has_url and r.type == "IMAGE"
    }
    assert set(df.filter(pl.col("category").str.count_matches(" ") == 2)["ID"]) == triples


def test_resume_skips_finished_units_and_keeps_rows(
    sandbox: Sandbox, vocab_file: Path, tmp_path: Path, monkeypatch
) -> None:
    out = tmp_path / "h.parquet"
    calls = {"n": 0}
    real = SearchClient.iter_items

    def dies_on_third_unit(self, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 3:
            raise ApiError("connection lost")
        return real(self, *args, **kwargs)

    monkeypatch.setattr(SearchClient, "iter_items", dies_on_third_unit)
    with pytest.raises(ApiError):
        harvest(config(sandbox, vocab_file, out, n=10))
    partial = pl.read_parquet(out)
    assert set(partial["category"]) == {"map", "painting"}
    journaled = list(read_records(tmp_path / "h.parquet.journal" / "part.ndjson"))
    assert [key for key, _ in journaled] == ["map|open", "painting|open"]  # the two finished units

    with pytest.raises(DatasetError, match="already exists: pass `resume`"):
        harvest(config(sandbox, vocab_file, out, n=10))
    monkeypatch.setattr(SearchClient, "iter_items", real)
    before = sandbox.count("/record/v2/search.json")
    report = harvest(config(sandbox, vocab_file, out, n=10, resume=True))
    assert report.resumed_units == 2
    assert sandbox.count("/record/v2/search.json") - before == 1  # only the third unit
    full = pl.read_parquet(out)
    assert set(full["category"]) == set(VOCAB)
    # rows found before the interruption stay, except those the last unit showed to be ambiguous
    lost = set(partial["ID"]) - set(full["ID"])
    assert lost and all("_specimen_" in record_id for record_id in lost)
    assert report.ambiguous >= len(lost)
    with pytest.raises(DatasetError, match="other settings \\(n: 10 then, 11 now\\)"):
        harvest(config(sandbox, vocab_file, out, n=11, resume=True))


def test_the_key_is_never_written(sandbox: Sandbox, vocab_file: Path, tmp_path: Path) -> None:
    sandbox.api_keys.add("my-private-key")
    cfg = HarvestConfig(
        api_url=sandbox.api_url, api_key="my-private-key", vocab=vocab_file, output=tmp_path / "h.csv", n=5, quiet=True
    )
    harvest(cfg)
    assert "my-private-key" not in repr(cfg)
    for path in (p for p in tmp_path.rglob("*") if p.is_file()):  # the journal included
        assert "my-private-key" not in path.read_text(), path
    written = json.loads((tmp_path / "h.config.json").read_text())
    assert written["n"] == 5 and "api_key" not in written


def test_seeded_random_order_pages_without_duplicates(sandbox: Sandbox) -> None:
    with SearchClient(sandbox.api_url, "api2demo") as client:
        ids = [i["id"] for i in client.iter_items("*", sort="random_7,europeana_id asc")]
        again = [i["id"] for i in client.iter_items("*", sort="random_7,europeana_id asc")]
        other = [i["id"] for i in client.iter_items("*", sort="random_8,europeana_id asc")]
    assert len(ids) == len(set(ids)) == len(sandbox.catalogue)
    assert ids == again and ids != other


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGINT])
def test_a_harvest_killed_at_a_random_moment_resumes_to_the_same_table(
    sig: signal.Signals, vocab_file: Path, tmp_path: Path
) -> None:
    """Rule 3 of docs/reliability.md with a real process: what a killed harvest journaled is kept, and --resume
    ends with the table an uninterrupted harvest writes. The sandbox holds its answers after a few, so the
    harvest is surely stopped mid-way, however fast the machine."""
    with Sandbox(sandbox_config(per_level=40, fail_every=3)) as sb:
        reference = tmp_path / "reference.csv"
        harvest(config(sb, vocab_file, reference, n=30, reusability=["open", "permission"]))
        out = tmp_path / "h.csv"
        args = [
            sys.executable,
            "-m",
            "europeana_imgcls",
            "harvest",
            "--api-url",
            sb.api_url,
            "--vocab",
            str(vocab_file),
            "--n",
            "30",
            "--reusability",
            "open",
            "--reusability",
            "permission",
            "-o",
            str(out),
            "--quiet",
        ]
        env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
        sb.hold_after(random.Random(sig).randint(1, 3), SEARCH_PATHS)  # a few answers (of 6 units), then none
        proc = subprocess.Popen(args, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        assert sb.wait_until_held(1), "the harvest never reached the held answers"
        proc.send_signal(sig)
        assert proc.wait(timeout=60) != 0, "the harvest ended before it could be stopped"
        sb.release()
        if out.exists():  # what it had is readable, never half a file
            pl.read_csv(out)
        harvest(config(sb, vocab_file, out, n=30, reusability=["open", "permission"], resume=True))
    assert sorted(pl.read_csv(out)["ID"]) == sorted(pl.read_csv(reference)["ID"])


GOOD_ITEM = {"id": "/9/good", "edmIsShownBy": ["http://127.0.0.1:9/a.jpg"], "rights": ["http://x/r"]}


@pytest.mark.parametrize(
    ("items", "kept"),
    [
        ({"id": "/9/good"}, None),  # an object where a list belongs: one line
        (["/9/a", "/9/b"], 0),  # strings, not records
        ([{"id": 5, "edmIsShownBy": ["http://127.0.0.1:9/b.jpg"]}, GOOD_ITEM], 1),  # an int id is no record
        ([7, None, [GOOD_ITEM], GOOD_ITEM], 1),
    ],
)
def test_items_of_any_shape_are_records_or_left_out(
    items: object, kept: int | None, vocab_file: Path, tmp_path: Path
) -> None:
    from typer.testing import CliRunner

    from europeana_imgcls.cli.app import app

    class Crafted(QuietHandler):
        def do_GET(self) -> None:
            from urllib.parse import unquote_plus

            asked = unquote_plus(self.path)  # the first page of the first concept's query; nothing for the others
            first = "cursor=*" in asked and "concept/base/43" in asked
            send_json(self, 200, {"success": True, "totalResults": 4, "items": items if first else []})

    out = tmp_path / "h.csv"
    with serving(Crafted) as base:
        url = f"{base}/record/v2/search.json"
        args = ["harvest", "--vocab", str(vocab_file), "-o", str(out), "--api-url", url, "--retries", "0", "--quiet"]
        result = CliRunner().invoke(app, args, env={"EUROPEANA_API_KEY": "k"})
    assert "Traceback" not in result.output
    if kept is None:
        assert result.exit_code == 1 and "items that are not a list" in result.stderr
        assert len(result.stderr.strip().splitlines()) == 1
    else:
        assert result.exit_code == 0, result.stderr
        assert set(pl.read_csv(out)["ID"]) == ({"/9/good"} if kept else set())


@pytest.mark.parametrize("loop", ["cursor", "repeats"])
def test_a_unit_whose_paging_goes_round_keeps_what_it_found_and_says_so(
    loop: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A one-unit harvest: three pages of ten new records, then the API's paging goes round (a cursor it sent
    before, or a page of records it sent before). The thirty records are the unit's, written and journaled."""
    from urllib.parse import parse_qs, urlsplit

    pages = {"*": ("A", 0), "A": ("B", 1), "B": ("A" if loop == "cursor" else "C", 2), "C": ("D", 1)}

    class Cycling(QuietHandler):
        def do_GET(self) -> None:
            cursor = parse_qs(urlsplit(self.path).query)["cursor"][0]
            after, page = pages[cursor]
            items = [
                {"id": f"/9/r{page}_{n}", "edmIsShownBy": [f"http://127.0.0.1:9/{page}_{n}.jpg"]} for n in range(10)
            ]
            send_json(self, 200, {"success": True, "items": items, "nextCursor": after})

    vocab = tmp_path / "vocab.json"
    vocab.write_text(json.dumps({"map": VOCAB["map"]}))
    out = tmp_path / "h.csv"
    with serving(Cycling) as base:
        url = f"{base}/record/v2/search.json"
        report = harvest(
            HarvestConfig(api_url=url, vocab=vocab, output=out, n=100, reusability=["open"], retries=0, quiet=True)
        )
    assert report.rows == 30 and pl.read_csv(out).height == 30  # kept and written, never lost
    assert "paging would never end" in caplog.text and "map" in caplog.text  # and said
    assert [key for key, _ in read_records(out.with_name(out.name + ".journal") / "part.ndjson")] == ["map|open"]


@pytest.mark.parametrize(
    "value",
    [
        5,
        "abc",
        [],
        {"items": 5, "no_url": []},
        {"items": [{"ID": 5, "URL": "u"}], "no_url": []},
        {"items": [{"ID": "/1/a"}], "no_url": []},
        {"items": [], "no_url": "x"},
        {"no_url": []},
    ],
)
def test_a_journaled_unit_of_the_wrong_shape_is_dropped_and_said(
    value: object, sandbox: Sandbox, vocab_file: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    out = tmp_path / "h.csv"
    harvest(config(sandbox, vocab_file, out, n=5))
    table = pl.read_csv(out).sort("ID")
    part = tmp_path / "h.csv.journal" / "part.ndjson"
    part.write_text(json.dumps(["map|open", value]) + "\n" + part.read_text())  # before the unit's whole record
    report = harvest(config(sandbox, vocab_file, out, n=5, resume=True))
    assert report.resumed_units == len(VOCAB) and pl.read_csv(out).sort("ID").equals(table)
    assert "skipped a damaged record" in caplog.text


def test_harvest_end_to_end(sandbox: Sandbox, vocab_file: Path, tmp_path: Path) -> None:
    out = tmp_path / "h.csv"
    result = eic(
        "harvest",
        "--vocab",
        vocab_file,
        "--n",
        "5",
        "--reusability",
        "open",
        "--reusability",
        "restricted",
        "-o",
        out,
        "--quiet",
        env={"EUROPEANA_API_URL": sandbox.api_url},
    )
    assert result.exit_code == 0, result.output
    counts = pl.read_csv(out).group_by("category", "reusability").len()
    assert counts.height == 6 and counts["len"].max() == 5  # a few dropped as ambiguous
    assert "records written to" in result.stdout


def test_bad_key_gives_one_line_and_exit_1(sandbox: Sandbox, vocab_file: Path, tmp_path: Path) -> None:
    result = eic(
        "harvest",
        "--vocab",
        vocab_file,
        "-o",
        tmp_path / "h.csv",
        "--api-url",
        sandbox.api_url,
        "--api-key",
        "not-a-key",
        "--quiet",
    )
    assert_one_line_error(result, "rejected the API key")
    assert result.exit_code == 1
    assert "not-a-key" not in result.stderr


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--n", "0"], "invalid setting 'n'"),
        (["--n", "-3"], "invalid setting 'n'"),
        (["--reusability", "free"], "invalid setting 'reusability.0'"),
        (["--mode", "both"], "invalid setting 'mode'"),
        (["-o", "out.xlsx"], "must end in .csv or .parquet"),
    ],
)
def test_bad_harvest_options(tmp_path: Path, args: list[str], message: str) -> None:
    result = eic("harvest", *args, "--api-url", "http://127.0.0.1:9/x")
    assert_one_line_error(result, message)


def test_unreachable_api_is_one_line(tmp_path: Path) -> None:
    result = eic(
        "harvest", "-o", tmp_path / "h.csv", "--api-url", "http://127.0.0.1:9/search.json", "--retries", "0", "--quiet"
    )
    assert_one_line_error(result, "cannot reach the Search API")


# ---------------------------------------------------------------------------------------------
# The key's quota


@pytest.mark.waits
@pytest.mark.slow
def test_a_harvest_paces_itself_inside_a_small_quota(tmp_path: Path) -> None:
    with Sandbox(sandbox_config(per_level=120, quota=3, quota_window=1.0)) as sb:
        started = time.monotonic()
        report = harvest(
            HarvestConfig(output=tmp_path / "h.csv", vocab=VOCAB, n=110, api_url=sb.api_url, quiet=True, retries=0)
        )
        took = time.monotonic() - started
        asked = sb.count("/record/v2/search.json")
        assert sb.quota_refusals == 0 and report.rows > 0
        assert asked > 3 and took >= (asked - 3) / 3 * 0.9  # more than one window's quota, never a 429
    with Sandbox(sandbox_config(per_level=120)) as free:  # the same harvest without a quota
        reference = harvest(
            HarvestConfig(output=tmp_path / "free.csv", vocab=VOCAB, n=110, api_url=free.api_url, quiet=True)
        )
    same = ["ID", "category", "skos_concept"]  # the URLs name each server's own port
    assert pl.read_csv(tmp_path / "h.csv").select(same).equals(pl.read_csv(tmp_path / "free.csv").select(same))
    assert reference.rows == report.rows


def test_a_quota_too_small_says_how_long_and_resume_finishes_later(tmp_path: Path) -> None:
    out = tmp_path / "h.csv"
    with Sandbox(sandbox_config(per_level=60, quota=2, quota_window=30.0)) as sb:
        runner = CliRunner()
        args = [
            "harvest",
            "-o",
            str(out),
            "--n",
            "40",
            "--api-url",
            sb.api_url,
            "--quiet",
            "--retries",
            "0",
            "--max-quota-wait",
            "0.001",
        ]
        vocab = tmp_path / "v.json"
        vocab.write_text(__import__("json").dumps(VOCAB))
        result = runner.invoke(app, [*args, "--vocab", str(vocab)])
        assert result.exit_code == 1 and result.stderr.count("\n") == 1
        assert "of waiting" in result.stderr and "--max-quota-wait" in result.stderr and sb.quota_refusals == 0
        sb.quota = 0  # the next window (here: a key with room again)
        result = runner.invoke(app, [*args[:-2], "--vocab", str(vocab), "--resume"])
        assert result.exit_code == 0, result.stderr
    assert pl.read_csv(out).height > 0


# ---------------------------------------------------------------------------------------------
# Found in review


def test_a_burst_429_with_quota_left_is_retried_not_waited_out_for_the_window(tmp_path: Path) -> None:
    # Every 2nd search answers 429 with Retry-After 0 while the hour's quota has plenty left.
    with Sandbox(sandbox_config(per_level=20, quota=1000, quota_window=3600, fail_every=2)) as sb:
        started = time.monotonic()
        report = harvest(
            HarvestConfig(
                output=tmp_path / "h.csv",
                vocab=VOCAB,
                n=10,
                api_url=sb.api_url,
                quiet=True,
                retries=3,
                max_quota_wait=0.01,
            )
        )  # a wait for the window would be refused
        assert report.rows > 0 and time.monotonic() - started < 30


def test_a_record_found_again_keeps_its_place_and_takes_its_newest_values() -> None:
    """A zip or a set read again (rebuilt, or its token expired) gives its records as they are now; a query unit's
    order (the Search API's seeded one) is where each was first found."""
    from europeana_imgcls.acquisition.harvest import _first_of_each

    found = [{"ID": "/1/a", "URL": "old"}, {"ID": "/1/b", "URL": "b"}, {"ID": "/1/a", "URL": "new"}]
    assert _first_of_each(found) == [{"ID": "/1/a", "URL": "new"}, {"ID": "/1/b", "URL": "b"}]


def test_a_resume_may_add_levels_but_not_drop_one_nor_change_the_api(vocab_file: Path, tmp_path: Path) -> None:
    """`--reusability restricted --resume` over an `open` harvest rewrote the table without its open rows (they
    stayed in the journal alone), and a resume against another Search API (a new shell without EUROPEANA_API_URL)
    mixed two servers' records in one table. Both refused in one line, the table as it was; adding a level is fine."""
    from europeana_imgcls.europeana.search_api import DEFAULT_API_URL

    out = tmp_path / "h.csv"
    with Sandbox(sandbox_config(per_level=4), Knobs(shared_per_concept=0, triples_per_concept=0)) as sb:
        harvest(config(sb, vocab_file, out, n=2, reusability=["open"]))
        table = out.read_bytes()
        with pytest.raises(DatasetError, match="open"):
            harvest(config(sb, vocab_file, out, n=2, reusability=["restricted"], resume=True))
        assert out.read_bytes() == table
        with pytest.raises(DatasetError, match="api_url"):
            harvest(
                config(sb, vocab_file, out, n=2, reusability=["open"], resume=True).model_copy(
                    update={"api_url": DEFAULT_API_URL}
                )
            )
        assert out.read_bytes() == table
        print("REC", (tmp_path / "h.csv.journal" / "table.json").read_text())
        both = harvest(config(sb, vocab_file, out, n=2, reusability=["open", "restricted"], resume=True))
        levels = pl.read_csv(out)["reusability"].to_list()
        assert both.resumed_units and {"open", "restricted"} <= set(levels)


def test_a_search_api_journal_an_earlier_eic_wrote_still_resumes(vocab_file: Path, tmp_path: Path) -> None:
    """Its settings name no Search API (eic recorded none): resumed with the same one, it carries on."""
    import json

    out = tmp_path / "h.csv"
    with Sandbox(sandbox_config(per_level=4), Knobs(shared_per_concept=0, triples_per_concept=0)) as sb:
        harvest(config(sb, vocab_file, out, n=2, reusability=["open"]))
        settings = tmp_path / "h.csv.journal" / "settings.json"
        older = json.loads(settings.read_text())
        del older["api_url"]
        settings.write_text(json.dumps(older))
        again = harvest(config(sb, vocab_file, out, n=2, reusability=["open", "restricted"], resume=True))
        assert again.resumed_units and json.loads(settings.read_text())["api_url"] == sb.api_url


def test_a_resume_never_writes_the_harvest_over_a_table_changed_since(vocab_file: Path, tmp_path: Path) -> None:
    """`eic subtract h.csv eval.csv -o h.csv --overwrite` (evaluation records out of training, in place), then
    `eic harvest -o h.csv --resume`: the table was rewritten from the journal, the evaluation records back in
    training without a word. A table changed since the harvest wrote it is refused in one line and kept."""
    from europeana_imgcls import SubtractConfig, subtract

    out = tmp_path / "h.csv"
    with Sandbox(sandbox_config(per_level=4), Knobs(shared_per_concept=0, triples_per_concept=0)) as sb:
        harvest(config(sb, vocab_file, out, n=2, reusability=["open"]))
        again = harvest(config(sb, vocab_file, out, n=2, reusability=["open"], resume=True))  # unchanged: fine
        assert again.rows == pl.read_csv(out).height
        pl.read_csv(out)[:3].select("ID").write_csv(tmp_path / "eval.csv")
        subtract(SubtractConfig(train=out, eval=tmp_path / "eval.csv", output=out, overwrite=True))
        edited = out.read_bytes()
        with pytest.raises(DatasetError, match="changed since"):
            harvest(config(sb, vocab_file, out, n=2, reusability=["open", "restricted"], resume=True))
    assert out.read_bytes() == edited


def test_a_kill_between_the_digest_and_the_table_still_resumes(
    vocab_file: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The table took its place before its digest was recorded: a kill between the two (hashing a large table takes
    a while) left eic's own table "changed since eic harvest wrote it", and no resume could carry it on. Killed
    once the table is in place, or (twice over) once its digest is recorded but before it is: both resume."""
    import europeana_imgcls.acquisition.harvest as harvesting

    real_write, real_replace = harvesting.write_table, os.replace

    def killed_once_the_table_is_in_place(df: pl.DataFrame, path: Path, *more: object) -> None:
        real_write(df, path, *more)  # type: ignore[arg-type]
        raise KeyboardInterrupt  # before anything after the table: the old code recorded its digest there

    with Sandbox(sandbox_config(per_level=4), Knobs(shared_per_concept=0, triples_per_concept=0)) as sb:
        for name, kills in (("a.csv", 1), ("b.csv", 2)):
            out = tmp_path / name

            def killed_before_the_rename(source: str, target: str, out: Path = out) -> None:
                if Path(target) == out:  # the digest recorded, the new table not yet in place
                    raise KeyboardInterrupt
                real_replace(source, target)

            harvest(config(sb, vocab_file, out, n=2, reusability=["open"]))
            for _ in range(kills):
                if name == "a.csv":
                    monkeypatch.setattr(harvesting, "write_table", killed_once_the_table_is_in_place)
                else:
                    monkeypatch.setattr(os, "replace", killed_before_the_rename)
                with pytest.raises(KeyboardInterrupt):
                    harvest(config(sb, vocab_file, out, n=2, reusability=["open", "restricted"], resume=True))
                monkeypatch.undo()
            both = harvest(config(sb, vocab_file, out, n=2, reusability=["open", "restricted"], resume=True))
            assert {"open", "restricted"} <= set(pl.read_csv(out)["reusability"]), name
            assert both.rows == pl.read_csv(out).height
