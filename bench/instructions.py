"""Instructions per request, counted by callgrind: the same numbers on a busy machine as on a quiet one.

    python bench/instructions.py [--requests 400] [--targets passthrough,floor,gateway] [--redis [URL]] [--stream]

Each target runs under `valgrind --tool=callgrind` with instrumentation off while it starts
and warms up; then it is switched on (`callgrind_control -i on`), exactly --requests
requests are sent over 8 keep-alive connections and every answer is read, and it is
switched off again. Instructions counted / requests = the target's cost per request.

What it counts: the user-space instructions of the process under test, its C extensions
and the interpreter included; not the kernel's work in system calls (the same few sends and
receives per request in every target), nor the upstream's or the client's. It does not
measure time: cache misses and system calls are not in it. Its use is to compare targets
and versions of the code without noise: two runs of the same code agree within ~0.3%, where
timed rows on a shared machine drift by 5-10%. `bench/run.py` stays the measure of speed;
the ratio of instructions (`x bare`) tracks its `x bare cpu` column.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Sequence

sys.path.insert(0, str(Path(__file__).resolve().parent))
from run import (  # noqa: E402
    BARE,
    CLIENT_KEY,
    DEFAULT_REDIS,
    FLOOR,
    HOST,
    ROOT,
    Children,
    TargetFailed,
    free_port,
    request_body,
    wait_ready,
)

CONNECTIONS = 8
_TOTALS = re.compile(rb"^totals:\s*(\d+)", re.MULTILINE)


async def send_exactly(port: int, count: int, body: bytes, headers: dict[str, str]) -> None:
    """`count` requests over CONNECTIONS keep-alive connections, each answer read to its end."""
    head = "".join(f"{name}: {value}\r\n" for name, value in headers.items())
    request = (
        f"POST /v1/chat/completions HTTP/1.1\r\nHost: {HOST}:{port}\r\nContent-Type: application/json\r\n"
        f"{head}Content-Length: {len(body)}\r\n\r\n"
    ).encode() + body

    async def one_connection(n: int) -> None:
        reader, writer = await asyncio.open_connection(HOST, port)
        try:
            for _ in range(n):
                writer.write(request)
                status_and_headers = await reader.readuntil(b"\r\n\r\n")
                status = int(status_and_headers.split(b" ", 2)[1])
                if status != 200:
                    raise TargetFailed(f"HTTP {status} during the count: {status_and_headers[:200]!r}")
                await _read_body(reader, status_and_headers.lower())
        finally:
            writer.close()

    share, rest = divmod(count, CONNECTIONS)
    await asyncio.gather(*(one_connection(share + (1 if i < rest else 0)) for i in range(CONNECTIONS)))


async def _read_body(reader: asyncio.StreamReader, head: bytes) -> None:
    length = re.search(rb"\r\ncontent-length:\s*(\d+)", head)
    if length:
        await reader.readexactly(int(length.group(1)))
        return
    while True:  # chunked (the SSE answers)
        size = int((await reader.readuntil(b"\r\n")).split(b";")[0], 16)
        await reader.readexactly(size + 2)
        if size == 0:
            return


def callgrind_control(*args: str) -> None:
    subprocess.run(["callgrind_control", *args], check=True, capture_output=True)


def counted_instructions(out_file: Path) -> int:
    """The total of a callgrind dump (one file per dump; the largest part is the counted window)."""
    parts = [p for p in out_file.parent.glob(out_file.name + "*") if p.stat().st_size]
    best = 0
    for part in parts:
        found = _TOTALS.search(part.read_bytes())
        if found:
            best = max(best, int(found.group(1)))
    return best


async def count_target(name: str, argv: list[str], env: dict[str, str], port: int, args: argparse.Namespace,
                       children: Children, work: Path, headers: dict[str, str]) -> int:
    out_file = work / f"{name}.callgrind"
    valgrind = ["valgrind", "--tool=callgrind", "--instr-atstart=no", f"--callgrind-out-file={out_file}"]
    child = children.spawn(name, valgrind + argv, env, None)
    try:
        await wait_ready(child, port, headers, args.startup_timeout)
        body = request_body(args.stream)
        await send_exactly(port, args.warmup, body, headers)
        callgrind_control("-i", "on", str(child.process.pid))
        await send_exactly(port, args.requests, body, headers)
        callgrind_control("-i", "off", str(child.process.pid))
        callgrind_control("-d", str(child.process.pid))
        for _ in range(100):  # the dump is written by the target itself, on its next poll
            if counted_instructions(out_file):
                break
            await asyncio.sleep(0.1)
    finally:
        children.stop(child, grace_s=30.0)
    total = counted_instructions(out_file)
    if not total:
        raise TargetFailed(f"{name}: callgrind wrote no count\n{child.log_tail()}")
    return total // args.requests


async def run(args: argparse.Namespace, children: Children, work: Path) -> dict[str, int]:
    python = args.python
    sim_port = free_port()
    upstream = children.spawn("upstream", [python, "-m", "gateway", "simulate", "--host", HOST, "--port", str(sim_port),
                                           "--token-rate", "0", "--latency-ms", "0"], dict(os.environ), None)
    await wait_ready(upstream, sim_port, {}, args.startup_timeout)
    base = f"http://{HOST}:{sim_port}"
    gateway_env = dict(os.environ, OPENAI_BASE_URL=f"{base}/v1", OPENAI_API_KEY="sk-bench",
                       GATEWAY_API_KEYS=f"{CLIENT_KEY}=bench")
    gateway_env.pop("REDIS_URL", None)
    authed = {"Authorization": f"Bearer {CLIENT_KEY}"}
    results: dict[str, int] = {}
    for target in args.targets:
        port = free_port()
        if target in (BARE, FLOOR):
            script = ROOT / "bench" / ("passthrough.py" if target == BARE else "floor.py")
            argv, env, headers = [python, str(script), "--port", str(port), "--upstream", base], dict(os.environ), {}
        else:
            argv = [python, "-m", "gateway", "serve", "--host", HOST, "--port", str(port), "--workers", "1"]
            env, headers = dict(gateway_env), authed
            if target == "gateway+redis":
                env["REDIS_URL"] = args.redis
        try:
            results[target] = await count_target(target.replace("+", "-"), argv, env, port, args, children, work, headers)
        except TargetFailed as failure:
            print(f"instructions: {target} FAILED: {failure}", file=sys.stderr)
        else:
            print(f"instructions: {target}: {results[target]:,} per request", file=sys.stderr)
    return results


def format_table(results: dict[str, int], args: argparse.Namespace) -> str:
    bare = results.get(BARE)
    lines = [f"instructions per request ({'SSE' if args.stream else 'JSON'}, {args.requests} requests counted, "
             f"{CONNECTIONS} connections)", f"{'target':<14} {'Ir/request':>12} {'x bare':>7}"]
    for target, count in results.items():
        ratio = f"{bare / count:7.2f}" if bare else "      -"
        lines.append(f"{target:<14} {count:>12,} {ratio}")
    return "\n".join(lines)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--requests", type=int, default=400, help="requests counted per target (default 400)")
    parser.add_argument("--warmup", type=int, default=200, help="requests sent before counting (default 200)")
    parser.add_argument("--targets", default=f"{BARE},{FLOOR},gateway",
                        help=f"comma-separated: {BARE}, {FLOOR}, gateway, gateway+redis")
    parser.add_argument("--redis", nargs="?", const=DEFAULT_REDIS, default=None,
                        help=f"add the gateway+redis target (default URL {DEFAULT_REDIS})")
    parser.add_argument("--stream", action="store_true", help="count SSE requests instead of JSON ones")
    parser.add_argument("--startup-timeout", type=float, default=240.0, help="seconds (valgrind starts slowly)")
    parser.add_argument("--python", default=sys.executable)
    parser.add_argument("--keep", type=Path, metavar="DIR",
                        help="keep each target's callgrind files in DIR (for callgrind_annotate)")
    args = parser.parse_args(argv)
    args.targets = [t.strip() for t in args.targets.split(",") if t.strip()]
    if args.redis and "gateway+redis" not in args.targets:
        args.targets.append("gateway+redis")
    elif "gateway+redis" in args.targets and not args.redis:
        args.redis = DEFAULT_REDIS
    unknown = set(args.targets) - {BARE, FLOOR, "gateway", "gateway+redis"}
    if unknown:
        parser.error(f"unknown target(s): {', '.join(sorted(unknown))}")
    if args.requests < CONNECTIONS:
        parser.error(f"--requests must be at least {CONNECTIONS}")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if subprocess.run(["which", "valgrind"], capture_output=True).returncode != 0:
        print("instructions: valgrind is not installed (apt-get install valgrind)", file=sys.stderr)
        return 2
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="gateway-instructions-") as tmp:
        work = Path(tmp)
        children = Children(work)
        try:
            results = asyncio.run(run(args, children, work))
        except TargetFailed as failure:
            print(f"instructions: the upstream failed: {failure}", file=sys.stderr)
            return 2
        finally:
            children.stop_all()
            if args.keep:
                args.keep.mkdir(parents=True, exist_ok=True)
                for part in work.glob("*.callgrind*"):
                    shutil.copy(part, args.keep / part.name)
    print(format_table(results, args))
    print(f"({time.monotonic() - started:.0f} s)")
    return 0 if len(results) == len(args.targets) else 1


if __name__ == "__main__":
    raise SystemExit(main())
