"""The full suite's hand-out under pytest-xdist: one worker of its own for the tests that mostly wait.

The suite is bound by the CPU, and a third worker on two cores costs ~15 s of CPU more than two (its start, and
three processes taking turns on two cores), while two leave a core idle whenever one waits: on a loopback
server's timeout, a rate limit, a process it started. So ``-n auto`` starts a worker per core and one more, the
last, which runs only the tests marked ``waits`` (~30 s of waiting for ~6 s of CPU) and then stops; the others run
the rest, on a core each. Should they run out first, they take what waiting tests are left. With fewer than three
workers, or no waiting test among those collected, the hand-out is xdist's ``load``, unchanged.

The workers collect the tests, this process does not: the first worker writes the ``waits`` tests' node IDs to a
file (named in the input every worker is given, ``conftest.WAITING``) before it hands its collection over, and
the scheduler reads it once every worker's collection is in."""

from __future__ import annotations

import itertools

import pytest
from xdist.remote import Producer
from xdist.scheduler import LoadScheduling
from xdist.workermanage import WorkerController

from .conftest import WAITING_FILE


class WaitingApart(LoadScheduling):
    """xdist's ``load`` hand-out, with the tests marked ``waits`` on the last of three or more workers alone."""

    def __init__(self, config: pytest.Config, log: Producer | None = None) -> None:
        super().__init__(config, log)
        self.waiting: set[int] = set()  # indices into the collection

    def schedule(self) -> None:
        if self.collection is None and self.collection_is_completed:
            path = self.config.stash.get(WAITING_FILE, None)
            names = set(path.read_text().splitlines()) if path is not None and path.is_file() else set()
            collection = next(iter(self.node2collection.values()))
            self.waiting = {i for i, name in enumerate(collection) if name in names}
        super().schedule()

    @property
    def _apart(self) -> bool:
        """Whether the waiting tests have a worker of their own: some were collected, and three workers or more."""
        return bool(self.waiting) and self.numnodes >= 3

    def _is_waiter(self, node: WorkerController) -> bool:
        return self._apart and node.gateway.id == f"gw{self.numnodes - 1}"

    def check_schedule(self, node: WorkerController, duration: float = 0) -> None:
        if self._is_waiter(node) and not self.waiting.intersection(self.pending) and not node.shutting_down:
            node.shutdown()  # none left for it: it ends what it holds and stops, leaving the cores to the others
            return
        super().check_schedule(node, duration)

    def _send_tests(self, node: WorkerController, num: int) -> None:
        if not self._apart:  # no worker to spare for them: xdist's own order
            return super()._send_tests(node, num)
        waiter = self._is_waiter(node)
        chosen = list(itertools.islice((i for i in self.pending if (i in self.waiting) == waiter), num))
        if not chosen and not waiter:  # only waiting tests are left: any worker may run them
            chosen = self.pending[:num]
        if chosen:
            taken = set(chosen)
            self.pending[:] = [i for i in self.pending if i not in taken]
            self.node2pending[node].extend(chosen)
            node.send_runtest_some(chosen)
