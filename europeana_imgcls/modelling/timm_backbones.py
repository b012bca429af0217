"""timm's image models as eic backbones (``arch`` timm/<name>, the ``[timm]`` extra): the name resolved against the
installed timm, its data config, its pretrained weights found on the Hugging Face Hub or in its cache without ever
hanging on a network that is not there, the model built, and where Grad-CAM looks in it.

What the weights are (a file, the Hub's, none) and what a checkpoint says of them is ``models.py``'s; this module
never reads a weights file itself.
"""

from __future__ import annotations

import functools
import logging
import math
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import torch
from torch import nn

from ..core.errors import ModelError

log = logging.getLogger(__name__)

PREFIX: Final = "timm/"
EXTRA: Final = "pip install 'europeana-imgcls[timm]'"
HUB_TIMEOUT: Final = 3.0  # seconds the Hub has to answer before eic takes it for unreachable and reads the cache
# The files a timm repository on the Hub holds its weights in, in timm's own order of preference.
HUB_FILES: Final = ("model.safetensors", "pytorch_model.bin")
# What the data config says, as resolve_model_data_config gives it (input_size is channels x height x width).
DATA_KEYS: Final = ("input_size", "interpolation", "mean", "std", "crop_pct", "crop_mode")

Reshape = Callable[[torch.Tensor], torch.Tensor]


def is_timm(arch: str) -> bool:
    return arch.startswith(PREFIX)


def timm_module() -> Any:
    """timm, imported on first use (~1-3 s), or a ModelError naming the extra."""
    try:
        import timm
    except ImportError:
        raise ModelError(f"`arch` timm/... needs the optional extra: {EXTRA}") from None
    return timm


@dataclass(frozen=True)
class TimmBackbone:
    """A timm model by name (``resnet50``, or with its pretrained tag ``vit_small_patch14_dinov2.lvd142m``) and
    what timm's registry says of it: its pretrained tag, where the Hub keeps the weights, its data config."""

    name: str
    architecture: str
    tag: str
    hf_hub_id: str | None
    hub_filename: str | None
    classifier: str
    data_config: dict[str, Any]
    fixed_size: bool
    version: str

    @property
    def arch(self) -> str:
        return PREFIX + self.name

    @property
    def mean(self) -> tuple[float, float, float]:
        return _triple(self.data_config["mean"])

    @property
    def std(self) -> tuple[float, float, float]:
        return _triple(self.data_config["std"])

    @property
    def input_size(self) -> int:
        """The side of the square images eic gives it when ``input_size`` is not set: its data config's."""
        return int(max(self.data_config["input_size"][1:]))

    def takes_size(self, size: int) -> bool:
        """Whether the model runs on ``size`` x ``size`` images: a CNN on any, a transformer made for one size if
        timm builds it for another (``img_size``: its position embedding resampled once, as the weights load)."""
        return not self.fixed_size or size == self.input_size or _sizable(self.name, size)

    def create(
        self, num_classes: int, state: dict[str, torch.Tensor] | None, source: str, size: int | None = None
    ) -> nn.Module:
        """The model with ``num_classes`` outputs for ``size`` x ``size`` images, built bare (never a download), with
        ``state`` (from ``source``) loaded into it: every weight but the classifier's must be there, of its shape; a
        classifier of another size is left fresh."""
        timm = timm_module()
        extra: dict[str, Any] = {}
        if self.fixed_size and size is not None and size != self.input_size:
            extra["img_size"] = size  # resampled here, once: a graph that resamples it each time does not export
        model = timm.create_model(self.name, pretrained=False, num_classes=num_classes, **extra)
        if state is not None:
            self._load(model, _resampled(model, state), source)
        return model

    def _load(self, model: nn.Module, state: dict[str, torch.Tensor], source: str) -> None:
        own = model.state_dict()
        fitting = {k: v for k, v in state.items() if k in own and tuple(v.shape) == tuple(own[k].shape)}
        head = self.classifier + "."
        # The buffers too: a file without a BatchNorm's running statistics would leave them at 0 and 1, and every
        # feature quietly off.
        wanted = [name for name, _ in [*model.named_parameters(), *model.named_buffers()] if not name.startswith(head)]
        # Not a buffer left out of the state (persistent=False), nor a count of batches seen, which weights files
        # often leave out and inference never reads.
        wanted = [name for name in wanted if name in own and not name.endswith("num_batches_tracked")]
        missing = [name for name in wanted if name not in fitting]
        if missing:
            raise ModelError(
                f"{source} does not fit `arch` {self.arch}: {len(missing)} of its {len(wanted)} tensors are "
                f"missing or of another shape (e.g. {missing[0]}); give timm's weights of that very model"
            )
        model.load_state_dict(fitting, strict=False)

    def describe(self) -> dict[str, Any]:
        """What a checkpoint, an embeddings table and an export say of the backbone (the weights are added by
        whoever loaded them)."""
        return {
            "name": self.name,
            "architecture": self.architecture,
            "pretrained_tag": self.tag,
            "hf_hub_id": self.hf_hub_id,
            "data_config": self.data_config,
            "timm_version": self.version,
        }


def _triple(values: Any) -> tuple[float, float, float]:
    a, b, c = (float(v) for v in values)
    return a, b, c


@functools.cache
def backbone(arch: str) -> TimmBackbone:
    """``timm/<name>`` resolved against the installed timm, or one line saying it is not one of its models."""
    timm = timm_module()
    name = arch.removeprefix(PREFIX)
    if not name or not timm.is_model(name):
        raise ModelError(
            f"`arch` {arch}: no such model in the installed timm {timm.__version__} (a run made with a newer timm? "
            f"pip install -U timm); timm.list_models('*{name.split('.')[0][:20]}*') lists the near ones"
        )
    try:
        cfg = timm.models.get_pretrained_cfg(name)
    except RuntimeError:  # a tag the model has none of: timm says "Invalid pretrained tag"
        model, _, tag = name.partition(".")
        tags = sorted(t.partition(".")[2] for t in timm.list_pretrained(f"{model}.*"))
        raise ModelError(
            f"`arch` {arch}: {model} has no pretrained tag {tag!r} in the installed timm {timm.__version__}; its "
            f"tags: {', '.join(tags[:12]) or 'none'}{' ...' if len(tags) > 12 else ''}"
        ) from None
    if cfg is None:
        raise ModelError(f"`arch` {arch}: timm {timm.__version__} knows no pretrained configuration of it")
    if not isinstance(cfg.classifier, str):
        raise ModelError(f"`arch` {arch} has {len(cfg.classifier)} classifier heads; choose a model with one")
    resolved = timm.data.resolve_data_config(pretrained_cfg=cfg.to_dict())
    data = {key: list(v) if isinstance(v, tuple) else v for key, v in resolved.items() if key in DATA_KEYS}
    return TimmBackbone(
        name=name,
        architecture=cfg.architecture or name.split(".")[0],
        tag=cfg.tag or "",
        hf_hub_id=cfg.hf_hub_id if not cfg.custom_load else None,  # npz weights need timm's own loader
        hub_filename=cfg.hf_hub_filename,
        classifier=cfg.classifier,
        data_config=data,
        fixed_size=bool(cfg.fixed_input_size),
        version=timm.__version__,
    )


@functools.cache
def _sizable(name: str, size: int) -> bool:
    """Whether timm builds ``name`` for ``size`` x ``size`` images (built on the meta device to find out: no memory,
    no weights)."""
    timm = timm_module()
    try:
        with torch.device("meta"):
            timm.create_model(name, pretrained=False, img_size=size)
    except (TypeError, ValueError, AssertionError, RuntimeError):
        return False
    return True


def _resampled(model: nn.Module, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """``state`` with a ViT's absolute position embedding resampled to the model's grid of patches, where the
    weights were made for another image size (timm's own resampling, bicubic)."""
    own = model.state_dict().get("pos_embed")
    theirs = state.get("pos_embed")
    grid = getattr(getattr(model, "patch_embed", None), "grid_size", None)
    if own is None or theirs is None or grid is None or own.shape == theirs.shape:
        return state
    from timm.layers import resample_abs_pos_embed

    prefix = 0 if getattr(model, "no_embed_class", False) else int(getattr(model, "num_prefix_tokens", 0))
    return {**state, "pos_embed": resample_abs_pos_embed(theirs, list(grid), num_prefix_tokens=prefix)}


# ---------------------------------------------------------------------------------------------
# The Hugging Face Hub and its cache


def hub_cache() -> Path:
    """Where huggingface_hub keeps what it downloads, as its environment says at this moment (its own constants
    are read once, at its import)."""
    for key in ("HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE"):
        if os.environ.get(key):
            return Path(os.environ[key]).expanduser()
    if os.environ.get("HF_HOME"):
        return Path(os.environ["HF_HOME"]).expanduser() / "hub"
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache").expanduser()
    return cache / "huggingface" / "hub"


def _endpoint() -> str:
    return (os.environ.get("HF_ENDPOINT") or "https://huggingface.co").rstrip("/")


def _offline_by_setting() -> bool:
    """HF_HUB_OFFLINE (or TRANSFORMERS_OFFLINE, which huggingface_hub honours too) as it is set now."""
    said = os.environ.get("HF_HUB_OFFLINE") or os.environ.get("TRANSFORMERS_OFFLINE") or ""
    return said.strip().upper() in ("1", "ON", "YES", "TRUE")


_REACHABLE: dict[str, bool] = {}  # per endpoint, for the process: the Hub is asked (and found missing) once


def _reachable(endpoint: str) -> bool:
    """Whether the Hub answers at all within HUB_TIMEOUT. huggingface_hub itself retries an unreachable Hub for
    ~25 s, a warning a try, before it falls back to its cache; one quick look here spares that."""
    if endpoint not in _REACHABLE:
        import httpx

        from ..europeana.tls import tls_context

        try:
            httpx.head(endpoint, timeout=HUB_TIMEOUT, verify=tls_context())
            _REACHABLE[endpoint] = True
        except httpx.HTTPError:
            _REACHABLE[endpoint] = False
    return _REACHABLE[endpoint]


def hub_file(spec: TimmBackbone) -> Path:
    """The file of the model's pretrained weights: from the Hub (into its cache), or from the cache alone when
    HF_HUB_OFFLINE is set or the Hub cannot be reached; a ModelError in one line that says the way out."""
    if spec.hf_hub_id is None:
        raise ModelError(
            f"{spec.arch} has no pretrained weights on the Hugging Face Hub that eic can load: use `weights` none, "
            "or `weights` PATH (a state dict or .safetensors file)"
        )
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import EntryNotFoundError, GatedRepoError, HfHubHTTPError, RepositoryNotFoundError

    endpoint, cache = _endpoint(), hub_cache()
    by_setting = _offline_by_setting()
    offline = by_setting or not _reachable(endpoint)
    for filename in (spec.hub_filename,) if spec.hub_filename else HUB_FILES:
        try:
            found = hf_hub_download(
                spec.hf_hub_id,
                filename,
                cache_dir=cache,
                local_files_only=offline,
                etag_timeout=HUB_TIMEOUT,
                endpoint=endpoint,
            )
            if offline and not by_setting:
                log.info("the Hugging Face Hub (%s) cannot be reached: %s comes from its cache", endpoint, spec.arch)
            return Path(str(found))
        except EntryNotFoundError:  # not cached (offline), or not in the repository: timm's next file
            continue
        except (RepositoryNotFoundError, GatedRepoError) as exc:
            raise ModelError(
                f"the Hugging Face Hub refuses {spec.hf_hub_id} ({type(exc).__name__}): log in "
                "(hf auth login) if it is gated, or pass `weights` PATH"
            ) from None
        except (HfHubHTTPError, OSError) as exc:
            raise ModelError(f"cannot fetch {spec.hf_hub_id} ({type(exc).__name__}): {_way_out(spec, cache)}") from None
    why = "HF_HUB_OFFLINE is set" if by_setting else f"cannot reach the Hugging Face Hub ({endpoint})"
    if not offline:
        why = f"the Hugging Face Hub holds no {' or '.join(HUB_FILES)} for {spec.hf_hub_id}"
    raise ModelError(f"{why} and the weights of {spec.arch} are not in the cache ({cache}): {_way_out(spec, cache)}")


def _way_out(spec: TimmBackbone, cache: Path) -> str:
    return (
        f"on a machine with internet run `hf download {spec.hf_hub_id}` (huggingface-cli download before "
        f"huggingface_hub 1.0) and copy its "
        f"~/.cache/huggingface here (to {cache.parent}, or set HF_HOME to the copy), or pass `weights` PATH "
        "(a state dict or .safetensors file), or `weights` none"
    )


# ---------------------------------------------------------------------------------------------
# Grad-CAM


def cam_layer(model: nn.Module, arch: str) -> nn.Module:
    """Where Grad-CAM looks: a transformer's last block, at its first norm (its tokens before the last attention,
    as the grad-cam package's own ViT example does; the last block's output would reach a class token's score
    through nothing); a CNN's last stage (timm's ``feature_info``). Else one line refusing."""
    blocks = getattr(model, "blocks", None)
    if hasattr(model, "num_prefix_tokens") and isinstance(blocks, nn.Sequential | nn.ModuleList) and len(blocks):
        norm = getattr(blocks[-1], "norm1", None)
        if isinstance(norm, nn.Module):
            return norm
    info = getattr(model, "feature_info", None)
    module = info[-1].get("module") if isinstance(info, list) and info and isinstance(info[-1], dict) else None
    if module and _has(model, str(module)):
        return model.get_submodule(str(module))
    raise ModelError(
        f"Grad-CAM cannot apply to {arch}: it has neither a transformer's blocks nor a CNN's stages that eic can "
        "find; leave `gradcam_dir` out (or set `gradcam_images` 0)"
    )


def _has(model: nn.Module, name: str) -> bool:
    try:
        model.get_submodule(name)
    except AttributeError:
        return False
    return True


def cam_reshape(model: nn.Module) -> Reshape:
    """The activations at ``cam_layer`` as Grad-CAM wants them, batch x channels x height x width: a transformer's
    tokens without its class and register tokens (``num_prefix_tokens``) laid out on their square grid; a stage
    that timm runs channels-last (``output_fmt`` NHWC, Swin's) turned round; anything else as it is."""
    prefix = int(getattr(model, "num_prefix_tokens", 0) or 0)
    channels_last = str(getattr(model, "output_fmt", "NCHW")) == "NHWC"

    def reshape(x: torch.Tensor) -> torch.Tensor:
        if x.dim() == 3:
            tokens = x[:, prefix:, :]
            side = math.isqrt(tokens.shape[1])
            if side * side != tokens.shape[1]:
                raise ModelError(f"Grad-CAM: {tokens.shape[1]} image tokens do not make a square grid")
            return tokens.reshape(x.shape[0], side, side, x.shape[2]).permute(0, 3, 1, 2)
        return x.permute(0, 3, 1, 2) if channels_last and x.dim() == 4 else x

    return reshape
