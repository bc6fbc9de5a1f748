"""The plan's hand-made objects are the dataclasses' own: candidates filled in place by
routing._candidates are what Candidate(...) makes, with the same instance dict."""

from __future__ import annotations

import dataclasses

import pytest

from gateway.routing import _candidates, _round4
from gateway.routing_types import OWN_REASONS, Candidate, new_candidate

SPECS = (
    (2, "mini", "oa", "small", tuple(("route:r", *own) for own in OWN_REASONS), "primary", "oa/mini"),
    (0, "mid", "eu", "medium", tuple(("route:r", *own, "fallback:score") for own in OWN_REASONS), "fallback", "eu/mid"),
    (1, "big", "an", "large", tuple(("route:r", *own, "fallback:same_model") for own in OWN_REASONS), "fallback",
     "an/big"),
)


@pytest.mark.parametrize("flags", [(0, 0, 0), (1, 2, 3), (3, 0, 2)])
def test_candidates_are_the_dataclass(flags: tuple[int, ...]) -> None:
    scores = [0.123456789, -0.00004, 0.71235]
    made = _candidates(SPECS, scores, flags)
    assert type(made) is tuple and len(made) == len(SPECS)
    for candidate, (i, model, provider, tier, reasons, role, key) in zip(made, SPECS):
        plain = Candidate(model, provider, tier, round(scores[i], 4), reasons[flags[i]], role)
        one = new_candidate(model, provider, tier, _round4(scores[i]), reasons[flags[i]], role, key)
        assert type(candidate) is Candidate
        assert candidate == plain == one and hash(candidate) == hash(plain)
        assert repr(candidate) == repr(plain) and repr(candidate.score) == repr(plain.score)
        assert vars(candidate) == vars(one) and list(vars(candidate)) == list(vars(one))
        assert candidate.key == plain.key == key
        with pytest.raises(dataclasses.FrozenInstanceError):
            candidate.score = 1.0  # type: ignore[misc]


def test_no_specs_no_candidates() -> None:
    assert _candidates((), [], ()) == ()
