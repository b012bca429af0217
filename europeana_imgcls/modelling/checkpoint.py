"""Self-describing checkpoints: weights plus a ``CheckpointMeta``, everything evaluate and predict need,
loadable without running code from the file."""

from __future__ import annotations

import copy
import functools
import io
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..core.errors import ModelError
from ..core.tables import atomic_path, file_sha256
from .models import KnnHead, build_model, get_head, head_name, safe_load, set_head
from .run_folder import CheckpointMeta


@dataclass(frozen=True)
class Checkpoint:
    meta: CheckpointMeta
    weights: dict[str, torch.Tensor]

    @property
    def finite(self) -> bool:
        """Whether its model can say anything: a split whose training diverged holds NaN or infinite weights, and
        would label every image with its first class at a confidence of NaN."""
        return all(bool(torch.isfinite(w).all()) for w in self.weights.values() if w.is_floating_point())


def save_checkpoint(path: Path, model: nn.Module, meta: CheckpointMeta) -> None:
    """The model's weights and what rebuilds it (arch, classes, input size, mean/std, mode, config, epoch...)."""
    _save(path, meta, {k: v.detach().cpu() for k, v in model.state_dict().items()})


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
        raise ModelError(
            f"{path} holds another backbone than this run's settings build (another `weights` "
            "file?): resume with the settings the run was started with, or choose another output_dir"
        )
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)
    return file_sha256(path)


def save_head_checkpoint(
    path: Path, model: nn.Module, backbone: Path, backbone_sha256: str, meta: CheckpointMeta
) -> None:
    """A split model of a frozen-backbone run: its head's weights and a checked reference to the backbone."""
    head = head_name(model, meta.arch) + "."
    meta = meta.model_copy(
        update={"backbone": os.path.relpath(backbone, path.parent), "backbone_sha256": backbone_sha256}
    )
    _save(path, meta, {k: v.detach().cpu() for k, v in model.state_dict().items() if k.startswith(head)})


def _save(path: Path, meta: CheckpointMeta, weights: dict[str, torch.Tensor]) -> None:
    with atomic_path(path) as tmp:
        torch.save({**meta.saved(), "model_state": weights}, tmp)


def load_checkpoint(path: Path) -> Checkpoint:
    state = safe_load(path)
    meta = CheckpointMeta.parse(state, path)
    weights = state["model_state"] if isinstance(state, dict) else None
    if not isinstance(weights, dict):
        raise ModelError(f"{path}: damaged checkpoint (no weights); train the run again")
    if meta.backbone is not None and meta.backbone_sha256 is not None:
        # A head-only model: the backbone it was fitted on comes from the run.
        backbone = _load_backbone((path.parent / meta.backbone).resolve(), meta.backbone_sha256)
        weights = {**backbone, **weights}
    return Checkpoint(meta, weights)


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


def model_from_checkpoint(checkpoint: Checkpoint) -> nn.Module:
    meta = checkpoint.meta
    arch, classes = meta.arch, len(meta.class_names)
    model = build_model(arch, classes, weights="none", input_size=meta.input_size)  # timm: no download, ever
    if meta.head == "knn":
        bank = checkpoint.weights[head_name(model, arch) + ".bank"]
        set_head(
            model, arch, KnnHead(bank.shape[0], bank.shape[1], classes, int(meta.neighbours or 1), meta.multilabel)
        )
    try:
        model.load_state_dict(checkpoint.weights)
    except RuntimeError as exc:
        raise ModelError(f"the weights do not fit `arch` {arch} ({str(exc).splitlines()[0]})") from None
    model.eval()
    return model


def backbone_and_head(model: nn.Module, arch: str, backbone: nn.Module | None = None) -> tuple[nn.Module, nn.Module]:
    """A head-only split's model in its two parts: the backbone its run's splits share (``backbone``, the copy an
    earlier split made, else a copy of ``model`` that returns the features its head reads) and its head."""
    if backbone is None:
        backbone = copy.deepcopy(model)
        set_head(backbone, arch, nn.Identity())
    return backbone.eval(), get_head(model, arch)
