"""How much of the training loop is spent waiting for the DataLoader: shown, logged, and warned about.

A GPU step of 0.1 s needs a batch every 0.1 s; when the workers cannot augment that fast, the loop blocks in
``next(loader)`` and the accelerator idles. :class:`DataWaitMeter` times that block against the time the loop
holds each batch (forward, backward, optimizer step, logging), per logging window.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Iterator
from typing import TypeVar

Batch = TypeVar("Batch")

# Above this share of a logging window spent waiting for data, the run warns (once) that the loader is too slow.
STARVED_FRACTION = 0.2


class DataWaitMeter:
    """Seconds blocked fetching batches vs seconds spent on them, since the last :meth:`window_fraction`.

    The run's first batch is not counted: it includes starting the workers, which a steady-state figure should not.
    """

    def __init__(self) -> None:
        self.waited = 0.0
        self.busy = 0.0
        self.started = False

    def batches(self, loader: Iterable[Batch]) -> Iterator[Batch]:
        """The batches of ``loader``, timing each fetch (``iter`` included: it restarts the workers' queue)."""
        fetch_started = time.perf_counter()
        iterator = iter(loader)
        while True:
            try:
                batch = next(iterator)
            except StopIteration:
                return
            received = time.perf_counter()
            if self.started:
                self.waited += received - fetch_started
            self.started = True
            yield batch
            fetch_started = time.perf_counter()
            self.busy += fetch_started - received

    def window_fraction(self) -> float:
        """Share of the time since the previous call spent waiting for data, in [0, 1]; starts a new window."""
        total = self.waited + self.busy
        fraction = self.waited / total if total > 0 else 0.0
        self.waited, self.busy = 0.0, 0.0
        return fraction


def starvation_advice(fraction: float, step: int, num_workers: int, num_cpus: int) -> str:
    """The warning for the logging window ending at ``step``, in which training waited for data ``fraction``."""
    return (
        f"Training waited for data {fraction:.0%} of the time in the logging window ending at step {step}: the "
        f"DataLoader cannot keep up with the model. Raise --dataloader_num_workers (now {num_workers}; this "
        f"machine has {num_cpus} CPU cores for all processes' workers), or make the images cheaper to decode "
        "(smaller files, stored near the training resolution)."
    )
