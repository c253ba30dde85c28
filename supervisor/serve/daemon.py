"""`bawt-vllm daemon`: one long-running process that owns every instance.

It serves the control API on a Unix socket (0600) and the OpenAI gateway on TCP, adopts or
stops what a previous daemon left behind, preloads the models marked `preload`, reloads the
config on SIGHUP without touching instances whose entry did not change, and on SIGTERM
stops every instance, verified gone, before it exits (`bawt-vllm daemon stop`, over the control
socket, takes the same way out). Under systemd (Type=notify) it says READY=1 once its sockets
are up and STOPPING=1 when shutdown begins; with RuntimeDirectory= its control socket is in
$RUNTIME_DIRECTORY, where the CLI finds the system service. Every lifecycle event of every
model is one log line (eventlog), on the journal, a rotated file or stderr (logsetup).
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import os
import sys
import time
from collections.abc import Coroutine
from pathlib import Path
from typing import Any

from aiohttp import web

from ..config.loading import load_config
from ..config.paths import daemon_control_socket
from ..config.problems import ConfigError
from ..config.schema import Config
from ..config.urls import gateway_base_url
from ..control.server import ControlApi
from ..runtime.pool import ConfigRejected, Pool
from ..runtime.process import become_subreaper
from ..runtime.statefile import StateDirLock
from . import eventloop
from .eventlog import EventLog
from .gateway import Gateway
from .logsetup import setup_logging
from .metrics import Metrics
from .notify import notify_ready, notify_status, notify_stopping
from .signals import SignalHub

log = logging.getLogger("bawt_vllm.daemon")


class DaemonStartError(RuntimeError):
    """The daemon cannot start (its gateway port is taken, ...): one clear line, no traceback."""


def control_socket_path(config: Config) -> Path:
    """Where this daemon binds its control socket ($RUNTIME_DIRECTORY under a unit that has one)."""
    return daemon_control_socket(Path(config.settings.state_dir))


class Daemon:
    def __init__(self, config_path: Path | None = None) -> None:
        self.config_path = config_path
        self.hub = SignalHub()
        self.shutting_down = False
        self.gateway_url = ""
        self._runners: list[web.AppRunner] = []
        self._gateway: Gateway | None = None
        self._lock: StateDirLock | None = None
        self._tasks: set[asyncio.Task[object]] = set()
        self._socket_path: Path | None = None  # the socket this daemon bound, the only one it removes
        self._reloading = asyncio.Lock()

    async def run(self) -> int:
        config = await asyncio.to_thread(load_config, self.config_path)
        self.config_path = config.path
        state_dir = Path(config.settings.state_dir)
        state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        self._lock = StateDirLock(state_dir, "daemon")
        become_subreaper()
        self.hub.install(on_reload=lambda: self._spawn(self.reload()))
        self.pool = Pool(config)
        self.metrics = Metrics(self.pool.status)
        self.pool.subscribe(self.metrics.observe)
        self.pool.on_stop(self.metrics.observe_stop)
        EventLog().attach(self.pool)
        try:
            # Sockets first: a taken gateway port fails the start before anything left by a
            # previous daemon is adopted or stopped.
            await self._serve(config)
            for line in (await self.pool.recover(adopt=True)).lines():
                log.info(line)
            self._warn_if_exposed(config)
            self.pool.start_ttl_reaper()
            notify_ready(f"gateway {self.gateway_url}; {len(config.models)} model(s) configured")
            log.info("ready: gateway %s/v1, control %s (event loop: %s)", self.gateway_url,
                     control_socket_path(config), eventloop.loop_name())
            self._preload(config)
            await self.hub.shutdown.wait()
            return 0
        finally:
            await self._shutdown()

    async def _serve(self, config: Config) -> None:
        gateway = Gateway(self.pool, self.metrics, shutting_down=lambda: self.shutting_down)
        self._gateway = gateway
        try:
            await gateway.start(config.settings.gateway_host, config.settings.gateway_port)
        except OSError as error:
            raise DaemonStartError(
                f"the gateway cannot listen on {config.settings.gateway_host}:{config.settings.gateway_port}: "
                f"{error.strerror or error}; another program (another bawt-vllm?) holds it: stop it, or set "
                f"bawt_vllm.gateway_port in {config.path}") from None
        # Where the gateway was bound; a reload does not move it.
        self.gateway_url = gateway_base_url(config.settings).removesuffix("/v1")
        socket_path = control_socket_path(config)
        with contextlib.suppress(FileNotFoundError):
            socket_path.unlink()  # a stale socket of a dead daemon (the lock proves none runs)
        self._socket_path = socket_path
        # `daemon stop` leaves the way SIGTERM does: the hub's shutdown event ends run().
        control = ControlApi(self.pool, gateway_url=self.gateway_url, reload=self.reload,
                             shutdown=self.hub.shutdown.set)
        control_runner = web.AppRunner(control.app(), handler_cancellation=True, access_log=None)
        await control_runner.setup()
        self._runners.append(control_runner)
        old_umask = os.umask(0o177)
        try:
            await web.UnixSite(control_runner, str(socket_path)).start()
        finally:
            os.umask(old_umask)
        os.chmod(socket_path, 0o600)

    def _warn_if_exposed(self, config: Config) -> None:
        settings = config.settings
        key_env = settings.api_key_env
        if not _is_loopback(settings.gateway_host) and not (key_env and os.environ.get(key_env)):
            log.warning("the gateway listens on %s without an API key: anyone who can reach it can use every "
                        "model; set $%s", settings.gateway_host, key_env or "BAWT_VLLM_API_KEY")

    def _preload(self, config: Config) -> None:
        for alias, entry in config.models.items():
            if entry.starts_with_daemon:  # preload, or pinned
                self._spawn(self._preload_one(alias))

    async def _preload_one(self, alias: str) -> None:
        try:
            await self.pool.up(alias)
            log.info("preloaded %s", alias)
        except Exception as error:  # a failed preload must not take the daemon down
            log.error("preload of %s failed: %s", alias, error)

    def _spawn(self, coro: Coroutine[Any, Any, object]) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def reload(self) -> list[str]:
        """Re-read the config (off the event loop) and apply it through the pool; one at a time.

        A config that does not load, or changes what only a restart can change, is refused
        whole and the running one kept.
        """
        async with self._reloading:
            if self.shutting_down:
                return ["refused: bawt-vllm is shutting down"]
            try:
                new = await asyncio.to_thread(load_config, self.config_path)
                self._check_reloadable(new)
                changes = await self.pool.apply_config(new)
            except (ConfigError, ConfigRejected) as error:
                log.error("reload refused, keeping the running config:\n%s", error)
                return [f"refused: {error}"]
        for change in changes:
            log.info("config reloaded: %s", change)
        if not changes:
            log.info("config reloaded: no instance affected")
        notify_status(f"config reloaded at {time.strftime('%H:%M:%S')}")
        return changes

    def _check_reloadable(self, new: Config) -> None:
        old = self.pool.config.settings
        moved = [key for key in ("gateway_host", "gateway_port") if getattr(new.settings, key) != getattr(old, key)]
        if moved:
            raise ConfigRejected(f"bawt_vllm.{', bawt_vllm.'.join(moved)} changed: the gateway moves only on a "
                                 "restart of bawt-vllm; config not reloaded")

    async def _shutdown(self) -> None:
        self.shutting_down = True
        notify_stopping("stopping every model")
        if self.gateway_url:  # a start that failed before its sockets were up has nothing to say here
            log.info("shutting down (%s): stopping every model", self._why_shutdown())
        for task in list(self._tasks):
            task.cancel()
        if hasattr(self, "pool"):
            await self.pool.close()  # each stop's proof is logged by the EventLog
        for runner in reversed(self._runners):
            await runner.cleanup()
        if self._gateway is not None:
            await self._gateway.close()
        if self._socket_path is not None:
            with contextlib.suppress(FileNotFoundError):
                self._socket_path.unlink()
        self.hub.uninstall()
        if self._lock is not None:
            self._lock.release()

    def _why_shutdown(self) -> str:
        if self.hub.received is not None:
            return self.hub.received.name
        return "`bawt-vllm daemon stop`" if self.hub.shutdown.is_set() else "an error"


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def run_daemon(config_path: Path | None, log_file: Path | None = None) -> int:
    """Run the daemon until it is stopped; the exit status. log_file: write the log there, rotated
    (a daemon started in the background), instead of stderr (a terminal, the journal)."""
    try:
        setup_logging(log_file)
    except OSError as error:
        print(f"bawt-vllm daemon not started: cannot write its log {log_file}: {error.strerror or error}",
              file=sys.stderr)
        return 1
    try:
        return eventloop.run(Daemon(config_path).run())
    except (DaemonStartError, ConfigError) as error:
        log.error("bawt-vllm daemon not started: %s", error)
        return 1
