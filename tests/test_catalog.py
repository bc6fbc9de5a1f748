"""Catalog and policy loading: the shipped files, and precise errors for broken ones."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from gateway import classify
from gateway.catalog import (
    CAPABILITIES,
    LIFECYCLES,
    PRIVACY_TIERS,
    TIERS,
    ConfigError,
    default_catalog_path,
    load_catalog,
    read_yaml,
    schema_dir,
)
from gateway.policy import check, default_policy_path, load_policy
from gateway.routing import estimate_cost_micros

CATALOG = load_catalog()


def write(tmp_path: Path, name: str, data: Any) -> Path:
    path = tmp_path / name
    path.write_text(data if isinstance(data, str) else yaml.safe_dump(data, sort_keys=False))
    return path


def model(**overrides: Any) -> dict[str, Any]:
    base = {
        "id": "m1", "provider": "p1", "price": {"input": 1.0, "output": 2.0}, "speed": 50,
        "quality": 0.7, "context_window": 8000, "max_output_tokens": 1000,
        "capabilities": ["tools", "streaming"], "privacy": "standard", "lifecycle": "managed", "tier": "small",
    }
    return {**base, **overrides}


def catalog_data(*models: dict[str, Any]) -> dict[str, Any]:
    return {
        "providers": [{"id": "p1", "api": "openai", "base_url": "https://p1.example/v1", "region": "us"}],
        "models": list(models) or [model()],
    }


def policy_data(**overrides: Any) -> dict[str, Any]:
    base = {
        "version": "t1",
        "objectives": {
            "cost_speed": {"cost": 0.6, "speed": 0.3, "quality": 0.1},
            "balanced": {"cost": 0.4, "speed": 0.2, "quality": 0.4},
            "quality": {"cost": 0.1, "speed": 0.1, "quality": 0.8},
        },
        "routes": [{"name": "code", "match": {"intent": ["code"]}}, {"name": "default", "objective": "balanced"}],
    }
    return {**base, **overrides}


def catalog_error(tmp_path: Path, data: Any) -> str:
    with pytest.raises(ConfigError) as info:
        load_catalog(write(tmp_path, "models.yaml", data))
    return str(info.value)


def policy_error(tmp_path: Path, data: Any) -> ConfigError:
    with pytest.raises(ConfigError) as info:
        load_policy(write(tmp_path, "policy.yaml", data), CATALOG)
    return info.value


# ----------------------------------------------------------------------------- shipped files


def test_shipped_catalog_and_policy_check_clean() -> None:
    assert check(default_catalog_path(), default_policy_path()) == []
    assert check() == []
    assert default_catalog_path().name == "models.yaml" and default_catalog_path().is_file()


def test_shipped_catalog_covers_three_vendors_and_a_local_model() -> None:
    apis = {CATALOG.providers[m.provider].api for m in CATALOG.models}
    assert apis == {"openai", "anthropic", "gemini"}
    env = {p.id: (p.base_url_env, p.api_key_env) for p in CATALOG.providers.values()}
    assert env["openai"] == ("OPENAI_BASE_URL", "OPENAI_API_KEY")
    assert env["anthropic"] == ("ANTHROPIC_BASE_URL", "ANTHROPIC_API_KEY")
    assert env["gemini"] == ("GEMINI_BASE_URL", "GEMINI_API_KEY")
    (local,) = [m for m in CATALOG.models if m.provider == "local"]
    provider = CATALOG.providers["local"]
    assert (provider.api, provider.base_url, provider.base_url_env) == ("openai", "http://127.0.0.1:8000/v1", "LOCAL_LLM_BASE_URL")
    assert (local.price_input, local.price_output, local.privacy, local.regions) == (0, 0, "regulated", frozenset({"local"}))
    for m in CATALOG.models:
        assert m.price_output >= m.price_input >= m.price_cached_input, m.key
        assert m.max_output_tokens <= m.context_window
    # One model of each vendor's family the brief names, with its list price.
    assert CATALOG.by_key["openai/gpt-4o-mini"].price_input == 0.15
    assert {m.tier for m in CATALOG.models} == set(TIERS)


def test_schema_enums_match_the_code() -> None:
    policy_schema = json.loads((schema_dir() / "policy.schema.json").read_text())
    catalog_schema = json.loads((schema_dir() / "catalog.schema.json").read_text())
    defs = policy_schema["$defs"]
    assert tuple(defs["complexity_tier"]["enum"]) == classify.TIERS
    assert tuple(defs["match"]["properties"]["risk"]["items"]["enum"]) == classify.RISKS
    assert tuple(defs["match"]["properties"]["format"]["items"]["enum"]) == classify.FORMATS
    assert tuple(defs["match"]["properties"]["latency_class"]["items"]["enum"]) == classify.LATENCY_CLASSES
    assert tuple(defs["tier"]["enum"]) == TIERS
    assert tuple(defs["privacy_tier"]["enum"]) == PRIVACY_TIERS
    m = catalog_schema["$defs"]["model"]["properties"]
    assert tuple(m["tier"]["enum"]) == TIERS
    assert tuple(m["privacy"]["enum"]) == PRIVACY_TIERS
    assert tuple(m["lifecycle"]["enum"]) == LIFECYCLES
    assert tuple(m["capabilities"]["items"]["enum"]) == CAPABILITIES


# ----------------------------------------------------------------------------- catalog


def test_catalog_defaults_and_resolution(tmp_path: Path) -> None:
    data = catalog_data(
        model(id="gpt-x", quality={"default": 0.7, "code": 0.9}),
        model(id="gpt-x", provider="p2", upstream_model="gpt-x-2026-01-01", regions=["eu"],
              price={"input": 1.0, "output": 2.0, "cached_input": 0.1}),
    )
    data["providers"].append({"id": "p2", "api": "openai", "base_url": "https://eu.example/openai/v1", "region": "eu",
                              "query": {"api-version": "2025-04-01"}, "api_key_env": "P2_KEY",
                              "base_url_env": "P2_URL"})
    cat = load_catalog(write(tmp_path, "models.yaml", data))
    first, second = cat.resolve("gpt-x")
    assert (first.key, second.key) == ("p1/gpt-x", "p2/gpt-x")
    assert cat.resolve("p2/gpt-x") == (second,) and cat.resolve("p3/gpt-x") == () and cat.resolve("nope") == ()
    assert first.upstream_model == "gpt-x" and second.upstream_model == "gpt-x-2026-01-01"
    assert first.regions == {"us"} and second.regions == {"eu"}
    assert first.price_cached_input == 1.0  # unpublished cached price: billed as full input
    assert first.quality_for("code") == 0.9 and first.quality_for("chat") == 0.7 and second.quality_for("code") == 0.7
    dep = cat.deployment(second, {"P2_URL": "http://127.0.0.1:9/v1/", "P2_KEY": "k"})
    assert (dep.base_url, dep.api_key, dep.query, dep.key) == ("http://127.0.0.1:9/v1", "k", {"api-version": "2025-04-01"}, "p2/gpt-x")
    assert cat.deployment(second, {}).base_url == "https://eu.example/openai/v1"


CATALOG_BREAKS = [
    (model(price={"input": "cheap", "output": 1}), "models[0].price.input", "expected a number, got string \"cheap\""),
    (model(price={"input": -1, "output": 1}), "models[0].price.input", "expected a number >= 0, got -1"),
    ({k: v for k, v in model().items() if k != "tier"}, "models[0]", "missing required field 'tier'"),
    (model(capabilities=["tools", "telepathy"]), "models[0].capabilities[1]", "expected one of tools, json_schema, vision, streaming"),
    (model(quality={"code": 0.9}), "models[0].quality", "expected a number in [0, 1] or a mapping"),
    (model(quality=1.2), "models[0].quality", "expected a number in [0, 1] or a mapping"),
    (model(tier="huge"), "models[0].tier", "expected one of small, medium, large, premium; got \"huge\""),
    (model(id="openai/gpt"), "models[0].id", "no '/'"),
    (model(speeed=3), "models[0]", "unknown field 'speeed'"),
    (model(provider="nowhere"), "models[0].provider", "expected one of the providers (p1), got 'nowhere'"),
    (model(max_output_tokens=9000), "models[0].max_output_tokens", "expected at most context_window (8000)"),
    # found by fuzzing: a window this large passed, then routing's first request never returned
    (model(context_window=1e308, max_output_tokens=10), "models[0].context_window", "<= 1000000000000"),
    (model(speed=1e308), "models[0].speed", "<= 1000000"),
]


@pytest.mark.parametrize(("broken", "where", "expected"), CATALOG_BREAKS)
def test_broken_catalog_names_file_path_and_expectation(tmp_path: Path, broken: dict, where: str, expected: str) -> None:
    message = catalog_error(tmp_path, catalog_data(broken))
    assert message.startswith(f"{tmp_path / 'models.yaml'}: {where}: "), message
    assert expected in message


def test_broken_catalog_structure(tmp_path: Path) -> None:
    data = catalog_data(model(), model())
    assert "models[1].id: duplicate model 'm1' at provider 'p1'" in catalog_error(tmp_path, data)
    data = catalog_data()
    data["providers"][0]["base_url"] = "https://p1.example/v1/"
    assert "providers[0].base_url: expected an http(s) URL without a trailing slash" in catalog_error(tmp_path, data)
    data["providers"][0]["regoin"] = "us"
    with pytest.raises(ConfigError) as info:
        load_catalog(write(tmp_path, "models.yaml", data))
    assert len(info.value.problems) == 2 and "(and 1 more problem)" in str(info.value)
    assert any("providers[0]: unknown field 'regoin'" in p for p in info.value.problems)
    assert "(top level): missing required field 'models'" in catalog_error(tmp_path, {"providers": []})
    assert "(top level): expected a mapping, got list" in catalog_error(tmp_path, [1, 2])


def test_yaml_syntax_error_names_line_and_column(tmp_path: Path) -> None:
    message = catalog_error(tmp_path, "providers:\n  - id: p1\n    api: [openai\nmodels: []\n")
    assert re.match(rf"{re.escape(str(tmp_path / 'models.yaml'))}:\d+:\d+: not valid YAML", message), message
    with pytest.raises(ConfigError, match="nothing.yaml: cannot read"):
        load_catalog(tmp_path / "nothing.yaml")


# ----------------------------------------------------------------------------- policy


POLICY_BREAKS = [
    ({"routes": [{"name": "a"}, {"name": "b"}, {"name": "c", "objective": "fast"}]},
     "routes[2].objective", "expected one of the objectives (cost_speed, balanced, quality), got 'fast'"),
    ({"routes": [{"name": "a", "objective": {"cost": 1}}, {"name": "d"}]},
     "routes[0].objective", "expected an objective name or explicit weights {cost, speed, quality}"),
    ({"routes": [{"name": "a", "allow_models": ["gpt-4o-mini", "gpt-9"]}, {"name": "d"}]},
     "routes[0].allow_models[1]", "expected a model of the catalog, got 'gpt-9'"),
    ({"routes": [{"name": "a", "deny_models": ["nowhere/gpt-4o"]}, {"name": "d"}]},
     "routes[0].deny_models[0]", "expected a model of the catalog, got 'nowhere/gpt-4o'"),
    ({"routes": [{"name": "a", "content_fallback": "claude-3"}, {"name": "d"}]},
     "routes[0].content_fallback", "expected a model of the catalog, got 'claude-3'"),
    ({"routes": [{"name": "a"}, {"name": "d", "match": {"risk": ["high"]}}]},
     "routes[1].match", "expected no match on the last route: it is the default route"),
    ({"routes": [{"name": "a"}, {"name": "a"}]}, "routes[1].name", "duplicate route name 'a'"),
    ({"routes": [{"name": "a", "min_tier": "large", "max_tier": "small"}, {"name": "d"}]},
     "routes[0].min_tier", "expected a tier at most max_tier (small), got 'large'"),
    ({"routes": [{"name": "a", "match": {"risk": ["extreme"]}}, {"name": "d"}]},
     "routes[0].match.risk[0]", "expected one of low, medium, high, regulated"),
    ({"routes": [{"name": "a", "degradation": {"reduced": {"drop": ["everything"]}}}, {"name": "d"}]},
     "routes[0].degradation.reduced.drop[0]", "expected one of tools, tool_choice"),
    ({"routes": [{"name": "a", "degradation": {"static": {"mode": "silence"}}}, {"name": "d"}]},
     "routes[0].degradation.static.mode", "expected one of completion, error"),
    ({"tenants": {"acme": {"model_floor": "gpt-99"}}}, "tenants.acme.model_floor", "expected a model of the catalog, got 'gpt-99'"),
    ({"tenants": {"acme": {"denied_models": ["x"]}}}, "tenants.acme.denied_models[0]", "expected a model of the catalog"),
    ({"tenants": {"acme": {"requested_model": "sometimes"}}}, "tenants.acme.requested_model", "expected one of pinned, floor, auto"),
    ({"tenants": {"acme": {"privacy_tier": "secret"}}}, "tenants.acme.privacy_tier", "expected one of public, standard, restricted, regulated"),
    ({"objectives": {"balanced": {"cost": 1, "speed": 0, "quality": 0}, "quality": {"cost": 0, "speed": 0, "quality": 1}}},
     "objectives", "missing required field 'cost_speed'"),
    ({"limits": {"caps": [{"scope": "global", "id": "x", "window": "day", "limit_usd": 5}]}},
     "limits.caps[0].id", "expected no id: scope global covers everything"),
    ({"limits": {"caps": [{"scope": "tenant", "window": "day", "limit_usd": 5}]}},
     "limits.caps[0]", "missing required field 'id'"),
    ({"limits": {"caps": [{"scope": "tenant", "id": "a", "window": "weekly", "limit_usd": 5}]}},
     "limits.caps[0].window", "expected day, month or rolling:<seconds>, got \"weekly\""),
    ({"limits": {"caps": [{"scope": "provider", "id": "azure", "window": "month", "limit_usd": 5}]}},
     "limits.caps[0].id", "expected a provider of the catalog"),
    ({"limits": {"caps": [{"scope": "route", "id": "nope", "window": "month", "limit_usd": 5}]}},
     "limits.caps[0].id", "expected a route name (code, default), got 'nope'"),
    ({"limits": {"caps": [{"scope": "model", "id": "gpt-0", "window": "rolling:60", "limit_usd": 5}]}},
     "limits.caps[0].id", "expected a model of the catalog, got 'gpt-0'"),
    ({"limits": {"rate_limits": [{"scope": "tenant", "id": "a"}]}},
     "limits.rate_limits[0]", "expected a rate limit with rpm, tpm or both"),
    ({"limits": {"share_quotas": [{"scope": "tenant", "id": "a", "tier": "premium", "max_share": 1.5, "window_s": 60}]}},
     "limits.share_quotas[0].max_share", "expected a number <= 1, got 1.5"),
    ({"limits": {"failure_mode": "shrug"}}, "limits.failure_mode", "expected one of fail_open, fail_closed"),
    ({"decision_log": {"include_prompt": "no"}}, "decision_log.include_prompt", "expected a boolean"),
    ({"limits": {"caps": [{"scope": "tenant", "id": "a", "window": "day", "limit_usd": 1e308}]}},
     "limits.caps[0].limit_usd", "<= 1000000000"),
]


@pytest.mark.parametrize(("overrides", "where", "expected"), POLICY_BREAKS)
def test_broken_policy_names_file_path_and_expectation(tmp_path: Path, overrides: dict, where: str, expected: str) -> None:
    error = policy_error(tmp_path, policy_data(**overrides))
    assert any(p.startswith(f"{tmp_path / 'policy.yaml'}: {where}: ") and expected in p for p in error.problems), error.problems


def test_check_reports_every_problem_of_a_broken_pair(tmp_path: Path) -> None:
    catalog_path = write(tmp_path, "models.yaml", CATALOG_DATA_FOR_CHECK)
    policy_path = write(tmp_path, "policy.yaml", policy_data(
        routes=[{"name": "a", "allow_models": ["gpt-9"], "objective": "fast"}, {"name": "d"}],
        tenants={"t": {"model_floor": "gpt-8"}},
    ))
    problems = check(catalog_path, policy_path)
    assert len(problems) == 2, problems  # the route stops at its objective; the tenant floor is checked
    assert "routes[0].objective" in problems[0] and "tenants.t.model_floor" in problems[1]
    assert check(tmp_path / "missing.yaml", policy_path)[0].endswith("cannot read: No such file or directory")


CATALOG_DATA_FOR_CHECK = catalog_data(model(id="gpt-4o-mini"))


def test_policy_contents(tmp_path: Path) -> None:
    data = policy_data(
        degradation={"reduced": {"max_tokens": 256, "drop": ["tools"]}, "static": {"mode": "error", "message": "busy", "retry_after_s": 9}},
        routes=[
            {"name": "quick", "match": {"complexity": ["trivial"], "tier": ["simple"], "min_score": 0.1},
             "objective": {"cost": 2, "speed": 1, "quality": 1}, "degradation": {"static": {"mode": "completion", "message": "later"}}},
            {"name": "default"},
        ],
        tenants={"acme": {"privacy_tier": "restricted", "allowed_regions": ["us"], "requested_model": "floor", "team": "a-team"}},
        limits={"caps": [{"scope": "team", "id": "a-team", "window": "rolling:3600", "limit_usd": 10}], "default_max_tokens": 1024},
    )
    policy = load_policy(write(tmp_path, "policy.yaml", data), CATALOG)
    quick, default = policy.routes
    assert quick.match.tier == {"trivial", "simple"} and quick.match.min_score == 0.1 and quick.objective == "custom"
    w = quick.weights.normalized()
    assert (w.cost, w.speed, w.quality) == (0.5, 0.25, 0.25)
    assert quick.degradation.static.mode == "completion" and quick.degradation.reduced.max_tokens == 256
    assert default.degradation.static.retry_after_s == 9 and default.objective == "balanced" and default.max_candidates == 3
    assert policy.tenant("acme").allowed_regions == {"us"} and policy.tenant("acme").team == "a-team"
    assert policy.tenant("someone-else").name == "default" and policy.tenant("someone-else").requested_model == "pinned"
    (cap,) = policy.limits.caps
    assert (cap.scope, cap.id, cap.rolling_seconds, cap.limit_usd) == ("team", "a-team", 3600, 10.0)
    assert policy.limits.default_max_tokens == 1024 and policy.limits.failure_mode == "fail_open"
    assert policy.decision_log.include_prompt is False


def test_version_tag_follows_content_not_formatting(tmp_path: Path) -> None:
    data = policy_data()
    a = load_policy(write(tmp_path, "a.yaml", data), CATALOG)
    assert re.fullmatch(r"t1\+[0-9a-f]{12}", a.version_tag)
    b_text = "# a reviewed comment\n" + yaml.safe_dump(data, sort_keys=True, default_flow_style=True)
    b = load_policy(write(tmp_path, "b.yaml", b_text), CATALOG)
    assert b.version_tag == a.version_tag
    c = load_policy(write(tmp_path, "c.yaml", policy_data(routes=[{"name": "default", "objective": "quality"}])), CATALOG)
    assert c.version_tag != a.version_tag and c.version_tag.startswith("t1+")


def test_classifier_rules_inline_or_from_file(tmp_path: Path) -> None:
    packaged = default_policy_path().parent / "classifier.yaml"
    if not packaged.is_file():
        pytest.skip("no catalog/classifier.yaml yet")
    rules = read_yaml(packaged)
    from_file = load_policy(write(tmp_path, "policy.yaml", policy_data()), CATALOG)
    assert dict(from_file.classifier_rules) == rules
    inline = load_policy(write(tmp_path, "inline.yaml", policy_data(classifier=rules)), CATALOG)
    assert inline.version_tag == from_file.version_tag  # same rules, same decisions
    # A classifier.yaml beside the policy file wins over the packaged one.
    sibling_dir = tmp_path / "sib"
    sibling_dir.mkdir()
    changed = json.loads(json.dumps(rules))
    changed["hints"]["objectives"] = ["cost_speed", "balanced", "quality", "thrifty"]
    write(sibling_dir, "classifier.yaml", changed)
    error = policy_error_at(sibling_dir, policy_data())
    assert error.problems == [
        f"{sibling_dir / 'classifier.yaml'}: hints.objectives[3]: expected an objective of the policy "
        "(cost_speed, balanced, quality), got 'thrifty'"
    ]
    if (schema_dir() / "classifier.schema.json").is_file():
        broken = policy_error(tmp_path, policy_data(classifier={"version": 1}))
        assert all(p.startswith(f"{tmp_path / 'policy.yaml'}: classifier") for p in broken.problems), broken.problems


def policy_error_at(directory: Path, data: Any) -> ConfigError:
    with pytest.raises(ConfigError) as info:
        load_policy(write(directory, "policy.yaml", data), CATALOG)
    return info.value


# ----------------------------------------------------------------------------- cost


def test_estimate_cost_micros_is_exact_and_rounds_up() -> None:
    mini = CATALOG.by_key["openai/gpt-4o-mini"]  # 0.15 in, 0.60 out, 0.075 cached per 1M
    assert estimate_cost_micros(mini, 1_000_000, 0) == 150_000
    assert estimate_cost_micros(mini, 1_000_000, 1_000_000, cached_tokens=1_000_000) == 75_000 + 600_000
    assert estimate_cost_micros(mini, 1, 0) == 1  # 0.15 micro-USD rounds up
    assert estimate_cost_micros(mini, 0, 0) == 0
    assert estimate_cost_micros(mini, 1000, 500, cached_tokens=400) == 90 + 30 + 300  # 600*.15 + 400*.075 + 500*.6
    assert estimate_cost_micros(CATALOG.by_key["local/local-llm"], 10**6, 10**6) == 0
    flash = CATALOG.by_key["gemini/gemini-3.5-flash"]  # no published cached price: billed at input price
    assert estimate_cost_micros(flash, 1000, 0, cached_tokens=1000) == estimate_cost_micros(flash, 1000, 0) == 1500
