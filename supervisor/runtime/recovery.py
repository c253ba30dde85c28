"""What a previous supervisor left running, and what becomes of it when a new one starts.

Each running instance has a record on disk (statefile). A new supervisor finds the tree of
each record by pid and start time (never by name), adopts those it still configures
unchanged and that still answer as ours, and stops the rest, proven gone like any stop.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ..config.schema import Config
from ..config.urls import url_host
from .command import entry_fingerprint
from .listeners import port_listeners
from .process import ServeProcess
from .readiness import HealthProbe
from .statefile import InstanceRecord
from .stops import StopResult


@dataclass
class RecoveryReport:
    adopted: list[str] = field(default_factory=list)
    stopped: list[StopResult] = field(default_factory=list)
    gone: list[str] = field(default_factory=list)

    @property
    def clean(self) -> bool:
        return not self.adopted and not self.stopped

    def lines(self) -> list[str]:
        """What a previous supervisor left, and what became of it, for the log."""
        lines = [f"adopted {alias}, left running by a previous supervisor" for alias in self.adopted]
        lines += [f"stopped {stop.alias}, left behind by a previous supervisor: {stop.proof()}"
                  for stop in self.stopped]
        return lines


def leftover_tree(record: InstanceRecord) -> ServeProcess:
    """The tree a record names, as far as it can be proven ours (it may be gone: refresh() says)."""
    return ServeProcess.adopt(record.root, pgid=record.pgid, sid=record.sid,
                              known=record.member_identities(), token=record.token)


async def is_adoptable(record: InstanceRecord, process: ServeProcess, config: Config) -> bool:
    """Still configured unchanged, answering with its own key, and the port is its own."""
    entry = config.models.get(record.alias)
    if entry is None or entry_fingerprint(entry, config) != record.config_fingerprint:
        return False
    if not port_listeners(record.port, [m.pid for m in process.refresh()]).owned:
        return False
    base = f"http://{url_host(config.settings.host)}:{record.port}"
    probe = HealthProbe(base, record.served_name, record.api_key)
    try:
        return await probe.ready()
    finally:
        await probe.close()


async def stop_leftover(record: InstanceRecord, process: ServeProcess, grace_s: float) -> StopResult:
    """Stop a tree that is not adopted; its proof like any stop's."""
    return StopResult.of_kill(record.alias, await process.kill_tree(grace_s))
