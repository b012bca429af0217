"""Europeana scale: thumbnails from one CDN, a global request rate, shards on one folder, the key's quota,
TensorBoard. Real servers on 127.0.0.1 (the sandbox) and real processes."""

from __future__ import annotations

import json
from pathlib import Path

import polars as pl
import pytest
from PIL import Image

from europeana_imgcls.core.sharding import Shard
from europeana_imgcls.europeana.sandbox import Knobs, Sandbox

from .support import sandbox_config, sandbox_table

# ---------------------------------------------------------------------------------------------
# Thumbnails


# ---------------------------------------------------------------------------------------------
# One request rate for the whole client


# ---------------------------------------------------------------------------------------------
# Shards


# ---------------------------------------------------------------------------------------------
# The key's quota


# ---------------------------------------------------------------------------------------------
# Predict and embed in shards


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

    from .support import make_folders

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
# TensorBoard


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
