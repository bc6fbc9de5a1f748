"""What routing hands on: the plan, its candidates and rejections, and the error for a request
the policy cannot route (import them from gateway.routing); and the records routing_tables.py
keeps per request shape (ModelOption, RequestShape, Eligibility), which routing.py reads.

They sit in a module of their own because routing_tables.py makes rejections and raises the
request-level errors, and routing.py imports routing_tables.py: defined in routing.py, they
would make the two modules import each other.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

from .catalog import Model
from .policy import Degradation, Route, Tenant, Weights


@dataclass(frozen=True)
class Candidate:
    model: str
    provider: str
    tier: str
    score: float
    reasons: tuple[str, ...]
    role: str  # "primary" | "fallback"

    # Cached, not a field: a request reads it several times (deployments, the admission,
    # the reservation), and the router hands it over already made.
    @cached_property
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


# A model's own reasons by the flags its score sets: 1 context tight, 2 over the latency budget.
OWN_REASONS = (
    ("context_fit",),
    ("context_tight",),
    ("context_fit", "latency_over_budget"),
    ("context_tight", "latency_over_budget"),
)


@dataclass(slots=True, eq=False)
class ModelOption:
    """One catalog model as one request shape sees it. Only the token fit and the breaker are
    left for the request to check. Rejections are frozen, so they are made here once and
    shared by every plan of the shape."""

    model: Model
    # Copied from the model: scoring and ordering read them for every eligible model.
    key: str
    model_id: str
    rank: int  # tier rank
    input_price: int  # micro-USD per 1M tokens
    output_price: int
    context_window: int
    tight_from: int  # the fewest tokens (input + output) that make the context tight
    speed: float
    early: Rejection | None  # static verdict, privacy or capability: rejected whatever the tokens
    late: Rejection | None  # a quality floor: checked after the token and breaker checks
    too_long: Rejection  # context_window
    too_much_output: Rejection  # max_output
    breaker_open: Rejection
    speed_part: float  # weight x normalized speed
    quality_part: float  # weight x normalized quality for the intent
    score_parts: tuple[float, float, float, float]  # input price, output price (as floats), speed and quality parts
    tie: int  # input + output price: equal scores go to the cheaper model
    requested: bool  # a deployment of the requested model
    bonus: bool  # gets the requested bonus (floor and auto modes)
    strong: bool  # meets the complexity need, or is pinned
    below_need: Rejection | None  # set when the need applies and the model misses it
    content_fallback: bool  # is the route's content fallback
    tier_down: str  # its fallback reason when it sits a tier below the primary
    own: tuple[tuple[str, ...], ...]  # its reasons by score flags (OWN_REASONS), led by requested:<mode>


@dataclass(slots=True, eq=False)
class RequestShape:
    """Everything a plan needs that follows from the request's categories (route, tenant,
    requested model, intent, tier, risk, objective hint, needs), not from its token counts,
    latency budget or the breakers."""

    route: Route
    settings: Tenant
    options: tuple[ModelOption, ...]  # catalog order, which is the order of `rejected`
    objective: str
    weights: Weights  # normalized, complexity boost included
    need_applies: bool
    mode: str | None
    requested_model: str | None  # as the plan reports it
    requested_reason: str  # "requested:<mode>"
    needed_tier: str
    common: tuple[str, ...]  # reasons every candidate carries
    pinned: bool  # mode == "pinned"
    fallback_rank: int | None  # the route's fallback tier, ranked
    # The plan's fields that follow from the shape, in field order; a plan copies it and
    # fills in candidates, rejected, latency_budget_ms and content_fallback.
    plan_fields: dict[str, object]
    # The common case, settled in advance: a request that fits every model the token and
    # breaker checks would see (`min_context`, `min_output`, `reachable_keys`) gets `settled`
    # as it is. None when nothing is eligible even then (the request fails on the full path).
    settled: Eligibility | None = None
    min_context: int = 0
    min_output: int = 0
    reachable_keys: frozenset[str] = frozenset()
    # The distinct context windows and output limits of those models, ascending: how many of
    # them a request exceeds says which models its tokens rule out.
    context_limits: tuple[int, ...] = ()
    output_limits: tuple[int, ...] = ()
    # Every other outcome, by what decides it (see routing_tables.eligibility).
    eligibilities: dict[tuple[int, int, frozenset[str]], Eligibility] = field(default_factory=dict)


@dataclass(slots=True, eq=False)
class Eligibility:
    """The hard constraints and the complexity need applied: who is left, who was rejected."""

    rejected: tuple[Rejection, ...]  # catalog order, then the models below the need
    common: tuple[str, ...]  # the shape's common reasons, plus need_relaxed / requested:pinned_unavailable
    # The eligible: passed the hard constraints and, unless nothing met it, the need.
    ranking: Ranking
    # The deployments of the content fallback that passed the hard constraints, cheapest
    # first, as candidates but for their scores. Their indexes are into `ranking` when its
    # scores are theirs (each is eligible, with no requested bonus), else into `content_ranking`.
    content_specs: tuple[CandidateSpec, ...]
    content_ranking: Ranking | None


@dataclass(slots=True, eq=False)
class Ranking:
    """Options laid out for the per-request score (routing._scores): what it reads of them,
    flat, and what tells in advance that no token count or budget check applies."""

    options: tuple[ModelOption, ...]
    parts: tuple[tuple[float, float, float, float], ...]  # per option, its score_parts
    by_price: tuple[int, ...]  # option indexes, cheapest first, then in option order: how equal scores rank
    bonus: tuple[int, ...]  # the indexes of the options that get the requested bonus
    tightest: int  # the fewest tokens (input + output) that make any option's context tight
    slowest: float  # the lowest speed: no option goes over a latency budget that this one meets
    fastest: float  # the highest speed: every option goes over a latency budget that this one misses
    by_speed: tuple[int, ...]  # option indexes, slowest first: the order they go over a latency budget in
    no_flags: tuple[int, ...]  # a zero per option: the flags when no check applies
    all_late: tuple[int, ...]  # a two per option: the flags when every option is over the latency budget


# A candidate but for its score: (option index, model, provider, tier, reasons by OWN_REASONS
# flags, role, key).
CandidateSpec = tuple[int, str, str, str, tuple[tuple[str, ...], ...], str, str]


def new_ranking(options: tuple[ModelOption, ...], with_bonus: bool) -> Ranking:
    """The options ranked for the candidates (with the requested bonus) or for the content
    fallback (without)."""
    return Ranking(
        options=options,
        parts=tuple(o.score_parts for o in options),
        by_price=tuple(sorted(range(len(options)), key=lambda i: (options[i].tie, i))),
        bonus=tuple(i for i, o in enumerate(options) if with_bonus and o.bonus),
        tightest=min(o.tight_from for o in options),
        slowest=min(o.speed for o in options),
        fastest=max(o.speed for o in options),
        by_speed=tuple(sorted(range(len(options)), key=lambda i: options[i].speed)),
        no_flags=(0,) * len(options),
        all_late=(2,) * len(options),
    )


# The router makes a plan and its candidates on every request. A frozen dataclass's
# __init__ costs an object.__setattr__ per field; these fill the instance dict directly
# (every field, in field order), as classify.py does for Classification.
_new = object.__new__


def new_candidate(model: str, provider: str, tier: str, score: float, reasons: tuple[str, ...], role: str,
                  key: str) -> Candidate:
    """Candidate(model, provider, tier, score, reasons, role) with its `key` (provider/model) filled in."""
    c = _new(Candidate)
    d = c.__dict__
    d["model"] = model
    d["provider"] = provider
    d["tier"] = tier
    d["score"] = score
    d["reasons"] = reasons
    d["role"] = role
    d["key"] = key
    return c


def new_plan(values: dict[str, Any]) -> RoutePlan:
    """RoutePlan(**values); `values` names every field, in field order, and becomes the instance dict."""
    p = _new(RoutePlan)
    object.__setattr__(p, "__dict__", values)
    return p
