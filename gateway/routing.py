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

from .catalog import Catalog, Model
from .classify import Classification
from .policy import Policy
from .routing_tables import (
    RISK_PRIVACY,
    VIRTUAL_OBJECTIVES,
    RoutingTables,
    apply_constraints,
    tables_for,
    with_breakers,
)
from .routing_types import (
    OWN_REASONS,
    Candidate,
    Eligibility,
    ModelOption,
    Rejection,
    RequestShape,
    RoutePlan,
    RoutingError,
    new_candidate,
    new_plan,
)

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
    shape = tables.lookup(c, tenant, requested_model)
    route = shape.route

    inp, outp = c.input_tokens, c.output_tokens
    window_need = inp + outp
    filtered = shape.settled
    if filtered is None or window_need > shape.min_context or outp > shape.min_output:
        filtered = apply_constraints(shape, window_need, outp, unavailable)
    elif not shape.reachable_keys.isdisjoint(unavailable):
        if type(unavailable) is frozenset:
            filtered = with_breakers(shape, unavailable)
        else:
            filtered = apply_constraints(shape, window_need, outp, unavailable)

    budget = c.latency_budget_ms or route.latency_budget_ms
    scored = _score(filtered.eligible, inp, outp, shape, budget, tables, with_bonus=True)
    # Only the candidates are ordered (the schema keeps max_candidates >= 1; else all are).
    count = route.max_candidates
    ordered = _order(scored, shape, filtered, count if count >= 1 else len(scored))

    common = filtered.common
    primary = ordered[0][5]
    candidates = []
    for i, (_, _, _, score, flags, o) in enumerate(ordered[:count]):
        m = o.model
        if i == 0:
            candidates.append(new_candidate(m.id, m.provider, m.tier, _round4(score), common + o.own[flags],
                                            "primary", o.key))
            continue
        if o.model_id == primary.model_id:
            why = "fallback:same_model"
        elif o.rank < primary.rank:
            why = o.tier_down
        else:
            why = "fallback:score"
        candidates.append(new_candidate(m.id, m.provider, m.tier, _round4(score), common + o.own[flags] + (why,),
                                        "fallback", o.key))

    fields = shape.plan_fields.copy()
    fields["candidates"] = tuple(candidates)
    fields["rejected"] = filtered.rejected
    fields["latency_budget_ms"] = budget
    if filtered.content_options:
        fields["content_fallback"] = _content_fallback(filtered.content_options, common, inp, outp, shape, budget,
                                                       tables)
    return new_plan(fields)


# A scored option: (-score, price tie-break, position, score, OWN_REASONS flags, option). Plain
# tuples sort best first with no key function: best score, then the cheaper model, then
# catalog order (positions are unique, so the option itself is never compared).
Scored = list[tuple[float, int, int, float, int, ModelOption]]


def _score(options: Sequence[ModelOption], inp: int, outp: int, shape: RequestShape, budget: int | None,
           tables: RoutingTables, with_bonus: bool) -> Scored:
    s = tables.policy.scoring
    w_cost, log1p, log_span = shape.weights.cost, math.log1p, _LOG_COST_SPAN
    # Cost is priced for this request's shape (input-heavy vs output-heavy) on a log scale
    # anchored to the dearest request the catalog could produce, so a score does not move
    # with whatever else happens to be eligible.
    unit = (inp * tables.max_in + outp * tables.max_out) / _COST_SPAN or 1.0
    window_need = inp + outp
    threshold = s.context_penalty_threshold
    generation = outp * 1000.0  # ms at one token per second
    out: Scored = []
    append = out.append
    for position, o in enumerate(options):
        cost = inp * o.input_price + outp * o.output_price
        # Summed in this order (cost, speed, quality, penalties, bonus): scores are compared
        # and rounded, so they must come out bit for bit the same on every path.
        score = w_cost * (1.0 - log1p(cost / unit) / log_span) + o.speed_part + o.quality_part
        if window_need >= o.tight_from:  # = window_need / context_window > threshold
            ratio = window_need / o.context_window
            score -= s.context_penalty * (ratio - threshold) / ((1.0 - threshold) or 1.0)
            flags = 1
        else:
            flags = 0
        if budget is not None and generation / o.speed > budget:
            score -= s.latency_penalty
            flags += 2
        if with_bonus and o.bonus:
            score += s.requested_bonus
        append((-score, o.tie, position, score, flags, o))
    out.sort()
    return out


def _order(scored: Scored, shape: RequestShape, filtered: Eligibility, count: int) -> Scored:
    """The first `count` of: primary, the same model elsewhere, the fallback tier (default:
    the next tier down), the rest; each group best first. The scan stops as soon as the
    groups' sizes show that nothing later can be among the first `count`."""
    primary = scored[0]
    if shape.pinned and not primary[5].requested:
        for t in scored:
            if t[5].requested:
                primary = t
                break
    model_id = primary[5].model_id
    n_same, target, n_tier = filtered.fallback_groups(model_id, primary[5].rank, shape.fallback_rank)
    need = count - 1
    same: Scored = []
    tier: Scored = []
    other: Scored = []
    if need > 0:
        for t in scored:
            if t is primary:
                continue
            o = t[5]
            if o.model_id == model_id:
                same.append(t)
                if len(same) >= need:
                    break
            elif o.rank == target:
                tier.append(t)
            else:
                other.append(t)
            if len(same) == n_same and (n_same + len(tier) >= need
                                        or (len(tier) == n_tier and n_same + n_tier + len(other) >= need)):
                break
    return [primary, *same, *tier, *other][:count]


def _content_fallback(usable: Sequence[ModelOption], common: tuple[str, ...], inp: int, outp: int,
                      shape: RequestShape, budget: int | None, tables: RoutingTables) -> Candidate:
    """The model for content-filter refusals, among those that pass this request's hard constraints."""
    _, _, _, score, flags, o = _score(usable, inp, outp, shape, budget, tables, with_bonus=False)[0]
    m = o.model
    return new_candidate(m.id, m.provider, m.tier, _round4(score), (*common, "content_fallback", *OWN_REASONS[flags]),
                         "fallback", o.key)


def _round4(x: float) -> float:
    """round(x, 4), bit for bit, at under half its cost (float rounding to digits goes
    through a decimal conversion). Scaled by 10^4, x rounds to the integer n by the usual
    rule unless the product is within its own rounding error of a half; n / 10^4 is then
    the double nearest the decimal, which is what round returns. Near a half, at zero
    (round keeps the sign of -0.0) and for anything not finite, round itself decides."""
    p = x * 10000.0
    if -1e6 < p < 1e6:
        n = math.floor(p)
        f = p - n  # exact: p and n are within one of each other
        if abs(f - 0.5) > 1e-9:  # the product's error is below 1e-10 in this range
            q = (n + 1 if f > 0.5 else n) / 10000
            if q:
                return q
    return round(x, 4)
