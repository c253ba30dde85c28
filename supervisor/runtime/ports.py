"""Ports for instances: from the configured range, never one that already answers.

Reservations are held in-process under a lock, so concurrent starts never get the same
port; a port is also probed (connect and bind) so one taken by another program is skipped.
"""

from __future__ import annotations

import socket
import threading

from ..config.urls import connect_host


class NoFreePortError(RuntimeError):
    pass


def port_answers(host: str, port: int, timeout_s: float = 0.2) -> bool:
    """Whether something accepts TCP connections on host:port."""
    try:
        with socket.create_connection((connect_host(host), port), timeout=timeout_s):
            return True
    except OSError:
        return False


def port_bindable(host: str, port: int, *, strict: bool = False) -> bool:
    """Whether a server could bind host:port now.

    strict leaves SO_REUSEADDR off, so a port another program has bound without listening
    yet (vLLM binds its port long before it listens) counts as taken; it also counts ports
    with connections in TIME_WAIT, which is fine when choosing among many.
    """
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        if not strict:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True


class PortAllocator:
    def __init__(self, host: str, low: int, high: int) -> None:
        self.host = host
        self.low = low
        self.high = high
        self._reserved: set[int] = set()
        self._lock = threading.Lock()

    def reserve(self, preferred: int | None = None) -> int:
        """Reserve `preferred` (which must be free) or the lowest free port of the range."""
        with self._lock:
            if preferred is not None:
                self._check_usable(preferred)
                self._reserved.add(preferred)
                return preferred
            for port in range(self.low, self.high + 1):
                if port not in self._reserved and self._free(port, strict=True):
                    self._reserved.add(port)
                    return port
        raise NoFreePortError(
            f"no free port in {self.low}-{self.high} on {self.host} "
            f"({len(self._reserved)} held by our instances); widen bawt_vllm.port_range"
        )

    def claim(self, port: int) -> None:
        """Record a port already in use by an instance we adopted."""
        with self._lock:
            self._reserved.add(port)

    def release(self, port: int) -> None:
        with self._lock:
            self._reserved.discard(port)

    def reserved(self) -> set[int]:
        with self._lock:
            return set(self._reserved)

    def _check_usable(self, port: int) -> None:
        if port in self._reserved:
            raise NoFreePortError(f"port {port} is already used by another of our instances")
        if not self._free(port):
            raise NoFreePortError(f"port {port} on {self.host} is already in use by another program")

    def _free(self, port: int, *, strict: bool = False) -> bool:
        return not port_answers(self.host, port) and port_bindable(self.host, port, strict=strict)

