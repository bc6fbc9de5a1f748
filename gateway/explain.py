"""Classification and RoutePlan as plain JSON: for /v1/route and the decision log."""

from __future__ import annotations

import time
from dataclasses import asdict
from typing import Any

from .catalog import Catalog
from .classify import Classification
from .routing import Candidate, RoutePlan, estimate_cost_micros


def classification_json(c: Classification, *, with_reasons: bool = True) -> dict[str, Any]:
    """`with_reasons=False` for the decision log: the per-label explanations are built
    lazily by the classifier and cost more than the rest of the record; /v1/route has them."""
    out = {
        "complexity": {"tier": c.tier, "score": round(c.score, 4)},
        "intent": c.intent,
        "risk": c.risk,
        "format": c.format,
        "latency_class": c.latency_class,
        "tokens": {"input": c.input_tokens, "output": c.output_tokens},
        "needs": sorted(c.needs) if c.needs else [],  # mostly empty, and sorted() is not free even then
        "hints": {"objective": c.objective, "latency_budget_ms": c.latency_budget_ms},
    }
    if with_reasons:
        out["reasons"] = dict(c.reasons)
    return out


def candidate_json(candidate: Candidate, c: Classification, catalog: Catalog) -> dict[str, Any]:
    model = catalog.by_key[candidate.key]
    worst = estimate_cost_micros(model, c.input_tokens, c.output_tokens)
    return {
        "model": candidate.model,
        "provider": candidate.provider,
        "tier": candidate.tier,
        "role": candidate.role,
        "score": round(candidate.score, 4),
        "reasons": list(candidate.reasons),
        "estimated_cost_usd": worst / 1_000_000,
    }


def plan_json(p: RoutePlan, c: Classification, catalog: Catalog) -> dict[str, Any]:
    return {
        "route": p.route,
        "objective": p.objective,
        "weights": asdict(p.weights),
        "tenant": p.tenant,
        "requested_model": p.requested_model,
        "requested_mode": p.requested_mode,
        "privacy_tier": p.privacy_tier,
        "latency_budget_ms": p.latency_budget_ms,
        "candidates": [candidate_json(x, c, catalog) for x in p.candidates],
        "rejected": [{"model": r.model, "provider": r.provider, "reason": r.reason} for r in p.rejected],
        "content_fallback": p.content_fallback.model if p.content_fallback else None,
        "degradation": asdict(p.degradation),
    }


def route_json(c: Classification, p: RoutePlan, tenant: str, catalog: Catalog, policy_version: str,
               all_unavailable: bool = False) -> dict[str, Any]:
    """The dry run's answer (POST /v1/route, `gateway route`)."""
    return {
        "object": "gateway.route",
        "tenant": tenant,
        "classification": classification_json(c),
        "plan": plan_json(p, c, catalog),
        "policy_version": policy_version,
        # true when every allowed deployment's breaker is open: the plan shown is what
        # would run once they recover; a completion now gets the route's static step
        "all_unavailable": all_unavailable,
    }


def decision_record(ex: Any, include_prompt: bool) -> dict[str, Any]:
    """One decision-log line for a finished exchange (an api.exchange.Exchange: typed loosely
    because the HTTP layer sits above this module).

    Built once per request, so it reads each value once and copies nothing orjson can
    write as it is: tuples are written as arrays, and the policy version is the plan's
    field rather than the snapshot's property (which formats it on every read)."""
    decision = ex.decision
    c = decision.classification
    p = decision.plan
    candidates = p.candidates
    principal = ex.principal
    answered = ex.answered_by
    usage = ex.usage
    cost_micros = ex.cost_micros  # priced once by the HTTP layer when the answer was settled
    if candidates:
        primary = candidates[0]
        reasons: tuple[str, ...] = primary.reasons
        model = ex.snapshot.catalog.by_key[primary.key]
        estimated_usd = estimate_cost_micros(model, c.input_tokens, c.output_tokens) / 1_000_000
    else:
        reasons = ()
        estimated_usd = None
    record: dict[str, Any] = {
        "request_id": ex.request_id,
        "time": time.time(),
        "tenant": principal.tenant,
        "key_id": principal.key_id,
        "requested_model": ex.body.get("model"),  # with the classification: all that routing read (gateway replay)
        "classification": classification_json(c, with_reasons=False),
        "route": p.route,
        "objective": p.objective,
        "candidates": [x.key for x in candidates],
        "chosen": answered.key if answered is not None else None,
        "reasons": reasons,
        "policy_version": p.policy_version,
        "estimated_cost_usd": estimated_usd,
        "usage": usage.as_openai() if usage is not None else None,
        "usage_estimated": usage.estimated if usage is not None else None,
        "cost_usd": cost_micros / 1_000_000 if cost_micros is not None else None,
        "latency_ms": round((time.perf_counter() - ex.started) * 1000, 2),
        "attempts": [
            {"model": a.model, "provider": a.provider, "outcome": a.outcome, "status": a.status,
             "duration_ms": round(a.duration_ms, 2), "retry": a.retry, "continuation": a.continuation}
            for a in ex.attempts
        ],
        "degraded": ex.degraded,
        "outcome": ex.outcome,
        "stream": bool(ex.body.get("stream")),
    }
    if include_prompt:
        record["messages"] = ex.body.get("messages")
    return record
