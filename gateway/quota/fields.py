"""How one scope's limits are written as flat fields, the same in Redis hashes and in memory.

A scope's configuration is a small map of field -> text:
    cap:<window spec>          limit in micro-dollars   (cap:day, cap:month, cap:rolling:3600)
    rpm / tpm                  requests / tokens per minute
    share:<tier>:<window_s>    the tier's maximum share of the scope's requests
Both stores also remember who wrote each field (`static` policy file or `admin`), so that
reloading the policy file never clobbers a value an operator set at run time.
"""

from __future__ import annotations

from typing import Iterable, Iterator, Mapping

from .base import RateLimit, Scope, ShareQuota, SpendCap
from .windows import Window

STATIC = "static"
ADMIN = "admin"


def cap_field(window: Window) -> str:
    return f"cap:{window.spec}"


def share_field(tier: str, window_s: int) -> str:
    return f"share:{tier}:{window_s}"


def fields_of_cap(cap: SpendCap) -> dict[str, str]:
    return {cap_field(cap.window): str(cap.limit_micros)}


def fields_of_rate_limit(limit: RateLimit) -> dict[str, str | None]:
    """None marks a field to delete (that dimension is unlimited)."""
    return {
        "rpm": None if limit.rpm is None else str(limit.rpm),
        "tpm": None if limit.tpm is None else str(limit.tpm),
    }


def fields_of_share(quota: ShareQuota) -> dict[str, str]:
    return {share_field(quota.tier, quota.window_s): repr(float(quota.max_share))}


def static_fields(
    caps: Iterable[SpendCap], rate_limits: Iterable[RateLimit], share_quotas: Iterable[ShareQuota]
) -> dict[str, dict[str, str]]:
    """The policy file's limits as scope key -> field -> value."""
    out: dict[str, dict[str, str]] = {}
    for cap in caps:
        out.setdefault(cap.scope.key, {}).update(fields_of_cap(cap))
    for limit in rate_limits:
        values = {k: v for k, v in fields_of_rate_limit(limit).items() if v is not None}
        out.setdefault(limit.scope.key, {}).update(values)
    for quota in share_quotas:
        out.setdefault(quota.scope.key, {}).update(fields_of_share(quota))
    return out


def caps_of(scope: Scope, fields: Mapping[str, str]) -> Iterator[SpendCap]:
    for name, value in fields.items():
        if name.startswith("cap:"):
            yield SpendCap(scope, Window.parse(name[4:]), int(value))


def rate_limit_of(scope: Scope, fields: Mapping[str, str]) -> RateLimit | None:
    rpm, tpm = fields.get("rpm"), fields.get("tpm")
    if rpm is None and tpm is None:
        return None
    return RateLimit(scope, int(rpm) if rpm is not None else None, int(tpm) if tpm is not None else None)


def shares_of(scope: Scope, fields: Mapping[str, str]) -> Iterator[ShareQuota]:
    for name, value in fields.items():
        if name.startswith("share:"):
            tier, _, window_s = name[6:].rpartition(":")
            yield ShareQuota(scope, tier, float(value), int(window_s))
