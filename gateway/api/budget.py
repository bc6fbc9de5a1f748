"""The chat flow's side of spend caps and quotas: admit before forwarding, cover a dearer
failover, keep a growing stream inside its reservation, settle after the response."""

from __future__ import annotations

from ..errors import GatewayError
from ..forward import UpstreamStream
from ..providers.base import Deployment
from ..quota import QuotaUnavailable
from ..spend import (
    actual_cost_micros,
    admission_and_worst,
    denial_error,
    request_scopes,
    skip_reasons,
)
from ..state import GatewayState
from .exchange import Exchange, headers_for, priced, stream_usage

BUDGET_CHECK_EVERY = 32  # chunks between checks that a stream still fits its reservation


async def admit(state: GatewayState, ex: Exchange) -> None:
    """Reserve the worst case of the plan in one atomic store call; pick the affordable start."""
    plan, c = ex.decision.plan, ex.decision.classification
    policy = ex.snapshot.policy
    team = ex.principal.team or policy.tenant(ex.principal.tenant).team
    scopes = request_scopes(ex.principal.tenant, team, ex.principal.key_id, plan.route)
    request, worst = admission_and_worst(ex.request_id, scopes, plan, c, ex.body, ex.snapshot.catalog, policy.limits)
    try:
        admission = await state.quota.admit(request)
    except QuotaUnavailable:
        raise GatewayError(
            503,
            "The spend and quota store is unreachable and the policy's failure_mode is fail_closed; retry shortly.",
            code="quota_unavailable",
            type="service_unavailable",
            headers={**headers_for(ex), "retry-after": "1"},
        ) from None
    if admission.rate_limit is not None:
        ex.rate_headers = admission.rate_limit.headers()
    ex.quota_degraded = admission.degraded
    if not admission.admitted:
        assert admission.denial is not None
        error = denial_error(admission.denial)
        error.headers = {**headers_for(ex), **error.headers}
        raise error
    assert admission.candidate_index is not None
    ex.reservation_id = admission.reservation_id
    if admission.skipped:
        ex.quota_reasons = skip_reasons(admission)
    start = ex.start = admission.candidate_index
    if start:
        ex.deployments = ex.deployments[start:]
    ex.worst_micros = worst
    ex.reserved_micros = request.candidates[start].worst_case_micros


async def covered(state: GatewayState, ex: Exchange, deployment: Deployment) -> bool:
    """Before failing over: grow the reservation if this deployment's worst case is dearer."""
    needed = ex.worst_micros.get(deployment.key, 0)
    if needed <= ex.reserved_micros or ex.reservation_id is None:
        return True
    try:
        extended = await state.quota.extend(ex.reservation_id, needed - ex.reserved_micros)
    except QuotaUnavailable:
        return False
    if extended:
        ex.reserved_micros = needed
    return extended


def settle(state: GatewayState, ex: Exchange) -> None:
    """Off the client's path: charge what was used, or give the reservation back."""
    if ex.reservation_id is None:
        return
    micros = priced(ex)
    if micros is not None and ex.usage is not None:
        state.settle_later(ex.reservation_id, micros, ex.usage.total_tokens)
    else:
        state.release_later(ex.reservation_id)


async def stream_within_budget(state: GatewayState, ex: Exchange, stream: UpstreamStream) -> bool:
    """A stream that outgrows its reservation asks for more before it may go on.

    The reservation covers max_tokens (or the policy's default); an upstream that streams
    past it must not push spend over the cap after the fact.
    """
    if ex.reservation_id is None or stream.deployment is None:
        return True
    spent = actual_cost_micros(ex.snapshot.catalog, stream.deployment.key, stream_usage(stream, ex))
    if spent <= ex.reserved_micros:
        return True
    extra = max(spent - ex.reserved_micros, ex.reserved_micros // 2)
    try:
        granted = await state.quota.extend(ex.reservation_id, extra)
    except QuotaUnavailable:
        return True  # fail_open already admitted this request locally; fail_closed raised at admit
    if granted:
        ex.reserved_micros += extra
    return granted
