"""How a configured bind address becomes a URL a client on this machine can use, and which
gateway URL llm-bawt is given.

A server bound to 0.0.0.0 or :: is reached on loopback; an IPv6 literal goes in brackets.
Used for instance endpoints, the gateway's base URL (the CLI, llm-bawt entries, VLLMClient)
and the daemon's own view of where it listens.

llm-bawt may run elsewhere (often a Docker container, where 127.0.0.1 is the container
itself), so the URL written for it can be a public one: `gateway_public_url` in the
`bawt_vllm:` section, or a `--base-url` given to the command.

Standard library only, and no import of the schema: schema.py validates `gateway_public_url`
with `http_url_problem` from here.
"""

from __future__ import annotations

import ipaddress
from typing import Protocol
from urllib.parse import urlsplit

_WILDCARD_TO_LOOPBACK = {"0.0.0.0": "127.0.0.1", "": "127.0.0.1", "::": "::1"}
OPENAI_PATH = "/v1"
HTTP_URL_EXPECTATION = "must be an http:// or https:// URL with a host, e.g. http://host.docker.internal:8400"


class GatewayAddress(Protocol):
    """What the URL functions read of the `bawt_vllm:` settings."""

    @property
    def gateway_host(self) -> str: ...

    @property
    def gateway_port(self) -> int: ...


class PublicGatewayAddress(GatewayAddress, Protocol):
    @property
    def gateway_public_url(self) -> str | None: ...


def connect_host(bind_host: str) -> str:
    """The address a client on this machine uses to reach a server bound to bind_host."""
    return _WILDCARD_TO_LOOPBACK.get(bind_host, bind_host)


def url_host(bind_host: str) -> str:
    """connect_host, written for a URL (IPv6 literals in brackets)."""
    host = connect_host(bind_host)
    return f"[{host}]" if ":" in host and not host.startswith("[") else host


def gateway_base_url(settings: GatewayAddress) -> str:
    """The gateway's OpenAI base URL as a client on this machine reaches it."""
    return f"http://{url_host(settings.gateway_host)}:{settings.gateway_port}{OPENAI_PATH}"


def http_url_problem(value: str) -> str | None:
    """Why `value` is not an absolute http(s) URL with a host; None when it is one."""
    if not value or value != value.strip() or any(char.isspace() or char == "\0" for char in value):
        return HTTP_URL_EXPECTATION
    try:
        parts = urlsplit(value)
        _ = parts.port  # raises ValueError for a port that is not a number in range
    except ValueError:
        return HTTP_URL_EXPECTATION
    if parts.scheme not in ("http", "https") or not parts.hostname:
        return HTTP_URL_EXPECTATION
    if parts.query or parts.fragment or parts.username or parts.password:
        return HTTP_URL_EXPECTATION + " (no user, query or fragment)"
    return None


def openai_base_url(url: str) -> str:
    """`url` as an OpenAI base URL: no trailing slash, ending in /v1 (added when absent)."""
    trimmed = url.rstrip("/")
    return trimmed if urlsplit(trimmed).path.endswith(OPENAI_PATH) else trimmed + OPENAI_PATH


def llm_bawt_base_url(settings: PublicGatewayAddress, override: str | None = None) -> str:
    """The gateway's OpenAI base URL written for llm-bawt: `override` (a `--base-url`), else
    `gateway_public_url`, else the loopback URL of `gateway_base_url`."""
    chosen = override or settings.gateway_public_url
    return openai_base_url(chosen) if chosen else gateway_base_url(settings)


def is_loopback_host(host: str) -> bool:
    """Whether `host` is this machine's loopback (localhost, 127.0.0.0/8, ::1); a wildcard is not."""
    host = host.strip("[]")
    if host == "localhost" or host.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def is_loopback_url(url: str) -> bool:
    """Whether the URL's host is this machine's loopback."""
    return is_loopback_host(urlsplit(url).hostname or "")


LLM_BAWT_SERVICE_URL = "http://127.0.0.1:8642"
"""llm-bawt's service on this machine (its default port), where `entries --catalog` registers models."""
