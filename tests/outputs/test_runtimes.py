"""The runtime interface (``outputs/inference.py``, ``outputs/runtimes.py``): predict holds an ensemble of split
models and never asks which runtime runs them; a runtime is chosen in one place."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch

from europeana_imgcls.core.config import EmbedConfig, PredictConfig, TrainConfig
from europeana_imgcls.core.errors import ConfigError
from europeana_imgcls.modelling.embedding import embed
from europeana_imgcls.modelling.training import train
from europeana_imgcls.outputs.inference import Ensemble, ModelRequest, RunModel, SplitModel
from europeana_imgcls.outputs.prediction import predict
from europeana_imgcls.outputs.runtimes import RUNTIMES, load_models, runtime

from ..support import make_folders, rows

TINY = dict(arch="tiny", weights="none", input_size=32, quiet=True)


@dataclass
class CpuOnly(SplitModel):
    """A runtime of the test's own: the run's PyTorch models behind the interface alone, taking CPU pixels, drawing
    no heatmaps, and naming a file of its own to the journal."""

    inner: RunModel | None = None

    @classmethod
    def load(cls, request: ModelRequest) -> Sequence[CpuOnly]:
        return [cls(model.split, model.meta, model) for model in RunModel.load(request)]

    def logits(self, pixels: torch.Tensor) -> np.ndarray:
        assert self.inner is not None and pixels.device.type == "cpu" and pixels.dtype == torch.uint8
        return self.inner.logits(pixels)

    def journal_identity(self) -> dict[str, str]:
        return {"cpu_only_files": f"{self.split}.bin"}


@pytest.fixture(scope="module")
def images(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_folders(tmp_path_factory.mktemp("new"), per_class=4, size=40)


def test_an_unknown_runtime_is_refused_in_one_line() -> None:
    with pytest.raises(ConfigError, match=r"^unknown `runtime` tensorrt: choose one of torch, onnx, openvino$"):
        runtime("tensorrt")


def test_predict_labels_through_any_runtime_that_answers_the_interface(
    trained_run: Path, images: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(RUNTIMES, "onnx", CpuOnly)  # in onnx's place: the configs name only the runtimes eic has
    out = {name: tmp_path / f"{name}.csv" for name in ("torch", "onnx")}
    for name, path in out.items():
        predict(
            PredictConfig(run=trained_run, inputs=[str(images)], output=path, split="all", runtime=name, quiet=True)
        )
    assert rows(out["torch"]) == rows(out["onnx"]) and len(rows(out["onnx"])) == 12
    # A shard leaves its journal: the settings a later run must share name the runtime's files, split by split.
    shard = tmp_path / "shard.csv"
    predict(PredictConfig(run=trained_run, inputs=[str(images)], output=shard, runtime="onnx", shard="1/2", quiet=True))
    settings = json.loads((tmp_path / "shard.csv.journal" / "settings.json").read_text())
    best = load_models("torch", ModelRequest(trained_run, split="best")).splits[0]
    assert settings["cpu_only_files"] == [f"{best}.bin"]
    # Heatmaps need a runtime that explains: refused before any work, in one line.
    with pytest.raises(
        ConfigError, match="`gradcam_dir` needs a model that can explain its labels.* use `runtime` torch"
    ):
        predict(
            PredictConfig(
                run=trained_run,
                inputs=[str(images)],
                output=tmp_path / "c.csv",
                runtime="onnx",
                gradcam_dir=tmp_path / "cams",
                quiet=True,
            )
        )
    assert not (tmp_path / "cams").exists() and not (tmp_path / "c.csv").exists()


def test_the_splits_of_a_probe_run_share_one_backbone_pass(tmp_path: Path) -> None:
    data = make_folders(tmp_path / "data", per_class=6, size=32)
    table = tmp_path / "e.parquet"
    embed(EmbedConfig(data_dir=data, output=table, **TINY))
    probe = tmp_path / "probe"
    train(TrainConfig(data_dir=data, output_dir=probe, method="linear-probe", folds=3, embeddings=table, **TINY))
    splits = RunModel.load(ModelRequest(probe))
    backbone = splits[0].features
    assert len(splits) == 3 and backbone is not None and all(m.features is backbone for m in splits)
    passes: list[int] = []
    backbone.register_forward_hook(lambda *_: passes.append(1))
    pixels = torch.randint(0, 256, (5, 3, 32, 32), dtype=torch.uint8)
    together = Ensemble(splits).logits(pixels)
    assert len(passes) == 1 and together.shape == (3, 5, 3)
    for model, logits in zip(splits, together, strict=True):  # each as its own whole model computes it
        alone = model.model(model.model_input()(pixels)).detach().numpy()
        np.testing.assert_allclose(logits, alone, rtol=1e-5, atol=1e-5)
