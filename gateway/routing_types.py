"""What routing hands on: the plan, its candidates and rejections, and the error for a request
the policy cannot route. Import them from gateway.routing.

They sit in a module of their own because routing_tables.py makes rejections and raises the
request-level errors, and routing.py imports routing_tables.py: defined in routing.py, they
would make the two modules import each other.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from typing import Any

from .policy import Degradation, Weights


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
