"""modelling/models.py: the model registry and weights files loaded safely."""

from __future__ import annotations

import os
import pickle
from pathlib import Path

import pytest
import torch

from europeana_imgcls.core.errors import ModelError
from europeana_imgcls.modelling.models import build_model


@pytest.mark.slow(seconds=2)  # resnet18, twice
def test_weights_files_load_safely(folders: Path, tmp_path: Path) -> None:
    good = tmp_path / "resnet18.pth"
    torch.save(build_model("resnet18", 1000, "none").state_dict(), good)
    model = build_model("resnet18", 3, str(good))
    assert model.fc.out_features == 3

    class Evil:
        def __reduce__(self):
            return (os.system, (f"touch {tmp_path / 'pwned'}",))

    for evil in (tmp_path / "evil.pt", tmp_path / "evil.pkl"):
        if evil.suffix == ".pt":
            torch.save({"model_state": Evil()}, evil)
        else:
            evil.write_bytes(pickle.dumps({"model_state": Evil()}))
        with pytest.raises(ModelError, match="refused"):
            build_model("resnet18", 3, str(evil))
        assert not (tmp_path / "pwned").exists()
    other = tmp_path / "other.pth"
    torch.save(build_model("mobilenet_v3_small", 3, "none").state_dict(), other)
    with pytest.raises(ModelError, match="does not fit `arch` resnet18"):
        build_model("resnet18", 3, str(other))
