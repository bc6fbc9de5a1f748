"""Plain data shared by the three wire formats.

Each wire module turns its provider's request body into a `SimRequest`, the answer
engine turns that into an `Answer`, and the wire module renders the `Answer` back in
its provider's shape. Nothing here knows about HTTP.
"""

from __future__ import annotations

import itertools
import secrets
from dataclasses import dataclass, field
from typing import Any

# Why a counter behind a random prefix instead of uuid4 per id: ids are minted on the
# hot path, and uniqueness within one process plus across restarts is all we need.
_ID_PREFIX = secrets.token_hex(5)
_ID_COUNTER = itertools.count(1)


def new_id() -> str:
    """A short id, unique within this process and unlikely to repeat across runs."""
    return f"{_ID_PREFIX}{next(_ID_COUNTER):010x}"


@dataclass(frozen=True)
class ToolSpec:
    name: str
    parameters: dict[str, Any]  # JSON Schema (Gemini's OpenAPI subset is accepted too)


@dataclass
class SimRequest:
    """What the answer engine needs from any provider's request."""

    wire: str  # "openai" | "anthropic" | "gemini"
    model: str  # body model, Azure deployment, or Gemini path model
    texts: list[str]  # every prompt text in order (system first): directives, token count
    topic_text: str  # the text the reply is "about": last user message or tool result
    partial_assistant: str | None = None  # a trailing assistant message to continue
    after_tool_result: bool = False  # the last turn hands back a tool's result
    max_tokens: int | None = None
    n: int = 1
    stop: tuple[str, ...] = ()
    tools: list[ToolSpec] = field(default_factory=list)
    tool_mode: str = "auto"  # auto | required | none
    tool_name: str | None = None  # a forced tool
    parallel_tools: bool = True
    json_mode: bool = False
    json_schema: dict[str, Any] | None = None
    stream: bool = False
    include_usage: bool = False  # OpenAI stream_options.include_usage


@dataclass(frozen=True)
class ToolCall:
    id: str
    name: str
    arguments: dict[str, Any]
    arguments_json: str  # the exact text clients receive (and streams are cut from)


@dataclass
class Answer:
    """One choice's content; `n` choices repeat it."""

    pieces: list[str]  # stream fragments; "".join(pieces) is the text
    tool_calls: list[ToolCall]
    finish: str  # stop | length | stop_sequence | tool_calls | content_filter
    stop_sequence: str | None
    prompt_tokens: int
    completion_tokens: int  # for one choice

    @property
    def text(self) -> str:
        return "".join(self.pieces)


class BadRequest(Exception):
    """The request is invalid; `field` names the offending field."""

    def __init__(self, message: str, field: str | None = None, status: int = 400) -> None:
        super().__init__(message)
        self.message = message
        self.field = field
        self.status = status
