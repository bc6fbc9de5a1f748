"""Per-request cost of routing.plan() and of the memory quota store's admit + settle.

    python bench/hotpath_bench.py [--iterations N] [--save FILE] [--compare FILE]

Builds the shipped catalog and policy, classifies a few typical requests once, then times
each stage per call with time.perf_counter_ns and prints p50 / p99 / mean µs:
  plan       plan() exactly as gateway/decide.py calls it, per (request, tenant, model)
  request    the AdmissionRequest for that plan, built as gateway/api/budget.py builds it
             (request_scopes + spend.admission_and_worst: one CandidateCost per candidate)
  admit      MemoryQuotaStore.admit_now on the AdmissionRequest the gateway builds for that
             plan (the shipped static caps, rate limits and share quota loaded), then
  settle     settle_now of the reservation it made, with a plausible actual cost;
  quota      admit + settle of the same request;
  budget     gateway/api/budget.py's admit, all of it (scopes, admission request, the store's
             admit, the exchange's bookkeeping), on its own store; its settle is not timed.
The store runs on a fake clock that advances 0.2 s per request, so the `internal` tenant's
600 rpm limit is never the thing being measured (every request is admitted).

`--save before.json` keeps the numbers; a later `--compare before.json` prints them beside
the new ones with the speed-up. A benchmark, not a test: run it on a quiet machine.
"""

from __future__ import annotations

import argparse
import gc
import json
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Callable

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from gateway.api import budget  # noqa: E402
from gateway.api.exchange import Exchange  # noqa: E402
from gateway.auth import Principal  # noqa: E402
from gateway.catalog import Catalog, load_catalog  # noqa: E402
from gateway.classify import Classification, classify, load_default_rules  # noqa: E402
from gateway.decide import Decision  # noqa: E402
from gateway.policy import Policy, load_policy  # noqa: E402
from gateway.quota import MemoryQuotaStore, Settlement  # noqa: E402
from gateway.routing import RoutePlan, plan  # noqa: E402
from gateway.runtime import RoutingSnapshot  # noqa: E402
from gateway.spend import admission_and_worst, request_scopes, static_limits  # noqa: E402

_USER = (
    "Our support inbox got a message from a customer who says the order arrived two days late "
    "and one of the three mugs was chipped. Write a short, friendly reply that apologises, offers "
    "a replacement for the chipped mug or a refund for it, and explains that the delay was caused "
    "by the carrier. Keep it under 120 words and do not promise anything about future deliveries."
)
_CODE = (
    "Write a Python function that merges overlapping intervals given as a list of (start, end) "
    "tuples and returns them sorted. Include type hints and a couple of doctest examples."
)
_HARD = (
    "Prove that for every prime p greater than 3, p squared minus one is divisible by 24, then "
    "generalise: for which integers k is p^2 - 1 divisible by k for all primes p > 3? Reason step "
    "by step, check edge cases, and compare two different proof strategies."
)


def _body(model: str, text: str, max_tokens: int | None = 16) -> dict[str, Any]:
    body: dict[str, Any] = {
        "model": model,
        "messages": [{"role": "system", "content": "You are a helpful assistant."}, {"role": "user", "content": text}],
    }
    if max_tokens is not None:
        body["max_tokens"] = max_tokens
    return body


@dataclass(frozen=True)
class Case:
    name: str
    tenant: str
    body: dict[str, Any]
    unavailable: frozenset[str] = frozenset()


CASES = (
    # The load benchmark's request: the default tenant pins what it names.
    Case("pinned gpt-4o-mini", "default", _body("gpt-4o-mini", _USER)),
    Case("auto chat", "default", _body("auto", _USER)),
    Case("auto code", "default", _body("auto", _CODE, max_tokens=None)),
    Case("auto hard", "default", _body("auto", _HARD, max_tokens=None)),
    Case("auto, breaker open", "default", _body("auto", _USER), frozenset({"openai/gpt-4.1-nano"})),
    # Auto mode, a team, rate limits and a share quota.
    Case("internal hint gpt-4o-mini", "internal", _body("gpt-4o-mini", _USER)),
    # Floor mode, a team, a tenant day cap, a restricted privacy tier.
    Case("acme-health floor", "acme-health", _body("claude-haiku-4-5", _HARD, max_tokens=None)),
)


class FakeClock:
    def __init__(self, start: float) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now


def _percentiles(samples_ns: list[int]) -> dict[str, float]:
    ordered = sorted(samples_ns)
    n = len(ordered)
    return {
        "p50": ordered[n // 2] / 1000,
        "p99": ordered[min(n - 1, (n * 99) // 100)] / 1000,
        "mean": statistics.fmean(ordered) / 1000,
    }


def _timed(iterations: int, warmup: int, step: Callable[[], object]) -> list[int]:
    for _ in range(warmup):
        step()
    clock = time.perf_counter_ns
    samples = []
    gc.collect()
    gc.disable()  # a collection that lands in one sample says nothing about this code
    try:
        for _ in range(iterations):
            t0 = clock()
            step()
            samples.append(clock() - t0)
    finally:
        gc.enable()
    return samples


def run(iterations: int) -> dict[str, dict[str, float]]:
    catalog = load_catalog()
    policy = load_policy(None, catalog)
    rules = load_default_rules()
    results: dict[str, dict[str, float]] = {}
    warmup = max(200, iterations // 10)

    for case in CASES:
        c: Classification = classify(case.body, {}, rules)

        def plan_once(case: Case = case, c: Classification = c) -> RoutePlan:
            return plan(c, tenant=case.tenant, requested_model=case.body["model"], policy=policy,
                        catalog=catalog, unavailable=case.unavailable)

        route_plan = plan_once()
        results[f"plan     {case.name}"] = _percentiles(_timed(iterations, warmup, plan_once))

        clock = FakeClock(1_790_000_000.0)
        store = MemoryQuotaStore(clock=clock)
        drive(store.load_static(*static_limits(policy)))
        team = policy.tenant(case.tenant).team

        def request_once(case: Case = case, c: Classification = c, route_plan: RoutePlan = route_plan,
                         team: str | None = team) -> object:
            scopes = request_scopes(case.tenant, team, "key_bench", route_plan.route)
            return admission_and_worst("req-bench", scopes, route_plan, c, case.body, catalog, policy.limits)[0]

        results[f"request  {case.name}"] = _percentiles(_timed(iterations, warmup, request_once))
        scopes = request_scopes(case.tenant, team, "key_bench", route_plan.route)
        requests = [
            admission_and_worst(f"req-{i}", scopes, route_plan, c, case.body, catalog, policy.limits)[0]
            for i in range(iterations + warmup)
        ]
        admit_ns: list[int] = []
        settle_ns: list[int] = []
        both_ns: list[int] = []  # admit + settle of one request
        admitted = 0
        perf = time.perf_counter_ns
        gc.collect()
        gc.disable()
        try:
            for i, request in enumerate(requests):
                clock.now += 0.2
                t0 = perf()
                admission = store.admit_now(request)
                t1 = perf()
                if admission.reservation_id is not None:
                    admitted += 1
                    chosen = request.candidates[admission.candidate_index or 0]
                    settlement = Settlement(admission.reservation_id, chosen.worst_case_micros // 3, chosen.tokens // 2)
                    t2 = perf()
                    store.settle_now(settlement)
                    t3 = perf()
                    if i >= warmup:
                        settle_ns.append(t3 - t2)
                        both_ns.append(t1 - t0 + t3 - t2)
                if i >= warmup:
                    admit_ns.append(t1 - t0)
        finally:
            gc.enable()
        if admitted < len(requests):
            print(f"note: {case.name}: {len(requests) - admitted} of {len(requests)} admissions denied", file=sys.stderr)
        results[f"admit    {case.name}"] = _percentiles(admit_ns)
        if settle_ns:
            results[f"settle   {case.name}"] = _percentiles(settle_ns)
            results[f"quota    {case.name}"] = _percentiles(both_ns)
        snapshot = RoutingSnapshot(catalog, policy, rules, {})
        results[f"budget   {case.name}"] = _percentiles(
            _budget_samples(case, Decision(c, route_plan), snapshot, iterations, warmup)
        )
    return results


def _budget_samples(case: Case, decision: Decision, snapshot: RoutingSnapshot, iterations: int,
                    warmup: int) -> list[int]:
    """budget.admit as the chat handler awaits it, on a fresh exchange per request."""
    catalog: Catalog = snapshot.catalog
    policy: Policy = snapshot.policy
    clock = FakeClock(1_790_000_000.0)
    store = MemoryQuotaStore(clock=clock)
    drive(store.load_static(*static_limits(policy)))
    state: Any = SimpleNamespace(quota=store)  # all budget.admit reads of the gateway's state
    principal = Principal(case.tenant, "key_bench")
    exchanges = [
        Exchange(f"req-{i}", principal, case.body, snapshot, decision, [catalog.by_key[x.key] for x in decision.plan.candidates],
                 None, 0.0)
        for i in range(iterations + warmup)
    ]
    samples: list[int] = []
    perf = time.perf_counter_ns
    gc.collect()
    gc.disable()
    try:
        for i, ex in enumerate(exchanges):
            clock.now += 0.2
            t0 = perf()
            drive(budget.admit(state, ex))
            t1 = perf()
            if ex.reservation_id is not None:
                store.settle_now(Settlement(ex.reservation_id, ex.reserved_micros // 3, 10))
            if i >= warmup:
                samples.append(t1 - t0)
    finally:
        gc.enable()
    return samples


def drive(coroutine: Any) -> Any:
    """Run a coroutine that never suspends (the memory store's methods) without a loop."""
    try:
        coroutine.send(None)
    except StopIteration as done:
        return done.value
    raise RuntimeError("the coroutine suspended")


def report(results: dict[str, dict[str, float]], before: dict[str, dict[str, float]] | None) -> None:
    width = max(len(name) for name in results)
    if before is None:
        print(f"{'stage / case':<{width}}  {'p50 µs':>8}  {'p99 µs':>8}  {'mean µs':>8}")
        for name, r in results.items():
            print(f"{name:<{width}}  {r['p50']:8.1f}  {r['p99']:8.1f}  {r['mean']:8.1f}")
        return
    print(f"{'stage / case':<{width}}  {'p50 before':>10}  {'p50 after':>9}  {'p99 before':>10}  "
          f"{'p99 after':>9}  {'x p50':>6}")
    for name, r in results.items():
        b = before.get(name)
        if b is None:
            print(f"{name:<{width}}  {'-':>10}  {r['p50']:9.1f}  {'-':>10}  {r['p99']:9.1f}")
            continue
        print(f"{name:<{width}}  {b['p50']:10.1f}  {r['p50']:9.1f}  {b['p99']:10.1f}  {r['p99']:9.1f}  "
              f"{b['p50'] / r['p50']:6.1f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--iterations", type=int, default=5000, help="timed calls per stage and case")
    parser.add_argument("--save", type=Path, help="write the numbers as JSON to this file")
    parser.add_argument("--compare", type=Path, help="a file written by --save: print it beside this run")
    args = parser.parse_args()
    results = run(args.iterations)
    before = json.loads(args.compare.read_text()) if args.compare else None
    report(results, before)
    if args.save:
        args.save.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
