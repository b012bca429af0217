"""outputs/inference.py: the ensemble of a run's split models."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from europeana_imgcls import PredictConfig, predict
from europeana_imgcls.core.errors import ModelError

from ..support import CLASSES, diverge


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
