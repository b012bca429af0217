"""The runtimes a run's split models run on, by the name ``runtime`` gives them: the one place that name becomes an
implementation of ``inference.SplitModel``.

A new runtime: a ``SplitModel`` of its own (``load``, ``logits``, and what it can do: ``explains``,
``decodes_on_device``, ``files_option``, ``journal_identity``), a line in ``RUNTIMES`` and the name in
``core.config.Runtime``.
"""

from __future__ import annotations

from typing import Final

from ..core.config import InputSettings
from ..core.errors import ConfigError
from .inference import Ensemble, ModelRequest, RunModel, SplitModel
from .onnx_runtime import OnnxModel
from .openvino_runtime import OpenVinoModel

RUNTIMES: Final[dict[str, type[SplitModel]]] = {"torch": RunModel, "onnx": OnnxModel, "openvino": OpenVinoModel}


def runtime(name: str) -> type[SplitModel]:
    """The implementation of runtime ``name``, or one line naming those there are."""
    if name not in RUNTIMES:
        raise ConfigError(f"unknown `runtime` {name}: choose one of {', '.join(RUNTIMES)}")
    return RUNTIMES[name]


def load_models(name: str, request: ModelRequest) -> Ensemble:
    """The split models ``request`` asks for, run by runtime ``name``."""
    return Ensemble(runtime(name).load(request))


def check_runtime(settings: InputSettings, explain: bool = False) -> None:
    """Before any work: options that belong to another runtime than the one chosen, and heatmaps (``explain``)
    from a runtime that draws none, refused in one line."""
    chosen = runtime(settings.runtime)
    for option in {kind.files_option for kind in RUNTIMES.values()} - {chosen.files_option, None}:
        if getattr(settings, str(option), None) is not None:
            runs = " or ".join(name for name, kind in RUNTIMES.items() if kind.files_option == option)
            raise ConfigError(f"`{option}` is what `runtime` {runs} runs: pass `runtime` {runs} too (or leave it out)")
    if explain and not chosen.explains:
        able = " or ".join(name for name, kind in RUNTIMES.items() if kind.explains)
        raise ConfigError(
            f"`gradcam_dir` needs a model that can explain its labels, which `runtime` {settings.runtime} cannot: "
            f"use `runtime` {able} to draw heatmaps"
        )
