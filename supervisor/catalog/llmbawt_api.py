"""A small client of llm-bawt's model catalog REST API, and the catalog as read from it.

The routes (llm-bawt's service/routes/model_catalog.py; its service listens on 8642, no
authentication), all under /v1/models/catalog:

    GET    /access-paths                      {"access_paths": [row, ...]}
    GET    /models                            {"models": [row, ...]}
    GET    /endpoints                         {"endpoints": [row + model_key, access_path_key, ...]}
    PUT    /access-paths/{key}                upsert; the row back
    PUT    /models/{key}                      upsert; default_context_window required, > 0
    PUT    /endpoints/{model}/{access-path}   upsert; optional endpoint_id is a compare-and-set guard
    DELETE /endpoints/{id}                    the endpoint's numeric id; 409 when a bot uses it
    DELETE /models/{key}                      409 when a bot uses it
    DELETE /access-paths/{key}                409 while an endpoint uses it

Each write reloads llm-bawt's catalog at once. Errors are FastAPI's: `{"detail": "text"}`,
or `{"detail": [{"loc": [...], "msg": ...}, ...]}` for a body it refuses (422); 503 when its
database is down.

Standard library only (urllib, json). Proxies from the environment are not used: the service
is a local or LAN one, and a proxy in between only turns a clear "connection refused" into a
proxy's error page.
"""

from __future__ import annotations

import http.client
import json
import socket
import urllib.error
import urllib.request
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote

from ..config.urls import LLM_BAWT_SERVICE_URL

DEFAULT_CATALOG_URL = LLM_BAWT_SERVICE_URL
CATALOG_PREFIX = "/v1/models/catalog"
DEFAULT_TIMEOUT_S = 10.0
CATALOG_URL_OPTION = "--catalog-url"
"""The option that points the command at another llm-bawt (named in the unreachable message)."""

Row = dict[str, Any]


class CatalogError(Exception):
    """Any failure talking to llm-bawt's catalog; the message says what and where."""


class CatalogUnreachableError(CatalogError):
    def __init__(self, base_url: str, reason: str) -> None:
        self.base_url, self.reason = base_url, reason
        super().__init__(
            f"cannot reach llm-bawt at {base_url} ({reason}): is its service running there? "
            f"Point at another with {CATALOG_URL_OPTION} URL (e.g. {CATALOG_URL_OPTION} http://192.168.1.20:8642)"
        )


class CatalogHTTPError(CatalogError):
    def __init__(self, method: str, url: str, status: int, detail: str) -> None:
        self.method, self.url, self.status, self.detail = method, url, status, detail
        super().__init__(f"llm-bawt answered {status} to {method} {url}: {detail}")


class NoCatalogError(CatalogError):
    def __init__(self, base_url: str) -> None:
        super().__init__(
            f"{base_url} has no model catalog API (404 on GET {CATALOG_PREFIX}/access-paths): this llm-bawt "
            "predates its model catalog and reads models.yaml; use `bawt-vllm entries --write` instead"
        )


def catalog_route(*parts: str | int) -> str:
    """A route under /v1/models/catalog, each part percent-encoded (a key may hold any character)."""
    return CATALOG_PREFIX + "".join("/" + quote(str(part), safe="") for part in parts)


@dataclass(frozen=True)
class CatalogClient:
    """JSON over HTTP to one llm-bawt service; every failure is a CatalogError."""

    base_url: str = DEFAULT_CATALOG_URL
    timeout_s: float = DEFAULT_TIMEOUT_S

    def __post_init__(self) -> None:
        # The service's address; its OpenAI base (…/v1), which users may paste instead, means the same.
        object.__setattr__(self, "base_url", self.base_url.rstrip("/").removesuffix("/v1"))

    def request(self, method: str, route: str, body: Mapping[str, Any] | None = None) -> Any:
        """The decoded JSON answer of `method route` (route from `catalog_route`)."""
        url = self.base_url + route
        data = json.dumps(body).encode() if body is not None else None
        headers = {"Accept": "application/json"}
        if data is not None:
            headers["Content-Type"] = "application/json"
        request = urllib.request.Request(url, data=data, method=method, headers=headers)
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
        try:
            with opener.open(request, timeout=self.timeout_s) as response:
                raw = response.read()
                status = response.status
        except urllib.error.HTTPError as error:
            raise CatalogHTTPError(method, url, error.code, _detail(error.read(), error.reason)) from None
        except urllib.error.URLError as error:
            raise CatalogUnreachableError(self.base_url, self._reason(error.reason)) from None
        except (OSError, http.client.HTTPException) as error:  # a timeout or a reset while reading
            raise CatalogUnreachableError(self.base_url, self._reason(error)) from None
        try:
            return json.loads(raw) if raw.strip() else None
        except ValueError:
            raise CatalogHTTPError(method, url, status, f"the answer is not JSON: is {self.base_url} "
                                   "llm-bawt's service?") from None

    def _reason(self, reason: object) -> str:
        if isinstance(reason, TimeoutError):
            return f"no answer within {self.timeout_s:g} s"
        if isinstance(reason, ConnectionRefusedError):
            return "connection refused"
        if isinstance(reason, socket.gaierror):
            return "unknown host"
        if isinstance(reason, http.client.RemoteDisconnected | ConnectionResetError):
            return "the connection closed without an answer"
        return str(reason) or type(reason).__name__


def _detail(raw: bytes, fallback: object) -> str:
    """FastAPI's `detail` as one line: its text, or its validation errors joined."""
    try:
        detail = json.loads(raw).get("detail")
    except (ValueError, AttributeError):
        text = raw.decode("utf-8", "replace").strip()
        return text[:300] if text else str(fallback)
    if isinstance(detail, list):
        return "; ".join(_validation_item(item) for item in detail) or str(fallback)
    return str(detail) if detail is not None else str(fallback)


def _validation_item(item: Any) -> str:
    if not isinstance(item, Mapping):
        return str(item)
    location = [str(part) for part in item.get("loc", []) if part != "body"]
    return f"{'.'.join(location) or 'body'}: {item.get('msg', '?')}"


# --------------------------------------------------------------------------- the catalog as read


@dataclass
class CatalogState:
    """What llm-bawt's catalog holds: access paths and models by key, and every endpoint."""

    access_paths: dict[str, Row] = field(default_factory=dict)
    models: dict[str, Row] = field(default_factory=dict)
    endpoints: list[Row] = field(default_factory=list)

    def endpoints_of(self, model_key: str) -> list[Row]:
        return [row for row in self.endpoints if row.get("model_key") == model_key]

    def endpoints_on(self, access_path_key: str) -> list[Row]:
        return [row for row in self.endpoints if row.get("access_path_key") == access_path_key]


def read_state(client: CatalogClient) -> CatalogState:
    """The whole catalog, in three GETs; NoCatalogError for an llm-bawt without the API."""
    try:
        access_paths = _rows(client, "access-paths", "access_paths")
    except CatalogHTTPError as error:
        if error.status == 404:
            raise NoCatalogError(client.base_url) from None
        raise
    models = _rows(client, "models", "models")
    endpoints = _rows(client, "endpoints", "endpoints")
    return CatalogState(
        access_paths={str(row.get("key")): row for row in access_paths},
        models={str(row.get("key")): row for row in models},
        endpoints=endpoints,
    )


def _rows(client: CatalogClient, route: str, key: str) -> list[Row]:
    answer = client.request("GET", catalog_route(route))
    rows = answer.get(key) if isinstance(answer, dict) else None
    if not isinstance(rows, list) or not all(isinstance(row, dict) for row in rows):
        raise CatalogError(f"unexpected answer to GET {client.base_url}{catalog_route(route)}: expected "
                           f"{{\"{key}\": [...]}}; is this llm-bawt's service?")
    return rows
