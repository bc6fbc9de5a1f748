"""`gateway simulate`: run the fake upstreams from the command line."""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys

import uvloop
from aiohttp import web

from .config import SimulatorConfig
from .server import create_app


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="gateway simulate",
        description="Local fake OpenAI, Anthropic and Gemini upstreams with fault injection.",
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8081)
    parser.add_argument("--token-rate", type=float, default=0.0,
                        help="streamed tokens per second (0: no pacing)")
    parser.add_argument("--latency-ms", type=float, default=0.0, help="delay before the first byte")
    parser.add_argument("--fail-rate", type=float, default=0.0,
                        help="share of requests (0..1) that get a random fault from --fail-with")
    parser.add_argument("--fail-with", default="",
                        help="fault specs random faults pick from, comma-separated "
                             "(rate_limited,overloaded,reset); when a spec has several keys, "
                             "separate specs with ';' instead (status=429,retry_after=2;reset)")
    parser.add_argument("--seed", type=int, default=None, help="seed of the random-fault draw")
    parser.add_argument("--require-key", default=None, help="the API key every wire API must be sent")
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        config = SimulatorConfig(
            token_rate=args.token_rate,
            latency_ms=args.latency_ms,
            fail_rate=args.fail_rate,
            fail_with=_split_specs(args.fail_with),
            seed=args.seed,
            require_key=args.require_key,
        )
    except ValueError as exc:
        parser.error(str(exc))
    try:
        return uvloop.run(_serve(config, args.host, args.port))
    except KeyboardInterrupt:  # a second Ctrl-C while shutting down
        return 130


def _split_specs(value: str) -> list[str]:
    separator = ";" if ";" in value else ","
    return [spec.strip() for spec in value.split(separator) if spec.strip()]


async def _serve(config: SimulatorConfig, host: str, port: int) -> int:
    runner = web.AppRunner(create_app(config), access_log=None)
    await runner.setup()
    try:
        site = web.TCPSite(runner, host, port)
        try:
            await site.start()
        except OSError as exc:
            print(f"gateway simulate: cannot listen on {host}:{port}: {exc.strerror}", file=sys.stderr)
            return 1
        bound_host, bound_port = runner.addresses[0][:2]  # the real port when --port 0
        print(f"gateway simulate: listening on http://{bound_host}:{bound_port}", file=sys.stderr, flush=True)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(signum, stop.set)
        await stop.wait()
        print("gateway simulate: shutting down", file=sys.stderr, flush=True)
        return 0
    finally:
        await runner.cleanup()
