"""Window and rate-limit arithmetic, shared by the memory store and mirrored in lua/lib.lua.

Calendar windows (`day`, `month`) are UTC buckets: spend lands in the bucket the request
was admitted in, and the bucket resets at the next UTC midnight / first of the month.

Rolling windows (`rolling:N`) are kept as `ROLLING_SLOTS` slots of `slot_seconds(N)`
each. A charge lives from its slot until that slot leaves the window, so it counts for
between N and N + one slot seconds: rolling caps can only err on the side of spending
less, never more.

Rate limits use GCRA (the generic cell rate algorithm, a leaky bucket written as one
"theoretical arrival time" per limit): a limit of L per minute admits a burst of L from
rest and then one unit every 60/L seconds. Token limits charge the estimate at admission
and correct it by the actual tokens at settle.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import NamedTuple

RATE_PERIOD_S = 60.0
ROLLING_SLOTS = 60
_DAY = 86400
_EPSILON = 1e-9


@dataclass(frozen=True, slots=True)
class Window:
    kind: str  # "day" | "month" | "rolling"
    seconds: int = 0  # length of a rolling window

    def __post_init__(self) -> None:
        if self.kind in ("day", "month"):
            if self.seconds != 0:
                raise ValueError(f"window {self.kind!r} takes no seconds")
        elif self.kind == "rolling":
            if not isinstance(self.seconds, int) or self.seconds <= 0:
                raise ValueError("rolling window seconds must be a positive integer")
        else:
            raise ValueError(f"window must be 'day', 'month' or 'rolling:N', got {self.kind!r}")

    @classmethod
    def parse(cls, spec: str) -> Window:
        if spec in ("day", "month"):
            return cls(spec)
        kind, sep, seconds = spec.partition(":")
        if kind == "rolling" and sep and seconds.isdigit():
            return cls("rolling", int(seconds))
        raise ValueError(f"window must be 'day', 'month' or 'rolling:N' (N seconds), got {spec!r}")

    @property
    def spec(self) -> str:
        return f"rolling:{self.seconds}" if self.kind == "rolling" else self.kind

    def __str__(self) -> str:
        return self.spec

    def bucket(self, now: float) -> str:
        """The id of the counter bucket `now` falls in; rolling windows have a single bucket."""
        if self.kind == "day":
            return f"d{int(now // _DAY)}"
        if self.kind == "month":
            moment = datetime.fromtimestamp(now, timezone.utc)
            return f"m{moment.year * 12 + moment.month - 1}"
        return "r"

    def starts_at(self, now: float) -> float:
        """When the calendar bucket of `now` began (rolling windows: `now - seconds`)."""
        if self.kind == "day":
            return float(int(now // _DAY) * _DAY)
        if self.kind == "month":
            moment = datetime.fromtimestamp(now, timezone.utc)
            return datetime(moment.year, moment.month, 1, tzinfo=timezone.utc).timestamp()
        return now - self.seconds

    def resets_at(self, now: float) -> float:
        """When the calendar bucket of `now` ends (rolling windows: see `rolling_drop_time`)."""
        if self.kind == "day":
            return float((int(now // _DAY) + 1) * _DAY)
        if self.kind == "month":
            moment = datetime.fromtimestamp(now, timezone.utc)
            year, month = (moment.year + 1, 1) if moment.month == 12 else (moment.year, moment.month + 1)
            return datetime(year, month, 1, tzinfo=timezone.utc).timestamp()
        return now + self.seconds


DAY = Window("day")
MONTH = Window("month")


def slot_seconds(window_s: int) -> int:
    return max(1, math.ceil(window_s / ROLLING_SLOTS))


def slot_count(window_s: int) -> int:
    return math.ceil(window_s / slot_seconds(window_s))


def slot_index(now: float, window_s: int) -> int:
    return int(now // slot_seconds(window_s))


def slot_drop_time(index: int, window_s: int) -> float:
    """When a charge made in slot `index` stops counting."""
    return float((index + slot_count(window_s)) * slot_seconds(window_s))


class GcraResult(NamedTuple):
    """A tuple rather than a frozen dataclass: several are made per admission, and a tuple
    is built at a third of the cost."""

    allowed: bool
    tat: float  # the new theoretical arrival time if allowed, else the unchanged one
    retry_after_s: float  # 0 when allowed
    remaining: int  # units still available right away after this decision
    reset_s: float  # time until the bucket is back at rest (full)


def gcra(tat: float | None, now: float, cost: int, limit: int, period: float = RATE_PERIOD_S) -> GcraResult:
    """One GCRA decision for `cost` units against `limit` units per `period` seconds."""
    interval = period / limit
    base = max(tat if tat is not None else now, now)
    new_tat = base + cost * interval
    if new_tat - now <= period + _EPSILON:
        remaining = int(math.floor((period - (new_tat - now)) / interval + _EPSILON))
        return GcraResult(True, new_tat, 0.0, max(0, remaining), new_tat - now)
    retry = new_tat - period - now if cost <= limit else period
    remaining = int(math.floor((period - (base - now)) / interval + _EPSILON))
    return GcraResult(False, base, retry, max(0, remaining), base - now)


def gcra_adjust(tat: float | None, now: float, delta: int, limit: int, period: float = RATE_PERIOD_S) -> float:
    """Correct a charged estimate by `delta` units (negative gives units back)."""
    current = max(tat if tat is not None else now, now)
    return max(current + delta * (period / limit), now)
