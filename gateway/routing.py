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
intent, tier, risk, objective hint, needs) is worked out once into a cached `_Shape`; a
request then only checks its token counts and the breakers and scores what is left.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Mapping, Sequence
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
Scored = list[tuple["_Option", float, tuple[str, ...]]]

# A model's own reasons by (context tight, over the latency budget), made once.
_OWN = {
    (False, False): ("context_fit",),
    (False, True): ("context_fit", "latency_over_budget"),
    (True, False): ("context_tight",),
    (True, True): ("context_tight", "latency_over_budget"),
}
_MAX_SHAPES = 1024  # request shapes kept per (policy, catalog); the oldest goes first


def _listed(m: Model, names: frozenset[str]) -> bool:
    return m.id in names or m.key in names


@dataclass(slots=True, eq=False)
class _Option:
    """One catalog model as one request shape sees it. Only the token fit and the breaker are
    left for the request to check. Rejections are frozen, so they are made here once and
    shared by every plan of the shape."""

    model: Model
    early: Rejection | None  # static verdict, privacy or capability: rejected whatever the tokens
    late: Rejection | None  # a quality floor: checked after the token and breaker checks
    too_long: Rejection  # context_window
    too_much_output: Rejection  # max_output
    breaker_open: Rejection
    speed_part: float  # weight x normalized speed
    quality_part: float  # weight x normalized quality for the intent
    tie: int  # input + output price: equal scores go to the cheaper model
    requested: bool  # a deployment of the requested model
    bonus: bool  # gets the requested bonus (floor and auto modes)
    strong: bool  # meets the complexity need, or is pinned
    below_need: Rejection | None  # set when the need applies and the model misses it
    content_fallback: bool  # is the route's content fallback
    tier_down: str  # its fallback reason when it sits a tier below the primary


@dataclass(slots=True, eq=False)
class _Shape:
    """Everything a plan needs that follows from the request's categories (route, tenant,
    requested model, intent, tier, risk, objective hint, needs), not from its token counts,
    latency budget or the breakers."""

    route: Route
    settings: Tenant
    options: tuple[_Option, ...]  # catalog order, which is the order of `rejected`
    objective: str
    weights: Weights  # normalized, complexity boost included
    need_applies: bool
    mode: str | None
    requested_model: str | None  # as the plan reports it
    requested_reason: str  # "requested:<mode>"
    needed_tier: str
    common: tuple[str, ...]  # reasons every candidate carries
    # The common case, settled in advance: a request that fits every model the token and
    # breaker checks would see (`min_context`, `min_output`, `reachable_keys`) gets `settled`
    # as it is. None when nothing is eligible even then (the request fails on the full path).
    settled: "_Filtered | None" = None
    min_context: int = 0
    min_output: int = 0
    reachable_keys: frozenset[str] = frozenset()


@dataclass(slots=True, eq=False)
class _Filtered:
    """The hard constraints and the complexity need applied: who is left, who was rejected."""

    rejected: tuple[Rejection, ...]  # catalog order, then the models below the need
    eligible: tuple[_Option, ...]  # passed the hard constraints and, unless relaxed, the need
    hard_eligible: tuple[_Option, ...]  # passed the hard constraints
    relaxed: bool  # nothing met the need, so it was waived


class _Compiled:
    """What can be known before a request arrives, built once per (policy, catalog)."""

    def __init__(self, policy: Policy, catalog: Catalog) -> None:
        self.policy, self.catalog = policy, catalog
        self.version_tag = policy.version_tag
        speeds = [math.log(m.speed) for m in catalog.models]
        lo, hi = min(speeds), max(speeds)
        self.speed_norm = {m.key: (math.log(m.speed) - lo) / (hi - lo) if hi > lo else 1.0 for m in catalog.models}
        qualities = [q for m in catalog.models for q in m.quality.values()]
        self.q_lo, self.q_span = min(qualities), (max(qualities) - min(qualities)) or 1.0
        self.max_in = max(m.input_micros_per_mtok for m in catalog.models)
        self.max_out = max(m.output_micros_per_mtok for m in catalog.models)
        # The rejections of the per-request checks (context window, output limit, breaker).
        self.fit_rejections = {
            m.key: tuple(Rejection(m.id, m.provider, r) for r in ("context_window", "max_output", "breaker_open"))
            for m in catalog.models
        }
        self._quality: dict[str, Quality] = {}
        self._static: dict[tuple[str, str], Static] = {}
        self._shapes: dict[tuple[object, ...], _Shape] = {}

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

    def shape(self, route: Route, settings: Tenant, requested_model: str | None, c: Classification) -> _Shape:
        hint = c.objective if c.objective in self.policy.objectives else None
        needs = frozenset(c.needs)  # the same object when it already is one
        # Route and tenant by identity (the policy holds them, so ids stay theirs; the entry
        # checks identity anyway); the client-chosen strings in the key are bounded: an
        # unknown model or objective raises before anything is cached.
        key = (id(route), id(settings), requested_model, c.intent, c.tier, c.risk, hint, needs)
        found = self._shapes.get(key)
        if found is None or found.route is not route or found.settings is not settings:
            found = _build_shape(self, route, settings, requested_model, c, hint, needs)
            if len(self._shapes) >= _MAX_SHAPES:
                self._shapes.pop(next(iter(self._shapes)))
            self._shapes[key] = found
        return found


_CACHE: dict[tuple[int, int], _Compiled] = {}


def _compiled(policy: Policy, catalog: Catalog) -> _Compiled:
    entry = _CACHE.get((id(policy), id(catalog)))
    if entry is None or entry.policy is not policy or entry.catalog is not catalog:
        if len(_CACHE) >= 8:  # policies replaced by hot reloads
            _CACHE.pop(next(iter(_CACHE)))
        entry = _CACHE[(id(policy), id(catalog))] = _Compiled(policy, catalog)
    return entry


# ----------------------------------------------------------------------------- request shapes


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


def _build_shape(index: _Compiled, route: Route, settings: Tenant, requested_model: str | None,
                 c: Classification, hint: str | None, needs: frozenset[str]) -> _Shape:
    """Raises the request-level errors (unknown model, model not allowed); the per-request
    part of `plan` raises the one that depends on tokens and breakers (no eligible model)."""
    policy = index.policy
    requested, objective_override = _resolve_request(requested_model, policy, index.catalog)
    mode = settings.requested_model if requested else None
    requested_keys = frozenset(m.key for m in requested)
    static = index.static(route, settings)
    quality = index.quality(c.intent)
    floor = index.floor_model(settings)
    floor_q = quality[floor.key][0] if floor is not None else -1.0
    if mode in ("pinned", "floor"):
        _check_tenant_may_use(requested_keys, requested_model, static, quality, floor_q, settings)

    objective = objective_override or hint
    weights = policy.objectives[objective] if objective else route.weights
    objective = objective or route.objective
    need = policy.complexity.get(c.tier)
    weights = weights.normalized(need.quality_boost if need else 0.0)
    needed_rank = max(PRIVACY_RANK[settings.privacy_tier], RISK_PRIVACY.get(c.risk, 0))
    needed_tier = PRIVACY_TIERS[needed_rank]
    req_floor = requested[0] if mode == "floor" else None
    req_floor_q = quality[req_floor.key][0] if req_floor is not None else -1.0
    route_floor = route.quality_floor
    need_applies = need is not None and bool(need.quality_floor > 0 or need.min_tier)
    min_rank = TIER_RANK[need.min_tier] if need is not None and need.min_tier else 0

    options = []
    for m, reason, kind, static_rejection in static:
        is_requested = m.key in requested_keys
        pinned_here = is_requested and mode == "pinned"
        q, q_norm = quality[m.key]
        early = late = None
        # An explicit request may use a deprecated model, and a pinned one ignores the
        # route's tier bounds and quality floor: those shape its fallbacks only.
        if static_rejection is not None and not (
            is_requested and (reason == "lifecycle:deprecated" or (pinned_here and kind == "choice"))
        ):
            early = static_rejection
        elif m.privacy_rank < needed_rank:
            early = Rejection(m.id, m.provider, f"privacy:{needed_tier}")
        elif needs and not needs <= m.capabilities:
            early = Rejection(m.id, m.provider, "capability:" + ",".join(sorted(needs - m.capabilities)))
        # Then come the context window, the output limit and the breaker, per request.
        elif q < floor_q:
            late = Rejection(m.id, m.provider, f"below_floor:{settings.model_floor}")
        elif q < route_floor and not pinned_here:
            late = Rejection(m.id, m.provider, "quality_floor:route")
        elif req_floor is not None and (m.tier_rank < req_floor.tier_rank or q < req_floor_q):
            late = Rejection(m.id, m.provider, f"below_requested:{requested_model}")
        # The complexity need is soft: a tenant limited to small models still gets an answer.
        strong = pinned_here or (need is not None and q >= need.quality_floor and m.tier_rank >= min_rank)
        too_long, too_much_output, breaker_open = index.fit_rejections[m.key]
        options.append(_Option(
            model=m,
            early=early,
            late=late,
            too_long=too_long,
            too_much_output=too_much_output,
            breaker_open=breaker_open,
            speed_part=weights.speed * index.speed_norm[m.key],
            quality_part=weights.quality * q_norm,
            tie=m.input_micros_per_mtok + m.output_micros_per_mtok,
            requested=is_requested,
            bonus=is_requested and mode in ("floor", "auto"),
            strong=strong,
            below_need=Rejection(m.id, m.provider, f"below_need:{c.tier}") if need_applies and not strong else None,
            content_fallback=route.content_fallback is not None and route.content_fallback in (m.id, m.key),
            tier_down=f"fallback:tier_down:{m.tier}",
        ))

    common = (f"route:{route.name}", f"objective:{objective}", f"complexity:{c.tier}", f"privacy:{needed_tier}")
    if settings.model_floor:
        common += (f"floor:{settings.model_floor}",)
    shape = _Shape(
        route=route,
        settings=settings,
        options=tuple(options),
        objective=objective,
        weights=weights,
        need_applies=need_applies,
        mode=mode,
        requested_model=requested_model if requested else None,
        requested_reason=f"requested:{mode}",
        needed_tier=needed_tier,
        common=common,
    )
    reachable = [o.model for o in options if o.early is None]
    if reachable:
        shape.min_context = min(m.context_window for m in reachable)
        shape.min_output = min(m.max_output_tokens for m in reachable)
        shape.reachable_keys = frozenset(m.key for m in reachable)
        # No token count or breaker rejects anything here, so this is what every request
        # within those bounds gets.
        try:
            shape.settled = _filter(shape, 0, 0, frozenset())
        except RoutingError:
            pass  # nothing is eligible even so: such requests fail on the full path
    return shape


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


# ----------------------------------------------------------------------------- plan


def plan(c: Classification, *, tenant: str, requested_model: str | None, policy: Policy, catalog: Catalog,
         unavailable: frozenset[str] = frozenset()) -> RoutePlan:
    index = _compiled(policy, catalog)
    settings = policy.tenant(tenant)
    route = policy.route_for(c, tenant)
    shape = index.shape(route, settings, requested_model, c)

    window_need, out_tokens = c.input_tokens + c.output_tokens, c.output_tokens
    settled = shape.settled
    if (settled is not None and window_need <= shape.min_context and out_tokens <= shape.min_output
            and shape.reachable_keys.isdisjoint(unavailable)):
        filtered = settled
    else:
        filtered = _filter(shape, window_need, out_tokens, unavailable)
    eligible = filtered.eligible

    budget = c.latency_budget_ms or route.latency_budget_ms
    scored = _score(eligible, c, shape, budget, index, with_bonus=True)
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
        content_fallback=_content_fallback(filtered.hard_eligible, common, c, shape, budget, index),
        policy_version=index.version_tag,
        tenant=settings.name,
        requested_model=shape.requested_model,
        requested_mode=shape.mode,
        privacy_tier=shape.needed_tier,
    )


def _filter(shape: _Shape, window_need: int, out_tokens: int, unavailable: frozenset[str]) -> _Filtered:
    rejected: list[Rejection] = []
    eligible: list[_Option] = []
    for o in shape.options:
        m = o.model
        if o.early is not None:
            rejected.append(o.early)
        elif window_need > m.context_window:
            rejected.append(o.too_long)
        elif out_tokens > m.max_output_tokens:
            rejected.append(o.too_much_output)
        elif m.key in unavailable:
            rejected.append(o.breaker_open)
        elif o.late is not None:
            rejected.append(o.late)
        else:
            eligible.append(o)
    if not eligible:
        raise RoutingError(400, "no_eligible_model", _no_model_message(shape.route, rejected),
                           reasons=tuple(rejected))
    hard_eligible = eligible
    relaxed = False
    if shape.need_applies:
        strong = [o for o in eligible if o.strong]
        if not strong:
            relaxed = True
        elif len(strong) < len(eligible):
            rejected.extend(o.below_need for o in eligible if o.below_need is not None)
            eligible = strong
    return _Filtered(tuple(rejected), tuple(eligible), tuple(hard_eligible), relaxed)


def _best_first(t: tuple[_Option, float, tuple[str, ...]]) -> tuple[float, int]:
    # Best score first; ties go to the cheaper model, then to catalog order (the sort is stable).
    return -t[1], t[0].tie


def _score(options: Sequence[_Option], c: Classification, shape: _Shape, budget: int | None, index: _Compiled,
           with_bonus: bool) -> Scored:
    s = index.policy.scoring
    w_cost, log1p, log_span = shape.weights.cost, math.log1p, _LOG_COST_SPAN
    inp, outp = c.input_tokens, c.output_tokens
    # Cost is priced for this request's shape (input-heavy vs output-heavy) on a log scale
    # anchored to the dearest request the catalog could produce, so a score does not move
    # with whatever else happens to be eligible.
    unit = (inp * index.max_in + outp * index.max_out) / _COST_SPAN or 1.0
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


def _fallback_reason(o: _Option, primary: Model) -> str:
    m = o.model
    if m.id == primary.id:
        return "fallback:same_model"
    if m.tier_rank < primary.tier_rank:
        return o.tier_down
    return "fallback:score"


def _content_fallback(eligible: Sequence[_Option], common: tuple[str, ...], c: Classification, shape: _Shape,
                      budget: int | None, index: _Compiled) -> Candidate | None:
    """The model for content-filter refusals, only when it passes this request's hard constraints."""
    usable = [o for o in eligible if o.content_fallback]
    if not usable:
        return None
    o, score, own = _score(usable, c, shape, budget, index, with_bonus=False)[0]
    m = o.model
    return Candidate(m.id, m.provider, m.tier, round(score, 4), (*common, "content_fallback", *own), "fallback")


def _no_model_message(route: Route, rejected: list[Rejection]) -> str:
    by_reason: dict[str, list[str]] = {}
    for r in rejected:
        by_reason.setdefault(r.reason, []).append(r.model)
    parts = [f"{reason} ({', '.join(models)})" for reason, models in by_reason.items()]
    return f"No model satisfies the constraints of route '{route.name}': " + "; ".join(parts)
