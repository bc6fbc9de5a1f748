"""The routing policy: objectives, routes, tenants, limits, loaded into frozen dataclasses.

The policy is checked twice: against its JSON Schema (shape), then against the catalog it
will route over (a route naming an unknown model, a tenant floor that is not in the
catalog, a cap on an unknown provider). Every problem is one line naming the file, the
path inside it and what was expected. Its version tag (`<version>+<hash12>`) covers the
policy and the classifier rules, so two decisions with the same tag were made by the same
rules whatever the file's comments or formatting.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property
from importlib import resources
from pathlib import Path
from typing import Any, Mapping

from gateway.classify import Classification

from .catalog import (
    TIER_RANK,
    Catalog,
    ConfigError,
    _freeze,
    canonical_hash,
    format_path,
    load_catalog,
    load_schema,
    read_yaml,
    schema_dir,
    schema_problems,
)

REQUESTED_MODES = ("pinned", "floor", "auto")


def default_policy_path() -> Path:
    return Path(str(resources.files("catalog").joinpath("policy.yaml")))


@dataclass(frozen=True)
class Weights:
    cost: float
    speed: float
    quality: float

    def normalized(self, quality_boost: float = 0.0) -> "Weights":
        """Sum to 1 after adding `quality_boost` to quality (harder tasks weigh quality more)."""
        total = self.cost + self.speed + self.quality + quality_boost
        return Weights(self.cost / total, self.speed / total, (self.quality + quality_boost) / total)


@dataclass(frozen=True)
class ComplexityRule:
    quality_floor: float = 0.0  # the quality a task of this tier needs (soft: relaxed if nothing meets it)
    quality_boost: float = 0.0  # added to the quality weight before normalizing
    min_tier: str | None = None


@dataclass(frozen=True)
class Scoring:
    context_penalty_threshold: float = 0.75  # share of the context window above which a model is penalized
    context_penalty: float = 0.3  # penalty at a full window, linear from the threshold
    latency_penalty: float = 0.2  # when the expected generation time exceeds the latency budget
    requested_bonus: float = 0.1  # for the requested model in `auto` and `floor` modes


@dataclass(frozen=True)
class ReducedMode:
    max_tokens: int | None = None
    drop: tuple[str, ...] = ()


@dataclass(frozen=True)
class StaticMode:
    mode: str  # completion | error
    message: str = ""
    retry_after_s: int | None = None


@dataclass(frozen=True)
class Degradation:
    reduced: ReducedMode | None = None
    static: StaticMode | None = None


@dataclass(frozen=True)
class RouteMatch:
    intent: frozenset[str] | None = None
    tier: frozenset[str] | None = None
    risk: frozenset[str] | None = None
    format: frozenset[str] | None = None
    latency_class: frozenset[str] | None = None
    tenant: frozenset[str] | None = None
    min_score: float | None = None
    max_score: float | None = None

    @property
    def is_default(self) -> bool:
        return self == RouteMatch()

    def matches(self, c: Classification, tenant: str) -> bool:
        return (
            (self.intent is None or c.intent in self.intent)
            and (self.tier is None or c.tier in self.tier)
            and (self.risk is None or c.risk in self.risk)
            and (self.format is None or c.format in self.format)
            and (self.latency_class is None or c.latency_class in self.latency_class)
            and (self.tenant is None or tenant in self.tenant)
            and (self.min_score is None or c.score >= self.min_score)
            and (self.max_score is None or c.score <= self.max_score)
        )


@dataclass(frozen=True)
class Route:
    name: str
    match: RouteMatch
    objective: str  # objective name, or "custom" for explicit weights
    weights: Weights
    quality_floor: float = 0.0
    latency_budget_ms: int | None = None
    allow_models: frozenset[str] = frozenset()  # ids or provider/id; empty = any
    deny_models: frozenset[str] = frozenset()
    min_tier: str | None = None
    max_tier: str | None = None
    fallback_tier: str | None = None
    max_candidates: int = 3
    content_fallback: str | None = None
    degradation: Degradation = field(default_factory=Degradation)


@dataclass(frozen=True)
class Tenant:
    name: str
    privacy_tier: str = "standard"
    allowed_regions: frozenset[str] | None = None  # None = any region
    model_floor: str | None = None
    allowed_models: frozenset[str] = frozenset()  # empty = any
    denied_models: frozenset[str] = frozenset()
    requested_model: str = "pinned"
    team: str | None = None


@dataclass(frozen=True)
class SpendCap:
    scope: str  # global | tenant | team | key | model | provider | route
    id: str | None
    window: str  # day | month | rolling:<seconds>
    limit_usd: float

    @property
    def rolling_seconds(self) -> int | None:
        return int(self.window.split(":", 1)[1]) if self.window.startswith("rolling:") else None


@dataclass(frozen=True)
class RateLimit:
    scope: str
    id: str | None
    rpm: int | None = None
    tpm: int | None = None


@dataclass(frozen=True)
class ShareQuota:
    scope: str  # tenant
    id: str
    tier: str
    max_share: float
    window_s: int


@dataclass(frozen=True)
class Limits:
    caps: tuple[SpendCap, ...] = ()
    rate_limits: tuple[RateLimit, ...] = ()
    share_quotas: tuple[ShareQuota, ...] = ()
    failure_mode: str = "fail_open"
    default_max_tokens: int = 4096  # worst-case output when a request sets no max_tokens
    reservation_ttl_s: int = 300


@dataclass(frozen=True)
class DecisionLogSettings:
    include_prompt: bool = False


@dataclass(frozen=True)
class Policy:
    version: str
    content_hash: str  # sha256 hex of the canonical policy + classifier rules
    objectives: Mapping[str, Weights]
    complexity: Mapping[str, ComplexityRule]
    scoring: Scoring
    routes: tuple[Route, ...]
    tenants: Mapping[str, Tenant]  # always has "default"
    limits: Limits
    decision_log: DecisionLogSettings
    degradation: Degradation  # policy-wide default, already merged into each route
    classifier_rules: Mapping[str, Any]
    path: str = ""

    @cached_property  # read on every request (headers, traces)
    def version_tag(self) -> str:
        return f"{self.version}+{self.content_hash[:12]}"

    def tenant(self, name: str) -> Tenant:
        return self.tenants.get(name) or self.tenants["default"]

    def route_for(self, c: Classification, tenant: str) -> Route:
        for route in self.routes:
            if route.match.matches(c, tenant):
                return route
        return self.routes[-1]


# ----------------------------------------------------------------------------- building


def _set(values: Any) -> frozenset[str] | None:
    return frozenset(values) if values else None


def _degradation(raw: Mapping[str, Any] | None, base: Degradation | None = None) -> Degradation:
    raw = raw or {}
    base = base or Degradation()
    reduced, static = base.reduced, base.static
    if "reduced" in raw:
        r = raw["reduced"]
        reduced = ReducedMode(max_tokens=r.get("max_tokens"), drop=tuple(r.get("drop", ())))
    if "static" in raw:
        s = raw["static"]
        static = StaticMode(mode=s["mode"], message=s.get("message", ""), retry_after_s=s.get("retry_after_s"))
    return Degradation(reduced=reduced, static=static)


def _weights(raw: Mapping[str, Any]) -> Weights:
    return Weights(float(raw["cost"]), float(raw["speed"]), float(raw["quality"]))


class _Checker:
    """Cross-reference checks against the catalog, collecting every problem."""

    def __init__(self, file: str, catalog: Catalog) -> None:
        self.file, self.catalog, self.problems = file, catalog, []

    def add(self, path: str, message: str) -> None:
        self.problems.append(f"{self.file}: {path}: {message}")

    def model(self, path: str, name: str | None) -> None:
        if name is not None and not self.catalog.resolve(name):
            self.add(path, f"expected a model of the catalog, got {name!r} (not in {self.catalog.path or 'the catalog'})")

    def models(self, path: str, names: Any) -> None:
        for i, name in enumerate(names or ()):
            self.model(f"{path}[{i}]", name)


def _build_routes(data: Mapping[str, Any], objectives: Mapping[str, Weights], default_deg: Degradation, chk: _Checker) -> tuple[Route, ...]:
    routes: list[Route] = []
    names: set[str] = set()
    raws = data["routes"]
    for i, raw in enumerate(raws):
        at = f"routes[{i}]"
        if raw["name"] in names:
            chk.add(f"{at}.name", f"duplicate route name {raw['name']!r}")
        names.add(raw["name"])
        m = raw.get("match") or {}
        tiers = set(m.get("tier", ())) | set(m.get("complexity", ()))
        match = RouteMatch(
            intent=_set(m.get("intent")),
            tier=frozenset(tiers) or None,
            risk=_set(m.get("risk")),
            format=_set(m.get("format")),
            latency_class=_set(m.get("latency_class")),
            tenant=_set(m.get("tenant")),
            min_score=m.get("min_score"),
            max_score=m.get("max_score"),
        )
        if match.min_score is not None and match.max_score is not None and match.min_score > match.max_score:
            chk.add(f"{at}.match.min_score", f"expected at most max_score ({match.max_score}), got {match.min_score}")
        objective = raw.get("objective", "balanced")
        if isinstance(objective, str):
            if objective not in objectives:
                chk.add(f"{at}.objective", f"expected one of the objectives ({', '.join(objectives)}), got {objective!r}")
                continue
            name, weights = objective, objectives[objective]
        else:
            name, weights = "custom", _weights(objective)
            if weights.cost + weights.speed + weights.quality <= 0:
                chk.add(f"{at}.objective", "expected at least one weight above 0")
                continue
        for key in ("allow_models", "deny_models"):
            chk.models(f"{at}.{key}", raw.get(key))
        chk.model(f"{at}.content_fallback", raw.get("content_fallback"))
        min_tier, max_tier = raw.get("min_tier"), raw.get("max_tier")
        if min_tier and max_tier and TIER_RANK[min_tier] > TIER_RANK[max_tier]:
            chk.add(f"{at}.min_tier", f"expected a tier at most max_tier ({max_tier}), got {min_tier!r}")
        routes.append(
            Route(
                name=raw["name"],
                match=match,
                objective=name,
                weights=weights,
                quality_floor=float(raw.get("quality_floor", 0.0)),
                latency_budget_ms=raw.get("latency_budget_ms"),
                allow_models=frozenset(raw.get("allow_models", ())),
                deny_models=frozenset(raw.get("deny_models", ())),
                min_tier=min_tier,
                max_tier=max_tier,
                fallback_tier=raw.get("fallback_tier"),
                max_candidates=int(raw.get("max_candidates", 3)),
                content_fallback=raw.get("content_fallback"),
                degradation=_degradation(raw.get("degradation"), default_deg),
            )
        )
    if raws and (raws[-1].get("match") or {}):
        chk.add(f"routes[{len(raws) - 1}].match", "expected no match on the last route: it is the default route")
    return tuple(routes)


def _build_tenants(data: Mapping[str, Any], chk: _Checker) -> dict[str, Tenant]:
    tenants: dict[str, Tenant] = {}
    for name, raw in (data.get("tenants") or {}).items():
        at = f"tenants.{name}"
        chk.model(f"{at}.model_floor", raw.get("model_floor"))
        chk.models(f"{at}.allowed_models", raw.get("allowed_models"))
        chk.models(f"{at}.denied_models", raw.get("denied_models"))
        tenants[name] = Tenant(
            name=name,
            privacy_tier=raw.get("privacy_tier", "standard"),
            allowed_regions=_set(raw.get("allowed_regions")),
            model_floor=raw.get("model_floor"),
            allowed_models=frozenset(raw.get("allowed_models", ())),
            denied_models=frozenset(raw.get("denied_models", ())),
            requested_model=raw.get("requested_model", "pinned"),
            team=raw.get("team"),
        )
    tenants.setdefault("default", Tenant(name="default"))
    return tenants


def _build_limits(raw: Mapping[str, Any] | None, routes: tuple[Route, ...], chk: _Checker) -> Limits:
    raw = raw or {}
    route_names = {r.name for r in routes}
    for section in ("caps", "rate_limits"):
        for i, item in enumerate(raw.get(section, ())):
            at, scope, ident = f"limits.{section}[{i}].id", item["scope"], item.get("id")
            if scope == "model":
                chk.model(at, ident)
            elif scope == "provider" and ident not in chk.catalog.providers:
                chk.add(at, f"expected a provider of the catalog ({', '.join(chk.catalog.providers)}), got {ident!r}")
            elif scope == "route" and ident not in route_names:
                chk.add(at, f"expected a route name ({', '.join(sorted(route_names))}), got {ident!r}")
    defaults = Limits()
    return Limits(
        caps=tuple(SpendCap(c["scope"], c.get("id"), c["window"], float(c["limit_usd"])) for c in raw.get("caps", ())),
        rate_limits=tuple(RateLimit(r["scope"], r.get("id"), r.get("rpm"), r.get("tpm")) for r in raw.get("rate_limits", ())),
        share_quotas=tuple(
            ShareQuota(q["scope"], q["id"], q["tier"], float(q["max_share"]), int(q["window_s"]))
            for q in raw.get("share_quotas", ())
        ),
        failure_mode=raw.get("failure_mode", defaults.failure_mode),
        default_max_tokens=raw.get("default_max_tokens", defaults.default_max_tokens),
        reservation_ttl_s=raw.get("reservation_ttl_s", defaults.reservation_ttl_s),
    )


def _classifier_rules(data: Mapping[str, Any], policy_path: Path | None,
                      file: str) -> tuple[Mapping[str, Any], list[str], str, str]:
    """The policy's own `classifier:` section, else classifier.yaml beside it, else the packaged one."""
    schema_file = schema_dir() / "classifier.schema.json"
    schema = load_schema("classifier.schema.json") if schema_file.is_file() else None
    if "classifier" in data:
        rules, source, root = data["classifier"], file, "classifier"
    else:
        candidates = [policy_path.parent / "classifier.yaml"] if policy_path is not None else []
        candidates.append(Path(str(resources.files("catalog").joinpath("classifier.yaml"))))
        found = next((p for p in candidates if p.is_file()), None)
        if found is None:
            return _freeze({}), [], file, "classifier"
        rules, source, root = read_yaml(found), str(found), ""
        if not isinstance(rules, dict):
            return _freeze({}), [f"{source}: (top level): expected a mapping of classifier rules"], source, root
    problems = schema_problems(rules, schema, source, root) if schema is not None else []
    return _freeze(rules), problems, source, root


def _hint_objectives_problems(rules: Mapping[str, Any], objectives: Mapping[str, Weights], source: str,
                              root: str) -> list[str]:
    """An objective the classifier accepts as a hint must exist here, or the hint is lost."""
    hints = rules.get("hints")
    named = hints.get("objectives") if isinstance(hints, Mapping) else None
    if not isinstance(named, list):
        return []
    return [
        f"{source}: {format_path(['hints', 'objectives', i], root)}: expected an objective of the policy "
        f"({', '.join(objectives)}), got {name!r}"
        for i, name in enumerate(named)
        if name not in objectives
    ]


def policy_from_data(data: Any, catalog: Catalog, file: str = "policy.yaml", path: Path | None = None) -> Policy:
    problems = schema_problems(data, load_schema("policy.schema.json"), file)
    if problems:
        raise ConfigError(problems)
    chk = _Checker(file, catalog)
    objectives: dict[str, Weights] = {}
    for name, raw in data["objectives"].items():
        weights = _weights(raw)
        if weights.cost + weights.speed + weights.quality <= 0:
            chk.add(f"objectives.{name}", "expected at least one weight above 0")
        else:
            objectives[name] = weights
    default_deg = _degradation(data.get("degradation"))
    routes = _build_routes(data, objectives, default_deg, chk)
    tenants = _build_tenants(data, chk)
    limits = _build_limits(data.get("limits"), routes, chk)
    rules, rule_problems, rules_file, rules_root = _classifier_rules(data, path, file)
    if not rule_problems:
        rule_problems = _hint_objectives_problems(rules, objectives, rules_file, rules_root)
    problems = chk.problems + rule_problems
    if problems:
        raise ConfigError(problems)
    complexity = {
        tier: ComplexityRule(float(r.get("quality_floor", 0.0)), float(r.get("quality_boost", 0.0)), r.get("min_tier"))
        for tier, r in (data.get("complexity") or {}).items()
    }
    hashed = {"policy": {k: v for k, v in data.items() if k != "classifier"}, "classifier": dict(rules)}
    return Policy(
        version=data["version"],
        content_hash=canonical_hash(hashed),
        objectives=_freeze(objectives),
        complexity=_freeze(complexity),
        scoring=Scoring(**(data.get("scoring") or {})),
        routes=routes,
        tenants=_freeze(tenants),
        limits=limits,
        decision_log=DecisionLogSettings(**(data.get("decision_log") or {})),
        degradation=default_deg,
        classifier_rules=rules,
        path=file,
    )


def load_policy(path: Path | str | None, catalog: Catalog) -> Policy:
    path = Path(path) if path is not None else default_policy_path()
    return policy_from_data(read_yaml(path), catalog, str(path), path)


def check(catalog_path: Path | str | None = None, policy_path: Path | str | None = None) -> list[str]:
    """Every problem with a catalog + policy pair, one line each; empty means they are fine."""
    try:
        catalog = load_catalog(catalog_path)
    except ConfigError as exc:
        return exc.problems
    try:
        load_policy(policy_path, catalog)
    except ConfigError as exc:
        return exc.problems
    return []
