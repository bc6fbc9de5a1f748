"""Deterministic reply text: same prompt, same words, every time.

One whitespace-separated word is one token, for usage counting and for streaming (one
word per chunk), so a test can predict exact counts.
"""

from __future__ import annotations

from typing import Iterable

_OPENING = ("Simulated", "reply", "about")
_TOPIC_WORDS = 5
_FILLER = (
    "this", "answer", "comes", "from", "the", "local", "simulator", "and",
    "carries", "no", "real", "meaning", "beyond", "testing", "the", "gateway",
)


def count_words(texts: Iterable[str]) -> int:
    """The cheap deterministic prompt token count: words across all texts."""
    return sum(len(text.split()) for text in texts)


def reply_words(topic: str, length: int) -> list[str]:
    """The full natural answer: an opening, the topic's first words, then filler."""
    words = list(_OPENING)
    words.extend(topic.split(None, _TOPIC_WORDS)[:_TOPIC_WORDS] or ["nothing"])
    index = 0
    while len(words) < length:
        words.append(_FILLER[index % len(_FILLER)])
        index += 1
    return words[:length]


def continuation(words: list[str], partial: str | None) -> tuple[list[str], bool]:
    """The words still to say after a partial answer, and whether a space must lead.

    The partial answer is taken as the first k words of the same answer, so partial +
    continuation reassembles the uninterrupted answer.
    """
    if not partial:
        return words, False
    already = len(partial.split())
    return words[already:], not partial[-1].isspace()


def to_pieces(words: list[str], leading_space: bool = False) -> list[str]:
    """Stream fragments, each word but the first carrying its leading space."""
    pieces = [f" {word}" for word in words]
    if pieces and not leading_space:
        pieces[0] = words[0]
    return pieces


def split_pieces(text: str) -> list[str]:
    """Fragments of an already formed text (JSON output), cut at single spaces."""
    if not text:
        return []
    words = text.split(" ")
    pieces = [words[0]] + [f" {word}" for word in words[1:]]
    return [piece for piece in pieces if piece]


def apply_stop(pieces: list[str], stops: tuple[str, ...]) -> tuple[list[str], str | None]:
    """Cut the text before the earliest stop sequence; the matched sequence or None."""
    if not stops or not pieces:
        return pieces, None
    text = "".join(pieces)
    cut, matched = len(text), None
    for stop in stops:
        at = text.find(stop) if stop else -1
        if 0 <= at < cut:
            cut, matched = at, stop
    if matched is None:
        return pieces, None
    kept: list[str] = []
    used = 0
    for piece in pieces:
        if used + len(piece) <= cut:
            kept.append(piece)
            used += len(piece)
            continue
        if cut > used:
            kept.append(piece[: cut - used])
        break
    return kept, matched
