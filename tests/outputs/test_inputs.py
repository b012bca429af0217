"""outputs/inputs.py: what predict labels (a table's or a query's records) and the folder it fetches them into."""

from __future__ import annotations

from pathlib import Path

import polars as pl
import pytest
from typer.testing import CliRunner

from europeana_imgcls import PredictConfig, predict
from europeana_imgcls.cli.app import app
from europeana_imgcls.europeana.sandbox import Knobs, Sandbox

from ..support import assert_one_line_error, eic, rows, sandbox_config, sandbox_table


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


# ---------------------------------------------------------------------------------------------
# Found in review


def test_predicts_image_folder_must_be_its_own_even_when_a_table_is_called_inputs(
    trained_run: Path, sandbox: Sandbox, tmp_path: Path
) -> None:
    from europeana_imgcls import PredictConfig, predict
    from europeana_imgcls.core.errors import DatasetError

    mine = tmp_path / "dataset"
    mine.mkdir()
    (mine / "inputs.csv").write_text("ID,file,category\n/1/a,a.jpg,map\n")
    (mine / "labels.csv").write_text("ID,file,category\n/1/a,a.jpg,map\n")
    table = sandbox_table(sandbox, tmp_path / "t.csv")
    with pytest.raises(DatasetError, match="not the images eic predict fetched"):
        predict(PredictConfig(run=trained_run, table=table, output=tmp_path / "p.csv", image_dir=mine, quiet=True))
    assert (mine / "labels.csv").read_text() == "ID,file,category\n/1/a,a.jpg,map\n"


def test_inputs_without_an_image_say_what_they_hold_instead(trained: Path, tmp_path: Path) -> None:
    notes, empty = tmp_path / "notes", tmp_path / "empty"
    notes.mkdir()
    empty.mkdir()
    (notes / "notes.txt").write_text("which maps to label first")
    result = eic("predict", trained, f"{notes}/", empty, "-o", tmp_path / "p.csv", "--quiet")
    assert_one_line_error(
        result, f"no images found in the inputs: {notes}/ holds 1 file, none an image (notes.txt); {empty} is empty"
    )
    assert "images are files ending in .bmp, .gif, .jpeg, .jpg" in result.stderr


def test_an_annotation_names_the_image_that_was_labelled() -> None:
    """target.source names the record's image that the saved file shows: the table's URL where the file came from it
    or from a thumbnail of it; where only the record's preview was had, what the Thumbnail API says the preview shows,
    or else the preview itself, never an image that was not labelled."""
    from urllib.parse import quote

    from europeana_imgcls.europeana.thumbnails import thumbnail_url
    from europeana_imgcls.outputs.inputs import depicted

    # Addresses of the shapes Europeana's and a museum's have, on 127.0.0.1: nothing is fetched.
    museum, api = "http://127.0.0.1:9/museum", "http://127.0.0.1:9/api"
    image = f"{museum}/iiif/full/max/0/default.jpg"
    assert depicted(image, None) == image  # nothing listed: the table's
    assert depicted(image, image) == image
    assert depicted(image, thumbnail_url(f"{api}/thumbnail/v3", image, 400)) == image
    other = f"{museum}/other.jpg"
    preview = f"{api}/thumbnail/v2/url.json?uri={quote(other, safe='')}&type=IMAGE"
    assert depicted(image, preview) == other
    assert depicted(image, f"{museum}/preview.jpg") == f"{museum}/preview.jpg"
    assert depicted(image, f"{api}/thumbnail/v2/url.json?uri=javascript:x") != "javascript:x"


def test_shards_name_the_image_they_labelled_as_a_whole_run_does(trained: Path, tmp_path: Path) -> None:
    """A shard's download lists where each image came from in its journal, not in fetched.csv: sharded runs named
    the table's dead URL where a whole run named the image its preview shows."""
    from urllib.parse import quote

    with Sandbox(sandbox_config(per_level=2), Knobs(shared_per_concept=0, triples_per_concept=0)) as sb:
        records = [r for r in sb.catalogue if r.type == "IMAGE" and r.has_url][:4]
        table = [
            {
                "ID": r.id,
                "URL": f"http://127.0.0.1:9/dead{i}.jpg",  # refused at once: the preview is what is had
                "preview": f"{sb.base_url}/thumbnail/v2/url.json?uri={quote(sb.image_url(r), safe='')}&type=IMAGE",
                "category": r.labels[0],
            }
            for i, r in enumerate(records)
        ]
        pl.DataFrame(table).write_csv(tmp_path / "t.csv")
        settings = dict(run=trained, table=tmp_path / "t.csv", quiet=True, retries=0)
        predict(PredictConfig(**settings, output=tmp_path / "whole.csv"))
        for shard in ("0/2", "1/2"):
            predict(PredictConfig(**settings, output=tmp_path / "shards.csv", shard=shard))
        predict(PredictConfig(**settings, output=tmp_path / "shards.csv", resume=True))
        shown = {r.id: sb.image_url(r) for r in records}
        for name in ("whole.csv", "shards.csv"):
            assert {row["ID"]: row["image"] for row in rows(tmp_path / name)} == shown, name
