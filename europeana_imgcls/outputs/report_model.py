"""What ``eic report``'s page is drawn from (``report.gather`` fills it, ``report_page.render`` draws it), and the
images it embeds: each once, as a base64 JPEG within a size budget."""

from __future__ import annotations

import base64
import io
import json
import warnings
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote

from ..core.sidecars import not_regular
from ..europeana.search_api import is_record_id

GENERATOR = "europeana-imgcls report"  # the page's <meta name="generator">: how eic knows a report it wrote
RECORD_PAGE = "https://www.europeana.eu/item"
JPEG_QUALITIES = (80, 65, 50, 38, 28)
# What one embedded image may weigh (JPEG bytes at the default 256-pixel side; base64 adds a third): 1,000 test
# images stay under 20 MB with their Grad-CAM figures and the page around them.
IMAGE_BUDGET = 12_000
FIGURE_BUDGET = 40_000  # a Grad-CAM figure (image, heatmap and colour bar side by side)


# ---------------------------------------------------------------------------------------------
# What the page shows


@dataclass
class Shown:
    """One image as the page shows it: where it is, what it is, what the model said."""

    image: str
    record: str | None
    truth: list[str]
    predicted: list[str]
    confidence: float
    split: str

    @property
    def right(self) -> bool:
        return sorted(self.truth) == sorted(self.predicted)

    @property
    def name(self) -> str:
        return self.record or Path(self.image).name


@dataclass
class Predictions:
    """A set of scored images: the run's test folds, or an evaluation."""

    key: str
    title: str
    classes: list[str]
    single: bool
    rows: list[Shown] = field(default_factory=list)
    damaged: int = 0


@dataclass
class Calibrated:
    """The calibration section's data: reliability bins before and after scaling, the precision/coverage curve
    of each class, and the threshold each class is emitted at (and where it came from)."""

    bins: dict[str, list[tuple[float, float, int]]]
    curves: dict[str, list[tuple[float, float, float]]]  # class -> (threshold, precision, coverage), descending
    thresholds: dict[str, float | None]
    source: str
    target: float | None
    ece: tuple[float, float] | None


@dataclass
class Audited:
    issues: list[dict[str, str]]
    groups: list[list[dict[str, str]]]
    summary: dict[str, Any]


@dataclass
class Page:
    """Everything the page is rendered from (``report_page.render``)."""

    title: str
    run: Path
    summary: list[tuple[str, str]]
    metrics: list[tuple[str, float, float]]
    evaluation: list[tuple[str, float, float]]
    sets: list[Predictions]
    histories: dict[str, list[dict[str, float]]]
    calibrated: Calibrated | None
    audited: Audited | None
    notes: list[str]
    images: Images
    cams: dict[str, int]  # an image's name -> its Grad-CAM figure
    per_cell: int
    max_images: int  # shared out among every confusion matrix's cells (``report_page.cell_cap``)
    gallery: int


# ---------------------------------------------------------------------------------------------
# Images, embedded


class Images:
    """Every image the page shows, each once, as a base64 JPEG data URL (None where it cannot be read)."""

    def __init__(self, side: int) -> None:
        self.side = side
        self.data: list[str] = []
        self.index: dict[str, int | None] = {}
        self.on_add: Callable[[], object] = lambda: None  # told of every image read (a progress bar)

    def add(self, path: Path | str, budget: int | None = None, *, wide: bool = False) -> int | None:
        key = str(path)
        if key not in self.index:
            scale = (self.side / 256) ** 2
            encoded = encode_jpeg(Path(path), self.side * (2 if wide else 1), int((budget or IMAGE_BUDGET) * scale))
            self.index[key] = None
            self.on_add()
            if encoded is not None:
                self.data.append("data:image/jpeg;base64," + base64.b64encode(encoded).decode("ascii"))
                self.index[key] = len(self.data) - 1
        return self.index[key]


def encode_jpeg(path: Path, side: int, budget: int) -> bytes | None:
    """The image at ``path`` as a JPEG of at most ``side`` pixels on its long side, at the best quality of
    ``JPEG_QUALITIES`` that fits ``budget`` bytes (then smaller, down to half the side); None when it cannot be
    read. Images are never enlarged (the page scales small ones up)."""
    from PIL import Image, ImageOps

    if not_regular(path) is not None:
        return None
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as opened:
                opened.draft("RGB", (side, side))
                picture = ImageOps.exif_transpose(opened).convert("RGB")
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombWarning, Image.DecompressionBombError):
        return None
    encoded = b""
    for shrink in (1.0, 0.75, 0.5):
        fitted = picture.copy()
        fitted.thumbnail((max(1, int(side * shrink)), max(1, int(side * shrink))), Image.Resampling.LANCZOS)
        for quality in JPEG_QUALITIES:
            buffer = io.BytesIO()
            fitted.save(buffer, "JPEG", quality=quality, optimize=True)
            encoded = buffer.getvalue()
            if len(encoded) <= budget:
                return encoded
    return encoded


def record_page(record: str | None) -> str | None:
    """The Europeana page of a record ID (``/dataset/local``), or None for a name that is not one."""
    if not record or not is_record_id(record):
        return None
    return RECORD_PAGE + quote(record, safe="/")


def json_for_script(data: Any) -> str:
    """JSON safe inside a ``<script>`` element: no ``</script>``, no ``<!--``, whatever the strings hold."""
    text = json.dumps(data, ensure_ascii=True, allow_nan=False, separators=(",", ":"))
    return text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")


def resolved(image: str, run: Path) -> Path:
    """An image path as a prediction table names it: as it is, else beside the run (tables written from the
    folder the run was trained in name paths relative to it)."""
    path = Path(image)
    if path.is_absolute() or path.exists():
        return path
    return run.resolve().parent / path


def ordered(rows: Iterable[Shown]) -> list[Shown]:
    """Most confident first; the name breaks ties, so a page is the same every time it is made."""
    return sorted(rows, key=lambda r: (-r.confidence, r.name))
