"""The client's hints for the classifier, read from the request headers and body.

A client may steer the labels with headers, or with the same hints in the body's
`metadata` under a `gateway_` prefix (the prefix keeps them apart from the client's own
metadata keys). A header wins over metadata when both are given; an empty header counts as
absent. Values are case-insensitive.

    header                        metadata key                  values
    x-gateway-task                gateway_task                  an intent of the rules
    x-gateway-risk                gateway_risk                  low | medium | high | regulated
    x-gateway-objective           gateway_objective             the rules' objectives (or aliases)
    x-gateway-latency-budget-ms   gateway_latency_budget_ms     integer milliseconds in the rules' range

An invalid value raises `HintError(param, message)`, `param` naming the header or
`metadata.<key>`, for the HTTP layer to answer 400.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from .classify_rules import RISKS, ClassifierRules


class HintError(ValueError):
    """A request hint (header or metadata) with a value the gateway does not accept."""

    def __init__(self, param: str, message: str) -> None:
        super().__init__(f"{param}: {message}")
        self.param = param
        self.message = message


_HINT_HEADERS = ("x-gateway-task", "x-gateway-risk", "x-gateway-objective", "x-gateway-latency-budget-ms")


@dataclass(frozen=True, slots=True)
class Hints:
    """The hints of one request; each `*_param` names where its value came from."""

    task: str | None = None
    task_param: str = ""
    risk: int | None = None  # an index into RISKS, so hint and detected risk compare
    risk_param: str = ""
    objective: str | None = None
    objective_param: str = ""
    budget: int | None = None
    budget_param: str = ""


NO_HINTS = Hints()  # what a request without hint headers or metadata gets


def _read_hint(headers: Mapping[str, str], metadata: Mapping[str, Any] | None, header: str, key: str) -> tuple[Any, str]:
    value = headers.get(header)
    if isinstance(value, str) and value.strip():
        return value.strip(), header
    if metadata is not None:
        value = metadata.get(key)
        if value is not None and not (isinstance(value, str) and not value.strip()):
            return value, f"metadata.{key}"
    return None, ""


def _choice(value: Any, param: str, allowed: Mapping[str, str] | tuple[str, ...]) -> str:
    if not isinstance(value, str):
        raise HintError(param, "must be a string")
    key = value.strip().lower()
    if key not in allowed:
        raise HintError(param, f"{value!r} is not one of: {', '.join(allowed)}")
    return allowed[key] if isinstance(allowed, Mapping) else key


def read_hints(body: Mapping[str, Any], headers: Mapping[str, str], rules: ClassifierRules) -> Hints:
    """The hints of a request (`headers` lower-case); raises HintError for a bad value."""
    metadata = body.get("metadata")
    if not isinstance(metadata, Mapping):
        metadata = None
    if metadata is None and (not headers or not any(name in headers for name in _HINT_HEADERS)):
        return NO_HINTS
    task, task_param = _read_hint(headers, metadata, "x-gateway-task", "gateway_task")
    if task is not None:
        task = _choice(task, task_param, rules.intents)
    risk, risk_param = _read_hint(headers, metadata, "x-gateway-risk", "gateway_risk")
    if risk is not None:
        risk = RISKS.index(_choice(risk, risk_param, RISKS))
    objective, objective_param = _read_hint(headers, metadata, "x-gateway-objective", "gateway_objective")
    if objective is not None:
        objective = _choice(objective, objective_param, rules.objectives)
    budget, budget_param = _read_hint(headers, metadata, "x-gateway-latency-budget-ms", "gateway_latency_budget_ms")
    if budget is not None:
        if isinstance(budget, str) and budget.isascii() and budget.isdigit():
            budget = int(budget)
        if isinstance(budget, bool) or not isinstance(budget, int) or not rules.budget_min <= budget <= rules.budget_max:
            raise HintError(budget_param, f"must be an integer number of milliseconds from {rules.budget_min} to {rules.budget_max}")
    return Hints(task, task_param, risk, risk_param, objective, objective_param, budget, budget_param)

