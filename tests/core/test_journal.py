"""The journal every resumable, sharded output is written through: framing, cuts, settings, locks, merging."""

from __future__ import annotations

import json
import multiprocessing
import os
import shutil
import signal
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from europeana_imgcls.core import journal as journal_module
from europeana_imgcls.core.errors import DatasetError
from europeana_imgcls.core.journal import Journal, KeySet, Output, Part, input_key, part_name, read_records
from europeana_imgcls.core.outputs import OutputKind
from europeana_imgcls.core.sharding import Shard
from europeana_imgcls.core.tables import atomic_path

# Every character that ends a line somewhere (str.splitlines, a CSV reader, a JSON parser) or breaks a decoder.
HOSTILE = [
    "plain",
    "line\u2028sep",
    "para\u2029sep",
    "next\u0085line",
    "new\nline",
    "cr\rreturn",
    "tab\tx",
    'quote"s',
    "back\\slash",
    "emoji \U0001f5bc",
    "nul\x00byte",
    "ſtraße ﬁ",
]


def journal(folder: Path, shard: Shard | None = None, **settings: object) -> Journal:
    return Journal(folder, what=f"test output in {folder}", settings=settings or {"model": "m1"}, shard=shard)


def test_any_character_in_a_key_or_value_comes_back_whole(tmp_path: Path) -> None:
    with journal(tmp_path / "j") as j:
        for i, key in enumerate(HOSTILE):
            j.append(key, {"text": key, "n": i})
    raw = (tmp_path / "j" / "part.ndjson").read_bytes()
    assert raw.isascii() and raw.count(b"\n") == len(HOSTILE)  # one line a record, whatever it holds
    got = list(journal(tmp_path / "j").records())
    assert [k for k, _ in got] == HOSTILE and [v["text"] for _, v in got] == HOSTILE


def test_a_record_cut_mid_character_is_dropped_reported_and_trimmed(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    folder = tmp_path / "j"
    with journal(folder) as j:
        j.append("a", {"n": 1})
        j.append("b", {"n": 2})
    part = folder / "part.ndjson"
    with part.open("ab") as handle:  # a write that stopped inside a UTF-8 character: bytes no record holds
        handle.write('["c",{"t":"é'.encode()[:-1])
    reader = journal(folder)
    assert [k for k, _ in reader.records()] == ["a", "b"]
    assert len(reader.done()) == 2 and reader.cut == 1 and "cut short" in caplog.text
    with journal(folder) as writer:  # the writer trims its part before it appends
        assert writer.cut == 1
        writer.append("c", {"n": 3})
    assert [k for k, _ in journal(folder).records()] == ["a", "b", "c"]
    assert part.read_bytes().endswith(b'["c",{"n":3}]\n')


def test_a_damaged_line_in_the_middle_is_skipped_not_fatal(tmp_path: Path) -> None:
    folder = tmp_path / "j"
    folder.mkdir()
    (folder / "part.ndjson").write_bytes(b'["a",{"n":1}]\n\xff\xfe garbage\n{"not":"ours"}\n["b",{"n":2}]\n')
    reader = journal(folder)
    assert list(reader.records()) == [("a", {"n": 1}), ("b", {"n": 2})] and "b" in reader.done()


def test_other_settings_are_refused_naming_both_values(tmp_path: Path) -> None:
    with journal(tmp_path / "j", model="abc123", split="best") as j:
        j.append("a", {"n": 1})
    with pytest.raises(DatasetError, match=r"model: \"abc123\" then, \"def456\" now") as error:
        journal(tmp_path / "j", model="def456", split="best").open()
    assert "split" not in str(error.value)
    with journal(tmp_path / "j", model="abc123", split="best") as again:  # the same settings carry on
        again.append("b", {"n": 2})


def _hold(folder: str, ready: multiprocessing.synchronize.Event, done: multiprocessing.synchronize.Event) -> None:
    with journal(Path(folder)):
        ready.set()
        done.wait(60)


@pytest.mark.slow(seconds=2)  # a second process
def test_a_second_writer_of_a_part_is_refused_in_one_line(tmp_path: Path) -> None:
    context = multiprocessing.get_context("spawn")
    ready, done = context.Event(), context.Event()
    holder = context.Process(target=_hold, args=(str(tmp_path / "j"), ready, done))
    holder.start()
    try:
        assert ready.wait(60)
        with pytest.raises(DatasetError, match=rf"is being written by process {holder.pid} on "):
            journal(tmp_path / "j").open()
    finally:
        done.set()
        holder.join(60)
    with journal(tmp_path / "j") as j:  # free again once the writer is gone
        j.append("a", {"n": 1})


def test_shards_write_their_own_parts_and_the_merge_keeps_each_key_once(tmp_path: Path) -> None:
    folder = tmp_path / "j"
    for index in range(3):
        shard = Shard(index, 3)
        with journal(folder, shard) as j:
            for n in range(index * 2, index * 2 + 3):  # neighbouring shards overlap by one key
                j.append(f"k{n}", {"shard": index})
    names = sorted(p.name for p in folder.glob("*.ndjson"))
    assert names == [part_name(Shard(i, 3)) for i in range(3)]
    own = journal(folder, Shard(1, 3))
    assert [k for k, _ in own.records()] == ["k2", "k3", "k4"]  # a shard sees its own part
    merged = journal(folder)
    got = list(merged.records())
    assert [k for k, _ in got] == ["k0", "k1", "k2", "k3", "k4", "k5", "k6"]
    assert dict(got)["k2"] == {"shard": 0}  # the first record of a key wins
    written: list[tuple[str, object]] = []
    with merged:
        merged.merge(written.extend)
    assert written == got
    assert not list(folder.glob("*.ndjson")) and not list(folder.glob("*.lock"))
    assert (folder / "settings.json").is_file()


def test_the_merge_waits_for_no_shard_it_cannot_lock(tmp_path: Path) -> None:
    folder = tmp_path / "j"
    with journal(folder, Shard(0, 2)) as j:
        j.append("a", {"n": 1})
    running = journal(folder, Shard(1, 2)).open()
    try:  # refused as it starts, not after its work: the shard's process named
        with pytest.raises(DatasetError, match=rf"being written by its shards \(process {os.getpid()} on ") as error:
            journal(folder).open()
        assert "\n" not in str(error.value)
    finally:
        running.close()
    with journal(folder) as merging:  # every shard done: the merge takes every part
        merging.merge(list)
    assert not list(folder.glob("*.ndjson"))


def test_a_shard_and_a_run_without_shard_on_one_output_exclude_each_other(tmp_path: Path) -> None:
    folder = tmp_path / "j"
    with journal(folder) as unsharded:
        unsharded.append("a", {"n": 1})
        for index in range(2):
            with pytest.raises(DatasetError, match=rf"being written by a run without `shard` \(process {os.getpid()}"):
                journal(folder, Shard(index, 2)).open()
    first, second = journal(folder, Shard(0, 2)).open(), journal(folder, Shard(1, 2)).open()  # shards run together
    try:
        with pytest.raises(DatasetError, match="being written by its shards"):
            journal(folder).open()
    finally:
        first.close()
        second.close()


@pytest.mark.parametrize(
    "line",
    [
        b'["k",5]',
        b'["k","abc"]',
        b"[5,{}]",
        b"{}",
        b"[]",
        b'"x"',
        b'["k",null]',
        b'["k",[1]]',
        b'["k",{"n":NaN}]',
        b"[" * 50_000,
        b'["k",{}, 1]',
    ],
)
def test_a_line_whose_value_is_not_the_stages_is_dropped_and_said_like_a_cut_one(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, line: bytes
) -> None:
    folder = tmp_path / "j"
    folder.mkdir()
    (folder / "part.ndjson").write_bytes(b'["a",{"n":1}]\n' + line + b'\n["b",{"n":2}]\n')
    reader = journal(folder)
    assert list(reader.records()) == [("a", {"n": 1}), ("b", {"n": 2})]
    assert list(reader.entries()) == [("a", {"n": 1}), ("b", {"n": 2})] and len(reader.done()) == 2
    assert reader.cut >= 1 and "skipped a damaged record" in caplog.text


def test_a_stage_says_what_its_values_are_and_a_check_that_trips_refuses(tmp_path: Path) -> None:
    folder = tmp_path / "j"
    folder.mkdir()
    (folder / "part.ndjson").write_bytes(b'["a",{"n":1}]\n["b",{"n":"x"}]\n["c",{}]\n')
    reader = Journal(folder, what="t", settings={}, check=lambda v: v["n"] + 1 > 0)  # KeyError, TypeError: refused
    assert list(reader.records()) == [("a", {"n": 1})] == list(reader.entries()) and reader.cut == 2
    assert list(read_records(folder / "part.ndjson")) == [("a", {"n": 1}), ("b", {"n": "x"}), ("c", {})]


@pytest.mark.parametrize("name", ["part.ndjson", "part.shard-0-of-2.ndjson", "settings.json", "part.ndjson.lock"])
@pytest.mark.parametrize("kind", ["symlink", "fifo"])
def test_a_journal_file_that_is_a_link_or_a_fifo_is_refused_never_opened(tmp_path: Path, name: str, kind: str) -> None:
    folder = tmp_path / "j"
    folder.mkdir()
    outside = tmp_path / "precious.txt"
    outside.write_text("mine\n")
    if kind == "symlink":
        (folder / name).symlink_to(outside)
    else:
        os.mkfifo(folder / name)
    with pytest.raises(DatasetError, match="remove it, then run again") as error, journal(folder) as j:
        j.append("a", {"n": 1})
        list(j.records())
    assert "\n" not in str(error.value) and outside.read_text() == "mine\n"  # a FIFO would have hung the test
    (folder / name).unlink()
    linked = tmp_path / "linked"
    linked.symlink_to(folder, target_is_directory=True)
    with pytest.raises(DatasetError, match="is a symbolic link"):
        journal(linked).open()


def test_key_sets_hold_digests_not_keys() -> None:
    keys = KeySet(b"".join(KeySet.digest(f"/item/{n}") for n in range(1000)))
    assert len(keys) == 1000 and "/item/999" in keys and "/item/1000" not in keys and 5 not in keys


def test_input_key_knows_a_file_by_where_it_points(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "a.jpg").write_bytes(b"x")
    monkeypatch.chdir(tmp_path)
    assert input_key(None, "a.jpg") == input_key(None, str(tmp_path / "a.jpg"))
    assert input_key("/9/x", "a.jpg") == "/9/x" and input_key(None, "https://h/x.jpg") == "https://h/x.jpg"


def test_read_records_reads_a_part_for_tools(tmp_path: Path) -> None:
    with journal(tmp_path / "j") as j:
        j.append("a", {"n": [1, 2]})
    assert list(read_records(tmp_path / "j" / "part.ndjson")) == [("a", {"n": [1, 2]})]


def test_a_part_name_is_read_back_as_the_writer_that_wrote_it() -> None:
    for part in (Part(), Part(Shard(1, 4)), Part(Shard(1, 4), 0), Part(None, 3), Part(Shard(12, 40), 7)):
        assert Part.of(part.name) == part and part.name == part_name(part.shard, part.rank)
    assert Part(Shard(1, 4), 0).name == "part.shard-1-of-4.rank-0.ndjson"
    for stranger in ("part.ndjson.lock", "settings.json", "part.shard-x-of-4.ndjson", "part.shard-1-of-4.ndjson~"):
        assert Part.of(stranger) is None


# ---------------------------------------------------------------------------------------------
# The merge: the output asked of the policy, a finished output taken back in, the parts merged into it

LINES = OutputKind("test-lines", "test lines")  # no recogniser: `resume` carries any such file on


def _output(path: Path) -> Output:
    """A stage's output: JSON lines ``{"key": k, **value}``, read back keyed as the journal keys them."""

    def read() -> Iterator[tuple[str, Any]]:
        for line in path.read_text(encoding="utf-8").splitlines():
            row = json.loads(line)
            yield row.pop("key"), row

    return Output(path, LINES, read)


def _writer(path: Path) -> Callable[[Iterator[tuple[str, Any]]], None]:
    """The stage's writer of that output: whole or not at all."""

    def write(records: Iterator[tuple[str, Any]]) -> None:
        with atomic_path(path) as tmp, tmp.open("w", encoding="utf-8") as handle:
            handle.writelines(json.dumps({"key": key, **value}) + "\n" for key, value in records)

    return write


def _keys_of(path: Path) -> list[str]:
    return [json.loads(line)["key"] for line in path.read_text(encoding="utf-8").splitlines()]


def _merge_then_die(folder: str, out: str) -> None:
    """A merging run killed (SIGKILL) the moment its output is in place, before it removes the parts."""

    def write(records: Iterator[tuple[str, Any]]) -> None:
        _writer(Path(out))(records)
        os.kill(os.getpid(), signal.SIGKILL)

    journal(Path(folder)).open(resume=True, output=_output(Path(out))).merge(write)


@pytest.mark.slow(seconds=2)  # predictions, a killed merge and its resume
@pytest.mark.parametrize("left", ["every part", "the last part"])
def test_a_merge_killed_after_writing_its_output_resumes_without_loss_or_duplicates(tmp_path: Path, left: str) -> None:
    folder, out = tmp_path / "out.jsonl.journal", tmp_path / "out.jsonl"
    for index in range(2):
        with journal(folder, Shard(index, 2)) as shard:
            for n in range(index * 3, index * 3 + 4):  # the shards overlap by one key, k3
                shard.append(f"k{n}", {"shard": index})
    killed = multiprocessing.get_context("spawn").Process(target=_merge_then_die, args=(str(folder), str(out)))
    killed.start()
    killed.join(60)
    assert killed.exitcode == -signal.SIGKILL
    every = [f"k{n}" for n in range(7)]
    assert _keys_of(out) == every and len(list(folder.glob("part.shard-*.ndjson"))) == 2  # the output, the parts
    if left == "the last part":  # a kill while the parts were being removed
        (folder / part_name(Shard(0, 2))).unlink()
    with pytest.raises(DatasetError, match=r"out.jsonl already exists: pass `resume` to carry it on"):
        journal(folder).open(resume=False, output=_output(out))
    with journal(folder).open(resume=True, output=_output(out)) as resumed:
        resumed.merge(_writer(out))
    assert sorted(_keys_of(out)) == every and not list(folder.glob("*.ndjson"))  # every key, once; no part left


def test_a_resume_takes_a_finished_output_in_once_and_a_parts_record_wins(tmp_path: Path) -> None:
    folder, out = tmp_path / "out.jsonl.journal", tmp_path / "out.jsonl"
    out.write_text('{"key": "a", "n": 1}\n{"key": "b", "n": 2}\n', encoding="utf-8")
    with journal(folder, Shard(0, 1)) as shard:  # a shard run after the output was merged: a newer record of b
        shard.append("b", {"n": 20})
    with journal(folder).open(resume=True, output=_output(out)) as interrupted:
        interrupted.append("c", {"n": 3})  # ...then killed before its merge
    with journal(folder).open(resume=True, output=_output(out)) as resumed:
        assert list(read_records(resumed.part)) == [("a", {"n": 1}), ("c", {"n": 3})]  # a taken in once, b not
        resumed.merge(_writer(out))
    rows = [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()]
    assert rows == [{"key": "b", "n": 20}, {"key": "a", "n": 1}, {"key": "c", "n": 3}]


def test_a_finished_output_whose_journal_is_gone_is_not_taken_in_by_a_resume(trained_run: Path, tmp_path: Path) -> None:
    """The journal's settings name what wrote an output (the model, the runtime): with them gone, a resume recreated
    them from its own run and took in every row another model had written, then credited them to itself. Without
    its settings, a finished output is not carried on."""
    from europeana_imgcls import PredictConfig, predict

    from ..support import make_folders

    images = make_folders(tmp_path / "images", per_class=2, size=40)
    out = tmp_path / "p.jsonl"
    predict(PredictConfig(run=trained_run, inputs=[str(images)], output=out, quiet=True))
    before = out.read_bytes()
    shutil.rmtree(tmp_path / "p.jsonl.journal")
    for shard in (None, "0/2"):
        with pytest.raises(DatasetError, match=r"p.jsonl exists, but its journal .* no longer says what wrote it"):
            settings = dict(inputs=[str(images)], output=out, resume=True, quiet=True, shard=shard)
            predict(PredictConfig(run=trained_run, **settings))
    assert out.read_bytes() == before


def test_a_shard_started_again_is_told_to_resume_never_to_delete_the_other_shards_work(tmp_path: Path) -> None:
    folder = tmp_path / "out.jsonl.journal"
    for index in range(2):
        with journal(folder, Shard(index, 2)) as shard:
            shard.append(f"k{index}", {"n": index})
    with pytest.raises(DatasetError) as refused:
        journal(folder, Shard(0, 2)).open(resume=False)
    said = str(refused.value)
    assert "pass `resume` to carry on shard 0/2" in said and "delete that folder to start again" not in said, said
    assert len(list(folder.glob("part.shard-*.ndjson"))) == 2


def test_an_existing_output_is_refused_without_resume_before_the_journal_is_touched(tmp_path: Path) -> None:
    folder, out = tmp_path / "out.jsonl.journal", tmp_path / "out.jsonl"
    out.write_text("not a journal's\n", encoding="utf-8")
    for shard in (None, Shard(0, 2)):
        with pytest.raises(DatasetError, match=r"already exists: pass `resume` to carry it on, or choose another"):
            journal(folder, shard).open(resume=False, output=_output(out))
    assert not folder.exists() and out.read_text(encoding="utf-8") == "not a journal's\n"
    folder.mkdir()
    (folder / "part.ndjson").symlink_to(out)
    with pytest.raises(DatasetError, match="symbolic link"), journal(folder).open(resume=True, output=_output(out)):
        pass  # carried on, the output is asked no more than the journal allows
    assert out.read_text(encoding="utf-8") == "not a journal's\n"


def test_a_shard_or_a_torchrun_rank_but_0_leaves_its_part_to_the_merge(tmp_path: Path) -> None:
    folder, out = tmp_path / "out.jsonl.journal", tmp_path / "out.jsonl"
    out.write_text('{"key": "z", "n": 0}\n', encoding="utf-8")

    def never(records: Iterator[tuple[str, Any]]) -> None:
        raise AssertionError("only the run without shard writes the output")

    rank = Journal(folder, what="t", settings={"model": "m1"}, rank=1)
    with rank.open(resume=False, output=_output(out)):  # one process of a job asks the output policy: rank 0
        rank.append("b", {"n": 2})
        rank.merge(never)
    with journal(folder, Shard(0, 2)).open(resume=True, output=_output(out)) as shard:
        shard.append("a", {"n": 1})
        shard.merge(never)
    assert list(read_records(folder / part_name(Shard(0, 2)))) == [("a", {"n": 1})]  # nor was z taken in
    assert list(read_records(folder / part_name(None, 1))) == [("b", {"n": 2})]
    with journal(folder).open(resume=True, output=_output(out)) as merging:
        merging.merge(_writer(out))
    assert sorted(_keys_of(out)) == ["a", "b", "z"]


# ---------------------------------------------------------------------------------------------
# The holes the journal closes, through the stages that write on it


def _hostile_folder(root: Path) -> list[str]:
    """Images whose file names (and so record IDs) hold every character that splits lines somewhere."""
    from PIL import Image

    from europeana_imgcls.core.naming import file_name

    ids = [f"/9200/{label}" for label in ("a\u2028b", "c\u2029d", "e\u0085f", "plain1", "plain2", "ü\u2028ß")]
    root.mkdir(parents=True)
    for n, record_id in enumerate(ids):
        Image.new("RGB", (40, 40), (40 * n, 90, 200 - 30 * n)).save(root / file_name(record_id))
    return ids


@pytest.mark.parametrize("suffix", [".csv", ".jsonl"])
def test_a_shard_merge_keeps_records_whose_names_hold_line_separators(
    trained_run: Path, tmp_path: Path, suffix: str
) -> None:
    from europeana_imgcls import PredictConfig, predict

    folder = tmp_path / "in"
    _hostile_folder(folder)
    out = tmp_path / f"p{suffix}"
    for k in range(2):
        predict(PredictConfig(run=trained_run, inputs=[str(folder)], output=out, shard=f"{k}/2", quiet=True))
    merged = predict(PredictConfig(run=trained_run, inputs=[str(folder)], output=out, resume=True, quiet=True))
    assert (merged.predicted, merged.already_done) == (0, 6)
    images = sorted(Path(r["image"]).name for r in merged.rows())
    assert images == sorted(p.name for p in folder.iterdir())  # all 6, none dropped


def test_an_enrich_shard_merge_annotates_records_whose_ids_hold_line_separators(
    trained_run: Path, tmp_path: Path
) -> None:
    import json

    from europeana_imgcls import EnrichConfig, enrich
    from europeana_imgcls.core.naming import record_id_of

    folder = tmp_path / "in"
    ids = _hostile_folder(folder)
    vocab = tmp_path / "vocab.json"
    vocab.write_text(json.dumps({c: f"http://example.org/concept/{c}" for c in ("map", "painting", "specimen")}))
    common = dict(run=trained_run, inputs=[str(folder)], output=tmp_path / "a.jsonl", vocab=vocab, quiet=True)
    for k in range(2):
        enrich(EnrichConfig(**common, shard=f"{k}/2"))
    report = enrich(EnrichConfig(**common, resume=True))
    assert report.records == 6 and report.already_done == 6  # every record scored by the shards, none dropped
    scored = [json.loads(line) for line in report.predictions.read_bytes().split(b"\n") if line]
    assert sorted(record_id_of(Path(r["image"]).name) for r in scored) == sorted(ids)  # one a line, whatever
    # the ID holds
    annotated = [json.loads(line) for line in report.output.read_bytes().split(b"\n") if line]
    assert len(annotated) == report.annotations and {a["target"] for a in annotated} <= {
        f"http://data.europeana.eu/item{i}" for i in ids
    }


def _other_model(run: Path, tmp_path: Path) -> Path:
    """The same run with one weight of one split changed: another model, by its digest."""
    import shutil

    import torch

    other = tmp_path / "other_run"
    shutil.copytree(run, other)
    state = torch.load(other / "split_0" / "model.pt", weights_only=True)
    name = next(iter(state["model_state"]))
    state["model_state"][name] = state["model_state"][name] + 1
    torch.save(state, other / "split_0" / "model.pt")
    return other


def test_a_predict_merge_refuses_shards_of_another_model(trained_run: Path, tmp_path: Path) -> None:
    from europeana_imgcls import PredictConfig, predict

    folder = tmp_path / "in"
    _hostile_folder(folder)
    out = tmp_path / "p.csv"
    predict(PredictConfig(run=trained_run, inputs=[str(folder)], output=out, shard="0/2", quiet=True))
    other = _other_model(trained_run, tmp_path)
    with pytest.raises(DatasetError, match=r"other settings \(model: \"[0-9a-f]{16}\" then, \"[0-9a-f]{16}\" now"):
        predict(PredictConfig(run=other, inputs=[str(folder)], output=out, shard="1/2", quiet=True))
    with pytest.raises(DatasetError, match="model:"):
        predict(PredictConfig(run=other, inputs=[str(folder)], output=out, resume=True, quiet=True))
    predict(PredictConfig(run=trained_run, inputs=[str(folder)], output=out, resume=True, quiet=True))
    with pytest.raises(DatasetError, match="model:"):  # adding to a finished output: the same model or none
        predict(PredictConfig(run=other, inputs=[str(folder)], output=out, resume=True, quiet=True))


@pytest.mark.slow
@pytest.mark.parametrize("command", ["predict", "enrich"])
def test_two_runs_on_one_output_the_second_is_refused_and_nothing_is_lost(
    command: str, trained_run: Path, tmp_path: Path
) -> None:
    import shutil
    import signal
    import subprocess
    import sys
    import time

    from europeana_imgcls import EnrichConfig, PredictConfig, enrich, predict

    folder = tmp_path / "in"
    _hostile_folder(folder)
    for n in range(3):
        for path in list(folder.iterdir())[:6]:
            shutil.copy(path, folder / f"{path.stem}[x{n:02x}].jpg")
    out = tmp_path / ("p.csv" if command == "predict" else "a.jsonl")
    gate = tmp_path / "first-batch-done"
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2]), "EIC_TINY_GATE": str(gate)}
    first = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "tests.eic_tiny",
            command,
            str(trained_run),
            str(folder),
            "-o",
            str(out),
            "--batch-size",
            "2",
            "--quiet",
        ],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        while first.poll() is None and not gate.exists():
            time.sleep(0.01)
        assert first.poll() is None
        settings = dict(run=trained_run, inputs=[str(folder)], output=out, resume=True, quiet=True)
        with pytest.raises(DatasetError, match=rf"is being written by process {first.pid} on "):
            predict(PredictConfig(**settings)) if command == "predict" else enrich(EnrichConfig(**settings))
    finally:
        first.send_signal(signal.SIGKILL)
        first.wait(60)
    settings = dict(run=trained_run, inputs=[str(folder)], output=out, resume=True, quiet=True)
    done = predict(PredictConfig(**settings)) if command == "predict" else enrich(EnrichConfig(**settings))
    total = len(list(folder.iterdir()))
    if command == "predict":
        assert done.already_done > 0 and done.already_done + done.predicted == total
        assert len({r["image"] for r in done.rows()}) == len(list(done.rows())) == total
    else:
        assert done.records == total and done.already_done > 0


def test_a_download_whose_journal_was_cut_mid_character_carries_on(
    sandbox, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    import csv

    import polars as pl
    from typer.testing import CliRunner

    from europeana_imgcls.cli.app import app

    from ..support import sandbox_table

    table = sandbox_table(sandbox, tmp_path / "t.csv")
    pl.read_csv(table).head(12).write_csv(table)  # a dozen records are enough to carry on with
    dead = {"category": "map", "ID": "/dead/ü\u2028ß", "URL": f"{sandbox.base_url}/faults/404/1"}
    with table.open("a", newline="", encoding="utf-8") as handle:
        csv.DictWriter(handle, fieldnames=["category", "ID", "URL"], extrasaction="ignore").writerow(dead)
    out = tmp_path / "img"
    runner = CliRunner()
    first = runner.invoke(app, ["download", str(table), "-o", str(out), "--quiet", "--max-side", "64"])
    assert first.exit_code == 0, first.stderr
    # What a full disk or a power cut leaves: a record cut inside a UTF-8 character at the journal's end.
    (out / ".journal").mkdir(exist_ok=True)
    (out / ".journal" / "part.ndjson").write_bytes('["/dead/é",{"URL":"x","error":"é'.encode()[:-1])
    again = runner.invoke(app, ["download", str(table), "-o", str(out), "--quiet", "--max-side", "64"])
    assert again.exit_code == 0 and "Traceback" not in again.stderr
    assert "dropped a record cut short at the end of part.ndjson" in caplog.text  # said, and nothing else lost
    with (out / "failures.csv").open(newline="", encoding="utf-8") as handle:
        assert {row["ID"] for row in csv.DictReader(handle)} == {dead["ID"]}


WRONG_ROWS = [["/k/0", {}], ["/k/1", {"image": "x"}], ["/k/2", {"embedding": 5, "image": "y"}], ["/k/3", "abc"]]


def _plant(part: Path) -> None:
    """Records of the wrong shape where a shard's records are: they must reach no output."""
    import json

    with part.open("ab") as handle:
        handle.writelines(json.dumps(row).encode() + b"\n" for row in WRONG_ROWS)


@pytest.mark.parametrize("suffix", [".csv", ".jsonl"])
def test_a_predict_merge_writes_no_row_for_a_record_of_the_wrong_shape(
    trained_run: Path, tmp_path: Path, suffix: str, caplog: pytest.LogCaptureFixture
) -> None:
    from europeana_imgcls import PredictConfig, predict

    folder = tmp_path / "in"
    _hostile_folder(folder)
    out = tmp_path / f"p{suffix}"
    predict(PredictConfig(run=trained_run, inputs=[str(folder)], output=out, shard="0/1", quiet=True))
    _plant(out.with_name(out.name + ".journal") / part_name(Shard(0, 1)))
    merged = predict(PredictConfig(run=trained_run, inputs=[str(folder)], output=out, resume=True, quiet=True))
    rows = list(merged.rows())
    assert len(rows) == 6 and sorted(Path(r["image"]).name for r in rows) == sorted(p.name for p in folder.iterdir())
    assert "skipped a damaged record" in caplog.text


def test_an_embed_merge_takes_no_record_of_the_wrong_shape(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    import polars as pl

    from europeana_imgcls.core.config import EmbedConfig
    from europeana_imgcls.modelling.embedding import embed

    from ..support import make_folders

    data = make_folders(tmp_path / "data", per_class=2, size=32)
    settings = dict(data_dir=data, arch="tiny", weights="none", input_size=32, quiet=True)
    out = tmp_path / "e.parquet"
    embed(EmbedConfig(**settings, output=out, shard="0/1"))
    _plant(out.with_name(out.name + ".journal") / part_name(Shard(0, 1)))
    merged = embed(EmbedConfig(**settings, output=out, resume=True))
    assert merged.already_done == 6 and pl.read_parquet(out).height == 6
    assert "skipped a damaged record" in caplog.text


def test_an_embed_merge_killed_between_its_two_files_is_resumed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import polars as pl

    from europeana_imgcls.core.config import EmbedConfig
    from europeana_imgcls.core.tables import sidecar
    from europeana_imgcls.modelling.embedding import embed

    from ..support import make_folders

    data = make_folders(tmp_path / "data", per_class=2, size=32)
    settings = dict(data_dir=data, arch="tiny", weights="none", input_size=32, quiet=True)
    out = tmp_path / "e.parquet"
    embed(EmbedConfig(**settings, output=out, shard="0/1"))
    placed: list[str] = []

    def killed_at_the_second(source: str, target: str) -> None:  # the merge renames its table and its sidecar
        if placed:
            raise KeyboardInterrupt  # what a kill between the two renames leaves
        placed.append(target)
        os.rename(source, target)

    with monkeypatch.context() as patch, pytest.raises(KeyboardInterrupt):
        patch.setattr(os, "replace", killed_at_the_second)
        embed(EmbedConfig(**settings, output=out, resume=True))
    assert len(placed) == 1 and not out.with_name(out.name + ".tmp").exists()
    merged = embed(EmbedConfig(**settings, output=out, resume=True))  # not refused as a table eic did not write
    assert merged.already_done == 6 and pl.read_parquet(out).height == 6 and sidecar(out, "embedding").is_file()


def test_a_journal_says_whether_it_mentions_a_text_across_its_parts_and_blocks(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """What a harvest asks before it parses every line again: whether a rare record is there at all. Found across
    the scan's blocks and in a shard's part; a value that only quotes the text (escaped) does not mention it."""
    with journal(tmp_path / "j") as j:
        j.append("a", {"text": 'said "again":true'})  # a string holding it: escaped, \\"again\\":true
        j.append("b", {"n": 1})
    assert not journal(tmp_path / "j").mentions(b'"again":true')
    with journal(tmp_path / "j", shard=Shard(0, 2)) as j:
        j.append("c", {"padding": "x" * 5000, "again": True})
    assert journal(tmp_path / "j").mentions(b'"again":true')
    raw = (tmp_path / "j" / "part.shard-0-of-2.ndjson").read_bytes()
    at = raw.index(b'"again":true')
    for block in (at + 3, at + 7, 64):  # the text cut by a block's end, and wholly inside one
        monkeypatch.setattr(journal_module, "SCAN_BLOCK", block)
        assert journal(tmp_path / "j").mentions(b'"again":true'), block
