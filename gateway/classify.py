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
prompt and earlier turns are cached: they come back with every request of a conversation
(so is the token estimate of the tool definitions). PII regexes run only when some message
holds a cue (a long enough digit run, or a substring a detector needs), behind further
C-level prefilters (digit count, required substring) and then only over the digit runs;
exact tokenization only near a context-window size (tokens.exact_count_near). What is left
runs in Python on every request and is kept to a few steps per keyword found and per nonzero
signal: the rules list per signal the rows it feeds (intent scores and the complexity logit
alike, in one list of slots), and a request visits only the rows of its nonzero signals.
Under CPython 3.11 a bytecode costs ~50 instructions and setting up an iterator a few
hundred: a plain loop beats itertools over a handful of items. No reason is formatted on the
path: Classification.reasons formats them all when first read, from what classify kept.
The `ahocorasick-rs` package provides the automata; without it a slower word-split path
gives the same keyword results.
"""

from __future__ import annotations

import functools
import math
from bisect import bisect_right
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from itertools import compress
from operator import add
from typing import Any, NamedTuple

import orjson

from .classify_hints import NO_HINTS, HintError, Hints, read_hints
from .classify_rules import (
    BASE_SIGNALS,
    FORMATS,
    LATENCY_CLASSES,
    RISKS,
    TIERS,
    ClassifierRules,
    Detector,
    compile_rules,
    load_default_rules,
)
from .classify_scan import CACHE_MAX_CHARS, content_text, detect_pii, scan_cached, scan_message
from .tokens import count_messages_tokens, estimate_utf8

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


class _Later(NamedTuple):
    """What a classification's reasons are formatted from, when first read."""

    rules: ClassifierRules
    hints: Hints
    intent: str
    tier: str
    score: float
    best_index: int  # the best intent by score (unless a hint set the intent)
    best_score: float
    hits: tuple[int, ...]  # terms of the last user message
    context_scans: list[tuple[int, ...]]  # terms of each message of its context that has some
    values: list[Any]  # the signals
    risk: str  # the risk's reason (formatted with the PII check)
    format: str
    tools: int  # tool definitions
    rf_type: Any  # response_format.type
    stream: bool
    service_tier: Any  # read when neither streaming nor a latency budget set the latency class
    exact_near: int | None  # the context-window size input_tokens was counted exactly near
    requested: str | None  # the field that set output_tokens


class _Reasons(Mapping[str, str]):
    """Classification.reasons: the reason per label, formatted when first read, off the
    request's path: a reason never changes a decision."""

    __slots__ = ("_later", "_reasons")

    def __init__(self, later: _Later) -> None:
        self._later = later  # kept: threads that read at once each format the same reasons
        self._reasons: dict[str, str] | None = None

    def _all(self) -> dict[str, str]:
        reasons = self._reasons
        if reasons is None:
            reasons = self._reasons = _format_reasons(self._later)
        return reasons

    def __getitem__(self, key: str) -> str:
        return self._all()[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._all())

    def __len__(self) -> int:
        return len(self._all())

    def __repr__(self) -> str:
        return repr(self._all())


# Classification(**fields) without the frozen dataclass's object.__setattr__ per field
# (5 µs of the classifier's budget): a new instance gets its __dict__ whole.
_new_object = object.__new__
_new_tuple = tuple.__new__  # a NamedTuple, without its __new__ in Python
_set_attribute = object.__setattr__

# the needs of a request by (tools, json_schema, vision, streaming) bits, built in that order
_NEEDS = tuple(frozenset(name for bit, name in enumerate(("tools", "json_schema", "vision", "streaming")) if mask >> bit & 1)
               for mask in range(16))
_NO_RISK = "no PII or sensitive wording found"
_NO_DETECTORS: tuple[Detector, ...] = ()

# An app sends the same tool definitions with every request, like its system prompt: their
# token estimate is remembered by their JSON, up to _TOOLS_CACHE_MAX_BYTES of it.
_TOOLS_CACHE_MAX_BYTES = 16384
_tools_tokens_cached = functools.lru_cache(maxsize=256)(estimate_utf8)


def _tools_tokens(definitions: bytes) -> int:
    if len(definitions) > _TOOLS_CACHE_MAX_BYTES:
        return estimate_utf8(definitions)
    return _tools_tokens_cached(definitions)


def _risk(fired: Sequence[Detector], slots: list[float], hints: Hints, rules: ClassifierRules) -> tuple[int, frozenset[str], str]:
    """The PII detectors that fired, then sensitive wording, then the client's hint."""
    level = 0
    why: list[str] = []
    for det in fired:
        level = max(level, det.level)
        why.append(f"{det.name} detected")
    offset = rules.risk_slot_offset
    for k, (group, group_level, with_pii) in enumerate(rules.risk_groups):
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
        return 0, _NONE, _NO_RISK
    return level, frozenset(det.name for det in fired), "; ".join(why)


def _intent_reason(rules: ClassifierRules, best_index: int, best_score: float, hits: tuple[int, ...],
                   context_scans: list[tuple[int, ...]], values: list[Any]) -> str:
    term_slots = rules.term_slots
    terms = [rules.terms[i].strip().decode() for source in (hits, *context_scans) for i in source if best_index in term_slots[i]]
    terms += [rules.signal_names[index] for index, _ in rules.intent_signals[best_index] if values[index]]
    return f"score {best_score:.1f}: {', '.join(sorted(set(terms))[:8])}"


def _tier_reason(rules: ClassifierRules, score: float, values: list[Any], intent: str) -> str:
    # the contributions to the score, computed as classify() summed them
    contributions = []
    log1p = math.log1p
    for k, cap, scale, is_log, name in rules.feature_rows:
        value = values[k]
        if value:
            contributions.append((scale * (log1p(value if value < cap else cap) if is_log else (value if value < cap else cap)), name))
    contributions.append((rules.intent_priors.get(intent, 0.0), "intent " + intent))
    top = sorted(contributions, key=lambda item: -abs(item[0]))[:4]
    return f"score {score:.2f}: " + ", ".join(f"{name} {c:+.2f}" for c, name in top)


def _format_reasons(later: _Later) -> dict[str, str]:
    """The reason per label, in the order classify() decides them."""
    rules, hints = later.rules, later.hints
    reasons = {}
    if hints.task is not None:
        reasons["intent"] = f"hint {hints.task_param}"
    reasons["risk"] = later.risk
    if later.format == "tools":
        reasons["format"] = f"{later.tools} tool definitions"
    elif later.format == "json":
        reasons["format"] = f"response_format {later.rf_type}"
    else:
        reasons["format"] = "no tools or JSON response_format"
    if later.stream:
        reasons["latency_class"] = "streamed response"
    elif hints.budget is not None and hints.budget >= rules.batch_min_budget_ms:
        reasons["latency_class"] = f"latency budget {hints.budget} ms"
    elif later.service_tier in rules.batch_service_tiers:
        reasons["latency_class"] = f"service_tier {later.service_tier}"
    else:
        reasons["latency_class"] = "default"
    if hints.objective is not None:
        reasons["objective"] = f"hint {hints.objective_param}"
    if hints.budget is not None:
        reasons["latency_budget_ms"] = f"hint {hints.budget_param}"
    reasons["input_tokens"] = "estimate" if later.exact_near is None else f"exact count (estimate near {later.exact_near})"
    reasons["output_tokens"] = later.requested or f"estimate for {later.intent}/{later.tier}"
    if hints.task is None:
        if later.best_score >= rules.intent_min_score:
            reasons["intent"] = _intent_reason(rules, later.best_index, later.best_score, later.hits, later.context_scans,
                                               later.values)
        else:
            reasons["intent"] = f"default (best {rules.intents[later.best_index]} scored {later.best_score:.1f})"
    reasons["tier"] = _tier_reason(rules, later.score, later.values, later.intent)
    return reasons


def _tool_calls_text(calls: Iterable[Any]) -> str:
    """What an assistant turn's tool calls send upstream: each function's name and arguments."""
    return "".join(f"\n{c['function'].get('name', '')}({c['function'].get('arguments', '')})"
                   for c in calls if isinstance(c, Mapping) and isinstance(c.get("function"), Mapping))


def classify(body: Mapping[str, Any], headers: Mapping[str, str], rules: ClassifierRules) -> Classification:
    """Label one chat-completions request. Pure and deterministic; raises HintError for a bad hint."""
    hints = read_hints(body, headers, rules) if headers or "metadata" in body else NO_HINTS

    # The last user message is what is asked now; the system prompt and earlier user turns
    # frame it; every message (assistant and tool turns too) is sent upstream and counts
    # for tokens and PII. One pass reads the context; the question is read after it.
    messages = body.get("messages") or ()
    last_user = len(messages) - 1
    while last_user >= 0 and messages[last_user].get("role") != "user":
        last_user -= 1
    texts: list[str] = []
    vision = answered_before = has_run = pii_cue = False
    assistant_turns = tool_results = user_turns = tokens_system = tokens_context = digits_total = 0
    context_scans: list[tuple[int, ...]] = []
    no_markers = markers = rules.markers.empty
    for i, message in enumerate(messages):
        role = message.get("role")
        text = message.get("content")
        if type(text) is not str:
            if text is None:  # an assistant turn of tool calls
                text = ""
            else:
                text, image = content_text(text)
                if image:
                    vision = True
        system = False
        if role == "user":
            user_turns += 1
            if i == last_user:
                answered_before = assistant_turns > 0
                texts.append(text)
                continue
            read_words = True
        elif role == "system" or role == "developer":
            read_words = system = True
        else:
            read_words = False
            if role == "assistant":
                assistant_turns += 1
                calls = message.get("tool_calls")
                if calls:
                    text += _tool_calls_text(calls)
            elif role == "tool" or role == "function":
                tool_results += 1
        texts.append(text)
        # a message of the context comes back with every request of its conversation: cached
        tokens, digits, run, cue, terms, _, _, _, counts = (
            scan_cached(text, rules, read_words) if len(text) <= CACHE_MAX_CHARS else scan_message(text, rules, read_words))
        digits_total += digits
        if cue:
            pii_cue = True
            if run:
                has_run = True
        if system:
            tokens_system += tokens
        else:
            tokens_context += tokens
        if terms:
            context_scans.append(terms)
        if counts is not no_markers:
            markers = tuple(map(add, markers, counts))
    if last_user >= 0:
        tokens_current, digits, run, cue, hits, first_word, numbers, questions, counts = scan_message(
            texts[last_user], rules, True, zones=True)
        digits_total += digits
        has_run = has_run or run
        pii_cue = pii_cue or cue
        if counts is not no_markers:
            markers = tuple(map(add, markers, counts))
    else:
        tokens_current, numbers, questions, hits, first_word = 0, 0, 0, (), b""
    tokens_total = _REPLY_PRIMING + _PER_MESSAGE * len(texts) + tokens_current + tokens_system + tokens_context

    # Keywords: the last user message counts fully, its context at context_weight; a term
    # found in both counts once. Each slot adds up in term order, then context order.
    # (Plain loops: a few terms cost less than setting up itertools over them.)
    slots = list(rules.slot_start)
    term_weights = rules.term_weights
    for term in hits:
        for slot, weight in term_weights[term]:
            slots[slot] += weight
    revision_score = slots[rules.revision_slot]
    if context_scans:
        # each term once, where the earliest message has it
        seen = set(hits)
        term_weights = rules.context_term_weights
        for terms in context_scans:
            for term in terms:
                if term not in seen:
                    seen.add(term)
                    for slot, weight in term_weights[term]:
                        slots[slot] += weight

    tools = body.get("tools") or body.get("functions") or ()
    response_format = body.get("response_format")
    rf_type = response_format.get("type") if response_format and isinstance(response_format, Mapping) else None
    requested = body.get("max_completion_tokens")
    requested_name = "max_completion_tokens"
    if type(requested) is not int or requested <= 0:
        requested, requested_name = body.get("max_tokens"), "max_tokens"
        if type(requested) is not int or requested <= 0:
            requested = None
    short_question = 0 < tokens_current <= rules.short_max_tokens and (
        questions > 0 or first_word in rules.question_words)
    # in BASE_SIGNALS order, then keyword groups, then markers
    values = [
        tokens_current, tokens_context, tokens_system, tokens_total, user_turns, assistant_turns,
        tool_results, 1 if answered_before and revision_score >= rules.revision_min else 0,
        len(tools), rf_type == "json_schema", rf_type == "json_object", vision, requested or 0,
        questions, numbers, short_question,
        questions > 0 and numbers > 1 and tokens_current <= rules.numeric_max_tokens,
    ]
    values += slots[rules.kw_slot_offset : rules.risk_slot_offset]
    values += markers

    # Only the nonzero signals feed the intent scores and the complexity logit (a logistic
    # score over weighted, capped signals), each its own rows.
    log1p = math.log1p
    signal_rows = rules.signal_rows
    for k in compress(rules.signal_indexes, values):
        value = values[k]
        for slot, cap, scale, is_log in signal_rows[k]:
            slots[slot] += scale * (log1p(value if value < cap else cap) if is_log else (value if value < cap else cap))

    # Intent: the best keyword + signal score, else the default (ties: the earlier intent).
    if hints.task is not None:
        intent = hints.task
        best_index, best_score = 0, 0.0
    else:
        scores = slots[: rules.kw_slot_offset]
        best_score = max(scores)
        best_index = scores.index(best_score)
        intent = rules.intents[best_index] if best_score >= rules.intent_min_score else rules.default_intent
    z = slots[rules.score_slot] + rules.intent_priors.get(intent, 0.0)
    # (exp overflows past ~709: weights that large are a policy's, and must not fail requests)
    score = 0.0 if z < -700.0 else 1.0 / (1.0 + math.exp(-z))
    # the highest tier whose lower bound the score reaches (a NaN score reaches none)
    tier = TIERS[0] if math.isnan(score) else TIERS[bisect_right(rules.tier_floors, score)]

    # (no detector can fire without a cue in some message)
    fired = detect_pii(texts, digits_total, has_run, rules) if pii_cue else _NO_DETECTORS
    if fired or hints.risk is not None or any(slots[rules.risk_slot_offset : rules.score_slot]):
        level, pii, risk_reason = _risk(fired, slots, hints, rules)
    else:
        level, pii, risk_reason = 0, _NONE, _NO_RISK

    # Format, needs, latency.
    stream = body.get("stream") is True
    needs = _NEEDS[(1 if tools else 0) | (2 if rf_type == "json_schema" else 0) | (4 if vision else 0) | (8 if stream else 0)]
    if tools and body.get("tool_choice") != "none":
        fmt = "tools"
    elif rf_type == "json_object" or rf_type == "json_schema":
        fmt = "json"
    else:
        fmt = "text"
    service_tier = None  # read only when neither streaming nor a latency budget decides
    if stream:
        latency = "interactive"
    elif (hints.budget is not None and hints.budget >= rules.batch_min_budget_ms
          or (service_tier := body.get("service_tier")) in rules.batch_service_tiers):
        latency = "batch"
    else:
        latency = "interactive"

    # Tokens: estimate, and count exactly only where a context-window size is close.
    tools_tokens = _tools_tokens(orjson.dumps(tools)) if tools else 0
    input_tokens = tokens_total + tools_tokens
    exact_near = None
    for low, high, size in rules.exact_bands:
        if input_tokens < low:
            break
        if input_tokens <= high:
            input_tokens = count_messages_tokens(messages) + tools_tokens
            exact_near = size
            break
    if requested is not None:
        output_tokens = requested
    else:
        requested_name = None
        expected = rules.output_by_intent[intent] * rules.tier_factor[tier]
        ratio = rules.input_ratio.get(intent)
        if ratio:
            expected = max(expected, ratio * tokens_current)
        output_tokens = int(min(expected, rules.output_max))

    later = _new_tuple(_Later, (rules, hints, intent, tier, score, best_index, best_score, hits, context_scans, values,
                                risk_reason, fmt, len(tools), rf_type, stream, service_tier, exact_near, requested_name))
    result = _new_object(Classification)
    _set_attribute(result, "__dict__", {
        "tier": tier, "score": round(score, 4), "intent": intent, "risk": RISKS[level], "format": fmt,
        "latency_class": latency, "input_tokens": input_tokens, "output_tokens": output_tokens,
        "needs": needs, "objective": hints.objective, "latency_budget_ms": hints.budget,
        "reasons": _Reasons(later), "input_tokens_exact": exact_near is not None, "pii": pii,
    })
    return result
