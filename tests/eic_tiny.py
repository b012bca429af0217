"""``python -m tests.eic_tiny ARGS``: the eic command with the tests' tiny net registered, for tests that run eic
in other processes (torchrun, kill and resume) on a run of the tiny net.

With ``EIC_TINY_GATE=PATH`` the tiny net, once it has labelled one batch, creates PATH and then waits forever
before its next batch: a test can kill such a run knowing that it has journaled work and has work left, however
fast or slow the machine."""

import os
import time
from pathlib import Path

from europeana_imgcls.cli.app import main

from .tiny import TinyNet  # registers "tiny"


def _gate(path: Path) -> None:
    forward = TinyNet.forward
    calls = 0

    def gated(self: TinyNet, x):  # noqa: ANN001, ANN202
        nonlocal calls
        if not self.training:
            calls += 1
            if calls > 1:
                path.touch()  # the first batch is labelled and journaled
                while True:
                    time.sleep(1)  # until killed
        return forward(self, x)

    TinyNet.forward = gated  # type: ignore[method-assign]


if __name__ == "__main__":
    if os.environ.get("EIC_TINY_GATE"):
        _gate(Path(os.environ["EIC_TINY_GATE"]))
    main()
