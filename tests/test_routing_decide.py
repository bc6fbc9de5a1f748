"""decide(): the hint headers it hands the classifier, the Decision it builds, and its
answer when every allowed candidate's breaker is open."""

from __future__ import annotations

import dataclasses
import os

import pytest
from multidict import CIMultiDict, CIMultiDictProxy

from gateway.config import load_config
from gateway.decide import Decision, _decision, decide, hint_headers
from gateway.errors import GatewayError
from gateway.runtime import RoutingSnapshot, Runtime

ENV = {"OPENAI_BASE_URL": "http://127.0.0.1:1/v1", "OPENAI_API_KEY": "sk"}
BODY = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "What is the capital of France?"}]}


@pytest.fixture(scope="module")
def snapshot() -> RoutingSnapshot:
    env = dict(os.environ, **ENV)
    return Runtime(load_config(None, env), env).current


def plain_hint_headers(headers: dict[str, str] | CIMultiDictProxy[str]) -> dict[str, str]:
    return {k.lower(): v for k, v in headers.items() if k.lower().startswith("x-gateway-")}


@pytest.mark.parametrize("pairs", [
    [],
    [("Host", "h"), ("Content-Type", "application/json"), ("Authorization", "Bearer k")],
    [("X-Gateway-Objective", "quality"), ("Accept", "*/*")],
    [("x-gateway-task", "code"), ("X-GATEWAY-RISK", "high"), ("x-gateway-latency-budget-ms", "900")],
    [("X-Gateway-Task", "chat"), ("x-gateway-task", "code")],  # repeated: the last one counts
    [("X-Other-X-Gateway-Task", "code"), ("x-gatewaytask", "code"), ("", "empty name")],  # not hints
    [("x-gateway-", "bare prefix"), ("X-Gateway-Unknown", "kept: the classifier ignores it")],
])
def test_hint_headers_are_the_x_gateway_headers_lowered(pairs: list[tuple[str, str]]) -> None:
    proxy = CIMultiDictProxy(CIMultiDict(pairs))
    assert hint_headers(proxy) == plain_hint_headers(proxy)
    assert hint_headers(dict(pairs)) == plain_hint_headers(dict(pairs))


def test_decision_builder_makes_what_the_dataclass_makes(snapshot: RoutingSnapshot) -> None:
    made = decide(BODY, {}, "default", snapshot)
    for all_unavailable in (False, True):
        fast = _decision(made.classification, made.plan, all_unavailable)
        plain = Decision(made.classification, made.plan, all_unavailable)
        assert fast == plain and repr(fast) == repr(plain)
        assert vars(fast) == vars(plain) and list(vars(fast)) == list(vars(plain))
        with pytest.raises(dataclasses.FrozenInstanceError):
            fast.plan = made.plan  # type: ignore[misc]


def test_decide_reads_hints_from_any_case_of_header(snapshot: RoutingSnapshot) -> None:
    headers = CIMultiDictProxy(CIMultiDict([("Host", "h"), ("X-Gateway-Objective", "quality")]))
    assert decide(BODY, headers, "default", snapshot).plan.objective == "quality"
    assert decide(BODY, {"X-GATEWAY-OBJECTIVE": "quality"}, "default", snapshot).plan.objective == "quality"
    with pytest.raises(GatewayError) as info:
        decide(BODY, {"x-gateway-objective": "fastest"}, "default", snapshot)
    assert info.value.code == "invalid_hint"


def test_decide_with_every_allowed_candidate_unavailable(snapshot: RoutingSnapshot) -> None:
    every = frozenset(m.key for m in snapshot.catalog.models)
    d = decide(BODY, {}, "default", snapshot, every)
    assert d.all_unavailable and d.plan == decide(BODY, {}, "default", snapshot).plan
    assert not decide(BODY, {}, "default", snapshot, frozenset({"openai/gpt-4o-mini"})).all_unavailable
