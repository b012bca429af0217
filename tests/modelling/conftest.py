"""The fixtures the modelling tests share: one training run of the tiny net, built once."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from europeana_imgcls.modelling import training
from europeana_imgcls.modelling.training import train

from ..support import built_once, config, unchanged


@pytest.fixture(scope="session")
def shared_run(shared_folders: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, training.TrainReport]:
    def build(root: Path) -> tuple[Path, training.TrainReport]:
        return root / "run", train(config(shared_folders, root / "run", epochs=8, figures=True, gradcam_images=3))

    return built_once(tmp_path_factory, "modelling_run", build)


@pytest.fixture
def run(shared_run: tuple[Path, training.TrainReport]) -> Iterator[tuple[Path, training.TrainReport]]:
    """The shared run and its report, read only."""
    with unchanged(shared_run[0], "the shared training run"):
        yield shared_run
