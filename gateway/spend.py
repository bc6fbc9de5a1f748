"""Between the plan and the quota store: what to reserve, what a denial looks like, what to settle.

The admission is one atomic store call over the whole plan: the store picks the first
candidate whose worst case every cap can afford and reserves it. Failing over later to a
dearer candidate first extends the reservation by the difference (`extend`, atomic too);
if the caps cannot cover it, that candidate is skipped. So the cap holds exactly whatever
the forward loop ends up calling.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Any, Mapping, Sequence

from .catalog import Catalog
from .classify import Classification
from .errors import GatewayError
from .policy import Limits, Policy
from .quota import (
    Admission,
    AdmissionRequest,
    Denial,
    RateLimit,
    Scope,
    ShareQuota,
    SpendCap,
    Window,
)
from .quota.admission import new_admission_request, new_candidate_cost
from .routing import RoutePlan, estimate_cost_micros
from .usage import Usage


def requested_output_tokens(body: Mapping[str, Any], limits: Limits) -> int:
    value = body.get("max_completion_tokens")
    if not (isinstance(value, int) and not isinstance(value, bool) and value > 0):
        value = body.get("max_tokens")
        if not (isinstance(value, int) and not isinstance(value, bool) and value > 0):
            value = limits.default_max_tokens
    n = body.get("n")
    return value * int(n) if n else value


def admission_and_worst(
    request_id: str,
    scopes: Sequence[Scope],
    plan: RoutePlan,
    c: Classification,
    body: Mapping[str, Any],
    catalog: Catalog,
    limits: Limits,
) -> tuple[AdmissionRequest, dict[str, int]]:
    """The admission request for a plan, and each candidate's worst case by deployment key
    (what a failover to it must have reserved), priced once for both."""
    output = requested_output_tokens(body, limits)
    inp = c.input_tokens
    tokens = inp + output
    by_key = catalog.by_key
    candidates = []
    worst_by_key = {}
    for x in plan.candidates:
        key = x.key
        m = by_key[key]
        out = output
        if out > m.max_output_tokens:  # noqa: PLR1730 - min() costs a builtin call (~1k instructions) per candidate
            out = m.max_output_tokens
        if inp >= 0:  # estimate_cost_micros(m, inp, out) with no cached tokens, written out
            worst = -(-(inp * m.input_micros_per_mtok + out * m.output_micros_per_mtok) // 1_000_000)
        else:
            worst = estimate_cost_micros(m, inp, out)
        candidates.append(new_candidate_cost(m.id, m.provider, m.tier, worst, tokens))
        worst_by_key[key] = worst
    ttl_s = float(limits.reservation_ttl_s)
    if type(scopes) is not tuple:
        return AdmissionRequest(request_id, scopes, candidates, ttl_s=ttl_s), worst_by_key
    return new_admission_request(request_id, scopes, candidates, ttl_s), worst_by_key


@lru_cache(maxsize=4096)
def request_scopes(tenant: str, team: str | None, key_id: str, route: str) -> tuple[Scope, ...]:
    """Cached: the same few combinations come back on every request, and Scope validates."""
    scopes = (Scope("tenant", tenant), Scope("key", key_id), Scope("route", route))
    return scopes + (Scope("team", team),) if team else scopes


def denial_error(denial: Denial) -> GatewayError:
    retry_after = max(1, int(denial.retry_after_s + 0.999))
    headers = {"retry-after": str(retry_after)}
    if denial.rate_limit is not None:
        headers.update(denial.rate_limit.headers())
    return GatewayError(429, denial.message, code=denial.code, type="rate_limit_error" if denial.code == "rate_limited" else "insufficient_quota", headers=headers)


def skip_reasons(admission: Admission) -> tuple[str, ...]:
    skipped = admission.skipped
    return tuple(dict.fromkeys(reason for _, reason in skipped)) if skipped else ()


def actual_cost_micros(catalog: Catalog, deployment_key: str, usage: Usage) -> int:
    model = catalog.by_key.get(deployment_key)
    if model is None:
        return 0
    return estimate_cost_micros(model, usage.prompt_tokens, usage.completion_tokens, usage.cached_tokens)


def static_limits(policy: Policy) -> tuple[list[SpendCap], list[RateLimit], list[ShareQuota]]:
    """The policy file's caps and quotas in the store's terms (USD -> integer micro-dollars)."""
    limits = policy.limits
    caps = [
        SpendCap(_scope(c.scope, c.id), Window.parse(c.window), int(round(c.limit_usd * 1_000_000)))
        for c in limits.caps
    ]
    rates = [RateLimit(_scope(r.scope, r.id), r.rpm, r.tpm) for r in limits.rate_limits]
    shares = [ShareQuota(_scope(q.scope, q.id), q.tier, q.max_share, q.window_s) for q in limits.share_quotas]
    return caps, rates, shares


def _scope(kind: str, ident: str | None) -> Scope:
    return Scope(kind, ident or "*") if kind != "global" else Scope("global", "*")
