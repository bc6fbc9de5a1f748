"""`gateway serve | check | route | replay | simulate`: the command line."""

from __future__ import annotations

import argparse
import errno
import os
import sys
import tempfile
from typing import Sequence

from .config import ConfigError, GatewayConfig, load_config


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == "simulate":
        from .simulate import main as simulate_main

        return simulate_main(argv[1:])
    parser = argparse.ArgumentParser(prog="gateway", description="OpenAI-compatible LLM routing gateway.")
    commands = parser.add_subparsers(dest="command", required=True)
    serve = commands.add_parser("serve", help="run the gateway")
    _config_argument(serve)
    serve.add_argument("--host", help="bind address (default from config, else 127.0.0.1)")
    serve.add_argument("--port", type=int, help="port (default from config, else 8080)")
    serve.add_argument("--workers", type=int, help="worker processes sharing the port (default 1)")
    serve.add_argument("--log-level", default=os.environ.get("GATEWAY_LOG_LEVEL", "INFO"))
    check = commands.add_parser("check", help="validate the config, catalog and policy, then exit")
    _config_argument(check)
    route = commands.add_parser(
        "route", help="classify and plan one chat body, nothing forwarded: POST /v1/route from the command line"
    )
    _config_argument(route)
    route.add_argument("body", nargs="?", default="-", help="a chat-completions JSON body: a file, or - for stdin (default)")
    route.add_argument("--tenant", default="default", help="the tenant whose settings apply (default: default)")
    route.add_argument("-H", "--header", action="append", default=[], metavar="'NAME: VALUE'",
                       help="a request header, e.g. 'x-gateway-objective: quality' (repeatable)")
    replay = commands.add_parser(
        "replay", help="plan a decision log's requests again with the configured or a proposed catalog and policy"
    )
    _config_argument(replay)
    replay.add_argument("logs", nargs="*", metavar="LOG",
                        help="decision-log JSONL files, - for stdin (default: decision_log.path and its backups)")
    replay.add_argument("--catalog", help="the proposed catalog (default: the config's)")
    replay.add_argument("--policy", help="the proposed policy (default: the config's)")
    replay.add_argument("--redis", metavar="URL", help="read the decision stream in this Redis instead of files")
    replay.add_argument("--stream", default="gateway:decisions", help="the stream's key (default gateway:decisions)")
    replay.add_argument("--json", action="store_true", help="print the whole report as JSON")
    replay.add_argument("--changes", type=int, default=20, help="changed decisions listed in the JSON report (default 20)")
    commands.add_parser("simulate", help="run a fake OpenAI/Anthropic/Gemini upstream (see `gateway simulate --help`)")
    args = parser.parse_args(argv)
    if args.command == "serve":
        return _serve(args)
    if args.command in ("route", "replay"):
        from .offline import replay_command, route_command

        return (route_command if args.command == "route" else replay_command)(args, _load(args.config), _fail)
    return _check(args)


def _config_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--config", default=os.environ.get("GATEWAY_CONFIG"), help="YAML config file (default: $GATEWAY_CONFIG, else built-in defaults)"
    )


def _load(path: str | None) -> GatewayConfig:
    try:
        return load_config(path)
    except ConfigError as error:
        _fail("the gateway configuration is invalid", error.problems)
        raise SystemExit(2) from None


def _serve(args: argparse.Namespace) -> int:
    config = _load(args.config)
    workers = args.workers or config.server.workers
    if workers > 1 and not os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        # Before prometheus_client is imported: workers then share their numbers via files.
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = tempfile.mkdtemp(prefix="gateway-metrics-")
    from .app import create_app
    from .offline import load_snapshot
    from .server import configure_logging, run

    configure_logging(args.log_level)
    if load_snapshot(config, _fail) is None:  # fail before binding, not in every worker
        return 2
    problems = _environment_problems(config, create=True)
    if problems:
        _fail("the gateway cannot start here", problems)
        return 2
    host = args.host or config.server.host
    port = config.server.port if args.port is None else args.port
    if workers < 1:
        _fail("invalid --workers", [f"--workers must be at least 1, got {workers}"])
        return 2
    return run(lambda: create_app(config), host, port, workers, config.server.shutdown_timeout_s)


def _environment_problems(config: GatewayConfig, *, create: bool) -> list[str]:
    """What would stop a valid config from serving on this machine: found before binding
    (and by `gateway check`, which creates nothing), not as a traceback in every worker."""
    from .http1_proxy import Proxies

    problems = []
    try:
        Proxies.from_env(os.environ)
    except ValueError as error:
        problems.append(str(error))
    problem = _decision_log_problem(config, create)
    if problem:
        problems += [problem, "set decision_log.path to a writable file, or decision_log.enabled: false"]
    return problems


def _decision_log_problem(config: GatewayConfig, create: bool) -> str | None:
    """Why the JSONL decision log cannot be opened for appending (None when it can, or when
    it is off or goes to Redis). With `create`, by creating it; else from what exists."""
    settings = config.decision_log
    if not settings.enabled or config.redis_url:
        return None
    path = os.path.abspath(settings.path)
    try:
        if create:
            os.makedirs(os.path.dirname(path), exist_ok=True)
            with open(path, "ab"):
                pass
        elif os.path.exists(path):
            if not os.path.isfile(path) or not os.access(path, os.W_OK):
                raise PermissionError(errno.EACCES, "not a writable file")
        else:
            folder = os.path.dirname(path)
            while not os.path.exists(folder):
                folder = os.path.dirname(folder)
            if not os.path.isdir(folder):
                raise NotADirectoryError(errno.ENOTDIR, "a file stands where a folder should be")
            if not os.access(folder, os.W_OK | os.X_OK):
                raise PermissionError(errno.EACCES, "cannot create it")
    except OSError as error:
        return f"decision_log.path {settings.path} ({path}): {error.strerror or type(error).__name__}"
    return None


def _check(args: argparse.Namespace) -> int:
    from .catalog import default_catalog_path
    from .policy import check, default_policy_path

    config = _load(args.config)
    catalog_path = config.catalog_path or str(default_catalog_path())
    policy_path = config.policy_path or str(default_policy_path())
    problems = check(catalog_path, policy_path) + _environment_problems(config, create=False)
    if problems:
        _fail("check failed", problems)
        return 1
    print(f"ok: config {config.source}, catalog {catalog_path}, policy {policy_path}")
    return 0


def _fail(title: str, problems: Sequence[str]) -> None:
    print(f"gateway: {title}:", file=sys.stderr)
    for problem in problems[:40]:
        print(f"  - {problem}", file=sys.stderr)
    if len(problems) > 40:
        print(f"  ... and {len(problems) - 40} more", file=sys.stderr)


if __name__ == "__main__":
    raise SystemExit(main())
