"""The running event loop, without a system call each time it is asked for.

On Python 3.11, `asyncio.get_running_loop()` calls getpid() on every call (to notice a
fork). A request asks for the loop about ten times (deadlines, timers, futures), and in a
busy worker those system calls cost a microsecond each. Here the loop is remembered per
thread while it runs; a fork clears what was remembered, so a forked worker finds its own.
"""

from __future__ import annotations

import asyncio
import os
import threading


class _Remembered(threading.local):
    loop: asyncio.AbstractEventLoop | None = None


_remembered = _Remembered()


def running_loop() -> asyncio.AbstractEventLoop:
    """asyncio.get_running_loop(), cheaper: raises RuntimeError the same way outside a loop."""
    loop = _remembered.loop
    if loop is not None and loop.is_running():
        return loop  # one loop runs per thread at a time: a running remembered loop is this one
    loop = _remembered.loop = asyncio.get_running_loop()
    return loop


def _forget() -> None:
    _remembered.loop = None


os.register_at_fork(after_in_child=_forget)
