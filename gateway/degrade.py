"""The graceful degradation ladder's pure parts: reduced requests and static answers.

Ladder (per route, from the policy): 1. fallback: a fallback candidate answered;
2. reduced: every candidate failed, so retry once with a smaller request (lower
max_tokens, optional features dropped); 3. static: still failing, so answer with the
policy's static text as a valid completion, or an explicit 503 with retry-after.
Each step is announced in `x-gateway-degraded`.
"""

from __future__ import annotations

import time
from typing import Any, Mapping

from .policy import ReducedMode, StaticMode
from .providers.errors import ErrorKind

# Failures that say "nobody can answer right now", as opposed to "this request is wrong".
AVAILABILITY_FAILURES = frozenset(
    {
        ErrorKind.RATE_LIMITED,
        ErrorKind.OVERLOADED,
        ErrorKind.TIMEOUT,
        ErrorKind.CONNECTION,
        ErrorKind.SERVER_ERROR,
        ErrorKind.MALFORMED_RESPONSE,
        ErrorKind.AUTH,
        ErrorKind.NOT_FOUND,
    }
)
STATIC_MODEL = "gateway-static"


def reduced_body(body: Mapping[str, Any], reduced: ReducedMode) -> dict[str, Any]:
    out = {k: v for k, v in body.items() if k not in reduced.drop}
    if reduced.max_tokens is not None:
        for name in ("max_tokens", "max_completion_tokens"):
            if name in out:
                out[name] = min(int(out[name]), reduced.max_tokens)
        if "max_tokens" not in out and "max_completion_tokens" not in out:
            out["max_tokens"] = reduced.max_tokens
    if "tools" in reduced.drop:
        out.pop("tool_choice", None)
        out.pop("parallel_tool_calls", None)
    return out


def static_completion(static: StaticMode, request_id: str) -> dict[str, Any]:
    return {
        "id": f"chatcmpl-static-{request_id}",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": STATIC_MODEL,
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": static.message, "refusal": None},
                "finish_reason": "stop",
                "logprobs": None,
            }
        ],
        "usage": {"prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0},
    }


def static_chunks(static: StaticMode, request_id: str) -> list[dict[str, Any]]:
    """The static answer as a stream: role, content, finish."""
    base = {
        "id": f"chatcmpl-static-{request_id}",
        "object": "chat.completion.chunk",
        "created": int(time.time()),
        "model": STATIC_MODEL,
    }
    deltas = [
        ({"role": "assistant", "content": ""}, None),
        ({"content": static.message}, None),
        ({}, "stop"),
    ]
    return [
        {**base, "choices": [{"index": 0, "delta": delta, "finish_reason": finish, "logprobs": None}]}
        for delta, finish in deltas
    ]
