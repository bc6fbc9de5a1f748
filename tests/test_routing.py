"""The router: platform scenarios on the shipped policy, exact behaviour on a small catalog,
and properties that must hold for any request, tenant and policy."""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gateway.catalog import PRIVACY_RANK, TIER_RANK, TIERS, catalog_from_data, load_catalog
from gateway.classify import Classification
from gateway.policy import Route, RouteMatch, Tenant, load_policy, policy_from_data
from gateway.routing import RoutePlan, RoutingError, plan

SHIPPED_CATALOG = load_catalog()
SHIPPED_POLICY = load_policy(None, SHIPPED_CATALOG)


def req(**overrides: Any) -> Classification:
    base = dict(tier="simple", score=0.2, intent="faq", risk="low", format="text", latency_class="interactive",
                input_tokens=300, output_tokens=150)
    return Classification(**{**base, **overrides})


# ----------------------------------------------------------------------------- shipped policy

FAQ = req()
CAPTION = req(tier="trivial", score=0.05, intent="chat", input_tokens=25, output_tokens=15)
LEGAL = req(tier="expert", score=0.92, intent="reasoning", input_tokens=150_000, output_tokens=6_000)
CODE_REVIEW = req(tier="complex", score=0.7, intent="code", format="tools", input_tokens=12_000, output_tokens=2_000,
                  needs=frozenset({"tools", "streaming"}))
JSON_EXTRACTION = req(tier="standard", score=0.4, intent="extract", format="json", input_tokens=3_000,
                      output_tokens=400, needs=frozenset({"json_schema"}))
PII_HIGH = req(tier="standard", score=0.35, intent="chat", risk="high", input_tokens=800, output_tokens=300)
REGULATED = req(tier="simple", intent="summarize", risk="regulated", input_tokens=2_000, output_tokens=300)

Check = Callable[[RoutePlan], None]


def _models(p: RoutePlan) -> list[Any]:
    return [SHIPPED_CATALOG.by_key[c.key] for c in p.candidates]


def _all(pred: Callable[[Any], bool]) -> Check:
    def check(p: RoutePlan) -> None:
        bad = [m.key for m in _models(p) if not pred(m)]
        assert not bad, bad
    return check


SCENARIOS: list[tuple[str, Classification, str, list[Check]]] = [
    ("faq", FAQ, "quick", [
        lambda p: _check(p.primary.tier == "small"),
        _all(lambda m: m.tier_rank <= TIER_RANK["medium"]),
        lambda p: _check(p.objective == "cost_speed"),
    ]),
    ("one-line caption", CAPTION, "quick", [lambda p: _check(p.primary.tier == "small")]),
    ("long legal analysis", LEGAL, "hard-reasoning", [
        lambda p: _check(p.primary.tier in ("large", "premium")),
        _all(lambda m: m.context_window >= 156_000),
        lambda p: _check(any(r.model == "gpt-4o-mini" and r.reason == "context_window" for r in p.rejected)),
        lambda p: _check(p.objective == "quality" and p.content_fallback is not None),
    ]),
    ("code review with tools", CODE_REVIEW, "code", [
        _all(lambda m: "tools" in m.capabilities and m.tier_rank >= TIER_RANK["medium"]),
        lambda p: _check(len(p.candidates) == 4),
    ]),
    ("json extraction", JSON_EXTRACTION, "default", [_all(lambda m: "json_schema" in m.capabilities)]),
    ("high-risk PII", PII_HIGH, "default", [
        _all(lambda m: m.privacy_rank >= PRIVACY_RANK["restricted"]),
        lambda p: _check(p.privacy_tier == "restricted"),
        lambda p: _check({r.reason for r in p.rejected if r.model == "gpt-4o-mini"} == {"privacy:restricted"}),
    ]),
    ("regulated data", REGULATED, "quick", [
        lambda p: _check([c.key for c in p.candidates] == ["local/local-llm"]),
        lambda p: _check(p.content_fallback is None),
    ]),
]


def _check(condition: bool) -> None:
    assert condition


@pytest.mark.parametrize(("name", "c", "route", "checks"), SCENARIOS, ids=[s[0] for s in SCENARIOS])
def test_platform_scenarios_on_the_shipped_policy(name: str, c: Classification, route: str, checks: list[Check]) -> None:
    p = plan(c, tenant="default", requested_model=None, policy=SHIPPED_POLICY, catalog=SHIPPED_CATALOG)
    assert p.route == route
    assert p.policy_version == SHIPPED_POLICY.version_tag
    assert p.primary.role == "primary" and all(x.role == "fallback" for x in p.candidates[1:])
    assert f"route:{route}" in p.primary.reasons and f"complexity:{c.tier}" in p.primary.reasons
    for check in checks:
        check(p)


def test_shipped_health_tenant_never_leaves_its_floor_and_regions() -> None:
    p = plan(LEGAL, tenant="acme-health", requested_model="claude-haiku-4-5", policy=SHIPPED_POLICY, catalog=SHIPPED_CATALOG)
    assert {c.provider for c in p.candidates} <= {"anthropic", "local"}
    assert p.primary.tier in ("large", "premium")  # floor mode: upgraded for an expert task
    with pytest.raises(RoutingError) as info:
        plan(FAQ, tenant="acme-health", requested_model="gpt-4o-mini", policy=SHIPPED_POLICY, catalog=SHIPPED_CATALOG)
    assert (info.value.status, info.value.code, info.value.param) == (403, "model_not_allowed", "model")


# ----------------------------------------------------------------------------- controlled catalog

ALL_CAPS = ["tools", "json_schema", "vision", "streaming"]


def _one_route_policy(catalog: Any, version: str) -> Any:
    """The smallest policy over `catalog`: one balanced route, the default tenant."""
    return policy_from_data({
        "version": version,
        "objectives": {"cost_speed": {"cost": 0.6, "speed": 0.3, "quality": 0.1},
                       "balanced": {"cost": 0.35, "speed": 0.2, "quality": 0.45},
                       "quality": {"cost": 0.1, "speed": 0.1, "quality": 0.8}},
        "complexity": {},
        "routes": [{"name": "default", "objective": "balanced"}],
        "tenants": {"default": {}},
    }, catalog, f"{version}-policy.yaml")


def _m(id: str, provider: str, tier: str, price: tuple[float, float], speed: float, quality: Any, ctx: int,
       out: int, privacy: str = "standard", lifecycle: str = "managed", caps: list[str] = ALL_CAPS,
       **extra: Any) -> dict[str, Any]:
    return {"id": id, "provider": provider, "tier": tier, "price": {"input": price[0], "output": price[1]},
            "speed": speed, "quality": quality, "context_window": ctx, "max_output_tokens": out,
            "capabilities": caps, "privacy": privacy, "lifecycle": lifecycle, **extra}


CAT = catalog_from_data({
    "providers": [
        {"id": "oa", "api": "openai", "base_url": "https://oa.example/v1", "region": "us"},
        {"id": "an", "api": "anthropic", "base_url": "https://an.example", "region": "us"},
        {"id": "eu", "api": "openai", "base_url": "https://eu.example/v1", "region": "eu"},
        {"id": "loc", "api": "openai", "base_url": "http://127.0.0.1:8000/v1", "region": "local"},
    ],
    "models": [
        _m("tiny", "oa", "small", (0.1, 0.4), 150, 0.5, 16_000, 4_000, caps=["tools", "json_schema", "streaming"]),
        _m("mini", "oa", "small", (0.15, 0.6), 100, 0.6, 128_000, 16_000),
        _m("mid", "oa", "medium", (1, 4), 80, {"default": 0.75, "code": 0.8}, 200_000, 32_000),
        _m("mid", "eu", "medium", (1.1, 4.4), 80, {"default": 0.75, "code": 0.8}, 200_000, 32_000),
        _m("big", "an", "large", (3, 15), 60, {"default": 0.88, "code": 0.92}, 1_000_000, 64_000, privacy="restricted"),
        _m("top", "an", "premium", (10, 50), 40, 0.95, 1_000_000, 64_000, privacy="restricted"),
        _m("old", "oa", "medium", (2, 8), 70, 0.7, 128_000, 16_000, lifecycle="deprecated"),
        _m("beta", "oa", "large", (1, 5), 90, 0.9, 400_000, 64_000, lifecycle="experimental"),
        _m("vault", "loc", "small", (0, 0), 30, 0.55, 32_000, 4_000, privacy="regulated",
           caps=["tools", "json_schema", "streaming"]),
    ],
}, "test-models.yaml")

POL = policy_from_data({
    "version": "test",
    "objectives": {
        "cost_speed": {"cost": 0.6, "speed": 0.3, "quality": 0.1},
        "balanced": {"cost": 0.35, "speed": 0.2, "quality": 0.45},
        "quality": {"cost": 0.1, "speed": 0.1, "quality": 0.8},
    },
    "complexity": {
        "simple": {"quality_floor": 0.5},
        "complex": {"quality_floor": 0.7, "quality_boost": 0.5, "min_tier": "medium"},
        "expert": {"quality_floor": 0.85, "quality_boost": 1.0, "min_tier": "large"},
    },
    "routes": [
        {"name": "code", "match": {"intent": ["code"]}, "quality_floor": 0.7, "max_candidates": 4},
        {"name": "batch", "match": {"latency_class": ["batch"]}, "objective": "cost_speed", "fallback_tier": "small",
         "max_candidates": 5},
        {"name": "locked", "match": {"tenant": ["locked-t"]}, "allow_models": ["vault", "oa/mini"]},
        {"name": "default", "objective": "balanced", "content_fallback": "big", "max_candidates": 4,
         "latency_budget_ms": 20_000},
    ],
    "tenants": {
        "default": {"requested_model": "pinned"},
        "floor-t": {"requested_model": "floor", "model_floor": "mini"},
        "auto-t": {"requested_model": "auto", "denied_models": ["top"]},
        "eu-t": {"allowed_regions": ["eu", "local"]},
        "restricted-t": {"privacy_tier": "restricted"},
        "beta-t": {"allowed_models": ["beta", "mid", "mini"]},
        "denied-t": {"denied_models": ["top", "oa/mid"]},
        "locked-t": {},
    },
}, CAT, "test-policy.yaml")


def route(c: Classification = FAQ, tenant: str = "default", model: str | None = None, **kw: Any) -> RoutePlan:
    return plan(c, tenant=tenant, requested_model=model, policy=POL, catalog=CAT, **kw)


def keys(p: RoutePlan) -> list[str]:
    return [c.key for c in p.candidates]


def rejection(p: RoutePlan, key: str) -> str:
    return next(r.reason for r in p.rejected if f"{r.provider}/{r.model}" == key)


def error(**kw: Any) -> RoutingError:
    with pytest.raises(RoutingError) as info:
        route(**kw)
    return info.value


def test_pinned_model_is_primary_even_below_the_route_floor() -> None:
    code = req(tier="complex", intent="code", input_tokens=2_000, output_tokens=500)
    p = route(code, model="mini")
    assert p.primary.key == "oa/mini" and "requested:pinned" in p.primary.reasons
    assert p.requested_mode == "pinned" and p.requested_model == "mini"
    assert all(CAT.by_key[k].quality_for("code") >= 0.7 for k in keys(p)[1:])  # fallbacks keep the floor


def test_pinned_model_with_open_breaker_fails_over_to_its_other_deployment_first() -> None:
    p = route(model="mid", unavailable=frozenset({"oa/mid"}))
    assert keys(p)[0] == "eu/mid" and "requested:pinned" in p.primary.reasons
    assert rejection(p, "oa/mid") == "breaker_open"
    p = route(model="eu/mid")
    assert keys(p)[:2] == ["eu/mid", "oa/mid"] and "fallback:same_model" in p.candidates[1].reasons


def test_pinned_model_unavailable_routes_on_with_a_reason() -> None:
    p = route(model="mini", unavailable=frozenset({"oa/mini"}))
    assert "oa/mini" not in keys(p) and "requested:pinned_unavailable" in p.primary.reasons


def test_floor_mode_keeps_the_requested_model_on_easy_tasks_and_upgrades_hard_ones() -> None:
    easy = route(FAQ, tenant="floor-t", model="mid")
    assert easy.primary.key in ("oa/mid", "eu/mid") and "requested:floor" in easy.primary.reasons
    hard = route(req(tier="expert", intent="reasoning"), tenant="floor-t", model="mid")
    assert hard.primary.tier in ("large", "premium")
    for p in (easy, hard):
        assert all(CAT.by_key[k].tier_rank >= TIER_RANK["medium"] for k in keys(p)), keys(p)
    assert rejection(easy, "oa/mini") == "below_requested:mid"


def test_auto_mode_treats_the_requested_model_as_a_bonus() -> None:
    wide = dataclasses.replace(POL, routes=tuple(dataclasses.replace(r, max_candidates=16) for r in POL.routes))
    plain = {c.key: c.score for c in plan(FAQ, tenant="auto-t", requested_model=None, policy=wide, catalog=CAT).candidates}
    hinted = plan(FAQ, tenant="auto-t", requested_model="tiny", policy=wide, catalog=CAT)
    tiny = next(c for c in hinted.candidates if c.key == "oa/tiny")
    assert tiny.score == pytest.approx(plain["oa/tiny"] + POL.scoring.requested_bonus, abs=1e-3)
    assert "requested:auto" in tiny.reasons
    # A hint the tenant may not use is not taken, and is no error either.
    assert "an/top" not in keys(route(req(tier="expert", intent="reasoning"), tenant="auto-t", model="top"))


def test_requested_model_errors() -> None:
    e = error(model="gpt-17")
    assert (e.status, e.code, e.param) == (404, "model_not_found", "model")
    assert error(model="nowhere/mini").status == 404
    e = error(model="auto:fastest")
    assert e.status == 404 and "auto:cost" in e.message
    e = error(tenant="denied-t", model="top")
    assert (e.status, e.code, e.param) == (403, "model_not_allowed", "model") and "denied:tenant" in e.message
    assert error(tenant="floor-t", model="tiny").code == "model_not_allowed"  # below the tenant's floor
    assert error(model="beta").code == "model_not_allowed"  # experimental, not allowed for this tenant
    # One deployment of `mid` is denied to denied-t, the other is fine: no 403.
    assert route(tenant="denied-t", model="mid").primary.key == "eu/mid"


def test_lifecycle_gates() -> None:
    p = route(req(tier="standard", intent="chat"))
    assert rejection(p, "oa/old") == "lifecycle:deprecated" and rejection(p, "oa/beta") == "lifecycle:experimental"
    assert route(model="old").primary.key == "oa/old"  # explicitly requested
    beta = route(req(tier="expert", intent="reasoning"), tenant="beta-t")
    assert beta.primary.key == "oa/beta" and set(keys(beta)) <= {"oa/beta", "oa/mid", "eu/mid", "oa/mini"}


@pytest.mark.parametrize(("model", "objective"), [
    ("auto", "balanced"), (None, "balanced"), ("auto:cost", "cost_speed"),
    ("auto:balanced", "balanced"), ("auto:quality", "quality"), ("auto:cost_speed", "cost_speed"),
])
def test_virtual_models_pick_the_objective(model: str | None, objective: str) -> None:
    p = route(req(tier="standard", intent="chat"), model=model)
    assert p.objective == objective and f"objective:{objective}" in p.primary.reasons
    assert p.requested_model is None and p.requested_mode is None


def test_objective_precedence_virtual_over_hint_over_route() -> None:
    hinted = req(tier="standard", intent="chat", objective="quality")
    assert route(hinted).objective == "quality"
    assert route(hinted, model="auto:cost").objective == "cost_speed"
    cheap, best = route(req(tier="standard", intent="chat"), model="auto:cost"), route(req(tier="standard", intent="chat"), model="auto:quality")
    assert CAT.by_key[best.primary.key].quality_for("chat") > CAT.by_key[cheap.primary.key].quality_for("chat")
    assert CAT.by_key[best.primary.key].price_output > CAT.by_key[cheap.primary.key].price_output


def test_open_breakers_are_excluded_and_explained() -> None:
    p = route(unavailable=frozenset({"oa/mini", "oa/tiny"}))
    assert not {"oa/mini", "oa/tiny"} & set(keys(p))
    assert rejection(p, "oa/mini") == "breaker_open" and rejection(p, "oa/tiny") == "breaker_open"
    everything = frozenset(m.key for m in CAT.models)
    e = error(unavailable=everything)
    assert (e.status, e.code) == (400, "no_eligible_model") and "breaker_open" in e.message
    assert {r.reason for r in e.reasons} >= {"breaker_open"}


def test_context_window_and_output_fit() -> None:
    long_input = route(req(input_tokens=20_000, output_tokens=200))
    assert rejection(long_input, "oa/tiny") == "context_window"
    long_output = route(req(input_tokens=200, output_tokens=5_000))
    assert rejection(long_output, "oa/tiny") == "max_output"
    assert all(CAT.by_key[k].context_window >= 20_200 for k in keys(long_input))
    e = error(c=req(input_tokens=2_000_000))
    assert e.code == "no_eligible_model" and "context_window" in e.message


def test_near_the_context_limit_a_model_is_penalized() -> None:
    roomy = {c.key: c for c in route(req(input_tokens=1_000, output_tokens=100), model="auto:cost").candidates}
    tight = {c.key: c for c in route(req(input_tokens=100_000, output_tokens=100), model="auto:cost").candidates}
    assert "context_tight" in tight["oa/mini"].reasons and "context_fit" in roomy["oa/mini"].reasons
    assert "context_fit" in tight.get("oa/mid", tight.get("eu/mid")).reasons


def test_privacy_and_regions() -> None:
    high = route(req(tier="standard", intent="chat", risk="high"))
    assert {CAT.by_key[k].privacy for k in keys(high)} <= {"restricted", "regulated"}
    assert high.privacy_tier == "restricted" and rejection(high, "oa/mini") == "privacy:restricted"
    regulated = route(req(risk="regulated"))
    assert keys(regulated) == ["loc/vault"] and regulated.content_fallback is None
    assert set(keys(route(tenant="eu-t"))) <= {"eu/mid", "loc/vault"}
    assert rejection(route(tenant="eu-t"), "oa/mini") == "region"
    assert set(keys(route(tenant="restricted-t"))) <= {"an/big", "an/top", "loc/vault"}
    e = error(c=req(risk="regulated", needs=frozenset({"vision"})))
    assert e.code == "no_eligible_model" and "capability:vision (vault)" in e.message


def test_fallbacks_go_one_tier_down_then_the_rest() -> None:
    p = route(req(tier="complex", intent="chat"), model="auto:quality")
    primary_rank = TIER_RANK[p.primary.tier]
    assert primary_rank >= TIER_RANK["large"]
    next_down = max(TIER_RANK[c.tier] for c in p.candidates[1:] if TIER_RANK[c.tier] < primary_rank)
    tiers = [TIER_RANK[c.tier] for c in p.candidates[1:]]
    # Every fallback of the next tier down comes before every other fallback.
    first_other = next((i for i, t in enumerate(tiers) if t != next_down), len(tiers))
    assert all(t == next_down for t in tiers[:first_other]) and next_down not in tiers[first_other:]
    assert any(r.startswith("fallback:tier_down:") for r in p.candidates[1].reasons)
    batch = route(req(tier="standard", intent="chat", latency_class="batch"))
    assert batch.route == "batch" and len(batch.candidates) <= 5
    assert all(c.tier == "small" for c in batch.candidates[1:3])  # fallback_tier: small


def test_plan_carries_route_settings() -> None:
    p = route(req(tier="standard", intent="chat"))
    assert p.route == "default" and p.latency_budget_ms == 20_000 and len(p.candidates) <= 4
    assert p.content_fallback is not None and p.content_fallback.key == "an/big"
    assert "content_fallback" in p.content_fallback.reasons
    assert sum((p.weights.cost, p.weights.speed, p.weights.quality)) == pytest.approx(1.0)
    assert route(req(latency_budget_ms=500)).latency_budget_ms == 500
    assert p.policy_version == POL.version_tag == f"test+{POL.content_hash[:12]}"
    assert route(tenant="some-unlisted-tenant").tenant == "default"
    locked = route(tenant="locked-t")
    assert locked.route == "locked" and set(keys(locked)) <= {"loc/vault", "oa/mini"}


def test_complexity_need_is_relaxed_when_nothing_meets_it() -> None:
    p = route(req(tier="expert", intent="reasoning"), tenant="eu-t")
    assert p.primary.key == "eu/mid" and "need_relaxed" in p.primary.reasons


# ----------------------------------------------------------------------------- properties

MODEL_IDS = sorted(CAT.by_id)
REGIONS = ["us", "eu", "local"]

classifications = st.builds(
    Classification,
    tier=st.sampled_from(["trivial", "simple", "standard", "complex", "expert"]),
    score=st.floats(0, 1),
    intent=st.sampled_from(["chat", "faq", "code", "reasoning", "extract", "summarize"]),
    risk=st.sampled_from(["low", "medium", "high", "regulated"]),
    format=st.sampled_from(["text", "json", "tools"]),
    latency_class=st.sampled_from(["interactive", "batch"]),
    input_tokens=st.integers(1, 300_000),
    output_tokens=st.integers(1, 40_000),
    needs=st.frozensets(st.sampled_from(ALL_CAPS)),
    objective=st.sampled_from([None, "cost_speed", "balanced", "quality"]),
)
tenants = st.builds(
    Tenant,
    name=st.just("t"),
    privacy_tier=st.sampled_from(["public", "standard", "restricted", "regulated"]),
    allowed_regions=st.one_of(st.none(), st.frozensets(st.sampled_from(REGIONS), min_size=1)),
    model_floor=st.one_of(st.none(), st.sampled_from(MODEL_IDS)),
    allowed_models=st.frozensets(st.sampled_from(MODEL_IDS), max_size=4),
    denied_models=st.frozensets(st.sampled_from(MODEL_IDS), max_size=3),
    requested_model=st.sampled_from(["pinned", "floor", "auto"]),
)
routes = st.builds(
    Route,
    name=st.just("only"),
    match=st.just(RouteMatch()),
    objective=st.just("balanced"),
    weights=st.just(POL.objectives["balanced"]),
    quality_floor=st.sampled_from([0.0, 0.6, 0.8]),
    min_tier=st.sampled_from([None, *TIERS]),
    max_tier=st.sampled_from([None, *TIERS]),
    fallback_tier=st.sampled_from([None, *TIERS]),
    max_candidates=st.integers(1, 6),
    allow_models=st.frozensets(st.sampled_from(MODEL_IDS), max_size=5),
    deny_models=st.frozensets(st.sampled_from(MODEL_IDS), max_size=2),
    content_fallback=st.sampled_from([None, *MODEL_IDS]),
)
requests = st.one_of(st.none(), st.sampled_from(["auto", "auto:cost", "auto:quality", *MODEL_IDS, "eu/mid"]))
breakers = st.frozensets(st.sampled_from([m.key for m in CAT.models]), max_size=3)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(c=classifications, tenant=tenants, r=routes, requested=requests, unavailable=breakers)
def test_plans_never_break_floor_privacy_or_region(c: Classification, tenant: Tenant, r: Route,
                                                    requested: str | None, unavailable: frozenset[str]) -> None:
    policy = dataclasses.replace(POL, routes=(r,), tenants={"default": Tenant(name="default"), "t": tenant})
    try:
        p = plan(c, tenant="t", requested_model=requested, policy=policy, catalog=CAT, unavailable=unavailable)
    except RoutingError as e:
        assert (e.status, e.code) in {(400, "no_eligible_model"), (403, "model_not_allowed")}
        return
    needed = max(PRIVACY_RANK[tenant.privacy_tier], {"high": 2, "regulated": 3}.get(c.risk, 0))
    floor = CAT.resolve(tenant.model_floor)[0] if tenant.model_floor else None
    chosen = [*p.candidates, *([p.content_fallback] if p.content_fallback else [])]
    assert 1 <= len(p.candidates) <= r.max_candidates
    assert len({x.key for x in p.candidates}) == len(p.candidates)
    for cand in chosen:
        m = CAT.by_key[cand.key]
        assert m.privacy_rank >= needed, (m.key, "privacy")
        assert tenant.allowed_regions is None or m.regions <= tenant.allowed_regions, (m.key, "region")
        if floor is not None:
            assert m.tier_rank >= floor.tier_rank and m.quality_for(c.intent) >= floor.quality_for(c.intent), (m.key, "floor")
        if requested in CAT.by_id and tenant.requested_model == "floor":
            asked = CAT.by_id[requested][0]
            assert m.tier_rank >= asked.tier_rank and m.quality_for(c.intent) >= asked.quality_for(c.intent)
        assert c.needs <= m.capabilities and c.input_tokens + c.output_tokens <= m.context_window
        assert c.output_tokens <= m.max_output_tokens and m.key not in unavailable
        assert m.id not in tenant.denied_models and m.id not in r.deny_models
        assert not tenant.allowed_models or m.id in tenant.allowed_models
        assert not r.allow_models or m.id in r.allow_models
        if m.lifecycle == "experimental":
            assert m.id in tenant.allowed_models or m.id in r.allow_models


# ----------------------------------------------------------------------------- what is remembered

def _plan_or_error(c: Classification, requested: str | None, policy: Any, unavailable: frozenset[str],
                   tenant: str = "t") -> object:
    try:
        return plan(c, tenant=tenant, requested_model=requested, policy=policy, catalog=CAT, unavailable=unavailable)
    except RoutingError as e:
        return (e.status, e.code, e.message, e.param, e.reasons)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    c=classifications,
    tenant=tenants,
    r=routes,
    requested=requests,
    variants=st.lists(st.tuples(
        st.one_of(st.integers(1, 20_000), st.integers(1, 1_100_000)),
        # about the catalog's output limits, and past them
        st.one_of(st.integers(1, 5_000), st.integers(1, 70_000),
                  st.sampled_from([n + d for n in (4_000, 16_000, 32_000, 64_000) for d in (-1, 0, 1)])),
        breakers,
        st.sampled_from([None, 100, 2_000, 20_000]),
    ), min_size=2, max_size=10),
)
def test_a_router_that_remembers_plans_as_a_cold_one(c: Classification, tenant: Tenant, r: Route,
                                                     requested: str | None,
                                                     variants: list[tuple[int, int, frozenset[str], int | None]]) -> None:
    """Shapes, their outcomes per token bucket and breaker set, and the candidates per order
    are remembered: requests of one shape, in any order, get what a router that has seen
    nothing before would plan for each."""
    policy = dataclasses.replace(POL, routes=(r,), tenants={"default": Tenant(name="default"), "t": tenant})
    requests_ = [(dataclasses.replace(c, input_tokens=i, output_tokens=o, latency_budget_ms=b), u)
                 for i, o, u, b in variants]
    warm = [_plan_or_error(x, requested, policy, u) for x, u in requests_]
    for (x, u), seen in zip(requests_, warm):
        cold = dataclasses.replace(policy)  # a policy object of its own: every table built afresh
        assert _plan_or_error(x, requested, cold, u) == seen


def test_scores_are_the_integer_formula_bit_for_bit() -> None:
    """Scores are computed in floats while price x tokens stays exact in them (below 2**53),
    in integers beyond: either way, the formula's value in integers."""
    import math

    from gateway.routing import _COST_SPAN, _scores
    from gateway.routing_tables import eligibility, tables_for

    dear = catalog_from_data({
        "providers": [{"id": "oa", "api": "openai", "base_url": "https://oa.example/v1", "region": "us"}],
        "models": [_m("dear", "oa", "large", (100_000, 90_000), 50, 0.9, 10**12, 10**11),
                   _m("cheap", "oa", "small", (0.1, 0.4), 150, 0.5, 10**12, 10**11),
                   _m("odd", "oa", "medium", (99_999.999_999, 3.3), 80, 0.7, 10**12, 10**11)],
    }, "dear-models.yaml")
    policy = _one_route_policy(dear, "dear")
    tables = tables_for(policy, dear)
    for inp, outp in [(1, 1), (149, 16), (90_071, 1), (90_072, 1), (45_035_996, 0), (10**9 + 7, 3),
                      (3, 10**9 + 7), (123_456_789, 987_654_321), (0, 0)]:
        c = req(input_tokens=inp, output_tokens=outp, tier="trivial")
        shape = tables.lookup(c, "default", None)
        ranking = eligibility(shape, inp + outp, outp, frozenset()).ranking
        scores, _ = _scores(ranking, inp, outp, None, shape, tables)
        unit = (inp * tables.max_in + outp * tables.max_out) / _COST_SPAN or 1.0
        w = shape.weights.cost
        expected = [w * (1.0 - math.log1p((inp * o.input_price + outp * o.output_price) / unit) / math.log1p(_COST_SPAN))
                    + o.speed_part + o.quality_part for o in ranking.options]
        assert [x.hex() for x in scores] == [x.hex() for x in expected], (inp, outp)


def test_each_token_bucket_and_breaker_set_gets_its_own_outcome() -> None:
    """Around every context window and output limit of the catalog, in both directions and
    with breakers open or not, a warm router plans as a cold one."""
    windows = sorted({m.context_window for m in CAT.models})
    outputs = sorted({m.max_output_tokens for m in CAT.models})
    grid = [(w + dw - o - do, o + do) for w in windows for o in outputs for dw in (-1, 0, 1) for do in (-1, 0, 1)
            if w + dw - o - do >= 1]
    for order in (grid, grid[::-1]):
        policy = dataclasses.replace(POL)  # warmed up by this order alone
        for i, (inp, outp) in enumerate(order):
            unavailable = (frozenset(), frozenset({"oa/mid"}), frozenset({"oa/mini", "an/big"}))[i % 3]
            c = req(input_tokens=inp, output_tokens=outp)
            warm = _plan_or_error(c, "mid", policy, unavailable, tenant="auto-t")
            cold = _plan_or_error(c, "mid", dataclasses.replace(POL), unavailable, tenant="auto-t")
            assert warm == cold, (inp, outp, unavailable)


def test_each_order_of_the_scores_gets_its_own_candidates() -> None:
    """The candidates are remembered per order the scores put the options in: as the token
    counts move two fallbacks' scores past each other, the fallbacks change with them."""
    catalog = catalog_from_data({
        "providers": [{"id": "oa", "api": "openai", "base_url": "https://oa.example/v1", "region": "us"}],
        "models": [_m("lead", "oa", "large", (0, 0), 100, 0.9, 100_000, 10_000),
                   _m("reads", "oa", "small", (0.1, 10), 100, 0.6, 100_000, 10_000),  # cheap input
                   _m("writes", "oa", "small", (10, 0.1), 100, 0.6, 100_000, 10_000)],  # cheap output
    }, "crossing-models.yaml")
    policy = _one_route_policy(catalog, "crossing")
    orders = []
    for inp, outp in [(1_000, 1), (1_000, 1_000), (1, 1_000), (1_000, 2), (2, 1_000)]:
        c = req(tier="trivial", input_tokens=inp, output_tokens=outp)
        warm = plan(c, tenant="default", requested_model=None, policy=policy, catalog=catalog)
        cold = plan(c, tenant="default", requested_model=None, policy=dataclasses.replace(policy), catalog=catalog)
        assert warm == cold, (inp, outp)
        orders.append([x.model for x in warm.candidates])
    assert orders[0] == orders[3] == ["lead", "reads", "writes"]
    assert orders[2] == orders[4] == ["lead", "writes", "reads"]


def test_content_fallback_is_scored_without_the_bonus_and_the_need() -> None:
    # Requested in auto mode, the content fallback gets the bonus as a candidate, not as the fallback.
    hinted = route(req(tier="standard", intent="chat"), tenant="auto-t", model="big")
    plain = route(req(tier="standard", intent="chat"), tenant="auto-t")
    assert hinted.content_fallback == plain.content_fallback
    assert next(c for c in hinted.candidates if c.model == "big").score > plain.content_fallback.score
    # A complex task rules the small models out as candidates, not as the content fallback.
    small = dataclasses.replace(POL.routes[-1], content_fallback="tiny")
    policy = dataclasses.replace(POL, routes=(small,))
    p = plan(req(tier="complex", intent="chat"), tenant="default", requested_model=None, policy=policy, catalog=CAT)
    assert p.content_fallback is not None and p.content_fallback.model == "tiny"
    assert "tiny" not in {c.model for c in p.candidates} and any(r.reason == "below_need:complex" for r in p.rejected)
