"""Request -> Classification. Pure: no I/O, no LLM call.

`classify(body, headers, rules)` reads an already-validated OpenAI chat-completions body and
the lower-case request headers, and labels the request: complexity tier and score, intent,
risk, output format, latency class, token estimates, the capabilities it needs, the
client's hints, and the reason for each label. Every keyword, pattern, weight and threshold
comes from the rules (catalog/classifier.yaml, see the comments there for how text is
read); this module holds only the labelling. The rules are compiled in classify_rules, the
text is read in classify_scan (keywords, markers, PII detectors with the check-digit
algorithms of classify_checks), and the hints are read in classify_hints.

Hints. A client may steer the labels with headers or `metadata` (see classify_hints for
the names, values and precedence; a bad value raises HintError, for the HTTP layer to
answer 400). `task` replaces the detected intent. `risk` can raise the detected risk but
never lower it: a client must not be able to send detected PII to a lane that is not
cleared for it.

Speed (budget: 50 µs median for a 500-token request; `python bench/classifier_bench.py`).
Per message a handful of C-level passes: encode, one translate for the token estimate, one
Aho-Corasick pass for all keywords over the instruction zones (the first and last
scan.focus_chars), one for all markers and "?" over a bounded clip. Scans of the system
prompt and earlier turns are cached: they come back with every request of a conversation.
PII regexes run only behind C-level prefilters (digit count, a required substring, a long
enough digit run) and then only over the digit runs; exact tokenization only near a
context-window size (tokens.exact_count_near); the costlier reasons are formatted when first
read. The `ahocorasick-rs` package provides the automata; without it a slower word-split
path gives the same keyword results.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from itertools import compress
from typing import Any

import orjson

from .classify_hints import HintError, Hints, read_hints
from .classify_rules import (
    BASE_SIGNALS,
    FORMATS,
    LATENCY_CLASSES,
    RISKS,
    TIERS,
    ClassifierRules,
    compile_rules,
    load_default_rules,
)
from .classify_scan import Entries, content_text, detect_pii, scan_context, scan_message
from .tokens import count_messages_tokens, estimate_tokens

__all__ = [
    "BASE_SIGNALS", "FORMATS", "LATENCY_CLASSES", "RISKS", "TIERS", "Classification", "ClassifierRules",
    "HintError", "classify", "compile_rules", "load_default_rules",
]

_REPLY_PRIMING = 3  # tokens.REPLY_PRIMING_TOKENS
_PER_MESSAGE = 3  # tokens.TOKENS_PER_MESSAGE
_NONE: frozenset[str] = frozenset()


@dataclass(frozen=True)
class Classification:
    tier: str  # one of TIERS
    score: float  # continuous complexity in [0, 1]
    intent: str  # chat, faq, summarize, extract, classify, translate, code, math, reasoning, planning, creative
    risk: str  # one of RISKS
    format: str  # one of FORMATS
    latency_class: str  # one of LATENCY_CLASSES
    input_tokens: int  # estimated prompt tokens
    output_tokens: int  # expected completion tokens (max_tokens when given, else an estimate)
    needs: frozenset[str] = frozenset()  # capabilities the request needs: tools, json_schema, vision, streaming
    objective: str | None = None  # hint: cost_speed | balanced | quality
    latency_budget_ms: int | None = None  # hint
    reasons: Mapping[str, str] = field(default_factory=dict)  # label name -> why
    input_tokens_exact: bool = False  # True when input_tokens was counted with the tokenizer
    pii: frozenset[str] = frozenset()  # names of the PII detectors that fired


class _Reasons(Mapping[str, str]):
    """Classification.reasons: the reason per label. The costlier ones are formatted when
    first read, off the request's path: a reason never changes a decision."""

    __slots__ = ("_done", "_later")

    def __init__(self, done: dict[str, str], later: dict[str, Callable[[], str]]) -> None:
        self._done = done
        self._later: dict[str, Callable[[], str]] | None = later

    def _all(self) -> dict[str, str]:
        later = self._later
        if later:
            for key, make in later.items():
                self._done[key] = make()
            self._later = None
        return self._done

    def __getitem__(self, key: str) -> str:
        return self._all()[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._all())

    def __len__(self) -> int:
        return len(self._all())

    def __repr__(self) -> str:
        return repr(self._all())


def _new_classification(values: dict[str, Any]) -> Classification:
    """Classification(**values), without the frozen dataclass's object.__setattr__ per field
    (5 µs of the classifier's budget); `values` must name every field."""
    obj = object.__new__(Classification)
    obj.__dict__.update(values)
    return obj


def _risk(texts: list[str], digits: int, has_run: bool, slots: list[float], hints: Hints,
          rules: ClassifierRules) -> tuple[int, frozenset[str], str]:
    """PII detectors over everything sent, then sensitive wording, then the client's hint."""
    level = 0
    why: list[str] = []
    fired = detect_pii(texts, digits, has_run, rules)
    for det in fired:
        level = max(level, det.level)
        why.append(f"{det.name} detected")
    offset = rules.risk_slot_offset
    for k, (group, group_level, with_pii) in enumerate(rules.risk_groups) if any(slots[offset:]) else ():
        if slots[offset + k]:
            if fired and with_pii is not None:
                group_level = with_pii
            if group_level:
                level = max(level, group_level)
                why.append(f"{group} wording: {RISKS[group_level]}")
    if hints.risk is not None and hints.risk > level:
        level = hints.risk
        why.append(f"raised by hint {hints.risk_param}")
    if not why:
        return 0, _NONE, "no PII or sensitive wording found"
    return level, frozenset(det.name for det in fired), "; ".join(why)


def _intent_reason(rules: ClassifierRules, best_index: int, best_score: float, hits: Mapping[bytes, Entries],
                   context_hits: Mapping[bytes, Entries], values: list[float]) -> str:
    term_slots = rules.term_slots
    terms = [key.strip().decode() for source in (hits, context_hits) for key in source if best_index in term_slots[key]]
    terms += [rules.signal_names[index] for index, _ in rules.intent_signals[best_index] if values[index]]
    return f"score {best_score:.1f}: {', '.join(sorted(set(terms))[:8])}"


def _default_intent_reason(rules: ClassifierRules, best_index: int, best_score: float) -> str:
    return f"default (best {rules.intents[best_index]} scored {best_score:.1f})"


def _tier_reason(score: float, contributions: list[tuple[float, str]]) -> str:
    top = sorted(contributions, key=lambda item: -abs(item[0]))[:4]
    return f"score {score:.2f}: " + ", ".join(f"{name} {c:+.2f}" for c, name in top)


def _positive_int(value: Any) -> int | None:
    return value if type(value) is int and value > 0 else None


def classify(body: Mapping[str, Any], headers: Mapping[str, str], rules: ClassifierRules) -> Classification:
    """Label one chat-completions request. Pure and deterministic; raises HintError for a bad hint."""
    hints = read_hints(body, headers, rules)

    # The last user message is what is asked now; the system prompt and earlier user turns
    # frame it; every message (assistant and tool turns too) is sent upstream and counts
    # for tokens and PII.
    messages = body.get("messages") or ()
    roles: list[Any] = []
    texts: list[str] = []
    last_user = -1
    vision = answered_before = False
    assistant_turns = tool_results = user_turns = 0
    for message in messages:
        role = message.get("role")
        text = message.get("content")
        if type(text) is not str:
            text, image = content_text(text)
            if image:
                vision = True
        if role == "user":
            last_user = len(texts)
            user_turns += 1
            answered_before = assistant_turns > 0
        elif role == "assistant":
            assistant_turns += 1
            calls = message.get("tool_calls")
            if calls:
                text += "".join(f"\n{c['function'].get('name', '')}({c['function'].get('arguments', '')})"
                                for c in calls if isinstance(c, Mapping) and isinstance(c.get("function"), Mapping))
        elif role == "tool" or role == "function":
            tool_results += 1
        roles.append(role)
        texts.append(text)

    current = scan_message(texts[last_user], rules, True, zones=True) if last_user >= 0 else scan_message("", rules, False)
    hits = current.hits
    markers = list(current.markers)
    digits_total = current.digits
    has_run = current.has_run
    tokens_system = tokens_context = 0
    context_hits: dict[bytes, Entries] = {}
    for i, text in enumerate(texts):
        if i == last_user:
            continue
        role = roles[i]
        read_words = role == "user" or role == "system" or role == "developer"
        scan = scan_context(text, rules, read_words)
        digits_total += scan.digits
        has_run = has_run or scan.has_run
        if role == "system" or role == "developer":
            tokens_system += scan.tokens
        else:
            tokens_context += scan.tokens
        if read_words and scan.hits:
            context_hits.update(scan.hits)
        if read_words and any(scan.markers):
            markers = [a + b for a, b in zip(markers, scan.markers)]
    tokens_current = current.tokens
    tokens_total = _REPLY_PRIMING + _PER_MESSAGE * len(texts) + tokens_current + tokens_system + tokens_context

    # Keywords: the last user message counts fully, its context at context_weight; a term
    # found in both counts once.
    slots = [0.0] * rules.slot_count
    for entry in hits.values():
        for slot, weight in entry:
            slots[slot] += weight
    revision_score = slots[rules.revision_slot]
    if context_hits:
        cw = rules.context_weight
        for key, entry in context_hits.items():
            if key not in hits:
                for slot, weight in entry:
                    slots[slot] += cw * weight

    tools = body.get("tools") or body.get("functions") or ()
    response_format = body.get("response_format")
    rf_type = response_format.get("type") if response_format and isinstance(response_format, Mapping) else None
    requested = _positive_int(body.get("max_completion_tokens"))
    requested_name = "max_completion_tokens"
    if requested is None:
        requested, requested_name = _positive_int(body.get("max_tokens")), "max_tokens"
    questions = current.questions
    short_question = 0 < tokens_current <= rules.short_max_tokens and (
        questions > 0 or current.first_word in rules.question_words)
    # in BASE_SIGNALS order, then keyword groups, then markers
    values = [
        tokens_current, tokens_context, tokens_system, tokens_total, user_turns, assistant_turns,
        tool_results, 1 if answered_before and revision_score >= rules.revision_min else 0,
        len(tools), rf_type == "json_schema", rf_type == "json_object", vision, requested or 0,
        questions, current.numbers, short_question,
        questions > 0 and current.numbers > 1 and tokens_current <= rules.numeric_max_tokens,
    ]
    values += slots[rules.kw_slot_offset : rules.risk_slot_offset]
    values += markers

    # One pass over the nonzero signals feeds both the intent scores and the complexity
    # features (a logistic score over weighted, capped signals).
    active = rules.active_signals
    scores = slots[: rules.kw_slot_offset]
    intents_by_signal = rules.intents_by_signal
    features_by_signal = rules.features_by_signal
    log1p = math.log1p
    z = rules.bias
    contributions: list[tuple[float, str]] = []
    for index in compress(active, map(values.__getitem__, active)):
        value = values[index]
        for i, weight in intents_by_signal[index]:
            scores[i] += weight if value >= 1 else weight * value
        for cap, scale, is_log, name in features_by_signal[index]:
            c = scale * (log1p(value if value < cap else cap) if is_log else (value if value < cap else cap))
            z += c
            contributions.append((c, name))

    # Intent: the best keyword + signal score, else the default (ties: the earlier intent).
    reasons: dict[str, str] = {}
    later: dict[str, Callable[[], str]] = {}
    if hints.task is not None:
        intent = hints.task
        reasons["intent"] = f"hint {hints.task_param}"
    else:
        best_index = max(rules.intent_range, key=scores.__getitem__)
        best_score = scores[best_index]
        if best_score >= rules.intent_min_score:
            intent = rules.intents[best_index]
            later["intent"] = functools.partial(_intent_reason, rules, best_index, best_score, hits,
                                                context_hits, values)
        else:
            intent = rules.default_intent
            later["intent"] = functools.partial(_default_intent_reason, rules, best_index, best_score)
    prior = rules.intent_priors.get(intent, 0.0)
    z += prior
    contributions.append((prior, "intent " + intent))
    score = 1.0 / (1.0 + math.exp(-z))
    tier = TIERS[0]
    for name, bound in rules.tier_bounds:
        if score >= bound:
            tier = name
            break
    later["tier"] = functools.partial(_tier_reason, score, contributions)

    level, pii, reasons["risk"] = _risk(texts, digits_total, has_run, slots, hints, rules)

    # Format, needs, latency.
    stream = body.get("stream") is True
    needs = []
    if tools:
        needs.append("tools")
    if rf_type == "json_schema":
        needs.append("json_schema")
    if vision:
        needs.append("vision")
    if stream:
        needs.append("streaming")
    if tools and body.get("tool_choice") != "none":
        fmt, reasons["format"] = "tools", f"{len(tools)} tool definitions"
    elif rf_type == "json_object" or rf_type == "json_schema":
        fmt, reasons["format"] = "json", f"response_format {rf_type}"
    else:
        fmt, reasons["format"] = "text", "no tools or JSON response_format"
    if stream:
        latency, reasons["latency_class"] = "interactive", "streamed response"
    elif hints.budget is not None and hints.budget >= rules.batch_min_budget_ms:
        latency, reasons["latency_class"] = "batch", f"latency budget {hints.budget} ms"
    elif body.get("service_tier") in rules.batch_service_tiers:
        latency, reasons["latency_class"] = "batch", f"service_tier {body.get('service_tier')}"
    else:
        latency, reasons["latency_class"] = "interactive", "default"
    if hints.objective is not None:
        reasons["objective"] = f"hint {hints.objective_param}"
    if hints.budget is not None:
        reasons["latency_budget_ms"] = f"hint {hints.budget_param}"

    # Tokens: estimate, and count exactly only where a context-window size is close.
    tools_tokens = estimate_tokens(orjson.dumps(tools).decode()) if tools else 0
    input_tokens = tokens_total + tools_tokens
    exact = False
    reasons["input_tokens"] = "estimate"
    for low, high, size in rules.exact_bands:
        if input_tokens < low:
            break
        if input_tokens <= high:
            input_tokens = count_messages_tokens(messages) + tools_tokens
            exact = True
            reasons["input_tokens"] = f"exact count (estimate near {size})"
            break
    if requested is not None:
        output_tokens = requested
        reasons["output_tokens"] = requested_name
    else:
        expected = rules.output_by_intent[intent] * rules.tier_factor[tier]
        ratio = rules.input_ratio.get(intent)
        if ratio:
            expected = max(expected, ratio * tokens_current)
        output_tokens = int(min(expected, rules.output_max))
        reasons["output_tokens"] = f"estimate for {intent}/{tier}"

    return _new_classification({
        "tier": tier, "score": round(score, 4), "intent": intent, "risk": RISKS[level], "format": fmt,
        "latency_class": latency, "input_tokens": input_tokens, "output_tokens": output_tokens,
        "needs": frozenset(needs), "objective": hints.objective, "latency_budget_ms": hints.budget,
        "reasons": _Reasons(reasons, later), "input_tokens_exact": exact, "pii": pii,
    })
