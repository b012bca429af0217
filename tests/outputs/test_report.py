"""eic report: the page's sections follow the run's data, everything from files is escaped, images keep to their
budget, and the page is written through the output policy. (The page in a real browser: test_report_browser.py.)"""

from __future__ import annotations

import csv
import io
import json
import os
import re
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from europeana_imgcls.core.config import ReportConfig
from europeana_imgcls.core.errors import DatasetError, ModelError
from europeana_imgcls.europeana.annotations import MODEL, MODEL_ID_PREFIX, NS
from europeana_imgcls.europeana.sandbox import draw_image
from europeana_imgcls.modelling.run_folder import RunFolder
from europeana_imgcls.outputs.report import report
from europeana_imgcls.outputs.report_model import FIGURE_BUDGET, IMAGE_BUDGET, encode_jpeg, json_for_script, record_page

from ..hostile import mutated_bytes, scratch, works_or_one_line
from ..support import assert_one_line_error, copy_of, eic, examples, rows

HOSTILE = "<script>window.eicPwned=1;alert(1)</script><img src=x onerror=alert(2)>"


def page_data(html: str) -> dict[str, Any]:
    found = re.search(r'<script type="application/json" id="eic-data">(.*?)</script>', html, re.S)
    assert found
    return json.loads(found[1])


def test_the_sections_follow_the_runs_data(trained_run: Path, tmp_path: Path) -> None:
    result = report(ReportConfig(run=trained_run, output=tmp_path / "r.html"))
    assert result.sections == ["summary", "per-class-test", "confusion-test", "gallery-test", "calibration", "curves"]
    html = result.output.read_text(encoding="utf-8")
    for section in result.sections:
        assert f'<section id="{section}"' in html
    assert 'id="audit"' not in html and 'id="per-class-evaluation"' not in html
    assert "eic evaluate RUN EVAL_DIR" in html and "eic audit RUN" in html  # what is missing, and how to make it
    assert "<link" not in html and 'src="http' not in html and "@import" not in html  # nothing outside the file
    data = page_data(html)
    test_images = sum(len(rows(split / "test_predictions.csv")) for split in trained_run.glob("split_*"))
    cells = [name for name in data["lists"] if name.startswith("cell:test:")]
    assert sum(len(data["lists"][c]) for c in cells) == test_images  # every test image in its cell
    item = data["items"][data["lists"][cells[0]][0]]
    assert item["img"] is not None and item["alt"] and item["url"].startswith("https://www.europeana.eu/item/9")
    assert all(d.startswith("data:image/jpeg;base64,") for d in data["images"])
    # The summary names the model, the protocol and the spread of the headline metrics.
    assert "model id" in html and "3 folds" in html and "± " in html


def test_evaluation_audit_and_enrich_are_included_when_named(trained_run: Path, tmp_path: Path) -> None:
    first = rows(trained_run / "split_0" / "test_predictions.csv")[0]
    evaluation = tmp_path / "evaluation"
    evaluation.mkdir()
    with (evaluation / "predictions.csv").open("w", newline="") as handle:
        writer = csv.DictWriter(handle, ["image", "truth", "prediction", "confidence", "probabilities", "split"])
        writer.writeheader()
        writer.writerow({**{k: first[k] for k in ("image", "truth", "prediction", "confidence")}, "split": "split_0"})
        writer.writerow({"image": "x.jpg", "truth": "no such class", "prediction": "map", "confidence": "0.5"})
    audit = tmp_path / "audit"
    audit.mkdir()
    (audit / "label_issues.csv").write_text(
        f"rank,image,ID,provider,given,suggested,label_quality,fold\n1,{first['image']},/9000/x,9000,map,painting,0.1,0\n"
    )
    (audit / "duplicates.csv").write_text(
        "group,image,ID,provider,category,fold,across_folds,conflicting_labels,across_providers\n"
        f"1,{first['image']},/9000/x,9000,map,0,True,False,False\n1,{first['image']},/9000/y,9000,map,1,True,False,False\n"
    )
    enrich = tmp_path / "annotations.jsonl"
    model = {"id": MODEL_ID_PREFIX + RunFolder(trained_run).model_id(), NS + "class": "map", NS + "threshold": 0.42}
    enrich.write_text(json.dumps({MODEL: model}) + "\n")
    result = report(
        ReportConfig(run=trained_run, output=tmp_path / "r.html", evaluation=evaluation, audit=audit, enrich=enrich)
    )
    assert "per-class-evaluation" in result.sections and "audit" in result.sections
    html = result.output.read_text(encoding="utf-8")
    assert "eic enrich&#x27;s annotations (annotations.jsonl)" in html and "0.4200" in html
    data = page_data(html)
    assert len(data["lists"]["audit:issues"]) == 1 and len(data["lists"]["audit:group:1"]) == 2
    assert "given map, suggested painting" in data["items"][data["lists"]["audit:issues"][0]]["label"]
    assert not any("no such class" in json.dumps(item) for item in data["items"])  # a damaged row is left out


@pytest.mark.slow  # on the shared multi-label run, trained for the slow lane's end-to-end tests
def test_another_models_annotations_never_mark_this_runs_curves(trained_run: Path, tmp_path: Path) -> None:
    """`--enrich FILE` took the thresholds of whatever annotations it was given: another model's marked this run's
    curves, said to be eic enrich's, and a class the file lacked lost its threshold without a word."""
    enrich = tmp_path / "other.jsonl"
    other = {"id": MODEL_ID_PREFIX + "0123456789abcdef", NS + "class": "map", NS + "threshold": 0.42}
    enrich.write_text(json.dumps({MODEL: other}) + "\n")
    html = report(ReportConfig(run=trained_run, output=tmp_path / "r.html", enrich=enrich)).output.read_text()
    assert "0.4200" not in html and "eic enrich&#x27;s annotations" not in html
    assert "0123456789abcdef" in html  # the note names the model the file's annotations are of


def test_a_multilabel_run_has_no_confusion_matrix_and_shows_its_heatmaps(
    ml_run: tuple[Path, Path], tmp_path: Path
) -> None:
    result = report(ReportConfig(run=ml_run[1], output=tmp_path / "r.html"))
    assert result.sections[:3] == ["summary", "per-class-test", "gallery-test"]  # no confusion matrix
    data = page_data(result.output.read_text(encoding="utf-8"))
    assert any(item["cam"] is not None for item in data["items"])  # the run's Grad-CAM figures, by their image


def hostile_run(trained_run: Path, tmp_path: Path) -> tuple[Path, str]:
    """A copy of the run whose class "map" is named HOSTILE in every file, and one image of a record whose ID holds
    quotes and brackets."""
    run = copy_of(trained_run, tmp_path)

    def rename(text: str) -> str:
        return text.replace('"map"', json.dumps(HOSTILE))

    for path in [run / "summary.json", run / "calibration.json", *run.glob("split_*/class_index.json")]:
        path.write_text(rename(path.read_text()))
    image = tmp_path / "[ph]9000[ph]a\"b'c<x>.jpg"
    for n, path in enumerate(sorted(run.glob("split_*/test_predictions.csv"))):
        table = rows(path)
        for row in table:
            for key in ("truth", "prediction"):
                row[key] = HOSTILE if row[key] == "map" else row[key]
            for key in ("probabilities", "logits"):
                row[key] = rename(row[key])
        if n == 0:
            shutil.copyfile(table[0]["image"], image)
            table[0]["image"] = str(image)
        with path.open("w", newline="") as handle:
            writer = csv.DictWriter(handle, list(table[0]))
            writer.writeheader()
            writer.writerows(table)
    return run, HOSTILE


def test_names_from_files_are_escaped_everywhere(trained_run: Path, tmp_path: Path) -> None:
    run, hostile = hostile_run(trained_run, tmp_path)
    html = report(ReportConfig(run=run, output=tmp_path / "r.html")).output.read_text(encoding="utf-8")
    assert hostile not in html and "<script>window" not in html and "<img src=x" not in html
    assert "&lt;script&gt;window.eicPwned" in html  # shown, as text
    assert html.count("<script") == 2  # the page's data and its own script, nothing else
    data = page_data(html)
    assert any(hostile in item["alt"] for item in data["items"])  # JSON keeps the name whole, escaped for the tag
    quoted = next(item for item in data["items"] if "a\"b'c" in item["label"])
    assert quoted["url"] == "https://www.europeana.eu/item/9000/a%22b%27c%3Cx%3E"
    assert "calibration" in report(ReportConfig(run=run, output=tmp_path / "r2.html")).sections


def test_json_in_the_page_cannot_end_its_script() -> None:
    text = json_for_script({"a": "</script><!-- & <b>"})
    assert "<" not in text and ">" not in text and "&" not in text
    assert json.loads(text) == {"a": "</script><!-- & <b>"}


def test_record_pages_only_for_record_ids() -> None:
    assert (
        record_page("/9200397/BibliographicResource_1")
        == "https://www.europeana.eu/item/9200397/BibliographicResource_1"
    )
    assert (
        record_page("painting_3.jpg") is None
        and record_page("javascript:alert(1)") is None
        and record_page(None) is None
    )


def test_an_image_keeps_to_its_budget_and_a_readable_size(tmp_path: Path) -> None:
    noise = Image.fromarray(np.random.default_rng(0).integers(0, 256, (450, 600, 3), dtype=np.uint8))
    pictures = {"drawn": draw_image((0,), 3, seed=1, size=(640, 480)), "noise": noise}
    for name, picture in pictures.items():
        path = tmp_path / f"{name}.jpg"
        picture.save(path, quality=95)
        encoded = encode_jpeg(path, 256, IMAGE_BUDGET)
        assert encoded is not None and len(encoded) <= IMAGE_BUDGET, name
        with Image.open(io.BytesIO(encoded)) as shown:
            assert max(shown.size) >= 192, name  # the lightbox's image (half the side only for noise at worst)
    drawn = Image.open(io.BytesIO(encode_jpeg(tmp_path / "drawn.jpg", 256, IMAGE_BUDGET) or b""))
    assert max(drawn.size) == 256
    # 1,000 test images, each once, and a 3-fold run's Grad-CAM figures (8 a split), base64: the page stays under
    # 20 MB with room for its markup (eic demo's page: 4.2 MB for 304 images, figures and all).
    assert (1000 * IMAGE_BUDGET + 24 * FIGURE_BUDGET) * 4 / 3 < 18 * 2**20
    (tmp_path / "broken.jpg").write_bytes(b"\xff\xd8\xff not a JPEG")
    assert encode_jpeg(tmp_path / "broken.jpg", 256, IMAGE_BUDGET) is None


def test_the_page_is_written_through_the_output_policy(trained_run: Path, tmp_path: Path) -> None:
    out = tmp_path / "r.html"
    report(ReportConfig(run=trained_run, output=out))
    with pytest.raises(DatasetError, match="overwrite"):
        report(ReportConfig(run=trained_run, output=out))
    report(ReportConfig(run=trained_run, output=out, overwrite=True))
    notes = tmp_path / "notes.html"
    notes.write_text("<html>someone's own page</html>")
    with pytest.raises(DatasetError):
        report(ReportConfig(run=trained_run, output=notes, overwrite=True))
    assert notes.read_text() == "<html>someone's own page</html>"
    with pytest.raises(ModelError):
        report(ReportConfig(run=tmp_path, output=tmp_path / "x.html"))


def test_eic_report_says_where_the_page_is(trained_run: Path, tmp_path: Path) -> None:
    result = eic("report", trained_run, "-o", tmp_path / "page.html")
    assert result.exit_code == 0, result.output
    said = result.stdout.replace("\n", "")  # the console may break a long temporary path (xdist's) anywhere
    assert "page.html" in said and "sections: summary" in said
    assert_one_line_error(eic("report", tmp_path / "nothing"), "nothing")


@pytest.mark.slow
def test_train_and_evaluate_say_how_to_make_the_page(folders: Path, eval_dir: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    trained = eic(
        "train",
        folders,
        "-o",
        run,
        "--arch",
        "tiny",
        "--weights",
        "none",
        "--epochs",
        "1",
        "--input-size",
        "32",
        "--gradcam-images",
        "0",
        "--quiet",
    )
    assert trained.exit_code == 0, trained.output
    said = "".join(trained.stdout.split())  # rich folds long paths: compared without white space
    assert f"eicreport{run}" in said and f"(writes{run / 'report.html'})" in said
    evaluated = eic("evaluate", run, eval_dir, "-o", tmp_path / "ev", "--gallery", "0", "--quiet")
    assert evaluated.exit_code == 0, evaluated.output
    assert f"eicreport{run}--evaluation{tmp_path / 'ev'}" in "".join(evaluated.stdout.split())


def test_damaged_files_leave_their_section_out_with_a_note(trained_run: Path, tmp_path: Path) -> None:
    run = copy_of(trained_run, tmp_path)
    (run / "summary.json").write_bytes(b'{"classes": ["map", ')  # cut short
    (run / "split_0" / "config.json").write_text("[1, 2]")  # JSON, but not settings
    (run / "calibration.json").write_text('{"mode": "single-label"}')
    (run / "split_0" / "history.csv").write_bytes(b"\xff\xfe\x00garbage\n\x00\x00")
    predictions = run / "split_1" / "test_predictions.csv"
    predictions.unlink()
    os.mkfifo(predictions)  # a FIFO is never opened: it would block the page for ever
    result = report(ReportConfig(run=run, output=tmp_path / "r.html", enrich=tmp_path / "r.html.missing"))
    assert "calibration" not in result.sections and "confusion-test" in result.sections
    said = " ".join(result.notes)
    assert "summary.json" in said and "Calibration left out" in said
    assert "split_1 holds no test-fold predictions" in said
    # a page is mailed: the notes name the run's folder, not where it lies on this machine
    assert str(tmp_path) not in said and str(run.resolve()) not in said
    assert str(tmp_path) not in (tmp_path / "r.html").read_text(encoding="utf-8").split("<script")[0]


# ---------------------------------------------------------------------------------------------
# Every file the page reads, attacked (tests/hostile.py's mutations): the page is written or one line says why,
# and nothing from the files ever becomes markup.

_READ = ("summary.json", "calibration.json", "evaluation.json", "split_0/config.json", "split_1/metrics.json")
_TABLES = ("split_0/test_predictions.csv", "split_2/history.csv")
_WORDS = (HOSTILE, "</script>", "map", "painting", '"><svg onload=alert(1)>')


@pytest.fixture(scope="module")
def attacked_run(shared_trained_run: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    run = Path(shutil.copytree(shared_trained_run, tmp_path_factory.mktemp("attacked") / "run"))
    (run / "evaluation.json").write_text(json.dumps({"summary": {"accuracy": {"mean": 0.9, "std": 0.01}}}))
    return run


@settings(max_examples=examples(30), deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_every_file_the_page_reads_works_or_is_one_line(attacked_run: Path, data: st.DataObject) -> None:
    name = data.draw(st.sampled_from(_READ + _TABLES))
    path = attacked_run / name
    original = path.read_bytes()
    if name in _READ:
        mutated = data.draw(mutated_bytes(json.loads(original), _WORDS, depth=200))
    else:
        lines = original.decode().splitlines(keepends=True)
        at = data.draw(st.integers(0, len(lines) - 1))
        cell = data.draw(st.sampled_from(_WORDS) | st.text(max_size=12))
        lines[at] = data.draw(st.sampled_from([cell, cell + "," + lines[at], lines[at][: len(lines[at]) // 2]]))
        mutated = "".join(lines).encode("utf-8", "surrogatepass")
    try:
        path.write_bytes(mutated)
        with scratch() as folder:
            out = folder / "page.html"
            works_or_one_line(lambda: report(ReportConfig(run=attacked_run, output=out, quiet=True)))
            if out.exists():
                html = out.read_text(encoding="utf-8")
                assert html.count("<script") == 2 and "<svg onload" not in html and "<img src=x" not in html
    finally:
        path.write_bytes(original)


def test_a_chart_of_a_constant_huge_series_is_drawn() -> None:
    """A diverged run's loss of 1e308 at every epoch: an empty range where ``low + 1 == low`` divided by zero."""
    from europeana_imgcls.outputs.report_page import chart

    for value in (1e308, -1e308, 0.0, 5.0):
        svg = chart("loss", [("train", [(1.0, value), (2.0, value)])], "epoch", "loss")
        assert svg.startswith("<svg") and "nan" not in svg.lower() and "inf" not in svg.lower(), value


def test_the_image_count_is_of_images_not_of_labels() -> None:
    """A multi-label image is in several classes' counts: their sum is no count of images."""
    from europeana_imgcls.outputs.report import _images
    from europeana_imgcls.outputs.report_model import Predictions, Shown

    rows = [Shown(f"/i/{n}.jpg", None, ["map", "painting"], ["map"], 0.9, f"split_{n}") for n in range(3)]
    test = Predictions("test", "test folds", ["map", "painting"], single=False, rows=rows)
    counts = {"map": 3, "painting": 3}
    assert _images({"images": 3}, counts, test) == "3"
    assert _images({}, counts, test) == "3 in the test folds"  # a run from before the summary said
    single = Predictions("test", "test folds", ["map", "painting"], single=True, rows=[])
    assert _images({}, {"map": 2, "painting": 4}, single) == "6"


def test_a_head_on_embeddings_is_not_described_as_fine_tuning() -> None:
    """A k-NN or linear-probe run has no epochs, batch or learning rate: the summary says how its head was made."""
    from europeana_imgcls.outputs.report import _training

    settings = {"epochs": 6, "patience": 3, "batch_size": 8, "learning_rate": 0.001, "seed": 0, "neighbours": 7}
    assert _training({**settings, "method": "knn"}, []) == [
        ("training", "7 nearest neighbours (cosine) on frozen embeddings")
    ]
    (probe,) = _training({**settings, "method": "linear-probe"}, [])
    assert "L-BFGS on frozen embeddings" in probe[1] and "epochs" not in probe[1]
    tuned = dict(_training({**settings, "method": "finetune"}, []))
    assert tuned["training"].startswith("at most 6 epochs (patience 3), batch 8") and "epochs" in tuned


def test_the_cells_share_out_a_page_wide_image_budget(trained_run: Path, tmp_path: Path) -> None:
    """A fold of 10,000 images embedded thousands of them (40 MB) through its confusion matrix's largest cells. The
    cells share ``max_images`` out: a cell at or under the cap (most errors) keeps every image, the largest are cut
    to the same count, the most confident kept, and the page says so."""
    # No galleries (their images count apart, gallery a class): what is embedded is what the cells link to.
    whole_page = report(ReportConfig(run=trained_run, output=tmp_path / "whole.html", gallery=0))
    whole = page_data(whole_page.output.read_text())
    sizes = {n: len(v) for n, v in whole["lists"].items() if n.startswith("cell:")}
    budget = sum(sizes.values()) // 2
    result = report(ReportConfig(run=trained_run, output=tmp_path / "cut.html", max_images=budget, gallery=0))
    html = result.output.read_text()
    cut = page_data(html)
    shown = {n: len(v) for n, v in cut["lists"].items() if n.startswith("cell:")}
    cap = max(shown.values())
    assert sum(shown.values()) <= budget < sum(sizes.values()) and cap < max(sizes.values())
    assert all(shown[n] == min(size, cap) for n, size in sizes.items())  # each cell to the cap, no fewer
    for name, indices in cut["lists"].items():  # the most confident of each cell
        if name.startswith("cell:"):
            assert [whole["items"][i]["title"] for i in whole["lists"][name][: len(indices)]] == [
                cut["items"][i]["title"] for i in indices
            ]
    assert f"a cell shows at most its {cap} most confident images" in html and "max_images" in html
    assert len(cut["images"]) == sum(shown.values()) < len(whole["images"]) == sum(sizes.values())


def test_the_cap_is_the_largest_the_budget_allows() -> None:
    from europeana_imgcls.outputs.report_page import cell_cap

    assert cell_cap([3, 50, 400], per_cell=200, budget=1000) == 200  # under the budget: per_cell
    assert cell_cap([3, 50, 400], per_cell=200, budget=100) == 48  # 3 + 48 + 48 = 99; 49 would make 101
    assert cell_cap([3, 50, 400], per_cell=200, budget=2) == 1  # every cell shows one image at least
    assert cell_cap([], per_cell=200, budget=10) == 200
