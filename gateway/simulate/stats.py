"""Counters the control API reports at GET /_sim/stats."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any


@dataclass
class SimStats:
    requests_total: int = 0
    by_model: Counter[str] = field(default_factory=Counter)
    by_api: Counter[str] = field(default_factory=Counter)
    faults: Counter[str] = field(default_factory=Counter)  # canonical spec -> times applied
    fault_sources: Counter[str] = field(default_factory=Counter)  # prompt | control | random
    open_streams: int = 0  # being written right now
    completed_streams: int = 0
    disconnected_streams: int = 0  # the client went away mid-stream
    cut_streams: int = 0  # cut on purpose by a cut_after fault

    def reset(self) -> None:
        """Zero the counters; streams still being written stay in open_streams."""
        open_streams = self.open_streams
        self.__init__()  # type: ignore[misc]
        self.open_streams = open_streams

    def snapshot(self) -> dict[str, Any]:
        return {
            "requests_total": self.requests_total,
            "by_model": dict(self.by_model),
            "by_api": dict(self.by_api),
            "faults": dict(self.faults),
            "fault_sources": dict(self.fault_sources),
            "open_streams": self.open_streams,
            "completed_streams": self.completed_streams,
            "disconnected_streams": self.disconnected_streams,
            "cut_streams": self.cut_streams,
        }
