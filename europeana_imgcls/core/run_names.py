"""The names a training run's folder is known by, spelt once. Here in core, torch-free, because
``core/recognise.py`` tells a run from other folders by them; ``modelling/run_folder.py`` builds every path of a
run from them, and no other module spells them.
"""

from __future__ import annotations

import re
from typing import Final

MODEL_FILE: Final = "model.pt"  # a split's model; a folder holding one itself is a split
SPLIT_PREFIX: Final = "split_"
SPLIT_GLOB: Final = f"{SPLIT_PREFIX}*"  # what a split's folder (or an export's file, with its suffix) looks like
SPLIT_NAME: Final = re.compile(rf"^{SPLIT_PREFIX}(\d+)$")


def split_name(index: int) -> str:
    """The name of split ``index`` (its folder in a run, its file in an export): the one place it is spelt."""
    return f"{SPLIT_PREFIX}{index}"


def split_index(name: str) -> int | None:
    """The index a split's name holds, or None for a name that is not a split's (``split_x``, ``model``)."""
    match = SPLIT_NAME.match(name)
    return int(match[1]) if match else None
