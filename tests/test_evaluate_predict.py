"""eic evaluate and eic predict on a tiny run trained in the test."""

from __future__ import annotations

import csv
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import polars as pl
import pytest
from sklearn.metrics import accuracy_score, precision_recall_fscore_support
from typer.testing import CliRunner

from europeana_imgcls import EvaluateConfig, PredictConfig, evaluate, predict
from europeana_imgcls.cli.app import app
from europeana_imgcls.core.errors import ModelError
from europeana_imgcls.europeana.sandbox import Knobs, Sandbox

from .support import CLASSES, diverge, rows, sandbox_config


def test_evaluate_matches_scikit_learn(trained: Path, eval_dir: Path, tmp_path: Path) -> None:
    report = evaluate(EvaluateConfig(run=trained, eval_dir=eval_dir, output_dir=tmp_path / "ev"))
    out = tmp_path / "ev"
    metrics = json.loads((out / "metrics.json").read_text())
    predictions = rows(out / "predictions.csv")
    assert report.images == 21 and report.splits == ["split_0", "split_1", "split_2"]
    assert report.unknown_classes == {"statue": 3}
    assert any(p.endswith("broken.jpg") for p in report.unreadable)
    for k, split in enumerate(report.splits):
        mine = [p for p in predictions if p["split"] == split]
        truth = [p["truth"] for p in mine]
        predicted = [p["prediction"] for p in mine]
        assert metrics["accuracy"]["per_split"][k] == pytest.approx(accuracy_score(truth, predicted))
        labels = sorted(set(truth) | set(predicted))
        p, r, f, _ = precision_recall_fscore_support(truth, predicted, labels=labels, average="macro", zero_division=0)
        assert metrics["precision"]["per_split"][k] == pytest.approx(p)
        assert metrics["recall"]["per_split"][k] == pytest.approx(r)
        assert metrics["f1"]["per_split"][k] == pytest.approx(f)
        assert metrics["sensitivity"]["per_split"][k] == pytest.approx(r)
    for name, values in metrics.items():
        assert values["mean"] == pytest.approx(np.mean(values["per_split"])), name
        assert values["std"] == pytest.approx(np.std(values["per_split"], ddof=1)), name
    with (out / "confusion_matrix.csv").open() as handle:
        table = list(csv.reader(handle))
    assert table[0][1:] == list(CLASSES)
    per_class = {r["class"]: int(r["support"]) for r in rows(out / "per_class.csv")}
    for line in table[1:]:
        assert sum(map(int, line[1:])) == 3 * per_class[line[0]]  # summed over three splits
    assert per_class == {"map": 7, "painting": 7, "specimen": 7}
    for figure in ("confusion_matrix.png", "misclassified.png"):
        assert (out / figure).read_bytes()[:4] == b"\x89PNG"


def test_specificity_from_the_confusion_matrix(trained: Path, eval_dir: Path, tmp_path: Path) -> None:
    evaluate(EvaluateConfig(run=trained / "split_1", eval_dir=eval_dir, output_dir=tmp_path / "ev"))
    predictions = rows(tmp_path / "ev" / "predictions.csv")
    specificities = []
    for c in CLASSES:
        negatives = [p for p in predictions if p["truth"] != c]
        specificities.append(np.mean([p["prediction"] != c for p in negatives]))
    present = {p["truth"] for p in predictions} | {p["prediction"] for p in predictions}
    expected = np.mean([s for c, s in zip(CLASSES, specificities, strict=True) if c in present])
    metrics = json.loads((tmp_path / "ev" / "metrics.json").read_text())
    assert metrics["specificity"]["mean"] == pytest.approx(expected)


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


def test_ensemble_averages_the_splits(trained: Path, eval_dir: Path, tmp_path: Path) -> None:
    folder = str(eval_dir / "map")
    probs = []
    for split in ("0", "1", "2", "all"):
        out = tmp_path / f"p{split}.jsonl"
        predict(PredictConfig(run=trained, inputs=[folder], output=out, split=split, top_k=3, quiet=True))
        lines = [json.loads(line) for line in out.read_text().splitlines()]
        probs.append({r["image"]: dict(r["top_k"]) for r in lines})
    for image, ensemble in probs[3].items():
        for name in CLASSES:
            assert ensemble[name] == pytest.approx(np.mean([p[image][name] for p in probs[:3]]), abs=2e-6)


def test_predict_a_harvest_table_and_a_query(trained: Path, tmp_path: Path) -> None:
    with Sandbox(sandbox_config(per_level=6), Knobs(shared_per_concept=0, triples_per_concept=0)) as sb:
        records = [r for r in sb.catalogue if r.type == "IMAGE" and r.has_url][:6]
        pl.DataFrame([{"ID": r.id, "URL": sb.image_url(r), "category": r.labels[0]} for r in records]).write_csv(
            tmp_path / "t.csv"
        )
        report = predict(
            PredictConfig(run=trained, table=tmp_path / "t.csv", output=tmp_path / "t_pred.csv", quiet=True)
        )
        assert report.predicted == 6
        got = rows(tmp_path / "t_pred.csv")
        assert {g["ID"] for g in got} == {r.id for r in records}
        assert all(g["URI"] == "http://data.europeana.eu/item" + g["ID"] for g in got)
        report = predict(
            PredictConfig(
                run=trained,
                query='"http://data.europeana.eu/concept/base/43"',
                n=4,
                api_url=sb.api_url,
                output=tmp_path / "q_pred.csv",
                quiet=True,
            )
        )
        assert report.predicted == 4 and sb.count("/record/v2/search.json") >= 1


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
        (["evaluate", "{run}", "{tmp}"], "no readable images"),
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
    import subprocess
    import sys

    out = tmp_path / "p.csv"
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1]), "OMP_NUM_THREADS": "1"}
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            "--nproc_per_node=2",
            "-m",
            "tests.eic_tiny",
            "predict",
            str(trained),
            str(eval_dir / "map"),
            str(eval_dir / "specimen"),
            "-o",
            str(out),
            "--quiet",
            "--device",
            "cpu",
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    images = [r["image"] for r in rows(out)]
    assert len(images) == len(set(images)) == 7 + 7  # broken.jpg is listed as unreadable, not predicted
    assert not list(tmp_path.glob("p.csv.journal/*.ndjson"))


def test_predict_does_not_overwrite_a_dataset_folder_given_as_image_dir(
    trained: Path, sandbox: Sandbox, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    dataset = tmp_path / "dataset"
    dataset.mkdir()
    (dataset / "labels.csv").write_text("ID,file,category\n/1/a,a.jpg,map\n")
    (dataset / "config.json").write_text('{"table": "train.csv"}')
    record = next(r for r in sandbox.catalogue if r.type == "IMAGE" and r.has_url and not r.fault)
    result = CliRunner().invoke(
        app,
        [
            "predict",
            str(trained),
            sandbox.image_url(record),
            "--image-dir",
            str(dataset),
            "-o",
            str(tmp_path / "p.csv"),
            "--quiet",
        ],
    )
    assert result.exit_code == 1 and "holds files that are not the images eic predict fetched" in result.stderr
    assert (dataset / "labels.csv").read_text() == "ID,file,category\n/1/a,a.jpg,map\n"
    assert (dataset / "config.json").read_text() == '{"table": "train.csv"}'
    # Its own folder is reused, whether named relatively or absolutely.
    own = tmp_path / "own"
    first = predict(
        PredictConfig(
            run=trained, inputs=[sandbox.image_url(record)], image_dir=own, output=tmp_path / "a.csv", quiet=True
        )
    )
    monkeypatch.chdir(tmp_path)
    again = predict(
        PredictConfig(
            run=trained,
            inputs=[sandbox.image_url(record)],
            image_dir=Path("own"),
            output=tmp_path / "b.csv",
            quiet=True,
        )
    )
    assert first.predicted == again.predicted == 1


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
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1]), "EIC_TINY_GATE": str(gate)}
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


def test_gradcam_figures_are_readable(trained: Path, eval_dir: Path, tmp_path: Path) -> None:
    """Large, titled with the record or file and the class with its probability, the heatmap over the image
    without hiding it, a colour bar: a figure a curator can read."""
    from PIL import Image

    from europeana_imgcls.modelling.explain import CAPTION, HEADER, TILE

    images = sorted((eval_dir / "map").glob("*.jpg"))[:3]
    report = predict(
        PredictConfig(
            run=trained,
            inputs=[str(p) for p in images],
            output=tmp_path / "p.csv",
            gradcam_dir=tmp_path / "cams",
            top_k=2,
            threshold=0.0,
            quiet=True,
        )
    )
    figures = sorted((tmp_path / "cams").glob("*.jpg"))
    assert report.heatmaps == len(figures) == 3
    for path in figures:
        with Image.open(path) as fig:
            title = fig.info["comment"].decode()
            assert fig.height == HEADER + TILE + CAPTION and fig.width >= 3 * TILE  # the image and two heatmaps
            pixels = np.asarray(fig.convert("L"), dtype=np.float32)
        from europeana_imgcls.core.naming import record_id_of

        assert any((record_id_of(p.name) or p.name) in title for p in images) and " · " in title
        shown = pixels[HEADER : HEADER + TILE, 4 : 4 + TILE]
        heat = pixels[HEADER : HEADER + TILE, 4 + TILE + 8 : 4 + 2 * TILE + 8]
        # The image stays visible under the heatmap: the two panels still look alike.
        assert np.corrcoef(shown.ravel(), heat.ravel())[0, 1] > 0.3
        assert pixels[:HEADER].min() < 100  # a title is drawn


def test_a_split_that_diverged_is_left_out_of_the_ensemble(
    trained: Path, eval_dir: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    run = tmp_path / "run"
    shutil.copytree(trained, run)
    diverge(run, split=1)
    out = tmp_path / "p.jsonl"
    predict(PredictConfig(run=run, inputs=[str(eval_dir / "map")], output=out, top_k=3, quiet=True))
    lines = [json.loads(line) for line in out.read_text().splitlines()]  # json.loads would read NaN: check it
    assert lines and all(0 <= p <= 1 for line in lines for _, p in line["top_k"])
    assert "split_1 left out" in caplog.text
    with pytest.raises(ModelError, match="split 1's model holds weights that are not finite"):
        predict(PredictConfig(run=run, inputs=[str(eval_dir / "map")], output=tmp_path / "q.jsonl", split="1"))


def test_arguments_in_the_wrong_place_are_told_what_to_pass(trained: Path, eval_dir: Path, tmp_path: Path) -> None:
    table = tmp_path / "eval.csv"
    table.write_text("category,ID,URL\nmap,/1/a,http://127.0.0.1:9/a.jpg\n")
    image = next((eval_dir / "map").glob("*.jpg"))
    notes = tmp_path / "notes.jpg"
    notes.write_text("not an image")
    out = str(tmp_path / "e.jsonld")
    said = {
        ("enrich", str(trained), str(table), "-o", out): f"{table} is a table: pass it as --table {table}",
        ("predict", str(image), str(trained), "-o", str(tmp_path / "p.csv")): "the run comes first, then the images",
        ("evaluate", str(eval_dir), str(trained), "-o", str(tmp_path / "ev")): "the run comes first",
        ("evaluate", str(trained), str(table), "-o", str(tmp_path / "ev")): f"{table} is a table: fetch its images",
        ("train", str(table), "-o", str(tmp_path / "r")): "eic download",
        ("calibrate", str(table)): f"{table} is a table, not a training run",
        ("download", str(table), str(tmp_path / "images")): f"one argument too many: to write into {tmp_path}",
        ("enrich", str(trained), str(notes), "-o", out): "nothing could be labelled",  # not an empty output, exit 0
    }
    for args, message in said.items():
        result = CliRunner().invoke(app, [*args, "--quiet"] if args[0] not in ("calibrate",) else list(args))
        assert result.exit_code != 0, (args, result.stdout)
        assert message in result.stderr and len(result.stderr.strip().splitlines()) == 1, (args, result.stderr)
    assert not list(tmp_path.glob("e.*jsonl")) and not (tmp_path / "e.jsonld").exists()


def test_gradcam_figures_keep_the_aspect_ratio_and_name_the_record(trained: Path, tmp_path: Path) -> None:
    from PIL import Image

    from europeana_imgcls.core.naming import file_name
    from europeana_imgcls.modelling.explain import HEADER, TILE

    record = "/9001/obj_wide_panorama_of_the_harbour"
    wide = tmp_path / "images" / file_name(record)  # as eic download names it
    wide.parent.mkdir()
    Image.new("RGB", (300, 100), (20, 120, 200)).save(wide)
    predict(
        PredictConfig(
            run=trained, inputs=[str(wide)], output=tmp_path / "p.csv", gradcam_dir=tmp_path / "cams", quiet=True
        )
    )
    (path,) = (tmp_path / "cams").glob("*.jpg")
    assert path.name.startswith("9001_obj_wide_panorama_of_the_harbour_")
    with Image.open(path) as fig:
        assert fig.info["comment"].decode().startswith(record)
        pixels = np.asarray(fig.convert("RGB"), dtype=np.int16)
    column = pixels[HEADER : HEADER + TILE, 4 + TILE // 2]  # down the middle of the image panel
    coloured = np.flatnonzero(np.abs(column - 255).sum(axis=1) > 30)
    assert 80 <= len(coloured) <= 90  # 300 x 100 shown at 256 x 85, not squashed to 256 x 256
