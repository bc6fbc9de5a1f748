"""classify + plan for one request, with their failures turned into HTTP errors.

Shared by the completion handler and the `/v1/route` dry run, so the dry run explains
exactly what a real request would do.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping

from .classify import Classification, HintError, classify
from .errors import GatewayError
from .routing import RoutePlan, RoutingError, plan
from .runtime import RoutingSnapshot

HINT_PREFIX = "x-gateway-"
_PREFIX_LEN = len(HINT_PREFIX)


@dataclass(frozen=True)
class Decision:
    classification: Classification
    plan: RoutePlan
    # Every candidate the policy allows has an open circuit breaker: `plan` is what would
    # run if they were healthy, and the request goes straight to the route's static step.
    all_unavailable: bool = False


def hint_headers(headers: Mapping[str, str]) -> dict[str, str]:
    # Almost no request carries a hint: one search over every header name, in C, tells.
    if HINT_PREFIX not in "\n".join(headers).lower():
        return {}
    # Only the head is lowered (header names are ASCII, so this is
    # k.lower().startswith(HINT_PREFIX)).
    return {k.lower(): v for k, v in headers.items() if k[:_PREFIX_LEN].lower() == HINT_PREFIX}


# The gateway decides on every request. A frozen dataclass's __init__ costs an
# object.__setattr__ per field; this fills the instance dict directly (every field, in
# field order), as routing_types.new_plan does for the plan.
def _decision(classification: Classification, plan: RoutePlan, all_unavailable: bool = False) -> Decision:
    """Decision(classification, plan, all_unavailable)."""
    d = object.__new__(Decision)
    fields = d.__dict__
    fields["classification"] = classification
    fields["plan"] = plan
    fields["all_unavailable"] = all_unavailable
    return d


def decide(
    body: Mapping[str, Any],
    headers: Mapping[str, str],
    tenant: str,
    snapshot: RoutingSnapshot,
    unavailable: frozenset[str] = frozenset(),
) -> Decision:
    try:
        classification = classify(body, hint_headers(headers), snapshot.rules)
    except HintError as error:
        raise GatewayError(400, error.message, param=error.param, code="invalid_hint") from None
    model, policy, catalog = body.get("model"), snapshot.policy, snapshot.catalog
    try:
        return _decision(classification, plan(classification, tenant=tenant, requested_model=model, policy=policy,
                                              catalog=catalog, unavailable=unavailable))
    except RoutingError as error:
        if error.code == "no_eligible_model" and unavailable:
            try:  # would it route if the breakers were closed? then it is an outage, not a bad request
                healthy = plan(classification, tenant=tenant, requested_model=model, policy=policy, catalog=catalog)
                return _decision(classification, healthy, all_unavailable=True)
            except RoutingError:
                pass
        raise GatewayError(error.status, error.message, param=error.param, code=error.code) from None
