"""The decision log: one record per request, appended without blocking the request.

Two sinks: a size-rotated JSONL file (the default), written in batches by a timer; and
a Redis stream (XADD, capped with MAXLEN ~) when Redis is configured, flushed in batches
by a background task. Records
never hold prompt text unless the policy opts in (`decision_log.include_prompt`).
"""

from __future__ import annotations

import asyncio
import logging
import logging.handlers
from pathlib import Path
from typing import Any, Protocol

import orjson

log = logging.getLogger("gateway.decisions")


class DecisionSink(Protocol):
    def append(self, record: dict[str, Any]) -> None: ...

    async def close(self) -> None: ...


class _RawLine(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        return record.getMessage()


class JsonlDecisionLog:
    """Rotating JSONL file. `append` only puts the record on a list; a timer writes what
    gathered every `flush_interval_s` in one write (to the page cache: microseconds), so a
    request pays for a list append and a share of one orjson call."""

    def __init__(self, path: str, max_bytes: int, backups: int, flush_interval_s: float = 0.2) -> None:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self._handler = logging.handlers.RotatingFileHandler(
            path, maxBytes=max_bytes, backupCount=backups, encoding="utf-8"
        )
        self._handler.setFormatter(_RawLine())
        self._interval = flush_interval_s
        self._pending: list[dict[str, Any]] = []
        self._timer: asyncio.TimerHandle | None = None

    def append(self, record: dict[str, Any]) -> None:
        self._pending.append(record)
        if self._timer is None:
            self._timer = asyncio.get_running_loop().call_later(self._interval, self.flush)

    def flush(self) -> None:
        self._timer = None
        if not self._pending:
            return
        batch, self._pending = self._pending, []
        text = b"\n".join(map(orjson.dumps, batch)).decode()
        # One emit per batch: the handler rotates by size between batches.
        self._handler.emit(logging.LogRecord("decisions", logging.INFO, "", 0, text, None, None))

    async def close(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self.flush()
        self._handler.close()


# XADD each argument after the first (the stream's approximate length cap) to KEYS[1]: one
# key, so it runs unchanged on Redis Cluster.
_XADD_ALL = """
for i = 2, #ARGV do
  redis.call('XADD', KEYS[1], 'MAXLEN', '~', ARGV[1], '*', 'd', ARGV[i])
end
return #ARGV - 1
"""


class RedisStreamDecisionLog:
    """XADD to a capped Redis stream, batched; a Redis outage drops records, never requests.

    Records go out every `flush_interval_s`, or as soon as a full batch has gathered, in one
    script call per batch: one command to encode and one reply to parse for a few hundred
    records, where a pipeline of XADDs costs the gateway both per record."""

    def __init__(self, redis: Any, stream: str = "gateway:decisions", max_len: int = 1_000_000, batch: int = 256,
                 flush_interval_s: float = 0.2) -> None:
        self._redis = redis
        self._stream = stream
        self._max_len = max_len
        self._batch = batch
        self._interval = flush_interval_s
        self._pending: list[bytes] = []
        self._wake = asyncio.Event()
        self._append_all = redis.register_script(_XADD_ALL)
        self._task = asyncio.get_running_loop().create_task(self._run())
        self.dropped = 0

    def append(self, record: dict[str, Any]) -> None:
        if len(self._pending) >= 100 * self._batch:
            self.dropped += 1  # bounded memory while Redis is away
            return
        self._pending.append(orjson.dumps(record))
        if len(self._pending) >= self._batch:
            self._wake.set()

    async def _run(self) -> None:
        while True:
            try:
                async with asyncio.timeout(self._interval):
                    await self._wake.wait()
            except TimeoutError:
                pass
            self._wake.clear()
            await self._flush()

    async def _flush(self) -> None:
        while self._pending:
            batch, self._pending = self._pending[: self._batch], self._pending[self._batch :]
            try:
                await self._append_all(keys=[self._stream], args=[self._max_len, *batch])
            except Exception as exc:  # noqa: BLE001 - the log must never take requests down
                self.dropped += len(batch)
                log.warning("decision log: dropped %d records, Redis failed: %s", len(batch), type(exc).__name__)
                return

    async def close(self) -> None:
        await self._flush()
        self._task.cancel()


class NullDecisionLog:
    def append(self, record: dict[str, Any]) -> None:
        return None

    async def close(self) -> None:
        return None
