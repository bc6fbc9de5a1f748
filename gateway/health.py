"""Circuit breakers per deployment (provider + model).

While a deployment has seen fewer than `min_requests` requests in the last `window_s`
seconds, its breaker opens on `consecutive_failures` failures in a row. With more traffic
than that, it opens when the error rate reaches `error_rate` over the window, or over its
latest `max_window_requests` outcomes if there were more: at volume a run of failures
happens by chance (five in a row at a 30% error rate: every few hundred attempts), and a
long healthy history must not hide an outage for long.
After `open_s` it lets `half_open_probes` requests through; a success closes it, a failure
opens it again for twice as long (capped at `max_open_s`). Only failures that say
something about the deployment count (the failover kinds); a client's bad request does not.

State changes can be shared across replicas: the `on_change` hook publishes them, and
`apply_remote` takes in what other replicas published (see gateway/sync.py).

Every attempt passes through `begin` and `record`, so their common case, a success on a
closed breaker, is kept short: it notes the outcome in the window and resets the failure
run, nothing else. The window is cut to `window_s` only when it is read (on a failure),
which gives the same count as cutting it on every outcome, since the clock only moves on.
"""

from __future__ import annotations

import time
from collections import deque
from dataclasses import dataclass, field
from typing import Callable, Iterable

from .providers.errors import ErrorKind

COUNTED = frozenset(
    {
        ErrorKind.RATE_LIMITED,
        ErrorKind.OVERLOADED,
        ErrorKind.TIMEOUT,
        ErrorKind.CONNECTION,
        ErrorKind.AUTH,
        ErrorKind.NOT_FOUND,
        ErrorKind.SERVER_ERROR,
        ErrorKind.MALFORMED_RESPONSE,
    }
)

# The deployment itself is unusable (bad key, unknown model): one failure is enough.
MARK_DOWN = frozenset({ErrorKind.AUTH, ErrorKind.NOT_FOUND})


@dataclass(frozen=True)
class BreakerSettings:
    consecutive_failures: int = 5
    error_rate: float = 0.5
    min_requests: int = 20
    window_s: float = 30.0
    max_window_requests: int = 100
    open_s: float = 10.0
    max_open_s: float = 120.0
    half_open_probes: int = 1
    # A probe whose outcome never came back (its request was cancelled, or failed in a way
    # no hook saw) gives its slot back after this long; otherwise the breaker would stay
    # half-open and blocked for good.
    probe_timeout_s: float = 30.0


@dataclass
class Breaker:
    state: str = "closed"  # closed | open | half_open
    consecutive: int = 0
    opened_at: float = 0.0
    open_for: float = 0.0
    probes_in_flight: int = 0
    probe_started_at: float = 0.0
    outcomes: deque[tuple[float, bool]] = field(default_factory=deque)


Clock = Callable[[], float]


class BreakerBoard:
    def __init__(
        self,
        settings: BreakerSettings = BreakerSettings(),
        clock: Clock = time.monotonic,
        on_change: Callable[[str, str, float], None] | None = None,
    ) -> None:
        self.settings = settings
        self._clock = clock
        self._breakers: dict[str, Breaker] = {}
        self.on_change = on_change
        self._open_keys: frozenset[str] = frozenset()

    def unavailable(self) -> frozenset[str]:
        """Deployment keys the planner must skip right now (open, or half-open with its probe taken)."""
        if not self._open_keys:
            return self._open_keys
        now = self._clock()
        blocked = set()
        for key in self._open_keys:
            breaker = self._breakers[key]
            if breaker.state == "open" and now - breaker.opened_at >= breaker.open_for:
                breaker.state = "half_open"
                breaker.probes_in_flight = 0
            elif breaker.probes_in_flight and now - breaker.probe_started_at >= self.settings.probe_timeout_s:
                breaker.probes_in_flight = 0  # the probe was lost: let another one through
            if breaker.state == "open" or breaker.probes_in_flight >= self.settings.half_open_probes:
                blocked.add(key)
        return frozenset(blocked)

    def begin(self, key: str) -> None:
        """An attempt on `key` starts; in half-open state it takes a probe slot."""
        if key not in self._open_keys:  # closed: nothing to take (every other state is in _open_keys)
            return
        breaker = self._breakers[key]
        if breaker.state == "half_open":
            breaker.probes_in_flight += 1
            breaker.probe_started_at = self._clock()

    def record(self, key: str, kind: ErrorKind | None) -> None:
        """kind None means success."""
        if kind is not None and kind not in COUNTED:
            kind = None  # the deployment answered; the request itself was the problem
        breaker = self._breakers.get(key)
        if breaker is None:
            breaker = self._breakers[key] = Breaker()
        outcomes = breaker.outcomes
        now = self._clock()
        ok = kind is None
        outcomes.append((now, ok))
        if len(outcomes) > self.settings.max_window_requests:
            outcomes.popleft()
        if ok and key not in self._open_keys:  # the common case: a success on a closed breaker
            breaker.consecutive = 0
            return
        self._trim_window(breaker, now)
        if breaker.state == "half_open":
            breaker.probes_in_flight = max(0, breaker.probes_in_flight - 1)
            if ok:
                self._close(key, breaker)
            else:
                self._open(key, breaker, min(self.settings.max_open_s, max(breaker.open_for, self.settings.open_s) * 2))
            return
        if ok:
            breaker.consecutive = 0
            return
        breaker.consecutive += 1
        if breaker.state == "closed" and (kind in MARK_DOWN or self._should_open(breaker)):
            self._open(key, breaker, self.settings.open_s)

    def state(self, key: str) -> str:
        self.unavailable()  # advances open -> half_open when due
        breaker = self._breakers.get(key)
        return breaker.state if breaker else "closed"

    def snapshot(self) -> dict[str, str]:
        self.unavailable()
        return {key: b.state for key, b in self._breakers.items()}

    def next_probe_in(self, keys: Iterable[str]) -> float:
        """Seconds until the first of these deployments lets a request through again.

        0 when one of them is usable now (or none is given). What a refusal's retry-after
        should say when the breakers of every candidate of a route are open.
        """
        blocked = self.unavailable()
        now = self._clock()
        waits = []
        for key in keys:
            breaker = self._breakers.get(key)
            if breaker is None or key not in blocked:
                return 0.0
            if breaker.state == "open":
                waits.append(max(0.0, breaker.opened_at + breaker.open_for - now))
            else:  # half-open with its probe out: the probe's answer, or its expiry
                waits.append(max(0.0, breaker.probe_started_at + self.settings.probe_timeout_s - now))
        return min(waits, default=0.0)

    def reset(self) -> None:
        """Close every breaker and forget its history (an operator fixed the cause)."""
        was_open = [key for key, breaker in self._breakers.items() if breaker.state != "closed"]
        self._breakers.clear()
        self._open_keys = frozenset()
        if self.on_change:
            for key in was_open:
                self.on_change(key, "closed", 0.0)

    def apply_remote(self, key: str, state: str, open_for: float) -> None:
        """Adopt a state another replica published (open with its remaining time, or closed)."""
        breaker = self._breakers.setdefault(key, Breaker())
        if state == "open" and breaker.state == "closed":
            self._open(key, breaker, open_for, publish=False)
        elif state == "closed" and breaker.state != "closed":
            self._close(key, breaker, publish=False)

    def _trim_window(self, breaker: Breaker, now: float) -> None:
        """Drop the outcomes older than the window and those beyond its latest `max_window_requests`."""
        outcomes = breaker.outcomes
        horizon = now - self.settings.window_s
        while outcomes and (outcomes[0][0] < horizon or len(outcomes) > self.settings.max_window_requests):
            outcomes.popleft()

    def _should_open(self, breaker: Breaker) -> bool:
        total = len(breaker.outcomes)
        if total < self.settings.min_requests:
            return breaker.consecutive >= self.settings.consecutive_failures
        failures = sum(1 for _, ok in breaker.outcomes if not ok)
        return failures / total >= self.settings.error_rate

    def _open(self, key: str, breaker: Breaker, open_for: float, publish: bool = True) -> None:
        breaker.state = "open"
        breaker.opened_at = self._clock()
        breaker.open_for = open_for
        breaker.probes_in_flight = 0
        self._open_keys = self._open_keys | {key}
        if publish and self.on_change:
            self.on_change(key, "open", open_for)

    def _close(self, key: str, breaker: Breaker, publish: bool = True) -> None:
        breaker.state = "closed"
        breaker.consecutive = 0
        breaker.open_for = 0.0
        breaker.outcomes.clear()
        self._open_keys = self._open_keys - {key}
        if publish and self.on_change:
            self.on_change(key, "closed", 0.0)
