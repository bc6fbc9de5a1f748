"""How well the classifier's complexity score routes between a strong and a weak model.

    python bench/routing_eval.py [--data PATH] [--rules YAML] [--history strong|weak|none]

Reads the RouteLLM evaluation data in shared/data/routing-eval (see its README.md): MT-Bench
judge scores and GSM8K correctness of a strong and a weak model, per prompt. Every prompt
goes through classify() with the default rules (or --rules, to try a proposed rules file); sweeping a threshold over the complexity
score sends the prompts at or above it to the strong model. For each benchmark it prints
quality against the share of strong calls next to random routing, and the summary numbers
the README defines:

- PGR(x): (quality - weak only) / (strong only - weak only) at x% strong calls;
- APGR: the area under PGR over x from 0 to 100% (random routing: 0.5);
- CPT(50%): the % strong calls at which PGR first reaches 0.5 (random routing: 50%).

Ties in the score are resolved as random routing would within the tie (the curve is linear
between tie groups), so a coarse score earns no credit it did not earn. The prompts the
RouteLLM authors mark as contaminated are dropped. MT-Bench is scored per turn; turn 2 is
classified with turn 1 and an answer to it as history (--history picks whose answer, from
the judged transcripts; "none" leaves only the user turns). The oracle line routes with
knowledge of the results: the upper bound for any router.
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
from collections import Counter, defaultdict
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

import yaml  # noqa: E402

from gateway.classify import ClassifierRules, classify, compile_rules, load_default_rules  # noqa: E402

DEFAULT_DATA = REPO.parent / "shared" / "data" / "routing-eval"
STRONG = "gpt-4-1106-preview"
WEAK = "mistralai/Mixtral-8x7B-Instruct-v0.1"


@dataclass(frozen=True)
class Unit:
    """One routed prompt: its router score and what each model scored on it."""

    label: str  # category or benchmark, for the breakdown
    score: float
    strong: float
    weak: float
    tier: str
    intent: str


def _contaminated(path: Path) -> set[str]:
    with open(path, encoding="utf-8") as f:
        return {json.loads(line)["eval_prompt"] for line in f if line.strip()}


def _first_answer(transcript: str) -> str:
    start = transcript.find("### Assistant A:\n")
    if start < 0:
        return ""
    start += len("### Assistant A:\n")
    end = transcript.find("\n\n### User:\n", start)
    return transcript[start:end if end >= 0 else len(transcript)].strip()


def mt_bench_units(data: Path, history: str, rules: ClassifierRules) -> tuple[list[Unit], int]:
    dropped_texts = _contaminated(data / "mt_bench_contaminated_prompts.jsonl")
    with open(data / "mt_bench_questions.jsonl", encoding="utf-8") as f:
        questions = [json.loads(line) for line in f if line.strip()]
    scores: dict[tuple[int, str, int], float] = {}
    answers: dict[tuple[int, str], str] = {}
    with open(data / "mt_bench_judgements.jsonl", encoding="utf-8") as f:
        for line in f:
            j = json.loads(line)
            scores[(j["question_id"], j["model"], j["turn"])] = float(j["score"])
            if j["turn"] == 2:
                answers[(j["question_id"], j["model"])] = _first_answer(j["user_prompt"])
    units: list[Unit] = []
    dropped = 0
    for q in questions:
        turn1, turn2 = q["turns"][:2]
        if turn1 in dropped_texts or turn2 in dropped_texts:
            dropped += 1
            continue
        conversations = [[{"role": "user", "content": turn1}]]
        middle = []
        if history != "none":
            middle = [{"role": "assistant", "content": answers[(q["question_id"], STRONG if history == "strong" else WEAK)]}]
        conversations.append([{"role": "user", "content": turn1}, *middle, {"role": "user", "content": turn2}])
        for turn, messages in enumerate(conversations, start=1):
            c = classify({"model": "auto", "messages": messages}, {}, rules)
            units.append(Unit(q["category"], c.score, scores[(q["question_id"], STRONG, turn)],
                              scores[(q["question_id"], WEAK, turn)], c.tier, c.intent))
    return units, dropped


def gsm8k_units(data: Path, rules: ClassifierRules) -> tuple[list[Unit], int]:
    dropped_texts = _contaminated(data / "gsm8k_contaminated_prompts.jsonl")
    units: list[Unit] = []
    dropped = 0
    with open(data / "gsm8k_responses.csv", encoding="utf-8", newline="") as f:
        for row in csv.DictReader(f):
            prompt = row["prompt"]
            if prompt in dropped_texts:
                dropped += 1
                continue
            c = classify({"model": "auto", "messages": [{"role": "user", "content": prompt}]}, {}, rules)
            units.append(Unit("gsm8k", c.score, float(row[STRONG] == "True"), float(row[WEAK] == "True"), c.tier, c.intent))
    return units, dropped


def curve(units: list[Unit], key=lambda u: u.score) -> list[tuple[float, float]]:
    """(share of strong calls, mean quality) at every threshold between tie groups."""
    n = len(units)
    ordered = sorted(units, key=key, reverse=True)
    quality = sum(u.weak for u in units)
    points = [(0.0, quality / n)]
    i = 0
    while i < n:
        j = i
        while j < n and key(ordered[j]) == key(ordered[i]):
            quality += ordered[j].strong - ordered[j].weak
            j += 1
        points.append((j / n, quality / n))
        i = j
    return points


def _interp(points: list[tuple[float, float]], x: float) -> float:
    for (x0, y0), (x1, y1) in zip(points, points[1:]):
        if x0 <= x <= x1:
            return y0 if x1 == x0 else y0 + (y1 - y0) * (x - x0) / (x1 - x0)
    return points[-1][1]


def summarize(name: str, units: list[Unit], dropped: int, unit_name: str) -> None:
    n = len(units)
    weak = sum(u.weak for u in units) / n
    strong = sum(u.strong for u in units) / n
    gap = strong - weak
    pgr = [(x, (q - weak) / gap) for x, q in curve(units)]
    oracle = [(x, (q - weak) / gap) for x, q in curve(units, key=lambda u: u.strong - u.weak)]
    apgr = sum((x1 - x0) * (y0 + y1) / 2 for (x0, y0), (x1, y1) in zip(pgr, pgr[1:]))
    apgr_oracle = sum((x1 - x0) * (y0 + y1) / 2 for (x0, y0), (x1, y1) in zip(oracle, oracle[1:]))
    cpt = next((x0 + (x1 - x0) * (0.5 - y0) / (y1 - y0) for (x0, y0), (x1, y1) in zip(pgr, pgr[1:])
                if y0 < 0.5 <= y1), 0.0 if pgr[0][1] >= 0.5 else 1.0)

    print(f"\n== {name}: {n} {unit_name} ({dropped} contaminated dropped); "
          f"weak only {weak:.3f}, strong only {strong:.3f}")
    print(f"  {'% strong':>8} {'quality':>8} {'PGR':>6} {'random':>7} {'oracle':>7}")
    for pct in range(0, 101, 10):
        x = pct / 100
        q = weak + gap * _interp(pgr, x)
        print(f"  {pct:>7}% {q:>8.3f} {_interp(pgr, x):>6.2f} {x:>7.2f} {_interp(oracle, x):>7.2f}")
    print(f"  APGR {apgr:.3f} (random 0.500, oracle {apgr_oracle:.3f});  CPT(50%) {cpt:.1%} (random 50.0%)")

    by_label: dict[str, list[Unit]] = defaultdict(list)
    for u in units:
        by_label[u.label].append(u)
    if len(by_label) > 1:
        print(f"  {'category':<11} {'mean score':>10} {'strong-weak':>11}  intents")
        for label, group in sorted(by_label.items(), key=lambda item: -sum(u.score for u in item[1]) / len(item[1])):
            intents = Counter(u.intent for u in group).most_common(3)
            print(f"  {label:<11} {sum(u.score for u in group) / len(group):>10.3f} "
                  f"{sum(u.strong - u.weak for u in group) / len(group):>+11.2f}  "
                  + ", ".join(f"{i} {c}" for i, c in intents))
    tiers = Counter(u.tier for u in units)
    print("  tiers: " + ", ".join(f"{t} {tiers[t]}" for t in ("trivial", "simple", "standard", "complex", "expert")))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA, help="routing-eval data folder")
    parser.add_argument("--history", choices=("strong", "weak", "none"), default="strong",
                        help="whose turn-1 answer sits in the MT-Bench turn-2 history")
    parser.add_argument("--rules", type=Path, help="classifier rules YAML (default: catalog/classifier.yaml)")
    args = parser.parse_args()
    if not (args.data / "README.md").is_file():
        parser.error(f"no routing-eval data at {args.data}")
    rules = compile_rules(yaml.safe_load(args.rules.read_text("utf-8"))) if args.rules else load_default_rules()
    units, dropped = mt_bench_units(args.data, args.history, rules)
    summarize("MT-Bench (per turn, judge score 1-10)", units, dropped, "turns")
    units, dropped = gsm8k_units(args.data, rules)
    summarize("GSM8K (accuracy)", units, dropped, "prompts")


if __name__ == "__main__":
    main()
