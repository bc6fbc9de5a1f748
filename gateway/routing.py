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
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Mapping
from gateway.classify import Classification

from .catalog import PRIVACY_RANK, PRIVACY_TIERS, TIER_RANK, Catalog, Model
from .policy import Degradation, Policy, Route, Tenant, Weights

# The privacy tier a request's risk class needs at least.
RISK_PRIVACY = {"low": 0, "medium": 0, "high": PRIVACY_RANK["restricted"], "regulated": PRIVACY_RANK["regulated"]}
VIRTUAL_OBJECTIVES = {"auto:cost": "cost_speed"}
# Cost scores fall on a log scale over this span below the dearest possible request
# (about the spread of paid list prices in a real catalog).
_COST_SPAN = 100.0
_LOG_COST_SPAN = math.log1p(_COST_SPAN)


@dataclass(frozen=True)
class Candidate:
    model: str
    provider: str
    tier: str
    score: float
    reasons: tuple[str, ...]
    role: str  # "primary" | "fallback"

    @property
    def key(self) -> str:
        return f"{self.provider}/{self.model}"


@dataclass(frozen=True)
class Rejection:
    model: str
    provider: str
    reason: str


@dataclass(frozen=True)
class RoutePlan:
    candidates: tuple[Candidate, ...]  # primary first
    rejected: tuple[Rejection, ...]
    route: str
    objective: str
    weights: Weights  # normalized, complexity boost included
    latency_budget_ms: int | None
    degradation: Degradation
    content_fallback: Candidate | None
    policy_version: str
    tenant: str  # the tenant settings applied ("default" for an unlisted tenant)
    requested_model: str | None
    requested_mode: str | None  # pinned | floor | auto, None for virtual/absent
    privacy_tier: str  # the tier every candidate is cleared for

    @property
    def primary(self) -> Candidate:
        return self.candidates[0]


class RoutingError(Exception):
    """A request the policy cannot route; maps onto an OpenAI-shaped error."""

    def __init__(self, status: int, code: str, message: str, *, param: str | None = None,
                 reasons: tuple[Rejection, ...] = ()) -> None:
        super().__init__(message)
        self.status, self.code, self.message, self.param, self.reasons = status, code, message, param, reasons


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


# ----------------------------------------------------------------------------- compiled index

Quality = Mapping[str, tuple[float, float]]  # deployment key -> (quality for an intent, normalized)
# Per model: (model, reason or None, kind: tenant | route | choice, the Rejection ready-made).
Static = tuple[tuple[Model, "str | None", str, "Rejection | None"], ...]
Scored = list[tuple[Model, float, tuple[str, ...]]]


def _listed(m: Model, names: frozenset[str]) -> bool:
    return m.id in names or m.key in names


class _Compiled:
    """What can be known before a request arrives, built once per (policy, catalog)."""

    def __init__(self, policy: Policy, catalog: Catalog) -> None:
        self.policy, self.catalog = policy, catalog
        speeds = [math.log(m.speed) for m in catalog.models]
        lo, hi = min(speeds), max(speeds)
        self.speed_norm = {m.key: (math.log(m.speed) - lo) / (hi - lo) if hi > lo else 1.0 for m in catalog.models}
        qualities = [q for m in catalog.models for q in m.quality.values()]
        self.q_lo, self.q_span = min(qualities), (max(qualities) - min(qualities)) or 1.0
        self.max_in = max(m.input_micros_per_mtok for m in catalog.models)
        self.max_out = max(m.output_micros_per_mtok for m in catalog.models)
        self._quality: dict[str, Quality] = {}
        self._static: dict[tuple[str, str], Static] = {}

    def quality(self, intent: str) -> Quality:
        found = self._quality.get(intent)
        if found is None:
            if len(self._quality) >= 256:  # intents are a small set, but hints could be anything
                self._quality.clear()
            found = self._quality[intent] = {
                m.key: (q, (q - self.q_lo) / self.q_span) for m in self.catalog.models for q in (m.quality_for(intent),)
            }
        return found

    def static(self, route: Route, tenant: Tenant) -> Static:
        key = (route.name, tenant.name)
        found = self._static.get(key)
        if found is None:
            verdicts = [(m, *self._verdict(m, route, tenant)) for m in self.catalog.models]
            found = self._static[key] = tuple(
                (m, reason, kind, Rejection(m.id, m.provider, reason) if reason else None)
                for m, reason, kind in verdicts
            )
        return found

    def _verdict(self, m: Model, route: Route, tenant: Tenant) -> tuple[str | None, str]:
        if tenant.allowed_models and not _listed(m, tenant.allowed_models):
            return "not_allowed:tenant", "tenant"
        if _listed(m, tenant.denied_models):
            return "denied:tenant", "tenant"
        if tenant.allowed_regions is not None and not m.regions <= tenant.allowed_regions:
            return "region", "tenant"
        if m.privacy_rank < PRIVACY_RANK[tenant.privacy_tier]:
            return f"privacy:{tenant.privacy_tier}", "tenant"
        floor = self.floor_model(tenant)
        if floor is not None and m.tier_rank < floor.tier_rank:
            return f"below_floor:{tenant.model_floor}", "tenant"
        allowed_here = _listed(m, route.allow_models) or _listed(m, tenant.allowed_models)
        if m.lifecycle == "experimental" and not allowed_here:
            return "lifecycle:experimental", "tenant"
        if route.allow_models and not _listed(m, route.allow_models):
            return "not_allowed:route", "route"
        if _listed(m, route.deny_models):
            return "denied:route", "route"
        if m.lifecycle == "deprecated" and not allowed_here:
            return "lifecycle:deprecated", "route"
        if (route.min_tier and m.tier_rank < TIER_RANK[route.min_tier]) or (
            route.max_tier and m.tier_rank > TIER_RANK[route.max_tier]
        ):
            return "tier_bounds:route", "choice"
        return None, ""

    def floor_model(self, tenant: Tenant) -> Model | None:
        return self.catalog.resolve(tenant.model_floor)[0] if tenant.model_floor else None


_CACHE: dict[tuple[int, int], _Compiled] = {}


def _compiled(policy: Policy, catalog: Catalog) -> _Compiled:
    entry = _CACHE.get((id(policy), id(catalog)))
    if entry is None or entry.policy is not policy or entry.catalog is not catalog:
        if len(_CACHE) >= 8:  # policies replaced by hot reloads
            _CACHE.pop(next(iter(_CACHE)))
        entry = _CACHE[(id(policy), id(catalog))] = _Compiled(policy, catalog)
    return entry


# ----------------------------------------------------------------------------- plan


def _resolve_request(requested: str | None, policy: Policy, catalog: Catalog) -> tuple[tuple[Model, ...], str | None]:
    """-> (the requested model's deployments, objective override of a virtual model)."""
    if requested is None or requested == "auto":
        return (), None
    if requested.startswith("auto:"):
        name = VIRTUAL_OBJECTIVES.get(requested, requested[5:])
        if name not in policy.objectives:
            virtual = ", ".join(["auto", "auto:cost", *(f"auto:{o}" for o in policy.objectives)])
            raise RoutingError(404, "model_not_found", f"The model '{requested}' does not exist "
                               f"(virtual models: {virtual})", param="model")
        return (), name
    found = catalog.resolve(requested)
    if not found:
        raise RoutingError(404, "model_not_found", f"The model '{requested}' does not exist", param="model")
    return found, None


def plan(c: Classification, *, tenant: str, requested_model: str | None, policy: Policy, catalog: Catalog,
         unavailable: frozenset[str] = frozenset()) -> RoutePlan:
    index = _compiled(policy, catalog)
    settings = policy.tenant(tenant)
    route = policy.route_for(c, tenant)
    requested, objective_override = _resolve_request(requested_model, policy, catalog)
    mode = settings.requested_model if requested else None
    requested_keys = frozenset(m.key for m in requested)
    static = index.static(route, settings)
    quality = index.quality(c.intent)
    floor = index.floor_model(settings)
    floor_q = quality[floor.key][0] if floor is not None else -1.0
    if mode in ("pinned", "floor"):
        _check_tenant_may_use(requested_keys, requested_model, static, quality, floor_q, settings)

    objective = objective_override or (c.objective if c.objective in policy.objectives else None)
    weights = policy.objectives[objective] if objective else route.weights
    objective = objective or route.objective
    need = policy.complexity.get(c.tier)
    weights = weights.normalized(need.quality_boost if need else 0.0)
    budget = c.latency_budget_ms or route.latency_budget_ms
    needed_rank = max(PRIVACY_RANK[settings.privacy_tier], RISK_PRIVACY.get(c.risk, 0))
    needed_tier = PRIVACY_TIERS[needed_rank]
    window_need, needs, out_tokens = c.input_tokens + c.output_tokens, c.needs, c.output_tokens
    req_floor = requested[0] if mode == "floor" else None
    req_floor_q = quality[req_floor.key][0] if req_floor is not None else -1.0
    route_floor = route.quality_floor

    rejected: list[Rejection] = []
    eligible: list[Model] = []
    for m, reason, kind, static_rejection in static:
        is_requested = m.key in requested_keys
        pinned_here = is_requested and mode == "pinned"
        # An explicit request may use a deprecated model, and a pinned one ignores the
        # route's tier bounds and quality floor: those shape its fallbacks only.
        if static_rejection is not None and not (
            is_requested and (reason == "lifecycle:deprecated" or (pinned_here and kind == "choice"))
        ):
            rejected.append(static_rejection)
            continue
        if m.privacy_rank < needed_rank:
            reason = f"privacy:{needed_tier}"
        elif needs and not needs <= m.capabilities:
            reason = "capability:" + ",".join(sorted(needs - m.capabilities))
        elif window_need > m.context_window:
            reason = "context_window"
        elif out_tokens > m.max_output_tokens:
            reason = "max_output"
        elif m.key in unavailable:
            reason = "breaker_open"
        else:
            q = quality[m.key][0]
            if q < floor_q:
                reason = f"below_floor:{settings.model_floor}"
            elif q < route_floor and not pinned_here:
                reason = "quality_floor:route"
            elif req_floor is not None and (m.tier_rank < req_floor.tier_rank or q < req_floor_q):
                reason = f"below_requested:{requested_model}"
            else:
                eligible.append(m)
                continue
        rejected.append(Rejection(m.id, m.provider, reason))

    if not eligible:
        raise RoutingError(400, "no_eligible_model", _no_model_message(route, rejected), reasons=tuple(rejected))
    hard_eligible = eligible

    # The complexity need is soft: a tenant limited to small models still gets an answer.
    relaxed = False
    if need is not None and (need.quality_floor > 0 or need.min_tier):
        min_rank = TIER_RANK[need.min_tier] if need.min_tier else 0
        strong = [m for m in eligible if (quality[m.key][0] >= need.quality_floor and m.tier_rank >= min_rank)
                  or (mode == "pinned" and m.key in requested_keys)]
        if not strong:
            relaxed = True
        elif len(strong) < len(eligible):
            kept = {m.key for m in strong}
            rejected.extend(Rejection(m.id, m.provider, f"below_need:{c.tier}") for m in eligible if m.key not in kept)
            eligible = strong

    bonus_keys = requested_keys if mode in ("floor", "auto") else frozenset()
    scored = _score(eligible, c, weights, budget, policy, index, quality, bonus_keys)
    ordered = _order(scored, route, requested_keys if mode == "pinned" else frozenset())

    common = (f"route:{route.name}", f"objective:{objective}", f"complexity:{c.tier}", f"privacy:{needed_tier}")
    if settings.model_floor:
        common += (f"floor:{settings.model_floor}",)
    if relaxed:
        common += ("need_relaxed",)
    if mode == "pinned" and not any(m.key in requested_keys for m in eligible):
        common += ("requested:pinned_unavailable",)
    primary = ordered[0][0]
    candidates = []
    for i, (m, score, own) in enumerate(ordered[: route.max_candidates]):
        extra = own if i == 0 else (*own, _fallback_reason(m, primary))
        if m.key in requested_keys:
            extra = (f"requested:{mode}", *extra)
        candidates.append(Candidate(m.id, m.provider, m.tier, round(score, 4), common + extra,
                                    "primary" if i == 0 else "fallback"))

    return RoutePlan(
        candidates=tuple(candidates),
        rejected=tuple(rejected),
        route=route.name,
        objective=objective,
        weights=weights,
        latency_budget_ms=budget,
        degradation=route.degradation,
        content_fallback=_content_fallback(route, hard_eligible, common, c, weights, budget, policy, index, quality),
        policy_version=policy.version_tag,
        tenant=settings.name,
        requested_model=requested_model if requested else None,
        requested_mode=mode,
        privacy_tier=needed_tier,
    )


def _check_tenant_may_use(keys: frozenset[str], name: str | None, static: Static, quality: Quality,
                          floor_q: float, tenant: Tenant) -> None:
    """403 unless at least one deployment of an explicitly named model is open to the tenant."""
    reasons = []
    for m, reason, kind, _ in static:
        if m.key not in keys:
            continue
        if reason is not None and kind == "tenant":
            reasons.append(Rejection(m.id, m.provider, reason))
        elif quality[m.key][0] < floor_q:
            reasons.append(Rejection(m.id, m.provider, f"below_floor:{tenant.model_floor}"))
        else:
            return
    why = ", ".join(sorted({r.reason for r in reasons}))
    raise RoutingError(403, "model_not_allowed", f"The model '{name}' is not allowed for this tenant ({why})",
                       param="model", reasons=tuple(reasons))


def _score(eligible: list[Model], c: Classification, w: Weights, budget: int | None, policy: Policy,
           index: _Compiled, quality: Quality, bonus_keys: frozenset[str]) -> Scored:
    s = policy.scoring
    # Cost is priced for this request's shape (input-heavy vs output-heavy) on a log scale
    # anchored to the dearest request the catalog could produce, so a score does not move
    # with whatever else happens to be eligible.
    unit = (c.input_tokens * index.max_in + c.output_tokens * index.max_out) / _COST_SPAN or 1.0
    window_need = c.input_tokens + c.output_tokens
    threshold = s.context_penalty_threshold
    out: Scored = []
    for m in eligible:
        cost = c.input_tokens * m.input_micros_per_mtok + c.output_tokens * m.output_micros_per_mtok
        score = (
            w.cost * (1.0 - math.log1p(cost / unit) / _LOG_COST_SPAN)
            + w.speed * index.speed_norm[m.key]
            + w.quality * quality[m.key][1]
        )
        ratio = window_need / m.context_window
        if ratio > threshold:
            score -= s.context_penalty * (ratio - threshold) / ((1.0 - threshold) or 1.0)
            own: tuple[str, ...] = ("context_tight",)
        else:
            own = ("context_fit",)
        if budget is not None and c.output_tokens * 1000.0 / m.speed > budget:
            score -= s.latency_penalty
            own += ("latency_over_budget",)
        if m.key in bonus_keys:
            score += s.requested_bonus
        out.append((m, score, own))
    # Best score first; ties go to the cheaper model, then to catalog order (the sort is stable).
    out.sort(key=lambda t: (-t[1], t[0].input_micros_per_mtok + t[0].output_micros_per_mtok))
    return out


def _order(scored: Scored, route: Route, pinned_keys: frozenset[str]) -> Scored:
    """Primary, the same model elsewhere, the fallback tier (default: next tier down), the rest."""
    primary = next((t for t in scored if t[0].key in pinned_keys), scored[0])
    rest = [t for t in scored if t is not primary]
    same = [t for t in rest if t[0].id == primary[0].id]
    rest = [t for t in rest if t[0].id != primary[0].id]
    if route.fallback_tier is not None:
        target: int | None = TIER_RANK[route.fallback_tier]
    else:
        lower = [t[0].tier_rank for t in rest if t[0].tier_rank < primary[0].tier_rank]
        target = max(lower) if lower else None
    return [primary, *same, *(t for t in rest if t[0].tier_rank == target), *(t for t in rest if t[0].tier_rank != target)]


def _fallback_reason(m: Model, primary: Model) -> str:
    if m.id == primary.id:
        return "fallback:same_model"
    if m.tier_rank < primary.tier_rank:
        return f"fallback:tier_down:{m.tier}"
    return "fallback:score"


def _content_fallback(route: Route, eligible: list[Model], common: tuple[str, ...], c: Classification,
                      weights: Weights, budget: int | None, policy: Policy, index: _Compiled,
                      quality: Quality) -> Candidate | None:
    """The model for content-filter refusals, only when it passes this request's hard constraints."""
    if route.content_fallback is None:
        return None
    usable = [m for m in eligible if m.id == route.content_fallback or m.key == route.content_fallback]
    if not usable:
        return None
    m, score, own = _score(usable, c, weights, budget, policy, index, quality, frozenset())[0]
    return Candidate(m.id, m.provider, m.tier, round(score, 4), (*common, "content_fallback", *own), "fallback")


def _no_model_message(route: Route, rejected: list[Rejection]) -> str:
    by_reason: dict[str, list[str]] = {}
    for r in rejected:
        by_reason.setdefault(r.reason, []).append(r.model)
    parts = [f"{reason} ({', '.join(models)})" for reason, models in by_reason.items()]
    return f"No model satisfies the constraints of route '{route.name}': " + "; ".join(parts)
