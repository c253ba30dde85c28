"""The daemon's event loop: uvloop where it is installed, else asyncio's own.

uvloop runs the loop and its sockets in C (libuv); asyncio's selector loop and transports are
Python. On the gateway's hot path that is about a fifth of the CPU a relayed request costs
(benchmarks/gateway.py). BAWT_VLLM_EVENT_LOOP=asyncio picks asyncio's loop, to rule uvloop out.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

T = TypeVar("T")
CHOICE_ENV = "BAWT_VLLM_EVENT_LOOP"


def loop_factory() -> Callable[[], asyncio.AbstractEventLoop] | None:
    """uvloop's loop factory, or None for asyncio's default."""
    if os.environ.get(CHOICE_ENV, "").strip().lower() == "asyncio":
        return None
    try:
        import uvloop
    except ImportError:
        return None
    return uvloop.new_event_loop


def run(main: Coroutine[Any, Any, T]) -> T:
    """asyncio.run, on the loop loop_factory picks."""
    with asyncio.Runner(loop_factory=loop_factory()) as runner:
        return runner.run(main)


def loop_name() -> str:
    """What runs the current loop, for the log: 'uvloop' or 'asyncio'."""
    return "uvloop" if type(asyncio.get_running_loop()).__module__.startswith("uvloop") else "asyncio"
