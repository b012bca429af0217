"""The losses of the tasks that torch has no ready-made form of (``tasks``' ``criterion`` makes them): imported
by training alone, so that the tasks' decisions, scans and folds load no torch."""

from __future__ import annotations

import torch
from torch import nn


class MaskedBCEWithLogits(nn.Module):
    """BCE-with-logits over the readable rows (an unreadable image's target row is all -1)."""

    pos_weight: torch.Tensor | None  # a buffer, registered in __init__

    def __init__(self, pos_weight: torch.Tensor | None = None) -> None:
        super().__init__()
        self.register_buffer("pos_weight", pos_weight)

    def forward(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        keep = targets[:, 0] >= 0
        return nn.functional.binary_cross_entropy_with_logits(
            logits[keep].float(), targets[keep].float(), pos_weight=self.pos_weight
        )
