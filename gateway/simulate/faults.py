"""The fault vocabulary, and where a request's fault comes from.

A SPEC is comma-separated `key` or `key=value` items, e.g. `status=429,retry_after=2`
or `stall_after=3,stall_ms=500`. Sources, in precedence order: a `[[fault:SPEC]]` /
`[[fault@MODEL:SPEC]]` directive in the prompt, a fault queued through the control
API, then a random draw from the configured `fail_with` list.
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass, field
from functools import lru_cache

# Named errors and the status they answer with unless `status=` overrides it.
# `overloaded` has no default here: each provider has its own (529 or 503).
ERROR_KINDS = ("rate_limited", "overloaded", "context_length", "auth", "server_error")
_FLAGS = ERROR_KINDS + ("content_filter", "reset", "malformed")
_INT_KEYS = ("status", "cut_after", "stall_after")
_FLOAT_KEYS = ("retry_after", "delay_ms", "stall_ms")
_DEFAULT_STALL_MS = 1000.0

# The model part takes everything up to the last colon, since model names may contain
# colons (e.g. "llama3:8b") and specs never do.
_DIRECTIVE = re.compile(r"\[\[fault(?:@([^\]]+))?:([^\]:]*)\]\]")
DIRECTIVE_MARK = "[[fault"


class FaultSpecError(ValueError):
    """An invalid SPEC; `key` names the offending item."""

    def __init__(self, message: str, key: str | None = None) -> None:
        super().__init__(message)
        self.key = key


@dataclass(frozen=True)
class FaultSpec:
    text: str  # canonical spec, the key in stats
    error: str | None = None  # one of ERROR_KINDS, or "status" for a bare status=CODE
    status: int | None = None
    retry_after: float | None = None
    content_filter: bool = False
    delay_ms: float = 0.0
    reset: bool = False
    cut_after: int | None = None
    stall_after: int | None = None
    stall_ms: float = 0.0
    malformed: bool = False


@lru_cache(maxsize=512)
def parse_fault(spec: str) -> FaultSpec:
    """Parse a SPEC; raises FaultSpecError naming the bad item."""
    items = [item.strip() for item in spec.split(",") if item.strip()]
    if not items:
        raise FaultSpecError("empty fault spec")
    values: dict[str, object] = {}
    errors: list[str] = []
    for item in items:
        key, has_value, raw = item.partition("=")
        key, raw = key.strip(), raw.strip()
        if key in values:
            raise FaultSpecError(f"{key} given twice", key)
        if key in _FLAGS:
            if has_value:
                raise FaultSpecError(f"{key} takes no value", key)
            values[key] = True
            if key in ERROR_KINDS:
                errors.append(key)
        elif key in _INT_KEYS or key in _FLOAT_KEYS:
            if not has_value or not raw:
                raise FaultSpecError(f"{key} needs a value, e.g. {key}=1", key)
            values[key] = _number(key, raw)
        else:
            raise FaultSpecError(f"unknown fault {key!r}", key)
    if len(errors) > 1:
        raise FaultSpecError(f"only one error kind per fault, got {', '.join(errors)}", errors[1])

    status = values.get("status")
    if status is not None and not 400 <= int(status) <= 599:  # type: ignore[arg-type]
        raise FaultSpecError("status must be an HTTP error code (400-599)", "status")
    cut_after = values.get("cut_after")
    if cut_after is not None and int(cut_after) < 1:  # type: ignore[arg-type]
        raise FaultSpecError("cut_after must be at least 1", "cut_after")
    if "stall_ms" in values and "stall_after" not in values:
        raise FaultSpecError("stall_ms needs stall_after", "stall_ms")
    if "retry_after" in values and not errors and status is None:
        raise FaultSpecError("retry_after needs an error (status=CODE or rate_limited...)", "retry_after")

    error = errors[0] if errors else ("status" if status is not None else None)
    stall_after = values.get("stall_after")
    return FaultSpec(
        text=",".join(items),
        error=error,
        status=int(status) if status is not None else None,  # type: ignore[arg-type]
        retry_after=values.get("retry_after"),  # type: ignore[arg-type]
        content_filter=bool(values.get("content_filter")),
        delay_ms=float(values.get("delay_ms", 0.0)),  # type: ignore[arg-type]
        reset=bool(values.get("reset")),
        cut_after=int(cut_after) if cut_after is not None else None,  # type: ignore[arg-type]
        stall_after=int(stall_after) if stall_after is not None else None,  # type: ignore[arg-type]
        stall_ms=float(values.get("stall_ms", _DEFAULT_STALL_MS if stall_after is not None else 0.0)),  # type: ignore[arg-type]
        malformed=bool(values.get("malformed")),
    )


def _number(key: str, raw: str) -> float | int:
    try:
        value: float | int = int(raw) if key in _INT_KEYS else float(raw)
    except ValueError:
        kind = "an integer" if key in _INT_KEYS else "a number"
        raise FaultSpecError(f"{key} must be {kind}, got {raw!r}", key) from None
    if value < 0 or value != value:  # negative or NaN
        raise FaultSpecError(f"{key} must not be negative", key)
    return value


def find_directive(texts: list[str], model: str) -> str | None:
    """The SPEC of the first directive that applies to `model`, or None."""
    for text in texts:
        if DIRECTIVE_MARK not in text:
            continue
        for match in _DIRECTIVE.finditer(text):
            scope = match.group(1)
            if scope is None or scope.strip() == model:
                return match.group(2)
    return None


def strip_directives(text: str) -> str:
    """The text without directives, so they do not leak into the reply's topic."""
    if DIRECTIVE_MARK not in text:
        return text
    return _DIRECTIVE.sub(" ", text)


@dataclass
class QueuedFault:
    fault: FaultSpec
    model: str | None
    remaining: int  # -1: until cleared

    def as_dict(self) -> dict[str, object]:
        return {"fault": self.fault.text, "model": self.model, "count": self.remaining}


@dataclass
class FaultSource:
    """Chooses the fault for one request, if any."""

    fail_rate: float = 0.0
    fail_with: list[FaultSpec] = field(default_factory=list)
    seed: int | None = None
    queue: list[QueuedFault] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._rng = random.Random(self.seed)

    def pick(self, texts: list[str], model: str) -> tuple[FaultSpec, str] | None:
        """(fault, source) where source is prompt | control | random; raises
        FaultSpecError for a directive that applies but does not parse."""
        spec = find_directive(texts, model)
        if spec is not None:
            return parse_fault(spec), "prompt"
        if self.queue:
            queued = self._take(model)
            if queued is not None:
                return queued, "control"
        if self.fail_rate > 0 and self.fail_with and self._rng.random() < self.fail_rate:
            return self._rng.choice(self.fail_with), "random"
        return None

    def enqueue(self, fault: FaultSpec, model: str | None, count: int) -> QueuedFault:
        entry = QueuedFault(fault, model, count)
        self.queue.append(entry)
        return entry

    def clear(self) -> int:
        cleared = len(self.queue)
        self.queue.clear()
        return cleared

    def _take(self, model: str) -> FaultSpec | None:
        for index, entry in enumerate(self.queue):
            if entry.model is not None and entry.model != model:
                continue
            if entry.remaining > 0:
                entry.remaining -= 1
                if entry.remaining == 0:
                    del self.queue[index]
            return entry.fault
        return None
