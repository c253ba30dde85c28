"""The pool: every instance this supervisor owns, where each runs, and when it goes.

It places instances (a port from the range, a GPU no other instance of ours holds, or a
CPU slot under the cap), evicts the least recently used idle instance when nothing is
free, unloads instances idle past their TTL, records each running instance on disk, and
on start finds what a previous supervisor left behind (adopting or stopping it).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import os
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..config.loading import Config, ModelEntry
from ..config.paths import log_dir as logs_in
from .command import build_serve_command
from .gpus import GpuInventory, GpuUnavailableError, choose_gpus, detect_inventory
from .instance import LIVE_STATES, Event, Instance, Placement, StartFailed, State, StopResult
from .listeners import port_listeners
from .ports import PortAllocator, url_host
from .process import ServeProcess
from .readiness import HealthProbe
from .statefile import InstanceRecord, StateStore

JOIN_ATTEMPTS = 3  # how often a caller whose instance was stopped under it places it again


class CapacityError(RuntimeError):
    """Nothing free to place an instance on, and nothing idle to evict."""


class PoolClosed(CapacityError):
    """The pool is shutting down: nothing new starts."""


class ConfigRejected(ValueError):
    """A new config that cannot be applied to a running pool (the running one is kept)."""


@dataclass
class Usage:
    in_flight: int = 0
    last_used: float = field(default_factory=time.monotonic)
    requests: int = 0


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


def entry_fingerprint(entry: ModelEntry, config: Config) -> str:
    """Identifies what an entry would run, so a reload can tell changed entries apart."""
    command = build_serve_command(entry, config.settings, port=0, gpus=None,
                                  model_source=entry.model_id or "resolved")
    blob = json.dumps({"argv": command.argv, "env": command.env, "entry": entry.model_dump(mode="json")},
                      sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


class Pool:
    def __init__(self, config: Config, *, inventory: GpuInventory | None = None) -> None:
        self.config = config
        self.inventory = inventory or detect_inventory()
        self.store = StateStore(self.state_dir)
        settings = config.settings
        self.ports = PortAllocator(settings.host, settings.port_range[0], settings.port_range[1])
        self.instances: dict[str, Instance] = {}
        self.usage: dict[str, Usage] = {}
        self._gguf_paths: dict[tuple[str, str], str] = {}  # (repo_id, filename) -> the local .gguf
        self._placing = asyncio.Lock()
        self._idle = asyncio.Condition()
        self.listeners: list[Callable[[Instance, Event], None]] = []
        self.stop_listeners: list[Callable[[StopResult], None]] = []
        self._ttl_task: asyncio.Task[None] | None = None
        self._closing = False

    @property
    def state_dir(self) -> Path:
        return Path(self.config.settings.state_dir)

    @property
    def log_dir(self) -> Path:
        return logs_in(self.state_dir)

    def get(self, alias: str) -> Instance | None:
        """The instance of alias, if one was ever placed (read-only view for status pages)."""
        return self.instances.get(alias)

    # -- placing and starting -----------------------------------------------------------
    async def up(self, alias: str, *, wait: bool = True, timeout: float | None = None) -> Instance:
        """Start `alias` unless it is live already (then join it); with wait, until ready.

        Placement runs under the pool's lock, the same lock a config reload and a shutdown
        take, so a start never uses an entry a reload has just replaced and nothing starts
        once shutdown has begun.
        """
        for attempt in range(JOIN_ATTEMPTS):
            instance = await self._live_instance(alias)
            if not wait:
                return instance
            try:
                await instance.wait_ready(timeout)
                return instance
            except StartFailed:
                stopped_on_purpose = instance.state in (State.STOPPING, State.STOPPED)
                if self._closing or not stopped_on_purpose or attempt == JOIN_ATTEMPTS - 1:
                    raise
                # The instance we joined was stopped (a reload replacing its entry, an eviction,
                # a down): this caller still wants the model, so it is placed again.
        raise AssertionError("unreachable")

    async def _live_instance(self, alias: str) -> Instance:
        """The live instance of alias, placed and started if there is none."""
        self.config.entry(alias)  # unknown alias -> clear error
        self._refuse_if_closing(alias)
        instance = self.instances.get(alias)
        if instance is not None and instance.state in LIVE_STATES:
            return instance
        async with self._placing:
            self._refuse_if_closing(alias)
            entry = self.config.entry(alias)  # the entry as it is now, after any reload
            instance = self.instances.get(alias)
            if instance is None or instance.state not in LIVE_STATES:
                instance = await self._place(entry, instance)
                await instance.start()
            return instance

    def _refuse_if_closing(self, alias: str) -> None:
        if self._closing:
            raise PoolClosed(f"{alias}: not started, bawt-vllm is shutting down")

    async def _place(self, entry: ModelEntry, previous: Instance | None) -> Instance:
        if previous is not None:
            result = await previous.stop()
            self._release(previous)
            if result.survivors:
                raise CapacityError(f"{entry.alias}: not started, processes of its previous start survive "
                                    f"SIGKILL ({result.survivors})")
        gpus = await self._gpus_for(entry)
        port = self.ports.reserve(entry.port)
        api_key = os.environ.get(entry.api_key_env) if entry.api_key_env else None
        try:
            source = await self._model_source(entry)
        except BaseException:
            self.ports.release(port)
            raise
        instance = Instance(entry, self.config.settings, Placement(port, tuple(gpus)), log_dir=self.log_dir,
                            inventory=self.inventory, model_source=source, api_key=api_key)
        instance.add_listener(self._on_event)
        self.instances[entry.alias] = instance
        self.usage.setdefault(entry.alias, Usage())
        return instance

    async def _model_source(self, entry: ModelEntry) -> str | None:
        """A gguf entry names a Hub file: vLLM needs its local path (downloaded if missing)."""
        if entry.kind != "gguf" or entry.path:
            return None
        key = (entry.repo_id or "", entry.filename or "")
        if key not in self._gguf_paths:
            from ..catalog.hub import pull

            self._gguf_paths[key] = str(await asyncio.to_thread(pull, entry, progress=False))
        return self._gguf_paths[key]

    async def _gpus_for(self, entry: ModelEntry) -> list[int]:
        """GPUs for entry; evicts the least recently used idle instance when none is free,
        waiting up to eviction_wait_s for a busy one to finish its requests."""
        deadline = time.monotonic() + self.config.settings.eviction_wait_s
        while True:
            self._refuse_if_closing(entry.alias)
            try:
                return self._try_gpus_for(entry)
            except (GpuUnavailableError, CapacityError) as busy:
                victim = self._eviction_candidate(exclude=entry.alias)
                if victim is not None:
                    await self.down(victim.alias, reason=f"evicted (least recently used) for {entry.alias}")
                    continue
                if not self._evictable_later(entry.alias) or not await self._wait_for_idle(deadline):
                    raise CapacityError(f"{busy}; every running model is busy") from busy

    def _evictable_later(self, exclude: str) -> bool:
        return any(i.alias != exclude and i.state in (State.READY, State.UNHEALTHY) for i in self.instances.values())

    async def _wait_for_idle(self, deadline: float) -> bool:
        """Wait until some request finishes; False once the deadline has passed."""
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return False
        async with self._idle:
            try:
                await asyncio.wait_for(self._idle.wait(), remaining)
            except TimeoutError:
                return False
        return True

    def _try_gpus_for(self, entry: ModelEntry) -> list[int]:
        gpus = self.inventory.snapshot()
        live = [i for i in self.instances.values() if i.state in LIVE_STATES or i.process is not None]
        if not gpus:
            cap = self.config.settings.max_cpu_instances
            if len(live) >= cap:
                names = ", ".join(i.alias for i in live)
                raise CapacityError(f"{entry.alias}: no GPU here and the CPU cap of {cap} instance(s) "
                                    f"is reached ({names}); raise bawt_vllm.max_cpu_instances or stop one")
            return []
        held = {gpu: i.alias for i in live for gpu in i.placement.gpus}
        return choose_gpus(gpus, count=entry.tensor_parallel_size, held=held, pin=entry.gpu,
                           memory_fraction=entry.gpu_memory_utilization, alias=entry.alias)

    def _eviction_candidate(self, exclude: str) -> Instance | None:
        idle = [i for i in self.instances.values()
                if i.alias != exclude and i.state in (State.READY, State.UNHEALTHY)
                and self.usage[i.alias].in_flight == 0]
        return min(idle, key=lambda i: self.usage[i.alias].last_used, default=None)

    # -- stopping -------------------------------------------------------------------------
    async def down(self, alias: str, *, reason: str = "stop requested") -> StopResult:
        """Stop alias and release its port and record; runs to its end even if the caller is cancelled."""
        self.config.entry(alias)  # unknown alias -> clear error
        return await asyncio.shield(self._down(alias, reason))

    async def _down(self, alias: str, reason: str) -> StopResult:
        instance = self.instances.get(alias)
        if instance is None:
            return StopResult(alias, 0.0, was_running=False)
        result = await instance.stop(reason)
        self._release(instance)
        for listener in self.stop_listeners:
            listener(result)
        return result

    async def down_all(self) -> list[StopResult]:
        return list(await asyncio.gather(*(self.down(alias) for alias in list(self.instances))))

    def _release(self, instance: Instance) -> None:
        if instance.process is None:
            self.ports.release(instance.placement.port)
            self.store.remove(instance.alias)

    # -- usage (the gateway's view) -------------------------------------------------------
    @contextlib.asynccontextmanager
    async def in_use(self, alias: str) -> AsyncIterator[Usage]:
        usage = self.usage.setdefault(alias, Usage())
        usage.in_flight += 1
        usage.requests += 1
        try:
            yield usage
        finally:
            usage.in_flight -= 1
            usage.last_used = time.monotonic()
            async with self._idle:
                self._idle.notify_all()

    def status(self) -> list[dict[str, Any]]:
        rows: list[dict[str, Any]] = []
        for alias in self.config.models:
            instance = self.instances.get(alias)
            usage = self.usage.get(alias, Usage())
            row: dict[str, Any] = instance.info() if instance else {"alias": alias, "state": State.STOPPED.value}
            row["in_flight"] = usage.in_flight
            row["idle_s"] = None if instance is None or instance.state not in LIVE_STATES else round(
                time.monotonic() - usage.last_used, 1)
            rows.append(row)
        return rows

    # -- idle TTL -------------------------------------------------------------------------
    def start_ttl_reaper(self, interval_s: float = 1.0) -> None:
        if self._ttl_task is None:
            self._ttl_task = asyncio.get_running_loop().create_task(self._reap_idle(interval_s))

    async def _reap_idle(self, interval_s: float) -> None:
        while True:
            await asyncio.sleep(interval_s)
            for alias in self.expired_aliases():
                await self.down(alias, reason="idle TTL")

    def expired_aliases(self) -> list[str]:
        now = time.monotonic()
        expired = []
        for alias, instance in self.instances.items():
            ttl = instance.entry.idle_ttl_s or self.config.settings.idle_ttl_s
            usage = self.usage[alias]
            if ttl and instance.state is State.READY and usage.in_flight == 0 and now - usage.last_used > ttl:
                expired.append(alias)
        return expired

    async def close(self) -> list[StopResult]:
        """Stop everything; from the first line on, nothing new starts (loads waiting for
        capacity give up, and a placement under way finishes before the stops begin)."""
        self._closing = True
        for instance in self.instances.values():
            instance.expect_shutdown()
        async with self._idle:
            self._idle.notify_all()
        if self._ttl_task is not None:
            self._ttl_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._ttl_task
        async with self._placing:
            for instance in self.instances.values():
                instance.expect_shutdown()
            return await self.down_all()

    @property
    def closing(self) -> bool:
        return self._closing

    # -- reload -----------------------------------------------------------------------------
    async def apply_config(self, new: Config) -> list[str]:
        """Adopt a new config under the placement lock: stop instances whose entry changed or
        vanished (verified gone before the new entry can start), keep the rest running.

        Raises ConfigRejected, keeping the running config, for what only a restart can change.
        """
        self._check_applicable(new)
        async with self._placing:
            changes = []
            for alias in list(self.instances):
                why = self._reload_reason(alias, new)
                if why is None:
                    continue
                result = await self.down(alias, reason=f"config reload: {why}")
                changes.append(f"{alias}: {why}, stopped ({result.summary()})")
                if self.instances[alias].process is None:
                    del self.instances[alias]
            changes += [f"{alias}: added" for alias in new.models if alias not in self.config.models]
            self.config = new
            self.ports.low, self.ports.high = new.settings.port_range
            return changes

    def _reload_reason(self, alias: str, new: Config) -> str | None:
        entry = new.models.get(alias)
        if entry is None:
            return "removed from the config"
        old = self.config.models.get(alias)
        if old is None or entry_fingerprint(entry, new) != entry_fingerprint(old, self.config):
            return "entry changed (starts again on demand)"
        return None

    def _check_applicable(self, new: Config) -> None:
        old = self.config.settings
        fixed = [key for key in ("state_dir", "host") if getattr(new.settings, key) != getattr(old, key)]
        if fixed:
            raise ConfigRejected(f"bawt_vllm.{', bawt_vllm.'.join(fixed)} changed: that needs a restart of "
                                 "bawt-vllm (running models are recorded under the old value); config not reloaded")

    # -- records and recovery ---------------------------------------------------------------
    def _on_event(self, instance: Instance, event: Event) -> None:
        for listener in self.listeners:
            listener(instance, event)
        if event.state is State.READY and event.stage is None:
            usage = self.usage.setdefault(instance.alias, Usage())
            usage.last_used = max(usage.last_used, time.monotonic())  # idle time counts from ready, not load
        process = instance.process
        if process is None or event.state not in LIVE_STATES:
            return
        if event.stage not in (None, "launched") and event.state is State.STARTING:
            return
        self.store.save(InstanceRecord(
            alias=instance.alias, pid=process.pid, create_time=process.root.create_time,
            pgid=process.pgid, sid=process.sid, port=instance.placement.port,
            gpus=list(instance.placement.gpus), log=str(instance.log_path) if instance.log_path else None,
            served_name=instance.entry.served_name, started_at=time.time(),
            config_fingerprint=entry_fingerprint(instance.entry, self.config),
            members=[[m.pid, m.create_time] for m in process.known_members()],
            token=process.token, api_key=instance.api_key,
        ))

    async def recover(self, *, adopt: bool = True) -> RecoveryReport:
        """Find instances a previous supervisor left running: adopt the healthy ones we still
        configure unchanged, stop the rest. Processes are matched by pid and start time.

        Runs under the placement lock: a request that arrives meanwhile (the gateway is already
        listening) waits and then joins the adopted instance instead of starting a second one.
        """
        async with self._placing:
            return await self._recover(adopt)

    async def _recover(self, adopt: bool) -> RecoveryReport:
        report = RecoveryReport()
        for record in self.store.load_all():
            process = ServeProcess.adopt(record.root, pgid=record.pgid, sid=record.sid,
                                         known=record.member_identities(), token=record.token)
            if not process.refresh(everywhere=True):
                self.store.remove(record.alias)
                report.gone.append(record.alias)
                continue
            if adopt and await self._adoptable(record, process):
                await self._adopt(record, process)
                report.adopted.append(record.alias)
                continue
            kill = await process.kill_tree(self.config.settings.stop_grace_s)
            report.stopped.append(StopResult(record.alias, kill.took_s, was_running=True, sigkilled=kill.sigkilled,
                                             survivors=kill.survivors, processes_checked=kill.checked))
            if kill.clean:
                self.store.remove(record.alias)
        return report

    async def _adoptable(self, record: InstanceRecord, process: ServeProcess) -> bool:
        """Still configured unchanged, answering with its own key, and the port is its own."""
        entry = self.config.models.get(record.alias)
        if entry is None or entry_fingerprint(entry, self.config) != record.config_fingerprint:
            return False
        if not port_listeners(record.port, [m.pid for m in process.refresh()]).owned:
            return False
        base = f"http://{url_host(self.config.settings.host)}:{record.port}"
        probe = HealthProbe(base, record.served_name, record.api_key)
        try:
            return await probe.ready()
        finally:
            await probe.close()

    async def _adopt(self, record: InstanceRecord, process: ServeProcess) -> None:
        entry = self.config.entry(record.alias)
        self.ports.claim(record.port)
        instance = Instance(entry, self.config.settings, Placement(record.port, tuple(record.gpus)),
                            log_dir=self.log_dir, inventory=self.inventory, api_key=record.api_key)
        instance.add_listener(self._on_event)
        self.instances[record.alias] = instance
        self.usage.setdefault(record.alias, Usage())
        await instance.adopt(process, Path(record.log) if record.log else None)
        await instance.wait_ready(timeout=30)
