"""Local fake upstreams (OpenAI, Azure OpenAI, Anthropic, Gemini) with fault injection.

`create_app(SimulatorConfig(...))` gives an aiohttp application; `main()` runs it as
`gateway simulate`. Faults come from `[[fault:SPEC]]` prompt directives, the
`/_sim/faults` control API, or a seeded random draw; see `faults.py` for the grammar.
"""

from .cli import main
from .config import SimulatorConfig
from .faults import FaultSpec, FaultSpecError, parse_fault
from .server import create_app

__all__ = ["FaultSpec", "FaultSpecError", "SimulatorConfig", "create_app", "main", "parse_fault"]
