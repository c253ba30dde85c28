"""Signals, handled in one place: SIGTERM/SIGINT ask for shutdown, SIGHUP for a reload."""

from __future__ import annotations

import asyncio
import signal
from collections.abc import Callable


class SignalHub:
    """Turns process signals into events the supervisor's loop can await."""

    def __init__(self) -> None:
        self.shutdown = asyncio.Event()
        self.received: signal.Signals | None = None
        self._installed: list[signal.Signals] = []

    def install(self, on_reload: Callable[[], None] | None = None) -> None:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self._request_shutdown, sig)
            self._installed.append(sig)
        if on_reload is not None:
            loop.add_signal_handler(signal.SIGHUP, on_reload)
            self._installed.append(signal.SIGHUP)

    def _request_shutdown(self, sig: signal.Signals) -> None:
        # A repeated signal changes nothing: the stop under way already ends every process.
        self.received = self.received or sig
        self.shutdown.set()

    def uninstall(self) -> None:
        loop = asyncio.get_running_loop()
        for sig in self._installed:
            loop.remove_signal_handler(sig)
        self._installed.clear()
