"""`bawt-vllm up MODEL --foreground`: one supervisor in this terminal, until Ctrl-C.

Starts the model, shows its load stages as vLLM logs them, prints where to reach it, keeps
it supervised, and on Ctrl-C or SIGTERM stops the whole tree and shows the proof.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from pathlib import Path

from ..catalog.entries import openai_entry_text
from ..config.schema import Config
from ..runtime.failures import StartFailed
from ..runtime.instance import Instance
from ..runtime.pool import Pool
from ..runtime.process import become_subreaper
from ..runtime.statefile import StateDirLock
from ..runtime.states import Event, State
from .signals import SignalHub

Say = Callable[[str], None]


async def run_foreground(config: Config, alias: str, say: Say, *, pool: Pool | None = None) -> int:
    """Supervise `alias` until a signal; the process exit status."""
    config.entry(alias)
    lock = StateDirLock(Path(config.settings.state_dir), "foreground supervisor")
    become_subreaper()
    hub = SignalHub()
    hub.install()
    pool = pool or Pool(config)
    try:
        for line in (await pool.recover(adopt=False)).lines():
            say(line)
        return await _serve_until_signal(pool, alias, hub, say)
    finally:
        for result in await pool.close():
            if result.was_running:
                say(result.summary())
        hub.uninstall()
        lock.release()


async def _serve_until_signal(pool: Pool, alias: str, hub: SignalHub, say: Say) -> int:
    instance = await pool.up(alias, wait=False)
    instance.add_listener(lambda _inst, event: say(_format_event(event)))
    say(f"starting {alias}: {instance.serve_command().display()}")
    if not await _until_ready_or_signal(instance, hub):
        say(f"interrupted by {hub.received.name if hub.received else 'signal'} before {alias} was ready")
        return 130
    if instance.state is not State.READY:
        error = instance.last_error or StartFailed(alias, f"ended {instance.state.value}")
        say(error.details())
        return 1
    entry = instance.entry
    say(f"{alias} is ready at {instance.endpoint}")
    say("llm-bawt entry:\n" + openai_entry_text(alias, entry, instance.endpoint))
    say("Ctrl-C stops it.")
    while not hub.shutdown.is_set():
        if instance.state is State.FAILED:
            say((instance.last_error or StartFailed(alias, "failed")).details())
            return 1
        await _first_of(hub.shutdown.wait(), instance.wait_change())
    return 0


async def _until_ready_or_signal(instance: Instance, hub: SignalHub) -> bool:
    """Wait for the load to settle; False if a signal came first."""
    while instance.state in (State.STARTING, State.UNHEALTHY):
        if hub.shutdown.is_set():
            return False
        await _first_of(hub.shutdown.wait(), instance.wait_change())
    return not hub.shutdown.is_set()


async def _first_of(*awaitables: Awaitable[object]) -> None:
    tasks = [asyncio.ensure_future(a) for a in awaitables]
    try:
        await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in tasks:
            task.cancel()


def _format_event(event: Event) -> str:
    label = event.stage or event.state.value
    return f"  [{label}] {event.message}"
