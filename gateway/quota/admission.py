"""The bookkeeping of one admission decision in Python: which checks apply, why a candidate
was skipped, and how a denial or the rate-limit headers are worded.

The memory store drives it; lua/admit.lua makes the same decisions inside Redis, and
`decode_admission` turns that script's reply into the same `Admission`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Iterator, Mapping, Sequence

from .base import Admission, AdmissionRequest, CandidateCost, Denial, RateLimitInfo, Scope, SkipReason
from .windows import GcraResult, Window

_EPSILON = 1e-9


@dataclass(frozen=True, slots=True)
class Limits:
    """One scope's limits, parsed from its config fields."""

    caps: tuple[tuple[Window, int], ...] = ()
    rpm: int | None = None
    tpm: int | None = None
    shares: tuple[tuple[str, int, float], ...] = ()  # tier, window_s, max_share


def limits_from_fields(fields: Mapping[str, str]) -> Limits:
    caps, shares = [], []
    for name, value in fields.items():
        if name.startswith("cap:"):
            caps.append((Window.parse(name[4:]), int(value)))
        elif name.startswith("share:"):
            tier, _, window_s = name[6:].rpartition(":")
            shares.append((tier, int(window_s), float(value)))
    rpm, tpm = fields.get("rpm"), fields.get("tpm")
    return Limits(tuple(caps), int(rpm) if rpm else None, int(tpm) if tpm else None, tuple(shares))


class _Tightest:
    """The most restrictive rpm or tpm seen: fewest remaining, then longest reset."""

    def __init__(self) -> None:
        self.best: tuple[int, int, float] | None = None  # limit, remaining, reset_s

    def offer(self, limit: int, result: GcraResult) -> None:
        entry = (limit, result.remaining, result.reset_s)
        if self.best is None or (entry[1], -entry[2]) < (self.best[1], -self.best[2]):
            self.best = entry


def rate_info(requests: _Tightest, tokens: _Tightest) -> RateLimitInfo | None:
    if requests.best is None and tokens.best is None:
        return None
    r = requests.best or (None, None, None)
    t = tokens.best or (None, None, None)
    return RateLimitInfo(r[0], r[1], r[2], t[0], t[1], t[2])


def rate_message(scope_key: str, kind: str, limit: int, retry_after_s: float) -> str:
    unit = "requests" if kind == "rpm" else "tokens"
    return f"rate limit of {scope_key} reached: {limit} {unit} per minute; retry after {retry_after_s:.3f}s"


def cap_message(scope_key: str, window: Window, limit: int, remaining: int, cost: int) -> str:
    return (
        f"spend cap of {scope_key} for window {window.spec} reached: {max(0, remaining)} of {limit} "
        f"micro-USD left, the request needs up to {cost}"
    )


def share_message(scope_key: str, tier: str, window_s: int, max_share: float) -> str:
    return (
        f"route quota of {scope_key}: tier {tier} may take at most {max_share:.0%} of requests over rolling:{window_s}"
    )


class AdmissionBuilder:
    def __init__(
        self,
        request: AdmissionRequest,
        now: float,
        limits_of: Callable[[str], Limits],
        degraded: bool = False,
    ) -> None:
        self.request = request
        self.now = now
        self.degraded = degraded
        self.request_scopes = [s.key for s in request.request_scopes()]
        self._limits_of = limits_of
        self.blocked: tuple[float, str, str, int] | None = None  # retry, scope key, rpm|tpm, limit
        self.passed_rates: dict[tuple[str, str], GcraResult] = {}
        self.skipped: list[tuple[int, SkipReason]] = []
        self._request_rates: dict[tuple[str, str], tuple[int, GcraResult]] = {}
        self._in_request_phase = True
        self._failed = False
        self._cost = 0
        self._requests, self._tokens = _Tightest(), _Tightest()
        self._cap_block: tuple[int, str, Window, int, float, int] | None = None
        self._share_block: tuple[float, str, str, int, float] | None = None
        self._rate_block: tuple[float, str, str, int] | None = None

    # -- request-level rate limits --

    def request_rate_checks(self) -> Iterator[tuple[str, str, int, int]]:
        fewest_tokens = min(c.tokens for c in self.request.candidates)
        for scope_key in self.request_scopes:
            limits = self._limits_of(scope_key)
            if limits.rpm:
                yield scope_key, "rpm", limits.rpm, 1
            if limits.tpm:
                yield scope_key, "tpm", limits.tpm, fewest_tokens

    def record_rate(self, scope_key: str, kind: str, limit: int, result: GcraResult) -> None:
        (self._requests if kind == "rpm" else self._tokens).offer(limit, result)
        if result.allowed:
            if self._in_request_phase and kind == "rpm":
                self._request_rates[(scope_key, kind)] = (limit, result)
            elif not self._in_request_phase:
                self.passed_rates[(scope_key, kind)] = result
            return
        block = (result.retry_after_s, scope_key, kind, limit)
        if self._in_request_phase:
            if self.blocked is None or block[0] > self.blocked[0]:
                self.blocked = block
        else:
            self._failed = True
            if self._rate_block is None or block[0] < self._rate_block[0]:
                self._rate_block = block

    def deny_rate_limited(self) -> Admission:
        assert self.blocked is not None
        retry, scope_key, kind, limit = self.blocked
        info = rate_info(self._requests, self._tokens)
        denial = Denial(
            "rate_limited", Scope.parse(scope_key), None, rate_message(scope_key, kind, limit, retry), retry, info
        )
        return Admission(False, None, None, (), denial, self.degraded, info)

    # -- the candidate walk --

    def walk(self) -> Iterator[tuple[int, CandidateCost, list[str]]]:
        self._in_request_phase = False
        for index, candidate in enumerate(self.request.candidates):
            self._failed = False
            self._cost = candidate.worst_case_micros
            self.passed_rates = {key: result for key, (_, result) in self._request_rates.items()}
            self._requests, self._tokens = _Tightest(), _Tightest()
            for limit, result in self._request_rates.values():
                self._requests.offer(limit, result)
            model, provider = candidate.scopes
            yield index, candidate, [*self.request_scopes, model.key, provider.key]

    def check_cap(self, scope_key: str, window: Window, limit: int, used: int, resets_at: float) -> None:
        remaining = limit - used
        if self._cost > remaining:
            self._failed = True
            if self._cap_block is None or remaining < self._cap_block[0]:
                self._cap_block = (remaining, scope_key, window, limit, resets_at, self._cost)

    def share_checks(self, candidate: CandidateCost) -> Iterator[tuple[str, str, int, float]]:
        for scope_key in self.request_scopes:
            for tier, window_s, max_share in self._limits_of(scope_key).shares:
                if tier == candidate.tier:
                    yield scope_key, tier, window_s, max_share

    def check_share(
        self, scope_key: str, tier: str, window_s: int, max_share: float, tier_count: int, total: int, drop_at: float
    ) -> None:
        if tier_count + 1 > max_share * (total + 1) + _EPSILON:
            self._failed = True
            retry = max(0.0, drop_at - self.now)
            if self._share_block is None or retry < self._share_block[0]:
                self._share_block = (retry, scope_key, tier, window_s, max_share)

    def candidate_rate_checks(
        self, candidate: CandidateCost, cap_scopes: Sequence[str]
    ) -> Iterator[tuple[str, str, int, int]]:
        for scope_key in self.request_scopes:
            tpm = self._limits_of(scope_key).tpm
            if tpm:
                yield scope_key, "tpm", tpm, candidate.tokens
        for scope_key in cap_scopes[-2:]:
            limits = self._limits_of(scope_key)
            if limits.rpm:
                yield scope_key, "rpm", limits.rpm, 1
            if limits.tpm:
                yield scope_key, "tpm", limits.tpm, candidate.tokens

    def skip_if_failed(self, index: int, reason: SkipReason) -> bool:
        if self._failed:
            self.skipped.append((index, reason))
        return self._failed

    def share_windows(self) -> Iterator[tuple[str, int]]:
        for scope_key in self.request_scopes:
            for window_s in sorted({w for _, w, _ in self._limits_of(scope_key).shares}):
                yield scope_key, window_s

    # -- outcomes --

    def admitted(self, index: int, reservation_id: str) -> Admission:
        info = rate_info(self._requests, self._tokens)
        return Admission(True, index, reservation_id, tuple(self.skipped), None, self.degraded, info)

    def deny_no_candidate(self) -> Admission:
        reasons = {reason for _, reason in self.skipped}
        info = rate_info(self._requests, self._tokens)
        if reasons == {"rate_limit"} and self._rate_block is not None:
            retry, scope_key, kind, limit = self._rate_block
            message = rate_message(scope_key, kind, limit, retry)
            denial = Denial("rate_limited", Scope.parse(scope_key), None, message, retry, info)
        elif self._cap_block is not None:
            remaining, scope_key, window, limit, resets_at, cost = self._cap_block
            denial = Denial(
                "budget_exceeded",
                Scope.parse(scope_key),
                window,
                cap_message(scope_key, window, limit, remaining, cost),
                max(0.0, resets_at - self.now),
            )
        else:
            assert self._share_block is not None
            retry, scope_key, tier, window_s, max_share = self._share_block
            denial = Denial(
                "budget_exceeded",
                Scope.parse(scope_key),
                Window("rolling", window_s),
                share_message(scope_key, tier, window_s, max_share),
                retry,
            )
        return Admission(False, None, None, tuple(self.skipped), denial, self.degraded, info)


def _info(requests: list[Any] | None, tokens: list[Any] | None) -> RateLimitInfo | None:
    if not requests and not tokens:
        return None
    r = requests or [None, None, None]
    t = tokens or [None, None, None]
    as_int = lambda v: None if v is None else int(v)  # noqa: E731
    as_float = lambda v: None if v is None else float(v)  # noqa: E731
    return RateLimitInfo(as_int(r[0]), as_int(r[1]), as_float(r[2]), as_int(t[0]), as_int(t[1]), as_float(t[2]))


def decode_admission(raw: dict[str, Any], reservation_id: str) -> Admission:
    """admit.lua's JSON reply as an Admission (cjson writes an empty list as {})."""
    skipped = tuple((int(i), reason) for i, reason in (raw.get("s") or []))
    info = _info(raw.get("rq"), raw.get("tk"))
    if raw["a"] == 1:
        return Admission(True, int(raw["i"]), reservation_id, skipped, None, False, info)
    d = raw["d"]
    scope = Scope.parse(d["scope"])
    retry = float(d["retry"])
    if d["k"] == "rate":
        message = rate_message(d["scope"], d["kind"], int(d["limit"]), retry)
        denial = Denial("rate_limited", scope, None, message, retry, info)
    elif d["k"] == "cap":
        window = Window.parse(d["spec"])
        message = cap_message(d["scope"], window, int(d["limit"]), int(d["remaining"]), int(d["cost"]))
        denial = Denial("budget_exceeded", scope, window, message, retry)
    else:
        message = share_message(d["scope"], d["tier"], int(d["win"]), float(d["max"]))
        denial = Denial("budget_exceeded", scope, Window("rolling", int(d["win"])), message, retry)
    return Admission(False, None, None, skipped, denial, False, info)
