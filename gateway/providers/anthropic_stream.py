"""Anthropic Messages SSE events -> OpenAI `chat.completion.chunk` dicts.

Event order (from the Messages streaming reference): message_start, then per content
block content_block_start / content_block_delta* / content_block_stop, then
message_delta (stop_reason, cumulative usage) and message_stop; `ping` anywhere,
`error` anywhere. Unknown event types are skipped, as Anthropic asks clients to do.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import orjson

from .anthropic_request import JSON_TOOL
from .anthropic_response import error_from_body, finish_reason, openai_usage
from .translate import ChunkFactory, load_json_object, malformed


@dataclass
class _Block:
    kind: str  # "text" | "tool" | "json" (the JSON-mode tool, streamed as content) | "other"
    tool_index: int = -1
    sent_arguments: bool = False


class AnthropicStreamTranslator:
    def __init__(self, model: str, *, include_usage: bool) -> None:
        self.done = False
        self.usage: dict[str, Any] | None = None  # latest OpenAI usage, whether or not the client asked for it
        self._model = model
        self._include_usage = include_usage
        self._chunks: ChunkFactory | None = None
        self._blocks: dict[int, _Block] = {}
        self._tool_calls = 0
        self._raw_usage: dict[str, Any] = {}
        self._finished = False

    def feed(self, data: bytes, event: str | None = None) -> list[dict[str, Any]]:
        if not data.strip():
            return []
        payload = load_json_object(data, "a stream event")
        kind = payload.get("type") or event
        if kind == "error":
            raise error_from_body(payload, status=None)
        if kind == "ping" or self.done:
            return []
        if kind == "message_start":
            return self._message_start(payload)
        chunks = self._chunks
        if chunks is None:
            raise malformed(f"Anthropic sent '{kind}' before 'message_start'.")
        if kind == "content_block_start":
            return self._block_start(chunks, payload)
        if kind == "content_block_delta":
            return self._block_delta(chunks, payload)
        if kind == "content_block_stop":
            return self._block_stop(chunks, payload)
        if kind == "message_delta":
            return self._message_delta(chunks, payload)
        if kind == "message_stop":
            return self._message_stop(chunks)
        return []

    def _message_start(self, payload: dict[str, Any]) -> list[dict[str, Any]]:
        message = payload.get("message")
        if not isinstance(message, dict):
            raise malformed("Anthropic's 'message_start' has no 'message' object.")
        self._chunks = ChunkFactory(self._model, message.get("id"))
        self._merge_usage(message.get("usage"))
        return [self._chunks.delta({"role": "assistant", "content": ""})]

    def _block_start(self, chunks: ChunkFactory, payload: dict[str, Any]) -> list[dict[str, Any]]:
        index, block = payload.get("index"), payload.get("content_block")
        if not isinstance(index, int) or not isinstance(block, dict):
            raise malformed("Anthropic's 'content_block_start' lacks 'index' or 'content_block'.")
        kind = block.get("type")
        if kind == "text":
            self._blocks[index] = _Block("text")
            text = block.get("text")
            return [chunks.delta({"content": text})] if isinstance(text, str) and text else []
        if kind != "tool_use":
            self._blocks[index] = _Block("other")  # thinking and server-tool blocks: nothing to forward
            return []
        name, call_id = block.get("name"), block.get("id")
        if not isinstance(name, str) or not isinstance(call_id, str):
            raise malformed("Anthropic's tool_use block lacks a string 'id' or 'name'.")
        if name == JSON_TOOL:
            self._blocks[index] = _Block("json")
            return []
        state = _Block("tool", tool_index=self._tool_calls)
        self._tool_calls += 1
        self._blocks[index] = state
        arguments = ""
        if block.get("input"):  # normally {} with the input streamed as input_json_delta
            arguments = orjson.dumps(block["input"]).decode()
            state.sent_arguments = True
        start = {"index": state.tool_index, "id": call_id, "type": "function", "function": {"name": name, "arguments": arguments}}
        return [chunks.delta({"tool_calls": [start]})]

    def _block_delta(self, chunks: ChunkFactory, payload: dict[str, Any]) -> list[dict[str, Any]]:
        state, delta = self._block(payload), payload.get("delta")
        if state is None or not isinstance(delta, dict):
            raise malformed("Anthropic sent a 'content_block_delta' for a block it never started.")
        kind = delta.get("type")
        if kind == "text_delta" and state.kind == "text":
            text = delta.get("text")
            if not isinstance(text, str):
                raise malformed("Anthropic's text_delta has no string 'text'.")
            return [chunks.delta({"content": text})] if text else []
        if kind == "input_json_delta" and state.kind in ("tool", "json"):
            fragment = delta.get("partial_json")
            if not isinstance(fragment, str):
                raise malformed("Anthropic's input_json_delta has no string 'partial_json'.")
            if not fragment:
                return []
            if state.kind == "json":
                return [chunks.delta({"content": fragment})]
            state.sent_arguments = True
            return [chunks.delta({"tool_calls": [{"index": state.tool_index, "function": {"arguments": fragment}}]})]
        return []  # thinking, signature and citation deltas have no OpenAI equivalent

    def _block_stop(self, chunks: ChunkFactory, payload: dict[str, Any]) -> list[dict[str, Any]]:
        state = self._block(payload)
        if state is None:
            raise malformed("Anthropic sent a 'content_block_stop' for a block it never started.")
        if state.kind == "tool" and not state.sent_arguments:
            # a call without arguments streams no input_json_delta; clients still json.loads the arguments
            state.sent_arguments = True
            return [chunks.delta({"tool_calls": [{"index": state.tool_index, "function": {"arguments": "{}"}}]})]
        return []

    def _message_delta(self, chunks: ChunkFactory, payload: dict[str, Any]) -> list[dict[str, Any]]:
        self._merge_usage(payload.get("usage"))
        delta = payload.get("delta")
        stop_reason = delta.get("stop_reason") if isinstance(delta, dict) else None
        if stop_reason is None or self._finished:
            return []
        self._finished = True
        reason = finish_reason(stop_reason, real_tool_calls=self._tool_calls > 0)
        return [chunks.delta({}, finish_reason=reason)]

    def _message_stop(self, chunks: ChunkFactory) -> list[dict[str, Any]]:
        self.done = True
        out = []
        if not self._finished:
            self._finished = True
            out.append(chunks.delta({}, finish_reason="tool_calls" if self._tool_calls else "stop"))
        if self._include_usage and self.usage is not None:
            out.append(chunks.usage(self.usage))
        return out

    def _block(self, payload: dict[str, Any]) -> _Block | None:
        index = payload.get("index")
        return self._blocks.get(index) if isinstance(index, int) else None

    def _merge_usage(self, raw: Any) -> None:
        # message_delta usage is cumulative and may restate or omit message_start's fields
        if isinstance(raw, dict):
            self._raw_usage.update({key: value for key, value in raw.items() if value is not None})
            self.usage = openai_usage(self._raw_usage)
