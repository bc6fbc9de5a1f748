"""Execute a route plan: attempts, retries, failover, streaming continuation.

Decisions are made from the normalized `UpstreamError` taxonomy only. Every attempt is
recorded so the client (x-gateway-attempts), the decision log and the trace can show the
exact failover path.
"""

from __future__ import annotations

import asyncio
import random
import time
from dataclasses import dataclass, field
from typing import Any, AsyncIterator, Awaitable, Callable, Mapping, Sequence, TypeVar

from .loop import running_loop
from .providers.base import Deployment, ProviderAdapter, SSEDecoder, StreamTranslator
from .providers.errors import ErrorKind, UpstreamError
from .upstream import Timeouts, UpstreamClient

T = TypeVar("T")
# Asked before failing over to another deployment (e.g. "can the budget cover it?").
MayTry = Callable[[Deployment], Awaitable[bool]]

CONTINUATION_INSTRUCTION = (
    "Your previous message was cut off by a network failure. Continue it exactly from the "
    "point where it stops, without repeating any of it and without commenting on the interruption."
)


@dataclass
class AttemptRecord:
    model: str
    provider: str
    outcome: str  # "ok" or an ErrorKind value
    duration_ms: float
    status: int | None = None
    retry: int = 0  # 0 for the first try on this deployment
    continuation: bool = False

    def header_token(self) -> str:
        suffix = "+cont" if self.continuation else ""
        return f"{self.provider}/{self.model}:{self.outcome}{suffix}:{self.duration_ms:.0f}ms"


@dataclass(frozen=True)
class RetryPolicy:
    max_retries: int = 1  # extra tries on the same deployment for transient errors
    backoff_base_s: float = 0.05
    backoff_max_s: float = 2.0
    max_retry_after_s: float = 10.0  # a longer retry-after means: go to the next candidate


class AllAttemptsFailed(Exception):
    def __init__(self, error: UpstreamError, attempts: list[AttemptRecord]) -> None:
        super().__init__(error.message)
        self.error = error
        self.attempts = attempts


@dataclass
class CompletionResult:
    response: dict[str, Any]
    deployment: Deployment
    attempts: list[AttemptRecord]


class AttemptHooks:
    """Told about every attempt: breakers, metrics and tracing subscribe here."""

    def started(self, deployment: Deployment) -> None:
        return None

    def finished(self, deployment: Deployment, record: AttemptRecord, error: UpstreamError | None) -> None:
        return None


class Forwarder:
    def __init__(
        self,
        client: UpstreamClient,
        adapters: Mapping[str, ProviderAdapter],
        timeouts: Timeouts,
        retry: RetryPolicy = RetryPolicy(),
        hooks: AttemptHooks = AttemptHooks(),
    ) -> None:
        self._client = client
        self._adapters = adapters
        self._timeouts = timeouts
        self._retry = retry
        self.hooks = hooks

    def adapter(self, deployment: Deployment) -> ProviderAdapter:
        return self._adapters[deployment.api]

    async def complete(
        self,
        body: Mapping[str, Any],
        deployments: Sequence[Deployment],
        deadline: float,
        *,
        attempts: list[AttemptRecord] | None = None,
        content_fallback: Deployment | None = None,
        may_try: MayTry | None = None,
    ) -> CompletionResult:
        attempts = [] if attempts is None else attempts

        async def once(deployment: Deployment) -> dict[str, Any]:
            adapter = self.adapter(deployment)
            request = adapter.build_request(body, deployment, stream=False)
            response = await self._client.open(request, self._timeouts, _remaining(deadline))
            data = await self._client.read_body(response, _remaining(deadline), self._timeouts.idle_s)
            if response.status >= 300:
                raise adapter.map_error(response.status, response.headers, data)
            return adapter.parse_response(data, deployment)

        deployment, response = await self.run_attempts(
            deployments, deadline, attempts, once, content_fallback=content_fallback, may_try=may_try
        )
        return CompletionResult(response, deployment, attempts)

    async def open_stream(
        self,
        body: Mapping[str, Any],
        deployments: Sequence[Deployment],
        deadline: float,
        *,
        allow_continuation: bool = True,
        attempts: list[AttemptRecord] | None = None,
        content_fallback: Deployment | None = None,
        may_try: MayTry | None = None,
    ) -> "UpstreamStream":
        """Try candidates until one stream yields its first chunk; failures before it are invisible."""
        attempts = [] if attempts is None else attempts
        stream = UpstreamStream(self, body, list(deployments), deadline, attempts, allow_continuation, may_try)

        async def once(deployment: Deployment) -> None:
            await stream.start(deployment)

        await self.run_attempts(
            deployments, deadline, attempts, once, content_fallback=content_fallback, may_try=may_try
        )
        return stream

    async def run_attempts(
        self,
        deployments: Sequence[Deployment],
        deadline: float,
        attempts: list[AttemptRecord],
        once: Callable[[Deployment], Awaitable[T]],
        *,
        continuation: bool = False,
        content_fallback: Deployment | None = None,
        may_try: MayTry | None = None,
    ) -> tuple[Deployment, T]:
        """Try each deployment in order (with retries for transient errors) until one succeeds.

        context_length skips the candidates whose window is no larger than the one that
        refused; content_filter goes to the route's content fallback, or back to the client.
        """
        queue = list(deployments)
        last_error: UpstreamError | None = None
        first = not continuation  # a continuation's first candidate is a failover too
        while queue:
            deployment = queue.pop(0)
            if not first and may_try is not None and not await may_try(deployment):
                self._record(attempts, deployment, "credit_limit", time.perf_counter(), None, 0, continuation)
                continue
            first = False
            retry = 0
            while True:
                started = time.perf_counter()
                self.hooks.started(deployment)
                try:
                    result = await once(deployment)
                except UpstreamError as error:
                    record = self._record(
                        attempts, deployment, error.kind.value, started, error.status, retry, continuation
                    )
                    self.hooks.finished(deployment, record, error)
                    last_error = _prefer(last_error, error)
                    if not error.failover:
                        raise AllAttemptsFailed(error, attempts) from None
                    delay = self._retry_delay(error, retry, deadline)
                    if delay is None:
                        break
                    retry += 1
                    await asyncio.sleep(delay)
                    continue
                record = self._record(attempts, deployment, "ok", started, 200, retry, continuation)
                self.hooks.finished(deployment, record, None)
                return deployment, result
            if last_error.kind is ErrorKind.CONTEXT_LENGTH:
                window = deployment.context_window
                queue = [d for d in queue if window and d.context_window > window]
            elif last_error.kind is ErrorKind.CONTENT_FILTER:
                tried = {a.provider + "/" + a.model for a in attempts}
                if content_fallback is None or content_fallback.key in tried:
                    raise AllAttemptsFailed(last_error, attempts)
                queue = [content_fallback]
            if _remaining(deadline) <= 0:
                break
        if last_error is None:
            last_error = UpstreamError(ErrorKind.SERVER_ERROR, "No deployment could be tried for this request.")
        if _remaining(deadline) <= 0 and last_error.kind is not ErrorKind.TIMEOUT:
            last_error = UpstreamError(
                ErrorKind.TIMEOUT,
                f"The request deadline passed after {len(attempts)} attempt(s); last error: {last_error.message}",
            )
        raise AllAttemptsFailed(last_error, attempts)

    def _retry_delay(self, error: UpstreamError, retry: int, deadline: float) -> float | None:
        if not error.retryable or retry >= self._retry.max_retries:
            return None
        if error.retry_after is not None:
            if error.retry_after > self._retry.max_retry_after_s:
                return None
            delay = error.retry_after
        else:
            cap = min(self._retry.backoff_max_s, self._retry.backoff_base_s * (2**retry))
            delay = random.uniform(cap / 2, cap)  # jitter spreads retries of many clients
        # Leave room for the retry itself; otherwise the next candidate is the better use.
        return delay if delay + 0.05 < _remaining(deadline) else None

    @staticmethod
    def _record(
        attempts: list[AttemptRecord],
        deployment: Deployment,
        outcome: str,
        started: float,
        status: int | None,
        retry: int,
        continuation: bool = False,
    ) -> AttemptRecord:
        record = AttemptRecord(
            model=deployment.model,
            provider=deployment.provider,
            outcome=outcome,
            duration_ms=(time.perf_counter() - started) * 1000,
            status=status,
            retry=retry,
            continuation=continuation,
        )
        attempts.append(record)
        return record


def _remaining(deadline: float) -> float:
    return deadline - running_loop().time()


def _prefer(previous: UpstreamError | None, current: UpstreamError) -> UpstreamError:
    """The error to report if everything fails: the latest, but keep the shortest retry-after."""
    if previous is not None and previous.retry_after is not None:
        if current.retry_after is None or previous.retry_after < current.retry_after:
            current.retry_after = previous.retry_after
    return current


@dataclass
class Segment:
    """The part of one streamed answer that one deployment produced."""

    deployment: Deployment
    usage: dict[str, Any] | None = None  # as the upstream reported it, if it did
    text_chars: int = 0  # content characters produced, to estimate usage when none came
    started: float = field(default_factory=time.perf_counter)


class StreamBroken(Exception):
    """The stream failed after bytes reached the client and could not be continued."""

    def __init__(self, error: UpstreamError) -> None:
        super().__init__(error.message)
        self.error = error


class UpstreamStream:
    """One logical answer stream, possibly stitched from several upstream streams.

    `start` opens a stream on one deployment and reads up to its first chunk, so a
    failure before that is a plain failed attempt. `chunks` yields OpenAI chunk dicts; if
    the upstream breaks mid-answer, it asks the next candidate to continue the partial
    text and splices the continuation into the same stream, keeping the first `id`.
    """

    def __init__(
        self,
        forwarder: Forwarder,
        body: Mapping[str, Any],
        deployments: list[Deployment],
        deadline: float,
        attempts: list[AttemptRecord],
        allow_continuation: bool,
        may_try: MayTry | None = None,
    ) -> None:
        self._forwarder = forwarder
        self._may_try = may_try
        self._client_body = body
        self._deployments = deployments
        self._deadline = deadline
        self.attempts = attempts
        self._allow_continuation = allow_continuation
        self.client_wants_usage = bool((body.get("stream_options") or {}).get("include_usage"))
        # Always ask for usage upstream: it is what settles the spend exactly.
        self._upstream_body = {**body, "stream": True, "stream_options": {**(body.get("stream_options") or {}), "include_usage": True}}
        self.segments: list[Segment] = []
        self.deployment: Deployment | None = None
        self.text: list[str] = []  # content of choice 0 sent so far
        self.finish_reason: str | None = None
        self._saw_tool_calls = False
        self._trim_leading = False  # after a continuation whose prefill lost trailing whitespace
        self._stream_id: str | None = None
        self._pending: list[dict[str, Any]] = []
        self._translator: StreamTranslator | None = None
        self._decoder = SSEDecoder()
        self._raw: AsyncIterator[bytes] | None = None

    async def start(self, deployment: Deployment, body: Mapping[str, Any] | None = None) -> None:
        adapter = self._forwarder.adapter(deployment)
        client = self._forwarder._client
        request = adapter.build_request(body or self._upstream_body, deployment, stream=True)
        response = await client.open(request, self._forwarder._timeouts, _remaining(self._deadline))
        if response.status >= 300:
            data = await client.read_body(response, _remaining(self._deadline), self._forwarder._timeouts.idle_s)
            raise adapter.map_error(response.status, response.headers, data)
        self._translator = adapter.stream_translator(deployment, body or self._upstream_body)
        self._decoder = SSEDecoder()
        self._raw = client.iter_chunks(response, self._forwarder._timeouts.idle_s, self._deadline)
        try:
            first = await self._opening()
        except BaseException:
            await self.aclose()
            raise
        if not first:
            raise UpstreamError(ErrorKind.MALFORMED_RESPONSE, "The upstream stream ended without any chunk.")
        if _refused(first):
            await self.aclose()
            raise UpstreamError(
                ErrorKind.CONTENT_FILTER, "The upstream's content filter refused the request.", status=200
            )
        self._pending = first
        self.deployment = deployment
        self.segments.append(Segment(deployment))

    async def _opening(self) -> list[dict[str, Any]]:
        """The chunks up to and including the first one that carries part of the answer.

        An opening role delta alone is not the answer yet: holding it back until the
        first content (or tool call, or finish) arrives keeps a failure in between a
        plain failed attempt, invisible to the client, instead of a continuation.
        """
        out: list[dict[str, Any]] = []
        while True:
            batch = await self._next_batch()
            if batch is None:
                return out
            out.extend(batch)
            if any(_carries_answer(chunk) for chunk in batch):
                return out

    async def _next_batch(self) -> list[dict[str, Any]] | None:
        """The next non-empty list of translated chunks; None at the normal end of the answer."""
        assert self._raw is not None and self._translator is not None
        while True:
            try:
                raw = await anext(self._raw)
            except StopAsyncIteration:
                out = [c for event, data in self._decoder.flush() for c in self._translator.feed(data, event)]
                if out:
                    return out
                if not self._translator.done:
                    raise UpstreamError(ErrorKind.CONNECTION, "The upstream stream ended before the answer was complete.") from None
                return None
            out: list[dict[str, Any]] = []
            for event, data in self._decoder.feed(raw):
                out.extend(self._translator.feed(data, event))
            if out:
                return out
            if self._translator.done:
                await self.aclose()
                return None

    async def batches(self) -> AsyncIterator[list[dict[str, Any]]]:
        """The answer's chunks, a list per upstream read: what arrived together can leave
        together, in one write to the client instead of one system call per chunk."""
        sent_any = False
        while True:
            batch, self._pending = self._pending, []
            tracked = [t for t in map(self._track, batch) if t is not None]
            if tracked:
                sent_any = True
                yield tracked
            try:
                next_batch = await self._next_batch()
            except UpstreamError as error:
                await self.aclose()
                assert self.deployment is not None
                # The stream had been recorded "ok" when it started; its mid-answer failure is
                # an attempt outcome of its own, so the failover path stays readable.
                record = self._forwarder._record(
                    self.attempts, self.deployment, error.kind.value, self.segments[-1].started, error.status, 0, True
                )
                self._forwarder.hooks.finished(self.deployment, record, error)
                if not (sent_any and self._can_continue()):
                    raise StreamBroken(error) from None
                await self._continue(error)
                continue
            if next_batch is None:
                return
            self._pending = next_batch

    def _can_continue(self) -> bool:
        return (
            self._allow_continuation
            and not self._saw_tool_calls
            and self.finish_reason is None
            and (self._client_body.get("n") or 1) == 1
            and not _structured(self._client_body)
            and _remaining(self._deadline) > 0
        )

    async def _continue(self, cause: UpstreamError) -> None:
        assert self.deployment is not None
        failed = self.deployment
        rest = [d for d in self._deployments if d.key != failed.key] + [failed]
        partial = "".join(self.text)
        # Anthropic rejects a final assistant turn that ends in whitespace. The client
        # already has that whitespace, so the continuation's leading whitespace is dropped.
        prefill = partial.rstrip()
        self._trim_leading = len(prefill) < len(partial)
        messages = list(self._client_body["messages"]) + [{"role": "system", "content": CONTINUATION_INSTRUCTION}]
        if prefill:
            messages.append({"role": "assistant", "content": prefill})
        body = {**self._upstream_body, "messages": messages}

        async def once(deployment: Deployment) -> None:
            await self.start(deployment, body)

        try:
            await self._forwarder.run_attempts(
                rest, self._deadline, self.attempts, once, continuation=True, may_try=self._may_try
            )
        except AllAttemptsFailed as failed_all:
            raise StreamBroken(failed_all.error) from None
        # The continuation's opening role delta would restart the message on the client.
        self._pending = [c for c in self._pending if not _is_role_only(c)]

    def _track(self, chunk: dict[str, Any]) -> dict[str, Any] | None:
        """Record what the chunk carries; return what the client should get (or None)."""
        segment = self.segments[-1]
        if self._stream_id is None:
            self._stream_id = chunk.get("id")
        elif chunk.get("id") != self._stream_id:
            chunk["id"] = self._stream_id
        usage = chunk.get("usage")
        if usage:
            segment.usage = usage
        choices = chunk.get("choices")
        if not choices:
            return None if usage is not None else chunk  # usage goes out once, summed, at the end
        for choice in choices:
            if choice.get("index", 0) != 0:
                continue
            delta = choice.get("delta") or {}
            content = delta.get("content")
            if content and self._trim_leading:
                content = delta["content"] = content.lstrip()
                self._trim_leading = not content
            if content:
                self.text.append(content)
                segment.text_chars += len(content)
            if delta.get("tool_calls"):
                self._saw_tool_calls = True
            if choice.get("finish_reason"):
                self.finish_reason = choice["finish_reason"]
        if usage is not None:
            chunk = {k: v for k, v in chunk.items() if k != "usage"}
        return chunk

    def usage_chunk(self, total: dict[str, Any]) -> dict[str, Any]:
        assert self.deployment is not None
        return {
            "id": self._stream_id,
            "object": "chat.completion.chunk",
            "created": int(time.time()),
            "model": self.deployment.model,
            "choices": [],
            "usage": total,
        }

    async def aclose(self) -> None:
        if self._raw is not None:
            raw, self._raw = self._raw, None
            await raw.aclose()  # closes the upstream response: no connection left dangling


def _is_role_only(chunk: dict[str, Any]) -> bool:
    """An opening delta that says only "the assistant speaks" (null and empty fields aside)."""
    if chunk.get("usage"):
        return False
    choices = chunk.get("choices") or []
    if len(choices) != 1 or choices[0].get("finish_reason"):
        return False
    delta = choices[0].get("delta") or {}
    return all(name == "role" or value is None or value == "" for name, value in delta.items())


def _carries_answer(chunk: dict[str, Any]) -> bool:
    for choice in chunk.get("choices") or ():
        delta = choice.get("delta") or {}
        if choice.get("finish_reason") or delta.get("content") or delta.get("tool_calls") or delta.get("refusal"):
            return True
    return False


def _refused(opening: list[dict[str, Any]]) -> bool:
    """The stream's answer is a content-filter finish with nothing said before it."""
    for chunk in opening:
        for choice in chunk.get("choices") or ():
            if choice.get("index", 0) != 0:
                continue
            delta = choice.get("delta") or {}
            if delta.get("content") or delta.get("tool_calls"):
                return False
            if choice.get("finish_reason") == "content_filter":
                return True
    return False


def _structured(body: Mapping[str, Any]) -> bool:
    """JSON output: a continuation by another model could not be trusted to stay valid JSON."""
    response_format = body.get("response_format")
    return isinstance(response_format, Mapping) and response_format.get("type") in ("json_object", "json_schema")
