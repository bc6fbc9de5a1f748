"""Request -> Classification. Pure: no I/O, no LLM call.

(The classifier itself is being written; these types are the contract the router reads.)
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Mapping

TIERS = ("trivial", "simple", "standard", "complex", "expert")
RISKS = ("low", "medium", "high", "regulated")
FORMATS = ("text", "json", "tools")
LATENCY_CLASSES = ("interactive", "batch")


@dataclass(frozen=True)
class Classification:
    tier: str  # one of TIERS
    score: float  # continuous complexity in [0, 1]
    intent: str  # chat, faq, summarize, extract, classify, translate, code, math, reasoning, planning, creative
    risk: str  # one of RISKS
    format: str  # one of FORMATS
    latency_class: str  # one of LATENCY_CLASSES
    input_tokens: int  # estimated prompt tokens
    output_tokens: int  # expected completion tokens (max_tokens when given, else an estimate)
    needs: frozenset[str] = frozenset()  # capabilities the request needs: tools, json_schema, vision, streaming
    objective: str | None = None  # hint: cost_speed | balanced | quality
    latency_budget_ms: int | None = None  # hint
    reasons: Mapping[str, str] = field(default_factory=dict)  # label name -> why
