"""Reading the text of a request for the classifier: per message a token estimate, digit
counts, keyword hits (in the instruction zones), marker and "?" counts, and the PII
detectors over everything sent. Pure functions of the text and the compiled rules.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Mapping
from operator import itemgetter
from typing import Any, NamedTuple

from .classify_rules import WORDS_FORM, ClassifierRules, Detector, Markers, framed_words_form
from .tokens import estimate_encoded

_FIRST = itemgetter(0)


class Scan(NamedTuple):
    """What the classifier reads from the text of one message."""

    tokens: int
    digits: int
    has_run: bool  # holds a digit run as long as the shortest a PII detector needs
    pii_cue: bool  # has_run, or holds a substring of rules.run_free_substrings: what a PII detector needs
    hits: tuple[int, ...]  # the terms found (indexes into rules.terms), rising
    first_word: bytes  # when no longer than a short question (rules.short_max_tokens), else b""
    numbers: int
    questions: int
    markers: tuple[int, ...]  # in rules.markers.signals order; rules.markers.empty itself when none is found


# Scan(...) runs NamedTuple's __new__, a Python function; tuple.__new__ builds the same
# record in C, on the path of every request.
_new_scan = tuple.__new__
# "0000", "00!00" or "00 00" in the classes of a text (see scan_message), in one search
_DIGIT_PAIRS = re.compile(rb"00[! ]?00")


def content_text(content: Any) -> tuple[str, bool]:
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


def _count_markers(scan: bytes, markers: Markers) -> tuple[int, tuple[int, ...]]:
    """The count of "?" and the marker counts in `scan`, without the automaton: the same,
    except that a marker overlapping itself ("==" in "===") counts once."""
    counts = list(markers.zero)
    signal_of = markers.signal_of
    for i, pattern in enumerate(markers.patterns):
        counts[signal_of[i]] += scan.count(pattern)
    return counts.pop(), tuple(counts)


def _tally(found: list[tuple[int, int, int]], markers: Markers) -> tuple[int, tuple[int, ...]]:
    """The count of "?" and the marker counts of the automaton's matches (a plain loop beats
    Counter and bytes.count in C at any number of matches)."""
    signal_of = markers.signal_of
    counts = list(markers.zero)
    for i, _, _ in found:
        counts[signal_of[i]] += 1
    questions = counts.pop()
    return questions, markers.empty if questions == len(found) else tuple(counts)


def scan_message(text: str, rules: ClassifierRules, read_words: bool, zones: bool = False) -> Scan:
    """Read one message: token estimate and digits always; keywords and markers when
    `read_words`. With `zones` (the last user message) keywords are read in its instruction
    zones only; a system prompt or an earlier turn is read up to head/tail_chars like markers."""
    raw = text.encode("utf-8")
    chars = len(text)
    tokens, digits, numbers, classes = estimate_encoded(raw, chars)
    # Might the text hold a run of digits and separators long enough for a card, phone or
    # ID number? Only if it has that many digits, and two pairs of digits at most one
    # character apart (every such number has them), looked up in the estimate's classes.
    has_run = (
        digits >= rules.digit_run_min_digits
        and _DIGIT_PAIRS.search(classes) is not None
        and rules.digit_run_regex.search(raw.translate(rules.digit_run_probe)) is not None
    )
    pii_cue = has_run
    if not has_run:
        for substring in rules.run_free_substrings:
            if substring in text:
                pii_cue = True
                break
    if not read_words or not text:
        return _new_scan(Scan, (tokens, digits, has_run, pii_cue, (), b"", 0, 0, rules.markers.empty))
    # ASCII text is sliced as bytes: the same bytes as slicing the text and encoding again.
    ascii_only = len(raw) == chars
    # Markers (structure: code, lists, math) are read up to head/tail_chars, after a newline.
    head = rules.head_chars
    tail = rules.tail_chars
    if chars <= head + tail:
        clip = b"\n" + raw
    elif ascii_only:
        clip = b"\n".join((b"", raw[:head], raw[chars - tail :]))
    else:
        clip = ("\n" + text[:head] + "\n" + text[chars - tail :]).encode("utf-8")
    # Every occurrence of every marker counts, so "x^2" counts for both "x^" and "^2"; the
    # count of "?" (the questions signal) comes last.
    # Without a match, the counts are markers.empty itself (callers skip adding it up).
    markers = rules.markers
    if markers.automaton is None:
        questions, counts = _count_markers(clip, markers)
    else:
        found = markers.automaton.find_matches_as_indexes(clip, overlapping=True)
        questions, counts = _tally(found, markers) if found else (0, markers.empty)
    # Keywords of the question are read in its instruction zones: the first and last
    # focus_chars (all of a short message); what lies between is usually pasted material.
    # Context is read where its markers are. Either is framed by newlines for words_form.
    focus = rules.focus_chars
    if not zones or chars <= 3 * focus:
        framed = clip + b"\n"
    elif ascii_only:
        framed = b"\n".join((b"", raw[:focus], raw[chars - focus :], b""))
    else:
        framed = ("\n" + text[:focus] + "\n" + text[chars - focus :] + "\n").encode("utf-8")
    # A term matches whole words: punctuation counts as a space, and the words of a phrase
    # must be separated by a single space or punctuation mark. A term found twice counts
    # once; hits are sorted, so weights add up in one order whatever the hash seed.
    words = framed.translate(WORDS_FORM) if ascii_only else framed_words_form(framed, False)  # (a call less for ASCII)
    if rules.automaton is None:
        hits = tuple(sorted(_find_terms(words, rules)))
    else:
        hits = tuple(sorted(set(map(_FIRST, rules.automaton.find_matches_as_indexes(words, overlapping=True)))))
    # the first word tells a short question (short_question in the rules)
    first = words.split(None, 1) if tokens <= rules.short_max_tokens else None
    return _new_scan(Scan, (tokens, digits, has_run, pii_cue, hits, first[0] if first else b"", numbers, questions, counts))


# System prompts and earlier turns come back with every request of an app or a
# conversation: remember their scans (a pure function of text and rules, so still
# deterministic), for texts up to CACHE_MAX_CHARS (this bounds the cache to ~2048 x 8 KB of
# text). The last user message is new each time and is never cached.
CACHE_MAX_CHARS = 8192
scan_cached = functools.lru_cache(maxsize=2048)(scan_message)


def scan_context(text: str, rules: ClassifierRules, read_words: bool) -> Scan:
    """scan_message of a message of the context, cached when it is not too long."""
    return scan_cached(text, rules, read_words) if len(text) <= CACHE_MAX_CHARS else scan_message(text, rules, read_words)


# --- PII -------------------------------------------------------------------------------------

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


def _detect(det: Detector, text: str) -> bool:
    for match in det.regex.finditer(text):
        if det.check is None or det.check(match.group()):
            return True
    return False


def detect_pii(texts: list[str], digits: int, has_run: bool, rules: ClassifierRules) -> list[Detector]:
    """The detectors that fire on everything sent (`texts`, holding `digits` digits in all,
    `has_run` when a message holds a digit run), in rules.detectors order."""
    fired: list[Detector] = []
    all_text = ""
    runs: list[str] | None = None
    longest = 0
    # without a digit run, only the detectors that need none (usually just the email's)
    for det in rules.detectors if has_run else rules.run_free_detectors:
        if digits < det.min_digits:
            break  # the rest need even more digits
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
            fired.append(det)
    return fired
