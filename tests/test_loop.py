"""gateway.loop.running_loop: the running loop, remembered per thread, forgotten on fork."""

from __future__ import annotations

import asyncio
import os
import threading

import pytest
import uvloop

from gateway.loop import running_loop


def test_it_is_the_running_loop_in_each_loop_and_thread() -> None:
    seen: dict[str, tuple[object, object]] = {}

    async def probe(name: str) -> None:
        seen[name] = (running_loop(), asyncio.get_running_loop())

    asyncio.run(probe("first"))
    asyncio.run(probe("second"))  # a new loop in the same thread, after the first stopped
    uvloop.run(probe("uvloop"))
    thread = threading.Thread(target=lambda: asyncio.run(probe("thread")))
    thread.start()
    thread.join()
    assert all(mine is real for mine, real in seen.values())
    assert len({id(real) for _, real in seen.values()}) == 4


def test_outside_a_loop_it_raises_like_asyncio() -> None:
    async def remember() -> None:
        running_loop()

    asyncio.run(remember())
    with pytest.raises(RuntimeError, match="no running event loop"):
        running_loop()


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_a_forked_child_finds_its_own_loop() -> None:
    async def in_parent() -> None:
        running_loop()  # remembered here, then forked away from
        read, write = os.pipe()
        pid = os.fork()
        if pid == 0:
            ok = False
            try:
                async def child() -> bool:
                    return running_loop() is asyncio.get_running_loop()

                ok = asyncio.new_event_loop().run_until_complete(child())
            finally:
                os.write(write, b"1" if ok else b"0")
                os._exit(0)
        os.close(write)
        assert os.read(read, 1) == b"1"
        os.waitpid(pid, 0)

    asyncio.run(in_parent())
