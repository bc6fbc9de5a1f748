"""Classification + tenant + requested model + live health -> RoutePlan. Pure: no I/O.

Hard constraints first (a model that fails one is rejected with a reason code), then a
weighted score of normalized cost, speed and quality, then an order: primary first, then
the other deployments of the same model, then the next tier down, then the rest.

What the requested model means depends on the tenant's mode:
  pinned  the requested model is primary whenever the tenant may use it and it can serve
          the request (capabilities, context, privacy, regions, allow/deny lists, breaker).
          Route quality floors, tier bounds and complexity needs shape only its fallbacks.
  floor   the requested model is the minimum (tier and quality); it gets the requested
          bonus, so it wins easy tasks and is upgraded on hard ones; never downgraded.
  auto    a hint: the requested model gets the bonus in the score.
Virtual models `auto` and `auto:<objective>` (`auto:cost` = cost_speed) request nothing.
Privacy is never traded: a high-risk request needs at least `restricted`, a regulated one
`regulated`, whatever the mode, the cost or the requested model.

Every verdict that follows from a request's categories (route, tenant, requested model,
intent, tier, risk, objective hint, needs) is worked out once into a cached `RequestShape`
(routing_tables.py); this module is the per-request part: a request checks only its token
counts and the breakers, then what is left is scored and ordered into the plan.
"""

from __future__ import annotations

import math
from typing import Sequence

from .catalog import TIER_RANK, Catalog, Model
from .classify import Classification
from .policy import Policy, Route
from .routing_tables import (
    RISK_PRIVACY,
    VIRTUAL_OBJECTIVES,
    ModelOption,
    RequestShape,
    RoutingTables,
    apply_constraints,
    tables_for,
)
from .routing_types import Candidate, Rejection, RoutePlan, RoutingError

__all__ = [
    "RISK_PRIVACY",
    "VIRTUAL_OBJECTIVES",
    "Candidate",
    "Rejection",
    "RoutePlan",
    "RoutingError",
    "estimate_cost_micros",
    "plan",
]

# Cost scores fall on a log scale over this span below the dearest possible request
# (about the spread of paid list prices in a real catalog).
_COST_SPAN = 100.0
_LOG_COST_SPAN = math.log1p(_COST_SPAN)
Scored = list[tuple[ModelOption, float, tuple[str, ...]]]

# A model's own reasons by (context tight, over the latency budget), made once.
_OWN = {
    (False, False): ("context_fit",),
    (False, True): ("context_fit", "latency_over_budget"),
    (True, False): ("context_tight",),
    (True, True): ("context_tight", "latency_over_budget"),
}


def estimate_cost_micros(model: Model, input_tokens: int, output_tokens: int, cached_tokens: int = 0) -> int:
    """Cost in integer micro-USD, rounded up. `input_tokens` includes `cached_tokens`, as
    OpenAI's usage reports them; cached tokens are billed at the cached-input price."""
    cached = min(max(cached_tokens, 0), input_tokens)
    micros_per_million = (  # tokens x (micro-USD per 1M tokens)
        (input_tokens - cached) * model.input_micros_per_mtok
        + cached * model.cached_micros_per_mtok
        + output_tokens * model.output_micros_per_mtok
    )
    return -(-micros_per_million // 1_000_000)


def plan(c: Classification, *, tenant: str, requested_model: str | None, policy: Policy, catalog: Catalog,
         unavailable: frozenset[str] = frozenset()) -> RoutePlan:
    tables = tables_for(policy, catalog)
    settings = policy.tenant(tenant)
    route = policy.route_for(c, tenant)
    shape = tables.shape(route, settings, requested_model, c)

    window_need, out_tokens = c.input_tokens + c.output_tokens, c.output_tokens
    settled = shape.settled
    if (settled is not None and window_need <= shape.min_context and out_tokens <= shape.min_output
            and shape.reachable_keys.isdisjoint(unavailable)):
        filtered = settled
    else:
        filtered = apply_constraints(shape, window_need, out_tokens, unavailable)
    eligible = filtered.eligible

    budget = c.latency_budget_ms or route.latency_budget_ms
    scored = _score(eligible, c, shape, budget, tables, with_bonus=True)
    # Only the candidates are ordered (the schema keeps max_candidates >= 1; else all are).
    wanted = route.max_candidates if route.max_candidates >= 1 else len(scored)
    ordered = _order(scored, route, shape.mode == "pinned", wanted)

    common = shape.common
    if filtered.relaxed:
        common += ("need_relaxed",)
    if shape.mode == "pinned" and not any(o.requested for o in eligible):
        common += ("requested:pinned_unavailable",)
    primary = ordered[0][0].model
    candidates = []
    for i, (o, score, own) in enumerate(ordered[: route.max_candidates]):
        m = o.model
        extra = own if i == 0 else (*own, _fallback_reason(o, primary))
        if o.requested:
            extra = (shape.requested_reason, *extra)
        candidates.append(Candidate(m.id, m.provider, m.tier, round(score, 4), common + extra,
                                    "primary" if i == 0 else "fallback"))

    return RoutePlan(
        candidates=tuple(candidates),
        rejected=filtered.rejected,
        route=route.name,
        objective=shape.objective,
        weights=shape.weights,
        latency_budget_ms=budget,
        degradation=route.degradation,
        content_fallback=_content_fallback(filtered.hard_eligible, common, c, shape, budget, tables),
        policy_version=tables.version_tag,
        tenant=settings.name,
        requested_model=shape.requested_model,
        requested_mode=shape.mode,
        privacy_tier=shape.needed_tier,
    )


def _best_first(t: tuple[ModelOption, float, tuple[str, ...]]) -> tuple[float, int]:
    # Best score first; ties go to the cheaper model, then to catalog order (the sort is stable).
    return -t[1], t[0].tie


def _score(options: Sequence[ModelOption], c: Classification, shape: RequestShape, budget: int | None,
           tables: RoutingTables, with_bonus: bool) -> Scored:
    s = tables.policy.scoring
    w_cost, log1p, log_span = shape.weights.cost, math.log1p, _LOG_COST_SPAN
    inp, outp = c.input_tokens, c.output_tokens
    # Cost is priced for this request's shape (input-heavy vs output-heavy) on a log scale
    # anchored to the dearest request the catalog could produce, so a score does not move
    # with whatever else happens to be eligible.
    unit = (inp * tables.max_in + outp * tables.max_out) / _COST_SPAN or 1.0
    window_need = inp + outp
    threshold = s.context_penalty_threshold
    generation = outp * 1000.0  # ms at one token per second
    out: Scored = []
    for o in options:
        m = o.model
        cost = inp * m.input_micros_per_mtok + outp * m.output_micros_per_mtok
        # Summed in this order (cost, speed, quality, penalties, bonus): scores are compared
        # and rounded, so they must come out bit for bit the same on every path.
        score = w_cost * (1.0 - log1p(cost / unit) / log_span) + o.speed_part + o.quality_part
        ratio = window_need / m.context_window
        tight = ratio > threshold
        if tight:
            score -= s.context_penalty * (ratio - threshold) / ((1.0 - threshold) or 1.0)
        slow = budget is not None and generation / m.speed > budget
        if slow:
            score -= s.latency_penalty
        if with_bonus and o.bonus:
            score += s.requested_bonus
        out.append((o, score, _OWN[tight, slow]))
    out.sort(key=_best_first)
    return out


def _order(scored: Scored, route: Route, pinned: bool, count: int) -> Scored:
    """The first `count` of: primary, the same model elsewhere, the fallback tier (default:
    the next tier down), the rest."""
    primary = scored[0]
    if pinned:
        for t in scored:
            if t[0].requested:
                primary = t
                break
    model = primary[0].model
    ordered = [primary]
    rest: Scored = []
    below: int | None = None  # the highest tier under the primary's
    for t in scored:
        if t is primary:
            continue
        m = t[0].model
        if m.id == model.id:
            ordered.append(t)
        else:
            rest.append(t)
            if m.tier_rank < model.tier_rank and (below is None or m.tier_rank > below):
                below = m.tier_rank
    if len(ordered) >= count or not rest:
        return ordered[:count]
    target = TIER_RANK[route.fallback_tier] if route.fallback_tier is not None else below
    ordered += [t for t in rest if t[0].model.tier_rank == target]
    if len(ordered) < count:
        ordered += [t for t in rest if t[0].model.tier_rank != target]
    return ordered[:count]


def _fallback_reason(o: ModelOption, primary: Model) -> str:
    m = o.model
    if m.id == primary.id:
        return "fallback:same_model"
    if m.tier_rank < primary.tier_rank:
        return o.tier_down
    return "fallback:score"


def _content_fallback(eligible: Sequence[ModelOption], common: tuple[str, ...], c: Classification,
                      shape: RequestShape, budget: int | None, tables: RoutingTables) -> Candidate | None:
    """The model for content-filter refusals, only when it passes this request's hard constraints."""
    usable = [o for o in eligible if o.content_fallback]
    if not usable:
        return None
    o, score, own = _score(usable, c, shape, budget, tables, with_bonus=False)[0]
    m = o.model
    return Candidate(m.id, m.provider, m.tier, round(score, 4), (*common, "content_fallback", *own), "fallback")
