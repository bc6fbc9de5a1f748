"""The quota store: spend caps, tier share quotas and rate limits, exact across replicas.

`open_store(os.environ.get("REDIS_URL"))` gives the Redis store when a URL is set and the
embedded memory store otherwise; both implement `QuotaStore` (see base.py).
"""

from __future__ import annotations

from typing import Any

from .base import (
    GLOBAL,
    Admission,
    AdmissionRequest,
    CandidateCost,
    Denial,
    KeyRecord,
    QuotaStore,
    QuotaUnavailable,
    RateLimit,
    RateLimitInfo,
    Scope,
    Settlement,
    ShareQuota,
    SpendCap,
    SpendStatus,
)
from .memory import MemoryQuotaStore
from .windows import DAY, MONTH, Window

__all__ = [
    "GLOBAL",
    "DAY",
    "MONTH",
    "Admission",
    "AdmissionRequest",
    "CandidateCost",
    "Denial",
    "KeyRecord",
    "MemoryQuotaStore",
    "QuotaStore",
    "QuotaUnavailable",
    "RateLimit",
    "RateLimitInfo",
    "Scope",
    "Settlement",
    "ShareQuota",
    "SpendCap",
    "SpendStatus",
    "Window",
    "open_store",
]


def open_store(redis_url: str | None, **options: Any) -> QuotaStore:
    """The Redis store for a URL (options: see RedisQuotaStore), else the memory store.

    Options the memory store does not know (failure_mode, timeout_s, ...) are ignored there.
    """
    if not redis_url:
        known = {"reservation_ttl_s", "record_retention_s"}
        return MemoryQuotaStore(**{k: v for k, v in options.items() if k in known})
    from .redis_store import RedisQuotaStore

    return RedisQuotaStore(redis_url, **options)
