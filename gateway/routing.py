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
intent, tier, risk, objective hint, needs) is worked out once into a cached `RequestShape`,
and the outcome of the token and breaker checks once per shape and bucket (which of the
shape's limits the tokens exceed, which breakers are open) into an `Eligibility`, its
options laid out for the score (routing_tables.py). This module is the per-request part:
the scores, whose cost term follows the token counts; the order they put the options in;
the plan. What an order makes of the candidates (roles, reasons) is remembered per order.
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
    eligibility,
    tables_for,
)
from .routing_types import (
    Candidate,
    CandidateSpec,
    ModelOption,
    Ranking,
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
_EXACT_IN_FLOAT = 2**53  # every whole number up to this is a float


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
    inp, outp = c.input_tokens, c.output_tokens
    filtered = eligibility(shape, inp + outp, outp, unavailable)
    budget = c.latency_budget_ms or shape.route.latency_budget_ms

    ranking = filtered.ranking
    scores, flags = _scores(ranking, inp, outp, budget, shape, tables)
    # The options best first: the higher score, then the cheaper model, then option order (a
    # stable sort of `by_price`, which reverse=True keeps stable). The candidates this order
    # makes, but for their scores, are remembered per order.
    order = (ranking, tuple(sorted(ranking.by_price, key=scores.__getitem__, reverse=True)))
    specs = tables.specs.get(order) or _specs(order, shape, filtered.common, tables)
    fields = shape.plan_fields.copy()
    fields["candidates"] = _candidates(specs, scores, flags)
    fields["rejected"] = filtered.rejected
    fields["latency_budget_ms"] = budget
    if filtered.content_specs:
        content_scores, content_flags = scores, flags
        if filtered.content_ranking is not None:  # not scored with the candidates
            content_scores, content_flags = _scores(filtered.content_ranking, inp, outp, budget, shape, tables)
        fields["content_fallback"] = _content_fallback(filtered.content_specs, content_scores, content_flags)
    return new_plan(fields)


def _scores(ranking: Ranking, inp: int, outp: int, budget: int | None, shape: RequestShape,
            tables: RoutingTables) -> tuple[list[float], Sequence[int]]:
    """Every option's score, and its OWN_REASONS flags (1 context tight, 2 over the latency
    budget), in option order. A request short of the ranking's `tightest` and `slowest`
    marks meets neither check for any option and skips both; one past its `fastest` mark is
    over the budget for every option."""
    w_cost, log1p, log_span = shape.weights.cost, math.log1p, _LOG_COST_SPAN
    # Cost is priced for this request's shape (input-heavy vs output-heavy) on a log scale
    # anchored to the dearest request the catalog could produce, so a score does not move
    # with whatever else happens to be eligible.
    dearest = inp * tables.max_in + outp * tables.max_out
    unit = dearest / _COST_SPAN or 1.0
    if 0 <= inp and 0 <= outp and dearest < _EXACT_IN_FLOAT:
        # Then every product and sum of prices (never negative) and token counts below is a
        # whole number under 2**53, exact as a float: the same value as in integers, cheaper.
        tokens_in, tokens_out, parts = float(inp), float(outp), ranking.parts
    else:
        tokens_in, tokens_out = inp, outp
        parts = [(o.input_price, o.output_price, o.speed_part, o.quality_part) for o in ranking.options]
    # Summed in this order (cost, speed, quality, then the penalties, then the bonus): scores
    # are compared and rounded, so they must come out bit for bit the same on every path.
    scores = [w_cost * (1.0 - log1p((tokens_in * input_price + tokens_out * output_price) / unit) / log_span)
              + speed_part + quality_part
              for input_price, output_price, speed_part, quality_part in parts]
    flags: Sequence[int] = ranking.no_flags
    s = tables.policy.scoring
    window_need = inp + outp
    if window_need >= ranking.tightest:
        flags = [0] * len(scores)
        threshold = s.context_penalty_threshold
        for i, o in enumerate(ranking.options):
            if window_need >= o.tight_from:  # = window_need / context_window > threshold
                ratio = window_need / o.context_window
                scores[i] -= s.context_penalty * (ratio - threshold) / ((1.0 - threshold) or 1.0)
                flags[i] = 1
    generation = outp * 1000.0  # ms at one token per second
    if budget is not None and generation / ranking.slowest > budget:
        penalty = s.latency_penalty
        if generation / ranking.fastest > budget:  # every option is over the budget
            scores = [score - penalty for score in scores]
            flags = ranking.all_late if flags is ranking.no_flags else [f + 2 for f in flags]
        else:
            if flags is ranking.no_flags:
                flags = [0] * len(scores)
            options = ranking.options
            for i in ranking.by_speed:  # the slower an option, the sooner it is over
                if not generation / options[i].speed > budget:
                    break
                scores[i] -= penalty
                flags[i] += 2
    for i in ranking.bonus:
        scores[i] += s.requested_bonus
    return scores, flags


def _specs(order: tuple[Ranking, tuple[int, ...]], shape: RequestShape, common: tuple[str, ...],
           tables: RoutingTables) -> tuple[CandidateSpec, ...]:
    """The candidates that a ranking's options in this order (indexes, best first) make, but
    for their scores: remembered per order, which only changes where two scores cross."""
    ranking, ranked = order
    options = ranking.options
    count = shape.route.max_candidates
    # Only the candidates are ordered (the schema keeps max_candidates >= 1; else all are).
    ordered = _order(ranked, options, shape, count if count >= 1 else len(ranked))
    primary = options[ordered[0]]
    specs = []
    for i in ordered[:count]:
        o = options[i]
        m = o.model
        if o is primary:
            role, why = "primary", ()
        elif o.model_id == primary.model_id:
            role, why = "fallback", ("fallback:same_model",)
        elif o.rank < primary.rank:
            role, why = "fallback", (o.tier_down,)
        else:
            role, why = "fallback", ("fallback:score",)
        reasons = tuple(common + own + why for own in o.own)
        specs.append((i, m.id, m.provider, m.tier, reasons, role, o.key))
    found = tuple(specs)
    tables.remember_specs(order, found)
    return found


def _order(ranked: tuple[int, ...], options: Sequence[ModelOption], shape: RequestShape, count: int) -> list[int]:
    """The first `count` of: primary, the same model elsewhere, the fallback tier (default:
    the next tier down), the rest; each group best first."""
    first = ranked[0]
    if shape.pinned and not options[first].requested:
        first = next((i for i in ranked if options[i].requested), first)
    model_id, rank = options[first].model_id, options[first].rank
    rest = [i for i in ranked if i != first]
    same = [i for i in rest if options[i].model_id == model_id]
    others = [i for i in rest if options[i].model_id != model_id]
    below = max((options[i].rank for i in others if options[i].rank < rank), default=-1)
    target = shape.fallback_rank if shape.fallback_rank is not None else below
    tier = [i for i in others if options[i].rank == target]
    other = [i for i in others if options[i].rank != target]
    return [first, *same, *tier, *other][:count]


def _candidates(specs: tuple[CandidateSpec, ...], scores: list[float], flags: Sequence[int]) -> tuple[Candidate, ...]:
    """The candidates of `specs`, each with its score rounded and the reasons its score flags pick."""
    return tuple([new_candidate(model, provider, tier, _round4(scores[i]), reasons[flags[i]], role, key)
                  for i, model, provider, tier, reasons, role, key in specs])


def _content_fallback(specs: tuple[CandidateSpec, ...], scores: list[float], flags: Sequence[int]) -> Candidate:
    """The model for content-filter refusals: the best scored of its deployments that pass
    this request's hard constraints (the first of equals, as `specs` come cheapest first)."""
    best = specs[0]
    for spec in specs[1:]:
        if scores[spec[0]] > scores[best[0]]:
            best = spec
    i, model, provider, tier, reasons, role, key = best
    return new_candidate(model, provider, tier, _round4(scores[i]), reasons[flags[i]], role, key)


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
