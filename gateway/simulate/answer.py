"""SimRequest -> Answer: the provider-neutral reply. Pure."""

from __future__ import annotations

import json
from typing import Any

from .samples import sample_value
from .shapes import Answer, SimRequest, ToolCall, ToolSpec, new_id
from .text import (
    apply_stop,
    continuation,
    count_words,
    reply_words,
    split_pieces,
    to_pieces,
)


def build_answer(
    request: SimRequest, default_tokens: int, *, content_filter: bool = False
) -> Answer:
    prompt_tokens = count_words(request.texts)
    if content_filter:
        return Answer([], [], "content_filter", None, prompt_tokens, 0)

    calls = _tool_calls(request)
    if calls:
        # one token for the name plus the words of the arguments, like text
        tokens = sum(1 + len(call.arguments_json.split()) for call in calls)
        return Answer([], calls, "tool_calls", None, prompt_tokens, tokens)

    finish = "stop"
    if request.json_schema is not None or request.json_mode:
        # Structured output is always whole: a consumer asked for parseable JSON, and
        # max_tokens truncation is rehearsed with plain text instead.
        value: Any
        if request.json_schema is not None:
            value = sample_value(request.json_schema)
        else:
            value = {"reply": " ".join(reply_words(request.topic_text, default_tokens))}
        pieces = split_pieces(json.dumps(value, ensure_ascii=False))
    else:
        words = reply_words(request.topic_text, default_tokens)
        rest, leading_space = continuation(words, request.partial_assistant)
        if request.max_tokens is not None and len(rest) > request.max_tokens:
            rest, finish = rest[: request.max_tokens], "length"
        pieces = to_pieces(rest, leading_space)

    pieces, matched = apply_stop(pieces, request.stop)
    if matched is not None:
        finish = "stop_sequence"
    return Answer(pieces, [], finish, matched, prompt_tokens, len(pieces))


def _tool_calls(request: SimRequest) -> list[ToolCall]:
    if not request.tools or request.tool_mode == "none":
        return []
    if request.tool_name is not None:
        chosen = [t for t in request.tools if t.name == request.tool_name][:1]
        chosen = chosen or [ToolSpec(request.tool_name, {})]
    elif request.after_tool_result and request.tool_mode == "auto":
        # a model handed a tool's result answers in words, so agent loops end
        return []
    elif request.parallel_tools and len(request.tools) >= 2:
        chosen = request.tools[:2]
    else:
        chosen = request.tools[:1]
    calls = []
    for tool in chosen:
        arguments = sample_value(tool.parameters) if tool.parameters else {}
        if not isinstance(arguments, dict):
            arguments = {}
        calls.append(
            ToolCall(new_id(), tool.name, arguments, json.dumps(arguments, ensure_ascii=False))
        )
    return calls
