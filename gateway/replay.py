"""A decision log read back against a proposed catalog and policy (`gateway replay`).

Each logged decision carries what routing reads of its request: the classification's
labels, token estimates and hints, the tenant and the model the client asked for. Replay
plans each one again with the proposed files, every deployment taken as healthy, and says
what would change: the route and primary model per request, the requests the proposed
policy would refuse, and the estimated cost of the primaries before and after. No prompt
is needed and nothing is sent anywhere: a platform team can try a policy change on last
week's traffic before it reaches anyone.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import orjson

from .classify import Classification
from .routing import RoutingError, estimate_cost_micros, plan
from .runtime import RoutingSnapshot


class Unreplayable(ValueError):
    """A log line that is not a decision replay can read."""


class NoRequestedModel(Unreplayable):
    """A decision logged before the log recorded the model the client asked for."""


@dataclass(frozen=True)
class Replayed:
    request_id: str
    tenant: str
    route_before: str | None
    primary_before: str | None  # provider/model
    route_after: str | None
    primary_after: str | None
    refused: str | None  # the proposed policy's error code when it would refuse the request
    usd_before: float | None  # the logged estimate of the primary's worst case
    usd_after: float | None

    @property
    def changed(self) -> bool:
        return self.refused is not None or (self.route_before, self.primary_before) != (self.route_after, self.primary_after)


@dataclass
class ReplayReport:
    policy_version: str  # the proposed one
    logged_versions: Counter[str] = field(default_factory=Counter)
    replayed: int = 0
    unreadable: int = 0  # lines that are not JSON objects with a decision's fields
    without_requested_model: int = 0  # logged before decisions recorded the requested model
    route_changed: int = 0
    primary_changed: int = 0
    refused: Counter[str] = field(default_factory=Counter)  # error code -> requests
    transitions: Counter[tuple[str, str]] = field(default_factory=Counter)  # (before, after) primaries
    usd_before: float = 0.0  # over the requests replayed and routed both times
    usd_after: float = 0.0
    changes: list[Replayed] = field(default_factory=list)  # the first `keep_changes` changed decisions

    def as_json(self) -> dict[str, Any]:
        return {
            "policy_version": self.policy_version,
            "logged_policy_versions": dict(self.logged_versions),
            "replayed": self.replayed,
            "unreadable": self.unreadable,
            "without_requested_model": self.without_requested_model,
            "route_changed": self.route_changed,
            "primary_changed": self.primary_changed,
            "refused": dict(self.refused),
            "estimated_cost_usd": {"before": round(self.usd_before, 6), "after": round(self.usd_after, 6)},
            "transitions": [{"before": b, "after": a, "requests": n} for (b, a), n in self.transitions.most_common()],
            "changes": [_change_json(r) for r in self.changes],
        }


def classification_of(record: Mapping[str, Any]) -> Classification:
    """The Classification a logged decision was planned from (reasons aside)."""
    try:
        c = record["classification"]
        hints = c["hints"]
        budget = hints["latency_budget_ms"]
        return Classification(
            tier=_text(c["complexity"]["tier"]),
            score=float(c["complexity"]["score"]),
            intent=_text(c["intent"]),
            risk=_text(c["risk"]),
            format=_text(c["format"]),
            latency_class=_text(c["latency_class"]),
            input_tokens=int(c["tokens"]["input"]),
            output_tokens=int(c["tokens"]["output"]),
            needs=frozenset(map(_text, c["needs"])),
            objective=None if hints["objective"] is None else _text(hints["objective"]),
            latency_budget_ms=None if budget is None else int(budget),
        )
    except (KeyError, TypeError, ValueError) as error:
        raise Unreplayable(f"no classification to replay ({type(error).__name__}: {error})") from None


def replay_one(record: Mapping[str, Any], snapshot: RoutingSnapshot) -> Replayed:
    if "requested_model" not in record:
        raise NoRequestedModel("no requested_model")
    c = classification_of(record)
    tenant, requested = record.get("tenant"), record["requested_model"]
    if not isinstance(tenant, str) or not (requested is None or isinstance(requested, str)):
        raise Unreplayable("tenant or requested_model is not a string")
    candidates = record.get("candidates")
    if not isinstance(candidates, list):
        candidates = []
    before_usd = record.get("estimated_cost_usd")
    common = {
        "request_id": str(record.get("request_id")),
        "tenant": tenant,
        "route_before": record.get("route"),
        "primary_before": candidates[0] if candidates and isinstance(candidates[0], str) else None,
        "usd_before": float(before_usd) if isinstance(before_usd, (int, float)) else None,
    }
    try:
        planned = plan(c, tenant=tenant, requested_model=requested, policy=snapshot.policy, catalog=snapshot.catalog)
    except RoutingError as error:
        return Replayed(**common, route_after=None, primary_after=None, refused=error.code, usd_after=None)
    primary = planned.candidates[0] if planned.candidates else None
    after_usd = None
    if primary is not None:
        after_usd = estimate_cost_micros(snapshot.catalog.by_key[primary.key], c.input_tokens, c.output_tokens) / 1_000_000
    return Replayed(**common, route_after=planned.route, primary_after=primary.key if primary else None, refused=None,
                    usd_after=after_usd)


def replay(lines: Iterable[bytes], snapshot: RoutingSnapshot, keep_changes: int = 20) -> ReplayReport:
    """Replay every decision in `lines` (JSON objects, one per line; blank lines skipped)."""
    report = ReplayReport(policy_version=snapshot.policy_version)
    for line in lines:
        if not line.strip():
            continue
        try:
            record = orjson.loads(line)
            if not isinstance(record, dict):
                raise Unreplayable("not a JSON object")
            result = replay_one(record, snapshot)
        except NoRequestedModel:
            report.without_requested_model += 1
            continue
        except (orjson.JSONDecodeError, Unreplayable):
            report.unreadable += 1
            continue
        report.replayed += 1
        report.logged_versions[str(record.get("policy_version"))] += 1
        _count(report, result, keep_changes)
    return report


def _count(report: ReplayReport, r: Replayed, keep_changes: int) -> None:
    if r.refused is not None:
        report.refused[r.refused] += 1
    else:
        if r.route_after != r.route_before:
            report.route_changed += 1
        if r.primary_after != r.primary_before:
            report.primary_changed += 1
            report.transitions[(str(r.primary_before), str(r.primary_after))] += 1
        if r.usd_before is not None and r.usd_after is not None:
            report.usd_before += r.usd_before
            report.usd_after += r.usd_after
    if r.changed and len(report.changes) < keep_changes:
        report.changes.append(r)


def summary(report: ReplayReport, top: int = 10) -> str:
    """The report as a few lines for a person."""
    n = report.replayed
    lines = [
        f"replayed {n:,} decisions against policy {report.policy_version} "
        f"(logged under: {', '.join(sorted(report.logged_versions)) or 'none'})",
        f"  route changed:   {report.route_changed:,}{_share(report.route_changed, n)}",
        f"  primary changed: {report.primary_changed:,}{_share(report.primary_changed, n)}",
    ]
    refused = sum(report.refused.values())
    by_code = ", ".join(f"{code}: {count:,}" for code, count in report.refused.most_common())
    lines.append(f"  refused:         {refused:,}{_share(refused, n)}" + (f" ({by_code})" if by_code else ""))
    before, after = report.usd_before, report.usd_after
    delta = f" ({(after - before) / before:+.1%})" if before else ""
    lines.append(f"  estimated cost of the primaries: ${before:,.6f} -> ${after:,.6f}{delta}")
    if report.unreadable or report.without_requested_model:
        lines.append(f"  not replayed: {report.unreadable:,} unreadable lines, {report.without_requested_model:,} decisions "
                     "logged without the requested model (before it was recorded)")
    if report.transitions:
        lines.append("primary before -> after:")
        lines += [f"  {b} -> {a}: {count:,}" for (b, a), count in report.transitions.most_common(top)]
    return "\n".join(lines)


def _share(part: int, whole: int) -> str:
    return f" ({part / whole:.1%})" if whole else ""


def _text(value: Any) -> str:
    if not isinstance(value, str):
        raise TypeError(f"expected a string, got {type(value).__name__}")
    return value


def _change_json(r: Replayed) -> dict[str, Any]:
    return {
        "request_id": r.request_id, "tenant": r.tenant,
        "before": {"route": r.route_before, "primary": r.primary_before, "estimated_cost_usd": r.usd_before},
        "after": {"route": r.route_after, "primary": r.primary_after, "estimated_cost_usd": r.usd_after,
                  "refused": r.refused},
    }
