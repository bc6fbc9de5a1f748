"""Real servers on loopback for the tests: the simulator and the gateway, in-process or as processes."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping

import aiohttp
from aiohttp import web

from gateway.app import create_app
from gateway.config import load_config
from gateway.simulate import SimulatorConfig
from gateway.simulate import create_app as create_simulator

ROOT = Path(__file__).resolve().parent.parent
CLIENT_KEY = "sk-test-client-key"
UPSTREAM_KEY = "sk-upstream-secret-never-shown"


@dataclass
class Running:
    url: str
    port: int
    runner: web.AppRunner
    folder: Path | None = None  # scratch space of a gateway under test (decision log, config)

    @property
    def app(self) -> web.Application:
        return self.runner.app

    async def stop(self) -> None:
        await self.runner.cleanup()


async def start_app(app: web.Application, port: int = 0) -> Running:
    runner = web.AppRunner(app, access_log=None, handler_cancellation=True, shutdown_timeout=2)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", port)
    await site.start()
    bound = runner.addresses[0][1]
    return Running(f"http://127.0.0.1:{bound}", bound, runner)


async def start_simulator(**options: object) -> Running:
    return await start_app(create_simulator(SimulatorConfig(**options)))


def upstream_env(sim_url: str, **extra: str) -> dict[str, str]:
    return {
        "OPENAI_BASE_URL": f"{sim_url}/v1",
        "OPENAI_API_KEY": UPSTREAM_KEY,
        "ANTHROPIC_BASE_URL": sim_url,
        "ANTHROPIC_API_KEY": UPSTREAM_KEY,
        "GEMINI_BASE_URL": sim_url,
        "GEMINI_API_KEY": UPSTREAM_KEY,
        "LOCAL_LLM_BASE_URL": f"{sim_url}/v1",
        "GATEWAY_API_KEYS": f"{CLIENT_KEY}=team-a",
        **extra,
    }


async def start_gateway(sim_url: str, config_text: str = "", **extra_env: str) -> Running:
    """The gateway in this process's loop; its decision log goes to a fresh temp dir."""
    env = upstream_env(sim_url, **extra_env)
    folder = Path(tempfile.mkdtemp(prefix="gw-test-"))
    path = folder / "gateway.yaml"
    path.write_text(f"decision_log: {{path: {folder / 'decisions.jsonl'}}}\n" + config_text)
    config = load_config(str(path), env)
    running = await start_app(create_app(config, env))
    running.folder = folder
    return running


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for_http(url: str, timeout: float = 15.0) -> None:
    import urllib.request

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=1) as response:
                if response.status < 500:
                    return
        except OSError:
            time.sleep(0.05)
    raise TimeoutError(f"{url} did not come up in {timeout}s")


class Process:
    """`gateway ...` as a real OS process, stopped with SIGTERM."""

    def __init__(self, args: list[str], env: Mapping[str, str]) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "gateway", *args],
            env={**os.environ, **env},
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )

    def terminate(self, timeout: float = 15.0) -> tuple[int, str]:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            _, err = self.proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            _, err = self.proc.communicate()
        return self.proc.returncode, err


async def read_sse(response: aiohttp.ClientResponse) -> list[bytes]:
    """Every `data:` payload of an SSE response, in order."""
    events: list[bytes] = []
    buffer = b""
    async for chunk in response.content.iter_any():
        buffer += chunk
        while b"\n\n" in buffer:
            raw, buffer = buffer.split(b"\n\n", 1)
            for line in raw.split(b"\n"):
                if line.startswith(b"data: "):
                    events.append(line[6:])
    return events
