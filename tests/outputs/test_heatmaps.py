"""outputs/heatmaps.py: predict's Grad-CAM figures."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from europeana_imgcls import PredictConfig, predict


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
