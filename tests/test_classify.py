"""The request classifier on requests a platform team would write, and its rules."""

from __future__ import annotations

import copy
from typing import Any

import pytest
import yaml

from gateway.classify import (
    Classification,
    ClassifierRules,
    HintError,
    classify,
    compile_rules,
    load_default_rules,
)
from gateway.tokens import count_messages_tokens

TIER_RANK = {t: i for i, t in enumerate(("trivial", "simple", "standard", "complex", "expert"))}


@pytest.fixture(scope="module")
def rules() -> ClassifierRules:
    return load_default_rules()


def user(text: str) -> dict[str, Any]:
    return {"role": "user", "content": text}


def body(*messages: dict[str, Any], **extra: Any) -> dict[str, Any]:
    return {"model": "auto", "messages": list(messages), **extra}


LEGAL = (
    "Analyze the following indemnification clause from our supplier contract and compare the "
    "liability exposure under New York law with the exposure under English law. Walk me through "
    "the trade-offs step by step, identify ambiguous terms, and justify which redline you would "
    "propose.\n\n"
    + "The Supplier shall indemnify, defend and hold harmless the Customer from and against any and "
    "all losses, damages, liabilities, costs and expenses arising out of any third-party claim "
    "relating to the Supplier's breach of its obligations, negligence or wilful misconduct, save "
    "to the extent caused by the Customer's own breach. " * 12
)

CODE_REVIEW = body(
    {"role": "system", "content": "You are a senior reviewer. Use the tools to run tests."},
    user("Review this function for bugs and edge cases, then refactor it:\n```python\n"
         "def merge(intervals):\n    intervals.sort()\n    out = []\n    for s, e in intervals:\n"
         "        if out and s <= out[-1][1]:\n            out[-1][1] = max(out[-1][1], e)\n"
         "        else:\n            out.append([s, e])\n    return out\n```"),
    tools=[{"type": "function", "function": {"name": "run_tests", "description": "Run the unit tests",
                                             "parameters": {"type": "object", "properties": {}}}}],
)

EXTRACTION = body(
    user("Extract the company name, invoice number and total from this text: ACME Ltd invoice "
         "INV-2291, total due EUR 1,240.00 by 30 June."),
    response_format={"type": "json_schema", "json_schema": {"name": "invoice", "schema": {
        "type": "object", "properties": {"company": {"type": "string"}, "number": {"type": "string"},
                                         "total": {"type": "number"}}}}},
)

# name, request, expected labels, (lowest tier, highest tier)
CASES = [
    ("faq", body(user("What are your opening hours on Sunday?")),
     {"intent": "faq", "risk": "low", "format": "text"}, ("trivial", "simple")),
    ("caption", body(user("Write a one-line caption for a photo of a dog on a beach.")),
     {"intent": "creative", "risk": "low"}, ("trivial", "simple")),
    ("legal analysis", body(user(LEGAL)),
     {"intent": "reasoning", "risk": "medium"}, ("complex", "expert")),
    ("code review with tools", CODE_REVIEW,
     {"intent": "code", "format": "tools", "needs": frozenset({"tools"})}, ("complex", "expert")),
    ("json extraction", EXTRACTION,
     {"intent": "extract", "format": "json", "needs": frozenset({"json_schema"})}, ("simple", "complex")),
    ("translation", body(user("Translate into French: the meeting moved to Thursday.")),
     {"intent": "translate"}, ("trivial", "standard")),
    ("summary", body(user("Summarize the key points of this memo in three bullets:\n" + "Sales rose in the north. " * 30)),
     {"intent": "summarize"}, ("simple", "standard")),
    ("math", body(user("Solve for x and show your work step by step: 3x^2 - 12x + 9 = 0")),
     {"intent": "math"}, ("complex", "expert")),
    ("greeting", body(user("hi there, thanks for the help yesterday!")),
     {"intent": "chat"}, ("trivial", "simple")),
]


@pytest.mark.parametrize("name,request_body,expected,tiers", CASES, ids=[c[0] for c in CASES])
def test_typical_requests(rules: ClassifierRules, name: str, request_body: dict, expected: dict, tiers: tuple[str, str]) -> None:
    c = classify(request_body, {}, rules)
    for label, value in expected.items():
        assert getattr(c, label) == value, (label, c.reasons)
    assert TIER_RANK[tiers[0]] <= TIER_RANK[c.tier] <= TIER_RANK[tiers[1]], (c.tier, c.score, c.reasons["tier"])
    assert 0.0 <= c.score <= 1.0
    assert set(c.reasons) >= {"tier", "intent", "risk", "format", "latency_class", "input_tokens", "output_tokens"}


def test_complexity_orders_requests(rules: ClassifierRules) -> None:
    faq = classify(CASES[0][1], {}, rules).score
    caption = classify(CASES[1][1], {}, rules).score
    legal = classify(CASES[2][1], {}, rules).score
    review = classify(CODE_REVIEW, {}, rules).score
    assert max(faq, caption) < min(legal, review)


# PII: text, detector expected to fire (None: none), risk
PII_CASES = [
    ("Please charge my card 4111 1111 1111 1111 for the order.", "payment_card", "high"),
    ("Card number 4111-1111-1111-1111, expiry 12/27.", "payment_card", "high"),
    ("Please charge my card 4111 1111 1111 1112 for the order.", None, "low"),  # fails Luhn
    ("Wire it to IBAN DE89 3704 0044 0532 0130 00 today.", "iban", "high"),
    ("Wire it to IBAN GB29NWBK60161331926819 today.", "iban", "high"),
    ("Wire it to IBAN DE89 3704 0044 0532 0130 01 today.", None, "low"),  # fails mod 97
    ("My SSN is 536-22-1234, can you fill in the form?", "us_ssn", "high"),
    ("Reference 000-12-3456 is on the form.", None, "low"),  # area 000 is never issued
    ("Contact jane.doe@example.com about the invoice.", "email", "medium"),
    ("Call me at (415) 555-0132 after lunch.", "phone", "medium"),
    ("The year 2024 had 366 days and 12 months; 1,234,567 people came.", None, "low"),
    ("Our London office: +44 20 7946 0958.", "phone", "medium"),
    ("Her National Insurance number is AB 12 34 56 C.", "uk_nino", "high"),
    ("@dataclass\nclass Order:\n    id: str  # see docs@internal", None, "low"),
    ("Shipped 2024-01-15, parcel 10002345, invoice INV-2291.", None, "low"),
]


@pytest.mark.parametrize("text,detector,risk", PII_CASES, ids=[t[:28] for t, _, _ in PII_CASES])
def test_pii_detectors(rules: ClassifierRules, text: str, detector: str | None, risk: str) -> None:
    c = classify(body(user(text)), {}, rules)
    assert c.pii == (frozenset({detector}) if detector else frozenset()), c.reasons["risk"]
    assert c.risk == risk


def test_pii_in_earlier_assistant_turn_counts(rules: ClassifierRules) -> None:
    c = classify(body(user("What card is on file?"), {"role": "assistant", "content": "It is 4111 1111 1111 1111."},
                      user("Thanks.")), {}, rules)
    assert c.risk == "high" and "payment_card" in c.pii


def test_health_wording_with_pii_is_regulated(rules: ClassifierRules) -> None:
    c = classify(body(user("Patient jane.doe@example.com, diagnosis: type 2 diabetes. Draft a follow-up letter.")), {}, rules)
    assert c.risk == "regulated", c.reasons["risk"]
    assert classify(body(user("What are common symptoms of the flu?")), {}, rules).risk == "medium"


# --- hints ---------------------------------------------------------------------------------

def test_task_hint_by_header_and_metadata(rules: ClassifierRules) -> None:
    plain = body(user("Hello there, how is it going?"))
    assert classify(plain, {"x-gateway-task": "Translate"}, rules).intent == "translate"
    with_meta = dict(plain, metadata={"gateway_task": "summarize"})
    c = classify(with_meta, {}, rules)
    assert c.intent == "summarize" and "metadata.gateway_task" in c.reasons["intent"]
    # a header wins over metadata
    assert classify(with_meta, {"x-gateway-task": "code"}, rules).intent == "code"


def test_risk_hint_raises_but_never_lowers(rules: ClassifierRules) -> None:
    assert classify(body(user("hello")), {"x-gateway-risk": "high"}, rules).risk == "high"
    card = body(user("card 4111 1111 1111 1111"), metadata={"gateway_risk": "low"})
    assert classify(card, {}, rules).risk == "high"


def test_objective_and_latency_hints(rules: ClassifierRules) -> None:
    c = classify(body(user("hello")), {"x-gateway-objective": "cost", "x-gateway-latency-budget-ms": "120000"}, rules)
    assert c.objective == "cost_speed"
    assert c.latency_budget_ms == 120000 and c.latency_class == "batch"
    c = classify(body(user("hello"), metadata={"gateway_objective": "quality", "gateway_latency_budget_ms": "800"}), {}, rules)
    assert (c.objective, c.latency_budget_ms, c.latency_class) == ("quality", 800, "interactive")
    streamed = classify(body(user("hello"), stream=True), {"x-gateway-latency-budget-ms": "120000"}, rules)
    assert streamed.latency_class == "interactive" and "streaming" in streamed.needs


@pytest.mark.parametrize("headers,metadata,param", [
    ({"x-gateway-risk": "extreme"}, None, "x-gateway-risk"),
    ({"x-gateway-task": "dance"}, None, "x-gateway-task"),
    ({"x-gateway-objective": "fastest"}, None, "x-gateway-objective"),
    ({"x-gateway-latency-budget-ms": "soon"}, None, "x-gateway-latency-budget-ms"),
    ({"x-gateway-latency-budget-ms": "0"}, None, "x-gateway-latency-budget-ms"),
    ({}, {"gateway_latency_budget_ms": "-5"}, "metadata.gateway_latency_budget_ms"),
    ({}, {"gateway_risk": "severe"}, "metadata.gateway_risk"),
    ({}, {"gateway_task": 7}, "metadata.gateway_task"),
])
def test_invalid_hints_raise_hint_error(rules: ClassifierRules, headers: dict, metadata: dict | None, param: str) -> None:
    request = body(user("hello"))
    if metadata is not None:
        request["metadata"] = metadata
    with pytest.raises(HintError) as info:
        classify(request, headers, rules)
    assert info.value.param == param
    assert param in str(info.value)


# --- conversation, needs, tokens -------------------------------------------------------------

def test_revision_request_raises_complexity(rules: ClassifierRules) -> None:
    history = [user("Write a SQL query that returns the top 5 customers by revenue last month."),
               {"role": "assistant", "content": "SELECT name FROM customers ORDER BY revenue DESC LIMIT 5;"}]
    fine = classify(body(*history, user("Great, now add the country column too.")), {}, rules)
    reask = classify(body(*history, user("That's wrong, it ignores last month. Try again.")), {}, rules)
    assert reask.score > fine.score
    assert "revision" in reask.reasons["tier"]
    # the same words with no answer before them are not a re-ask
    first = classify(body(user("That's wrong, it ignores last month. Try again.")), {}, rules)
    assert "revision" not in first.reasons["tier"]


def test_needs_and_requested_output(rules: ClassifierRules) -> None:
    request = body({"role": "user", "content": [
        {"type": "text", "text": "What is in this picture?"},
        {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}}]},
        stream=True, max_completion_tokens=300)
    c = classify(request, {}, rules)
    assert c.needs == frozenset({"vision", "streaming"})
    assert c.output_tokens == 300 and c.reasons["output_tokens"] == "max_completion_tokens"
    assert classify(body(user("hi"), max_tokens=42), {}, rules).output_tokens == 42


def test_exact_token_count_near_a_context_window(rules: ClassifierRules) -> None:
    short = classify(body(user("hello " * 50)), {}, rules)
    assert not short.input_tokens_exact
    near_8k = body(user("The quick brown fox jumps over the lazy dog. " * 800))  # ~8,000 tokens
    c = classify(near_8k, {}, rules)
    assert c.input_tokens_exact
    assert c.input_tokens == count_messages_tokens(near_8k["messages"])


def test_deterministic_and_does_not_mutate_input(rules: ClassifierRules) -> None:
    request = copy.deepcopy(CODE_REVIEW)
    snapshot = copy.deepcopy(request)
    first = classify(request, {}, rules)
    again = [classify(copy.deepcopy(snapshot), {}, rules) for _ in range(3)]
    assert all(a == first for a in again)
    assert request == snapshot


def test_classification_stays_constructible_with_the_contract_fields() -> None:
    c = Classification(tier="simple", score=0.3, intent="chat", risk="low", format="text",
                       latency_class="interactive", input_tokens=10, output_tokens=20)
    assert c.needs == frozenset() and c.reasons == {} and not c.input_tokens_exact


# --- rules -------------------------------------------------------------------------------------

def default_raw() -> dict[str, Any]:
    return copy.deepcopy(load_default_rules().raw)


def broken(edit) -> dict[str, Any]:
    raw = default_raw()
    edit(raw)
    return raw


@pytest.mark.parametrize("edit,path", [
    (lambda r: r["complexity"]["features"]["rigor"].update(cap=-1), "complexity.features.rigor.cap"),
    (lambda r: r["complexity"]["features"]["rigor"].update(signal="kw.nope"), "complexity.features.rigor.signal"),
    (lambda r: r["complexity"].pop("tiers"), "complexity"),
    (lambda r: r["complexity"]["tiers"].update(complex=0.3), "complexity.tiers"),
    (lambda r: r["risk"]["detectors"]["email"].update(pattern="([a-z"), "risk.detectors.email.pattern"),
    (lambda r: r["risk"]["detectors"]["email"].update(level="severe"), "risk.detectors.email.level"),
    (lambda r: r["intents"]["chat"]["keywords"].update({True: 1}), "intents.chat.keywords"),
    (lambda r: r["intents"]["code"]["signals"].update({"marker.nope": 1}), "intents.code.signals.marker.nope"),
    (lambda r: r["intent_selection"].update(default="gossip"), "intent_selection.default"),
    (lambda r: r["output_tokens"]["by_intent"].pop("code"), "output_tokens.by_intent"),
    (lambda r: r["keyword_groups"]["analysis"].update({"...": 1}), "keyword_groups.analysis"),
    (lambda r: r["scan"].update(context_weight="half"), "scan.context_weight"),
    (lambda r: r["hints"]["objective_aliases"].update(cheap="free"), "hints.objective_aliases.cheap"),
    (lambda r: r["risk"]["detectors"]["phone"]["requires"].pop("run"), "risk.detectors.phone.requires.run"),
    (lambda r: r["markers"].update(code_fence=[]), "markers.code_fence"),
    (lambda r: r.update(extra=1), "(root)"),
    (lambda r: r["complexity"].update(bias=-1e308), "complexity.bias"),
    (lambda r: r["complexity"]["features"]["rigor"].update(weight=1e6), "complexity.features.rigor.weight"),
])
def test_compile_rules_names_the_broken_path(edit, path: str) -> None:
    with pytest.raises(ValueError) as info:
        compile_rules(broken(edit))
    assert f"classifier rules: {path}:" in str(info.value)


def test_rules_are_data(rules: ClassifierRules) -> None:
    # a platform team can change what counts as code by editing the rules alone
    raw = default_raw()
    raw["intents"]["code"]["keywords"]["flux capacitor"] = 5.0
    custom = compile_rules(raw)
    request = body(user("Please tune the flux capacitor settings."))
    assert classify(request, {}, custom).intent == "code"
    assert classify(request, {}, rules).intent != "code"
    assert load_default_rules() is rules  # compiled once


def test_default_rules_file_matches_loaded_rules(rules: ClassifierRules) -> None:
    import importlib.resources

    text = importlib.resources.files("catalog").joinpath("classifier.yaml").read_text("utf-8")
    assert yaml.safe_load(text) == rules.raw


# --- mechanics behind the speed budget ---------------------------------------------------------

MIXED = [
    body(user(LEGAL)),
    CODE_REVIEW,
    EXTRACTION,
    body({"role": "system", "content": "You are a translator. Translate into German."},
         user("Step-by-step: what's the trade-off? 1) cost 2) speed\n- item\n## Heading\n| a | b |")),
    body(user("Solve: \\frac{1}{2} + x^2 = 3, f(x) = 2x; compare   both... then prove it ≤ 4 √2")),
]


def test_keywords_and_markers_match_the_same_without_the_automata(rules: ClassifierRules) -> None:
    import dataclasses

    plain = dataclasses.replace(rules, automaton=None, markers=dataclasses.replace(rules.markers, automaton=None))
    for request in MIXED:
        fast, slow = classify(request, {}, rules), classify(request, {}, plain)
        assert (fast.score, fast.intent, fast.tier, dict(fast.reasons)) == (slow.score, slow.intent, slow.tier, dict(slow.reasons))


def test_classification_record_equals_the_constructed_one(rules: ClassifierRules) -> None:
    import dataclasses

    c = classify(CODE_REVIEW, {}, rules)
    rebuilt = Classification(**{f.name: getattr(c, f.name) for f in dataclasses.fields(Classification)})
    assert c == rebuilt and c.__dict__.keys() == rebuilt.__dict__.keys()
    with pytest.raises(dataclasses.FrozenInstanceError):
        c.tier = "expert"  # type: ignore[misc]


def test_reasons_read_as_a_plain_mapping(rules: ClassifierRules) -> None:
    c = classify(CODE_REVIEW, {"x-gateway-objective": "quality"}, rules)
    reasons = dict(c.reasons)
    assert reasons["tier"].startswith("score ") and "code" in reasons["intent"]
    assert reasons["objective"] == "hint x-gateway-objective"
    assert len(c.reasons) == len(reasons) and "tier" in c.reasons


def test_same_labels_under_another_hash_seed(rules: ClassifierRules) -> None:
    import json
    import os
    import subprocess
    import sys

    script = (
        "import json, sys\n"
        "from gateway.classify import classify, load_default_rules\n"
        "out = [[c.score, c.intent, c.tier, c.risk, dict(c.reasons)] for c in\n"
        "       (classify(b, {}, load_default_rules()) for b in json.load(sys.stdin))]\n"
        "print(json.dumps(out))\n"
    )
    env = dict(os.environ, PYTHONHASHSEED="12345")
    done = subprocess.run([sys.executable, "-c", script], input=json.dumps(MIXED), capture_output=True,
                          text=True, env=env, cwd=os.path.dirname(os.path.dirname(__file__)), check=True)
    here = [[c.score, c.intent, c.tier, c.risk, dict(c.reasons)] for c in (classify(b, {}, rules) for b in MIXED)]
    assert json.loads(done.stdout) == here


def test_context_counts_less_than_the_question(rules: ClassifierRules) -> None:
    # the system prompt frames the request: it can decide the intent when the question is bare
    framed = body({"role": "system", "content": "You translate customer emails into English."}, user("Bonjour, merci."))
    assert classify(framed, {}, rules).intent == "translate"
    # but wording in the last user message outweighs the same wording in the context
    asked = classify(body(user("Prove that the algorithm is optimal, step by step.")), {}, rules)
    in_context = classify(body({"role": "system", "content": "Prove that the algorithm is optimal, step by step."},
                               user("Go ahead.")), {}, rules)
    assert asked.score > in_context.score


def test_pasted_material_in_the_middle_of_a_long_prompt_is_not_read_for_keywords(rules: ClassifierRules) -> None:
    filler = "The quarterly figures were in line with the plan and the team met every deadline. " * 60
    prompt = "Give me a two-line summary of this status report.\n\n" + filler + " prove theorem lemma " + filler
    c = classify(body(user(prompt)), {}, rules)
    assert c.intent == "summarize"
    assert "rigor" not in c.reasons["tier"]


def test_card_number_in_tool_call_arguments_is_found(rules: ClassifierRules) -> None:
    request = body(user("Book it."), {"role": "assistant", "content": None, "tool_calls": [
        {"id": "c1", "type": "function", "function": {"name": "pay", "arguments": '{"card": "4111111111111111"}'}}]},
        {"role": "tool", "tool_call_id": "c1", "content": "ok"}, user("Thanks!"))
    c = classify(request, {}, rules)
    assert "payment_card" in c.pii and c.risk == "high"


def test_any_text_gets_valid_labels(rules: ClassifierRules) -> None:
    from hypothesis import HealthCheck, given, settings
    from hypothesis import strategies as st

    from gateway.classify import FORMATS, LATENCY_CLASSES, RISKS, TIERS

    message = st.fixed_dictionaries({
        "role": st.sampled_from(["system", "developer", "user", "assistant", "tool"]),
        "content": st.one_of(st.none(), st.text(max_size=1500),
                             st.lists(st.fixed_dictionaries({"type": st.just("text"), "text": st.text(max_size=500)}), max_size=3)),
    })

    @settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
    @given(st.lists(message, max_size=6))
    def check(messages: list[dict[str, Any]]) -> None:
        c = classify(body(*messages), {}, rules)
        assert c.tier in TIERS and c.risk in RISKS and c.format in FORMATS and c.latency_class in LATENCY_CLASSES
        assert 0.0 <= c.score <= 1.0 and c.input_tokens >= 3 and c.output_tokens >= 1
        assert c.intent in rules.intents
        assert dict(c.reasons)  # every reason formats

    check()


def test_digit_run_prefilter_is_the_documented_one(rules: ClassifierRules) -> None:
    # has_run: enough digits, two pairs of digits at most one character apart in the
    # estimate's classes ("0000", "00!00" or "00 00"), and a digit run in the probe
    from hypothesis import given, settings
    from hypothesis import strategies as st

    from gateway.classify_scan import scan_message
    from gateway.tokens import estimate_encoded

    def reference(text: str) -> bool:
        raw = text.encode("utf-8")
        _, digits, _, classes = estimate_encoded(raw, len(text))
        return (digits >= rules.digit_run_min_digits
                and (b"0000" in classes or b"00!00" in classes or b"00 00" in classes)
                and rules.digit_run_regex.search(raw.translate(rules.digit_run_probe)) is not None)

    @settings(max_examples=300, deadline=None)
    @given(st.text(alphabet=st.sampled_from(list("0123456789 ().+/-,:xA\n")), max_size=40))
    def check(text: str) -> None:
        assert scan_message(text, rules, True).has_run == reference(text)

    check()
    for text, _, _ in PII_CASES:
        assert scan_message(text, rules, True, zones=True).has_run == reference(text)


def test_lazy_reasons_are_formatted_once_and_read_alike(rules: ClassifierRules) -> None:
    for request in MIXED:
        c = classify(request, {}, rules)
        first = list(c.reasons.items())
        assert list(c.reasons.items()) == first and len(c.reasons) == len(first)
        assert repr(c.reasons) == repr(dict(first))
    hinted = classify(MIXED[0], {"x-gateway-task": "code"}, rules)
    assert list(hinted.reasons)[0] == "intent" and list(hinted.reasons)[-1] == "tier"


def test_tier_is_the_highest_bound_the_score_reaches(rules: ClassifierRules) -> None:
    floors = [rules.raw["complexity"]["tiers"][t] for t in ("simple", "standard", "complex", "expert")]
    tiers = ("trivial", "simple", "standard", "complex", "expert")
    for request in MIXED + [c[1] for c in CASES]:
        c = classify(request, {}, rules)
        exact = float(c.reasons["tier"].split()[1].rstrip(":"))  # the score, to 2 places
        if all(abs(exact - f) > 0.01 for f in floors):
            assert c.tier == tiers[sum(exact >= f for f in floors)]
    # a score that is not a number (a NaN weight in the rules) reaches no bound
    raw = default_raw()
    raw["complexity"]["bias"] = float("nan")
    assert classify(CASES[0][1], {}, compile_rules(raw)).tier == "trivial"
    # the most negative bias the rules accept takes the logistic past what exp() can hold
    raw["complexity"]["bias"] = -1000
    c = classify(CASES[0][1], {}, compile_rules(raw))
    assert (c.tier, c.score) == ("trivial", 0.0)


def test_prefilter_breaking_patterns_never_match(rules: ClassifierRules) -> None:
    # the term automaton holds a few upper-case patterns after the terms (see
    # classify_rules._NO_PREFILTER): the words form never holds them, so every match is a term
    from hypothesis import given, settings
    from hypothesis import strategies as st

    from gateway.classify_rules import _NO_PREFILTER, framed_words_form

    assert all(p.isupper() for p in _NO_PREFILTER)

    @settings(max_examples=200, deadline=None)
    @given(st.text(max_size=200))
    def check(text: str) -> None:
        words = framed_words_form(("\n" + text + "\n").encode("utf-8"), text.isascii())
        assert not any(p in words for p in _NO_PREFILTER)
        assert all(i < len(rules.terms) for i, _, _ in rules.automaton.find_matches_as_indexes(words, overlapping=True))

    check()


def test_no_detector_fires_without_a_pii_cue(rules: ClassifierRules) -> None:
    # classify skips detect_pii when no message has a cue (a digit run, or a substring a
    # run-free detector needs): the detectors must find nothing then
    from hypothesis import given, settings
    from hypothesis import strategies as st

    from gateway.classify_scan import detect_pii, scan_message

    texts_strategy = st.lists(st.text(alphabet=st.sampled_from(list("0123456789 ().+/-@AGBZ.comx\n")), max_size=60),
                              min_size=1, max_size=3)

    @settings(max_examples=300, deadline=None)
    @given(texts_strategy)
    def check(texts: list[str]) -> None:
        scans = [scan_message(text, rules, True) for text in texts]
        if not any(scan.pii_cue for scan in scans):
            digits = sum(scan.digits for scan in scans)
            assert detect_pii(texts, digits, False, rules) == []

    check()
    for text, detector, _ in PII_CASES:
        if detector is not None:
            assert scan_message(text, rules, True).pii_cue


def test_signal_rows_add_up_as_the_rules_say(rules: ClassifierRules) -> None:
    # classify adds each nonzero signal's rows into one list of slots; recompute the intent
    # scores and the complexity score straight from the rules, in the documented order
    import math

    raw = rules.raw
    index = {name: i for i, name in enumerate(rules.signal_names)}
    for request in MIXED + [c[1] for c in CASES]:
        c = classify(request, {}, rules)
        later = c.reasons._later  # type: ignore[attr-defined]
        values = later.values
        # intents: keywords of the question, then new terms of the context, then signals
        scores = [0.0] * len(rules.intents)
        for term in later.hits:
            for slot, weight in rules.term_weights[term]:
                if slot < len(scores):
                    scores[slot] += weight
        seen = set(later.hits)
        for terms in later.context_scans:
            for term in terms:
                if term not in seen:
                    seen.add(term)
                    for slot, weight in rules.term_weights[term]:
                        if slot < len(scores):
                            scores[slot] += rules.context_weight * weight
        for k, value in enumerate(values):
            for i, signals in enumerate(rules.intent_signals):
                for signal, weight in signals:
                    if signal == k and value:
                        scores[i] += weight if value >= 1 else weight * value
        assert (later.best_score, later.best_index) == (max(scores), scores.index(max(scores)))
        # complexity: bias, features by signal then in the rules' order, the intent's prior
        z = float(raw["complexity"]["bias"])
        for k, value in enumerate(values):
            for spec in raw["complexity"]["features"].values():
                if index[spec["signal"]] == k and value:
                    cap = float(spec["cap"])
                    if spec.get("scale", "linear") == "log":
                        z += spec["weight"] / math.log1p(cap) * math.log1p(min(value, cap))
                    else:
                        z += spec["weight"] / cap * min(value, cap)
        z += rules.intent_priors[c.intent]
        assert later.score == 1.0 / (1.0 + math.exp(-z))


def test_tool_definitions_estimate_is_the_same_cached_or_not(rules: ClassifierRules) -> None:
    import orjson

    from gateway.tokens import estimate_utf8

    small = [{"type": "function", "function": {"name": "f", "parameters": {"type": "object", "properties": {}}}}]
    large = [{"type": "function", "function": {"name": f"f{i}", "description": "word " * 400}} for i in range(12)]
    for tools in (small, large):
        request = body(user("Call the tool."), tools=tools)
        plain = classify(body(user("Call the tool.")), {}, rules).input_tokens
        for _ in range(2):
            assert classify(request, {}, rules).input_tokens == plain + estimate_utf8(orjson.dumps(tools))
