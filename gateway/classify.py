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
import importlib.resources
import json
import math
import re
import string
from collections import Counter
from itertools import compress
from operator import itemgetter
from dataclasses import dataclass, field
from collections.abc import Callable, Iterator, Mapping
from typing import Any, NamedTuple

import jsonschema
import orjson
import yaml

try:  # Aho-Corasick automata (Rust): one pass finds every keyword or marker
    import ahocorasick_rs
except ImportError:  # pragma: no cover - a declared dependency; without it a slower path
    ahocorasick_rs = None

from .tokens import count_messages_tokens, estimate_encoded, estimate_tokens

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


class HintError(ValueError):
    """A request hint (header or metadata) with a value the gateway does not accept."""

    def __init__(self, param: str, message: str) -> None:
        super().__init__(f"{param}: {message}")
        self.param = param
        self.message = message


# --- rules -----------------------------------------------------------------------------

# Signals computed for every request, in the order classify() lists them; keyword groups
# ("kw.<group>") and markers ("marker.<name>") follow in the order of the rules.
BASE_SIGNALS = (
    "tokens_current", "tokens_context", "tokens_system", "tokens_total", "turns",
    "assistant_turns", "tool_results", "revision", "tools", "json_schema", "json_object",
    "vision", "max_tokens", "questions", "numbers", "short_question", "numeric_question",
)

_FOLD = frozenset(string.punctuation.encode() + b"\t\n\r\x0b\x0c")
_WORDS_FORM = bytes(b + 32 if 0x41 <= b <= 0x5A else 0x20 if b in _FOLD else b for b in range(256))
_TYPOGRAPHIC_QUOTES = ("\u2019".encode(), "\u2018".encode())


def _words_form(raw: bytes, ascii_only: bool) -> bytes:
    """The form keywords are matched in: UTF-8, ASCII letters lower-cased (others keep their
    case), punctuation, typographic apostrophes and whitespace as spaces, a space at each end."""
    if not ascii_only:
        for quote in _TYPOGRAPHIC_QUOTES:
            raw = raw.replace(quote, b" ")
    return b" " + raw.translate(_WORDS_FORM) + b" "


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
    run: int  # the text must hold a digit run at least this long (0: no such need)


@dataclass(frozen=True)
class _Markers:
    signals: tuple[str, ...]  # "marker.<name>", in count order
    zero: tuple[int, ...]  # one count per signal, then the count of "?" (the questions signal)
    empty: tuple[int, ...]  # one zero per signal
    patterns: tuple[bytes, ...]  # every marker substring as UTF-8, in lower, upper and title case
    signal_of: tuple[int, ...]  # pattern index -> signal index
    automaton: Any  # ahocorasick_rs.BytesAhoCorasick over `patterns`, or None without the package


def _compile_markers(raw: Mapping[str, list[str]]) -> _Markers:
    patterns: list[bytes] = []
    signal_of: list[int] = []
    for index, subs in enumerate(raw.values()):
        for sub in subs:
            # matched in the text as written, so in each case it is likely written in
            for variant in (sub.lower(), sub.upper(), sub.title()):
                key = variant.encode()
                if key not in patterns:
                    patterns.append(key)
                    signal_of.append(index)
    patterns.append(b"?")  # counted in the same pass, for the questions signal
    signal_of.append(len(raw))
    automaton = None
    if ahocorasick_rs is not None:
        automaton = ahocorasick_rs.BytesAhoCorasick(patterns, implementation=ahocorasick_rs.Implementation.DFA)
    return _Markers(tuple(f"marker.{name}" for name in raw), (0,) * (len(raw) + 1), (0,) * len(raw),
                    tuple(patterns), tuple(signal_of), automaton)


@dataclass(frozen=True, eq=False)  # compared and hashed by identity: it keys the scan cache
class ClassifierRules:
    """Compiled classifier rules; build with `compile_rules` or `load_default_rules`."""

    raw: Mapping[str, Any] = field(repr=False)
    head_chars: int
    tail_chars: int
    context_weight: float
    focus_chars: int
    exact_bands: tuple[tuple[float, float, int], ...]  # (low, high, window size), rising
    short_max_tokens: int
    numeric_max_tokens: int
    question_words: frozenset[bytes]
    markers: _Markers
    slot_names: tuple[str, ...]  # keyword accumulators: intents, then kw groups, then risk groups
    slot_count: int
    kw_slot_offset: int
    risk_slot_offset: int
    terms: tuple[bytes, ...]  # " term ", in automaton pattern order
    term_entries: Mapping[bytes, tuple[tuple[int, float], ...]]  # " term " -> (slot, weight) pairs
    term_slots: Mapping[bytes, frozenset[int]]
    term_order: Mapping[bytes, int]  # " term " -> its index in `terms`
    term_items: tuple[tuple[bytes, tuple[tuple[int, float], ...]], ...]  # index -> (" term ", entries)
    automaton: Any  # ahocorasick_rs.BytesAhoCorasick over `terms`, or None without the package
    # without the automaton: words by set intersection, phrases by their anchor word
    vocabulary: frozenset[bytes]
    single_terms: Mapping[bytes, bytes]  # word -> " word "
    # anchor word -> " phrase "s; the anchor is the phrase's longest word, the rarest in
    # practice, so common words never trigger a substring search
    phrase_terms: Mapping[bytes, tuple[bytes, ...]]
    signal_names: tuple[str, ...]  # BASE_SIGNALS, kw.<group>..., marker.<name>...
    intent_range: range
    intents: tuple[str, ...]
    intent_priors: Mapping[str, float]
    intent_signals: tuple[tuple[tuple[int, float], ...], ...]  # per intent: (signal index, weight)
    # per signal index: what a nonzero value feeds, so a request only visits its nonzero signals
    intents_by_signal: tuple[tuple[tuple[int, float], ...], ...]  # (intent index, weight)
    features_by_signal: tuple[tuple[tuple[float, float, bool, str], ...], ...]  # cap, weight/denominator, log, name
    active_signals: tuple[int, ...]  # the signals that feed an intent or a feature
    intent_min_score: float
    default_intent: str
    kw_groups: tuple[str, ...]
    revision_slot: int
    revision_min: float
    bias: float
    tier_bounds: tuple[tuple[str, float], ...]  # highest first
    detectors: tuple[_Detector, ...]  # fewest min_digits first
    # A digit run: digits and separators, starting and ending with a digit. Found in the
    # text's probe (a digit -> "0", a separator -> "1", anything else -> space), where the
    # regex engine only stops at digits.
    digit_run_probe: bytes
    digit_run_regex: re.Pattern[bytes]  # runs at least as long as the shortest a detector needs
    digit_run_min_digits: int  # the fewest digits any run-needing detector needs
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
    key = b" ".join(_words_form(term.lower().encode(), term.isascii()).split())
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

    # Every term is matched as " term " in the normalized text with a space at each end.
    terms = tuple(b" " + key + b" " for key in entries)
    term_entries = {b" " + key + b" ": tuple(slots.items()) for key, slots in entries.items()}
    single: dict[bytes, bytes] = {}
    phrases: dict[bytes, list[bytes]] = {}
    for key in entries:
        parts = key.split()
        if len(parts) > 1:
            phrases.setdefault(max(parts, key=len), []).append(b" " + key + b" ")
        else:
            single[key] = b" " + key + b" "

    markers = _compile_markers(raw["markers"])
    signal_names = BASE_SIGNALS + tuple(f"kw.{g}" for g in kw_groups) + markers.signals
    index = {name: i for i, name in enumerate(signal_names)}
    intent_signals = []
    for name in intents:
        sigs = raw["intents"][name].get("signals") or {}
        for sig in sigs:
            if sig not in index:
                raise _bad(f"intents.{name}.signals.{sig}", f"unknown signal (known: {', '.join(signal_names)})")
        intent_signals.append(tuple((index[s], float(w)) for s, w in sigs.items()))

    features = []
    for name, spec in raw["complexity"]["features"].items():
        if spec["signal"] not in index:
            raise _bad(f"complexity.features.{name}.signal", f"unknown signal {spec['signal']!r}")
        is_log = spec.get("scale", "linear") == "log"
        cap = float(spec["cap"])
        features.append((index[spec["signal"]], cap, float(spec["weight"]), is_log, math.log1p(cap) if is_log else cap, name))

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
                                   spec.get("scope", "text") == "digit_runs", int(req.get("run", 0))))
        if detectors[-1].in_digit_runs and not detectors[-1].run:
            raise _bad(f"risk.detectors.{name}.requires.run", "a digit_runs detector needs a run length")
    separators = set(raw["risk"]["digit_runs"]["separators"].encode())
    shortest_run = min((d.run for d in detectors if d.run), default=2)
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
        focus_chars=raw["scan"]["focus_chars"],
        exact_bands=tuple(sorted((n * (1 - raw["tokens"]["exact_count_margin"]), n * (1 + raw["tokens"]["exact_count_margin"]), n)
                                 for n in raw["tokens"]["exact_count_near"])),
        short_max_tokens=sq["max_tokens"],
        numeric_max_tokens=sq["numeric_max_tokens"],
        question_words=frozenset(_term_key(w, f"short_question.question_words[{i}]") for i, w in enumerate(sq["question_words"])),
        markers=markers,
        slot_names=slot_names,
        slot_count=len(slot_names),
        kw_slot_offset=len(intents),
        risk_slot_offset=len(intents) + len(kw_groups),
        terms=terms,
        term_entries=term_entries,
        term_slots={k: frozenset(s for s, _ in e) for k, e in term_entries.items()},
        term_order={t: i for i, t in enumerate(terms)},
        term_items=tuple((t, term_entries[t]) for t in terms),
        automaton=_automaton(terms),
        vocabulary=frozenset(single) | frozenset(phrases),
        single_terms=single,
        phrase_terms={k: tuple(v) for k, v in phrases.items()},
        signal_names=signal_names,
        intent_range=range(len(intents)),
        intents=intents,
        intent_priors={i: float(raw["intents"][i]["prior"]) for i in intents},
        intent_signals=tuple(intent_signals),
        intents_by_signal=tuple(tuple((i, w) for i, sigs in enumerate(intent_signals) for s, w in sigs if s == k)
                                for k in range(len(signal_names))),
        features_by_signal=tuple(tuple((cap, weight / denom, is_log, name) for i, cap, weight, is_log, denom, name in features if i == k)
                                 for k in range(len(signal_names))),
        active_signals=tuple(sorted({f[0] for f in features} | {i for sigs in intent_signals for i, _ in sigs})),
        intent_min_score=float(sel["min_score"]),
        default_intent=sel["default"],
        kw_groups=kw_groups,
        revision_slot=len(intents) + kw_groups.index(rev["group"]),
        revision_min=float(rev["min_score"]),
        bias=float(raw["complexity"]["bias"]),
        tier_bounds=tuple((t, float(tiers[t])) for t in reversed(TIERS[1:])),
        detectors=tuple(sorted(detectors, key=lambda d: d.min_digits)),
        digit_run_probe=bytes(0x30 if 0x30 <= b <= 0x39 else 0x31 if b in separators else 0x20 for b in range(256)),
        # a run starts with two digits (cards, phones, IDs all do): the "00" prefix lets the
        # regex engine jump between places where two digits meet
        digit_run_regex=re.compile(b"00[01]{%d,}0" % max(shortest_run - 3, 0)),
        digit_run_min_digits=min((d.min_digits for d in detectors if d.run), default=1 << 30),
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


def _automaton(terms: tuple[bytes, ...]) -> Any:
    # One pass over the text finds every term (~3x faster than splitting it into words);
    # without the package, classify falls back to a word split with the same results.
    if ahocorasick_rs is None:
        return None
    return ahocorasick_rs.BytesAhoCorasick(list(terms), implementation=ahocorasick_rs.Implementation.DFA)


@functools.cache
def load_default_rules() -> ClassifierRules:
    """The rules shipped in catalog/classifier.yaml (compiled once per process)."""
    text = importlib.resources.files("catalog").joinpath("classifier.yaml").read_text("utf-8")
    return compile_rules(yaml.safe_load(text))


# --- reading the text ------------------------------------------------------------------------

_REPLY_PRIMING = 3  # tokens.REPLY_PRIMING_TOKENS
_PER_MESSAGE = 3  # tokens.TOKENS_PER_MESSAGE
_CACHE_MAX_CHARS = 8192  # bounds the cache to ~2048 x 8 KB of text

_Entries = tuple[tuple[int, float], ...]
_FIRST = itemgetter(0)


class _Scan(NamedTuple):
    """What the classifier reads from the text of one message."""

    tokens: int
    digits: int
    has_run: bool  # holds a digit run as long as the shortest a PII detector needs
    hits: Mapping[bytes, _Entries]  # " term " -> (slot, weight) pairs, in the instruction zones
    first_word: bytes
    numbers: int
    questions: int
    markers: tuple[int, ...]  # in rules.markers.signals order


def _content_text(content: Any) -> tuple[str, bool]:
    """The text of a message's content, and whether it carries an image."""
    if type(content) is str:
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


def _find_terms(segment: bytes, rules: ClassifierRules) -> set[int]:
    """Indexes of the terms found in a normalized segment (spaces at both ends), without
    the automaton: words by set intersection, phrases by their anchor word."""
    order = rules.term_order
    found: set[int] = set()
    for word in rules.vocabulary.intersection(segment.split()):
        term = rules.single_terms.get(word)
        if term is not None:
            found.add(order[term])
        for term in rules.phrase_terms.get(word, ()):
            if term in segment:
                found.add(order[term])
    return found


def _keyword_hits(padded: bytes, rules: ClassifierRules) -> dict[bytes, _Entries]:
    """Terms found in `padded` (the _words_form of a text), as " term " -> (slot, weight) pairs.

    A term matches whole words: punctuation counts as a space, and the words of a phrase
    must be separated by a single space or punctuation mark.
    """
    if rules.automaton is not None:
        found = set(map(_FIRST, rules.automaton.find_matches_as_indexes(padded, overlapping=True)))
    else:
        found = _find_terms(padded, rules)
    # sorted, so weights add up in one order whatever the hash seed (a tie stays a tie)
    return dict(map(rules.term_items.__getitem__, sorted(found)))


def _count_markers(scan: bytes, markers: _Markers) -> tuple[int, ...]:
    """Marker counts in `scan` (UTF-8 starting with a newline): every occurrence of every
    marker, so "x^2" counts for both "x^" and "^2"."""
    signal_of = markers.signal_of
    if markers.automaton is not None:
        found = markers.automaton.find_matches_as_indexes(scan, overlapping=True)
        if not found:
            return markers.zero
        if len(found) > 24:  # code: counting in C pays for the Counter's own cost
            tally = Counter(map(signal_of.__getitem__, map(_FIRST, found)))
            return tuple(map(tally.__getitem__, range(len(markers.zero))))
        counts = list(markers.zero)
        for i in map(_FIRST, found):
            counts[signal_of[i]] += 1
        return tuple(counts)
    counts = list(markers.zero)  # the same, except that a marker overlapping itself ("==" in "===") counts once
    for i, pattern in enumerate(markers.patterns):
        counts[signal_of[i]] += scan.count(pattern)
    return tuple(counts)


def _scan(text: str, rules: ClassifierRules, read_words: bool, zones: bool = False) -> _Scan:
    """Read one message: token estimate and digits always; keywords and markers when
    `read_words`. With `zones` (the last user message) keywords are read in its instruction
    zones only; a system prompt or an earlier turn is read up to head/tail_chars like markers."""
    raw = text.encode("utf-8")
    tokens, digits, numbers, classes = estimate_encoded(raw, len(text))
    # Might the text hold a run of digits and separators long enough for a card, phone or
    # ID number? Only if it has that many digits, and two pairs of digits at most one
    # character apart (every such number has them), looked up in the estimate's classes.
    has_run = (
        digits >= rules.digit_run_min_digits
        and (b"0000" in classes or b"00!00" in classes or b"00 00" in classes)
        and rules.digit_run_regex.search(raw.translate(rules.digit_run_probe)) is not None
    )
    if not read_words or not text:
        return _Scan(tokens, digits, has_run, {}, b"", 0, 0, rules.markers.empty)
    ascii_only = len(raw) == len(text)
    # Markers (structure: code, lists, math) are read up to head/tail_chars.
    if len(text) > rules.head_chars + rules.tail_chars:
        raw = (text[: rules.head_chars] + "\n" + text[len(text) - rules.tail_chars :]).encode("utf-8")
    counts = _count_markers(b"\n" + raw, rules.markers)
    # Keywords of the question are read in its instruction zones: the first and last
    # focus_chars (all of a short message); what lies between is usually pasted material.
    focus = rules.focus_chars
    if zones and len(text) > 3 * focus:
        raw = (text[:focus] + "\n" + text[len(text) - focus :]).encode("utf-8")
    words = _words_form(raw, ascii_only)
    hits = _keyword_hits(words, rules)
    first = words.split(None, 1)
    return _Scan(tokens, digits, has_run, hits, first[0] if first else b"", numbers, counts[-1], counts[:-1])


# System prompts and earlier turns come back with every request of an app or a
# conversation: remember their scans (a pure function of text and rules, so still
# deterministic). The last user message is new each time and is never cached.
_scan_cached = functools.lru_cache(maxsize=2048)(_scan)


def _scan_context(text: str, rules: ClassifierRules, read_words: bool) -> _Scan:
    if len(text) > _CACHE_MAX_CHARS:
        return _scan(text, rules, read_words)
    return _scan_cached(text, rules, read_words)


# --- hints ---------------------------------------------------------------------------------

_HINT_HEADERS = ("x-gateway-task", "x-gateway-risk", "x-gateway-objective", "x-gateway-latency-budget-ms")


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
_NONE: frozenset[str] = frozenset()


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


def _read_hints(body: Mapping[str, Any], headers: Mapping[str, str], rules: ClassifierRules) -> _Hints:
    metadata = body.get("metadata")
    if not isinstance(metadata, Mapping):
        metadata = None
    if metadata is None and (not headers or not any(name in headers for name in _HINT_HEADERS)):
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


# --- risk ------------------------------------------------------------------------------------

def _digit_runs(text: str, rules: ClassifierRules) -> list[str]:
    """The digit runs of `text` long enough for a detector (see ClassifierRules), each with
    the separator before it, if any: the "(" of "(415) 555-0132", the "+" of "+44 20 ..."."""
    raw = text.encode("utf-8")
    probe = raw.translate(rules.digit_run_probe)
    runs = []
    for m in rules.digit_run_regex.finditer(probe):
        start = m.start()
        if start and probe[start - 1] == 0x31:
            start -= 1
        runs.append(raw[start : m.end()].decode("ascii"))
    return runs


def _detect(det: _Detector, text: str) -> bool:
    for match in det.regex.finditer(text):
        if det.check is None or det.check(match.group()):
            return True
    return False


def _risk(texts: list[str], digits: int, has_run: bool, slots: list[float], hints: _Hints,
          rules: ClassifierRules) -> tuple[int, frozenset[str], str]:
    """PII detectors over everything sent, then sensitive wording, then the client's hint."""
    level = 0
    why: list[str] = []
    pii: set[str] = set()
    all_text = ""
    runs: list[str] | None = None
    longest = 0
    for det in rules.detectors:
        if digits < det.min_digits:
            break  # the rest need even more digits
        if det.run and not has_run:
            continue
        if det.substring is not None:
            for text in texts:
                if det.substring in text:
                    break
            else:
                continue
        if not all_text:
            all_text = "\n".join(texts)
        if det.run:
            if runs is None:
                runs = _digit_runs(all_text, rules)
                longest = max(map(len, runs), default=0)
            if longest < det.run:
                continue
        if det.in_digit_runs:
            found = any(_detect(det, run) for run in runs if len(run) >= det.run)
        else:
            found = _detect(det, all_text)
        if found:
            pii.add(det.name)
            level = max(level, det.level)
            why.append(f"{det.name} detected")
    offset = rules.risk_slot_offset
    for k, (group, group_level, with_pii) in enumerate(rules.risk_groups) if any(slots[offset:]) else ():
        if slots[offset + k]:
            if pii and with_pii is not None:
                group_level = with_pii
            if group_level:
                level = max(level, group_level)
                why.append(f"{group} wording: {RISKS[group_level]}")
    if hints.risk is not None and hints.risk > level:
        level = hints.risk
        why.append(f"raised by hint {hints.risk_param}")
    if not why:
        return 0, _NONE, "no PII or sensitive wording found"
    return level, frozenset(pii), "; ".join(why)


# --- classify --------------------------------------------------------------------------------

def _intent_reason(rules: ClassifierRules, best_index: int, best_score: float, hits: Mapping[bytes, _Entries],
                   context_hits: Mapping[bytes, _Entries], values: list[float]) -> str:
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
    hints = _read_hints(body, headers, rules)

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
            text, image = _content_text(text)
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

    current = _scan(texts[last_user], rules, True, zones=True) if last_user >= 0 else _scan("", rules, False)
    hits = current.hits
    markers = list(current.markers)
    digits_total = current.digits
    has_run = current.has_run
    tokens_system = tokens_context = 0
    context_hits: dict[bytes, _Entries] = {}
    for i, text in enumerate(texts):
        if i == last_user:
            continue
        role = roles[i]
        read_words = role == "user" or role == "system" or role == "developer"
        scan = _scan_context(text, rules, read_words)
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
