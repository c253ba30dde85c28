"""How a configured bind address becomes a URL a client on this machine can use.

A server bound to 0.0.0.0 or :: is reached on loopback; an IPv6 literal goes in brackets.
Used for instance endpoints, the gateway's base URL (the CLI, llm-bawt entries, VLLMClient)
and the daemon's own view of where it listens.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .schema import Settings

_WILDCARD_TO_LOOPBACK = {"0.0.0.0": "127.0.0.1", "": "127.0.0.1", "::": "::1"}


def connect_host(bind_host: str) -> str:
    """The address a client on this machine uses to reach a server bound to bind_host."""
    return _WILDCARD_TO_LOOPBACK.get(bind_host, bind_host)


def url_host(bind_host: str) -> str:
    """connect_host, written for a URL (IPv6 literals in brackets)."""
    host = connect_host(bind_host)
    return f"[{host}]" if ":" in host and not host.startswith("[") else host


def gateway_base_url(settings: Settings) -> str:
    """The gateway's OpenAI base URL as a client on this machine reaches it."""
    return f"http://{url_host(settings.gateway_host)}:{settings.gateway_port}/v1"
