"""`gateway replay` and `gateway route`: a real gateway's decision log read back against the
same and a changed policy, checked against what a gateway running that policy answers."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest

from gateway.config import load_config
from gateway.offline import _stream_lines
from gateway.policy import default_policy_path
from gateway.replay import replay
from gateway.runtime import build_snapshot
from tests.servers import ROOT, Running, start_gateway, upstream_env

TENANT = "team-a"  # the tests' client key belongs to it (tests.servers)
USER = [{"role": "user", "content": "What are your opening hours on Sunday?"}]
BODIES: list[dict[str, Any]] = [
    {"model": "auto", "messages": USER},
    {"model": "auto", "messages": [{"role": "user", "content": "hi"}]},
    {"model": "auto", "messages": [{"role": "user", "content": "Translate 'good morning' into French."}]},
    {"model": "gpt-4o-mini", "messages": USER, "max_tokens": 20},
    {"model": "auto", "messages": [{"role": "user", "content": "Write a Python function that merges overlapping "
                                                                "intervals, with type hints and doctests."}]},
    {"model": "auto:quality", "messages": [{"role": "user", "content": "Summarize: the meeting moved to Tuesday."}]},
    {"model": "auto", "messages": USER, "stream": True},
]
QUICK_COST = "    objective: cost_speed\n    latency_budget_ms: 8000\n"


def proposed_policy(folder: Path) -> Path:
    """The shipped policy with the `quick` route optimizing for quality instead of cost."""
    text = default_policy_path().read_text()
    assert text.count(QUICK_COST) == 1
    path = folder / "proposed.yaml"
    path.write_text(text.replace(QUICK_COST, QUICK_COST.replace("cost_speed", "quality")))
    return path


def snapshot_for(policy: Path | None):  # type: ignore[no-untyped-def]
    config_text = f"policy: {policy}\n" if policy else ""
    path = policy.parent / "replay-config.yaml" if policy else None
    if path:
        path.write_text(config_text)
    return build_snapshot(load_config(str(path) if path else None, {}), {})


async def send_all(gw: Running, auth: dict[str, str]) -> dict[str, dict[str, Any]]:
    """Each body, answered: request id -> the body sent."""
    sent = {}
    async with aiohttp.ClientSession() as session:
        for body in BODIES * 2:
            async with session.post(gw.url + "/v1/chat/completions", json=body, headers=auth) as r:
                assert r.status == 200, await r.text()
                await r.read()
                sent[r.headers["x-request-id"]] = body
    return sent


async def logged_lines(gw: Running, count: int) -> list[bytes]:
    log = gw.folder / "decisions.jsonl"
    for _ in range(100):  # the log is written in batches, every 0.2 s
        lines = log.read_bytes().splitlines() if log.exists() else []
        if len(lines) >= count:
            return lines
        await asyncio.sleep(0.05)
    raise AssertionError(f"the decision log holds {len(lines)} of {count} decisions")


@pytest.fixture
async def logged(sim: Running, auth: dict[str, str]):  # type: ignore[no-untyped-def]
    gw = await start_gateway(sim.url)
    try:
        sent = await send_all(gw, auth)
        yield sent, await logged_lines(gw, len(sent)), gw.folder
    finally:
        await gw.stop()


async def test_the_same_policy_changes_nothing(logged) -> None:  # type: ignore[no-untyped-def]
    sent, lines, _ = logged
    report = replay(lines, snapshot_for(None))
    assert report.replayed == len(sent) == len(BODIES) * 2
    assert (report.route_changed, report.primary_changed, sum(report.refused.values())) == (0, 0, 0)
    assert report.changes == [] and report.usd_before == pytest.approx(report.usd_after)
    assert report.unreadable == report.without_requested_model == 0


async def test_a_changed_policy_is_replayed_as_a_gateway_running_it_would_route(
        logged, sim: Running, auth: dict[str, str]) -> None:  # type: ignore[no-untyped-def]
    sent, lines, folder = logged
    policy = proposed_policy(folder)
    report = replay(lines, snapshot_for(policy), keep_changes=1000)
    assert report.replayed == len(sent)
    assert report.primary_changed > 0 and report.route_changed == 0
    assert sum(report.transitions.values()) == report.primary_changed
    assert report.usd_after > report.usd_before  # quality costs more than cost_speed
    # every replayed decision, changed or not, is what /v1/route says under that policy
    changed = {r.request_id: r for r in report.changes}
    proposed = await start_gateway(sim.url, f"policy: {policy}\n")
    try:
        async with aiohttp.ClientSession() as session:
            for line in lines:
                record = orjson.loads(line)
                async with session.post(proposed.url + "/v1/route", json=sent[record["request_id"]], headers=auth) as r:
                    answer = await r.json()
                primary = answer["plan"]["candidates"][0]
                now = f"{primary['provider']}/{primary['model']}"
                if record["request_id"] in changed:
                    assert changed[record["request_id"]].primary_after == now
                    assert record["candidates"][0] != now
                else:
                    assert record["candidates"][0] == now and record["route"] == answer["plan"]["route"]
    finally:
        await proposed.stop()


def test_lines_that_cannot_be_replayed_are_counted_not_fatal() -> None:
    snapshot = snapshot_for(None)
    good = {"request_id": "r1", "tenant": "default", "requested_model": "auto", "route": "quick",
            "candidates": ["x/y"], "estimated_cost_usd": 0.0,
            "classification": {"complexity": {"tier": "simple", "score": 0.2}, "intent": "faq", "risk": "low",
                               "format": "text", "latency_class": "interactive", "tokens": {"input": 20, "output": 50},
                               "needs": [], "hints": {"objective": None, "latency_budget_ms": None}}}
    old = {k: v for k, v in good.items() if k != "requested_model"}
    broken = {**good, "classification": {**good["classification"], "tokens": {"input": "many"}}}
    lines = [orjson.dumps(good), b"", b"not json", b"[1, 2]", orjson.dumps(old), orjson.dumps(broken),
             orjson.dumps({**good, "tenant": 5}), orjson.dumps({**good, "candidates": {"a": 1}})]
    report = replay(lines, snapshot)
    assert (report.replayed, report.unreadable, report.without_requested_model) == (2, 4, 1)
    assert report.primary_changed == 2  # "x/y" was never a catalog model


def run_cli(*args: str, stdin: bytes = b"") -> subprocess.CompletedProcess[bytes]:
    env = {**os.environ, **upstream_env("http://127.0.0.1:1")}
    return subprocess.run([sys.executable, "-m", "gateway", *args], input=stdin, capture_output=True, env=env,
                          cwd=ROOT, timeout=60)


async def test_the_replay_command_reports_what_the_library_does(logged) -> None:  # type: ignore[no-untyped-def]
    _, lines, folder = logged
    policy = proposed_policy(folder)
    expected = replay(lines, snapshot_for(policy)).as_json()
    done = await asyncio.to_thread(run_cli, "replay", "--policy", str(policy), "--json", str(folder / "decisions.jsonl"))
    assert done.returncode == 0, done.stderr
    assert orjson.loads(done.stdout) == orjson.loads(orjson.dumps(expected))
    text = await asyncio.to_thread(run_cli, "replay", "--policy", str(policy), "-", stdin=b"\n".join(lines))
    assert text.returncode == 0 and b"primary changed: " + str(expected["primary_changed"]).encode() in text.stdout
    missing = await asyncio.to_thread(run_cli, "replay", str(folder / "nothing.jsonl"))
    assert missing.returncode == 2 and b"not a file" in missing.stderr


async def test_the_route_command_answers_as_the_dry_run_endpoint(gw: Running, auth: dict[str, str]) -> None:
    body = {"model": "auto", "messages": [{"role": "user", "content": "Write a haiku about otters."}]}
    headers = {"x-gateway-objective": "quality"}
    async with aiohttp.ClientSession() as session:
        async with session.post(gw.url + "/v1/route", json=body, headers={**auth, **headers}) as r:
            assert r.status == 200
            expected = await r.json()
    done = await asyncio.to_thread(run_cli, "route", "--tenant", TENANT, "-H", "x-gateway-objective: quality",
                                   stdin=orjson.dumps(body))
    assert done.returncode == 0, done.stderr
    assert orjson.loads(done.stdout) == expected
    refused = await asyncio.to_thread(run_cli, "route", stdin=b'{"model": "auto", "messages": []}')
    assert refused.returncode == 1 and b"empty_array (messages)" in refused.stderr


async def test_replay_reads_the_decision_stream_of_a_gateway_on_redis(
        sim: Running, auth: dict[str, str], redis_server) -> None:  # type: ignore[no-untyped-def]
    url = redis_server.url
    gw = await start_gateway(sim.url, **{"REDIS_URL": url})
    try:
        sent = await send_all(gw, auth)
    finally:
        await gw.stop()  # the decision log's last batch goes out on close
    done = await asyncio.to_thread(run_cli, "replay", "--redis", url, "--json")
    assert done.returncode == 0, done.stderr
    report = orjson.loads(done.stdout)
    assert report["replayed"] == len(sent) and report["primary_changed"] == 0
    # read in pages of 3 records: every record once, in order, across page boundaries
    paged = list(_stream_lines(url, "gateway:decisions", page=3))
    assert [orjson.loads(line)["request_id"] for line in paged] == list(sent)
