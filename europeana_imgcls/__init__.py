"""europeana_imgcls: Europeana records to trained image classifiers.

    >>> from europeana_imgcls import harvest, HarvestConfig
    >>> report = harvest(HarvestConfig(n=100, output="harvested.csv"))
"""

from .config import (
    CalibrateConfig,
    DownloadConfig,
    EnrichConfig,
    EvaluateConfig,
    HarvestConfig,
    PredictConfig,
    ReviewImportConfig,
    StatsConfig,
    SubtractConfig,
    TrainConfig,
    build_config,
)
from .curation import stats, subtract
from .download import download
from .errors import ApiError, CalibrationError, ConfigError, DatasetError, EicError, ModelError
from .harvest import harvest
from .search_api import SearchClient

__version__ = "0.1.0"

# Stages that need torch (and the sandbox, which needs numpy) load on first use, so the light commands
# start fast. Modules named like their function (harvest, download) stay eager: importing such a module
# later would replace the function on the package.
_LAZY = {
    "Sandbox": ("sandbox", "Sandbox"),
    "train": ("training", "train"),
    "evaluate": ("evaluation", "evaluate_run"),
    "predict": ("prediction", "predict"),
    "calibrate": ("calibration", "calibrate"),
    "enrich": ("enrichment", "enrich"),
    "import_review": ("review", "import_review"),
}


def __getattr__(name: str) -> object:
    if name in _LAZY:
        import importlib

        module, attribute = _LAZY[name]
        return getattr(importlib.import_module(f".{module}", __name__), attribute)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

__all__ = [
    "ApiError",
    "CalibrateConfig",
    "CalibrationError",
    "ConfigError",
    "DatasetError",
    "DownloadConfig",
    "EvaluateConfig",
    "EicError",
    "EnrichConfig",
    "HarvestConfig",
    "ModelError",
    "PredictConfig",
    "ReviewImportConfig",
    "Sandbox",
    "SearchClient",
    "StatsConfig",
    "SubtractConfig",
    "TrainConfig",
    "build_config",
    "calibrate",
    "download",
    "enrich",
    "evaluate",
    "harvest",
    "import_review",
    "predict",
    "stats",
    "subtract",
    "train",
]
