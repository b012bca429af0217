"""The one progress bar of long stages (harvest, download, embedding, training, labelling): on stderr, off when quiet.

On a terminal it is rich's live bar. Anywhere else (a file, a pipe, a CI log) rich draws nothing until a bar stops,
and nothing at all for a transient bar, so an eleven-minute training logged nothing: there the bar writes a plain
line instead, at most every ``EVERY`` seconds as it moves, and one at its end (for a bar that stays, or one that has
written lines already). Each stage adds its own fields (a ``Rate``, a count of failures) as text columns between
the bar and the elapsed time; the plain line shows the same fields.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import timedelta
from types import TracebackType
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, Task, TaskID, TextColumn, TimeElapsedColumn

EVERY = 10.0  # seconds between two plain lines where there is no terminal
RATE = "{task.fields[rate]}"  # the field of a bar whose task carries a Rate as ``rate``
MIN_SECONDS, MIN_STEPS = 1.0, 5  # a rate is shown once measured over this long, or over this many steps

Clock = Callable[[], float]


class Rate:
    """Items per second since it was made, shown only once measured over enough work (``MIN_SECONDS``, or
    ``MIN_STEPS`` steps), else a dash: a clock started after an epoch's only batch showed 6,999,392 images/s,
    and a count read before its first batch was added showed 0.0 images/s. A bar's field renders it anew at
    each refresh (``RATE``), so the rate a waiting bar shows falls as the wait grows."""

    def __init__(self, unit: str = "images/s", clock: Clock = time.perf_counter) -> None:
        self.unit, self.clock = unit, clock
        self.started = clock()
        self.items: float = 0
        self.steps = 0

    def add(self, items: float) -> None:
        """A step of ``items`` more done."""
        self.items += items
        self.steps += 1

    def reached(self, items: float) -> None:
        """A step after which ``items`` are done in all (a count kept elsewhere, such as a report's)."""
        self.items = items
        self.steps += 1

    @property
    def per_second(self) -> float | None:
        """Items per second, or None until measured over enough work."""
        elapsed = self.clock() - self.started
        if elapsed <= 0 or (elapsed < MIN_SECONDS and self.steps < MIN_STEPS):
            return None
        return self.items / elapsed

    def __str__(self) -> str:
        value = self.per_second
        if value is None:
            return f"— {self.unit}"
        return f"{value:,.0f} {self.unit}" if value >= 100 else f"{value:.1f} {self.unit}"


class Bar(Progress):
    """rich's Progress, writing plain lines instead where its console is not an interactive terminal."""

    def __init__(self, *fields: str, console: Console, clock: Clock, quiet: bool, transient: bool) -> None:
        live = console.is_interactive or console.is_jupyter
        self.lines = not quiet and not live  # plain lines instead of the live display
        super().__init__(
            # markup=False: a description names data ("map [open]", a category of the user's vocabulary), which
            # rich would take for markup (the level vanishes; a "[/b]" ends the bar with a MarkupError)
            TextColumn("{task.description}", markup=False),
            BarColumn(),
            MofNCompleteColumn(),
            *(TextColumn(f, markup=False) for f in fields),
            TimeElapsedColumn(),
            console=console,
            get_time=clock,
            disable=quiet or self.lines,
            transient=transient,
        )
        self.fields, self.stays = fields, not transient
        self.began = clock()
        self.written: float | None = None  # when the last plain line was written
        self.shown: dict[TaskID, float] = {}  # how far each task was when its last line was written

    def update(self, task_id: TaskID, **changes: Any) -> None:
        super().update(task_id, **changes)
        self._moved(task_id)

    def advance(self, task_id: TaskID, advance: float = 1) -> None:
        super().advance(task_id, advance)
        self._moved(task_id)

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, traceback: TracebackType | None
    ) -> None:
        # The end's line; after an error the error's one line says enough.
        if self.lines and exc_type is None and (self.stays or self.written is not None):
            for task in self.tasks:
                if task.visible and self.shown.get(task.id) != task.completed:
                    self._write(task)
        super().__exit__(exc_type, exc, traceback)

    def _moved(self, task_id: TaskID) -> None:
        task = self._tasks.get(task_id)
        last = self.began if self.written is None else self.written
        if self.lines and task is not None and self.get_time() - last >= EVERY:
            self._write(task)

    def _write(self, task: Task) -> None:
        self.written, self.shown[task.id] = self.get_time(), task.completed
        self.console.out(plain_line(task, self.fields), highlight=False)


def plain_line(task: Task, fields: tuple[str, ...]) -> str:
    """What a bar shows of ``task``, in words: ``download 120/554  3.2 images/s  0 failed  0:00:37``."""
    done = _count(task.completed) + ("" if task.total is None else f"/{_count(task.total)}")
    elapsed = timedelta(seconds=int(task.elapsed or 0))
    return "  ".join([f"{task.description} {done}", *(f.format(task=task) for f in fields), str(elapsed)])


def _count(value: float) -> str:
    """1234567 as it is (not 1.23457e+06); a fraction to one place."""
    return str(int(value)) if value == int(value) else f"{value:.1f}"


def progress_bar(
    quiet: bool,
    *fields: str,
    transient: bool = False,
    console: Console | None = None,
    clock: Clock = time.monotonic,
) -> Bar:
    """A bar with the task's description, done/total, ``fields`` (format strings over ``task``) and the elapsed
    time, on stderr (``console``); ``transient``: it disappears from a terminal when it stops. ``clock`` (seconds)
    paces the plain lines and the elapsed time."""
    return Bar(*fields, console=console or Console(stderr=True), clock=clock, quiet=quiet, transient=transient)
