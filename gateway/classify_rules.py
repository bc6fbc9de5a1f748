"""Classifier rules: validate catalog/classifier.yaml (or a policy's `classifier:` mapping)
against its schema and cross-references, and precompile it into `ClassifierRules`: keyword
and marker automata, signal and feature tables, PII detectors, tier bounds, hint values.
"""

from __future__ import annotations

import functools
import importlib.resources
import json
import math
import re
import string
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import jsonschema
import yaml

try:  # Aho-Corasick automata (Rust): one pass finds every keyword or marker
    import ahocorasick_rs
except ImportError:  # pragma: no cover - a declared dependency; without it a slower path
    ahocorasick_rs = None

from .classify_checks import CHECKS

TIERS = ("trivial", "simple", "standard", "complex", "expert")
RISKS = ("low", "medium", "high", "regulated")
FORMATS = ("text", "json", "tools")
LATENCY_CLASSES = ("interactive", "batch")

# Signals computed for every request, in the order classify() lists them; keyword groups
# ("kw.<group>") and markers ("marker.<name>") follow in the order of the rules.
BASE_SIGNALS = (
    "tokens_current", "tokens_context", "tokens_system", "tokens_total", "turns",
    "assistant_turns", "tool_results", "revision", "tools", "json_schema", "json_object",
    "vision", "max_tokens", "questions", "numbers", "short_question", "numeric_question",
)

_FOLD = frozenset(string.punctuation.encode() + b"\t\n\r\x0b\x0c")
# words_form's table: all it does to ASCII text, which callers may translate with it directly
WORDS_FORM = bytes(b + 32 if 0x41 <= b <= 0x5A else 0x20 if b in _FOLD else b for b in range(256))
_TYPOGRAPHIC_QUOTES = ("\u2019".encode(), "\u2018".encode())


def words_form(raw: bytes, ascii_only: bool) -> bytes:
    """The form keywords are matched in, the rules' terms and the scanned text alike: UTF-8,
    ASCII letters lower-cased (others keep their case), punctuation, typographic apostrophes
    and whitespace as spaces, a space at each end."""
    return framed_words_form(b" " + raw + b" ", ascii_only)


def framed_words_form(framed: bytes, ascii_only: bool) -> bytes:
    """words_form of a text that the caller framed with whitespace at each end (as a newline,
    it comes out as the space): saves copying the text once more."""
    if not ascii_only:
        for quote in _TYPOGRAPHIC_QUOTES:
            framed = framed.replace(quote, b" ")
    return framed.translate(WORDS_FORM)


@dataclass(frozen=True)
class Detector:
    name: str
    regex: re.Pattern[str]
    substring: str | None
    min_digits: int
    check: Callable[[str], bool] | None
    level: int
    in_digit_runs: bool  # scope digit_runs: search only the digit runs, not the whole text
    run: int  # the text must hold a digit run at least this long (0: no such need)


@dataclass(frozen=True)
class Markers:
    signals: tuple[str, ...]  # "marker.<name>", in count order
    zero: tuple[int, ...]  # one count per signal, then the count of "?" (the questions signal)
    empty: tuple[int, ...]  # one zero per signal
    patterns: tuple[bytes, ...]  # every marker substring as UTF-8, in lower, upper and title case
    signal_of: tuple[int, ...]  # pattern index -> signal index
    automaton: Any  # ahocorasick_rs.BytesAhoCorasick over `patterns`, or None without the package


def _compile_markers(raw: Mapping[str, list[str]]) -> Markers:
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
    return Markers(tuple(f"marker.{name}" for name in raw), (0,) * (len(raw) + 1), (0,) * len(raw),
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
    markers: Markers
    slot_names: tuple[str, ...]  # keyword accumulators: intents, then kw groups, then risk groups
    slot_count: int
    kw_slot_offset: int
    risk_slot_offset: int
    terms: tuple[bytes, ...]  # " term ", in automaton pattern order
    term_entries: Mapping[bytes, tuple[tuple[int, float], ...]]  # " term " -> (slot, weight) pairs
    term_slots: tuple[frozenset[int], ...]  # index -> the slots the term feeds
    term_order: Mapping[bytes, int]  # " term " -> its index in `terms`
    term_weights: tuple[tuple[tuple[int, float], ...], ...]  # index -> (slot, weight) pairs
    # index -> (slot, context_weight * weight) pairs: what the term adds when only the context has it
    context_term_weights: tuple[tuple[tuple[int, float], ...], ...]
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
    # The slots classify() adds up: the keyword slots (slot_names), then the complexity
    # logit, which starts at the bias; the intent slots become the intent scores.
    slot_start: tuple[float, ...]
    score_slot: int  # the complexity logit's slot
    signal_indexes: range  # over signal_names
    # What a nonzero signal adds, per signal index: (slot, cap, scale, log) rows that add
    # scale * f(min(value, cap)), f = log1p or identity: one per intent it feeds (cap 1,
    # scale its weight), then one per complexity feature (scale weight/f(cap)) in the rules'
    # order. A request visits only the rows of its nonzero signals, rising by signal index,
    # so every sum adds up in one order.
    signal_rows: tuple[tuple[tuple[int, float, float, bool], ...], ...]
    feature_rows: tuple[tuple[int, float, float, bool, str], ...]  # (signal index, cap, scale, log, name), in that order
    intent_min_score: float
    default_intent: str
    kw_groups: tuple[str, ...]
    revision_slot: int
    revision_min: float
    bias: float
    tier_floors: tuple[float, ...]  # the lower bounds of TIERS[1:], rising
    detectors: tuple[Detector, ...]  # fewest min_digits first
    run_free_detectors: tuple[Detector, ...]  # those that need no digit run, in the same order
    # the substrings they need ("" for one that needs none): without a digit run or one of
    # these in some message, no detector can fire
    run_free_substrings: tuple[str, ...]
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
    key = b" ".join(words_form(term.lower().encode(), term.isascii()).split())
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
        detectors.append(Detector(name, regex, req.get("substring"), int(req.get("min_digits", 0)),
                                   CHECKS.get(spec.get("check", "")), RISKS.index(spec["level"]),
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

    detectors.sort(key=lambda d: d.min_digits)
    score_slot = len(slot_names)
    feature_rows = [(k, cap, weight / denom, is_log, name) for k in range(len(signal_names))
                    for i, cap, weight, is_log, denom, name in features if i == k]
    signal_rows = tuple(
        tuple((i, 1.0, w, False) for i, sigs in enumerate(intent_signals) for s, w in sigs if s == k)
        + tuple((score_slot, cap, scale, is_log) for i, cap, scale, is_log, _ in feature_rows if i == k)
        for k in range(len(signal_names)))
    context_weight = float(raw["scan"]["context_weight"])
    bias = float(raw["complexity"]["bias"])

    sq = raw["short_question"]
    return ClassifierRules(
        raw=raw,
        head_chars=raw["scan"]["head_chars"],
        tail_chars=raw["scan"]["tail_chars"],
        context_weight=context_weight,
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
        term_slots=tuple(frozenset(s for s, _ in term_entries[t]) for t in terms),
        term_order={t: i for i, t in enumerate(terms)},
        term_weights=tuple(term_entries[t] for t in terms),
        context_term_weights=tuple(tuple((slot, context_weight * w) for slot, w in term_entries[t]) for t in terms),
        automaton=_automaton(terms),
        vocabulary=frozenset(single) | frozenset(phrases),
        single_terms=single,
        phrase_terms={k: tuple(v) for k, v in phrases.items()},
        signal_names=signal_names,
        intent_range=range(len(intents)),
        intents=intents,
        intent_priors={i: float(raw["intents"][i]["prior"]) for i in intents},
        intent_signals=tuple(intent_signals),
        slot_start=(0.0,) * len(slot_names) + (bias,),
        score_slot=score_slot,
        signal_indexes=range(len(signal_names)),
        signal_rows=signal_rows,
        feature_rows=tuple(feature_rows),
        intent_min_score=float(sel["min_score"]),
        default_intent=sel["default"],
        kw_groups=kw_groups,
        revision_slot=len(intents) + kw_groups.index(rev["group"]),
        revision_min=float(rev["min_score"]),
        bias=bias,
        tier_floors=tuple(float(tiers[t]) for t in TIERS[1:]),
        detectors=tuple(detectors),
        run_free_detectors=tuple(d for d in detectors if not d.run),
        run_free_substrings=tuple(dict.fromkeys(d.substring or "" for d in detectors if not d.run)),
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


# Patterns the words form never holds (it has no upper-case ASCII letter), added after the
# terms: with them the patterns start with four different bytes, not only with the space,
# and the automaton does without its start-byte prefilter, which on text (a space before
# every word) calls memchr once per word and costs more than it skips: the search takes a
# quarter fewer instructions. They never match, so every match is a term.
_NO_PREFILTER = (b"A", b"B", b"C")


def _automaton(terms: tuple[bytes, ...]) -> Any:
    # One pass over the text finds every term (~3x faster than splitting it into words);
    # without the package, classify falls back to a word split with the same results.
    if ahocorasick_rs is None:
        return None
    return ahocorasick_rs.BytesAhoCorasick([*terms, *_NO_PREFILTER], implementation=ahocorasick_rs.Implementation.DFA)


@functools.cache
def load_default_rules() -> ClassifierRules:
    """The rules shipped in catalog/classifier.yaml (compiled once per process)."""
    text = importlib.resources.files("catalog").joinpath("classifier.yaml").read_text("utf-8")
    return compile_rules(yaml.safe_load(text))

