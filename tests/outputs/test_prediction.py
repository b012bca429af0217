"""outputs/prediction.py: eic predict on the tests' shared run: rows, resume after a kill, shards and merges."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import polars as pl
import pytest
from PIL import Image
from typer.testing import CliRunner

from europeana_imgcls import PredictConfig, predict
from europeana_imgcls.cli.app import app
from europeana_imgcls.core.sharding import Shard
from europeana_imgcls.europeana.sandbox import Knobs, Sandbox

from ..support import rows, sandbox_config, sandbox_table, torchrun


def test_predict_files_folders_urls_and_heatmaps(trained: Path, eval_dir: Path, tmp_path: Path) -> None:
    with Sandbox(sandbox_config(per_level=2)) as sb:
        record = next(r for r in sb.catalogue if r.type == "IMAGE" and r.has_url and len(r.labels) == 1)
        url = sb.image_url(record)
        single = next((eval_dir / "painting").iterdir())
        out = tmp_path / "p.csv"
        report = predict(
            PredictConfig(
                run=trained,
                inputs=[str(eval_dir / "specimen"), str(single), url],
                output=out,
                top_k=2,
                gradcam_dir=tmp_path / "cams",
                threshold=0.0,
                quiet=True,
            )
        )
    predicted = rows(out)
    assert report.predicted == len(predicted) == 7 + 1 + 1
    assert {p["image"] for p in predicted} >= {str(single), url}
    for p in predicted:
        top = json.loads(p["top_k"])
        assert len(top) == 2 and top[0][0] == p["prediction"] and top[0][1] >= top[1][1]
        assert float(p["confidence"]) == pytest.approx(top[0][1], abs=1e-6)
    assert len(list((tmp_path / "cams").glob("*.jpg"))) == 9


def test_predict_resumes_after_a_kill(trained: Path, eval_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "p.csv"
    folder = str(eval_dir / "painting")
    predict(PredictConfig(run=trained, inputs=[folder], output=out, quiet=True))
    full = rows(out)
    # what a killed run leaves: the journal's first records and half a record, cut inside a character
    from europeana_imgcls.core.journal import frame, input_key

    records = [frame(input_key(r["ID"] or None, r["image"]), r) for r in full]
    (tmp_path / "p.csv.journal" / "part.ndjson").write_bytes(b"".join(records[:3]) + records[3][:15])
    out.unlink()
    result = CliRunner().invoke(app, ["predict", str(trained), folder, "-o", str(out), "--quiet"])
    assert result.exit_code == 1 and "--resume" in result.stderr
    report = predict(PredictConfig(run=trained, inputs=[folder], output=out, quiet=True, resume=True))
    assert report.already_done == 3 and report.predicted == len(full) - 3
    assert sorted(r["image"] for r in rows(out)) == sorted(r["image"] for r in full)
    assert not list(tmp_path.glob("p.csv.journal/*.ndjson"))


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["predict", "{tmp}/nowhere", "{tmp}"], "nowhere: no such file or folder"),
        (["predict", "{run}"], "nothing to predict"),
        (["predict", "{run}", "{tmp}/missing.jpg"], "no such image file"),
        (["predict", "{run}", "{tmp}", "-o", "{tmp}/p.txt"], ".csv or .jsonl"),
        (["predict", "{run}", "{tmp}", "--split", "7"], "no split 7"),
        (["predict", "{run}", "{tmp}", "--cam-method", "magic", "--gradcam-dir", "{tmp}/c"], "magic"),
        (["evaluate", "{run}", "{tmp}/nowhere"], "nowhere: no such file or folder"),
        (["evaluate", "{run}", "{tmp}"], "no class subfolders (it holds 1 image directly): put the images in"),
    ],
)
def test_bad_inputs_are_one_line(trained: Path, tmp_path: Path, args: list[str], message: str) -> None:
    (tmp_path / "a.jpg").write_bytes(b"")  # an image file that is not an image
    args = [a.format(tmp=tmp_path, run=trained) for a in args]
    if args[0] == "predict" and "-o" not in args:
        args += ["-o", str(tmp_path / "p.csv")]
    result = CliRunner().invoke(app, [*args, "--quiet"] if args[0] == "predict" else args)
    assert result.exit_code != 0
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], result.stderr


@pytest.mark.slow
def test_predict_under_torchrun_shards_and_merges(trained: Path, eval_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "p.csv"
    done = torchrun(
        "predict",
        str(trained),
        str(eval_dir / "map"),
        str(eval_dir / "specimen"),
        "-o",
        str(out),
        "--quiet",
        "--device",
        "cpu",
    )
    assert done.returncode == 0, done.stderr[-3000:]
    images = [r["image"] for r in rows(out)]
    assert len(images) == len(set(images)) == 7 + 7  # broken.jpg is listed as unreadable, not predicted
    assert not list(tmp_path.glob("p.csv.journal/*.ndjson"))


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGINT])
def test_predict_killed_mid_run_resumes_to_the_full_output(
    sig: signal.Signals, trained: Path, eval_dir: Path, tmp_path: Path
) -> None:
    """Rule 3 with a real process: every row a killed prediction wrote is kept, none twice, none cut short.

    The tiny net waits after its first batch (tests/eic_tiny.py's gate) until the signal: the run always has
    work journaled and work left when it is killed, however fast or slow the machine."""
    folder = tmp_path / "many"
    for n in range(3):
        for path in (eval_dir / "painting").glob("*.jpg"):
            folder.mkdir(exist_ok=True)
            shutil.copy(path, folder / f"{n}_{path.name}")
    full = predict(PredictConfig(run=trained, inputs=[str(folder)], output=tmp_path / "full.csv", quiet=True))
    out = tmp_path / "p.csv"
    gate = tmp_path / "first-batch-done"
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2]), "EIC_TINY_GATE": str(gate)}
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "tests.eic_tiny",
            "predict",
            str(trained),
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
    while proc.poll() is None and not gate.exists():
        time.sleep(0.01)
    assert proc.poll() is None, "the run ended before its first batch was labelled"
    proc.send_signal(sig)
    assert proc.wait(timeout=120) != 0 and not out.exists()
    report = predict(PredictConfig(run=trained, inputs=[str(folder)], output=out, quiet=True, resume=True))
    images = [r["image"] for r in rows(out)]
    assert sorted(images) == sorted(r["image"] for r in rows(tmp_path / "full.csv"))
    assert len(images) == len(set(images)) == full.predicted
    assert report.already_done > 0 and report.predicted > 0  # a resume happened
    assert report.already_done + report.predicted == full.predicted


def test_predict_says_what_it_could_not_read_and_which_splits_there_are(trained: Path, tmp_path: Path) -> None:
    notes = tmp_path / "notes.txt"
    notes.write_text("not an image")
    result = CliRunner().invoke(app, ["predict", str(trained), str(notes), "-o", str(tmp_path / "p.csv")])
    assert result.exit_code == 1 and "notes.txt cannot be read as images" in result.stderr
    assert not (tmp_path / "p.csv").exists()  # the retry is not refused
    result = CliRunner().invoke(
        app, ["predict", str(trained), str(notes), "--split", "5", "-o", str(tmp_path / "q.csv")]
    )
    assert result.exit_code == 1 and "no split 5; it has split_0, split_1, split_2" in result.stderr


# ---------------------------------------------------------------------------------------------
# Predict and embed in shards


@pytest.mark.slow(seconds=2)  # four predictions and a merge
def test_predict_in_shards_then_one_merge_equals_an_unsharded_prediction(trained_run: Path, tmp_path: Path) -> None:
    from europeana_imgcls import PredictConfig, predict

    with Sandbox(
        sandbox_config(per_level=4, thumbnail_missing_every=3), Knobs(shared_per_concept=0, triples_per_concept=0)
    ) as sb:
        table = sandbox_table(sb, tmp_path / "t.csv")
        # On the CPU in float32: on a GPU, mixed precision and per-batch-size kernels move probabilities in
        # their third decimal when shards batch other images together (docs/scale.md).
        common = dict(
            run=trained_run,
            table=table,
            quiet=True,
            source="thumbnail",
            thumbnail_url=f"{sb.base_url}/thumbnail/v3",
            device="cpu",
        )
        out = tmp_path / "sharded" / "p.csv"
        parts = [predict(PredictConfig(**common, output=out, shard=f"{k}/2")) for k in range(2)]
        assert not out.exists() and sorted(p.name for p in (out.parent / "p.csv.journal").glob("*.ndjson")) == [
            "part.shard-0-of-2.ndjson",
            "part.shard-1-of-2.ndjson",
        ]
        with pytest.raises(Exception, match="`resume`"):
            predict(PredictConfig(**common, output=out))  # the shards' rows are not thrown away
        merged = predict(PredictConfig(**common, output=out, resume=True))
        assert merged.predicted == 0 and merged.already_done == sum(p.predicted for p in parts) > 0
        reference = predict(PredictConfig(**common, output=tmp_path / "whole" / "p.csv"))
    by_id = {r["ID"]: r for r in merged.rows()}
    assert len(by_id) == reference.predicted
    for row in reference.rows():
        assert same_prediction(by_id[row["ID"]], row)
    assert not list(out.parent.glob("p.csv.journal/*.ndjson"))


def same_prediction(a: dict[str, str], b: dict[str, str]) -> bool:
    """Two prediction rows agree: every label and text exactly, probabilities to float precision. A shard
    batches other images together, and a CPU convolution's last bits may differ with the batch."""

    def numbers(row: dict[str, str]) -> list[float]:
        return [float(row["confidence"]), *(p for _, p in json.loads(row["top_k"]))]

    texts = {k: v for k, v in a.items() if k not in ("image", "confidence", "top_k")}
    return (
        texts == {k: v for k, v in b.items() if k not in ("image", "confidence", "top_k")}
        and [c for c, _ in json.loads(a["top_k"])] == [c for c, _ in json.loads(b["top_k"])]
        and numbers(a) == pytest.approx(numbers(b), abs=2e-6)
    )


def test_predict_shards_and_merge_name_a_folder_differently_yet_label_each_image_once(
    trained_run: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from europeana_imgcls import PredictConfig, predict

    from ..support import make_folders

    make_folders(tmp_path / "new", per_class=3, size=32)
    monkeypatch.chdir(tmp_path)
    out = tmp_path / "p.csv"
    for k in range(2):  # the shards name the folder relative to where they run...
        predict(PredictConfig(run=trained_run, inputs=["new"], output=out, shard=f"{k}/2", quiet=True))
    merged = predict(
        PredictConfig(run=trained_run, inputs=[str(tmp_path / "new")], output=out, resume=True, quiet=True)
    )  # ...the merge by its absolute path
    assert (merged.predicted, merged.already_done) == (0, 9)
    assert len(list(merged.rows())) == 9
    # A merge killed after writing the output but before removing the shards' parts: run again, once each.
    from europeana_imgcls.core.journal import frame, input_key

    with (tmp_path / "p.csv.journal" / "part.shard-0-of-2.ndjson").open("wb") as part:
        for row in merged.rows():
            part.write(frame(input_key(row["ID"] or None, row["image"]), row))
    again = predict(PredictConfig(run=trained_run, inputs=["new"], output=out, resume=True, quiet=True))
    assert again.predicted == 0 and len(list(again.rows())) == 9


# ---------------------------------------------------------------------------------------------
# Found in review


def test_a_shard_that_labels_nothing_leaves_the_merged_output_alone(trained_run: Path, tmp_path: Path) -> None:
    from europeana_imgcls import PredictConfig, predict
    from europeana_imgcls.core.errors import DatasetError

    folder = tmp_path / "in"
    folder.mkdir()
    broken = [folder / f"broken_{k}.jpg" for k in range(8)]
    for path in broken:
        path.write_bytes(b"not a picture")
    out = tmp_path / "p.csv"
    with pytest.raises(DatasetError):
        predict(PredictConfig(run=trained_run, inputs=[str(folder)], output=out, quiet=True))
    (folder / "broken_0.jpg").unlink()
    Image.new("RGB", (40, 40), (200, 30, 30)).save(folder / "good.jpg")
    predict(PredictConfig(run=trained_run, inputs=[str(folder)], output=out, quiet=True))
    shard = next(k for k in range(2) if any(Shard(k, 2).owns(p.name) for p in broken[1:]))
    with pytest.raises(DatasetError, match="nothing could be labelled"):
        predict(
            PredictConfig(
                run=trained_run,
                inputs=[str(p) for p in broken[1:]],
                output=out,
                quiet=True,
                shard=f"{shard}/2",
                resume=True,
            )
        )
    assert out.is_file() and len(pl.read_csv(out)) == 1
    (tmp_path / "p.csv.journal" / "part.shard-1-of-40.ndjson").write_text("")  # another count's empty leftover
    predict(
        PredictConfig(run=trained_run, inputs=[str(folder / "good.jpg")], output=tmp_path / "q.csv", quiet=True)
    )  # unaffected, and:
    (tmp_path / "q.csv.journal").mkdir(exist_ok=True)
    (tmp_path / "q.csv.journal" / "part.shard-1-of-40.ndjson").write_text("")
    predict(
        PredictConfig(
            run=trained_run, inputs=[str(folder / "good.jpg")], output=tmp_path / "q2.csv", quiet=True, shard="0/1"
        )
    )


def test_a_resume_that_labels_nothing_new_keeps_what_the_output_held(trained_run: Path, tmp_path: Path) -> None:
    """`--resume` given only an image it cannot read (or fetch) said "nothing could be labelled" and deleted the
    output: every row earlier runs had labelled, gone (its journal merged and removed). Enrich's predictions file
    went the same way, which made its annotations no longer eic's to resume."""
    from europeana_imgcls.core.errors import DatasetError

    good = tmp_path / "good.jpg"
    Image.new("RGB", (40, 40), (200, 30, 30)).save(good)
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"not a picture")
    out = tmp_path / "p.csv"
    predict(PredictConfig(run=trained_run, inputs=[str(good)], output=out, quiet=True))
    before = out.read_bytes()
    with pytest.raises(DatasetError, match="nothing could be labelled"):
        predict(PredictConfig(run=trained_run, inputs=[str(bad)], output=out, quiet=True, resume=True))
    assert out.read_bytes() == before
    with pytest.raises(DatasetError, match="nothing could be labelled"):  # a new output that would be empty: none
        predict(PredictConfig(run=trained_run, inputs=[str(bad)], output=tmp_path / "q.csv", quiet=True))
    assert not (tmp_path / "q.csv").exists()


def test_gradcam_figures_go_only_where_they_harm_nothing(trained_run: Path, tmp_path: Path) -> None:
    """`--gradcam-dir` asked no output policy: pointed at a class folder of the images it labelled, it put a figure
    per image among them (the next training took them for that class); it wrote through a link, into any folder
    of the user's, and a file there was a traceback-like "File exists" with a journal left behind."""
    from ..support import assert_one_line_error, eic, make_folders

    data = make_folders(tmp_path / "imgs", per_class=2, size=40)
    before = sorted(p.relative_to(data) for p in data.rglob("*"))
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "holiday.jpg").write_bytes(b"mine")
    (tmp_path / "elsewhere").mkdir()
    (tmp_path / "link").symlink_to(tmp_path / "elsewhere")
    (tmp_path / "f.txt").write_text("a file")
    for where, said in (
        (data / "map", "images it labels"),
        (data, "images it labels"),
        (mine, "holiday.jpg"),
        (tmp_path / "link", "symbolic link"),
        (tmp_path / "f.txt", "not a folder"),
    ):
        out = tmp_path / f"p_{where.name}.csv"
        result = eic("predict", trained_run, data / "map", "-o", out, "--gradcam-dir", where, "--quiet")
        assert_one_line_error(result, said)
        assert not out.exists() and not Path(f"{out}.journal").exists()
    assert sorted(p.relative_to(data) for p in data.rglob("*")) == before
    assert list((tmp_path / "elsewhere").iterdir()) == [] and (mine / "holiday.jpg").read_bytes() == b"mine"
    for turn in range(2):  # a folder of its own figures is carried on (a resume, another run)
        result = eic("predict", trained_run, data / "map", "-o", tmp_path / f"q{turn}.csv", "--gradcam-dir",
                     tmp_path / "cams", "--quiet")  # fmt: skip
        assert result.exit_code == 0, result.stderr
    assert len(list((tmp_path / "cams").glob("*.jpg"))) == 2


def test_an_output_inside_the_images_it_reads_is_refused(trained_run: Path, tmp_path: Path) -> None:
    """`eic evaluate RUN ev -o ev/out` made a class "out" of the evaluation's own figures, and `eic predict RUN imgs
    -o imgs/p.csv` put its journal (and fetched images) among the images: the next scan read them as a class."""
    from ..support import assert_one_line_error, eic, make_folders

    data = make_folders(tmp_path / "imgs", per_class=2, size=40)
    before = sorted(p.relative_to(data) for p in data.rglob("*"))
    assert_one_line_error(eic("evaluate", trained_run, data, "-o", data / "out", "--quiet"), "inside")
    assert_one_line_error(eic("predict", trained_run, data, "-o", data / "p.csv", "--quiet"), "inside")
    assert_one_line_error(eic("enrich", trained_run, data, "-o", data / "map" / "a.jsonld", "--quiet"), "inside")
    assert sorted(p.relative_to(data) for p in data.rglob("*")) == before


def test_outputs_beside_a_downloaded_dataset_or_in_a_folder_of_scans(trained_run: Path, tmp_path: Path) -> None:
    """Labelling images of a downloaded dataset given file by file put the output's journal among its class folders
    (the next training refused "a class folder that holds no readable image"); labelling a plain folder of scans
    into a table inside it stays as it was."""
    from ..support import assert_one_line_error, eic, make_folders

    data = make_folders(tmp_path / "imgs", per_class=2, size=40)
    (data / "config.json").write_text(json.dumps({"table": "t.csv", "output_dir": str(data)}))  # eic download's
    files = [str(p) for p in (data / "map").iterdir()]
    assert_one_line_error(eic("predict", trained_run, *files, "-o", data / "l.csv", "--quiet"), "inside")
    assert not (data / "l.csv.journal").exists()
    multi = tmp_path / "ml"  # a multi-label download: its images at the top, beside labels.csv and its settings
    multi.mkdir()
    for p in (data / "map").iterdir():
        shutil.copy(p, multi / p.name)
    (multi / "config.json").write_text(json.dumps({"table": "t.csv", "output_dir": str(multi)}))
    assert_one_line_error(eic("predict", trained_run, multi, "-o", multi / "p.csv", "--quiet"), "inside")
    scans = tmp_path / "scans"
    scans.mkdir()
    for p in (data / "map").iterdir():
        shutil.copy(p, scans / p.name)
    result = eic("predict", trained_run, scans, "-o", scans / "labels.csv", "--quiet")
    assert result.exit_code == 0, result.stderr
    beside = eic("predict", trained_run, scans, "-o", tmp_path / "labels.csv", "--quiet")  # ~/project/labels.csv
    assert beside.exit_code == 0, beside.stderr


def test_gradcam_figures_beside_the_class_folder_labelled_are_refused(
    trained_run: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`eic predict RUN tr/drawing --gradcam-dir tr/cams` (a dataset of one's own, no eic download settings): the
    next `eic train tr` learnt a class "cams" of the figures, without a word."""
    from ..support import assert_one_line_error, eic, make_folders

    data = make_folders(tmp_path / "tr", per_class=2, size=40)
    one = next((data / "map").iterdir())
    for given in (data / "map", one):
        result = eic("predict", trained_run, given, "-o", tmp_path / "p.csv", "--gradcam-dir", data / "cams")
        assert_one_line_error(result, "one more class")
    monkeypatch.chdir(data / "map")  # the same, named from inside the class folder
    assert_one_line_error(eic("predict", trained_run, ".", "-o", tmp_path / "p.csv", "--gradcam-dir", "../cams"), "tr")
    assert not (data / "cams").exists()
    elsewhere = eic("predict", trained_run, data / "map", "-o", tmp_path / "p.csv", "--gradcam-dir", tmp_path / "c")
    assert elsewhere.exit_code == 0, elsewhere.stderr
    solo = tmp_path / "solo"  # one folder of scans: its figures beside it, then again (a resume, another run)
    (solo / "scans").mkdir(parents=True)
    shutil.copy(one, solo / "scans" / one.name)
    for turn in range(2):
        args = ["predict", trained_run, solo / "scans", "-o", tmp_path / f"s{turn}.csv", "--gradcam-dir", solo / "figs"]
        assert eic(*args, "--quiet").exit_code == 0
