"""One check's start lateness over its last runs, its p99 kept exact as samples arrive.

Why not sort on demand: ``/metrics`` reports every check's p99 over its last 1000 runs,
and sorting every window at every scrape costs time in proportion to the checks, on the
API thread, holding the GIL the checks need (bench/results/metrics.md has the figures).
Here a window also keeps its largest samples in a short sorted list (the p99 of 1000 runs
is the 11th largest), which a new run updates with one comparison almost always. Only
when a sample from that list leaves the window (about one run in 90) is the list rebuilt
from the window. Reading the p99 is then an index, whatever the number of checks.
"""

from __future__ import annotations

import bisect
import heapq
import math
from collections import deque
from collections.abc import Iterator
from typing import Final

QUANTILE: Final = 0.99
WINDOW: Final = 1000  # runs a check's lateness is summarised over


def nearest_rank(n: int, q: float = QUANTILE) -> int:
    """The 0-based index, in ascending order, of the nearest-rank ``q`` quantile of ``n``."""
    return min(n - 1, max(0, math.ceil(q * n) - 1))


class LatenessWindow:
    """The last ``size`` start latenesses (seconds) of one check, and their exact p99.

    Iterable, sized and indexable like the deque it wraps (oldest first), so readers that
    want the samples (benches, tests) still have them.
    """

    __slots__ = ("_full_at", "_keep", "_samples", "_top")

    def __init__(self, size: int = WINDOW) -> None:
        if size < 1:
            raise ValueError("a lateness window holds at least one sample")
        self._samples: deque[float] = deque(maxlen=size)
        # The largest samples, ascending: enough that the p99 of a full window is in it.
        self._keep = size - nearest_rank(size)
        self._full_at = -self._keep  # the p99's place in ``_top`` once the window is full
        self._top: list[float] = []

    def append(self, lateness: float) -> None:
        samples, top = self._samples, self._top
        if len(samples) == samples.maxlen:
            gone = samples[0]
            samples.append(lateness)
            if top and gone >= top[0]:  # it may have been one of the largest: rebuild
                self._top = sorted(heapq.nlargest(self._keep, samples))
                return
        else:
            samples.append(lateness)
        if len(top) < self._keep:
            bisect.insort(top, lateness)
        elif lateness > top[0]:
            bisect.insort(top, lateness)
            del top[0]

    def p99(self) -> float | None:
        """The nearest-rank 99th percentile of the window; None while it is empty."""
        n = len(self._samples)
        if n == self._samples.maxlen:  # the usual case: one index, no arithmetic
            return self._top[self._full_at]
        if n == 0:
            return None
        return self._top[nearest_rank(n) - n]  # from the top: -1 is the largest

    def clear(self) -> None:
        self._samples.clear()
        self._top.clear()

    def __len__(self) -> int:
        return len(self._samples)

    def __iter__(self) -> Iterator[float]:
        return iter(self._samples)

    def __getitem__(self, index: int) -> float:
        return self._samples[index]
