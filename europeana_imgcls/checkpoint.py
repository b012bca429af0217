"""Self-describing checkpoints: everything evaluate and predict need, loadable without running code."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from .errors import ModelError
from .models import build_model, safe_load
from .tables import atomic_path

FORMAT = "europeana-imgcls/checkpoint-v1"


def save_checkpoint(path: Path, model: nn.Module, **meta: Any) -> None:
    """Weights plus ``meta`` (arch, class_names, input_size, mean, std, mode, config, epoch, ...)."""
    state = {"format": FORMAT, "model_state": {k: v.detach().cpu() for k, v in model.state_dict().items()}, **meta}
    with atomic_path(path) as tmp:
        torch.save(state, tmp)


def load_checkpoint(path: Path) -> dict[str, Any]:
    state = safe_load(path)
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise ModelError(f"{path} is not a checkpoint written by eic train")
    return state


def model_from_checkpoint(state: dict[str, Any]) -> nn.Module:
    model = build_model(state["arch"], len(state["class_names"]), weights="none")
    model.load_state_dict(state["model_state"])
    model.eval()
    return model
