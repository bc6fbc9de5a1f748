"""The model catalog: providers and models, loaded from reviewed YAML into frozen dataclasses.

A catalog entry is one model at one provider (a deployment): the same model id may be
listed under two providers (say OpenAI and an EU Azure resource), and the router treats
them as two candidates of one model. Everything the router needs per request that can be
known in advance (ranks, integer prices, log speed) is computed here, once, at load time.

Problems come out as `ConfigError`, one line each: `<file>: <path inside it>: <what was
expected>`, e.g. `models.yaml: models[3].price.input: expected a number >= 0, got 'cheap'`.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from decimal import Decimal
from importlib import resources
from pathlib import Path
from types import MappingProxyType
from typing import Any, Iterable, Mapping

import jsonschema
import yaml

from .providers.base import Deployment

TIERS = ("small", "medium", "large", "premium")
PRIVACY_TIERS = ("public", "standard", "restricted", "regulated")
LIFECYCLES = ("experimental", "managed", "deprecated")
CAPABILITIES = ("tools", "json_schema", "vision", "streaming")
APIS = ("openai", "anthropic", "gemini")

TIER_RANK = {t: i for i, t in enumerate(TIERS)}
PRIVACY_RANK = {p: i for i, p in enumerate(PRIVACY_TIERS)}


class ConfigError(Exception):
    """A broken catalog or policy file; `problems` holds one line per problem."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = list(problems)
        first = self.problems[0] if self.problems else "invalid configuration"
        more = len(self.problems) - 1
        super().__init__(first if more <= 0 else f"{first} (and {more} more problem{'s' * (more > 1)})")


# ----------------------------------------------------------------------------- file helpers


def schema_dir() -> Path:
    return Path(str(resources.files("catalog").joinpath("schema")))


def default_catalog_path() -> Path:
    return Path(str(resources.files("catalog").joinpath("models.yaml")))


def read_yaml(path: Path | str) -> Any:
    """Parse one YAML file; a syntax error names the file, line and column."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError([f"{path}: cannot read: {exc.strerror or exc}"]) from None
    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
    try:
        return yaml.load(text, Loader=loader)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f":{mark.line + 1}:{mark.column + 1}" if mark is not None else ""
        problem = getattr(exc, "problem", None) or str(exc)
        raise ConfigError([f"{path}{where}: not valid YAML: {problem}"]) from None


def load_schema(name: str) -> dict[str, Any]:
    return json.loads((schema_dir() / name).read_text(encoding="utf-8"))


def format_path(parts: Iterable[Any], root: str = "") -> str:
    out = root
    for part in parts:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else str(part)
    return out or "(top level)"


def _type_name(value: Any) -> str:
    if value is None:
        return "null"
    return {bool: "boolean", int: "integer", float: "number", str: "string", list: "list", dict: "mapping"}.get(
        type(value), type(value).__name__
    )


def _describe(error: jsonschema.ValidationError) -> str:
    """What was expected, in words a platform engineer reads without the schema open."""
    v, expected, got = error.validator, error.validator_value, error.instance
    shown = json.dumps(got, default=str) if not isinstance(got, (dict, list)) else _type_name(got)
    if v == "required":
        missing = [k for k in expected if isinstance(got, dict) and k not in got]
        return f"missing required field {', '.join(repr(k) for k in missing)}"
    if v == "additionalProperties" and isinstance(got, dict):
        allowed = sorted(error.schema.get("properties", {}))
        extra = [k for k in got if k not in allowed]
        hint = f" (expected one of: {', '.join(allowed)})" if allowed else ""
        return f"unknown field {', '.join(repr(k) for k in extra)}{hint}"
    description = error.schema.get("description") if isinstance(error.schema, dict) else None
    if v in ("oneOf", "anyOf", "pattern", "not") and description:
        return f"expected {description}, got {shown}"
    if v == "enum":
        return f"expected one of {', '.join(map(str, expected))}; got {shown}"
    if v == "const":
        return f"expected {expected!r}, got {shown}"
    if v == "type":
        wanted = " or ".join(expected) if isinstance(expected, list) else expected
        wanted = {"object": "a mapping", "array": "a list"}.get(wanted, f"a {wanted}")
        return f"expected {wanted}, got {_type_name(got)} {shown}"
    if v in ("minimum", "exclusiveMinimum", "maximum", "exclusiveMaximum"):
        op = {"minimum": ">=", "exclusiveMinimum": ">", "maximum": "<=", "exclusiveMaximum": "<"}[v]
        return f"expected a number {op} {expected}, got {shown}"
    if v == "minItems":
        return f"expected at least {expected} item{'s' * (expected != 1)}"
    if v == "uniqueItems":
        return "expected no duplicate items"
    if v == "minLength":
        return "expected a non-empty string"
    return error.message


def schema_problems(data: Any, schema: Mapping[str, Any], file: str, root: str = "") -> list[str]:
    """Every schema violation in `data`, one line each, most specific first per location."""
    validator = jsonschema.Draft202012Validator(schema)
    problems = []
    for error in sorted(validator.iter_errors(data), key=lambda e: list(map(str, e.absolute_path))):
        # For oneOf/anyOf the parent message with the schema's description is the readable one;
        # its sub-errors only say which branch failed how.
        problems.append(f"{file}: {format_path(error.absolute_path, root)}: {_describe(error)}")
    return problems


def canonical_hash(data: Any) -> str:
    """sha256 of the parsed content, so comments and formatting do not change a version."""
    blob = json.dumps(data, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str)
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()


# ----------------------------------------------------------------------------- dataclasses


@dataclass(frozen=True)
class Provider:
    id: str
    api: str
    base_url: str
    region: str
    base_url_env: str | None = None
    api_key_env: str | None = None
    query: Mapping[str, str] = field(default_factory=dict)
    headers: Mapping[str, str] = field(default_factory=dict)


def _micros_per_mtok(usd: float) -> int:
    # USD per 1M tokens == micro-USD per token; keep 6 decimals of it as an exact integer.
    return int(Decimal(str(usd)) * 1_000_000)


@dataclass(frozen=True)
class Model:
    id: str
    provider: str
    upstream_model: str
    price_input: float  # USD per 1M input tokens
    price_output: float  # USD per 1M output tokens
    price_cached_input: float  # USD per 1M cached input tokens (= price_input when unpublished)
    speed: float  # output tokens per second
    quality: Mapping[str, float]  # "default" plus optional per-intent values
    context_window: int
    max_output_tokens: int
    capabilities: frozenset[str]
    regions: frozenset[str]
    privacy: str
    lifecycle: str
    tier: str
    # Derived once, read on every request.
    key: str = field(init=False)
    tier_rank: int = field(init=False)
    privacy_rank: int = field(init=False)
    # Micro-USD per 1M tokens as integers: cost arithmetic stays exact.
    input_micros_per_mtok: int = field(init=False, repr=False)
    output_micros_per_mtok: int = field(init=False, repr=False)
    cached_micros_per_mtok: int = field(init=False, repr=False)

    def __post_init__(self) -> None:
        set_ = object.__setattr__
        set_(self, "key", f"{self.provider}/{self.id}")
        set_(self, "tier_rank", TIER_RANK[self.tier])
        set_(self, "privacy_rank", PRIVACY_RANK[self.privacy])
        set_(self, "input_micros_per_mtok", _micros_per_mtok(self.price_input))
        set_(self, "output_micros_per_mtok", _micros_per_mtok(self.price_output))
        set_(self, "cached_micros_per_mtok", _micros_per_mtok(self.price_cached_input))

    def quality_for(self, intent: str | None) -> float:
        q = self.quality
        if intent is not None and intent in q:
            return q[intent]
        return q["default"]


@dataclass(frozen=True)
class Catalog:
    providers: Mapping[str, Provider]
    models: tuple[Model, ...]  # file order
    by_key: Mapping[str, Model]  # "provider/model"
    by_id: Mapping[str, tuple[Model, ...]]  # model id -> its deployments, file order
    content_hash: str
    path: str = ""

    def resolve(self, name: str) -> tuple[Model, ...]:
        """`gpt-4o` -> every deployment of it; `openai/gpt-4o` -> that one; unknown -> ()."""
        found = self.by_id.get(name)
        if found:
            return found
        one = self.by_key.get(name)
        return (one,) if one is not None else ()

    def deployment(self, model: Model, env: Mapping[str, str]) -> Deployment:
        """What the forward loop calls: endpoint and key from the environment when set there."""
        provider = self.providers[model.provider]
        base_url = provider.base_url
        if provider.base_url_env and env.get(provider.base_url_env):
            base_url = env[provider.base_url_env].rstrip("/")
        api_key = env.get(provider.api_key_env) if provider.api_key_env else None
        return Deployment(
            model=model.id,
            provider=provider.id,
            api=provider.api,
            base_url=base_url,
            upstream_model=model.upstream_model,
            api_key=api_key or None,
            extra_headers=dict(provider.headers),
            query=dict(provider.query),
        )


# ----------------------------------------------------------------------------- loading


def _freeze(mapping: Mapping[str, Any] | None) -> Mapping[str, Any]:
    return MappingProxyType(dict(mapping or {}))


def _build_model(raw: Mapping[str, Any], provider: Provider) -> Model:
    price = raw["price"]
    quality = raw["quality"]
    quality_map = {"default": float(quality)} if isinstance(quality, (int, float)) else {
        k: float(v) for k, v in quality.items()
    }
    return Model(
        id=raw["id"],
        provider=provider.id,
        upstream_model=raw.get("upstream_model", raw["id"]),
        price_input=float(price["input"]),
        price_output=float(price["output"]),
        price_cached_input=float(price.get("cached_input", price["input"])),
        speed=float(raw["speed"]),
        quality=_freeze(quality_map),
        context_window=int(raw["context_window"]),
        max_output_tokens=int(raw["max_output_tokens"]),
        capabilities=frozenset(raw["capabilities"]),
        regions=frozenset(raw.get("regions") or (provider.region,)),
        privacy=raw["privacy"],
        lifecycle=raw["lifecycle"],
        tier=raw["tier"],
    )


def catalog_from_data(data: Any, file: str = "models.yaml") -> Catalog:
    """Validate parsed catalog data and build the Catalog (also used by tests and `check`)."""
    problems = schema_problems(data, load_schema("catalog.schema.json"), file)
    if problems:
        raise ConfigError(problems)
    providers: dict[str, Provider] = {}
    for i, raw in enumerate(data["providers"]):
        if raw["id"] in providers:
            problems.append(f"{file}: providers[{i}].id: duplicate provider id {raw['id']!r}")
            continue
        providers[raw["id"]] = Provider(
            id=raw["id"],
            api=raw["api"],
            base_url=raw["base_url"],
            region=raw["region"],
            base_url_env=raw.get("base_url_env"),
            api_key_env=raw.get("api_key_env"),
            query=_freeze(raw.get("query")),
            headers=_freeze(raw.get("headers")),
        )
    models: list[Model] = []
    seen: set[str] = set()
    for i, raw in enumerate(data["models"]):
        provider = providers.get(raw["provider"])
        if provider is None:
            problems.append(
                f"{file}: models[{i}].provider: expected one of the providers "
                f"({', '.join(providers)}), got {raw['provider']!r}"
            )
            continue
        key = f"{provider.id}/{raw['id']}"
        if key in seen:
            problems.append(f"{file}: models[{i}].id: duplicate model {raw['id']!r} at provider {provider.id!r}")
            continue
        if raw["max_output_tokens"] > raw["context_window"]:
            problems.append(
                f"{file}: models[{i}].max_output_tokens: expected at most context_window "
                f"({raw['context_window']}), got {raw['max_output_tokens']}"
            )
            continue
        seen.add(key)
        models.append(_build_model(raw, provider))
    if problems:
        raise ConfigError(problems)
    by_id: dict[str, list[Model]] = {}
    for m in models:
        by_id.setdefault(m.id, []).append(m)
    return Catalog(
        providers=_freeze(providers),
        models=tuple(models),
        by_key=_freeze({m.key: m for m in models}),
        by_id=_freeze({k: tuple(v) for k, v in by_id.items()}),
        content_hash=canonical_hash(data),
        path=file,
    )


def load_catalog(path: Path | str | None = None) -> Catalog:
    path = Path(path) if path is not None else default_catalog_path()
    return catalog_from_data(read_yaml(path), str(path))
