"""The systemd readiness protocol (sd_notify(3)), hand-written and stdlib only.

A `Type=notify` service tells systemd it is up by sending a datagram such as
"READY=1\\nSTATUS=serving" to the AF_UNIX socket named in $NOTIFY_SOCKET. The
name is a filesystem path, or an abstract socket when it starts with '@'. When
the variable is unset (not under systemd, or another service type) every call
here is a no-op that returns False, so callers never need to check first.

Children inherit $NOTIFY_SOCKET: code that spawns processes should drop it
from their environment (systemd ignores them under the default
`NotifyAccess=main`, but they have no business talking to it).
"""

from __future__ import annotations

import logging
import os
import socket
import time
from collections.abc import Mapping

__all__ = [
    "NOTIFY_SOCKET_ENV",
    "notify_ready",
    "notify_reloading",
    "notify_status",
    "notify_stopping",
    "sd_notify",
]

NOTIFY_SOCKET_ENV = "NOTIFY_SOCKET"

log = logging.getLogger(__name__)


def _socket_address(name: str) -> str | None:
    """The address to send to, or None for a form this sender does not speak (e.g. vsock:)."""
    if name.startswith("@"):
        return "\0" + name[1:]
    if name.startswith("/"):
        return name
    return None


def _check_field(field: str) -> None:
    """One line of VARIABLE=value; a newline would split it into two assignments."""
    if "\n" in field or "=" not in field:
        raise ValueError(f"sd_notify field must be a single VARIABLE=value line, got {field!r}")


def sd_notify(*fields: str, environ: Mapping[str, str] | None = None) -> bool:
    """Send `fields` (e.g. "READY=1", "STATUS=...") to systemd as one datagram.

    Returns True when the datagram was sent. Returns False, without raising,
    when $NOTIFY_SOCKET is unset or empty, names an address form this sender
    does not support, or the send fails (logged as a warning): a service must
    not die because its supervisor could not be told something.
    """
    env = os.environ if environ is None else environ
    name = env.get(NOTIFY_SOCKET_ENV, "")
    if not name or not fields:
        return False
    for field in fields:
        _check_field(field)
    address = _socket_address(name)
    if address is None:
        log.warning("unsupported %s address %r; not notifying systemd", NOTIFY_SOCKET_ENV, name)
        return False
    message = "\n".join(fields).encode()
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
            sock.sendto(message, address)
    except OSError as error:
        log.warning("could not notify systemd at %r: %s", name, error)
        return False
    return True


def _status_field(text: str) -> str:
    """STATUS= takes one line; fold any newlines so the message stays well-formed."""
    return "STATUS=" + " ".join(text.splitlines())


def _with_status(first: str, status: str | None) -> list[str]:
    return [first] if status is None else [first, _status_field(status)]


def notify_ready(status: str | None = None, *, environ: Mapping[str, str] | None = None) -> bool:
    """READY=1: startup (or a reload) is complete."""
    return sd_notify(*_with_status("READY=1", status), environ=environ)


def notify_stopping(status: str | None = None, *, environ: Mapping[str, str] | None = None) -> bool:
    """STOPPING=1: shutdown has begun."""
    return sd_notify(*_with_status("STOPPING=1", status), environ=environ)


def notify_status(text: str, *, environ: Mapping[str, str] | None = None) -> bool:
    """STATUS=text: the free-form line shown by `systemctl status`."""
    return sd_notify(_status_field(text), environ=environ)


def notify_reloading(status: str | None = None, *, environ: Mapping[str, str] | None = None) -> bool:
    """RELOADING=1: a config reload began; send notify_ready() when it is done.

    MONOTONIC_USEC lets systemd match this message to the reload request (it
    is required for Type=notify-reload and harmless for Type=notify). Always follow
    with notify_ready(), even when the reload failed: until then systemd shows the
    unit as "reloading".
    """
    stamp = f"MONOTONIC_USEC={time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000}"
    fields = ["RELOADING=1", stamp]
    if status is not None:
        fields.append(_status_field(status))
    return sd_notify(*fields, environ=environ)
