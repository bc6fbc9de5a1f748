"""The decision log: what a record holds (the JSONL file and the Redis stream are a public
interface), how the file sink batches, rotates by size and survives failures."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import os
import time
from pathlib import Path
from typing import Any

import orjson
import pytest

from gateway import explain
from gateway.api.exchange import Exchange, priced
from gateway.auth import Principal
from gateway.config import load_config
from gateway.decide import decide
from gateway.decisions import JsonlDecisionLog, RedisStreamDecisionLog, SizeRotatedFile
from gateway.forward import AttemptRecord
from gateway.routing import estimate_cost_micros
from gateway.runtime import RoutingSnapshot, Runtime
from gateway.usage import Usage

ENV = {"OPENAI_BASE_URL": "http://127.0.0.1:1/v1", "OPENAI_API_KEY": "sk", "ANTHROPIC_API_KEY": "sk",
       "GEMINI_API_KEY": "sk"}
SYSTEM = "You are a helpful assistant. Answer briefly and precisely."
TOOL = {"type": "function", "function": {"name": "lookup", "parameters": {"type": "object", "properties": {}}}}


@pytest.fixture(scope="module")
def snapshot() -> RoutingSnapshot:
    env = dict(os.environ, **ENV)
    return Runtime(load_config(None, env), env).current


def exchange(snapshot: RoutingSnapshot, body: dict[str, Any], **finished: Any) -> Exchange:
    decision = decide(body, {}, "default", snapshot)
    deployments = [snapshot.deployments[c.key] for c in decision.plan.candidates]
    ex = Exchange(request_id="req-1", principal=Principal("default", "key-1"), body=body, snapshot=snapshot,
                  decision=decision, deployments=deployments, content_fallback=None, deadline=0.0,
                  started=time.perf_counter() - 0.0123)
    for name, value in finished.items():
        setattr(ex, name, value(ex) if callable(value) else value)
    priced(ex)
    return ex


def answered_json(snapshot: RoutingSnapshot) -> Exchange:
    """The bench's request: answered by the primary on the first try."""
    body = {"model": "gpt-4o-mini", "max_tokens": 16,
            "messages": [{"role": "system", "content": SYSTEM}, {"role": "user", "content": "What is HTTP/2?"}]}
    return exchange(
        snapshot, body,
        attempts=lambda ex: [AttemptRecord(ex.deployments[0].model, ex.deployments[0].provider, "ok", 11.234567, 200)],
        answered_by=lambda ex: ex.deployments[0],
        usage=Usage(120, 16, 64),
    )


def failed_over_stream(snapshot: RoutingSnapshot) -> Exchange:
    """A streamed request with tools, answered by a fallback after a retried failure."""
    body = {"model": "auto", "stream": True, "tools": [TOOL],
            "messages": [{"role": "user", "content": "Write a Python function that merges two sorted lists."}]}
    return exchange(
        snapshot, body,
        attempts=lambda ex: [
            AttemptRecord(ex.deployments[0].model, ex.deployments[0].provider, "server_error", 5.005, 500),
            AttemptRecord(ex.deployments[0].model, ex.deployments[0].provider, "server_error", 7.125, 502, retry=1),
            AttemptRecord(ex.deployments[1].model, ex.deployments[1].provider, "ok", 120.0049, 200, continuation=True),
        ],
        answered_by=lambda ex: ex.deployments[1],
        degraded="fallback",
        usage=Usage(40, 200, 0, estimated=True),
    )


def unanswered(snapshot: RoutingSnapshot) -> Exchange:
    body = {"model": "auto", "messages": [{"role": "user", "content": "hello"}]}
    return exchange(
        snapshot, body,
        attempts=lambda ex: [AttemptRecord(d.model, d.provider, "timeout", 30000.0) for d in ex.deployments],
        outcome="upstream_timeout",
        degraded="static",
    )


def documented_record(ex: Exchange, include_prompt: bool) -> dict[str, Any]:
    """The record as README's decision log describes it, spelled out from the exchange."""
    c, p = ex.decision.classification, ex.decision.plan
    primary = p.candidates[0] if p.candidates else None
    record = {
        "request_id": ex.request_id,
        "time": 1_700_000_000.25,
        "tenant": ex.principal.tenant,
        "key_id": ex.principal.key_id,
        "requested_model": ex.body.get("model"),
        "classification": explain.classification_json(c, with_reasons=False),
        "route": p.route,
        "objective": p.objective,
        "candidates": [x.key for x in p.candidates],
        "chosen": ex.answered_by.key if ex.answered_by else None,
        "reasons": list(primary.reasons) if primary else [],
        "policy_version": ex.snapshot.policy_version,
        "estimated_cost_usd": (
            estimate_cost_micros(ex.snapshot.catalog.by_key[primary.key], c.input_tokens, c.output_tokens) / 1e6
            if primary else None
        ),
        "usage": ex.usage.as_openai() if ex.usage else None,
        "usage_estimated": ex.usage.estimated if ex.usage else None,
        "cost_usd": ex.cost_micros / 1e6 if ex.cost_micros is not None else None,
        "latency_ms": round((100.0 - ex.started) * 1000, 2),
        "attempts": [
            {"model": a.model, "provider": a.provider, "outcome": a.outcome, "status": a.status,
             "duration_ms": round(a.duration_ms, 2), "retry": a.retry, "continuation": a.continuation}
            for a in ex.attempts
        ],
        "degraded": ex.degraded,
        "outcome": ex.outcome,
        "stream": bool(ex.body.get("stream")),
    }
    if include_prompt:
        record["messages"] = ex.body["messages"]
    return record


@pytest.mark.parametrize("make", [answered_json, failed_over_stream, unanswered])
@pytest.mark.parametrize("include_prompt", [False, True])
def test_a_record_is_the_documented_json(snapshot, make, include_prompt, monkeypatch) -> None:
    monkeypatch.setattr(time, "time", lambda: 1_700_000_000.25)
    monkeypatch.setattr(time, "perf_counter", lambda: 100.0)
    ex = make(snapshot)
    line = orjson.dumps(explain.decision_record(ex, include_prompt))
    expected = documented_record(ex, include_prompt)
    assert line == orjson.dumps(expected)  # same keys, same order, same values
    assert orjson.loads(line) == expected


def test_the_record_of_a_plan_without_candidates(snapshot, monkeypatch) -> None:
    monkeypatch.setattr(time, "time", lambda: 1_700_000_000.25)
    monkeypatch.setattr(time, "perf_counter", lambda: 100.0)
    ex = unanswered(snapshot)
    ex.decision = dataclasses.replace(ex.decision, plan=dataclasses.replace(ex.decision.plan, candidates=()))
    record = orjson.loads(orjson.dumps(explain.decision_record(ex, False)))
    assert record == documented_record(ex, False)
    assert record["reasons"] == [] and record["candidates"] == [] and record["estimated_cost_usd"] is None


def test_the_plan_carries_the_snapshots_policy_version(snapshot) -> None:
    assert answered_json(snapshot).decision.plan.policy_version == snapshot.policy_version


# ------------------------------------------------------------------ the JSONL file


def lines(path: Path) -> list[dict[str, Any]]:
    return [orjson.loads(line) for line in path.read_bytes().splitlines()]


async def test_records_are_written_in_one_batch_per_interval(tmp_path: Path) -> None:
    path = tmp_path / "logs" / "d.jsonl"
    sink = JsonlDecisionLog(str(path), max_bytes=1 << 20, backups=2, flush_interval_s=0.05)
    records = [{"request_id": f"r{i}", "text": "héllo ✓", "n": i} for i in range(3)]
    for record in records:
        sink.append(record)
    assert path.read_bytes() == b""  # nothing written on the request's path
    await asyncio.sleep(0.15)
    assert path.read_bytes() == b"".join(orjson.dumps(r) + b"\n" for r in records)
    sink.append({"request_id": "last"})
    await sink.close()  # writes what is pending
    assert lines(path)[-1] == {"request_id": "last"}


async def test_the_file_rotates_before_a_batch_would_reach_max_bytes(tmp_path: Path) -> None:
    path = tmp_path / "d.jsonl"
    sink = JsonlDecisionLog(str(path), max_bytes=1024, backups=2)
    for batch in range(7):
        for _ in range(4):
            record = {"request_id": f"{batch}" + "x" * 81}
            assert len(orjson.dumps(record)) + 1 == 100  # bytes a line
            sink.append(record)
        sink.flush()
    await sink.close()
    # Batches of 400 bytes: two fit under 1024, the third would reach it and starts a file.
    sizes = {p.name: p.stat().st_size for p in tmp_path.iterdir()}
    assert sizes == {"d.jsonl": 400, "d.jsonl.1": 800, "d.jsonl.2": 800}  # the oldest file was dropped
    assert [r["request_id"][0] for r in lines(path.with_name("d.jsonl.2"))] == ["2"] * 4 + ["3"] * 4
    assert [r["request_id"][0] for r in lines(path.with_name("d.jsonl.1"))] == ["4"] * 4 + ["5"] * 4
    assert [r["request_id"][0] for r in lines(path)] == ["6"] * 4


def test_rotation_counts_bytes_and_starts_from_the_size_on_disk(tmp_path: Path) -> None:
    path = tmp_path / "d.jsonl"
    path.write_bytes(b"x" * 90)  # left by an earlier run (or another worker)
    log = SizeRotatedFile(str(path), max_bytes=100, backups=1)
    log.write("é".encode() * 5)  # 10 bytes: reaches max_bytes -> rotates first
    log.close()
    assert (tmp_path / "d.jsonl.1").read_bytes() == b"x" * 90
    assert path.read_bytes() == "é".encode() * 5


def test_a_batch_larger_than_max_bytes_goes_whole_into_a_fresh_file(tmp_path: Path) -> None:
    path = tmp_path / "d.jsonl"
    log = SizeRotatedFile(str(path), max_bytes=10, backups=3)
    log.write(b"a" * 50)  # an empty file is never rotated
    log.write(b"b" * 50)
    log.close()
    assert path.read_bytes() == b"b" * 50
    assert (tmp_path / "d.jsonl.1").read_bytes() == b"a" * 50
    assert not (tmp_path / "d.jsonl.2").exists()


@pytest.mark.parametrize(("max_bytes", "backups"), [(10, 0), (0, 3)])
def test_no_rotation_without_backups_or_without_max_bytes(tmp_path: Path, max_bytes: int, backups: int) -> None:
    path = tmp_path / "d.jsonl"
    log = SizeRotatedFile(str(path), max_bytes=max_bytes, backups=backups)
    for _ in range(5):
        log.write(b"z" * 8)
    log.close()
    assert [p.name for p in tmp_path.iterdir()] == ["d.jsonl"]
    assert path.read_bytes() == b"z" * 40


def test_a_file_that_is_not_regular_is_never_rotated(tmp_path: Path) -> None:
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    reader = os.open(fifo, os.O_RDONLY | os.O_NONBLOCK)
    try:
        log = SizeRotatedFile(str(fifo), max_bytes=4, backups=2)
        log.write(b"abcdef")
        log.write(b"ghij")
        log.close()
        assert os.read(reader, 100) == b"abcdefghij"
    finally:
        os.close(reader)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["pipe"]


async def test_a_failed_write_drops_the_batch_and_keeps_going(tmp_path: Path, monkeypatch, caplog) -> None:
    path = tmp_path / "d.jsonl"
    sink = JsonlDecisionLog(str(path), max_bytes=1 << 20, backups=1)

    def full_disk(fd: int, data: Any) -> int:
        raise OSError(28, "No space left on device")

    sink.append({"request_id": "lost"})
    with monkeypatch.context() as patched, caplog.at_level(logging.WARNING, "gateway.decisions"):
        patched.setattr(os, "write", full_disk)
        sink.flush()
    assert sink.dropped == 1 and "No space left" in caplog.text
    sink.append({"request_id": "kept"})
    await sink.close()
    assert lines(path) == [{"request_id": "kept"}]


def nested(depth: int) -> Any:
    value: Any = "deep"
    for _ in range(depth):
        value = [value]
    return value


async def test_an_unwritable_record_is_dropped_not_raised(tmp_path: Path, caplog) -> None:
    path = tmp_path / "d.jsonl"
    sink = JsonlDecisionLog(str(path), max_bytes=1 << 20, backups=1)
    with caplog.at_level(logging.WARNING, "gateway.decisions"):
        sink.append({"request_id": "too-deep", "messages": nested(300)})
    sink.append({"request_id": "fine"})
    await sink.close()
    assert sink.dropped == 1 and "too-deep" in caplog.text
    assert lines(path) == [{"request_id": "fine"}]


# ------------------------------------------------------------------ the Redis stream


class ScriptRecorder:
    def __init__(self) -> None:
        self.calls: list[tuple[list[str], list[Any]]] = []

    def register_script(self, text: str) -> Any:
        async def run(keys: list[str], args: list[Any]) -> int:
            self.calls.append((keys, args))
            return len(args) - 1

        return run


async def test_the_redis_stream_gets_one_json_document_per_record(caplog) -> None:
    redis = ScriptRecorder()
    sink = RedisStreamDecisionLog(redis, max_len=1000, flush_interval_s=0.05)
    with caplog.at_level(logging.WARNING, "gateway.decisions"):
        sink.append({"request_id": "a", "n": 1})
        sink.append({"request_id": "too-deep", "messages": nested(300)})
        sink.append({"request_id": "b", "n": 2})
    await sink.close()
    assert sink.dropped == 1 and "too-deep" in caplog.text
    assert redis.calls == [(["gateway:decisions"], [1000, b'{"request_id":"a","n":1}', b'{"request_id":"b","n":2}'])]


@pytest.mark.parametrize("enabled", [True, False])
async def test_a_record_is_built_only_when_the_log_keeps_it(sim, auth, monkeypatch, tmp_path: Path,  # type: ignore[no-untyped-def]
                                                            enabled: bool) -> None:
    import aiohttp

    from gateway.api import chat
    from tests.servers import start_gateway

    built = []
    monkeypatch.setattr(chat, "decision_record", lambda *args: built.append(args) or {"request_id": "r"})
    log = tmp_path / "decisions.jsonl"
    gw = await start_gateway(sim.url, f"decision_log: {{enabled: {str(enabled).lower()}, path: {log}}}\n")
    try:
        async with aiohttp.ClientSession() as session:
            request = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}
            async with session.post(gw.url + "/v1/chat/completions", json=request, headers=auth) as r:
                assert r.status == 200
    finally:
        await gw.stop()
    assert len(built) == (1 if enabled else 0)
    assert log.exists() == enabled
