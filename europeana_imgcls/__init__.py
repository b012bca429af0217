"""europeana_imgcls: Europeana records to trained image classifiers.

    >>> from europeana_imgcls import harvest, HarvestConfig
    >>> report = harvest(HarvestConfig(n=100, output="harvested.csv"))
"""

from .config import DownloadConfig, HarvestConfig, StatsConfig, SubtractConfig, build_config
from .dataset import stats, subtract
from .download import download
from .errors import ApiError, ConfigError, DatasetError, DownloadError, EicError, ModelError
from .harvest import harvest
from .sandbox import Sandbox
from .search_api import SearchClient

__version__ = "0.1.0"

__all__ = [
    "ApiError",
    "ConfigError",
    "DatasetError",
    "DownloadConfig",
    "DownloadError",
    "EicError",
    "HarvestConfig",
    "ModelError",
    "Sandbox",
    "SearchClient",
    "StatsConfig",
    "SubtractConfig",
    "build_config",
    "download",
    "harvest",
    "stats",
    "subtract",
]
