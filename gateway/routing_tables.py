"""What routing can work out before a request's token counts and the breakers are known.

Per (policy, catalog), once: `RoutingTables`, with every model's normalized speed and
quality, the price anchors of the cost score, and each model's static verdict per (route,
tenant). Per request shape (route, tenant, requested model, intent, tier, risk, objective
hint, needs): a `RequestShape`, every model's verdict and score parts for that shape, and the
outcome of the hard constraints for a request that fits every model with no breaker open.
`apply_constraints` checks what needs the request itself (its token fit and the breakers),
then the complexity need; `eligibility` remembers its outcome per shape by what decides it:
which of the shape's limits the tokens exceed and which breakers are open. A shape is also
found straight from the request's categories (`RoutingTables.lookup`): tenant, requested
model and labels give the tenant settings, the route and the shape in one dictionary lookup.

Every cache is bounded. Tables are keyed by the identity of the policy and catalog, shapes
by that of the route and tenant settings, and an entry checks that identity again, so a
hot-reloaded policy never meets a table built for its predecessor.
"""

from __future__ import annotations

import math
from bisect import bisect_left
from typing import Mapping

from .catalog import PRIVACY_RANK, PRIVACY_TIERS, TIER_RANK, Catalog, Model
from .classify import Classification
from .policy import Policy, Route, Tenant
from .routing_types import (
    OWN_REASONS,
    CandidateSpec,
    Eligibility,
    ModelOption,
    Rejection,
    Ranking,
    RequestShape,
    RoutingError,
    new_ranking,
)

# The privacy tier a request's risk class needs at least.
RISK_PRIVACY = {"low": 0, "medium": 0, "high": PRIVACY_RANK["restricted"], "regulated": PRIVACY_RANK["regulated"]}
VIRTUAL_OBJECTIVES = {"auto:cost": "cost_speed"}

Quality = Mapping[str, tuple[float, float]]  # deployment key -> (quality for an intent, normalized)
# Per model: (model, reason or None, kind: tenant | route | choice, the Rejection ready-made).
Static = tuple[tuple[Model, "str | None", str, "Rejection | None"], ...]
_MAX_SHAPES = 1024  # request shapes kept per (policy, catalog); the oldest goes first
_MAX_ORDERS = 4096  # candidate lists kept per (policy, catalog), by ranking and order; the oldest goes first
def _tight_from(context_window: int, threshold: float) -> int:
    """The fewest tokens w with w / context_window > threshold, the test that makes a context
    tight. w / context_window only grows with w, so `tokens >= this` is that same test."""
    if not -1e9 < threshold < 1e9:  # NaN or huge: tight never, or always
        return -(1 << 62) if threshold < 0 else 1 << 62
    w = math.floor(threshold * context_window)
    while (w - 1) / context_window > threshold:
        w -= 1
    while not w / context_window > threshold:
        w += 1
    return w


def _listed(m: Model, names: frozenset[str]) -> bool:
    return m.id in names or m.key in names


class RoutingTables:
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
        threshold = policy.scoring.context_penalty_threshold
        self.tight_from = {m.key: _tight_from(m.context_window, threshold) for m in catalog.models}
        self._quality: dict[str, Quality] = {}
        self._static: dict[tuple[str, str], Static] = {}
        self._shapes: dict[tuple[object, ...], RequestShape] = {}
        self._by_request: dict[tuple[object, ...], RequestShape] = {}
        # (ranking, its option indexes best first) -> the candidates that order makes, but
        # for their scores (see routing._specs).
        self.specs: dict[tuple[Ranking, tuple[int, ...]], tuple[CandidateSpec, ...]] = {}
        # Routes are tried in order; up to the first with a score bound, which one matches
        # follows from the request's categories alone.
        self._categorical_routes = next(
            (i for i, r in enumerate(policy.routes) if r.match.min_score is not None or r.match.max_score is not None),
            len(policy.routes),
        )

    def lookup(self, c: Classification, tenant: str, requested_model: str | None) -> RequestShape:
        """The shape of a request: its tenant settings, its route (`policy.route_for`) and
        what follows from its categories. Remembered by those categories when the route
        chosen does not depend on the complexity score, which is all a shape needs."""
        needs = c.needs
        if type(needs) is not frozenset:
            needs = frozenset(needs)
        key = (tenant, requested_model, c.intent, c.tier, c.risk, c.format, c.latency_class, c.objective, needs)
        found = self._by_request.get(key)
        if found is None:
            policy = self.policy
            route = policy.route_for(c, tenant)
            found = self.shape(route, policy.tenant(tenant), requested_model, c)
            if self._decided_by_categories(route):
                if len(self._by_request) >= _MAX_SHAPES:
                    self._by_request.pop(next(iter(self._by_request)))
                self._by_request[key] = found
        return found

    def _decided_by_categories(self, route: Route) -> bool:
        """Whether no route up to `route` (the one route_for chose; every route when it fell
        through to the last) has a score bound: then every route tried matched or failed on
        categories (tenant, intent, tier, risk, format, latency class) alone."""
        position = next(i for i, r in enumerate(self.policy.routes) if r is route)
        return position < self._categorical_routes

    def remember_specs(self, key: tuple[Ranking, tuple[int, ...]], specs: tuple[CandidateSpec, ...]) -> None:
        if len(self.specs) >= _MAX_ORDERS:
            self.specs.pop(next(iter(self.specs)))
        self.specs[key] = specs

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

    def shape(self, route: Route, settings: Tenant, requested_model: str | None, c: Classification) -> RequestShape:
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


_TABLES: dict[tuple[int, int], RoutingTables] = {}
_latest: RoutingTables | None = None  # the last one asked for


def tables_for(policy: Policy, catalog: Catalog) -> RoutingTables:
    entry = _latest
    if entry is not None and entry.policy is policy and entry.catalog is catalog:
        return entry  # the policy in force: every request but those of a reload's last moments
    return _tables_for(policy, catalog)


def _tables_for(policy: Policy, catalog: Catalog) -> RoutingTables:
    global _latest
    entry = _TABLES.get((id(policy), id(catalog)))
    if entry is None or entry.policy is not policy or entry.catalog is not catalog:
        if len(_TABLES) >= 8:  # policies replaced by hot reloads
            _TABLES.pop(next(iter(_TABLES)))
        entry = _TABLES[(id(policy), id(catalog))] = RoutingTables(policy, catalog)
    _latest = entry
    return entry


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


def _build_shape(tables: RoutingTables, route: Route, settings: Tenant, requested_model: str | None,
                 c: Classification, hint: str | None, needs: frozenset[str]) -> RequestShape:
    """Raises the request-level errors (unknown model, model not allowed); `apply_constraints`
    raises the one that depends on tokens and breakers (no eligible model)."""
    policy = tables.policy
    requested, objective_override = _resolve_request(requested_model, policy, tables.catalog)
    mode = settings.requested_model if requested else None
    requested_keys = frozenset(m.key for m in requested)
    static = tables.static(route, settings)
    quality = tables.quality(c.intent)
    floor = tables.floor_model(settings)
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
    requested_reason = f"requested:{mode}"
    led = tuple((requested_reason, *own) for own in OWN_REASONS)

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
        too_long, too_much_output, breaker_open = tables.fit_rejections[m.key]
        speed_part = weights.speed * tables.speed_norm[m.key]
        quality_part = weights.quality * q_norm
        options.append(ModelOption(
            model=m,
            key=m.key,
            model_id=m.id,
            rank=m.tier_rank,
            input_price=m.input_micros_per_mtok,
            output_price=m.output_micros_per_mtok,
            context_window=m.context_window,
            tight_from=tables.tight_from[m.key],
            speed=m.speed,
            early=early,
            late=late,
            too_long=too_long,
            too_much_output=too_much_output,
            breaker_open=breaker_open,
            speed_part=speed_part,
            quality_part=quality_part,
            score_parts=(float(m.input_micros_per_mtok), float(m.output_micros_per_mtok), speed_part, quality_part),
            tie=m.input_micros_per_mtok + m.output_micros_per_mtok,
            requested=is_requested,
            bonus=is_requested and mode in ("floor", "auto"),
            strong=strong,
            below_need=Rejection(m.id, m.provider, f"below_need:{c.tier}") if need_applies and not strong else None,
            content_fallback=route.content_fallback is not None and route.content_fallback in (m.id, m.key),
            tier_down=f"fallback:tier_down:{m.tier}",
            own=led if is_requested else OWN_REASONS,
        ))

    common = (f"route:{route.name}", f"objective:{objective}", f"complexity:{c.tier}", f"privacy:{needed_tier}")
    if settings.model_floor:
        common += (f"floor:{settings.model_floor}",)
    reported_model = requested_model if requested else None
    plan_fields: dict[str, object] = {
        "candidates": (),
        "rejected": (),
        "route": route.name,
        "objective": objective,
        "weights": weights,
        "latency_budget_ms": None,
        "degradation": route.degradation,
        "content_fallback": None,
        "policy_version": tables.version_tag,
        "tenant": settings.name,
        "requested_model": reported_model,
        "requested_mode": mode,
        "privacy_tier": needed_tier,
    }
    shape = RequestShape(
        route=route,
        settings=settings,
        options=tuple(options),
        objective=objective,
        weights=weights,
        need_applies=need_applies,
        mode=mode,
        requested_model=reported_model,
        requested_reason=requested_reason,
        needed_tier=needed_tier,
        common=common,
        pinned=mode == "pinned",
        fallback_rank=TIER_RANK[route.fallback_tier] if route.fallback_tier is not None else None,
        plan_fields=plan_fields,
    )
    reachable = [o.model for o in options if o.early is None]
    if reachable:
        shape.context_limits = tuple(sorted({m.context_window for m in reachable}))
        shape.output_limits = tuple(sorted({m.max_output_tokens for m in reachable}))
        shape.min_context = shape.context_limits[0]
        shape.min_output = shape.output_limits[0]
        shape.reachable_keys = frozenset(m.key for m in reachable)
        # No token count or breaker rejects anything here, so this is what every request
        # within those bounds gets.
        try:
            shape.settled = apply_constraints(shape, 0, 0, frozenset())
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


def eligibility(shape: RequestShape, window_need: int, out_tokens: int, unavailable: frozenset[str]) -> Eligibility:
    """`apply_constraints`, remembered per shape by what decides its outcome: which of the
    shape's context windows and output limits the request exceeds (the models its tokens
    rule out) and which of its models' breakers are open. A request within every limit with
    no breaker open gets the shape's `settled` outcome."""
    settled = shape.settled
    if (settled is not None and window_need <= shape.min_context and out_tokens <= shape.min_output
            and shape.reachable_keys.isdisjoint(unavailable)):
        return settled
    key = (bisect_left(shape.context_limits, window_need), bisect_left(shape.output_limits, out_tokens),
           shape.reachable_keys.intersection(unavailable))
    found = shape.eligibilities.get(key)
    if found is None:
        found = apply_constraints(shape, window_need, out_tokens, unavailable)  # raises when nobody is left: not kept
        if len(shape.eligibilities) >= 16:  # a few token buckets and breaker sets at a time
            shape.eligibilities.clear()
        shape.eligibilities[key] = found
    return found


def apply_constraints(shape: RequestShape, window_need: int, out_tokens: int,
                      unavailable: frozenset[str]) -> Eligibility:
    """The checks that need the request (its context and output fit, the breakers in
    `unavailable`), then the complexity need; raises no_eligible_model when nobody is left."""
    rejected: list[Rejection] = []
    eligible: list[ModelOption] = []
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
    content_options = [o for o in eligible if o.content_fallback]  # the need does not apply to it
    common = shape.common
    if shape.need_applies:
        strong = [o for o in eligible if o.strong]
        if not strong:
            common += ("need_relaxed",)
        elif len(strong) < len(eligible):
            rejected.extend(o.below_need for o in eligible if o.below_need is not None)
            eligible = strong
    if shape.pinned and not any(o.requested for o in eligible):
        common += ("requested:pinned_unavailable",)
    ranking = new_ranking(tuple(eligible), with_bonus=True)
    content_specs, content_ranking = _content_specs(content_options, ranking, common)
    return Eligibility(tuple(rejected), common, ranking, content_specs, content_ranking)


def _content_specs(content_options: list[ModelOption], ranking: Ranking,
                   common: tuple[str, ...]) -> tuple[tuple[CandidateSpec, ...], Ranking | None]:
    """The content fallback's deployments as candidates, cheapest first (how equal scores
    rank), and the ranking that scores them: the candidates' own when each is among them
    without a requested bonus (its score is then the same), else one of their own."""
    index = {o: i for i, o in enumerate(ranking.options)}
    content_ranking = None
    if not all(o in index and not o.bonus for o in content_options):
        content_ranking = new_ranking(tuple(content_options), with_bonus=False)
        index = {o: i for i, o in enumerate(content_ranking.options)}
    cheapest_first = sorted(content_options, key=lambda o: (o.tie, index[o]))
    specs = tuple(
        (index[o], o.model.id, o.model.provider, o.model.tier,
         tuple((*common, "content_fallback", *own) for own in OWN_REASONS), "fallback", o.key)
        for o in cheapest_first
    )
    return specs, content_ranking


def _no_model_message(route: Route, rejected: list[Rejection]) -> str:
    by_reason: dict[str, list[str]] = {}
    for r in rejected:
        by_reason.setdefault(r.reason, []).append(r.model)
    parts = [f"{reason} ({', '.join(models)})" for reason, models in by_reason.items()]
    return f"No model satisfies the constraints of route '{route.name}': " + "; ".join(parts)
