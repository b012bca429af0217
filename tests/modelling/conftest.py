"""The fixtures the modelling tests share: one training run of the tiny net, built once."""

from __future__ import annotations

from pathlib import Path

import pytest

from europeana_imgcls.modelling import training
from europeana_imgcls.modelling.training import train

from ..support import config


@pytest.fixture(scope="session")
def run(folders: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, training.TrainReport]:
    out = tmp_path_factory.mktemp("run") / "run"
    return out, train(config(folders, out, epochs=8, arch="tiny"))  # the model is not the point here
