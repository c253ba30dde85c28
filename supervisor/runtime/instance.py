"""One supervised `vllm serve`: an explicit state machine with a single writer.

States and the moves allowed between them live in `TRANSITIONS`; only `Instance._enter`
changes the state, and every change is an `Event` with a timestamp. A supervision task owns
the process while it runs: it starts it, follows the load, watches liveness after ready,
restarts with capped exponential backoff, and gives up as `failed` with the reason.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ..config.schema import ModelEntry, Settings
from ..config.urls import url_host
from .command import ServeCommand, build_serve_command
from .failures import StartFailed
from .gpus import GpuInventory, NoGpuInventory
from .health import UNHEALTHY_CHECKS_BEFORE_RESTART, Health, HealthCheck
from .listeners import port_listeners, wait_port_released
from .logfiles import LogFollower, next_log_path, read_log_tail
from .placement import Placement
from .process import KillReport, ProcessIdentity, ServeProcess
from .readiness import HealthProbe, classify_line
from .sleepmode import SleepFailed, check_host_room, prove_sleep
from .states import ENTERS, LIVE_STATES, STOP_KINDS, TRANSITIONS, Event, EventKind, IllegalTransition, Stage, State
from .stops import StopResult
from .vllmversion import PROBED_ENDPOINTS, filters_access_log
from .vram import VramRelease, used_bytes, wait_vram_released

# An instance that stayed ready this long has its restart count forgiven.
RESTART_FORGIVE_AFTER_S = 600.0


Listener = Callable[["Instance", Event], None]


class Instance:
    """A managed `vllm serve`: start, wait_ready, stop, state, endpoint, log."""

    def __init__(
        self,
        entry: ModelEntry,
        settings: Settings,
        placement: Placement,
        *,
        log_dir: Path,
        inventory: GpuInventory | None = None,
        model_source: str | None = None,
        api_key: str | None = None,
    ) -> None:
        self.entry = entry
        self.settings = settings
        self.placement = placement
        self.log_dir = log_dir
        self.inventory = inventory or NoGpuInventory()
        self.model_source = model_source
        # The instance's own key (vLLM reads VLLM_API_KEY): only the supervisor and the gateway
        # can use the backend, and a foreign server on our port cannot pass for ours.
        self.api_key = api_key or secrets.token_urlsafe(24)
        self.events: list[Event] = []
        self.restarts = 0
        self.launched_pids: list[int] = []  # every `vllm serve` this instance started, in order
        self.last_error: StartFailed | None = None
        self.stage: Stage | None = None
        self.ready_since: float | None = None
        self.log_path: Path | None = None
        self._state = State.STOPPED
        self._changed = asyncio.Event()
        self._listeners: list[Listener] = []
        self._process: ServeProcess | None = None
        self._supervisor: asyncio.Task[None] | None = None
        self._lifecycle = asyncio.Lock()
        self._vram_before: int | None = None
        self._vram_running: int | None = None
        self._shutdown_coming = False
        self._sleep_client: HealthProbe | None = None
        self._asleep_or_waking = False  # health verdicts mean nothing while vLLM sleeps or wakes

    # -- read side --------------------------------------------------------------------
    @property
    def alias(self) -> str:
        return self.entry.alias

    @property
    def state(self) -> State:
        return self._state

    @property
    def endpoint(self) -> str:
        return f"http://{url_host(self.settings.host)}:{self.placement.port}/v1"

    @property
    def pid(self) -> int | None:
        return None if self._process is None else self._process.pid

    @property
    def process(self) -> ServeProcess | None:
        return self._process

    def add_listener(self, listener: Listener) -> None:
        self._listeners.append(listener)

    def log_tail(self, count: int = 20) -> list[str]:
        return [] if self.log_path is None else read_log_tail(self.log_path, count)

    def info(self) -> dict[str, Any]:
        now = time.time()
        return {
            "alias": self.alias, "state": self._state.value, "stage": self.stage,
            "gpus": list(self.placement.gpus), "port": self.placement.port, "pid": self.pid,
            "endpoint": self.endpoint, "served_name": self.entry.served_name,
            "uptime_s": None if self.ready_since is None else round(now - self.ready_since, 1),
            "restarts": self.restarts, "log": None if self.log_path is None else str(self.log_path),
            "gpu_budget": self.entry.gpu_budget, "pinned": self.entry.pinned, "sleep_level": self.entry.sleep_level,
            "last_error": None if self.last_error is None else self.last_error.reason,
            "vram_bytes": None if self._process is None or self._vram_running is None or self._vram_before is None
            else max(0, self._vram_running - self._vram_before),
        }

    # -- the single writer of state ---------------------------------------------------
    def _enter(self, kind: EventKind, message: str) -> None:
        state = ENTERS[kind]
        if state not in TRANSITIONS[self._state]:
            raise IllegalTransition(f"{self.alias}: {self._state} -> {state} is not allowed ({message})")
        self._state = state
        self._record(Event(time.time(), kind, state, message))

    def _note(self, kind: EventKind, message: str, stage: Stage | None = None) -> None:
        """An event that does not change the state (a launch, a load stage, an exit before a restart)."""
        assert kind not in ENTERS, f"{kind} changes the state: use _enter"
        self._record(Event(time.time(), kind, self._state, message, stage))

    def _record(self, event: Event) -> None:
        self.events.append(event)
        del self.events[:-500]
        for listener in list(self._listeners):
            listener(self, event)
        changed, self._changed = self._changed, asyncio.Event()
        changed.set()

    async def wait_change(self) -> None:
        """Return at the next event (state change or note)."""
        await self._changed.wait()

    # -- commands ---------------------------------------------------------------------
    async def start(self) -> None:
        """Begin starting, unless a start is already under way or done (then join it)."""
        async with self._lifecycle:
            if self._state in LIVE_STATES:
                return
            self.restarts = 0
            self.last_error = None
            self._shutdown_coming = False
            self._enter(EventKind.START_REQUESTED, "start requested")
            self._supervisor = asyncio.get_running_loop().create_task(self._supervise(), name=f"supervise {self.alias}")

    async def wait_ready(self, timeout: float | None = None) -> None:
        """Return once ready; raise StartFailed if it failed or was stopped instead."""
        async def until_settled() -> None:
            while self._state in (State.STARTING, State.UNHEALTHY):
                await self.wait_change()
        await asyncio.wait_for(until_settled(), timeout)
        if self._state is State.READY:
            return
        if self.last_error is not None:
            raise self.last_error
        raise StartFailed(self.alias, f"is {self._state.value}, not ready")

    def expect_shutdown(self) -> None:
        """A stop is coming: a process that dies from now on is not restarted.

        Under systemd's KillMode=control-group every vLLM process gets SIGTERM at the same
        moment as the daemon; without this, a watcher could start a fresh one meanwhile.
        """
        self._shutdown_coming = True

    async def stop(self, reason: str = "stop requested", kind: EventKind = EventKind.STOPPING) -> StopResult:
        """Stop the whole tree and prove it is gone (and its VRAM back, on a GPU).

        Shielded: a caller that gives up (a client that disconnects, a timeout) does not
        leave a tree half killed; the stop runs to its end regardless.
        """
        self._shutdown_coming = True
        assert kind in STOP_KINDS, kind
        return await asyncio.shield(self._stop(reason, kind))

    async def _stop(self, reason: str, kind: EventKind) -> StopResult:
        async with self._lifecycle:
            if self._process is None and self._state in (State.STOPPED, State.FAILED):
                if self._state is State.FAILED:
                    self._enter(kind, reason)
                    self._enter(EventKind.STOPPED, "stopped (nothing was running)")
                return StopResult(self.alias, 0.0, was_running=False)
            self._enter(kind, reason)
            self.ready_since = None
            await self._cancel_supervisor()
            result = await self._end_process()
            if result.survivors:
                self._enter(EventKind.FAILED, f"stop left processes alive: {result.survivors}")
            else:
                self._enter(EventKind.STOPPED, f"stopped in {result.took_s:.2f}s: {result.proof()}")
            return result

    async def _cancel_supervisor(self) -> None:
        task, self._supervisor = self._supervisor, None
        if task is None or task is asyncio.current_task():
            return
        while not task.done():  # cancelled again if a cancel was swallowed on the way
            task.cancel()
            await asyncio.wait({task}, timeout=1.0)
        with contextlib.suppress(asyncio.CancelledError):
            task.result()

    # -- sleep mode -----------------------------------------------------------------------
    async def sleep(self, reason: str, kind: EventKind = EventKind.SLEEPING) -> str:
        """Put a ready instance to sleep at its entry's level and prove the GPU memory came back;
        the proof in one line. Raises SleepFailed (the caller stops it instead) when the host has
        no room for the weights (level 1), vLLM refuses, or NVML does not show the memory back.
        """
        level = self.entry.sleep_level
        async with self._lifecycle:
            if self._state is not State.READY or level is None or self._process is None:
                raise SleepFailed(f"{self.alias} is {self._state.value}, not a ready sleep-mode instance")
            check_host_room(level, self._vram_before, self._vram_running)
            self._asleep_or_waking = True
            self.ready_since = None
            self._enter(kind, f"{reason}: sleep level {level}")
            started = time.monotonic()
            answer = await self._sleep_probe().control(f"/sleep?level={level}", self.settings.probe_timeout_s)
            if answer is None or answer[0] != 200:
                raise SleepFailed(f"vLLM did not sleep: {'no answer' if answer is None else f'HTTP {answer[0]}'}")
            proof = await prove_sleep(self.inventory, self.placement.gpus, self.settings,
                                      used_before_start=self._vram_before, used_while_running=self._vram_running,
                                      started=started)
            self._note(EventKind.SLEPT, proof)
            return proof

    async def wake(self) -> None:
        """Wake a sleeping instance and wait until it answers again; StartFailed if it does not."""
        async with self._lifecycle:
            if self._state is not State.SLEEPING:
                return
            self._enter(EventKind.WAKING, "woken for a request")
            started = time.monotonic()
            probe = self._sleep_probe()
            answer = await probe.control("/wake_up", self.settings.ready_stall_timeout_s)
            if answer is None or answer[0] != 200 or not await probe.ready():
                raise StartFailed(self.alias, "did not wake up from sleep mode", log_tail=self.log_tail(),
                                  log_path=self.log_path)
            self._asleep_or_waking = False
            self.ready_since = time.time()
            self._enter(EventKind.READY, f"awake in {time.monotonic() - started:.2f}s at {self.endpoint}")

    def _sleep_probe(self) -> HealthProbe:
        if self._sleep_client is None:
            self._sleep_client = HealthProbe(self.endpoint.removesuffix("/v1"), self.entry.served_name, self.api_key)
        return self._sleep_client

    # -- supervision --------------------------------------------------------------------
    async def adopt(self, process: ServeProcess, log_path: Path | None) -> None:
        """Take over a running, healthy tree that a previous supervisor started."""
        async with self._lifecycle:
            self._process = process
            self.log_path = log_path
            self._enter(EventKind.ADOPTING, f"adopting pid {process.pid} left running by a previous supervisor")
            self._supervisor = asyncio.get_running_loop().create_task(
                self._supervise(adopted=True), name=f"supervise {self.alias}")

    async def _supervise(self, adopted: bool = False) -> None:
        try:
            await self._supervise_lives(adopted)
        except asyncio.CancelledError:
            raise
        except Exception as error:  # a bug or an unforeseen OS error must not leave callers waiting forever
            self.last_error = StartFailed(self.alias, f"supervision failed: {error.__class__.__name__}: {error}",
                                          log_tail=self.log_tail(), log_path=self.log_path)
            await self._end_process()
            if self._state is not State.FAILED:
                self._enter(EventKind.FAILED, self.last_error.reason)

    async def _supervise_lives(self, adopted: bool) -> None:
        first_start = not adopted
        launch = not adopted
        while True:
            try:
                if launch:
                    await self._launch()
                    await self._wait_loaded()
                launch = True
            except StartFailed as failure:
                self.last_error = failure
                cleanup = await self._end_process()
                if cleanup.survivors:
                    self._enter(EventKind.FAILED, f"{failure.reason}; {self._survivors_block(cleanup)}")
                    return
                if first_start or self._shutdown_coming or self.restarts >= self.settings.max_restarts:
                    self._enter(EventKind.FAILED, failure.reason)
                    return
                await self._backoff(failure.reason)
                continue
            first_start = False
            self.ready_since = time.time()
            self._enter(EventKind.READY, f"ready at {self.endpoint}")
            reason = await self._watch()
            self.ready_since = None
            if self._state is State.READY:  # never shown ready while the dead tree is cleaned up
                self._enter(EventKind.UNHEALTHY, reason)
            self.last_error = StartFailed(self.alias, reason, exit_code=self._exit_code(),
                                          log_tail=self.log_tail(), log_path=self.log_path)
            cleanup = await self._end_process()
            if cleanup.survivors:
                self._enter(EventKind.FAILED, f"{reason}; {self._survivors_block(cleanup)}")
                return
            self._note(EventKind.EXITED, f"{reason}; what was left of the tree is gone: {cleanup.proof()}")
            if self._shutdown_coming:
                return
            if self.restarts >= self.settings.max_restarts:
                self._enter(EventKind.FAILED, f"{reason}; gave up after {self.restarts} restart(s)")
                return
            await self._backoff(reason)

    @staticmethod
    def _survivors_block(cleanup: StopResult) -> str:
        return f"not restarted: processes of the old tree survived SIGKILL ({cleanup.survivors})"

    async def _backoff(self, reason: str) -> None:
        delay = min(self.settings.restart_backoff_s * (2 ** self.restarts), self.settings.restart_backoff_max_s)
        self.restarts += 1
        attempt = f"restart {self.restarts}/{self.settings.max_restarts}"
        self._enter(EventKind.RESTARTING, f"{reason}; {attempt} in {delay:.1f}s")
        await asyncio.sleep(delay)

    def _exit_code(self) -> int | None:
        return None if self._process is None else self._process.exit_code()

    def serve_command(self) -> ServeCommand:
        gpus = list(self.placement.gpus) if self.placement.gpus else None
        quiet = PROBED_ENDPOINTS if filters_access_log(self.settings.vllm_executable) else ()
        return build_serve_command(self.entry, self.settings, port=self.placement.port, gpus=gpus,
                                   model_source=self.model_source, api_key=self.api_key, quiet_endpoints=quiet)

    async def _launch(self) -> None:
        try:
            command = self.serve_command()
        except ValueError as error:
            raise StartFailed(self.alias, f"cannot build the vllm serve command: {error}") from None
        self.log_path = next_log_path(self.log_dir, self.alias)
        self._vram_before = self._vram_reading()
        self._vram_running = None
        # NOTIFY_SOCKET is systemd's channel to the daemon; vLLM must not talk on it.
        environment = {k: v for k, v in os.environ.items() if k != "NOTIFY_SOCKET"} | command.env
        if self.restarts:  # the port the old tree had: its listening socket gone first (or 10 s passed)
            await wait_port_released(self.placement.port)
        try:
            self._process = ServeProcess.spawn(command.argv, env=environment, log_path=self.log_path)
        except OSError as error:
            raise StartFailed(self.alias, f"cannot run '{command.argv[0]}': {error.strerror or error} "
                              "(bawt_vllm.vllm_executable names the vllm program; vLLM often lives in its own venv)",
                              log_path=self.log_path) from None
        self.launched_pids.append(self._process.pid)
        self.stage = Stage.LAUNCHED
        self._note(EventKind.LAUNCHED, f"launched pid {self._process.pid}, log {self.log_path}", Stage.LAUNCHED)

    def _vram_reading(self) -> int | None:
        if not self.placement.gpus:
            return None
        gpus = self.inventory.snapshot()
        return used_bytes(gpus, self.placement.gpus) if gpus else None

    async def _wait_loaded(self) -> None:
        """Follow the load until ready; raise StartFailed on exit, stall or total timeout."""
        assert self._process is not None and self.log_path is not None
        process, follower = self._process, LogFollower(self.log_path)
        probe = HealthProbe(self.endpoint.removesuffix("/v1"), self.entry.served_name, self.api_key)
        started = time.monotonic()
        next_http_check = started
        try:
            while True:
                announced_ready = self._follow_stages(follower.read())
                now = time.monotonic()
                if announced_ready or now >= next_http_check:
                    next_http_check = now + 0.5
                    if await probe.ready() and self._port_is_ours(process.refresh(), during_load=True):
                        self._vram_running = self._vram_reading()
                        process.refresh()
                        return
                if not process.running():
                    follower.read()
                    raise StartFailed(self.alias, f"vllm serve exited during load with code {process.exit_code()}",
                                      exit_code=process.exit_code(), log_tail=follower.tail(), log_path=self.log_path)
                stall = self.settings.ready_stall_timeout_s
                if follower.silent_for() > stall:
                    reason = f"load stalled: no log progress for {stall:.0f}s (stage: {self.stage})"
                    raise StartFailed(self.alias, reason, log_tail=follower.tail(), log_path=self.log_path)
                total = self.settings.ready_total_timeout_s
                if total is not None and now - started > total:
                    raise StartFailed(self.alias, f"not ready after {total:.0f}s (stage: {self.stage})",
                                      log_tail=follower.tail(), log_path=self.log_path)
                await process.wait_exit(timeout=0.02)
        finally:
            follower.close()
            await probe.close()

    def _port_is_ours(self, members: list[ProcessIdentity], *, during_load: bool) -> bool:
        """Whether our own tree, and nobody else, listens on our port.

        A foreign listener during the load means another server holds our port (vLLM binds
        before it listens, so the port looked free): the start fails with that reason rather
        than sending our requests to a stranger.
        """
        listeners = port_listeners(self.placement.port, [m.pid for m in members])
        if listeners.foreign and during_load:
            raise StartFailed(self.alias, f"{listeners.describe()}: another server answers on our port; "
                              "it will be placed on another port on the next start", log_path=self.log_path)
        return listeners.owned

    def _follow_stages(self, lines: list[str]) -> bool:
        announced_ready = False
        for line in lines:
            stage = classify_line(line)
            if stage is None:
                continue
            announced_ready = announced_ready or stage is Stage.READY
            if self.stage is None or stage.rank > self.stage.rank:
                self.stage = stage
                self._note(EventKind.STAGE, line.strip()[:200], stage)
        return announced_ready

    async def _watch(self) -> str:
        """Watch a ready instance; return why it must be restarted."""
        assert self._process is not None
        process = self._process
        probe = HealthProbe(self.endpoint.removesuffix("/v1"), self.entry.served_name, self.api_key)
        check = HealthCheck(probe, self.placement.port, self.settings)
        failed_checks = 0
        try:
            while True:
                code = await process.wait_exit(timeout=self.settings.health_interval_s)
                if code is not None:
                    return f"vllm serve exited with code {code} after being ready"
                members = process.refresh()
                if self.ready_since and time.time() - self.ready_since > RESTART_FORGIVE_AFTER_S:
                    self.restarts = 0
                verdict, why = await check.run(members, engine=not self._asleep_or_waking)
                if self._asleep_or_waking and verdict is not Health.OK:
                    failed_checks += 1  # a sleeping engine is only asked whether it lives
                    if failed_checks < UNHEALTHY_CHECKS_BEFORE_RESTART:
                        continue
                    return f"unhealthy while asleep: {why} ({failed_checks} checks in a row)"
                if verdict is Health.HUNG:
                    return why  # the detector's window already spans probe_timeout_s: restart now
                if verdict is Health.OK:
                    if self._state is State.UNHEALTHY:
                        self._enter(EventKind.RECOVERED, "healthy again")
                    failed_checks = 0
                    continue
                failed_checks += 1
                if self._state is State.READY:
                    self._enter(EventKind.UNHEALTHY, why)
                if failed_checks >= UNHEALTHY_CHECKS_BEFORE_RESTART:
                    return f"unhealthy: {why} ({failed_checks} checks in a row)"
        finally:
            await probe.close()

    async def _end_process(self) -> StopResult:
        self._asleep_or_waking = False
        if self._sleep_client is not None:
            await self._sleep_client.close()
            self._sleep_client = None
        # The process stays recorded until the kill completes, so that a stop that cancels
        # a supervisor halfway through a kill still finds the tree and finishes the job.
        process = self._process
        if process is None:
            return StopResult(self.alias, 0.0, was_running=False)
        report: KillReport = await process.kill_tree(self.settings.stop_grace_s)
        vram = await self._prove_vram_released(process.known_members())
        if self._process is process and report.clean:
            self._process = None  # kept while anything survives, so the record and port stay held
        self.stage = None
        return StopResult.of_kill(self.alias, report, vram)

    async def _prove_vram_released(self, members: list[ProcessIdentity]) -> VramRelease | None:
        if not self.placement.gpus or not self.inventory.snapshot():
            return None
        return await wait_vram_released(
            self.inventory, indices=self.placement.gpus, pids={m.pid for m in members},
            used_before_start=self._vram_before, used_while_running=self._vram_running,
            tolerance_bytes=self.settings.vram_tolerance_mib * 1024 * 1024,
            timeout_s=self.settings.vram_release_timeout_s,
        )

