"""The hot path's shortcuts around frozen dataclasses make exactly what the dataclasses make,
and check what the dataclasses check; routing's category cache answers as route_for does."""

from __future__ import annotations

import dataclasses

import pytest

from gateway.catalog import load_catalog
from gateway.classify import Classification
from gateway.policy import RouteMatch, load_policy
from gateway.quota import Admission, AdmissionRequest, CandidateCost, Scope
from gateway.quota.admission import (
    draft_class,
    new_admission_request,
    new_candidate_cost,
    new_settlement,
)
from gateway.quota.base import RateLimitInfo, Settlement
from gateway.quota.memory_admit import _admitted, _rate_info
from gateway.routing import plan
from gateway.routing_tables import tables_for
from gateway.routing_types import Candidate, RoutePlan, new_candidate, new_plan

SCOPES = (Scope("tenant", "t"), Scope("key", "k"))


def test_builders_fill_every_field() -> None:
    # A field added to one of these dataclasses must be added to its builder too.
    assert [f.name for f in dataclasses.fields(CandidateCost)] == ["model", "provider", "tier", "worst_case_micros",
                                                                   "tokens"]
    assert [f.name for f in dataclasses.fields(AdmissionRequest)] == ["request_id", "scopes", "candidates", "now",
                                                                      "ttl_s"]
    assert [f.name for f in dataclasses.fields(Admission)] == ["admitted", "candidate_index", "reservation_id",
                                                               "skipped", "denial", "degraded", "rate_limit"]
    assert [f.name for f in dataclasses.fields(Candidate)] == ["model", "provider", "tier", "score", "reasons", "role"]
    assert len(dataclasses.fields(RoutePlan)) == 13


def test_candidate_cost_is_the_dataclass() -> None:
    for _ in range(2):  # the first call checks the names, the second takes the short cut
        made = new_candidate_cost("m", "p", "small", 12, 34)
        assert made == CandidateCost("m", "p", "small", 12, 34) and type(made) is CandidateCost
        assert repr(made) == repr(CandidateCost("m", "p", "small", 12, 34))
    for bad in [("m", "p", "small", -1, 3), ("m", "p", "small", 1, -3), ("m", "p", "small", 1.5, 3),
                ("m|x", "p", "small", 1, 3), ("m", "", "small", 1, 3)]:
        with pytest.raises(ValueError):
            new_candidate_cost(*bad)  # type: ignore[arg-type]


def test_admission_request_is_the_dataclass() -> None:
    costs = [CandidateCost("m", "p", "small", 12, 34)]
    for _ in range(2):
        made = new_admission_request("r", SCOPES, costs, 300.0)
        assert made == AdmissionRequest("r", SCOPES, costs, ttl_s=300.0) and made.now is None
    with pytest.raises(ValueError):
        new_admission_request("r", SCOPES, [], 300.0)
    with pytest.raises(ValueError):
        new_admission_request("r", SCOPES, costs, 0.0)
    with pytest.raises(ValueError):
        new_admission_request("r", (Scope("model", "m"),), costs, 300.0)


def test_settlement_is_the_dataclass() -> None:
    made = new_settlement("r", 12, 34)
    assert made == Settlement("r", 12, 34) and type(made) is Settlement and repr(made) == repr(Settlement("r", 12, 34))
    with pytest.raises(dataclasses.FrozenInstanceError):
        made.actual_micros = 1  # type: ignore[misc]
    assert new_settlement("r", True, 0) == Settlement("r", True, 0)  # what the dataclass accepts, it accepts
    for bad in [("r", -1, 3), ("r", 1, -3), ("r", 1.5, 3), ("r", 1, None)]:
        with pytest.raises(ValueError):
            new_settlement(*bad)  # type: ignore[arg-type]


def test_drafts_need_a_slotted_dataclass() -> None:
    @dataclasses.dataclass(frozen=True)
    class Plain:
        x: int

    with pytest.raises(TypeError):
        draft_class(Plain)


def test_rate_info_is_the_dataclass() -> None:
    assert [f.name for f in dataclasses.fields(RateLimitInfo)] == [
        "limit_requests", "remaining_requests", "reset_requests_s", "limit_tokens", "remaining_tokens", "reset_tokens_s"]
    assert _rate_info((60, 59, 1.0), (1000, 900, 6.0)) == RateLimitInfo(60, 59, 1.0, 1000, 900, 6.0)
    assert _rate_info(None, (1000, 900, 6.0)) == RateLimitInfo(None, None, None, 1000, 900, 6.0)
    assert _rate_info((60, 59, 1.0), None) == RateLimitInfo(60, 59, 1.0)
    assert _rate_info(None, None) is None


def test_admitted_is_the_dataclass() -> None:
    made = _admitted(2, "id", ((0, "credit_limit"),), True, None)
    plain = Admission(True, 2, "id", ((0, "credit_limit"),), None, True, None)
    assert made == plain and type(made) is Admission and repr(made) == repr(plain) and hash(made) == hash(plain)
    with pytest.raises(dataclasses.FrozenInstanceError):
        made.admitted = False  # type: ignore[misc]


def test_candidate_and_plan_builders() -> None:
    made = new_candidate("m", "p", "small", 0.5, ("a",), "primary", "p/m")
    plain = Candidate("m", "p", "small", 0.5, ("a",), "primary")
    assert made == plain and repr(made) == repr(plain) and hash(made) == hash(plain)
    assert made.key == plain.key == "p/m"
    with pytest.raises(dataclasses.FrozenInstanceError):
        made.score = 1.0  # type: ignore[misc]
    catalog = load_catalog()
    policy = load_policy(None, catalog)
    c = Classification("simple", 0.2, "faq", "low", "text", "interactive", 300, 150)
    p = plan(c, tenant="default", requested_model=None, policy=policy, catalog=catalog)
    rebuilt = RoutePlan(**{f.name: getattr(p, f.name) for f in dataclasses.fields(RoutePlan)})
    assert p == rebuilt and repr(p) == repr(rebuilt)
    assert new_plan(dict(vars(rebuilt))) == p
    assert all(x.key == f"{x.provider}/{x.model}" for x in p.candidates)


def test_category_cache_follows_score_bounds() -> None:
    """A route with a score bound is decided per request, never from the category cache."""
    catalog = load_catalog()
    base = load_policy(None, catalog)
    first = dataclasses.replace(base.routes[-1], name="low-score", match=RouteMatch(max_score=0.3))
    policy = dataclasses.replace(base, routes=(first, *base.routes))
    tables = tables_for(policy, catalog)
    for score, route in [(0.2, "low-score"), (0.5, base.routes[-1].name), (0.1, "low-score"), (0.9, base.routes[-1].name)]:
        c = Classification("standard", score, "chat", "low", "text", "interactive", 300, 150)
        assert plan(c, tenant="default", requested_model=None, policy=policy, catalog=catalog).route == route
        assert tables.lookup(c, "default", None).route is policy.route_for(c, "default")


def test_round4_is_round() -> None:
    import random

    from gateway.routing import _round4

    rng = random.Random(7)
    values = [rng.uniform(-3, 3) for _ in range(100_000)]
    # Right at and around the halves, where the shortcut must hand over to round itself.
    values += [rng.randint(-30_000, 30_000) / 10_000 + d for d in (5e-5, -5e-5, 0.0) for _ in range(20_000)]
    values += [0.0, -0.0, 1e-9, -1e-9, 5e-5, -5e-5, 1.5e-4, 123456.78905, float("inf"), float("-inf")]
    for v in values:
        assert repr(_round4(v)) == repr(round(v, 4)), v


def test_tight_from_is_the_ratio_test() -> None:
    from gateway.routing_tables import _tight_from

    for window in (1, 3, 7, 1000, 16_385, 128_000, 200_000, 1_000_000, 2_000_000):
        for threshold in (0.0, 0.1, 0.5, 0.75, 0.8, 0.9, 0.999, 1.0):
            w = _tight_from(window, threshold)
            assert w / window > threshold and not (w - 1) / window > threshold


def test_plans_with_open_breakers_are_the_same_remembered_or_not() -> None:
    from gateway.routing import RoutingError

    catalog = load_catalog()
    policy = load_policy(None, catalog)
    c = Classification("simple", 0.2, "chat", "low", "text", "interactive", 300, 150)
    first = plan(c, tenant="default", requested_model="auto", policy=policy, catalog=catalog)
    keys = [x.key for x in first.candidates]
    for down in (frozenset(keys[:1]), frozenset(keys[:2]), frozenset(keys[:1]), frozenset()):
        fresh_policy = dataclasses.replace(policy)  # new tables: nothing remembered
        for _ in range(2):
            got = plan(c, tenant="default", requested_model="auto", policy=policy, catalog=catalog, unavailable=down)
            want = plan(c, tenant="default", requested_model="auto", policy=fresh_policy, catalog=catalog,
                        unavailable=down)
            assert repr(got) == repr(want) and not {x.key for x in got.candidates} & down
    everything = frozenset(m.key for m in catalog.models)
    for _ in range(2):
        with pytest.raises(RoutingError) as info:
            plan(c, tenant="default", requested_model="auto", policy=policy, catalog=catalog, unavailable=everything)
        assert info.value.code == "no_eligible_model"
