"""The memory store's admission walk: which candidate a request is admitted on, or why none
is, decided from the limits in force and the ledger's counters.

The walk is lua/admit.lua's, check for check: the request's own rate limits are a hard stop
before any candidate is considered; then, per candidate in plan order, its spend caps, the
share quotas of its tier and its rate limits. The first candidate they all let through is
reserved; when none is, the denial names the nearest block met on the way, worded by
admission.py's messages, exactly as the Redis store words the script's reply.

Nothing is charged here: the store's `reserve` callback holds the cost in the counters and
records the reservation. The limits are resolved from the configuration into flat tables
(`LimitTables`) once, so an admission reads only its counters.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Mapping, TypeVar

from .admission import (
    Limits,
    cap_message,
    draft_class,
    limits_from_fields,
    rate_message,
    share_message,
)
from .base import (
    Admission,
    AdmissionRequest,
    CandidateCost,
    Denial,
    RateLimitInfo,
    Scope,
    SkipReason,
)
from .ledger import CounterKey, Ledger, SpendCounter
from .windows import GcraResult, Window, gcra

RateCheck = tuple[str, str, int]  # scope key, "rpm" | "tpm", limit
CapCheck = tuple[str, Window, int, str]  # scope key, window, limit in micro-dollars, window spec
Held = list[tuple[CounterKey, SpendCounter]]  # the spend counters the admitted cost goes into
Passed = list[tuple[tuple[str, str], GcraResult]]  # the GCRA cells that let it through, and their new state
ShareWindows = tuple[tuple[str, int], ...]  # (scope key, window_s) every admission counts in
# Holds the admitted candidate's cost and records the reservation; returns its id.
Reserve = Callable[[AdmissionRequest, CandidateCost, Held, Passed, ShareWindows, float], str]
Tightest = tuple[int, int, float] | None  # the most restrictive rpm or tpm: limit, remaining, reset_s
# Slack in the share comparison, the same as lua/lib.lua's.
_SHARE_EPSILON = 1e-9
_MAX_TABLES = 4096  # resolved scope sets and candidates kept; the oldest goes first
_K = TypeVar("_K")
_V = TypeVar("_V")


@dataclass(frozen=True, slots=True)
class RequestLimits:
    """The limits of one request's scopes (global first, deduplicated), in check order."""

    rates: tuple[RateCheck, ...]  # rpm then tpm per scope: the hard stop before the walk
    tpm: tuple[RateCheck, ...]  # charged again per candidate, with that candidate's tokens
    caps: tuple[CapCheck, ...]
    shares: Mapping[str, tuple[tuple[str, int, float], ...]]  # tier -> (scope key, window_s, max_share)
    share_windows: ShareWindows
    # Each candidate's checks joined to these, by (model, provider, tier): see LimitTables.steps.
    steps: dict[tuple[str, str, str], CandidateSteps] = field(default_factory=dict, compare=False, repr=False)


@dataclass(frozen=True, slots=True)
class CandidateSteps:
    """Everything one candidate of one request is checked against, in check order: made once
    per request scope set and candidate, so the walk reads flat tables only."""

    caps: tuple[CapCheck, ...]  # the request's caps, then the model's and the provider's
    rates: tuple[RateCheck, ...]  # the request's tpm, then model rpm, tpm, provider rpm, tpm
    shares: tuple[tuple[str, int, float], ...]  # the share quotas on the candidate's tier


@dataclass(frozen=True, slots=True)
class CandidateLimits:
    """The limits of one candidate's model and provider scopes, in check order."""

    caps: tuple[CapCheck, ...]
    rates: tuple[RateCheck, ...]  # model rpm, tpm, then provider rpm, tpm


class LimitTables:
    """The limits of one configuration, resolved on first use per scope, per request scope set
    and per candidate. The store makes new tables whenever its configuration changes, so an
    entry is never out of date."""

    __slots__ = ("_config", "_scopes", "_requests", "_by_identity", "_candidates")

    def __init__(self, config: Mapping[str, Mapping[str, str]]) -> None:
        self._config = config
        self._scopes: dict[str, Limits] = {}
        self._requests: dict[tuple[Scope, ...], RequestLimits] = {}
        # The gateway hands the same scope tuple (spend.request_scopes is cached) for every
        # request of a tenant, key and route: found by identity, it is not hashed Scope by
        # Scope. The entry holds the tuple, so its id is not reused while it is listed.
        self._by_identity: dict[int, tuple[tuple[Scope, ...], RequestLimits]] = {}
        self._candidates: dict[tuple[str, str], CandidateLimits] = {}

    def of_scope(self, scope_key: str) -> Limits:
        found = self._scopes.get(scope_key)
        if found is None:
            found = self._scopes[scope_key] = limits_from_fields(self._config.get(scope_key, {}))
        return found

    def of_request(self, request: AdmissionRequest) -> RequestLimits:
        scopes = request.scopes
        known = self._by_identity.get(id(scopes))
        if known is not None and known[0] is scopes:
            return known[1]
        key = tuple(scopes)
        found = self._requests.get(key)
        if found is None:
            rates, tpm, caps, windows = [], [], [], []
            shares: dict[str, list[tuple[str, int, float]]] = {}
            for scope_key in [s.key for s in request.request_scopes()]:
                limits = self.of_scope(scope_key)
                if limits.rpm:
                    rates.append((scope_key, "rpm", limits.rpm))
                if limits.tpm:
                    rates.append((scope_key, "tpm", limits.tpm))
                    tpm.append((scope_key, "tpm", limits.tpm))
                caps.extend((scope_key, window, limit, window.spec) for window, limit in limits.caps)
                for tier, window_s, max_share in limits.shares:
                    shares.setdefault(tier, []).append((scope_key, window_s, max_share))
                windows.extend((scope_key, w) for w in sorted({w for _, w, _ in limits.shares}))
            found = RequestLimits(
                tuple(rates), tuple(tpm), tuple(caps), {t: tuple(v) for t, v in shares.items()}, tuple(windows)
            )
            _remember(self._requests, key, found)
        if type(scopes) is tuple:  # immutable: the same object always means the same scopes
            _remember(self._by_identity, id(scopes), (scopes, found))
        return found

    def of_candidate(self, candidate: CandidateCost) -> CandidateLimits:
        key = (candidate.model, candidate.provider)
        found = self._candidates.get(key)
        if found is None:
            caps: list[CapCheck] = []
            rates: list[RateCheck] = []
            for scope in candidate.scopes:
                limits = self.of_scope(scope.key)
                caps.extend((scope.key, window, limit, window.spec) for window, limit in limits.caps)
                if limits.rpm:
                    rates.append((scope.key, "rpm", limits.rpm))
                if limits.tpm:
                    rates.append((scope.key, "tpm", limits.tpm))
            found = CandidateLimits(tuple(caps), tuple(rates))
            _remember(self._candidates, key, found)
        return found

    def steps(self, limits: RequestLimits, candidate: CandidateCost) -> CandidateSteps:
        """The checks of `candidate` in a request with `limits`, joined once and kept there."""
        key = (candidate.model, candidate.provider, candidate.tier)
        found = limits.steps.get(key)
        if found is None:
            own = self.of_candidate(candidate)
            found = CandidateSteps(limits.caps + own.caps, limits.tpm + own.rates, limits.shares.get(candidate.tier, ()))
            _remember(limits.steps, key, found)
        return found


@dataclass(slots=True)
class _Blocks:
    """The nearest block of each kind met while walking the candidates: what a denial names."""

    cap: tuple[int, str, Window, int, float, int] | None = None  # remaining, scope, window, limit, resets_at, cost
    share: tuple[float, str, str, int, float] | None = None  # retry, scope, tier, window_s, max_share
    rate: tuple[float, str, str, int] | None = None  # retry, scope, rpm | tpm, limit


def decide_admission(request: AdmissionRequest, now: float, degraded: bool, tables: LimitTables, ledger: Ledger,
                     reserve: Reserve) -> Admission:
    limits = tables.of_request(request)
    cells = ledger.cells

    # 1. Request-scoped rate limits: a hard stop before any candidate is considered.
    requests: Tightest = None
    tokens: Tightest = None
    passed_rpm: list[tuple[tuple[str, str], int, GcraResult]] = []  # cell, limit, result
    blocked: tuple[float, str, str, int] | None = None
    if limits.rates:
        fewest_tokens = min(c.tokens for c in request.candidates)
        for scope_key, kind, limit in limits.rates:
            cell = (scope_key, kind)
            result = gcra(cells.get(cell), now, 1 if kind == "rpm" else fewest_tokens, limit)
            if kind == "rpm":
                requests = _offer(requests, limit, result)
                if result.allowed:
                    passed_rpm.append((cell, limit, result))
            else:
                tokens = _offer(tokens, limit, result)
            if not result.allowed and (blocked is None or result.retry_after_s > blocked[0]):
                blocked = (result.retry_after_s, scope_key, kind, limit)
        if blocked is not None:
            retry, scope_key, kind, limit = blocked
            info = _rate_info(requests, tokens)
            message = rate_message(scope_key, kind, limit, retry)
            denial = Denial("rate_limited", Scope.parse(scope_key), None, message, retry, info)
            return Admission(False, None, None, (), denial, degraded, info)

    # 2. The candidates in plan order: the first that every cap, share quota and rate
    # limit lets through is reserved.
    skipped: list[tuple[int, SkipReason]] = []
    blocks: _Blocks | None = None  # made when a candidate is first blocked
    known_steps = limits.steps
    for index, candidate in enumerate(request.candidates):
        requests, tokens = None, None  # the headers describe the candidate under consideration
        for _, limit, result in passed_rpm:
            requests = _offer(requests, limit, result)
        steps = known_steps.get((candidate.model, candidate.provider, candidate.tier)) or tables.steps(limits, candidate)
        cost = candidate.worst_case_micros
        held = _check_caps(ledger, steps.caps, cost, now)
        if held is None:
            blocks = blocks or _Blocks()
            _note_cap_block(ledger, steps.caps, cost, now, blocks)
            skipped.append((index, "credit_limit"))
            continue
        if steps.shares:
            blocks = blocks or _Blocks()
            if not _check_shares(ledger, steps.shares, candidate.tier, now, blocks):
                skipped.append((index, "route_quota"))
                continue
        passed: Passed = [(cell, result) for cell, _, result in passed_rpm] if passed_rpm else []
        failed = False
        for scope_key, kind, limit in steps.rates:
            cell = (scope_key, kind)
            result = gcra(cells.get(cell), now, 1 if kind == "rpm" else candidate.tokens, limit)
            if kind == "rpm":
                requests = _offer(requests, limit, result)
            else:
                tokens = _offer(tokens, limit, result)
            if result.allowed:
                passed.append((cell, result))
            else:
                failed = True
                blocks = blocks or _Blocks()
                if blocks.rate is None or result.retry_after_s < blocks.rate[0]:
                    blocks.rate = (result.retry_after_s, scope_key, kind, limit)
        if failed:
            skipped.append((index, "rate_limit"))
            continue
        reservation_id = reserve(request, candidate, held, passed, limits.share_windows, now)
        info = None if requests is None and tokens is None else _rate_info(requests, tokens)
        return _admitted(index, reservation_id, tuple(skipped) if skipped else (), degraded, info)
    assert blocks is not None  # every candidate was skipped, each for a block it met
    return _deny(skipped, blocks, _rate_info(requests, tokens), now, degraded)


def _check_caps(ledger: Ledger, caps: tuple[CapCheck, ...], cost: int, now: float) -> Held | None:
    """The counters to reserve in, or None when a cap cannot afford `cost`."""
    held: Held = []
    spend, bucket = ledger.spend, ledger.bucket
    for scope_key, window, limit, spec in caps:
        key = (scope_key, spec, bucket(window, now))  # = ledger.counter's key
        counter = spend.get(key)
        if counter is None:
            key, counter = ledger.counter(scope_key, window, now)
        if cost > limit - (counter.spent_total(now) + counter.reserved):
            return None
        held.append((key, counter))
    return held


def _note_cap_block(ledger: Ledger, caps: tuple[CapCheck, ...], cost: int, now: float, blocks: _Blocks) -> None:
    """After _check_caps said no: every cap is read again, so that the denial names the one
    with the least left (and every cap's counter exists, as if all had been read at once)."""
    for scope_key, window, limit, _ in caps:
        _, counter = ledger.counter(scope_key, window, now)
        remaining = limit - (counter.spent_total(now) + counter.reserved)
        if cost > remaining and (blocks.cap is None or remaining < blocks.cap[0]):
            blocks.cap = (remaining, scope_key, window, limit, counter.resets_at(now), cost)


# Made on every admission: built as drafts (see admission.draft_class), not field by field.
_AdmissionDraft = draft_class(Admission)
_RateLimitInfoDraft = draft_class(RateLimitInfo)


def _admitted(index: int, reservation_id: str, skipped: tuple[tuple[int, SkipReason], ...], degraded: bool,
              info: RateLimitInfo | None) -> Admission:
    """Admission(True, index, reservation_id, skipped, None, degraded, info)."""
    admission = _AdmissionDraft(True, index, reservation_id, skipped, None, degraded, info)
    admission.__class__ = Admission
    return admission  # type: ignore[no-any-return]


def _check_shares(ledger: Ledger, shares: tuple[tuple[str, int, float], ...], tier: str, now: float,
                  blocks: _Blocks) -> bool:
    """Whether one more request of `tier` stays within every share quota on it."""
    fits = True
    for scope_key, window_s, max_share in shares:
        counts = ledger.share_counts(scope_key, window_s, now)
        if counts.total(tier) + 1 > max_share * (counts.total("n") + 1) + _SHARE_EPSILON:
            fits = False
            retry = max(0.0, counts.drop_time(tier, now) - now)
            if blocks.share is None or retry < blocks.share[0]:
                blocks.share = (retry, scope_key, tier, window_s, max_share)
    return fits


def _remember(cache: dict[_K, _V], key: _K, value: _V) -> None:
    if len(cache) >= _MAX_TABLES:
        cache.pop(next(iter(cache)))
    cache[key] = value


def _offer(best: Tightest, limit: int, result: GcraResult) -> Tightest:
    """The tighter of `best` and this decision: fewest remaining, then longest reset."""
    entry = (limit, result.remaining, result.reset_s)
    if best is None or (entry[1], -entry[2]) < (best[1], -best[2]):
        return entry
    return best


def _rate_info(requests: Tightest, tokens: Tightest) -> RateLimitInfo | None:
    """RateLimitInfo(*requests, *tokens) (made on every admission of a rate-limited scope)."""
    if requests is None and tokens is None:
        return None
    r = requests or (None, None, None)
    t = tokens or (None, None, None)
    info = _RateLimitInfoDraft(r[0], r[1], r[2], t[0], t[1], t[2])
    info.__class__ = RateLimitInfo
    return info  # type: ignore[no-any-return]


def _deny(skipped: list[tuple[int, SkipReason]], blocks: _Blocks, info: RateLimitInfo | None, now: float,
          degraded: bool) -> Admission:
    """No candidate fits: rate_limited if rate limits alone stood in the way, else the cap
    with the least left, else the share quota that frees up first."""
    if {reason for _, reason in skipped} == {"rate_limit"} and blocks.rate is not None:
        retry, scope_key, kind, limit = blocks.rate
        message = rate_message(scope_key, kind, limit, retry)
        denial = Denial("rate_limited", Scope.parse(scope_key), None, message, retry, info)
    elif blocks.cap is not None:
        remaining, scope_key, window, limit, resets_at, cost = blocks.cap
        message = cap_message(scope_key, window, limit, remaining, cost)
        denial = Denial("budget_exceeded", Scope.parse(scope_key), window, message, max(0.0, resets_at - now))
    else:
        assert blocks.share is not None
        retry, scope_key, tier, window_s, max_share = blocks.share
        message = share_message(scope_key, tier, window_s, max_share)
        denial = Denial("budget_exceeded", Scope.parse(scope_key), Window("rolling", window_s), message, retry)
    return Admission(False, None, None, tuple(skipped), denial, degraded, info)
