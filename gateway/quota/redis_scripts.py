"""Lua scripts by EVALSHA, and the micro-batching that lets concurrent calls share a round trip.

Scripts are `lua/lib.lua` + `lua/<name>.lua`; their SHA-1 is computed locally, so the first
call goes straight to EVALSHA and a NOSCRIPT reply (a fresh or restarted Redis) loads the
script once and repeats the call.

Calls made during one event-loop iteration are sent together in one non-transactional
pipeline. Each script still runs atomically on its own; the pipeline only saves round trips
and client CPU when many requests arrive at once.

The pipelines go over connections of the caller's own (`ScriptConnections`), made by the
client's pool but not leased from it per call: the pool's lease costs more than the call
(a lock, a readability probe that is a system call, observability hooks, an event on
release).
"""

from __future__ import annotations

import asyncio
import hashlib
from collections import Counter
from importlib import resources
from typing import Any

from redis.asyncio import Redis
from redis.asyncio.connection import AbstractConnection
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import NoScriptError, ResponseError

SCRIPT_NAMES = (
    "admit",
    "settle",
    "release",
    "extend",
    "status",
    "config",
    "load_static",
    "reset_scope",
    "snapshot",
    "reconcile",
    "key_create",
    "key_revoke",
)


# Scripts that concurrent requests call most: a batch's calls of one of these go out as one
# `<name>_many` call that runs the same body once per payload, in order (each still all or
# nothing), so the batch costs one command to encode and one reply to parse.
BATCHED = ("admit",)
_FAILED = b"!ERR "  # a `_many` reply item whose run raised: the error text follows


def load_sources() -> dict[str, str]:
    folder = resources.files(__package__) / "lua"
    lib = (folder / "lib.lua").read_text()
    sources = {name: lib + "\n" + (folder / f"{name}.lua").read_text() for name in SCRIPT_NAMES}
    for name in BATCHED:
        body = (folder / f"{name}.lua").read_text()
        sources[f"{name}_many"] = (
            f"{lib}\nlocal function run_one(payload)\n  local ARGV = {{ PREFIX, payload }}\n{body}\nend\n"
            "local out = {}\n"
            "for i = 2, #ARGV do\n"
            "  local ok, reply = pcall(run_one, ARGV[i])\n"
            f"  out[i - 1] = ok and reply or ('{_FAILED.decode()}' .. tostring(reply))\n"
            "end\n"
            "return out\n"
        )
    return sources


_SOURCES = load_sources()
_SHAS = {name: hashlib.sha1(source.encode()).hexdigest() for name, source in _SOURCES.items()}

_Pending = tuple[str, bytes, "asyncio.Future[Any]"]
_Call = tuple[str, list[bytes], list[int]]  # script, payloads, their places in the batch


def _calls(batch: list[_Pending]) -> list[_Call]:
    """The script calls that carry a batch: one per pending call, except that two or more
    calls of a BATCHED script become one `_many` call."""
    calls: list[_Call] = []
    grouped: dict[str, _Call] = {}
    counts = Counter(name for name, _, _ in batch)
    for position, (name, payload, _) in enumerate(batch):
        if name in BATCHED and counts[name] > 1:
            call = grouped.get(name)
            if call is None:
                call = grouped[name] = (f"{name}_many", [], [])
                calls.append(call)
            call[1].append(payload)
            call[2].append(position)
        else:
            calls.append((name, [payload], [position]))
    return calls


def _resp(commands: list[tuple[Any, ...]]) -> bytes:
    """The commands in the Redis protocol (RESP arrays of bulk strings), as redis-py packs
    them (tests/test_script_connections.py compares the bytes), in one buffer: redis-py's
    packer costs a few microseconds a command, in Python, for these six plain arguments."""
    out = bytearray()
    for command in commands:
        out += b"*%d\r\n" % len(command)
        for arg in command:
            data = arg if type(arg) is bytes else str(arg).encode()
            out += b"$%d\r\n%b\r\n" % (len(data), data)
    return bytes(out)


class ScriptConnections:
    """Connections kept by the caller: one per pipeline in flight, back to the idle list after.

    A connection whose exchange did not finish (an error, a timeout, a cancellation) is
    dropped, never reused: a late reply on it would be read as the next call's. After a Redis
    restart every idle connection is stale, so a connection error is tried once more on a
    new connection (the scripts are idempotent per reservation id, as with redis-py's retry).
    """

    def __init__(self, client: Redis) -> None:
        self._pool = client.connection_pool  # makes connections with the client's settings
        self._idle: list[AbstractConnection] = []

    async def exchange(self, commands: list[tuple[Any, ...]]) -> list[Any]:
        """Send `commands` in one write; their replies in order, error replies as exceptions."""
        connection = self._idle.pop() if self._idle else self._pool.make_connection()
        try:
            try:
                replies = await self._exchange(connection, commands)
            except RedisConnectionError:  # stale after a restart: once more, on a new connection
                await connection.disconnect(nowait=True)
                connection = self._pool.make_connection()
                replies = await self._exchange(connection, commands)
        except BaseException:
            await connection.disconnect(nowait=True)
            raise
        self._idle.append(connection)
        return replies

    @staticmethod
    async def _exchange(connection: AbstractConnection, commands: list[tuple[Any, ...]]) -> list[Any]:
        if not connection.is_connected:  # (connect() checks too, behind a retry wrapper per call)
            await connection.connect()  # HELLO, AUTH, SELECT as the client's settings say
        await connection.send_packed_command(_resp(commands), check_health=False)
        replies: list[Any] = []
        for _ in commands:
            try:
                replies.append(await connection.read_response())
            except ResponseError as error:  # the connection stays in step: the reply was read
                replies.append(error)
        return replies

    async def close(self) -> None:
        idle, self._idle = self._idle, []
        for connection in idle:
            await connection.disconnect()


# A burst larger than this goes out as several pipelines, so no single reply waits behind
# hundreds of scripts (each pipeline has its own deadline).
MAX_BATCH = 128


class ScriptCaller:
    def __init__(self, client: Redis, anchor_key: str, prefix: str, timeout_s: float) -> None:
        self._client = client
        self._anchor = anchor_key  # KEYS[1]: every key a script touches shares its hash tag
        self._prefix = prefix
        self._timeout_s = timeout_s
        self._pending: list[_Pending] = []
        self._scheduled = False
        self._in_flight: set[asyncio.Task[None]] = set()
        self._connections = ScriptConnections(client)
        self.round_trips = 0  # pipelines (or single calls) sent: lets a benchmark see the batching

    async def call(self, name: str, payload: bytes) -> Any:
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Any] = loop.create_future()
        self._pending.append((name, payload, future))
        if not self._scheduled:
            self._scheduled = True
            loop.call_soon(self._flush)
        return await future

    def _flush(self) -> None:
        pending, self._pending, self._scheduled = self._pending, [], False
        for start in range(0, len(pending), MAX_BATCH):
            task = asyncio.ensure_future(self._send(pending[start : start + MAX_BATCH]))
            self._in_flight.add(task)
            task.add_done_callback(self._in_flight.discard)

    async def _send(self, batch: list[_Pending]) -> None:
        try:
            async with asyncio.timeout(self._timeout_s):  # not wait_for: that costs a task per batch
                results = await self._execute(batch)
        except BaseException as exc:  # noqa: BLE001 - every waiter must hear about it
            error = exc if isinstance(exc, Exception) else ConnectionError("quota call cancelled")
            if isinstance(exc, asyncio.TimeoutError):
                error = TimeoutError(f"Redis did not answer within {self._timeout_s}s")
            for _, _, future in batch:
                if not future.done():
                    future.set_exception(error)
            return
        for (_, _, future), result in zip(batch, results, strict=True):
            if future.done():
                continue
            if isinstance(result, Exception):
                future.set_exception(result)
            else:
                future.set_result(result)

    async def _execute(self, batch: list[_Pending]) -> list[Any]:
        self.round_trips += 1
        calls = _calls(batch)
        replies = await self._pipeline(calls)
        missing = {calls[i][0] for i, r in enumerate(replies) if isinstance(r, NoScriptError)}
        if missing:  # a fresh or restarted Redis: load the scripts once, and run those calls again
            for name in missing:
                await self._client.script_load(_SOURCES[name])
            retry = [i for i, r in enumerate(replies) if isinstance(r, NoScriptError)]
            for i, reply in zip(retry, await self._pipeline([calls[i] for i in retry]), strict=True):
                replies[i] = reply
        results: list[Any] = [None] * len(batch)
        for (name, _, positions), reply in zip(calls, replies, strict=True):
            if not name.endswith("_many"):
                results[positions[0]] = reply
            elif isinstance(reply, Exception):
                for position in positions:
                    results[position] = reply
            else:
                for position, item in zip(positions, reply, strict=True):
                    failed = isinstance(item, bytes) and item.startswith(_FAILED)
                    results[position] = ResponseError(item[len(_FAILED):].decode()) if failed else item
        return results

    async def _pipeline(self, calls: list[_Call]) -> list[Any]:
        return await self._connections.exchange(
            [("EVALSHA", _SHAS[name], 1, self._anchor, self._prefix, *args) for name, args, _ in calls]
        )

    async def close(self) -> None:
        for task in list(self._in_flight):
            task.cancel()
        await self._connections.close()
