"""modelling/embedding.py: eic embed's table, journaled: resumed, sharded and merged."""

from __future__ import annotations

from pathlib import Path

import polars as pl
import pytest

from europeana_imgcls.core.config import EmbedConfig
from europeana_imgcls.modelling.embedding import embed

from ..support import TINY, make_folders


def test_a_merge_that_names_the_folder_another_way_adds_no_image_twice(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    make_folders(tmp_path / "data", per_class=4, size=32)
    monkeypatch.chdir(tmp_path)
    out = tmp_path / "e.parquet"
    shard = embed(EmbedConfig(data_dir=Path("data"), output=out, shard="0/2", **TINY))  # a relative path
    merged = embed(EmbedConfig(data_dir=tmp_path / "data", output=out, resume=True, **TINY))  # an absolute one
    assert merged.already_done == shard.embedded and merged.embedded == 12 - shard.embedded
    table = pl.read_parquet(out)
    assert table.height == 12
    assert len({str(Path(p).resolve()) for p in table["image"]}) == 12


def test_an_existing_table_is_refused_with_advice_that_works(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from europeana_imgcls.cli.app import app

    from ..support import make_folders

    data = make_folders(tmp_path / "data", per_class=3, size=32)
    out = tmp_path / "e.parquet"
    args = ["embed", str(data), "-o", str(out), "--arch", "tiny", "--weights", "none", "--input-size", "32", "--quiet"]
    assert CliRunner().invoke(app, args).exit_code == 0
    refused = CliRunner().invoke(app, args)
    assert refused.exit_code == 1 and "--resume" in refused.stderr and "--overwrite" not in refused.stderr
    again = CliRunner().invoke(app, [*args, "--resume"])  # the advice works: nothing new, nothing lost
    assert again.exit_code == 0 and "9 done" in " ".join(again.stdout.split())


def test_a_resume_after_the_folder_changed_holds_the_folder_as_it_is(tmp_path: Path) -> None:
    """After the review loop moved a record to its new class and set another aside (`download --prune`), `embed
    --resume` kept both old rows beside the new one: 13 rows for 12 images, the moved record twice under two
    classes (a near-duplicate "with conflicting labels" to audit, a reviewer's correction back as a suspect)."""
    data = make_folders(tmp_path / "data", per_class=4, size=32)
    out = tmp_path / "e.parquet"
    embed(EmbedConfig(data_dir=data, output=out, **TINY))
    classes = sorted(p.name for p in data.iterdir())
    moved = next((data / classes[0]).iterdir())
    moved.rename(data / classes[1] / moved.name)
    gone = next((data / classes[2]).iterdir())
    gone.rename(tmp_path / gone.name)
    again = embed(EmbedConfig(data_dir=data, output=out, resume=True, **TINY))
    table = pl.read_parquet(out)
    now = {str(p.resolve()) for p in data.rglob("*.jpg")}
    assert table.height == len(now) == 11 and {str(Path(p).resolve()) for p in table["image"]} == now
    assert table.filter(pl.col("image").str.ends_with(moved.name))["category"].to_list() == [classes[1]]
    assert again.embedded == 1


# ---------------------------------------------------------------------------------------------
# Found in review: resumes, encodings and paths


def test_embed_resume_refuses_another_folder(tmp_path: Path) -> None:
    from europeana_imgcls.core.config import EmbedConfig
    from europeana_imgcls.core.errors import DatasetError
    from europeana_imgcls.modelling.embedding import embed

    from ..support import make_folders

    first = make_folders(tmp_path / "first", per_class=3, size=32)
    other = make_folders(tmp_path / "other", per_class=3, size=32)
    out = tmp_path / "e.parquet"
    common = dict(output=out, arch="tiny", weights="none", input_size=32, quiet=True)
    embed(EmbedConfig(data_dir=first, shard="0/2", **common))  # a shard started on the first folder
    with pytest.raises(DatasetError, match=r"data_dir: \".*first\" then, \".*other\" now"):
        embed(EmbedConfig(data_dir=other, resume=True, **common))
    merged = embed(EmbedConfig(data_dir=first, resume=True, **common))
    assert merged.already_done + merged.embedded == 9 and merged.already_done > 0


# ---------------------------------------------------------------------------------------------
# Predict and embed in shards


def test_embed_in_shards_then_one_merge_equals_an_unsharded_table(tmp_path: Path) -> None:
    from europeana_imgcls.core.config import EmbedConfig
    from europeana_imgcls.modelling.embedding import embed

    from ..support import make_folders

    data = make_folders(tmp_path / "data", per_class=5, size=32)
    settings = dict(data_dir=data, arch="tiny", weights="none", input_size=32, quiet=True)
    out = tmp_path / "e.parquet"
    shards = [embed(EmbedConfig(**settings, output=out, shard=f"{k}/3")) for k in range(3)]
    assert not out.exists() and sum(s.embedded for s in shards) == 15
    merged = embed(EmbedConfig(**settings, output=out, resume=True))
    assert merged.embedded == 0 and merged.already_done == 15
    whole = embed(EmbedConfig(**settings, output=tmp_path / "whole.parquet"))
    assert whole.embedded == 15
    assert pl.read_parquet(out).sort("image").equals(pl.read_parquet(tmp_path / "whole.parquet").sort("image"))


def test_a_shard_decodes_only_its_own_images(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Reading a folder decodes each image (a class of files cut short is no class): eic embed, which decodes each
    image as it embeds it, had every shard decode the whole shared folder first."""
    from europeana_imgcls.datasets import class_folders, decoding

    data = make_folders(tmp_path / "data", per_class=6, size=32)
    decoded: list[Path] = []
    real = decoding.load_image

    def counted(path: Path, *args, **kwargs):
        decoded.append(Path(path))
        return real(path, *args, **kwargs)

    monkeypatch.setattr(class_folders, "load_image", counted)  # what the folder's scan decodes with
    report = embed(EmbedConfig(data_dir=data, output=tmp_path / "e.parquet", shard="0/2", **TINY))
    assert report.embedded and not decoded


def test_a_users_file_named_like_the_embeddings_sidecar_is_kept(tmp_path: Path) -> None:
    """eic embed wrote NAME.embedding.json beside its table without asking: a user's file of that name was
    replaced. It is refused in one line before any work, as every other sidecar is."""
    from europeana_imgcls.core.errors import DatasetError

    data = make_folders(tmp_path / "data", per_class=2, size=32)
    mine = tmp_path / "e.embedding.json"
    mine.write_text('{"my": "notes"}')
    with pytest.raises(DatasetError, match="e.embedding.json"):
        embed(EmbedConfig(data_dir=data, output=tmp_path / "e.parquet", **TINY))
    assert mine.read_text() == '{"my": "notes"}' and not (tmp_path / "e.parquet").exists()


def test_a_probes_own_embeddings_are_eics_and_a_resume_says_what_it_lacks(tmp_path: Path) -> None:
    """`eic embed DATA -o PROBE/embeddings.parquet --resume` called the sidecar a k-NN run wrote beside its own table
    "not eic's" (it names no output, only what made the vectors): what stops that resume is the true reason, that
    no embed journal says what wrote the table."""
    from europeana_imgcls import TrainConfig, train
    from europeana_imgcls.core.errors import DatasetError

    data = make_folders(tmp_path / "data", per_class=4, size=32)
    train(TrainConfig(data_dir=data, output_dir=tmp_path / "probe", method="knn", folds=3, **TINY))
    table = tmp_path / "probe" / "embeddings.parquet"
    with pytest.raises(DatasetError, match="its journal") as refused:
        embed(EmbedConfig(data_dir=data, output=table, resume=True, **TINY))
    assert "not eic's" not in str(refused.value)
