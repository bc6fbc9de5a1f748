"""The simulator's settings."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from .faults import FaultSpec, FaultSpecError, parse_fault


@dataclass
class SimulatorConfig:
    token_rate: float = 0.0  # streamed content chunks per second; 0 = no pacing
    latency_ms: float = 0.0  # before the first byte of every answer
    fail_rate: float = 0.0  # 0..1, share of requests that get a random fault
    fail_with: list[str] = field(default_factory=list)  # specs random faults pick from
    seed: int | None = None  # for the random-fault draw
    require_key: str | None = None  # the one API key every wire API accepts
    default_completion_tokens: int = 16  # words in a full natural answer

    def __post_init__(self) -> None:
        for name in ("token_rate", "latency_ms"):
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
                raise ValueError(f"{name} must be a non-negative number, got {value!r}")
        if not isinstance(self.fail_rate, (int, float)) or not 0 <= self.fail_rate <= 1:
            raise ValueError(f"fail_rate must be between 0 and 1, got {self.fail_rate!r}")
        if not isinstance(self.default_completion_tokens, int) or self.default_completion_tokens < 1:
            raise ValueError(
                f"default_completion_tokens must be a positive integer, got {self.default_completion_tokens!r}"
            )
        self.fault_specs()  # reject a bad fail_with spec now, not on the first draw

    def fault_specs(self) -> list[FaultSpec]:
        """fail_with parsed; a positive fail_rate with no list means server_error."""
        specs = []
        for spec in self.fail_with:
            try:
                specs.append(parse_fault(spec))
            except FaultSpecError as exc:
                raise ValueError(f"fail_with: {spec!r}: {exc}") from None
        if self.fail_rate > 0 and not specs:
            specs.append(parse_fault("server_error"))
        return specs
