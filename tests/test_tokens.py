"""Token estimate and exact counts (cl100k, offline encoding)."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from gateway.tokens import count_messages_tokens, count_tokens, estimate_tokens

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "routing-eval"

SAMPLES = {
    "prose": (
        "The committee reviewed the quarterly results and agreed to postpone the product launch "
        "until the supply issues are resolved. Several members raised concerns about the budget."
    ),
    "question": "What are your opening hours on Sunday, and do you offer free parking nearby?",
    "numbers": "Invoice 2024-0117: 3 x $19.99, 12 x $4.50, shipping $7.25, total $121.22 (VAT 20%).",
    "code": (
        "```python\ndef fib(n: int) -> int:\n    a, b = 0, 1\n    for _ in range(n):\n"
        "        a, b = b, a + b\n    return a\n```\nWhy is this faster than the recursive version?"
    ),
    "markdown": (
        "## Plan\n\n1. Collect the logs from every node.\n2. Group errors by service.\n"
        "3. Rank services by error rate.\n\n- Owner: SRE team\n- Deadline: Friday"
    ),
    "accents": "Le café est fermé le dimanche, mais la boulangerie à côté ouvre à 7 h.",
}

# Stated tolerance (see gateway/tokens.py): single texts of this size within 25%, and the
# sum over all samples within 10%.
PER_TEXT_TOLERANCE = 0.25
TOTAL_TOLERANCE = 0.10


@pytest.mark.parametrize("name", sorted(SAMPLES))
def test_estimate_is_within_tolerance_of_exact(name: str) -> None:
    text = SAMPLES[name]
    exact = count_tokens(text)
    assert abs(estimate_tokens(text) - exact) <= PER_TEXT_TOLERANCE * exact


def test_estimate_total_over_samples() -> None:
    exact = sum(count_tokens(t) for t in SAMPLES.values())
    estimate = sum(estimate_tokens(t) for t in SAMPLES.values())
    assert abs(estimate - exact) <= TOTAL_TOLERANCE * exact


def test_estimate_of_empty_text_is_zero_and_grows_with_text() -> None:
    assert estimate_tokens("") == 0
    assert estimate_tokens("hi") >= 1
    assert estimate_tokens(SAMPLES["prose"] * 10) > 9 * estimate_tokens(SAMPLES["prose"])


@pytest.mark.skipif(not DATA.is_dir(), reason="routing-eval data not beside the repo")
def test_estimate_on_routing_eval_prompts_matches_documented_error() -> None:
    with open(DATA / "gsm8k_responses.csv", encoding="utf-8", newline="") as f:
        prompts = [row[0] for row in list(csv.reader(f))[1:400]]
    with open(DATA / "mt_bench_questions.jsonl", encoding="utf-8") as f:
        prompts += [t for line in f for t in json.loads(line)["turns"]]
    errors = [(estimate_tokens(p) - count_tokens(p)) / count_tokens(p) for p in prompts]
    assert sum(abs(e) for e in errors) / len(errors) < 0.08  # documented: about 5-6%
    assert abs(sum(errors) / len(errors)) < 0.05  # no systematic bias


def test_count_tokens_exact() -> None:
    assert count_tokens("") == 0
    assert count_tokens("hello world") == 2
    # special-token text from a user is plain text, never a control token
    assert count_tokens("<|endoftext|>") > 1


def test_count_messages_tokens_adds_documented_framing() -> None:
    # 3 per message + role + content, 3 to prime the reply
    assert count_messages_tokens([{"role": "user", "content": "Hello"}]) == 3 + 1 + 1 + 3
    two = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "hello world"}]
    expected = 3 + (3 + count_tokens("system") + count_tokens("Be brief.")) + (3 + 1 + 2)
    assert count_messages_tokens(two) == expected


def test_count_messages_tokens_counts_names_parts_and_tool_calls() -> None:
    named = [{"role": "user", "name": "alice", "content": "hi"}]
    assert count_messages_tokens(named) == count_messages_tokens([{"role": "user", "content": "hi"}]) + 1 + count_tokens("alice")
    parts = [{"role": "user", "content": [{"type": "text", "text": "describe this"},
                                          {"type": "image_url", "image_url": {"url": "https://x/y.png"}}]}]
    assert count_messages_tokens(parts) == 3 + 1 + count_tokens("describe this") + 3
    call = [{"role": "assistant", "content": None, "tool_calls": [
        {"id": "c1", "type": "function", "function": {"name": "get_weather", "arguments": '{"city":"Paris"}'}}]}]
    assert count_messages_tokens(call) == 3 + 1 + count_tokens("get_weather") + count_tokens('{"city":"Paris"}') + 3


def _numbers_reference(text: str) -> int:
    # runs of ASCII digits once everything but digits, ASCII punctuation and whitespace is
    # dropped (so "12a34" is one number, "1.5" two)
    import re
    import string

    keep = set((string.digits + string.punctuation + " \t\n\r\x0b\x0c").encode())
    kept = bytes(b for b in text.encode("utf-8") if b in keep)
    return len(re.findall(rb"[0-9]+", kept))


@pytest.mark.parametrize("text", [
    "", "7", "12a34", "1.5 and 2,000", "Invoice 2024-0117: 3 x $19.99", "x1y2z3", "  42  ", "٣ and 3",
    "phone (415) 555-0132, card 4111 1111 1111 1111", "no digits at all", "0\n0\t0!0", "café 12€ 3",
])
def test_estimate_encoded_counts_numbers_as_digit_runs(text: str) -> None:
    from gateway.tokens import estimate_encoded

    raw = text.encode("utf-8")
    _, digits, numbers, classes = estimate_encoded(raw, len(text))
    assert numbers == _numbers_reference(text)
    assert digits == sum(c in "0123456789" for c in text)
    assert set(classes) <= set(b"0! ")


def test_estimate_encoded_numbers_on_any_text() -> None:
    from hypothesis import given, settings
    from hypothesis import strategies as st

    from gateway.tokens import estimate_encoded

    @settings(max_examples=300, deadline=None)
    @given(st.text(alphabet=st.sampled_from(list("0123456789 .,-!\n\tabcZ€é")), max_size=60))
    def check(text: str) -> None:
        assert estimate_encoded(text.encode("utf-8"), len(text))[2] == _numbers_reference(text)

    check()
