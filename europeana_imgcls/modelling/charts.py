"""What the line charts eic draws share (a split's curves, the reliability diagram): matplotlib's object API (no
pyplot, no global backend switch, nothing left open) and a layout that is set, not measured.

Each tiny training draws several of them, and the costs that are not drawing are most of a chart's: ``tight_layout``
measures every tick label's text box to place the axes (a third of a chart's time), and an axes' title left where
matplotlib chooses makes it measure the axes' decorations again at every draw to keep clear of any tick labels above
it. These charts put no tick labels above their axes, so a title at the axes' top is where matplotlib would have put
it, and their labels are short, so fixed margins fit them.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

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


def title(ax: Axes, text: str) -> None:
    """The axes' title at its top edge, placed rather than searched for (see the module's docstring)."""
    ax.set_title(text, y=1.0)
