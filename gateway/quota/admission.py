"""What both quota stores share about an admission: one scope's limits parsed from its
config fields, and how a denial is worded.

The memory store decides admissions in memory_admit.py; lua/admit.lua makes the same
decisions inside Redis, and `decode_admission` turns that script's reply into the same
`Admission`, worded by the same messages.
"""

from __future__ import annotations

from dataclasses import dataclass, fields, make_dataclass
from typing import Any, Mapping

from .base import (
    CANDIDATE_SCOPE_KINDS,
    Admission,
    AdmissionRequest,
    CandidateCost,
    Denial,
    RateLimitInfo,
    Scope,
    Settlement,
)
from .windows import Window


@dataclass(frozen=True, slots=True)
class Limits:
    """One scope's limits, parsed from its config fields."""

    caps: tuple[tuple[Window, int], ...] = ()
    rpm: int | None = None
    tpm: int | None = None
    shares: tuple[tuple[str, int, float], ...] = ()  # tier, window_s, max_share


def draft_class(cls: type) -> type:
    """A mutable twin of the frozen, slotted dataclass `cls`: the same slots in the same order,
    filled in by a plain __init__ (no checks, no frozen __setattr__ per field).

    Assigning `cls` to a filled draft's `__class__` makes it a `cls`, equal to and
    indistinguishable from one `cls(...)` builds. The hot path makes a few of these records
    on every request; a draft is built at about a third of the cost of the frozen __init__,
    so the builders below check what a request can change and leave the rest to `cls`.
    """
    twin = make_dataclass(f"{cls.__name__}Draft", [(f.name, Any) for f in fields(cls)], slots=True, eq=False)
    if twin.__slots__ != cls.__dict__.get("__slots__"):  # __class__ assignment needs the same layout
        raise TypeError(f"{cls.__name__} is not a slotted dataclass")
    return twin


_CandidateCostDraft = draft_class(CandidateCost)
_AdmissionRequestDraft = draft_class(AdmissionRequest)
_SettlementDraft = draft_class(Settlement)
_checked_names: set[tuple[str, str, str]] = set()  # (model, provider, tier) a CandidateCost accepted
_checked_scopes: dict[int, tuple[Scope, ...]] = {}  # scope tuples an AdmissionRequest accepted, by id


def new_candidate_cost(model: str, provider: str, tier: str, worst_case_micros: int, tokens: int) -> CandidateCost:
    """CandidateCost(model, provider, tier, worst_case_micros, tokens), checked alike."""
    if (type(worst_case_micros) is not int or type(tokens) is not int or worst_case_micros < 0 or tokens < 0
            or (model, provider, tier) not in _checked_names):
        cost = CandidateCost(model, provider, tier, worst_case_micros, tokens)
        if len(_checked_names) < 4096:  # catalog names: a small set
            _checked_names.add((model, provider, tier))
        return cost
    draft = _CandidateCostDraft(model, provider, tier, worst_case_micros, tokens)
    draft.__class__ = CandidateCost
    return draft  # type: ignore[no-any-return]


def new_admission_request(request_id: str, scopes: tuple[Scope, ...], candidates: list[CandidateCost],
                          ttl_s: float) -> AdmissionRequest:
    """AdmissionRequest(request_id, scopes, candidates, ttl_s=ttl_s), checked alike; `scopes`
    is a tuple (immutable), so one that passed once passes again."""
    if not candidates or not ttl_s > 0 or _checked_scopes.get(id(scopes)) is not scopes:
        request = AdmissionRequest(request_id, scopes, candidates, ttl_s=ttl_s)
        if type(scopes) is tuple and not any(s.kind in CANDIDATE_SCOPE_KINDS for s in scopes):
            if len(_checked_scopes) >= 4096:
                _checked_scopes.clear()
            _checked_scopes[id(scopes)] = scopes  # held, so its id is not reused while listed
        return request
    draft = _AdmissionRequestDraft(request_id, scopes, candidates, None, ttl_s)
    draft.__class__ = AdmissionRequest
    return draft  # type: ignore[no-any-return]


def new_settlement(reservation_id: str, actual_micros: int, actual_tokens: int) -> Settlement:
    """Settlement(reservation_id, actual_micros, actual_tokens), checked alike."""
    if type(actual_micros) is not int or type(actual_tokens) is not int or actual_micros < 0 or actual_tokens < 0:
        return Settlement(reservation_id, actual_micros, actual_tokens)
    draft = _SettlementDraft(reservation_id, actual_micros, actual_tokens)
    draft.__class__ = Settlement
    return draft  # type: ignore[no-any-return]


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


def _reply_rate_info(requests: list[Any] | None, tokens: list[Any] | None) -> RateLimitInfo | None:
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
    info = _reply_rate_info(raw.get("rq"), raw.get("tk"))
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
