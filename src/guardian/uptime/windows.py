"""The last day of 5-minute uptime buckets per target, held in memory as dense arrays.

When the 24 h window or the history bar moves on (every 5 minutes), their new figures
follow from the buckets already read: the window drops the bucket(s) that left, the bar
regroups the same buckets. Holding them as three ``array('q')`` per target (ok, total,
restarts; index = buckets since ``floor``) keeps 1000 targets at ~7 MB and lets the
window sums and bar slots be computed by C loops (``sum``, ``accumulate``, slicing), so
a move holds the GIL for milliseconds instead of converting ~300 k rows from SQLite.

A :class:`FineTail` is exact only while every batch written to the ``uptime`` table is
folded in with :meth:`FineTail.add` (``guardian.uptime.store`` does that under its agg lock).
"""

from __future__ import annotations

from array import array
from collections.abc import Iterable
from itertools import accumulate
from operator import sub
from typing import Any

Columns = tuple["array[int]", "array[int]", "array[int]"]  # ok, total, restarts


def _zeros(n: int) -> array[int]:
    return array("q", bytes(8 * n))


def _ints(csv: str | int | None) -> array[int]:
    if csv is None:
        return _zeros(0)
    return array("q", map(int, str(csv).split(",")))


class FineTail:
    """Counts per target of every bucket from ``floor`` on (future buckets included,
    as a ``bucket >= start`` query would count them), up to ``cap`` buckets ahead."""

    __slots__ = ("cap", "floor", "step", "targets")

    def __init__(self, floor: int, step: int, cap: int) -> None:
        self.floor = floor
        self.step = step
        self.cap = cap
        self.targets: dict[str, Columns] = {}

    @classmethod
    def from_rows(cls, floor: int, step: int, cap: int, rows: Iterable[Any]) -> FineTail | None:
        """From ``(target, buckets, oks, totals, restarts)`` rows, each column a
        ``group_concat`` of one target's rows (in the same row order); None when a bucket
        lies beyond ``cap`` (a clock far ahead: not worth holding)."""
        tail = cls(floor, step, cap)
        for target, b, o, t, r in rows:
            idx = [(x - floor) // step for x in _ints(b)]
            if not idx:
                continue
            n = max(idx) + 1
            if n > cap:
                return None
            cols = _ints(o), _ints(t), _ints(r)
            if idx != list(range(n)):  # gaps or another order: place each one
                dense = _zeros(n), _zeros(n), _zeros(n)
                for j, i in enumerate(idx):
                    for d, c in zip(dense, cols, strict=True):
                        d[i] += c[j]
                cols = dense
            tail.targets[str(target)] = cols
        return tail

    def add(self, target: str, bucket: int, ok: int, total: int, restarts: int) -> bool:
        """Fold one written count in; False when the bucket is beyond ``cap`` (the
        tail can no longer be exact: drop it)."""
        if bucket < self.floor:
            return True
        i = (bucket - self.floor) // self.step
        if i >= self.cap:
            return False
        cols = self.targets.get(target)
        if cols is None:
            cols = self.targets[target] = (_zeros(i + 1), _zeros(i + 1), _zeros(i + 1))
        elif len(cols[0]) <= i:
            grow = i + 1 - len(cols[0])
            for c in cols:
                c.extend(_zeros(grow))
        cols[0][i] += ok
        cols[1][i] += total
        cols[2][i] += restarts
        return True

    def advance(self, floor: int) -> None:
        """Forget the buckets before ``floor`` (they left every window, or were pruned)."""
        k = (floor - self.floor) // self.step
        if k <= 0:
            return
        self.floor += k * self.step
        gone = []
        for target, cols in self.targets.items():
            for c in cols:
                del c[:k]
            if not any(cols[1]) and not any(cols[2]):  # no result, no restart left
                gone.append(target)
        for target in gone:
            del self.targets[target]

    def sums(self, start: int, name: str) -> dict[str, dict[Any, list[int]]]:
        """Per target ``{name: [ok, total, restarts]}`` of the buckets from ``start`` on;
        targets without any there are left out (as a GROUP BY leaves them out)."""
        off = max(0, (start - self.floor) // self.step)
        out: dict[str, dict[Any, list[int]]] = {}
        for target, (o, t, r) in self.targets.items():
            c = [sum(o[off:]), sum(t[off:]), sum(r[off:])]
            if c[1] or c[2] or c[0]:
                out[target] = {name: c}
        return out

    def slots(self, first: int, width: int, count: int) -> dict[str, dict[Any, list[int]]]:
        """Per target ``{0: oks, 1: totals, 2: restarts}``, each a list of ``count``
        slots of ``width`` seconds from ``first``; targets without any counts there
        are left out."""
        m = width // self.step
        off = (first - self.floor) // self.step
        n = m * count
        out: dict[str, dict[Any, list[int]]] = {}
        for target, columns in self.targets.items():
            per_col: list[list[int]] = []
            for c in columns:
                seg = c[off : off + n]
                if len(seg) < n:
                    seg.extend(_zeros(n - len(seg)))
                if m == 1:
                    per_col.append(seg.tolist())
                else:
                    p = list(accumulate(seg, initial=0))
                    per_col.append(list(map(sub, p[m::m], p[0:n:m])))
            o, t, r = per_col
            if any(t) or any(r) or any(o):
                out[target] = {0: o, 1: t, 2: r}
        return out
