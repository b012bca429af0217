"""The one progress bar of long stages (download, harvest, training): on stderr, off when quiet.

Each stage adds its own fields (a rate, a count of failures) as text columns between the bar and the
elapsed time.
"""

from __future__ import annotations

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn


def progress_bar(quiet: bool, *fields: str, transient: bool = False) -> Progress:
    """A bar with the task's description, done/total, ``fields`` (rich format strings over ``task``) and
    the elapsed time. ``transient``: it disappears when it stops."""
    return Progress(
        # markup=False: a description names data ("map [open]", a category of the user's vocabulary), which rich
        # would take for markup (the level vanishes; a "[/b]" ends the bar with a MarkupError)
        TextColumn("{task.description}", markup=False),
        BarColumn(),
        MofNCompleteColumn(),
        *(TextColumn(f, markup=False) for f in fields),
        TimeElapsedColumn(),
        console=Console(stderr=True),
        disable=quiet,
        transient=transient,
    )
