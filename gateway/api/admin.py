"""/admin: caps, quotas, spend, client keys and policy reload, behind the admin key.

Everything lives in the quota store, so a change made through one replica holds on every
replica at once (Redis) — except policy files, which each replica reads itself; a reload
request is fanned out through the store (see gateway/sync.py).
"""

from __future__ import annotations

import hmac
from typing import Any, Awaitable, Callable

import orjson
from aiohttp import web

from ..auth import bearer_token
from ..errors import GatewayError, bad_request
from ..quota import (
    QuotaUnavailable,
    RateLimit,
    Scope,
    ShareQuota,
    SpendCap,
    SpendStatus,
    Window,
)
from ..runtime import ReloadError
from ..state import STATE, GatewayState
from ..validation import parse_json_body

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def routes() -> list[web.RouteDef]:
    return [
        web.get("/admin/caps", _guard(list_caps)),
        web.put("/admin/caps", _guard(set_cap)),
        web.delete("/admin/caps", _guard(delete_cap)),
        web.get("/admin/rate-limits", _guard(list_rate_limits)),
        web.put("/admin/rate-limits", _guard(set_rate_limit)),
        web.delete("/admin/rate-limits", _guard(delete_rate_limit)),
        web.get("/admin/share-quotas", _guard(list_share_quotas)),
        web.put("/admin/share-quotas", _guard(set_share_quota)),
        web.delete("/admin/share-quotas", _guard(delete_share_quota)),
        web.get("/admin/spend", _guard(get_spend)),
        web.post("/admin/spend/reset", _guard(reset_scope)),
        web.post("/admin/keys", _guard(create_key)),
        web.delete("/admin/keys/{key_id}", _guard(revoke_key)),
        web.post("/admin/policy/reload", _guard(reload_policy)),
        web.get("/admin/breakers", _guard(breakers)),
    ]


def _guard(handler: Handler) -> Handler:
    async def guarded(request: web.Request) -> web.StreamResponse:
        state = request.app[STATE]
        admin_key = state.config.admin_key
        if not admin_key:
            raise GatewayError(403, "The admin API is disabled: set GATEWAY_ADMIN_KEY to enable it.", code="admin_disabled")
        token = bearer_token(request.headers)
        if not hmac.compare_digest(token.encode(), admin_key.encode()):
            # A valid client key is authenticated but not allowed here; anything else is unknown.
            try:
                await state.keyring.authenticate(request.headers)
            except GatewayError:
                raise GatewayError(401, "Incorrect admin key.", code="invalid_api_key") from None
            raise GatewayError(403, "Client keys cannot use the admin API; use the admin key.", code="forbidden")
        try:
            return await handler(request)
        except QuotaUnavailable:
            raise GatewayError(503, "The quota store is unreachable; admin changes cannot be applied right now.", code="quota_unavailable", headers={"retry-after": "1"}) from None

    return guarded


def _json(data: Any, status: int = 200) -> web.Response:
    return web.Response(body=orjson.dumps(data), status=status, content_type="application/json")


async def _body(request: web.Request) -> dict[str, Any]:
    return parse_json_body(await request.read())


def _state(request: web.Request) -> GatewayState:
    return request.app[STATE]


# ---- field parsing: every error names the field -------------------------------------


def _scope(value: Any, field: str = "scope") -> Scope:
    if not isinstance(value, str):
        raise bad_request(f"'{field}' must be a string like 'tenant:acme' or 'global:*'.", field, "invalid_type")
    if value == "global":
        value = "global:*"
    try:
        return Scope.parse(value)
    except ValueError as exc:
        raise bad_request(f"Invalid '{field}': {exc}.", field, "invalid_value") from None


def _window(value: Any, field: str = "window") -> Window:
    if not isinstance(value, str):
        raise bad_request(f"'{field}' must be 'day', 'month' or 'rolling:<seconds>'.", field, "invalid_type")
    try:
        return Window.parse(value)
    except ValueError as exc:
        raise bad_request(f"Invalid '{field}': {exc}.", field, "invalid_value") from None


def _number(body: dict[str, Any], field: str, *, minimum: float = 0, required: bool = True) -> float | None:
    value = body.get(field)
    if value is None:
        if required:
            raise bad_request(f"Missing required parameter: '{field}'.", field, "missing_required_parameter")
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value < minimum:
        raise bad_request(f"'{field}' must be a number >= {minimum:g}, got {value!r}.", field, "invalid_value")
    return float(value)


def _positive_int(body: dict[str, Any], field: str, *, required: bool) -> int | None:
    value = body.get(field)
    if value is None:
        if required:
            raise bad_request(f"Missing required parameter: '{field}'.", field, "missing_required_parameter")
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise bad_request(f"'{field}' must be a positive integer, got {value!r}.", field, "invalid_value")
    return value


def _query(request: web.Request, name: str) -> str:
    value = request.query.get(name)
    if value is None:
        raise bad_request(f"Missing required query parameter: '{name}'.", name, "missing_required_parameter")
    return value


def _no_unknown(body: dict[str, Any], allowed: set[str]) -> None:
    unknown = sorted(set(body) - allowed)
    if unknown:
        raise bad_request(f"Unknown field '{unknown[0]}'; expected: {', '.join(sorted(allowed))}.", unknown[0], "unknown_parameter")


# ---- caps ------------------------------------------------------------------------------


def _cap_json(cap: SpendCap) -> dict[str, Any]:
    return {"scope": cap.scope.key, "window": cap.window.spec, "limit_usd": cap.limit_micros / 1_000_000}


async def list_caps(request: web.Request) -> web.Response:
    caps = await _state(request).quota.list_caps()
    return _json({"object": "list", "data": [_cap_json(c) for c in caps]})


async def set_cap(request: web.Request) -> web.Response:
    body = await _body(request)
    _no_unknown(body, {"scope", "window", "limit_usd"})
    cap = SpendCap(_scope(body.get("scope")), _window(body.get("window")), int(round((_number(body, "limit_usd") or 0) * 1_000_000)))
    await _state(request).quota.set_cap(cap)
    return _json(_cap_json(cap))


async def delete_cap(request: web.Request) -> web.Response:
    scope, window = _scope(_query(request, "scope")), _window(_query(request, "window"))
    deleted = await _state(request).quota.delete_cap(scope, window)
    return _deleted(deleted, f"cap {scope.key} {window.spec}")


# ---- rate limits -----------------------------------------------------------------------


def _rate_json(limit: RateLimit) -> dict[str, Any]:
    return {"scope": limit.scope.key, "rpm": limit.rpm, "tpm": limit.tpm}


async def list_rate_limits(request: web.Request) -> web.Response:
    limits = await _state(request).quota.list_rate_limits()
    return _json({"object": "list", "data": [_rate_json(x) for x in limits]})


async def set_rate_limit(request: web.Request) -> web.Response:
    body = await _body(request)
    _no_unknown(body, {"scope", "rpm", "tpm"})
    rpm, tpm = _positive_int(body, "rpm", required=False), _positive_int(body, "tpm", required=False)
    if rpm is None and tpm is None:
        raise bad_request("Give 'rpm', 'tpm' or both.", "rpm", "missing_required_parameter")
    limit = RateLimit(_scope(body.get("scope")), rpm, tpm)
    await _state(request).quota.set_rate_limit(limit)
    return _json(_rate_json(limit))


async def delete_rate_limit(request: web.Request) -> web.Response:
    scope = _scope(_query(request, "scope"))
    return _deleted(await _state(request).quota.delete_rate_limit(scope), f"rate limit {scope.key}")


# ---- share quotas ----------------------------------------------------------------------


def _share_json(quota: ShareQuota) -> dict[str, Any]:
    return {"scope": quota.scope.key, "tier": quota.tier, "max_share": quota.max_share, "window_s": quota.window_s}


async def list_share_quotas(request: web.Request) -> web.Response:
    quotas = await _state(request).quota.list_share_quotas()
    return _json({"object": "list", "data": [_share_json(q) for q in quotas]})


async def set_share_quota(request: web.Request) -> web.Response:
    body = await _body(request)
    _no_unknown(body, {"scope", "tier", "max_share", "window_s"})
    tier = body.get("tier")
    if tier not in ("small", "medium", "large", "premium"):
        raise bad_request("'tier' must be one of small, medium, large, premium.", "tier", "invalid_value")
    share = _number(body, "max_share")
    if share is None or share > 1:
        raise bad_request("'max_share' must be between 0 and 1.", "max_share", "invalid_value")
    window_s = _positive_int(body, "window_s", required=False) or 3600
    quota = ShareQuota(_scope(body.get("scope")), tier, share, window_s)
    await _state(request).quota.set_share_quota(quota)
    return _json(_share_json(quota))


async def delete_share_quota(request: web.Request) -> web.Response:
    scope = _scope(_query(request, "scope"))
    tier = _query(request, "tier")
    window = request.query.get("window_s", "3600")
    if not window.isdigit() or int(window) <= 0:
        raise bad_request("'window_s' must be a positive integer.", "window_s", "invalid_value")
    deleted = await _state(request).quota.delete_share_quota(scope, tier, int(window))
    return _deleted(deleted, f"share quota {scope.key} {tier}")


# ---- spend -----------------------------------------------------------------------------


def _spend_json(status: SpendStatus) -> dict[str, Any]:
    def usd(micros: int | None) -> float | None:
        return None if micros is None else micros / 1_000_000

    return {
        "scope": status.scope.key,
        "window": status.window.spec,
        "spent_usd": usd(status.spent_micros),
        "reserved_usd": usd(status.reserved_micros),
        "limit_usd": usd(status.limit_micros),
        "remaining_usd": usd(status.remaining_micros),
        "resets_at": status.resets_at,
    }


async def get_spend(request: web.Request) -> web.Response:
    scope, window = _scope(_query(request, "scope")), _window(request.query.get("window", "day"))
    return _json(_spend_json(await _state(request).quota.get_spend(scope, window)))


async def reset_scope(request: web.Request) -> web.Response:
    body = await _body(request)
    _no_unknown(body, {"scope"})
    scope = _scope(body.get("scope"))
    await _state(request).quota.reset_scope(scope)
    return _json({"scope": scope.key, "reset": True})


# ---- client keys -----------------------------------------------------------------------


async def create_key(request: web.Request) -> web.Response:
    body = await _body(request)
    _no_unknown(body, {"tenant", "team", "key_id"})
    for field in ("tenant", "team", "key_id"):
        value = body.get(field)
        if value is not None and (not isinstance(value, str) or not value.strip() or len(value) > 128):
            raise bad_request(f"'{field}' must be a non-empty string of at most 128 characters.", field, "invalid_value")
    if body.get("tenant") is None:
        raise bad_request("Missing required parameter: 'tenant'.", "tenant", "missing_required_parameter")
    try:
        key_id, key = await _state(request).quota.create_key(body["tenant"], body.get("key_id"), body.get("team"))
    except ValueError as exc:
        raise GatewayError(409, str(exc), param="key_id", code="key_exists") from None
    # The only time the key is ever shown: the store keeps its SHA-256 alone.
    return _json({"key_id": key_id, "key": key, "tenant": body["tenant"], "team": body.get("team")}, status=201)


async def revoke_key(request: web.Request) -> web.Response:
    key_id = request.match_info["key_id"]
    return _deleted(await _state(request).quota.revoke_key(key_id), f"key {key_id}")


# ---- policy and health -----------------------------------------------------------------


async def reload_policy(request: web.Request) -> web.Response:
    state = _state(request)
    try:
        snapshot = state.runtime.reload()
    except ReloadError as exc:
        raise GatewayError(
            400,
            f"Reload rejected; policy {state.runtime.current.policy_version} stays in force: {exc}",
            code="invalid_policy",
        ) from None
    fan_out = state.extras.get("announce_reload")
    notified = False
    if fan_out is not None:
        try:
            await fan_out()
            notified = True
        except Exception:  # noqa: BLE001 - this replica reloaded; the others reload on SIGHUP or later
            notified = False
    return _json({"policy_version": snapshot.policy_version, "reloaded": True, "replicas_notified": notified})


async def breakers(request: web.Request) -> web.Response:
    return _json({"object": "list", "data": [{"deployment": k, "state": v} for k, v in _state(request).breakers.snapshot().items()]})


def _deleted(found: bool, what: str) -> web.Response:
    if not found:
        raise GatewayError(404, f"No {what} to delete.", code="not_found")
    return _json({"deleted": True})
