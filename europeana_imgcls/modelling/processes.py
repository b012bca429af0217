"""This process's place: alone, a shard, or a rank under torchrun; and the cores it is given. Torch-free: a process
that labels with an exported model (runtime onnx or openvino) never imports torch, whose import is over a second of
its start; only torchrun's ranks, which talk through ``torch.distributed``, load it (``runtime.distributed``
starts their process group).
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Dist:
    """This process's place under torchrun (world of one otherwise)."""

    rank: int = 0
    world: int = 1

    @property
    def main(self) -> bool:
        return self.rank == 0

    @property
    def active(self) -> bool:
        return self.world > 1

    def barrier(self) -> None:
        """Wait for every rank (nothing to wait for outside torchrun)."""
        if self.active:
            import torch.distributed as dist  # a rank's process group: torch is loaded already

            dist.barrier()

    def gather(self, value: Any) -> list[Any]:
        """Every rank's ``value``, in rank order (``[value]`` outside torchrun)."""
        if not self.active:
            return [value]
        import torch.distributed as dist

        box: list[Any] = [None] * self.world
        dist.all_gather_object(box, value)
        return box


def main_process() -> bool:
    """Whether this process speaks and writes for all: rank 0 under torchrun, and any process outside it."""
    return int(os.environ.get("RANK", "0")) == 0


def under_torchrun() -> bool:
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def cores() -> int:
    """The cores this process is given, as its threads should number: torch's count where torch is loaded
    already (it follows ``torch.set_num_threads``), else ``OMP_NUM_THREADS``, else the CPUs this process may run
    on (``taskset``, a container's share)."""
    torch = sys.modules.get("torch")  # None where it cannot be imported
    if torch is not None:
        return int(torch.get_num_threads())
    said = os.environ.get("OMP_NUM_THREADS", "")
    if said.isdigit() and int(said) > 0:
        return int(said)
    affinity = getattr(os, "sched_getaffinity", None)
    return len(affinity(0)) if affinity else os.cpu_count() or 1
