"""One health check of a ready instance: is it still our server, and is its engine still alive?

`/health` must answer 200, our tree (and nobody else) must hold the port, and, unless the
liveness probe is off, the engine must progress: a busy engine by vLLM's own counters, an
idle one by giving a token when asked. The instance turns verdicts into state changes.
"""

from __future__ import annotations

import time
from enum import StrEnum

from ..config.schema import Settings
from .listeners import port_listeners
from .process import ProcessIdentity
from .readiness import HangDetector, HealthProbe

# Consecutive failed health checks after which a ready instance is restarted. vLLM answers
# 503 once its engine is dead and exits a few seconds later, so a few checks is enough.
UNHEALTHY_CHECKS_BEFORE_RESTART = 3
# An idle engine is asked for one token every this many health intervals (a busy one is
# judged by its own counters, never probed).
IDLE_PROBE_EVERY_INTERVALS = 5


class Health(StrEnum):
    """One health check's verdict on a ready instance."""

    OK = "ok"
    SICK = "sick"  # /health or the port: restarted after a few checks in a row
    HUNG = "hung"  # no engine progress for probe_timeout_s: restarted at once


class HealthCheck:
    """The checks of one ready instance, run every health interval; keeps the hang detector's memory."""

    def __init__(self, probe: HealthProbe, port: int, settings: Settings) -> None:
        self.probe = probe
        self.port = port
        self.settings = settings
        self.hangs = HangDetector(settings.probe_timeout_s, settings.health_interval_s * IDLE_PROBE_EVERY_INTERVALS)

    async def run(self, members: list[ProcessIdentity], *, engine: bool = True) -> tuple[Health, str]:
        """The verdict, and why (for the event and the restart reason). engine=False skips the
        engine's liveness (a sleeping engine has nothing to show)."""
        status = await self.probe.health()
        if status != 200:
            return Health.SICK, "/health did not answer" if status is None else f"/health answered {status}"
        if not port_listeners(self.port, [m.pid for m in members]).owned:
            return Health.SICK, f"port {self.port} is no longer ours alone"
        if not self.settings.liveness_probe or not engine:
            return Health.OK, "ok"
        return await self._engine_alive()

    async def _engine_alive(self) -> tuple[Health, str]:
        """A busy engine must show progress in vLLM's counters; an idle one must give a token."""
        load = await self.probe.engine_load()
        now = time.monotonic()
        if load is not None and load.busy > 0:
            hung = self.hangs.busy(load, now)
            return (Health.HUNG, hung) if hung else (Health.OK, "ok")
        if self.hangs.idle_probe_due(load, now) and not await self.probe.generates(self.settings.probe_timeout_s):
            timeout = self.settings.probe_timeout_s
            return Health.HUNG, f"engine hung: a 1-token request got no answer within {timeout:g}s"
        return Health.OK, "ok"
