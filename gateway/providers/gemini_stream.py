"""Gemini `streamGenerateContent?alt=sse` events -> OpenAI `chat.completion.chunk` dicts.

Every event is a whole `GenerateContentResponse` holding the new parts only; the last
event of a candidate carries its `finishReason`, and `usageMetadata` is cumulative.
There is no end-of-stream sentinel: the answer is complete once every candidate seen
has finished. Function calls arrive whole, so each becomes one tool-call delta.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from .gemini_response import (
    candidate_index,
    candidate_parts,
    check_prompt_blocked,
    error_from_body,
    finish_reason,
    function_call,
    openai_usage,
)
from .translate import ChunkFactory, load_json_object, malformed


@dataclass
class _Candidate:
    tool_calls: int = 0
    finished: bool = False


class GeminiStreamTranslator:
    def __init__(self, model: str, *, include_usage: bool) -> None:
        self.done = False
        self.usage: dict[str, Any] | None = None  # latest OpenAI usage, whether or not the client asked for it
        self._model = model
        self._include_usage = include_usage
        self._chunks: ChunkFactory | None = None
        self._response_id: Any = None
        self._candidates: dict[int, _Candidate] = {}

    def feed(self, data: bytes, event: str | None = None) -> list[dict[str, Any]]:
        if not data.strip():
            return []
        response = load_json_object(data, "a stream event")
        if "error" in response:
            raise error_from_body(response, status=None)
        raw_usage = response.get("usageMetadata")
        if isinstance(raw_usage, dict):
            self.usage = openai_usage(raw_usage)
        if self.done:
            return []
        check_prompt_blocked(response)
        if self._chunks is None:
            self._response_id = response.get("responseId")
            self._chunks = ChunkFactory(self._model, self._response_id)
        candidates = response.get("candidates", [])
        if not isinstance(candidates, list):
            raise malformed("Gemini sent a stream event whose 'candidates' is not an array.")
        out: list[dict[str, Any]] = []
        for position, candidate in enumerate(candidates):
            if not isinstance(candidate, dict):
                raise malformed("Gemini sent a candidate that is not an object.")
            out.extend(self._candidate(self._chunks, candidate_index(candidate, position), candidate))
        if self._candidates and all(state.finished for state in self._candidates.values()):
            self.done = True
            if self._include_usage and self.usage is not None:
                out.append(self._chunks.usage(self.usage))
        return out

    def _candidate(self, chunks: ChunkFactory, index: int, candidate: dict[str, Any]) -> list[dict[str, Any]]:
        out = []
        state = self._candidates.get(index)
        if state is None:
            state = self._candidates[index] = _Candidate()
            out.append(chunks.delta({"role": "assistant", "content": ""}, index))
        for part in candidate_parts(candidate):
            if part.get("thought"):
                continue
            if "functionCall" in part:
                call = function_call(self._response_id, index, state.tool_calls, part)
                out.append(chunks.delta({"tool_calls": [{"index": state.tool_calls, **call}]}, index))
                state.tool_calls += 1
            elif isinstance(part.get("text"), str) and part["text"]:
                out.append(chunks.delta({"content": part["text"]}, index))
        reason = candidate.get("finishReason")
        if reason and reason != "FINISH_REASON_UNSPECIFIED" and not state.finished:
            state.finished = True
            out.append(chunks.delta({}, index, finish_reason(reason, has_tool_calls=state.tool_calls > 0)))
        return out
