"""Pure window derivation: the figures a status page shows, from counts already in memory.

Nothing here reads or writes a file. The store (:mod:`guardian.uptime.store`) runs the
queries and keeps these current; this module says what a window, a bar slot and a cached
figure are, and how a moved window follows from what is held:

* :class:`Counts`, :class:`Bar`, :class:`BarArrays`: the shapes readers get.
* :class:`Agg` / :class:`BarAgg`: counts per target and slot (a window's name, a bar's
  index) that written batches are folded into, so a poll costs no query.
* :class:`FineTail`: the last day of 5-minute buckets per target as dense arrays. When the
  24 h window or the history bar moves on (every 5 minutes), their new figures follow from
  the buckets already read: the window drops the bucket(s) that left, the bar regroups the
  same buckets. Holding them as three ``array('q')`` per target (ok, total, restarts;
  index = buckets since ``floor``) keeps 1000 targets at ~7 MB and lets the window sums and
  bar slots be computed by C loops (``sum``, ``accumulate``, slicing), so a move holds the
  GIL for milliseconds instead of converting ~300 k rows from SQLite.

A :class:`FineTail` is exact only while every batch written to the ``uptime`` table is
folded in with :meth:`FineTail.add` (``guardian.uptime.store`` does that under its agg lock).
"""

from __future__ import annotations

from array import array
from collections.abc import Callable, Hashable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from itertools import accumulate
from operator import sub
from typing import Any, Protocol, TypeVar

HOUR = 3600
WINDOWS: dict[str, timedelta] = {
    "24h": timedelta(hours=24),
    "7d": timedelta(days=7),
    "30d": timedelta(days=30),
}
FINE_WINDOWS = ("24h",)  # from 5-minute buckets; the others from hourly totals
FINE_SPAN = int(WINDOWS["24h"].total_seconds())

@dataclass(frozen=True, slots=True)
class Counts:
    ok: int = 0
    total: int = 0
    restarts: int = 0

    @property
    def percent(self) -> float | None:
        """Uptime in percent, None without any counted result."""
        return round(100.0 * self.ok / self.total, 3) if self.total else None

    def __add__(self, other: Counts) -> Counts:
        return Counts(self.ok + other.ok, self.total + other.total, self.restarts + other.restarts)


@dataclass(frozen=True, slots=True)
class Bar:
    """One slot of the history bar: its start and the counts inside it."""

    start: datetime
    seconds: int
    counts: Counts


def epoch(t: datetime) -> float:
    if t.tzinfo is None:
        t = t.replace(tzinfo=UTC)
    return t.timestamp()

@dataclass(frozen=True, slots=True)
class BarArrays:
    """History bars of every target: slot i starts at ``start + i * seconds``."""

    start: datetime
    seconds: int
    targets: dict[str, tuple[list[int], list[int], list[int]]]  # ok, total, restarts

    def bars(self, slots: int) -> dict[str, list[Bar]]:
        """The same as one :class:`Bar` per slot (``slots`` of them), oldest first."""
        starts = [self.start + timedelta(seconds=self.seconds * i) for i in range(slots)]
        return {
            target: [Bar(starts[i], self.seconds, Counts(ok[i], total[i], restarts[i]))
                     for i in range(slots)]
            for target, (ok, total, restarts) in self.targets.items()
        }



class Stale(Exception):
    """What a window was to be derived from went meanwhile: read it in full instead."""


class Foldable(Protocol):
    def add(self, target: str, bucket: int, ok: int, total: int, restarts: int) -> object: ...


F = TypeVar("F", bound=Foldable)


def kind_of(key: tuple[Any, ...]) -> tuple[Any, ...]:
    """Keys of one kind move on together (bars of one shape, one set of windows)."""
    return (key[0], *key[2:]) if key[0] == "bars" else (key[0], len(key))


def low_of(key: tuple[Any, ...]) -> int:
    """The first bucket (or hour) a cached key's figures read."""
    return int(key[1]) if key[0] == "bars" else min(int(s) for s in key[1:])


def tail_of(floor: int, step: int, rows: list[Any]) -> FineTail:
    """The tail of ``rows`` (see :meth:`FineTail.from_rows`); Stale for a clock far ahead."""
    tail = FineTail.from_rows(floor, step, 2 * FINE_SPAN // step, rows)
    if tail is None:
        raise Stale
    return tail


def placer(names: list[str], starts: dict[str, int], *, hourly: bool,
           ) -> Callable[[int], list[Hashable]]:
    """Which of the windows ``names`` (starting at ``starts``) a bucket counts in."""
    def place(bucket: int) -> list[Hashable]:
        at = bucket - bucket % HOUR if hourly else bucket
        return [n for n in names if at >= starts[n]]
    return place


def window_starts(now: datetime, bucket_seconds: int) -> dict[str, int]:
    """Each of :data:`WINDOWS`' first bucket (5-minute) or hour (hourly totals) at ``now``."""
    out: dict[str, int] = {}
    for name, span in WINDOWS.items():
        e = int(epoch(now - span))
        out[name] = e - e % (bucket_seconds if name in FINE_WINDOWS else HOUR)
    return out


def previous_key(
    cached: Iterable[tuple[Any, ...]], key: tuple[Any, ...], names: list[str],
    starts: dict[str, int],
) -> tuple[Any, ...] | None:
    """The latest of the ``cached`` keys of the same windows that ``key`` can be derived
    from: each window moved on by less than its span."""
    best: tuple[Any, ...] | None = None
    for k in cached:
        if k[0] != key[0] or len(k) != len(key):
            continue
        old = dict(zip(names, k[1:], strict=True))
        if all(0 <= starts[n] - old[n] < WINDOWS[n].total_seconds() for n in names) and (
                best is None or k[1:] > best[1:]):
            best = k
    return best


class Agg:
    """Counts per target and slot (a window's name, a bar's index) from the tables."""

    __slots__ = ("place", "sums")

    def __init__(self, place: Callable[[int], list[Hashable]]) -> None:
        self.place = place
        self.sums: dict[str, dict[Hashable, list[int]]] = {}

    def add_slot(self, target: str, slot: Hashable, ok: int, total: int, restarts: int) -> None:
        self.put(self.sums, target, slot, ok, total, restarts)

    def put(
        self, sums: dict[str, dict[Hashable, list[int]]], target: str, slot: Hashable,
        ok: int, total: int, restarts: int,
    ) -> None:
        """Add counts to ``slot`` of ``target`` in ``sums`` (these or a copy of them)."""
        per = sums.get(target)
        if per is None:
            per = sums[target] = {}
        c = per.get(slot)
        if c is None:
            per[slot] = [ok, total, restarts]
        else:
            c[0] += ok
            c[1] += total
            c[2] += restarts

    def add(self, target: str, bucket: int, ok: int, total: int, restarts: int) -> None:
        for slot in self.place(bucket):
            self.add_slot(target, slot, ok, total, restarts)


class BarAgg(Agg):
    """Bar slots as three lists per target, ``{0: ok, 1: total, 2: restarts}``: a copy
    of them (each request) or a move (every 5 minutes) is three list copies per target,
    not a list per slot, and is sent as it is."""

    __slots__ = ("count",)

    def __init__(self, place: Callable[[int], list[Hashable]], count: int) -> None:
        super().__init__(place)
        self.count = count

    def put(
        self, sums: dict[str, dict[Hashable, list[int]]], target: str, slot: Hashable,
        ok: int, total: int, restarts: int,
    ) -> None:
        per = sums.get(target)
        if per is None:
            n = self.count
            per = sums[target] = {0: [0] * n, 1: [0] * n, 2: [0] * n}
        i = int(slot)  # type: ignore[call-overload]
        per[0][i] += ok
        per[1][i] += total
        per[2][i] += restarts


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
