"""The decision log: one record per request, appended without blocking the request.

Two sinks: a size-rotated JSONL file (the default), written in batches by a timer; and
a Redis stream (XADD, capped with MAXLEN ~) when Redis is configured, flushed in batches
by a background task. Both serialize a record as it is appended (bytes are all a pending
record holds, and the garbage collector never has to walk a batch of dicts). Records
never hold prompt text unless the policy opts in (`decision_log.include_prompt`).
"""

from __future__ import annotations

import asyncio
import logging
import os
import stat
from pathlib import Path
from typing import Any, Protocol

import orjson

log = logging.getLogger("gateway.decisions")


class DecisionSink(Protocol):
    keeps_records: bool  # False: nothing is kept, so a record need not be built

    def append(self, record: dict[str, Any]) -> None: ...

    async def close(self) -> None: ...


def _unwritable(record: dict[str, Any], exc: Exception) -> None:
    # A record is built after the answer, and the log must never take a request down.
    log.warning("decision log: dropped record %s: %s", record.get("request_id"), exc)


class SizeRotatedFile:
    """Appends bytes to a file and rotates it by size the way logging's RotatingFileHandler
    does: when a write would take the file to `max_bytes` or more, `path.{n-1}` becomes
    `path.{n}` ... and `path` becomes `path.1` (the oldest of `backups` is dropped), then
    the write goes to a fresh `path`. Never rotates with 0 backups or 0 max_bytes, nor a
    file that is not regular (e.g. /dev/stdout), nor an empty one.

    The size is read from the open file before each write, not counted here: several
    worker processes append to the same file (O_APPEND keeps each write whole)."""

    def __init__(self, path: str, max_bytes: int, backups: int) -> None:
        self.path = path
        self._max_bytes = max_bytes
        self._backups = backups
        self._fd = self._open()

    def _open(self) -> int:
        return os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o666)

    def write(self, data: bytes) -> None:
        if self._full_after(len(data)):
            self._rotate()
        view = memoryview(data)
        while view:  # a regular file takes it all at once; a pipe or a full disk may not
            view = view[os.write(self._fd, view):]

    def _full_after(self, size: int) -> bool:
        if self._max_bytes <= 0 or self._backups <= 0:
            return False
        st = os.fstat(self._fd)
        return stat.S_ISREG(st.st_mode) and st.st_size > 0 and st.st_size + size >= self._max_bytes

    def _rotate(self) -> None:
        os.close(self._fd)
        for i in range(self._backups - 1, 0, -1):
            self._move(f"{self.path}.{i}", f"{self.path}.{i + 1}")
        self._move(self.path, f"{self.path}.1")
        self._fd = self._open()

    @staticmethod
    def _move(source: str, target: str) -> None:
        try:
            os.replace(source, target)
        except FileNotFoundError:
            pass

    def close(self) -> None:
        os.close(self._fd)


class JsonlDecisionLog:
    """Rotating JSONL file. `append` serializes the record onto a list; a timer writes what
    gathered every `flush_interval_s` in one write (to the page cache: microseconds), so a
    request pays for one orjson call, a list append and a share of one write."""

    keeps_records = True

    def __init__(self, path: str, max_bytes: int, backups: int, flush_interval_s: float = 0.2) -> None:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self._file = SizeRotatedFile(path, max_bytes, backups)
        self._interval = flush_interval_s
        self._pending: list[bytes] = []
        self._timer: asyncio.TimerHandle | None = None
        self.dropped = 0

    def append(self, record: dict[str, Any]) -> None:
        try:
            line = orjson.dumps(record, option=orjson.OPT_APPEND_NEWLINE)
        except orjson.JSONEncodeError as exc:  # e.g. a logged prompt nested deeper than orjson goes
            self.dropped += 1
            _unwritable(record, exc)
            return
        self._pending.append(line)
        if self._timer is None:
            self._timer = asyncio.get_running_loop().call_later(self._interval, self.flush)

    def flush(self) -> None:
        self._timer = None
        if not self._pending:
            return
        batch, self._pending = self._pending, []
        # One write per batch: the file rotates by size between batches.
        try:
            self._file.write(b"".join(batch))
        except OSError as exc:  # a full disk drops records, never requests
            self.dropped += len(batch)
            log.warning("decision log: dropped %d records, writing %s failed: %s", len(batch), self.path, exc)

    async def close(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self.flush()
        self._file.close()


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

    keeps_records = True

    def __init__(self, redis: Any, stream: str = "gateway:decisions", max_len: int = 200_000, batch: int = 256,
                 flush_interval_s: float = 0.2) -> None:
        self._redis = redis
        self._stream = stream
        self._max_len = max_len
        self._batch = batch
        self._interval = flush_interval_s
        self._pending: list[bytes] = []
        self._wake = asyncio.Event()
        self._closing = False
        self._append_all = redis.register_script(_XADD_ALL)
        self._task = asyncio.get_running_loop().create_task(self._run())
        self.dropped = 0

    def append(self, record: dict[str, Any]) -> None:
        if len(self._pending) >= 100 * self._batch:
            self.dropped += 1  # bounded memory while Redis is away
            return
        try:
            line = orjson.dumps(record)
        except orjson.JSONEncodeError as exc:
            self.dropped += 1
            _unwritable(record, exc)
            return
        self._pending.append(line)
        if len(self._pending) >= self._batch:
            self._wake.set()

    async def _run(self) -> None:
        while not self._closing:
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
        # The running flush finishes and drains what is pending, in order: flushing beside it
        # here would send later records while an earlier batch is still on its way.
        self._closing = True
        self._wake.set()
        await asyncio.wait([self._task])
        await self._flush()  # what a failed flush left, or what came after the task stopped


class NullDecisionLog:
    """decision_log.enabled: false."""

    keeps_records = False

    def append(self, record: dict[str, Any]) -> None:
        return None

    async def close(self) -> None:
        return None
