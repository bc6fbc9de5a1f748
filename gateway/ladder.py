"""Run a plan through the forwarder with the degradation ladder around it.

1. the plan's candidates in order (a fallback answering is step "fallback");
2. if every candidate failed for availability reasons: once more with the route's
   reduced request ("reduced");
3. still failing: the caller answers with the route's static response ("static").
A failure that is the request's own fault (bad_request, context_length with nowhere
larger to go, content_filter with no content fallback) skips the ladder: another try
would fail the same way.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Awaitable, Callable, Generic, Mapping, TypeVar

from .degrade import AVAILABILITY_FAILURES, reduced_body
from .forward import AllAttemptsFailed, AttemptRecord
from .loop import running_loop
from .policy import Degradation

T = TypeVar("T")


@dataclass
class LadderResult(Generic[T]):
    value: T | None  # None: every step failed; the caller answers statically
    step: str | None  # None (normal), "reduced", or "static"
    attempts: list[AttemptRecord] = field(default_factory=list)
    failure: AllAttemptsFailed | None = None


Attempt = Callable[[Mapping[str, Any], list[AttemptRecord]], Awaitable[T]]


async def climb(
    attempt: Attempt[T], body: Mapping[str, Any], degradation: Degradation, deadline: float
) -> LadderResult[T]:
    """Raises AllAttemptsFailed only for failures the ladder must not hide."""
    attempts: list[AttemptRecord] = []
    try:
        return LadderResult(await attempt(body, attempts), None, attempts)
    except AllAttemptsFailed as failed:
        if failed.error.kind not in AVAILABILITY_FAILURES:
            raise
        failure = failed
    if degradation.reduced is not None and deadline - running_loop().time() > 0:
        tried = len(attempts)
        try:
            return LadderResult(await attempt(reduced_body(body, degradation.reduced), attempts), "reduced", attempts)
        except AllAttemptsFailed as failed:
            if failed.error.kind not in AVAILABILITY_FAILURES:
                raise
            if len(attempts) > tried:  # a round with nothing left to try keeps the first round's cause
                failure = failed
    return LadderResult(None, "static", attempts, failure)
