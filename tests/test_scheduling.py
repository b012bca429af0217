"""tests/scheduling.py: the full suite's waiting tests on a worker of their own, driven as xdist drives a scheduler
(three workers that collected the same tests, each finishing what it was sent), without starting any."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("xdist")

from .conftest import WAITING_FILE  # noqa: E402
from .scheduling import WaitingApart  # noqa: E402

TESTS = [f"tests/test_x.py::test_{n}" for n in range(40)]
WAITS = {TESTS[1], TESTS[2], TESTS[30]}


class _Config:
    def __init__(self, workers: int, waiting: Path) -> None:
        self.workers = workers
        self.stash = pytest.Stash()
        self.stash[WAITING_FILE] = waiting

    def getvalue(self, name: str) -> Any:
        return {"tx": [f"{self.workers}*popen"], "dist": "load"}[name]

    def getoption(self, name: str) -> Any:
        return {"maxschedchunk": 2}[name]


class _Gateway:
    def __init__(self, name: str) -> None:
        self.id = name


class _Worker:
    """What the scheduler sees of a worker: the tests it was sent (with when, counted over every worker), and
    whether it was told to stop."""

    handed = 0

    def __init__(self, name: str) -> None:
        self.gateway = _Gateway(name)
        self.sent: list[tuple[int, int]] = []
        self.shutting_down = False

    def send_runtest_some(self, indices: list[int]) -> None:
        for index in indices:
            _Worker.handed += 1
            self.sent.append((_Worker.handed, index))

    def shutdown(self) -> None:
        self.shutting_down = True


def _run(workers: int, tmp_path: Path) -> tuple[dict[str, list[str]], list[str]]:
    """Every test handed out and finished, in turns: which tests each worker ran, and the order they were sent in."""
    listed = tmp_path / "waiting.txt"
    listed.write_text("".join(f"{name}\n" for name in WAITS))
    scheduler = WaitingApart(_Config(workers, listed))  # type: ignore[arg-type]
    nodes = [_Worker(f"gw{n}") for n in range(workers)]
    for node in nodes:
        scheduler.add_node(node)  # type: ignore[arg-type]
    for node in nodes:
        scheduler.add_node_collection(node, TESTS)  # type: ignore[arg-type]
    scheduler.schedule()
    ran: dict[str, list[str]] = {node.gateway.id: [] for node in nodes}
    while scheduler.has_pending:
        busy = [node for node in nodes if scheduler.node2pending[node]]  # type: ignore[index]
        assert busy, "tests are pending that no worker holds"
        for node in busy:
            index = scheduler.node2pending[node][0]  # type: ignore[index]
            ran[node.gateway.id].append(TESTS[index])
            scheduler.mark_test_complete(node, index)  # type: ignore[arg-type]
    assert sorted(name for names in ran.values() for name in names) == sorted(TESTS)  # each once
    assert all(node.shutting_down for node in nodes)
    sent = sorted((position, TESTS[i]) for node in nodes for position, i in node.sent)
    return ran, [name for _, name in sent]


def test_the_last_of_three_workers_runs_the_waiting_tests_alone_and_then_stops(tmp_path: Path) -> None:
    ran, _ = _run(3, tmp_path)
    assert set(ran["gw2"]) == WAITS
    assert not WAITS & {*ran["gw0"], *ran["gw1"]} and ran["gw0"] and ran["gw1"]


def test_two_workers_take_every_test_in_xdists_own_order(tmp_path: Path) -> None:
    ran, sent = _run(2, tmp_path)  # no worker to spare: the waiting ones are tests like the others
    assert ran["gw0"] and ran["gw1"]
    assert sent == TESTS  # in the collection's order (the longest first), not the waiting ones left to the end
