"""`gateway route` and `gateway replay`: the routing policy run from the command line, with
nothing served and nothing forwarded (for a policy change under review, in CI, or by hand)."""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import orjson
from redis.exceptions import RedisError

from .config import GatewayConfig
from .decide import decide
from .errors import GatewayError
from .explain import route_json
from .replay import replay, summary
from .runtime import RoutingSnapshot, build_snapshot
from .validation import parse_json_body, validate_chat_request

Fail = Callable[[str, Sequence[str]], None]


def route_command(args: argparse.Namespace, config: GatewayConfig, fail: Fail) -> int:
    snapshot = load_snapshot(config, fail)
    if snapshot is None:
        return 2
    headers: dict[str, str] = {}
    for header in args.header:
        name, sep, value = header.partition(":")
        if not sep or not name.strip():
            fail("invalid --header", [f"expected 'NAME: VALUE', got {header!r}"])
            return 2
        headers[name.strip()] = value.strip()
    try:
        raw = sys.stdin.buffer.read() if args.body == "-" else Path(args.body).read_bytes()
    except OSError as error:
        fail("cannot read the body", [f"{args.body}: {error.strerror or error}"])
        return 2
    try:
        body = parse_json_body(raw)
        validate_chat_request(body)
        decision = decide(body, headers, args.tenant, snapshot)
    except GatewayError as error:
        fail(f"the request would be refused with HTTP {error.status}", [_error_line(error)])
        return 1
    answer = route_json(decision.classification, decision.plan, args.tenant, snapshot.catalog, snapshot.policy_version)
    sys.stdout.write(orjson.dumps(answer, option=orjson.OPT_INDENT_2).decode() + "\n")
    return 0


def replay_command(args: argparse.Namespace, config: GatewayConfig, fail: Fail) -> int:
    proposed = dataclasses.replace(
        config, catalog_path=args.catalog or config.catalog_path, policy_path=args.policy or config.policy_path
    )
    snapshot = load_snapshot(proposed, fail)
    if snapshot is None:
        return 2
    if args.changes < 0:
        fail("invalid --changes", [f"--changes must be at least 0, got {args.changes}"])
        return 2
    if args.redis:
        lines: Iterator[bytes] = _stream_lines(args.redis, args.stream)
    else:
        paths = args.logs or _log_files(config.decision_log.path, config.decision_log.backups)
        missing = [p for p in paths if p != "-" and not os.path.isfile(p)]
        if not paths or missing:
            fail("no decision log to replay", [f"not a file: {p}" for p in missing] or
                 [f"nothing at {config.decision_log.path} (give the log files, or --redis URL)"])
            return 2
        lines = _file_lines(paths)
    try:
        report = replay(lines, snapshot, keep_changes=args.changes)
    except (OSError, RedisError) as error:
        fail("cannot read the decision log", [f"{type(error).__name__}: {error}"])
        return 2
    if args.json:
        sys.stdout.write(orjson.dumps(report.as_json(), option=orjson.OPT_INDENT_2).decode() + "\n")
    else:
        print(summary(report))
    return 0


def load_snapshot(config: GatewayConfig, fail: Fail) -> RoutingSnapshot | None:
    """The config's catalog and policy, built; None (said through `fail`) when they are broken."""
    try:
        return build_snapshot(config, os.environ)
    except Exception as error:  # noqa: BLE001 - reported as one screen
        fail("the catalog or policy is invalid", str(error).splitlines())
        return None


def _log_files(path: str, backups: int) -> list[str]:
    """The log and its rotated backups that exist, oldest first (path.N ... path.1, path)."""
    candidates = [f"{path}.{n}" for n in range(backups, 0, -1)] + [path]
    return [p for p in candidates if os.path.isfile(p)]


def _file_lines(paths: Sequence[str]) -> Iterator[bytes]:
    for path in paths:
        if path == "-":
            yield from sys.stdin.buffer
            continue
        with open(path, "rb") as log:
            yield from log


def _stream_lines(url: str, stream: str, page: int = 1000) -> Iterator[bytes]:
    """Each record of the Redis stream (its `d` field), oldest first, a page at a time."""
    from redis import Redis

    client = Redis.from_url(url, socket_timeout=10, socket_connect_timeout=5)
    start = "-"
    try:
        while True:
            entries = client.xrange(stream, min=start, max="+", count=page)
            for _, fields in entries:
                yield fields.get(b"d", b"")
            if len(entries) < page:
                return
            start = "(" + entries[-1][0].decode()  # after the last one read
    finally:
        client.close()


def _error_line(error: GatewayError) -> str:
    param = f" ({error.param})" if error.param else ""
    return f"{error.code or 'error'}{param}: {error.message}"
