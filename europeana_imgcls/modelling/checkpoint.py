"""Self-describing checkpoints: everything evaluate and predict need, loadable without running code."""

from __future__ import annotations

import functools
import hashlib
import io
import os
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..core.errors import ModelError
from ..core.tables import atomic_path
from .models import KnnHead, build_model, head_name, safe_load, set_head

FORMAT = "europeana-imgcls/checkpoint-v1"


def save_checkpoint(path: Path, model: nn.Module, **meta: Any) -> None:
    """Weights plus ``meta`` (arch, class_names, input_size, mean, std, mode, config, epoch, ...)."""
    state = {"format": FORMAT, "model_state": {k: v.detach().cpu() for k, v in model.state_dict().items()}, **meta}
    with atomic_path(path) as tmp:
        torch.save(state, tmp)


def save_backbone(path: Path, model: nn.Module, arch: str) -> str:
    """The frozen backbone a run's head-only split models share (saved once); returns its SHA-256."""
    head = head_name(model, arch) + "."
    # Saved to memory first: torch.save names the archive's entries after the file it writes, and the
    # temporary file's name is random, so the same weights would get another SHA-256 on every save.
    buffer = io.BytesIO()
    torch.save({k: v.detach().cpu() for k, v in model.state_dict().items() if not k.startswith(head)}, buffer)
    data = buffer.getvalue()
    if path.is_file() and path.read_bytes() == data:
        return file_sha256(path)  # a resumed run: the same backbone, kept as it is
    if path.is_file():
        raise ModelError(f"{path} holds another backbone than this run's settings build (another `weights` "
                         "file?): resume with the settings the run was started with, or choose another output_dir")
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)
    return file_sha256(path)


def save_head_checkpoint(path: Path, model: nn.Module, backbone: Path, backbone_sha256: str, **meta: Any) -> None:
    """A split model of a frozen-backbone run: its head's weights and a checked reference to the backbone."""
    head = head_name(model, meta["arch"]) + "."
    state = {"format": FORMAT, "model_state": {k: v.detach().cpu() for k, v in model.state_dict().items()
                                               if k.startswith(head)},
             "backbone": os.path.relpath(backbone, path.parent), "backbone_sha256": backbone_sha256, **meta}
    with atomic_path(path) as tmp:
        torch.save(state, tmp)


def load_checkpoint(path: Path) -> dict[str, Any]:
    state = safe_load(path)
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise ModelError(f"{path} is not a checkpoint written by eic train")
    if "backbone" in state:  # a head-only model: the backbone it was fitted on comes from the run
        backbone = _load_backbone((path.parent / state["backbone"]).resolve(), state["backbone_sha256"])
        state = {**state, "model_state": {**backbone, **state["model_state"]}}
    return state


@functools.lru_cache(maxsize=2)
def _load_backbone(path: Path, sha256: str) -> dict[str, Any]:
    """Loaded once for all the splits that share it, and only if it is the file they were fitted on."""
    if not path.is_file():
        raise ModelError(f"{path}: no such file; the split models of this run need the backbone saved beside them")
    if file_sha256(path) != sha256:
        raise ModelError(f"{path} is not the backbone this run's heads were fitted on (its SHA-256 differs)")
    state = safe_load(path)
    if not isinstance(state, dict):
        raise ModelError(f"{path} holds no state dict of weights")
    return state


def file_sha256(path: Path) -> str:
    with path.open("rb") as handle:
        return hashlib.file_digest(handle, "sha256").hexdigest()


def model_from_checkpoint(state: dict[str, Any]) -> nn.Module:
    arch, classes = state["arch"], len(state["class_names"])
    model = build_model(arch, classes, weights="none")
    if state.get("head") == "knn":
        bank = state["model_state"][head_name(model, arch) + ".bank"]
        set_head(model, arch, KnnHead(bank.shape[0], bank.shape[1], classes, int(state["neighbours"]),
                                      state.get("mode") == "multi-label"))
    model.load_state_dict(state["model_state"])
    model.eval()
    return model
