"""What both quota stores share about an admission: one scope's limits parsed from its
config fields, and how a denial is worded.

The memory store decides admissions in memory_admit.py; lua/admit.lua makes the same
decisions inside Redis, and `decode_admission` turns that script's reply into the same
`Admission`, worded by the same messages.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping

from .base import Admission, Denial, RateLimitInfo, Scope
from .windows import Window


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
