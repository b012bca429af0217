"""Grad-CAM heatmaps with the grad-cam package; hooks are released after every use."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from PIL import Image
from pytorch_grad_cam import (
    EigenCAM,
    GradCAM,
    GradCAMPlusPlus,
    HiResCAM,
    LayerCAM,
    ScoreCAM,
    XGradCAM,
)
from pytorch_grad_cam.utils.image import show_cam_on_image
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget
from torch import nn

from .errors import ConfigError

CAM_METHODS = {
    "gradcam": GradCAM, "gradcam++": GradCAMPlusPlus, "hirescam": HiResCAM, "xgradcam": XGradCAM,
    "layercam": LayerCAM, "scorecam": ScoreCAM, "eigencam": EigenCAM,
}


def heatmaps(model: nn.Module, layer: nn.Module, batch: torch.Tensor, targets: Sequence[int],
             method: str = "gradcam") -> np.ndarray:
    """One heatmap in [0, 1] per image of ``batch`` for its class in ``targets`` (B x H x W)."""
    if method not in CAM_METHODS:
        raise ConfigError(f"unknown CAM method '{method}'; choose one of: {', '.join(CAM_METHODS)}")
    was_training = model.training
    model.eval()
    try:
        # The context manager removes the forward and backward hooks it added, whatever happens.
        with CAM_METHODS[method](model=model, target_layers=[layer]) as cam:
            return cam(input_tensor=batch, targets=[ClassifierOutputTarget(int(t)) for t in targets])
    finally:
        model.train(was_training)


def overlay(image: Image.Image, heatmap: np.ndarray) -> Image.Image:
    """The heatmap laid over the image (which has the heatmap's size)."""
    rgb = np.asarray(image.convert("RGB"), dtype=np.float32) / 255.0
    return Image.fromarray(show_cam_on_image(rgb, heatmap, use_rgb=True))


def side_by_side(*images: Image.Image) -> Image.Image:
    width = sum(im.width for im in images)
    canvas = Image.new("RGB", (width, max(im.height for im in images)), "white")
    x = 0
    for im in images:
        canvas.paste(im, (x, 0))
        x += im.width
    return canvas
