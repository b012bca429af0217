"""The tests' tiny net, registered as arch "tiny": for tests where the model is not the point."""

from __future__ import annotations

import torch
from torch import nn

from europeana_imgcls.modelling.models import register_arch


class TinyNet(nn.Module):
    """Two convolutions, a pooled vector, a head: trains in milliseconds, and Grad-CAM has a layer to read."""

    def __init__(self, num_classes: int) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 16, 3, stride=2, padding=1),
            nn.BatchNorm2d(16),
            nn.ReLU(),
            nn.Conv2d(16, 32, 3, stride=2, padding=1),
            nn.BatchNorm2d(32),
            nn.ReLU(),
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
        )
        self.fc = nn.Linear(32, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.features(x))


register_arch("tiny", TinyNet, head="fc", cam_layer=lambda model: model.features[3])
