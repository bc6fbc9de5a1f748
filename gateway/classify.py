"""Request -> Classification. Pure: no I/O, no LLM call.

`classify(body, headers, rules)` reads an already-validated OpenAI chat-completions body and
the lower-case request headers, and labels the request: complexity tier and score, intent,
risk, output format, latency class, token estimates, the capabilities it needs, the
client's hints, and the reason for each label. Every keyword, pattern, weight and threshold
comes from the rules (catalog/classifier.yaml, see the comments there for how text is
read); this module holds only the mechanics and the PII check-digit algorithms.

Hints. A client may steer the labels with headers, or with the same hints in the body's
`metadata` under a `gateway_` prefix (the prefix keeps them apart from the client's own
metadata keys). A header wins over metadata when both are given; an empty header counts as
absent. Values are case-insensitive.

    header                        metadata key                  values
    x-gateway-task                gateway_task                  an intent of the rules
    x-gateway-risk                gateway_risk                  low | medium | high | regulated
    x-gateway-objective           gateway_objective             the rules' objectives (or aliases)
    x-gateway-latency-budget-ms   gateway_latency_budget_ms     integer milliseconds in the rules' range

`task` replaces the detected intent. `risk` can raise the detected risk but never lower it:
a client must not be able to send detected PII to a lane that is not cleared for it.
An invalid value raises `HintError(param, message)`, `param` naming the header or
`metadata.<key>`, for the HTTP layer to answer 400.

Speed: one lower-casing and one word split per message, keyword lookup by set
intersection, PII regexes only behind cheap prefilters (digit count, a required substring),
and exact tokenization only near a context-window size (rules: tokens.exact_count_near).
"""

from __future__ import annotations

import functools
import importlib.resources
import json
import math
import re
import string
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping

import jsonschema
import orjson
import yaml

from .tokens import count_messages_tokens, estimate_tokens, estimate_tokens_and_digits

TIERS = ("trivial", "simple", "standard", "complex", "expert")
RISKS = ("low", "medium", "high", "regulated")
FORMATS = ("text", "json", "tools")
LATENCY_CLASSES = ("interactive", "batch")


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


class HintError(ValueError):
    """A request hint (header or metadata) with a value the gateway does not accept."""

    def __init__(self, param: str, message: str) -> None:
        super().__init__(f"{param}: {message}")
        self.param = param
        self.message = message


# --- rules -----------------------------------------------------------------------------

BASE_SIGNALS = frozenset({
    "tokens_current", "tokens_context", "tokens_system", "tokens_total", "turns",
    "assistant_turns", "tool_results", "revision", "tools", "json_schema", "json_object",
    "vision", "max_tokens", "questions", "numbers", "short_question",
})

_FOLD = string.punctuation.encode() + b"\t\n\r\x0b\x0c"
_NORMALIZE = bytes.maketrans(_FOLD, b" " * len(_FOLD))
_DIGIT_RUNS = bytes(0x30 if 0x30 <= b <= 0x39 else 0x20 for b in range(256))


def _normalize(text_lower: str) -> bytes:
    if not text_lower.isascii():
        text_lower = text_lower.replace("\u2019", "'").replace("\u2018", "'")
    return text_lower.encode("utf-8").translate(_NORMALIZE)


def _luhn(candidate: str) -> bool:
    digits = [ord(c) - 48 for c in candidate if c.isdigit()]
    if not 13 <= len(digits) <= 19:
        return False
    total = 0
    for i, d in enumerate(reversed(digits)):
        if i % 2:
            d *= 2
            if d > 9:
                d -= 9
        total += d
    return total % 10 == 0


def _us_ssn(candidate: str) -> bool:
    d = "".join(c for c in candidate if c.isdigit())
    return len(d) == 9 and d[:3] not in ("000", "666") and d[0] != "9" and d[3:5] != "00" and d[5:] != "0000"


def _iban_mod97(candidate: str) -> bool:
    s = candidate.replace(" ", "")
    if not 15 <= len(s) <= 34:
        return False
    return int("".join(str(int(c, 36)) for c in s[4:] + s[:4])) % 97 == 1


_CHECKS: dict[str, Callable[[str], bool]] = {"luhn": _luhn, "us_ssn": _us_ssn, "iban_mod97": _iban_mod97}


@dataclass(frozen=True)
class _Detector:
    name: str
    regex: re.Pattern[str]
    substring: str | None
    min_digits: int
    check: Callable[[str], bool] | None
    level: int
    in_digit_runs: bool  # scope digit_runs: search only the digit runs, not the whole text
    shapes: tuple[bytes, ...]  # the text's shape must hold one of these (see _SHAPE)


# The shape of a text: A for an ASCII capital, a for a small letter, 0 for a digit, space for
# a space, "." for anything else. A detector can require a shape ("AA00" for an IBAN) that a
# single translate and `in` test rule out on most text, before any regex runs.
_SHAPE = bytes(
    0x41 if 0x41 <= b <= 0x5A else 0x61 if 0x61 <= b <= 0x7A else 0x30 if 0x30 <= b <= 0x39
    else 0x20 if b == 0x20 else 0x2E for b in range(256)
)


# Markers are counted with str.count, a pass over the text each. A marker holding a rare
# character is skipped when that character is absent (a memchr-speed `in` test), and markers
# that start a line are counted over the line starts only.
_COMMON_CHARS = frozenset(" .,'-\"")


def _rarity(ch: str) -> int:
    if ch.isascii() and (ch.isalnum() or ch in _COMMON_CHARS or ch.isspace()):
        return 0 if ch.isalnum() or ch.isspace() else 1
    return 2 if ch.isascii() else 3


def _gate(marker: str) -> str | None:
    best = max(marker, key=_rarity)
    return best if _rarity(best) > 0 else None


@dataclass(frozen=True)
class _Markers:
    signals: tuple[str, ...]  # "marker.<name>", in count order
    line_width: int  # characters of each line start kept for line markers
    line: tuple[tuple[int, str], ...]  # (signal index, substring starting with a newline)
    always: tuple[tuple[int, str], ...]  # markers of letters and spaces only: always counted
    gated: tuple[tuple[str, tuple[tuple[int, str], ...]], ...]  # gate char -> markers holding it

    @property
    def zero(self) -> tuple[int, ...]:
        return (0,) * len(self.signals)


def _compile_markers(raw: Mapping[str, list[str]]) -> _Markers:
    line: list[tuple[int, str]] = []
    always: list[tuple[int, str]] = []
    gated: dict[str, list[tuple[int, str]]] = {}
    for index, subs in enumerate(raw.values()):
        for sub in subs:
            gate = _gate(sub)
            if sub.startswith("\n"):
                line.append((index, sub))
            elif gate is None:
                always.append((index, sub))
            else:
                gated.setdefault(gate, []).append((index, sub))
    width = max((len(sub) - 1 for _, sub in line), default=0)
    return _Markers(tuple(f"marker.{name}" for name in raw), width, tuple(line), tuple(always),
                    tuple((gate, tuple(group)) for gate, group in sorted(gated.items())))


@dataclass(frozen=True, eq=False)  # compared and hashed by identity: it keys the scan cache
class ClassifierRules:
    """Compiled classifier rules; build with `compile_rules` or `load_default_rules`."""

    raw: Mapping[str, Any] = field(repr=False)
    head_chars: int
    tail_chars: int
    context_weight: float
    exact_near: tuple[int, ...]
    exact_margin: float
    short_max_tokens: int
    question_words: frozenset[bytes]
    markers: _Markers
    slot_names: tuple[str, ...]  # keyword accumulators: intents, then kw groups, then risk groups
    vocabulary: frozenset[bytes]
    single_terms: Mapping[bytes, tuple[tuple[int, float], ...]]
    # key word -> (other words of the phrase, " phrase ", slots); the key is the phrase's
    # longest word, the rarest in practice, so common words never trigger a substring search
    phrase_terms: Mapping[bytes, tuple[tuple[frozenset[bytes], bytes, tuple[tuple[int, float], ...]], ...]]
    intents: tuple[str, ...]
    intent_priors: Mapping[str, float]
    intent_signals: tuple[tuple[tuple[str, float], ...], ...]
    intent_min_score: float
    default_intent: str
    kw_groups: tuple[str, ...]
    revision_slot: int
    revision_min: float
    bias: float
    features: tuple[tuple[str, str, float, float, bool, float], ...]
    tier_bounds: tuple[tuple[str, float], ...]  # highest first
    detectors: tuple[_Detector, ...]
    digit_run_table: bytes  # translate table: digits and separators kept, space -> "_", rest -> space
    digit_run_min_length: int
    risk_groups: tuple[tuple[str, int, int | None], ...]
    output_by_intent: Mapping[str, int]
    tier_factor: Mapping[str, float]
    input_ratio: Mapping[str, float]
    output_max: int
    batch_min_budget_ms: int
    batch_service_tiers: frozenset[str]
    objectives: Mapping[str, str]  # accepted value (objective or alias) -> objective
    budget_min: int
    budget_max: int


@functools.cache
def _validator() -> jsonschema.Draft202012Validator:
    text = importlib.resources.files("catalog").joinpath("schema/classifier.schema.json").read_text("utf-8")
    return jsonschema.Draft202012Validator(json.loads(text))


def _path(parts: Any) -> str:
    out = ""
    for p in parts:
        out += f"[{p}]" if isinstance(p, int) else (f".{p}" if out else str(p))
    return out or "(root)"


def _bad(path: str, message: str) -> ValueError:
    return ValueError(f"classifier rules: {path}: {message}")


def _term_key(term: Any, path: str) -> bytes:
    if not isinstance(term, str):
        raise _bad(path, f"keyword {term!r} is not a string (quote it in YAML)")
    key = b" ".join(_normalize(term.lower()).split())
    if not key:
        raise _bad(path, f"keyword {term!r} has no letters or digits")
    return key


def compile_rules(raw: Mapping[str, Any]) -> ClassifierRules:
    """Validate raw rules (schema, then cross-references) and precompile them.

    Raises ValueError naming the path inside the rules, e.g. `complexity.features.rigor.cap`.
    """
    errors = sorted(_validator().iter_errors(raw), key=lambda e: (len(e.absolute_path), list(map(str, e.absolute_path))))
    if errors:
        err = jsonschema.exceptions.best_match(errors)
        raise _bad(_path(err.absolute_path), err.message)

    intents = tuple(raw["intents"])
    kw_groups = tuple(raw["keyword_groups"])
    risk_group_names = tuple(raw["risk"]["keyword_groups"])
    slot_names = intents + tuple(f"kw.{g}" for g in kw_groups) + tuple(f"risk.{g}" for g in risk_group_names)
    entries: dict[bytes, dict[int, float]] = {}

    def add(term: Any, slot: int, weight: float, path: str) -> None:
        slots = entries.setdefault(_term_key(term, path), {})
        slots[slot] = slots.get(slot, 0.0) + float(weight)

    for i, name in enumerate(intents):
        for term, w in raw["intents"][name]["keywords"].items():
            add(term, i, w, f"intents.{name}.keywords")
    for j, group in enumerate(kw_groups):
        for term, w in raw["keyword_groups"][group].items():
            add(term, len(intents) + j, w, f"keyword_groups.{group}")
    for k, group in enumerate(risk_group_names):
        for n, term in enumerate(raw["risk"]["keyword_groups"][group]["terms"]):
            add(term, len(intents) + len(kw_groups) + k, 1.0, f"risk.keyword_groups.{group}.terms[{n}]")

    single: dict[bytes, tuple[tuple[int, float], ...]] = {}
    phrases: dict[bytes, list[tuple[frozenset[bytes], bytes, tuple[tuple[int, float], ...]]]] = {}
    phrase_words: set[bytes] = set()
    for key, slots in entries.items():
        packed = tuple(slots.items())
        parts = key.split()
        if len(parts) > 1:
            anchor = max(parts, key=len)
            phrases.setdefault(anchor, []).append((frozenset(parts) - {anchor}, b" " + key + b" ", packed))
            phrase_words.update(parts)
        else:
            single[key] = packed

    markers = _compile_markers(raw["markers"])
    known = BASE_SIGNALS | {f"kw.{g}" for g in kw_groups} | {f"marker.{m}" for m in raw["markers"]}
    intent_signals = []
    for name in intents:
        sigs = raw["intents"][name].get("signals") or {}
        for sig in sigs:
            if sig not in known:
                raise _bad(f"intents.{name}.signals.{sig}", f"unknown signal (known: {', '.join(sorted(known))})")
        intent_signals.append(tuple((s, float(w)) for s, w in sigs.items()))

    features = []
    for name, spec in raw["complexity"]["features"].items():
        if spec["signal"] not in known:
            raise _bad(f"complexity.features.{name}.signal", f"unknown signal {spec['signal']!r}")
        is_log = spec.get("scale", "linear") == "log"
        cap = float(spec["cap"])
        features.append((name, spec["signal"], cap, float(spec["weight"]), is_log, math.log1p(cap) if is_log else cap))

    tiers = raw["complexity"]["tiers"]
    bounds = [tiers[t] for t in TIERS[1:]]
    if bounds != sorted(bounds) or len(set(bounds)) != len(bounds):
        raise _bad("complexity.tiers", "bounds must rise strictly: simple < standard < complex < expert")

    sel = raw["intent_selection"]
    if sel["default"] not in intents:
        raise _bad("intent_selection.default", f"{sel['default']!r} is not an intent")
    rev = raw["revision"]
    if rev["group"] not in kw_groups:
        raise _bad("revision.group", f"{rev['group']!r} is not a keyword group")
    out = raw["output_tokens"]
    missing = [i for i in intents if i not in out["by_intent"]]
    if missing:
        raise _bad("output_tokens.by_intent", f"missing intents: {', '.join(missing)}")
    for name in out.get("input_ratio") or {}:
        if name not in intents:
            raise _bad(f"output_tokens.input_ratio.{name}", "not an intent")

    detectors = []
    for name, spec in raw["risk"]["detectors"].items():
        try:
            regex = re.compile(spec["pattern"])
        except re.error as exc:
            raise _bad(f"risk.detectors.{name}.pattern", f"invalid regular expression: {exc}") from None
        req = spec.get("requires") or {}
        detectors.append(_Detector(name, regex, req.get("substring"), int(req.get("min_digits", 0)),
                                   _CHECKS.get(spec.get("check", "")), RISKS.index(spec["level"]),
                                   spec.get("scope", "text") == "digit_runs",
                                   tuple(shape.encode() for shape in req.get("shapes", ()))))
    runs = raw["risk"]["digit_runs"]
    kept = set(b"0123456789") | set(runs["separators"].encode())
    space = 0x5F if 0x20 in kept else 0x20
    run_table = bytes(space if b == 0x20 else b if b in kept else 0x20 for b in range(256))
    risk_groups = []
    for group, spec in raw["risk"]["keyword_groups"].items():
        with_pii = spec.get("with_pii")
        risk_groups.append((group, RISKS.index(spec["level"]), RISKS.index(with_pii) if with_pii else None))

    hints = raw["hints"]
    objectives = {o: o for o in hints["objectives"]}
    for alias, target in (hints.get("objective_aliases") or {}).items():
        if target not in objectives:
            raise _bad(f"hints.objective_aliases.{alias}", f"{target!r} is not one of hints.objectives")
        objectives[alias] = target
    budget = hints["latency_budget_ms"]
    if budget["min"] > budget["max"]:
        raise _bad("hints.latency_budget_ms", "min is above max")

    sq = raw["short_question"]
    return ClassifierRules(
        raw=raw,
        head_chars=raw["scan"]["head_chars"],
        tail_chars=raw["scan"]["tail_chars"],
        context_weight=float(raw["scan"]["context_weight"]),
        exact_near=tuple(raw["tokens"]["exact_count_near"]),
        exact_margin=float(raw["tokens"]["exact_count_margin"]),
        short_max_tokens=sq["max_tokens"],
        question_words=frozenset(_term_key(w, f"short_question.question_words[{i}]") for i, w in enumerate(sq["question_words"])),
        markers=markers,
        slot_names=slot_names,
        vocabulary=frozenset(single) | frozenset(phrase_words),
        single_terms=single,
        phrase_terms={k: tuple(v) for k, v in phrases.items()},
        intents=intents,
        intent_priors={i: float(raw["intents"][i]["prior"]) for i in intents},
        intent_signals=tuple(intent_signals),
        intent_min_score=float(sel["min_score"]),
        default_intent=sel["default"],
        kw_groups=kw_groups,
        revision_slot=len(intents) + kw_groups.index(rev["group"]),
        revision_min=float(rev["min_score"]),
        bias=float(raw["complexity"]["bias"]),
        features=tuple(features),
        tier_bounds=tuple((t, float(tiers[t])) for t in reversed(TIERS[1:])),
        detectors=tuple(detectors),
        digit_run_table=run_table,
        digit_run_min_length=runs["min_length"],
        risk_groups=tuple(risk_groups),
        output_by_intent=dict(out["by_intent"]),
        tier_factor=dict(out["tier_factor"]),
        input_ratio=dict(out.get("input_ratio") or {}),
        output_max=out["max"],
        batch_min_budget_ms=raw["latency"]["batch_min_budget_ms"],
        batch_service_tiers=frozenset(raw["latency"]["batch_service_tiers"]),
        objectives=objectives,
        budget_min=budget["min"],
        budget_max=budget["max"],
    )


@functools.cache
def load_default_rules() -> ClassifierRules:
    """The rules shipped in catalog/classifier.yaml (compiled once per process)."""
    text = importlib.resources.files("catalog").joinpath("classifier.yaml").read_text("utf-8")
    return compile_rules(yaml.safe_load(text))


# --- classification ----------------------------------------------------------------------

_REPLY_PRIMING = 3  # tokens.REPLY_PRIMING_TOKENS; framing per message below
_PER_MESSAGE = 3
_CACHE_MAX_CHARS = 32_768

_Entries = tuple[tuple[int, float], ...]


@dataclass(frozen=True, slots=True)
class _Scan:
    """What the classifier reads from the text of one message."""

    tokens: int
    digits: int
    hits: Mapping[bytes, _Entries]  # keyword key -> (slot, weight) pairs
    first_word: bytes
    numbers: int
    questions: int
    markers: tuple[int, ...]  # in rules.markers.signals order


def _content_text(content: Any) -> tuple[str, bool]:
    """The text of a message's content, and whether it carries an image."""
    if isinstance(content, str):
        return content, False
    if not isinstance(content, list):
        return "", False
    texts: list[str] = []
    image = False
    for part in content:
        if isinstance(part, Mapping):
            kind = part.get("type")
            if kind == "text" and isinstance(part.get("text"), str):
                texts.append(part["text"])
            elif kind == "image_url":
                image = True
    return "\n".join(texts), image


def _clip(text: str, rules: ClassifierRules) -> str:
    # Instructions sit at the start or the end of a long prompt; the middle is usually the
    # pasted material, which keyword signals need not read.
    if len(text) <= rules.head_chars + rules.tail_chars:
        return text
    return text[: rules.head_chars] + "\n" + text[len(text) - rules.tail_chars :]


def _keyword_hits(lower: str, rules: ClassifierRules) -> tuple[dict[bytes, _Entries], list[bytes], bytes]:
    norm = _normalize(lower)
    words = norm.split()
    hits: dict[bytes, _Entries] = {}
    found = rules.vocabulary.intersection(words)
    if found:
        padded = b""
        for word in found:
            entry = rules.single_terms.get(word)
            if entry is not None:
                hits[word] = entry
            phrases = rules.phrase_terms.get(word)
            if phrases:
                for others, pattern, phrase_entry in phrases:
                    if others <= found:
                        if not padded:
                            # a phrase must be separated by single spaces or punctuation marks
                            padded = b" " + norm + b" "
                        if pattern in padded:
                            hits[pattern] = phrase_entry
    return hits, words, norm


def _count_markers(scan: str, markers: _Markers) -> tuple[int, ...]:
    counts = [0] * len(markers.signals)
    if markers.line:
        width = markers.line_width
        line_starts = "\n".join([line[:width] for line in scan.split("\n")])
        for index, sub in markers.line:
            counts[index] += line_starts.count(sub)
    for index, sub in markers.always:
        counts[index] += scan.count(sub)
    for gate, group in markers.gated:
        if gate in scan:
            for index, sub in group:
                counts[index] += scan.count(sub)
    return tuple(counts)


def _scan(text: str, rules: ClassifierRules, read_words: bool) -> _Scan:
    tokens, digits = estimate_tokens_and_digits(text)
    if not read_words or not text:
        return _Scan(tokens, digits, {}, b"", 0, 0, rules.markers.zero)
    lower = _clip(text, rules).lower()
    hits, words, norm = _keyword_hits(lower, rules)
    return _Scan(
        tokens, digits, hits, words[0] if words else b"",
        len(norm.translate(_DIGIT_RUNS).split()) if digits else 0,
        lower.count("?"), _count_markers("\n" + lower, rules.markers),
    )


# System prompts and earlier turns come back with every request of a conversation or an
# app: remember their scans (a pure function of text and rules, so still deterministic).
_scan_cached = functools.lru_cache(maxsize=2048)(_scan)


def _scan_context(text: str, rules: ClassifierRules, read_words: bool) -> _Scan:
    if len(text) > _CACHE_MAX_CHARS:
        return _scan(text, rules, read_words)
    return _scan_cached(text, rules, read_words)


def _read_hint(headers: Mapping[str, str], metadata: Mapping[str, Any] | None, header: str, key: str) -> tuple[Any, str]:
    value = headers.get(header)
    if isinstance(value, str) and value.strip():
        return value.strip(), header
    if metadata is not None:
        value = metadata.get(key)
        if value is not None and not (isinstance(value, str) and not value.strip()):
            return value, f"metadata.{key}"
    return None, ""


def _choice(value: Any, param: str, allowed: Mapping[str, str] | tuple[str, ...]) -> str:
    if not isinstance(value, str):
        raise HintError(param, "must be a string")
    key = value.strip().lower()
    if key not in allowed:
        raise HintError(param, f"{value!r} is not one of: {', '.join(allowed)}")
    return allowed[key] if isinstance(allowed, Mapping) else key


@dataclass(frozen=True, slots=True)
class _Hints:
    task: str | None = None
    task_param: str = ""
    risk: int | None = None
    risk_param: str = ""
    objective: str | None = None
    objective_param: str = ""
    budget: int | None = None
    budget_param: str = ""


_NO_HINTS = _Hints()


def _read_hints(body: Mapping[str, Any], headers: Mapping[str, str], rules: ClassifierRules) -> _Hints:
    metadata = body.get("metadata")
    if not isinstance(metadata, Mapping):
        metadata = None
    if metadata is None and not any(name in headers for name in _HINT_HEADERS):
        return _NO_HINTS
    task, task_param = _read_hint(headers, metadata, "x-gateway-task", "gateway_task")
    if task is not None:
        task = _choice(task, task_param, rules.intents)
    risk, risk_param = _read_hint(headers, metadata, "x-gateway-risk", "gateway_risk")
    if risk is not None:
        risk = RISKS.index(_choice(risk, risk_param, RISKS))
    objective, objective_param = _read_hint(headers, metadata, "x-gateway-objective", "gateway_objective")
    if objective is not None:
        objective = _choice(objective, objective_param, rules.objectives)
    budget, budget_param = _read_hint(headers, metadata, "x-gateway-latency-budget-ms", "gateway_latency_budget_ms")
    if budget is not None:
        if isinstance(budget, str) and budget.isascii() and budget.isdigit():
            budget = int(budget)
        if isinstance(budget, bool) or not isinstance(budget, int) or not rules.budget_min <= budget <= rules.budget_max:
            raise HintError(budget_param, f"must be an integer number of milliseconds from {rules.budget_min} to {rules.budget_max}")
    return _Hints(task, task_param, risk, risk_param, objective, objective_param, budget, budget_param)


_HINT_HEADERS = ("x-gateway-task", "x-gateway-risk", "x-gateway-objective", "x-gateway-latency-budget-ms")


def _digit_runs(text: str, rules: ClassifierRules) -> list[str]:
    """Maximal runs of digits and separators long enough to hold a number of interest.

    One translate and one split in C; the detectors' regexes then read a few short strings
    instead of scanning the whole text, which in Python's re costs ~100 ns per digit.
    """
    pieces = text.encode("utf-8").translate(rules.digit_run_table).split()
    return [p.replace(b"_", b" ").strip().decode("ascii") for p in pieces if len(p) >= rules.digit_run_min_length]


def _detect(det: _Detector, text: str) -> bool:
    for match in det.regex.finditer(text):
        if det.check is None or det.check(match.group()):
            return True
    return False


def _max_tokens(body: Mapping[str, Any]) -> tuple[int | None, str]:
    for name in ("max_completion_tokens", "max_tokens"):
        value = body.get(name)
        if isinstance(value, int) and not isinstance(value, bool) and value > 0:
            return value, name
    return None, ""


def _risk(all_text: str, digits: int, slots: list[float], hints: _Hints, rules: ClassifierRules) -> tuple[int, frozenset[str], str]:
    """PII detectors over everything sent, then sensitive wording, then the client's hint."""
    level = 0
    why: list[str] = []
    pii: set[str] = set()
    runs: list[str] | None = None
    shape = b""
    for det in rules.detectors:
        if digits < det.min_digits or (det.substring is not None and det.substring not in all_text):
            continue
        if det.shapes:
            if not shape:
                shape = all_text.encode("utf-8").translate(_SHAPE)
            for wanted in det.shapes:
                if wanted in shape:
                    break
            else:
                continue
        if det.in_digit_runs:
            if runs is None:
                runs = _digit_runs(all_text, rules)
            found = any(_detect(det, run) for run in runs)
        else:
            found = _detect(det, all_text)
        if found:
            pii.add(det.name)
            level = max(level, det.level)
            why.append(f"{det.name} detected")
    offset = len(rules.intents) + len(rules.kw_groups)
    for k, (group, group_level, with_pii) in enumerate(rules.risk_groups):
        if slots[offset + k] > 0:
            group_level = with_pii if pii and with_pii is not None else group_level
            if group_level:
                level = max(level, group_level)
                why.append(f"{group} wording: {RISKS[group_level]}")
    if hints.risk is not None and hints.risk > level:
        level = hints.risk
        why.append(f"raised by hint {hints.risk_param}")
    return level, frozenset(pii), "; ".join(why) or "no PII or sensitive wording found"


def classify(body: Mapping[str, Any], headers: Mapping[str, str], rules: ClassifierRules) -> Classification:
    """Label one chat-completions request. Pure and deterministic; raises HintError for a bad hint."""
    hints = _read_hints(body, headers, rules)
    reasons: dict[str, str] = {}

    # The last user message is what is asked now; the system prompt and earlier user turns
    # frame it; every message (assistant and tool turns too) is sent upstream and counts
    # for tokens and PII.
    messages = body.get("messages") or ()
    texts: list[tuple[Any, str]] = []
    last_user = -1
    vision = False
    assistant_turns = tool_results = user_turns = 0
    answered_before = False
    for message in messages:
        role = message.get("role")
        text, image = _content_text(message.get("content"))
        vision = vision or image
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
        elif role in ("tool", "function"):
            tool_results += 1
        texts.append((role, text))

    current = _scan(texts[last_user][1], rules, True) if last_user >= 0 else None
    context_hits: dict[bytes, _Entries] = {}
    markers = list(current.markers) if current else [0] * len(rules.markers.signals)
    tokens_system = tokens_context = 0
    digits_total = current.digits if current else 0
    for i, (role, text) in enumerate(texts):
        if i == last_user:
            continue
        read_words = role in ("user", "system", "developer")
        scan = _scan_context(text, rules, read_words)
        digits_total += scan.digits
        if role in ("system", "developer"):
            tokens_system += scan.tokens
        else:
            tokens_context += scan.tokens
        if read_words:
            context_hits.update(scan.hits)
            for k, count in enumerate(scan.markers):
                markers[k] += count
    tokens_current = current.tokens if current else 0
    tokens_total = _REPLY_PRIMING + _PER_MESSAGE * len(texts) + tokens_current + tokens_system + tokens_context

    # Keywords: the last user message counts fully, its context at context_weight; a term
    # found in both counts once.
    slots = [0.0] * len(rules.slot_names)
    hits = current.hits if current else {}
    for entry in hits.values():
        for slot, weight in entry:
            slots[slot] += weight
    revision_score = slots[rules.revision_slot]
    cw = rules.context_weight
    for key, entry in context_hits.items():
        if key not in hits:
            for slot, weight in entry:
                slots[slot] += cw * weight

    tools = body.get("tools") or body.get("functions") or ()
    response_format = body.get("response_format")
    rf_type = response_format.get("type") if isinstance(response_format, Mapping) else None
    requested, requested_name = _max_tokens(body)
    questions = current.questions if current else 0
    short_question = 0 < tokens_current <= rules.short_max_tokens and (
        questions > 0 or current.first_word in rules.question_words)
    signals: dict[str, float] = {
        "tokens_current": tokens_current, "tokens_context": tokens_context,
        "tokens_system": tokens_system, "tokens_total": tokens_total, "turns": user_turns,
        "assistant_turns": assistant_turns, "tool_results": tool_results,
        "revision": 1.0 if answered_before and revision_score >= rules.revision_min else 0.0,
        "tools": len(tools), "json_schema": 1.0 if rf_type == "json_schema" else 0.0,
        "json_object": 1.0 if rf_type == "json_object" else 0.0, "vision": 1.0 if vision else 0.0,
        "max_tokens": requested or 0, "questions": questions,
        "numbers": current.numbers if current else 0, "short_question": 1.0 if short_question else 0.0,
    }
    offset = len(rules.intents)
    for i, group in enumerate(rules.kw_groups):
        signals["kw." + group] = slots[offset + i]
    for signal, count in zip(rules.markers.signals, markers):
        signals[signal] = count

    # Intent: the best keyword + signal score, else the default.
    if hints.task is not None:
        intent = hints.task
        reasons["intent"] = f"hint {hints.task_param}"
    else:
        best, best_score, best_index = rules.default_intent, -math.inf, -1
        for i, name in enumerate(rules.intents):
            score_i = slots[i]
            for signal, weight in rules.intent_signals[i]:
                value = signals[signal]
                if value:
                    score_i += weight * (value if value < 1 else 1)
            if score_i > best_score:
                best, best_score, best_index = name, score_i, i
        if best_score >= rules.intent_min_score:
            intent = best
            terms = [key.strip().decode() for source in (hits, context_hits) for key, entry in source.items()
                     if any(slot == best_index for slot, _ in entry)]
            terms += [s for s, _ in rules.intent_signals[best_index] if signals[s]]
            reasons["intent"] = f"score {best_score:.1f}: " + ", ".join(sorted(set(terms))[:8])
        else:
            intent = rules.default_intent
            reasons["intent"] = f"default (best {best} scored {best_score:.1f} < {rules.intent_min_score:g})"

    # Complexity: a logistic score over weighted, capped signals.
    prior = rules.intent_priors.get(intent, 0.0)
    z = rules.bias + prior
    contributions = [(prior, f"intent {intent}")]
    for name, signal, cap, weight, is_log, denom in rules.features:
        value = signals[signal]
        if value <= 0:
            continue
        if value > cap:
            value = cap
        c = weight * (math.log1p(value) / denom if is_log else value / cap)
        z += c
        contributions.append((c, name))
    score = 1.0 / (1.0 + math.exp(-z))
    tier = TIERS[0]
    for name, bound in rules.tier_bounds:
        if score >= bound:
            tier = name
            break
    contributions.sort(key=lambda item: -abs(item[0]))
    reasons["tier"] = f"score {score:.2f}: " + ", ".join(f"{n} {c:+.2f}" for c, n in contributions[:4])

    level, pii, reasons["risk"] = _risk("\n".join(t for _, t in texts), digits_total, slots, hints, rules)

    # Format, needs, latency.
    if tools and body.get("tool_choice") != "none":
        fmt, reasons["format"] = "tools", f"{len(tools)} tool definitions"
    elif rf_type in ("json_object", "json_schema"):
        fmt, reasons["format"] = "json", f"response_format {rf_type}"
    else:
        fmt, reasons["format"] = "text", "no tools or JSON response_format"
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
    if stream:
        latency, reasons["latency_class"] = "interactive", "streamed response"
    elif hints.budget is not None and hints.budget >= rules.batch_min_budget_ms:
        latency, reasons["latency_class"] = "batch", f"latency budget {hints.budget} ms >= {rules.batch_min_budget_ms} ms"
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
    for size in rules.exact_near:
        if abs(input_tokens - size) <= rules.exact_margin * size:
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

    return Classification(
        tier=tier, score=round(score, 4), intent=intent, risk=RISKS[level], format=fmt,
        latency_class=latency, input_tokens=input_tokens, output_tokens=output_tokens,
        needs=frozenset(needs), objective=hints.objective, latency_budget_ms=hints.budget,
        reasons=reasons, input_tokens_exact=exact, pii=pii,
    )
