"""A finished exchange, told to metrics and to its trace span."""

from __future__ import annotations

import time

from opentelemetry.trace import Span, Status, StatusCode

from ..telemetry import Telemetry, record_request
from .exchange import Exchange, priced

# Outcomes of an admission the caps or rate limits refused (a cut stream has a reservation).
QUOTA_DENIALS = frozenset({"budget_exceeded", "rate_limited"})


def observe(telemetry: Telemetry, span: Span, ex: Exchange) -> None:
    c = ex.decision.classification
    plan = ex.decision.plan
    answered = ex.answered_by
    model = answered.model if answered else "none"
    provider = answered.provider if answered else "none"
    m = telemetry.metrics
    m.count((m.requests, plan.route, model, provider, ex.outcome, ex.degraded or "none"))
    m.latency.observe((plan.route, "true" if ex.body.get("stream") else "false"), time.perf_counter() - ex.started)
    if ex.quota_degraded:
        m.quota_degraded.inc()
    if ex.reservation_id is None and ex.outcome in QUOTA_DENIALS:
        m.count((m.denials, ex.outcome))
    usage = ex.usage
    tenant = ex.principal.tenant
    if usage is not None and answered is not None:
        m.count_usage(tenant, model, usage.prompt_tokens, usage.completion_tokens, priced(ex) or 0)
    if not telemetry.enabled:
        return
    record_request(
        span,
        {
            "gen_ai.operation.name": "chat",
            "gen_ai.request.model": ex.body.get("model"),
            "gen_ai.response.model": model,
            "gen_ai.provider.name": provider,
            "gen_ai.usage.input_tokens": usage.prompt_tokens if usage else None,
            "gen_ai.usage.output_tokens": usage.completion_tokens if usage else None,
            "gateway.tenant": tenant,
            "gateway.route": plan.route,
            "gateway.policy_version": ex.snapshot.policy_version,
            "gateway.complexity.tier": c.tier,
            "gateway.complexity.score": c.score,
            "gateway.intent": c.intent,
            "gateway.risk": c.risk,
            "gateway.attempts": len(ex.attempts),
            "gateway.degraded": ex.degraded,
            "gateway.quota_degraded": ex.quota_degraded or None,
            "gateway.outcome": ex.outcome,
        },
    )
    if ex.outcome != "ok":
        span.set_status(Status(StatusCode.ERROR, ex.outcome))
