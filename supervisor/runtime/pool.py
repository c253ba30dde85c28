"""The pool: every instance this supervisor owns, where each runs, and when it goes.

It places instances (a port from the range, a GPU no other instance of ours holds, or a
CPU slot under the cap), evicts the least recently used idle instance when nothing is
free, unloads instances idle past their TTL, records each running instance on disk, and
on start finds what a previous supervisor left behind (adopting or stopping it).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from collections.abc import Awaitable, Callable, Mapping
from pathlib import Path
from types import MappingProxyType
from typing import Any

from ..config.schema import Config, ModelEntry
from .command import entry_fingerprint
from .failures import StartFailed
from .gpus import GpuInventory, GpuUnavailableError, detect_inventory
from .instance import Instance
from .logfiles import find_log
from .logfiles import log_dir as logs_in
from .placement import (
    CapacityError,
    Occupant,
    Placement,
    budgets_by_gpu,
    choose_slot,
    evictable_later,
    eviction_candidate,
    helps_placing,
    idle_expired,
)
from .ports import PortAllocator
from .process import ServeProcess
from .recovery import RecoveryReport, is_adoptable, leftover_tree, stop_leftover
from .serving import Serving
from .sleepmode import SleepFailed
from .statefile import InstanceRecord, StateStore
from .states import LIVE_STATES, Event, EventKind, State
from .stops import StopResult
from .usage import UsageBook

# Events after which a running tree's record is (re)written: its members may have changed.
_RECORDED_ON = frozenset({EventKind.LAUNCHED, EventKind.ADOPTING, EventKind.READY, EventKind.UNHEALTHY,
                          EventKind.RECOVERED})
EventListener = Callable[[Instance, Event], None]
StopListener = Callable[[StopResult], None]
JOIN_ATTEMPTS = 3  # how often a caller whose instance was stopped under it places it again


class PoolClosed(CapacityError):
    """The pool is shutting down: nothing new starts."""


class PlacementFailed(RuntimeError):
    """A model could not be placed or started for a reason other than capacity or a failed load
    (no free port, a GGUF download that failed, ...)."""


class ConfigRejected(ValueError):
    """A new config that cannot be applied to a running pool (the running one is kept)."""


class Pool:
    def __init__(self, config: Config, *, inventory: GpuInventory | None = None) -> None:
        self.config = config
        self.inventory = inventory or detect_inventory()
        self.store = StateStore(self.state_dir)
        settings = config.settings
        self.ports = PortAllocator(settings.host, settings.port_range[0], settings.port_range[1])
        self._instances: dict[str, Instance] = {}
        self.usage = UsageBook(self._configured_ttl)
        self._gguf_paths: dict[tuple[str, str], str] = {}  # (repo_id, filename) -> the local .gguf
        self._placing = asyncio.Lock()
        self._listeners: list[EventListener] = []
        self._stop_listeners: list[StopListener] = []
        self._ttl_task: asyncio.Task[None] | None = None
        self._closing = False

    @property
    def state_dir(self) -> Path:
        return Path(self.config.settings.state_dir)

    @property
    def log_dir(self) -> Path:
        return logs_in(self.state_dir)

    # -- subscriptions ----------------------------------------------------------------------
    def subscribe(self, listener: EventListener) -> Callable[[], None]:
        """Call listener with every event of every instance from now on; returns the unsubscribe."""
        self._listeners.append(listener)
        return lambda: self._listeners.remove(listener)

    def on_stop(self, listener: StopListener) -> None:
        """Call listener with the proof of every stop the pool makes (down, eviction, idle, reload, close)."""
        self._stop_listeners.append(listener)

    # -- read side ------------------------------------------------------------------------
    def get(self, alias: str) -> Instance | None:
        """The instance of alias, if one was ever placed (to read: state, events, log)."""
        return self._instances.get(alias)

    @property
    def instances(self) -> Mapping[str, Instance]:
        """Every instance ever placed, by alias (a read-only view)."""
        return MappingProxyType(self._instances)

    def log_path(self, alias: str, start: int | None = None) -> Path | None:
        """The log of alias's start number `start`; by default the running instance's, else the latest."""
        instance = self._instances.get(alias)
        if start is None and instance is not None and instance.log_path is not None:
            return instance.log_path
        return find_log(self.log_dir, alias, start)

    def is_ready(self, alias: str) -> bool:
        return self.state_of(alias) is State.READY

    def state_of(self, alias: str) -> State:
        return self._instances[alias].state if alias in self._instances else State.STOPPED

    def progress(self, alias: str) -> str:
        """What a load of alias is doing now, for people: its stage, else its state, else 'placing'."""
        instance = self._instances.get(alias)
        return (instance.stage or instance.state.value) if instance else "placing"

    # -- serving requests ------------------------------------------------------------------
    def serving(self, alias: str, *, on_wait: Callable[[str], Awaitable[None]] | None = None,
                wait_tick_s: float = 2.0) -> Serving:
        """`async with` it: alias's ready instance for one request, loaded on demand (EnsureReady).

        The request counts as in flight from the first moment (so the instance is neither
        evicted nor idle-unloaded under it) until the block ends. While a load goes on,
        on_wait (if given) is called every wait_tick_s with what the load is doing.
        Raises CapacityError, StartFailed, or PlacementFailed for anything else.
        """
        return Serving(self.usage, alias, self._ready_now, self._ready_for_request, on_wait, wait_tick_s)

    def _ready_now(self, alias: str) -> Instance | None:
        """alias's instance if it serves as it is (the common case: no task, no lock); else None."""
        instance = self._instances.get(alias)
        ready = instance is not None and instance.state is State.READY and not self._closing
        return instance if ready and alias in self.config.models else None

    async def _ready_for_request(self, alias: str, on_wait: Callable[[str], Awaitable[None]] | None,
                                 wait_tick_s: float) -> Instance:
        loading = asyncio.ensure_future(self.up(alias))
        try:
            while not loading.done():
                await asyncio.wait({loading}, timeout=wait_tick_s)
                if not loading.done() and on_wait is not None:
                    await on_wait(self.progress(alias))
            return loading.result()
        except (CapacityError, StartFailed):
            raise
        except Exception as error:
            raise PlacementFailed(f"{alias}: {error}") from error
        finally:
            if not loading.done():
                loading.cancel()

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
        instance = self._instances.get(alias)
        if instance is not None and instance.state in LIVE_STATES and instance.state is not State.SLEEPING:
            return instance
        async with self._placing:
            self._refuse_if_closing(alias)
            entry = self.config.entry(alias)  # the entry as it is now, after any reload
            instance = self._instances.get(alias)
            if instance is not None and instance.state is State.SLEEPING:
                return await self._woken(instance)
            if instance is None or instance.state not in LIVE_STATES:
                instance = await self._place(entry, instance)
                await instance.start()
            return instance

    async def _woken(self, instance: Instance) -> Instance:
        """A sleeping instance woken, after making room for its budget on its own GPU(s); one that
        does not wake is stopped and placed afresh."""
        entry = instance.entry
        on_its_gpu = entry.model_copy(update={"gpu": instance.placement.gpus[0]}) if instance.placement.gpus else entry
        await self._gpus_for(on_its_gpu)  # evicts what must go for it to be awake again (budget, CPU cap)
        try:
            await instance.wake()
            return instance
        except StartFailed as failure:
            await self.down(instance.alias, reason=f"{failure.reason}; stopped to start afresh")
            fresh = await self._place(entry, self._instances.get(instance.alias))
            await fresh.start()
            return fresh

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
        self._instances[entry.alias] = instance
        return instance

    async def _model_source(self, entry: ModelEntry) -> str | None:
        """A gguf entry names a Hub file: vLLM needs its local path (downloaded if missing)."""
        if entry.kind != "gguf" or entry.path:
            return None
        key = (entry.repo_id or "", entry.filename or "")
        if key not in self._gguf_paths:
            from .weights import pull

            self._gguf_paths[key] = str(await asyncio.to_thread(pull, entry, progress=False))
        return self._gguf_paths[key]

    async def _gpus_for(self, entry: ModelEntry) -> list[int]:
        """GPUs for entry; evicts the least recently used idle instance when none is free,
        waiting up to eviction_wait_s for a busy one to finish its requests."""
        deadline = time.monotonic() + self.config.settings.eviction_wait_s
        while True:
            self._refuse_if_closing(entry.alias)
            try:
                return choose_slot(entry, self.inventory.snapshot(), self._occupants(),
                                   self.config.settings.max_cpu_instances)
            except (GpuUnavailableError, CapacityError) as busy:
                victim = self._victim(entry)
                if victim is not None:
                    await self._make_room(victim, f"evicted (least recently used) for {entry.alias}")
                    continue
                if not evictable_later(self._occupants(), entry.alias) or not await self._wait_for_idle(deadline):
                    raise CapacityError(f"{busy}; every running model is busy") from busy

    def _victim(self, entry: ModelEntry) -> Occupant | None:
        """What to evict for entry: the least recently used idle instance whose going makes room,
        else (nothing awake to evict) the least recently used sleeping one in the way."""
        occupants = self._occupants()
        gpus = self.inventory.snapshot()
        cap = self.config.settings.max_cpu_instances

        def helps(candidate: Occupant) -> bool:
            return helps_placing(entry, gpus, occupants, candidate, cap)

        alias = eviction_candidate(occupants, exclude=entry.alias, helps=helps)
        if alias is None:
            asleep = [o for o in occupants if o.state is State.SLEEPING and o.alias != entry.alias
                      and not o.pinned and helps(o)]
            alias = min(asleep, key=lambda o: o.last_used).alias if asleep else None
        return next((o for o in occupants if o.alias == alias), None)

    async def _make_room(self, victim: Occupant, reason: str) -> None:
        """Evict victim: put to sleep when its entry has a sleep level and it is awake, else stop it."""
        instance = self._instances[victim.alias]
        if instance.entry.sleep_level is not None and victim.state is State.READY:
            await self._sleep_or_stop(victim.alias, reason, EventKind.EVICTED)
        else:
            await self.down(victim.alias, reason=reason, kind=EventKind.EVICTED)

    async def _sleep_or_stop(self, alias: str, reason: str, kind: EventKind) -> None:
        """Sleep instead of a stop; a sleep that fails or cannot be proven stops the instance instead."""
        instance = self._instances[alias]
        try:
            await instance.sleep(reason, kind=EventKind.SLEEPING)
        except SleepFailed as failure:
            await self.down(alias, reason=f"{reason}; put to sleep failed ({failure}), stopped instead", kind=kind)

    async def _wait_for_idle(self, deadline: float) -> bool:
        """Wait until some request finishes; False once the deadline has passed."""
        return await self.usage.wait_for_release(deadline)

    def _occupants(self) -> list[Occupant]:
        return [Occupant(alias, i.state, i.state in LIVE_STATES or i.process is not None, i.placement.gpus,
                         self.usage.of(alias).in_flight, self.usage.of(alias).last_used,
                         budget=i.entry.gpu_budget, pinned=i.entry.pinned)
                for alias, i in self._instances.items()]

    # -- stopping -------------------------------------------------------------------------
    async def down(self, alias: str, *, reason: str = "stop requested",
                   kind: EventKind = EventKind.STOPPING) -> StopResult:
        """Stop alias and release its port and record; runs to its end even if the caller is cancelled."""
        self.config.entry(alias)  # unknown alias -> clear error
        return await asyncio.shield(self._down(alias, reason, kind))

    async def _down(self, alias: str, reason: str, kind: EventKind) -> StopResult:
        instance = self._instances.get(alias)
        if instance is None:
            return StopResult(alias, 0.0, was_running=False)
        result = await instance.stop(reason, kind)
        self.usage.forget_keep_alive(alias)  # as in Ollama: a request's keep_alive lasts until the unload
        self._release(instance)
        for listener in self._stop_listeners:
            listener(result)
        return result

    async def down_all(self) -> list[StopResult]:
        return list(await asyncio.gather(*(self.down(alias) for alias in list(self._instances))))

    def _release(self, instance: Instance) -> None:
        if instance.process is None:
            self.ports.release(instance.placement.port)
            self.store.remove(instance.alias)

    # -- usage -------------------------------------------------------
    def status(self) -> list[dict[str, Any]]:
        rows: list[dict[str, Any]] = []
        for alias in self.config.models:
            instance = self._instances.get(alias)
            row: dict[str, Any] = instance.info() if instance else {"alias": alias, "state": State.STOPPED.value}
            loaded = instance is not None and instance.state in (State.READY, State.UNHEALTHY)
            rows.append(row | self.usage.row(alias, loaded))
        return rows

    # -- idle TTL -------------------------------------------------------------------------
    def start_ttl_reaper(self, interval_s: float = 1.0) -> None:
        if self._ttl_task is None:
            self._ttl_task = asyncio.get_running_loop().create_task(self._reap_idle(interval_s))

    async def _reap_idle(self, interval_s: float) -> None:
        while True:
            await asyncio.sleep(interval_s)
            for alias in self.expired_aliases():
                if self._instances[alias].entry.sleep_level is not None:
                    await self._sleep_or_stop(alias, "idle TTL", EventKind.IDLE_UNLOADED)
                else:
                    await self.down(alias, reason="idle TTL", kind=EventKind.IDLE_UNLOADED)

    def expired_aliases(self) -> list[str]:
        return idle_expired(self._occupants(), self.usage.idle_ttl, time.monotonic())

    def gpu_budgets(self) -> dict[int, dict[str, float | None]]:
        """GPU index -> {alias: its budget (None: the whole GPU)} for every instance holding it."""
        return budgets_by_gpu(self._occupants())

    def _configured_ttl(self, alias: str) -> float | None:
        """alias's idle TTL as configured: its entry's, else the global one (None: never)."""
        entry = self.config.models.get(alias)
        return (entry.idle_ttl_s if entry else None) or self.config.settings.idle_ttl_s

    def keep_alive(self, alias: str, seconds: float | None) -> None:
        """Ollama's keep_alive, from a request: alias stays loaded for `seconds` of idleness from now
        on, or (None) until a later keep_alive says otherwise. A reload of its entry forgets it."""
        self.config.entry(alias)  # unknown alias -> clear error
        self.usage.keep_alive(alias, seconds)

    async def close(self) -> list[StopResult]:
        """Stop everything; from the first line on, nothing new starts (loads waiting for
        capacity give up, and a placement under way finishes before the stops begin)."""
        self._closing = True
        for instance in self._instances.values():
            instance.expect_shutdown()
        await self.usage.wake_waiters()
        if self._ttl_task is not None:
            self._ttl_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._ttl_task
        async with self._placing:
            for instance in self._instances.values():
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
            for alias in list(self._instances):
                why = self._reload_reason(alias, new)
                if why is None:
                    continue
                result = await self.down(alias, reason=f"config reload: {why}")
                changes.append(f"{alias}: {why}, stopped ({result.summary()})")
                if self._instances[alias].process is None:
                    del self._instances[alias]
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
        for listener in self._listeners:
            listener(instance, event)
        if event.kind is EventKind.READY:
            self.usage.ready_now(instance.alias)
        process = instance.process
        if process is None or event.kind not in _RECORDED_ON:
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
            process = leftover_tree(record)
            if not process.refresh(everywhere=True):
                self.store.remove(record.alias)
                report.gone.append(record.alias)
                continue
            if adopt and await is_adoptable(record, process, self.config):
                await self._adopt(record, process)
                report.adopted.append(record.alias)
                continue
            stop = await stop_leftover(record, process, self.config.settings.stop_grace_s)
            report.stopped.append(stop)
            if stop.clean:
                self.store.remove(record.alias)
        return report

    async def _adopt(self, record: InstanceRecord, process: ServeProcess) -> None:
        entry = self.config.entry(record.alias)
        self.ports.claim(record.port)
        instance = Instance(entry, self.config.settings, Placement(record.port, tuple(record.gpus)),
                            log_dir=self.log_dir, inventory=self.inventory, api_key=record.api_key)
        instance.add_listener(self._on_event)
        self._instances[record.alias] = instance
        await instance.adopt(process, Path(record.log) if record.log else None)
        await instance.wait_ready(timeout=30)
