"""The gateway's own configuration: server, client keys, provider overrides, stores.

Loaded from YAML (`--config` or `GATEWAY_CONFIG`) with `${VAR}` / `${VAR:-default}`
interpolation in string values, validated against a JSON Schema, and turned into frozen
dataclasses. Every problem is reported as one line naming the file, the path inside it
and what was expected, so a bad deploy fails at start with a readable screen.

The catalog and the routing policy are separate files (see gateway/catalog.py); this file
only says where they are.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import jsonschema
import yaml


class ConfigError(Exception):
    """A configuration problem; `problems` are one line each."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("\n".join(problems))
        self.problems = problems


_INTERPOLATION = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")

_SCHEMA: dict[str, Any] = {
    "type": "object",
    "additionalProperties": False,
    "properties": {
        "server": {
            "type": "object",
            "additionalProperties": False,
            "properties": {
                "host": {"type": "string", "minLength": 1},
                "port": {"type": "integer", "minimum": 0, "maximum": 65535},
                "workers": {"type": "integer", "minimum": 1, "maximum": 256},
                "max_body_bytes": {"type": "integer", "minimum": 1024},
                "shutdown_timeout_s": {"type": "number", "minimum": 0},
            },
        },
        "upstream": {
            "type": "object",
            "additionalProperties": False,
            "properties": {
                "connect_timeout_s": {"type": "number", "exclusiveMinimum": 0},
                "first_byte_timeout_s": {"type": "number", "exclusiveMinimum": 0},
                "idle_timeout_s": {"type": "number", "exclusiveMinimum": 0},
                "total_timeout_s": {"type": "number", "exclusiveMinimum": 0},
                "max_connections": {"type": "integer", "minimum": 1},
            },
        },
        "catalog": {"type": "string", "minLength": 1},
        "policy": {"type": "string", "minLength": 1},
        "providers": {
            "type": "object",
            "additionalProperties": {
                "type": "object",
                "additionalProperties": False,
                "properties": {
                    "base_url": {"type": "string", "pattern": "^https?://"},
                    "api_key": {"type": "string"},
                },
            },
        },
        "auth": {
            "type": "object",
            "additionalProperties": False,
            "properties": {
                "keys": {
                    "type": "array",
                    "items": {
                        "type": "object",
                        "additionalProperties": False,
                        "required": ["sha256", "tenant"],
                        "properties": {
                            "id": {"type": "string", "minLength": 1},
                            "sha256": {"type": "string", "pattern": "^[0-9a-fA-F]{64}$"},
                            "tenant": {"type": "string", "minLength": 1},
                            "team": {"type": "string", "minLength": 1},
                        },
                    },
                },
                "admin_key": {"type": "string"},
            },
        },
        "redis": {
            "type": "object",
            "additionalProperties": False,
            "properties": {
                "url": {"type": "string"},
                "timeout_s": {"type": "number", "exclusiveMinimum": 0},
            },
        },
        "decision_log": {
            "type": "object",
            "additionalProperties": False,
            "properties": {
                "path": {"type": "string", "minLength": 1},
                "max_bytes": {"type": "integer", "minimum": 1024},
                "backups": {"type": "integer", "minimum": 0},
                "stream_max_len": {"type": "integer", "minimum": 1000},
                "enabled": {"type": "boolean"},
            },
        },
        "telemetry": {
            "type": "object",
            "additionalProperties": False,
            "properties": {
                "service_name": {"type": "string", "minLength": 1},
                "exporter": {"enum": ["otlp", "console", "none"]},
            },
        },
    },
}


@dataclass(frozen=True)
class ServerSettings:
    host: str = "127.0.0.1"
    port: int = 8080
    workers: int = 1
    max_body_bytes: int = 4 * 1024 * 1024
    shutdown_timeout_s: float = 30.0


@dataclass(frozen=True)
class UpstreamSettings:
    connect_timeout_s: float = 5.0
    first_byte_timeout_s: float = 60.0
    idle_timeout_s: float = 30.0  # longest silence allowed between stream chunks
    total_timeout_s: float = 600.0  # default request deadline when the route sets none
    max_connections: int = 1000


@dataclass(frozen=True)
class KeyEntry:
    sha256: str
    tenant: str
    id: str
    team: str | None = None


@dataclass(frozen=True)
class ProviderOverride:
    base_url: str | None = None
    api_key: str | None = field(default=None, repr=False)


@dataclass(frozen=True)
class DecisionLogSettings:
    enabled: bool = True
    path: str = "var/decisions.jsonl"
    max_bytes: int = 50 * 1024 * 1024
    backups: int = 5
    # With Redis: the records kept in the stream (about 1 KB each), in the quota store's memory
    stream_max_len: int = 200_000


@dataclass(frozen=True)
class GatewayConfig:
    source: str = "<defaults>"
    server: ServerSettings = field(default_factory=ServerSettings)
    upstream: UpstreamSettings = field(default_factory=UpstreamSettings)
    catalog_path: str | None = None  # None: the shipped catalog
    policy_path: str | None = None  # None: the shipped policy
    providers: Mapping[str, ProviderOverride] = field(default_factory=dict)
    keys: tuple[KeyEntry, ...] = ()
    admin_key: str | None = field(default=None, repr=False)
    redis_url: str | None = None
    redis_timeout_s: float = 0.25
    decision_log: DecisionLogSettings = field(default_factory=DecisionLogSettings)
    service_name: str = "llm-gateway"
    trace_exporter: str = "none"


def interpolate(value: Any, env: Mapping[str, str], path: str, problems: list[str], source: str) -> Any:
    """Replace ${VAR} and ${VAR:-default} in every string of a loaded YAML tree."""
    if isinstance(value, str):

        def substitute(match: re.Match[str]) -> str:
            name, default = match.group(1), match.group(2)
            if name in env and (env[name] != "" or default is None):
                return env[name]
            if default is not None:
                return default
            problems.append(f"{source}: {path or '<root>'}: environment variable {name} is not set (write ${{{name}:-default}} to give a default)")
            return ""

        return _INTERPOLATION.sub(substitute, value)
    if isinstance(value, dict):
        return {k: interpolate(v, env, f"{path}.{k}" if path else str(k), problems, source) for k, v in value.items()}
    if isinstance(value, list):
        return [interpolate(v, env, f"{path}[{i}]", problems, source) for i, v in enumerate(value)]
    return value


def load_config(path: str | None, env: Mapping[str, str] | None = None) -> GatewayConfig:
    """Load and validate; raise ConfigError listing every problem found."""
    env = os.environ if env is None else env
    raw: dict[str, Any] = {}
    source = "<defaults>"
    if path:
        source = path
        try:
            text = Path(path).read_text(encoding="utf-8")
        except OSError as exc:
            raise ConfigError([f"{path}: cannot read the config file: {exc.strerror}"]) from None
        try:
            loaded = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            mark = getattr(exc, "problem_mark", None)
            where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
            raise ConfigError([f"{path}: {where}not valid YAML: {getattr(exc, 'problem', exc)}"]) from None
        if loaded is None:
            loaded = {}
        if not isinstance(loaded, dict):
            raise ConfigError([f"{path}: <root>: expected a mapping of settings, got {type(loaded).__name__}"])
        raw = loaded
    problems: list[str] = []
    raw = interpolate(raw, env, "", problems, source)
    validator = jsonschema.Draft202012Validator(_SCHEMA)
    for error in sorted(validator.iter_errors(raw), key=lambda e: list(e.absolute_path)):
        problems.append(f"{source}: {_json_path(error.absolute_path)}: {_explain(error)}")
    if problems:
        raise ConfigError(problems)
    return _build(raw, env, source)


def parse_api_keys_env(value: str) -> list[tuple[str, str]]:
    """`GATEWAY_API_KEYS=key=tenant,key2=tenant2` -> [(key, tenant), ...]."""
    pairs: list[tuple[str, str]] = []
    for i, item in enumerate(part.strip() for part in value.split(",")):
        if not item:
            continue
        key, sep, tenant = item.partition("=")
        if not sep or not key.strip() or not tenant.strip():
            raise ConfigError([f"GATEWAY_API_KEYS: entry {i + 1}: expected key=tenant"])
        pairs.append((key.strip(), tenant.strip()))
    return pairs


def _build(raw: dict[str, Any], env: Mapping[str, str], source: str) -> GatewayConfig:
    server = ServerSettings(**raw.get("server", {}))
    upstream = UpstreamSettings(**raw.get("upstream", {}))
    providers = {name: ProviderOverride(**(o or {})) for name, o in raw.get("providers", {}).items()}
    auth = raw.get("auth", {})
    keys = tuple(
        KeyEntry(sha256=k["sha256"].lower(), tenant=k["tenant"], id=k.get("id") or k["sha256"][:12], team=k.get("team"))
        for k in auth.get("keys", [])
    )
    redis = raw.get("redis", {})
    telemetry = raw.get("telemetry", {})
    redis_url = redis.get("url") or env.get("REDIS_URL") or None
    admin_key = auth.get("admin_key") or env.get("GATEWAY_ADMIN_KEY") or None
    return GatewayConfig(
        source=source,
        server=server,
        upstream=upstream,
        catalog_path=raw.get("catalog"),
        policy_path=raw.get("policy"),
        providers=providers,
        keys=keys,
        admin_key=admin_key,
        redis_url=redis_url,
        redis_timeout_s=float(redis.get("timeout_s", 0.25)),
        decision_log=DecisionLogSettings(**raw.get("decision_log", {})),
        service_name=telemetry.get("service_name", "llm-gateway"),
        trace_exporter=telemetry.get("exporter", "otlp" if env.get("OTEL_EXPORTER_OTLP_ENDPOINT") else "none"),
    )


def _json_path(parts: Any) -> str:
    out = ""
    for part in parts:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out or "<root>"


def _explain(error: jsonschema.ValidationError) -> str:
    validator, expected = error.validator, error.validator_value
    if validator == "additionalProperties":
        extra = sorted(set(error.instance) - set(error.schema.get("properties", {})))
        allowed = ", ".join(sorted(error.schema.get("properties", {})))
        return f"unknown setting(s) {', '.join(map(repr, extra))}; expected one of: {allowed}"
    if validator == "required":
        return error.message.replace("is a required property", "is required")
    if validator == "type":
        return f"expected {expected}, got {type(error.instance).__name__} {error.instance!r}"
    if validator == "enum":
        return f"expected one of {expected}, got {error.instance!r}"
    if validator == "pattern":
        return f"{error.instance!r} does not match the expected form {expected}"
    return error.message
