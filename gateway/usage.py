"""Token usage and its cost, from what upstreams reported or, failing that, estimates."""

from __future__ import annotations

from typing import Any, Mapping, NamedTuple

CHARS_PER_TOKEN = 4.0  # used only when an upstream reports no usage (a cut stream)


class Usage(NamedTuple):
    """Immutable; a NamedTuple rather than a frozen dataclass, whose __init__ costs an
    object.__setattr__ per field: a request makes one to three of these."""

    prompt_tokens: int = 0
    completion_tokens: int = 0
    cached_tokens: int = 0
    estimated: bool = False  # true when some part was not reported by the upstream

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens

    def __add__(self, other: "Usage") -> "Usage":
        return Usage(
            self.prompt_tokens + other.prompt_tokens,
            self.completion_tokens + other.completion_tokens,
            self.cached_tokens + other.cached_tokens,
            self.estimated or other.estimated,
        )

    def as_openai(self) -> dict[str, Any]:
        return {
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "total_tokens": self.total_tokens,
            "prompt_tokens_details": {"cached_tokens": self.cached_tokens},
        }


def from_openai(usage: Mapping[str, Any] | None) -> Usage | None:
    if type(usage) is not dict:  # parsed JSON; a dict check is far cheaper than an ABC one
        return None
    try:
        prompt = int(usage.get("prompt_tokens") or 0)
        completion = int(usage.get("completion_tokens") or 0)
        details = usage.get("prompt_tokens_details") or {}
        cached = int(details.get("cached_tokens") or 0) if isinstance(details, dict) else 0
    except (TypeError, ValueError):
        return None
    return Usage(prompt, completion, cached)


def estimated(prompt_tokens: int, completion_chars: int) -> Usage:
    return Usage(prompt_tokens, int(completion_chars / CHARS_PER_TOKEN + 0.999), 0, True)
