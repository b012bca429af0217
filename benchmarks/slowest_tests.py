"""The slowest tests: runs a lane of the test suite and prints where its time goes, per test and per file, with
the lane's wall time and test count, and the tests over a threshold that the fast lane still runs.

    python benchmarks/slowest_tests.py                  # the fast lane: pytest -n auto -m "not slow"
    python benchmarks/slowest_tests.py --full           # the full suite: pytest -n auto (what CI runs)
    python benchmarks/slowest_tests.py --top 40 --threshold 0.5 -- tests/outputs   # more rows; pytest's arguments
    python benchmarks/slowest_tests.py --from-output log.txt   # a saved `pytest --durations=0` output instead
    python benchmarks/slowest_tests.py --save before.json      # keep this run's numbers ...
    python benchmarks/slowest_tests.py --compare before.json   # ... and show what changed since: the new tests
                                                               #     and those whose CPU grew, the costliest first

A test's seconds are its setup, call and teardown together, as each worker measured them: a session fixture's
build counts in the setup of the first test that asks for it on each worker. Under `-n auto` the workers share
the cores, so the sum of the tests' seconds exceeds the wall time and grows with the machine's load: compare
runs on a quiet machine (the load average is printed). The goal (issue 32): the fast lane under 30 s and the
full suite under 120 s on a 2-core machine, no test over the threshold left in the fast lane without a reason.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
REPORT = "EIC_SLOWEST_TESTS_JSON"  # where this file, loaded into pytest as a plugin, writes what it saw
DURATION_LINE = re.compile(r"^\s*(?P<seconds>\d+\.\d+)s (?P<phase>setup|call|teardown)\s+(?P<test>\S.*?)\s*$")
SUMMARY_LINE = re.compile(r"^=*\s*(?P<counts>\d+ (?:passed|failed|errors?|skipped)\b.*?) in (?P<seconds>[\d.]+)s")


# ---------------------------------------------------------------------------------------------
# The plugin half: loaded into the pytest this script starts (`-p slowest_tests`), in its controller.


class _Recorder:
    """Every test report's phase, seconds, outcome and whether the test is marked slow; xdist hands its workers'
    reports to the controller, which writes them out once at the end."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.reports: list[dict[str, object]] = []

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        self.reports.append(
            {
                "test": report.nodeid,
                "phase": report.when,
                "seconds": report.duration,
                "outcome": report.outcome,
                "slow": "slow" in report.keywords,
                "waits": "waits" in report.keywords,
                "cpu": dict(report.user_properties).get(f"cpu_{report.when}", 0.0),
                "worker": getattr(getattr(getattr(report, "node", None), "gateway", None), "id", ""),
            }
        )

    def pytest_sessionfinish(self) -> None:
        Path(self.path).write_text(json.dumps(self.reports))


class _CpuClock:
    """Each phase's CPU seconds, where the test runs: its process's, and those of the processes it started and
    waited for. Unlike its wall time, what another job's load cannot inflate."""

    def _timed(self, item: pytest.Item, phase: str) -> Iterator[None]:
        started = _process_cpu()
        yield
        item.user_properties.append((f"cpu_{phase}", _process_cpu() - started))

    @pytest.hookimpl(hookwrapper=True)
    def pytest_runtest_setup(self, item: pytest.Item) -> Iterator[None]:
        yield from self._timed(item, "setup")

    @pytest.hookimpl(hookwrapper=True)
    def pytest_runtest_call(self, item: pytest.Item) -> Iterator[None]:
        yield from self._timed(item, "call")

    @pytest.hookimpl(hookwrapper=True)
    def pytest_runtest_teardown(self, item: pytest.Item) -> Iterator[None]:
        yield from self._timed(item, "teardown")


def _process_cpu() -> float:
    import resource

    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def pytest_configure(config: pytest.Config) -> None:
    if not os.environ.get(REPORT):
        return
    config.pluginmanager.register(_CpuClock(), "slowest-tests-cpu-clock")
    if not hasattr(config, "workerinput"):
        config.pluginmanager.register(_Recorder(os.environ[REPORT]), "slowest-tests-recorder")


# ---------------------------------------------------------------------------------------------
# The script half.


@dataclass
class Test:
    seconds: dict[str, float] = field(default_factory=dict)  # phase -> seconds
    cpu: float | None = None  # CPU seconds of its three phases (None: not known, as in a saved output)
    outcome: str = "passed"
    slow: bool | None = None  # None: not known (a saved output does not say)
    waits: bool = False  # marked waits: the full suite runs it on a worker of its own (tests/scheduling.py)
    worker: str = ""  # the xdist worker that ran it ("gw0"; "" without xdist, or not known)

    @property
    def total(self) -> float:
        return sum(self.seconds.values())


@dataclass
class Lane:
    name: str
    tests: dict[str, Test]
    wall: float | None  # seconds, as this script measured the pytest process (None for a saved output)
    pytest_says: str  # pytest's summary line: the counts and its own seconds
    load_before: str = ""  # the load average as the lane started: another job's load inflates every number
    cpu: float | None = None  # CPU seconds (user + system) of pytest and every process it started


def run_lane(full: bool, pytest_args: list[str]) -> Lane:
    lane = ["-n", "auto"] + ([] if full else ["-m", "not slow"])
    with tempfile.TemporaryDirectory(prefix="eic-slowest-") as work:
        report = Path(work) / "reports.json"
        env = {**os.environ, REPORT: str(report)}
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(Path(__file__).parent), env.get("PYTHONPATH")]))
        command = [sys.executable, "-m", "pytest", *lane, "-p", Path(__file__).stem, "-q"]
        load = _load()
        started, used = time.perf_counter(), _children_cpu()
        done = subprocess.run([*command, *pytest_args], cwd=ROOT, env=env, capture_output=True, text=True)
        wall, cpu = time.perf_counter() - started, _children_cpu() - used
        if not report.exists():
            sys.exit(f"pytest ended ({done.returncode}) without a report:\n{done.stdout[-3000:]}{done.stderr[-3000:]}")
        tests: dict[str, Test] = defaultdict(Test)
        for entry in json.loads(report.read_text()):
            test = tests[entry["test"]]
            test.seconds[entry["phase"]] = entry["seconds"]
            test.cpu = (test.cpu or 0.0) + entry["cpu"]
            test.slow = entry["slow"]
            test.waits = entry.get("waits", False)
            test.worker = entry.get("worker", "")
            if entry["outcome"] != "passed":
                test.outcome = entry["outcome"]
    summary = [line for line in done.stdout.splitlines() if SUMMARY_LINE.search(line)]
    name = "full suite: pytest -n auto" if full else 'fast lane: pytest -n auto -m "not slow"'
    title = name + (" " + " ".join(pytest_args) if pytest_args else "")
    return Lane(title, dict(tests), wall, _said(summary), load, cpu)


def read_output(path: Path) -> Lane:
    """A saved `pytest --durations=0` output: the durations table and the summary line (markers not known)."""
    tests: dict[str, Test] = defaultdict(Test)
    summary: list[str] = []
    for line in path.read_text().splitlines():
        if match := DURATION_LINE.match(line):
            test = tests[match["test"]]
            test.seconds[match["phase"]] = float(match["seconds"])
            test.slow = None
        elif SUMMARY_LINE.search(line):
            summary.append(line)
    return Lane(f"saved output {path}", dict(tests), None, _said(summary))


def _said(summary: list[str]) -> str:
    match = SUMMARY_LINE.search(summary[-1]) if summary else None
    return f"{match['counts']} in {float(match['seconds']):.1f} s" if match else "(no summary line)"


def per_file(tests: dict[str, Test]) -> list[tuple[str, float, float, int]]:
    """Per file: the wall seconds and CPU seconds of its tests, and how many, the slowest first."""
    files: dict[str, list[Test]] = defaultdict(list)
    for name, test in tests.items():
        files[name.split("::")[0]].append(test)
    rows = [(f, sum(t.total for t in ts), sum(t.cpu or 0.0 for t in ts), len(ts)) for f, ts in files.items()]
    return sorted(rows, key=lambda row: -row[1])


def report(lane: Lane, top: int, threshold: float) -> None:
    tests = lane.tests
    total = sum(t.total for t in tests.values())
    over = {n: t for n, t in tests.items() if t.total >= threshold}
    print(lane.name)
    wall = f"{lane.wall:.1f} s wall" if lane.wall is not None else "wall not measured"
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    machine = f"; {cores} cores, load average {lane.load_before} before, {_load()} after" if lane.load_before else ""
    print(f"{wall}; pytest: {lane.pytest_says}; {len(tests)} tests timed{machine}")
    if lane.cpu is not None and cores:
        # What other jobs' load cannot inflate: the lane's own CPU time, and the wall time it needs at least.
        in_tests = sum(t.cpu or 0.0 for t in tests.values())
        print(
            f"CPU time {lane.cpu:.1f} s (pytest and every process it started; {in_tests:.1f} s of it in the tests, "
            f"the rest starting the workers): {lane.cpu / cores:.1f} s on {cores} free cores"
        )
    print(
        f"the tests' wall seconds together: {total:.1f} s; {len(over)} tests of {threshold:g} s or more take "
        f"{sum(t.total for t in over.values()):.1f} s of them"
    )
    _per_worker(tests)
    print()
    _tests_table(sorted(tests.items(), key=lambda item: -item[1].total)[:top])
    print()
    print(f"{'file':<60} {'s':>7} {'CPU s':>7} {'tests':>6} {'share':>6}")
    for path, seconds, cpu, count in per_file(tests)[:top]:
        print(f"{_cut(path, 60):<60} {seconds:>7.1f} {cpu:>7.1f} {count:>6} {seconds / max(total, 1e-9):>6.0%}")
    print()
    for name, test in tests.items():
        if test.outcome not in ("passed", "skipped"):
            print(f"{test.outcome}: {name}")
    if tests and all(t.slow is None for t in tests.values()):
        print("(a saved output does not say which tests are marked slow)")
        return
    fast = [(n, t) for n, t in tests.items() if t.total >= threshold and t.slow is False]
    print(f"{len(fast)} tests of {threshold:g} s or more are not marked slow (the fast lane runs them):")
    for name, test in sorted(fast, key=lambda item: -item[1].total):
        print(f"  {test.total:>6.2f}  {name}")


def _per_worker(tests: dict[str, Test]) -> None:
    """Each xdist worker's tests: the run lasts as long as the busiest one's (its start aside), and the tests' wall
    seconds over the workers is what it would last were they shared out evenly; a worker that ran only tests
    marked ``waits`` is the full suite's worker for them (tests/scheduling.py), left out of the even share."""
    workers: dict[str, list[Test]] = defaultdict(list)
    for test in tests.values():
        if test.worker:
            workers[test.worker].append(test)
    if not workers:
        return
    waiting = {name for name, ts in workers.items() if all(t.waits for t in ts)}
    shares = ", ".join(
        f"{name} {sum(t.total for t in ts):.1f} s ({len(ts)} tests, {sum(t.slow is True for t in ts)} slow"
        + (", all of them waiting)" if name in waiting else ")")
        for name, ts in sorted(workers.items())
    )
    rest = [t for name, ts in workers.items() if name not in waiting for t in ts]
    even = sum(t.total for t in rest) / max(len(workers) - len(waiting), 1)
    whose = "the others' tests " if waiting else ""
    print(f"per worker: {shares}; {whose}shared out evenly {even:.1f} s each")


def save(lane: Lane, path: Path) -> None:
    """The lane's tests (seconds per phase, CPU seconds, outcome, mark) as JSON, for a later ``--compare``."""
    path.write_text(json.dumps({name: asdict(test) for name, test in lane.tests.items()}, indent=1))


def compare(lane: Lane, path: Path, top: int) -> None:
    """What this lane spends that the saved one did not: its new tests, and the tests whose CPU grew, by CPU."""
    before = {name: Test(**fields) for name, fields in json.loads(path.read_text()).items()}
    new = {n: t for n, t in lane.tests.items() if n not in before}
    gone = [n for n in before if n not in lane.tests]

    def cpu(test: Test) -> float:
        return test.cpu if test.cpu is not None else test.total  # a saved output knows only wall seconds

    print(f"since {path}: {len(new)} new tests, {len(gone)} gone; CPU of the lane's tests", end=" ")
    print(f"{sum(cpu(t) for t in before.values()):.1f} s -> {sum(cpu(t) for t in lane.tests.values()):.1f} s")
    print(f"the new tests take {sum(cpu(t) for t in new.values()):.1f} s of CPU; the costliest:")
    for name, test in sorted(new.items(), key=lambda item: -cpu(item[1]))[:top]:
        print(f"  {cpu(test):>6.2f}  {name}")
    grown = [(cpu(t) - cpu(before[n]), n) for n, t in lane.tests.items() if n in before]
    print("grown the most (CPU s):")
    for delta, name in sorted(grown, reverse=True)[: min(top, 10)]:
        if delta > 0.05:
            print(f"  {delta:>+6.2f}  {name}")


def _tests_table(rows: list[tuple[str, Test]]) -> None:
    width = min(100, max((len(n) for n, _ in rows), default=10))
    print(f"{'test':<{width}} {'s':>6} {'setup':>6} {'call':>6} {'tear':>6} {'CPU s':>6}  slow")
    for name, test in rows:
        s = test.seconds
        cpu = f"{test.cpu:>6.2f}" if test.cpu is not None else f"{'?':>6}"
        marked = {True: "slow", False: "", None: "?"}[test.slow]
        print(
            f"{_cut(name, width):<{width}} {test.total:>6.2f} {s.get('setup', 0):>6.2f} {s.get('call', 0):>6.2f} "
            f"{s.get('teardown', 0):>6.2f} {cpu}  {marked}"
        )


def _children_cpu() -> float:
    """CPU seconds of this process's finished children and theirs (the xdist workers, the eic they start)."""
    import resource

    used = resource.getrusage(resource.RUSAGE_CHILDREN)
    return used.ru_utime + used.ru_stime


def _load() -> str:
    return "/".join(f"{x:.1f}" for x in os.getloadavg())


def _cut(text: str, width: int) -> str:
    return text if len(text) <= width else "…" + text[-(width - 1) :]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--full", action="store_true", help="the full suite, not the fast lane")
    parser.add_argument("--top", type=int, default=25, help="rows per table")
    parser.add_argument("--threshold", type=float, default=1.0, help="seconds from which a test is listed as slow")
    parser.add_argument("--from-output", type=Path, help="read a saved `pytest --durations=0` output instead")
    parser.add_argument("--save", type=Path, help="write the tests' numbers to this JSON file")
    parser.add_argument("--compare", type=Path, help="a file --save wrote: show the new tests and what grew since")
    parser.add_argument("pytest_args", nargs="*", help="more arguments for pytest, after --")
    args = parser.parse_args()
    lane = read_output(args.from_output) if args.from_output else run_lane(args.full, args.pytest_args)
    report(lane, args.top, args.threshold)
    if args.save:
        save(lane, args.save)
    if args.compare:
        print()
        compare(lane, args.compare, args.top)


if __name__ == "__main__":
    main()
