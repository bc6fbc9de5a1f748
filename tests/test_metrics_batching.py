"""Counters summed per worker and applied to prometheus-client in flushes; the breakers'
fast path for a success on a closed breaker."""

from __future__ import annotations

import asyncio

import aiohttp
import pytest

from gateway import telemetry as telemetry_module
from gateway.health import BreakerBoard, BreakerSettings
from gateway.providers.errors import ErrorKind
from gateway.telemetry import Metrics, Telemetry
from tests.servers import Running

REQUEST = ("quick", "gpt-4o-mini", "openai", "ok", "none")


def requests_total(m: Metrics) -> float | None:
    labels = dict(zip(("route", "model", "provider", "outcome", "degraded"), REQUEST))
    return m.registry.get_sample_value("gateway_requests_total", labels)


def usage_totals(m: Metrics) -> tuple[float | None, float | None, float | None]:
    get = m.registry.get_sample_value
    return (
        get("gateway_tokens_total", {"tenant": "bench", "model": "gpt-4o-mini", "direction": "input"}),
        get("gateway_tokens_total", {"tenant": "bench", "model": "gpt-4o-mini", "direction": "output"}),
        get("gateway_spend_usd_total", {"tenant": "bench", "model": "gpt-4o-mini"}),
    )


async def test_counts_wait_for_the_flush_then_land_as_sums() -> None:
    m = Metrics()
    for _ in range(3):
        m.count((m.requests, *REQUEST))
        m.count_usage("bench", "gpt-4o-mini", 120, 16, 7)
    assert requests_total(m) is None and usage_totals(m) == (None, None, None)
    m.flush()
    assert requests_total(m) == 3
    assert usage_totals(m) == (360, 48, 21 / 1_000_000)  # spend summed in micro-dollars, then USD
    m.flush()  # nothing new: nothing changes
    assert requests_total(m) == 3


async def test_the_timer_flushes_after_the_interval(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(telemetry_module, "FLUSH_INTERVAL_S", 0.02)
    m = Metrics(multiprocess=False)
    m.count((m.requests, *REQUEST))
    await asyncio.sleep(0)
    assert requests_total(m) is None  # one worker: waits for the timer (a scrape flushes itself)
    await asyncio.sleep(0.1)
    assert requests_total(m) == 1
    m.count((m.requests, *REQUEST))  # a new count after a flush starts a new timer
    await asyncio.sleep(0.1)
    assert requests_total(m) == 2


async def test_with_workers_counts_are_flushed_at_the_end_of_the_loop_turn() -> None:
    m = Metrics(multiprocess=True)
    m.count((m.requests, *REQUEST))
    m.count((m.requests, *REQUEST))
    assert requests_total(m) is None
    await asyncio.sleep(0)  # the flush queued behind the current step has run
    assert requests_total(m) == 2


def test_without_a_running_loop_counts_apply_at_once() -> None:
    m = Metrics()
    m.count((m.requests, *REQUEST))
    m.count_usage("bench", "gpt-4o-mini", 5, 6, 1)
    assert requests_total(m) == 1
    assert usage_totals(m) == (5, 6, 1 / 1_000_000)


async def test_shutdown_flushes_what_is_pending() -> None:
    telemetry = Telemetry("test", "none")
    telemetry.attempt_finished("openai", "gpt-4o-mini", "ok", 200, 0.012, 0, False)
    registry = telemetry.metrics.registry
    labels = {"provider": "openai", "model": "gpt-4o-mini", "outcome": "ok"}
    assert registry.get_sample_value("gateway_upstream_attempts_total", labels) is None
    # the attempt's latency is observed at once: no bulk API for histograms
    assert registry.get_sample_value(
        "gateway_upstream_attempt_duration_seconds_count", {"provider": "openai", "model": "gpt-4o-mini"}
    ) == 1
    telemetry.shutdown()
    assert registry.get_sample_value("gateway_upstream_attempts_total", labels) == 1


async def test_a_scrape_right_after_requests_counts_every_one(gw: Running, auth: dict) -> None:
    body = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hello"}]}
    prompt = completion = 0
    async with aiohttp.ClientSession(headers=auth) as session:
        for _ in range(3):
            async with session.post(gw.url + "/v1/chat/completions", json=body) as r:
                assert r.status == 200
                usage = (await r.json())["usage"]
                prompt += usage["prompt_tokens"]
                completion += usage["completion_tokens"]
        async with session.get(gw.url + "/metrics") as r:
            metrics = await r.text()
    samples = {line.rsplit(" ", 1)[0]: float(line.rsplit(" ", 1)[1]) for line in metrics.splitlines() if line[:1] != "#"}
    requests = sum(v for k, v in samples.items() if k.startswith("gateway_requests_total{"))
    attempts = sum(v for k, v in samples.items() if k.startswith("gateway_upstream_attempts_total{"))
    tokens_in = sum(v for k, v in samples.items() if k.startswith("gateway_tokens_total{") and 'direction="input"' in k)
    tokens_out = sum(v for k, v in samples.items() if k.startswith("gateway_tokens_total{") and 'direction="output"' in k)
    assert (requests, attempts, tokens_in, tokens_out) == (3, 3, prompt, completion)
    durations = sum(v for k, v in samples.items() if k.startswith("gateway_request_duration_seconds_count{"))
    attempt_durations = sum(v for k, v in samples.items() if k.startswith("gateway_upstream_attempt_duration_seconds_count{"))
    assert (durations, attempt_durations) == (3, 3)
    assert sum(v for k, v in samples.items() if k.startswith("gateway_spend_usd_total{")) > 0


# --------------------------------------------------------------- the breakers' fast path


def test_successes_out_of_the_window_do_not_count_though_it_is_cut_only_on_a_failure() -> None:
    now = [1000.0]
    board = BreakerBoard(BreakerSettings(consecutive_failures=3, min_requests=10, max_window_requests=50), lambda: now[0])
    key = "openai/gpt-4o-mini"
    for _ in range(500):
        board.begin(key)
        board.record(key, None)
    assert board.state(key) == "closed"
    now[0] += 31  # every success is now out of the window: too few requests for the error rate
    for _ in range(2):
        board.record(key, ErrorKind.TIMEOUT)
    assert board.state(key) == "closed"
    board.record(key, ErrorKind.TIMEOUT)
    assert board.state(key) == "open"  # three in a row, judged without the stale successes


def test_the_latest_outcomes_decide_after_a_long_run_of_successes() -> None:
    now = [1000.0]
    settings = BreakerSettings(consecutive_failures=1000, min_requests=10, error_rate=0.5, max_window_requests=50)
    board = BreakerBoard(settings, lambda: now[0])
    key = "openai/gpt-4o-mini"
    for _ in range(500):
        board.record(key, None)
    failures = 0
    while board.state(key) == "closed":
        board.record(key, ErrorKind.TIMEOUT)
        failures += 1
    assert failures == 25  # half of the latest 50: the successes before them were let go
