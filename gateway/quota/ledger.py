"""In-process counters behind the memory store: spend buckets, rolling slots, GCRA cells.

Nothing here awaits, so every method runs atomically on the event loop.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timezone

from .windows import Window, slot_count, slot_drop_time, slot_index, slot_seconds

CounterKey = tuple[str, str, str]  # scope key, window spec, bucket id


@dataclass(slots=True)
class Rolling:
    """Named counts in the live slots of one rolling window, with running totals.

    Rolling forward costs nothing until the oldest slot leaves the window, so reading a
    window is O(1) amortized: each slot is dropped once.
    """

    window_s: int
    slots: dict[int, dict[str, int]] = field(default_factory=dict)
    totals: dict[str, int] = field(default_factory=dict)
    slot_s: int = field(init=False)  # seconds per slot
    span: int = field(init=False)  # slots in the window
    oldest: int | None = field(init=False, default=None)  # the lowest slot index held

    def __post_init__(self) -> None:
        self.slot_s = slot_seconds(self.window_s)
        self.span = slot_count(self.window_s)

    def slot_of(self, now: float) -> int:
        return int(now // self.slot_s)  # = slot_index(now, window_s)

    def roll(self, now: float) -> None:
        cutoff = int(now // self.slot_s) - self.span
        if self.oldest is None or self.oldest > cutoff:
            return
        for index in [i for i in self.slots if i <= cutoff]:
            for name, value in self.slots.pop(index).items():
                self.totals[name] = self.totals.get(name, 0) - value
        self.oldest = min(self.slots, default=None)

    def is_live(self, index: int, now: float) -> bool:
        return index > int(now // self.slot_s) - self.span

    def add(self, index: int, name: str, amount: int) -> None:
        slot = self.slots.get(index)
        if slot is None:
            slot = self.slots[index] = {}
            if self.oldest is None or index < self.oldest:
                self.oldest = index
        slot[name] = slot.get(name, 0) + amount
        self.totals[name] = self.totals.get(name, 0) + amount

    def total(self, name: str) -> int:
        return self.totals.get(name, 0)

    def drop_time(self, name: str, now: float) -> float:
        """When the oldest live count of `name` leaves the window (one slot ahead if none)."""
        live = [i for i, slot in self.slots.items() if slot.get(name) and self.is_live(i, now)]
        if live:
            return slot_drop_time(min(live), self.window_s)
        return (slot_index(now, self.window_s) + 1) * float(slot_seconds(self.window_s))

    def clear(self) -> None:
        self.slots.clear()
        self.totals.clear()
        self.oldest = None


@dataclass(slots=True)
class SpendCounter:
    """Spent and reserved micro-dollars of one scope in one window bucket.

    `baseline` is shared spend learned from Redis while serving as the fail_open fallback;
    `spent` is what this process charged locally.
    """

    window: Window
    spent: int = 0
    reserved: int = 0
    baseline: int = 0
    rolling: Rolling | None = None

    def spent_total(self, now: float) -> int:
        if self.rolling is not None:
            self.rolling.roll(now)
            return self.baseline + self.rolling.total("spent")
        return self.baseline + self.spent

    def charge(self, amount: int, now: float) -> None:
        if self.rolling is not None:
            self.rolling.add(self.rolling.slot_of(now), "spent", amount)
        else:
            self.spent += amount

    def clear_spent(self) -> None:
        self.spent = 0
        self.baseline = 0
        if self.rolling is not None:
            self.rolling.clear()

    def resets_at(self, now: float) -> float:
        if self.rolling is not None:
            return self.rolling.drop_time("spent", now)
        return self.window.resets_at(now)


class Ledger:
    """All counters of one memory store."""

    def __init__(self) -> None:
        self.spend: dict[CounterKey, SpendCounter] = {}
        self.cells: dict[tuple[str, str], float] = {}  # (scope key, "rpm"|"tpm") -> GCRA TAT
        self.shares: dict[tuple[str, int], Rolling] = {}  # (scope key, window_s) -> counts by tier and "n"
        # The current calendar bucket per window kind: (starts at, ends at, bucket id), so the
        # id is not worked out from a datetime on every counter lookup.
        self._calendar: dict[str, tuple[float, float, str]] = {}

    def bucket(self, window: Window, now: float) -> str:
        """`window.bucket(now)`, remembered for the rest of the calendar bucket."""
        if window.kind == "rolling":
            return "r"
        span = self._calendar.get(window.kind)
        if span is not None and span[0] <= now < span[1]:
            return span[2]
        bucket = window.bucket(now)
        # Kept a millisecond clear of the bucket's edges, where datetime's rounding to whole
        # microseconds could put `now` in the neighbouring bucket.
        self._calendar[window.kind] = (window.starts_at(now) + 0.001, window.resets_at(now) - 0.001, bucket)
        return bucket

    def counter(self, scope_key: str, window: Window, now: float) -> tuple[CounterKey, SpendCounter]:
        key = (scope_key, window.spec, self.bucket(window, now))
        found = self.spend.get(key)
        if found is None:
            rolling = Rolling(window.seconds) if window.kind == "rolling" else None
            found = self.spend[key] = SpendCounter(window, rolling=rolling)
        return key, found

    def counter_by_key(self, key: CounterKey) -> SpendCounter:
        found = self.spend.get(key)
        if found is None:
            window = Window.parse(key[1])
            rolling = Rolling(window.seconds) if window.kind == "rolling" else None
            found = self.spend[key] = SpendCounter(window, rolling=rolling)
        return found

    def share_counts(self, scope_key: str, window_s: int, now: float) -> Rolling:
        counts = self.shares.get((scope_key, window_s))
        if counts is None:
            counts = self.shares[(scope_key, window_s)] = Rolling(window_s)
        counts.roll(now)
        return counts

    def prune(self, now: float) -> None:
        """Drop calendar buckets that ended more than a day ago and idle rolling windows."""
        horizon = now - 86400
        stale = [
            key
            for key, counter in self.spend.items()
            if counter.rolling is None
            and counter.reserved == 0
            and counter.window.resets_at(_bucket_start(key)) < horizon
        ]
        for key in stale:
            del self.spend[key]

    def reset_scope(self, scope_key: str) -> None:
        for key, counter in self.spend.items():
            if key[0] == scope_key:
                counter.clear_spent()
        for cell in [k for k in self.cells if k[0] == scope_key]:
            del self.cells[cell]
        for share in [k for k in self.shares if k[0] == scope_key]:
            del self.shares[share]


def _bucket_start(key: CounterKey) -> float:
    """A moment inside the bucket, recovered from its id (d<day> or m<month index>)."""
    bucket = key[2]
    if bucket.startswith("d"):
        return int(bucket[1:]) * 86400.0
    month_index = int(bucket[1:])
    return datetime(month_index // 12, month_index % 12 + 1, 1, tzinfo=timezone.utc).timestamp()
