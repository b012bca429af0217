"""What the figures eic draws share. Line charts (a split's curves, the reliability diagram): matplotlib's object API
(no pyplot, no global backend switch, nothing left open) and a layout that is set, not measured. Contact sheets
(evaluate's most confident mistakes, audit's suspects): composed with Pillow, as the Grad-CAM figures are.

Each tiny training draws several of them, and the costs that are not drawing are most of a chart's: ``tight_layout``
measures every tick label's text box to place the axes (a third of a chart's time), and an axes' title left where
matplotlib chooses makes it measure the axes' decorations again at every draw to keep clear of any tick labels above
it. These charts put no tick labels above their axes, so a title at the axes' top is where matplotlib would have put
it, and their labels are short, so fixed margins fit them.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from PIL import Image, ImageDraw, ImageFont, ImageOps

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure


def chart(size: tuple[float, float], margins: dict[str, float], **grid: Any) -> tuple[Figure, Any]:
    """A figure of ``size`` inches and its axes (``grid``: matplotlib's ``subplots`` arguments), placed within
    ``margins`` (``left``, ``right``, ``bottom``, ``top``, ``wspace``, ``hspace``: shares of the figure)."""
    from matplotlib.figure import Figure

    figure = Figure(figsize=size)
    figure.subplots_adjust(**margins)
    return figure, figure.subplots(**grid)


def save(figure: Figure, path: Path) -> None:
    """``figure`` as a PNG at ``path``, written under a temporary name and renamed: never through a link that
    stands there (a run folder kept in DVC or git-annex), never half a file."""
    from ..core.tables import atomic_path

    with atomic_path(path) as tmp:
        figure.savefig(tmp, dpi=100, format="png")


def title(ax: Axes, text: str) -> None:
    """The axes' title at its top edge, placed rather than searched for (see the module's docstring)."""
    ax.set_title(text, y=1.0)


@dataclass(frozen=True)
class Cell:
    """One image of a contact sheet: its title above (a line or two), its caption below (the record, whole, so a
    curator can look it up), or ``note`` in place of an image that cannot be shown."""

    image: Image.Image | None
    title: str
    caption: str = ""
    note: str = ""


def sheet(cells: Sequence[Cell], path: Path, empty: str, columns: int = 4) -> None:
    """A contact sheet of ``cells``, ``columns`` a row (``empty`` said where there are none), composed with Pillow:
    a gallery of a few dozen images drawn by matplotlib takes a second of CPU (an axes, its texts and the layout
    per image); this, a few hundredths. PNG, fast compression, written atomically."""
    from ..core.tables import atomic_path

    width = TILE + 2 * PAD
    height = PAD + 2 * TITLE_LINE + TILE + 2 * CAPTION_LINE + PAD
    shown = list(cells) or [Cell(None, "", note=empty)]
    rows = -(-len(shown) // columns)
    canvas = Image.new("RGB", (width * min(columns, len(shown)), height * rows), "white")
    draw = ImageDraw.Draw(canvas)
    for n, cell in enumerate(shown):
        x, y = (n % columns) * width + PAD, (n // columns) * height + PAD
        _lines(draw, (x, y), cell.title, _font(13), TITLE_LINE)
        top = y + 2 * TITLE_LINE
        if cell.image is not None:
            tile = ImageOps.contain(cell.image.convert("RGB"), (TILE, TILE), Image.Resampling.BICUBIC)
            canvas.paste(tile, (x + (TILE - tile.width) // 2, top + (TILE - tile.height) // 2))
        else:
            draw.text((x + TILE // 2, top + TILE // 2), cell.note, fill="black", font=_font(13), anchor="mm")
        _lines(draw, (x, top + TILE + 2), cell.caption, _font(11), CAPTION_LINE)
    with atomic_path(path) as tmp:
        canvas.save(tmp, "PNG", compress_level=1)


TILE, PAD, TITLE_LINE, CAPTION_LINE = 256, 12, 17, 14


def _lines(draw: ImageDraw.ImageDraw, at: tuple[int, int], text: str, font: Any, step: int) -> None:
    """Up to two lines of ``text`` from ``at``, each cut in the middle until it fits the tile's width."""
    for k, line in enumerate(text.splitlines()[:2]):
        limit = len(line)
        while limit > 8 and draw.textlength(_shortened(line, limit), font=font) > TILE:
            limit -= 2
        draw.text((at[0], at[1] + k * step), _shortened(line, limit), fill="black", font=font)


def _shortened(text: str, limit: int) -> str:
    """``text`` in at most ``limit`` characters, cut in the middle (a record ID keeps its dataset and its end)."""
    if len(text) <= limit:
        return text
    head = (limit - 1) // 2
    return text[:head] + "…" + text[len(text) - (limit - 1 - head) :]


@functools.cache
def _font(size: int) -> Any:
    try:
        return ImageFont.load_default(size=size)
    except (TypeError, OSError):  # Pillow without FreeType: the small bitmap font
        return ImageFont.load_default()
