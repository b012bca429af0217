"""europeana_imgcls: Europeana records to trained image classifiers.

>>> from europeana_imgcls import harvest, HarvestConfig
>>> report = harvest(HarvestConfig(n=100, output="harvested.csv"))
"""

from .acquisition.curation import stats, subtract
from .acquisition.download import download
from .acquisition.harvest import harvest
from .core.config import (
    AuditConfig,
    CalibrateConfig,
    DownloadConfig,
    EmbedConfig,
    EnrichConfig,
    EvaluateConfig,
    ExportConfig,
    HarvestConfig,
    PredictConfig,
    PublishConfig,
    ReportConfig,
    ReviewApplyConfig,
    ReviewImportConfig,
    SandboxConfig,
    StatsConfig,
    SubtractConfig,
    TrainConfig,
    WithdrawConfig,
    build_config,
)
from .core.errors import ApiError, CalibrationError, ConfigError, DatasetError, EicError, ModelError
from .core.version import __version__ as __version__
from .europeana.search_api import SearchClient

# Stages that need torch (and the sandbox, which needs numpy) load on first use, so the light commands
# start fast. Modules named like their function (harvest, download) stay eager: importing such a module
# later would replace the function on the package.
_LAZY = {
    "Sandbox": ("europeana.sandbox", "Sandbox"),
    "train": ("modelling.training", "train"),
    "evaluate": ("outputs.evaluation", "evaluate_run"),
    "predict": ("outputs.prediction", "predict"),
    "calibrate": ("modelling.calibration", "calibrate"),
    "enrich": ("outputs.enrichment", "enrich"),
    "import_review": ("outputs.review", "import_review"),
    "apply_review": ("outputs.review_apply", "apply_review"),
    "embed": ("modelling.embedding", "embed"),
    "audit": ("outputs.audit", "audit"),
    "export": ("outputs.export", "export"),
    "publish": ("outputs.publish", "publish"),
    "withdraw": ("outputs.publish", "withdraw"),
    "report": ("outputs.report", "report"),
}


def __getattr__(name: str) -> object:
    if name in _LAZY:
        import importlib

        module, attribute = _LAZY[name]
        return getattr(importlib.import_module(f".{module}", __name__), attribute)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "ApiError",
    "AuditConfig",
    "CalibrateConfig",
    "CalibrationError",
    "ConfigError",
    "DatasetError",
    "DownloadConfig",
    "EicError",
    "EmbedConfig",
    "EnrichConfig",
    "EvaluateConfig",
    "ExportConfig",
    "HarvestConfig",
    "ModelError",
    "PredictConfig",
    "PublishConfig",
    "ReportConfig",
    "ReviewApplyConfig",
    "ReviewImportConfig",
    "Sandbox",
    "SandboxConfig",
    "SearchClient",
    "StatsConfig",
    "SubtractConfig",
    "TrainConfig",
    "WithdrawConfig",
    "apply_review",
    "audit",
    "build_config",
    "calibrate",
    "download",
    "embed",
    "enrich",
    "evaluate",
    "export",
    "harvest",
    "import_review",
    "predict",
    "publish",
    "report",
    "stats",
    "subtract",
    "train",
    "withdraw",
]
