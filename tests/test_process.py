"""`gateway serve` as a real process: config errors, multi-worker, graceful SIGTERM, disconnects."""

from __future__ import annotations

import asyncio
import signal
import subprocess
import time

import aiohttp
import orjson

from tests.servers import CLIENT_KEY, Process, Running, free_port, upstream_env, wait_for_http

AUTH = {"Authorization": f"Bearer {CLIENT_KEY}"}


def chat(content: str, **extra: object) -> dict:
    return {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": content}], **extra}


def test_bad_config_refuses_to_start_and_says_why(tmp_path) -> None:
    config = tmp_path / "gateway.yaml"
    config.write_text("server:\n  port: not-a-port\n  workerz: 2\nauth:\n  keys:\n    - {tenant: a}\n")
    proc = Process(["serve", "--config", str(config)], {})
    proc.proc.wait(timeout=20)
    err = proc.proc.stderr.read()
    assert proc.proc.returncode == 2
    assert f"{config}: server.port: expected integer" in err
    assert "server: unknown setting(s) 'workerz'" in err
    assert "auth.keys[0]: 'sha256' is required" in err
    assert "Traceback" not in err


def test_unset_variable_in_config_is_named(tmp_path) -> None:
    config = tmp_path / "gateway.yaml"
    config.write_text("providers:\n  openai:\n    api_key: ${SURELY_UNSET_VAR_FOR_TEST}\n")
    proc = Process(["check", "--config", str(config)], {})
    proc.proc.wait(timeout=20)
    err = proc.proc.stderr.read()
    assert proc.proc.returncode == 2
    assert "providers.openai.api_key: environment variable SURELY_UNSET_VAR_FOR_TEST is not set" in err


def test_check_passes_on_shipped_files() -> None:
    proc = Process(["check"], {})
    proc.proc.wait(timeout=30)
    assert proc.proc.returncode == 0, proc.proc.stderr.read()


async def test_workers_share_a_port_and_sigterm_drains_in_flight_stream(sim: Running) -> None:
    port = free_port()
    proc = Process(["serve", "--port", str(port), "--workers", "2"], upstream_env(sim.url))
    try:
        await asyncio.to_thread(wait_for_http, f"http://127.0.0.1:{port}/health/live", 30)
        workers = await asyncio.to_thread(_children, proc.proc.pid)
        assert len(workers) == 2
        async with aiohttp.ClientSession() as session:
            for _ in range(40):
                async with session.get(f"http://127.0.0.1:{port}/health/live", headers={"Connection": "close"}) as r:
                    assert r.status == 200
                async with session.post(f"http://127.0.0.1:{port}/v1/chat/completions", json=chat("hi"), headers={**AUTH, "Connection": "close"}) as r:
                    assert r.status == 200
            # /metrics adds up every worker's counters (prometheus multiprocess mode).
            async with session.get(f"http://127.0.0.1:{port}/metrics") as r:
                metrics = await r.text()
            assert 'gateway_requests_total{degraded="none",model="gpt-4o-mini",outcome="ok",provider="openai",route=' in metrics
            total = sum(float(line.rsplit(" ", 1)[1]) for line in metrics.splitlines() if line.startswith("gateway_requests_total{"))
            assert total == 40
            # ... and their histograms (each worker's own prometheus-client files)
            durations = sum(float(line.rsplit(" ", 1)[1]) for line in metrics.splitlines()
                            if line.startswith("gateway_request_duration_seconds_count{"))
            assert durations == 40
            # A slow stream in flight when SIGTERM arrives still completes with [DONE].
            payload = chat("[[fault:stall_after=2,stall_ms=1500]] tell me a story", stream=True)
            async with session.post(f"http://127.0.0.1:{port}/v1/chat/completions", json=payload, headers=AUTH) as r:
                assert r.status == 200
                first = await r.content.readline()
                assert first.startswith(b"data: ")
                proc.proc.send_signal(signal.SIGTERM)
                rest = await r.content.read()
            assert rest.rstrip().endswith(b"data: [DONE]")
        code, err = await asyncio.to_thread(proc.terminate, 20)
        assert code == 0, err
    finally:
        proc.terminate()


def _children(pid: int) -> list[int]:
    out = subprocess.run(["ps", "-o", "pid=", "--ppid", str(pid)], capture_output=True, text=True).stdout
    return [int(x) for x in out.split()]


async def test_client_disconnect_mid_stream_closes_upstream(gw: Running, sim: Running, auth: dict) -> None:
    payload = chat("[[fault:stall_after=3,stall_ms=5000]] a long answer please", stream=True)
    async with aiohttp.ClientSession() as session:
        response = await session.post(gw.url + "/v1/chat/completions", json=payload, headers=auth)
        assert response.status == 200
        await response.content.readline()
        async with session.get(sim.url + "/_sim/stats") as r:
            assert (await r.json())["open_streams"] == 1
        response.close()  # the client goes away mid-stream
    deadline = time.monotonic() + 3
    stats = {}
    async with aiohttp.ClientSession() as session:
        while time.monotonic() < deadline:
            async with session.get(sim.url + "/_sim/stats") as r:
                stats = await r.json()
            if stats["open_streams"] == 0:
                break
            await asyncio.sleep(0.05)
    assert stats["open_streams"] == 0
    assert stats["disconnected_streams"] >= 1


async def test_deadline_from_latency_budget_hint(gw: Running, auth: dict) -> None:
    started = time.monotonic()
    async with aiohttp.ClientSession() as session:
        payload = chat("[[fault:delay_ms=5000]] hi")
        async with session.post(
            gw.url + "/v1/chat/completions", json=payload, headers={**auth, "x-gateway-latency-budget-ms": "400", "x-gateway-task": "code"}
        ) as r:
            assert r.status == 504
            error = orjson.loads(await r.read())["error"]
    assert error["code"] == "timeout"
    assert time.monotonic() - started < 2.0


def test_an_unwritable_decision_log_refuses_to_start_and_says_why(tmp_path) -> None:
    not_a_folder = tmp_path / "file"
    not_a_folder.write_text("")
    config = tmp_path / "gateway.yaml"
    config.write_text(f"decision_log: {{path: {not_a_folder / 'decisions.jsonl'}}}\n")
    for args, code in ((["serve", "--config", str(config), "--port", str(free_port())], 2),
                       (["check", "--config", str(config)], 1)):  # check finds it too, without starting
        proc = Process(args, {})
        proc.proc.wait(timeout=20)
        err = proc.proc.stderr.read()
        assert proc.proc.returncode == code, err
        assert f"decision_log.path {not_a_folder / 'decisions.jsonl'}" in err and "writable file" in err
        assert "Traceback" not in err


def test_a_proxy_url_it_cannot_use_refuses_to_start_and_says_why() -> None:
    for args, code in ((["serve", "--port", str(free_port())], 2), (["check"], 1)):
        proc = Process(args, {"HTTPS_PROXY": "socks5://user:pw@proxy:1080"})
        proc.proc.wait(timeout=20)
        err = proc.proc.stderr.read()
        assert proc.proc.returncode == code, err
        assert "HTTPS_PROXY: expected an http:// proxy URL" in err
        assert "pw@" not in err and "Traceback" not in err
