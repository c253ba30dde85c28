"""The control socket's protocol, shared by the server (the daemon) and the client (the CLI, VLLMClient).

JSON over HTTP on a Unix socket (mode 0600):

| route | request | answer |
|---|---|---|
| `GET /status` | | `{"daemon": {...}, "models": [row, ...]}` |
| `POST /up` | `{"model": name}` | JSON lines, see below |
| `POST /down` | `{"model": name}` or `{"all": true}` | JSON lines, see below |
| `GET /logs?model=&lines=&start=&follow=` | | the log as text (followed: until the client leaves) |
| `GET /gpus` | | `{"gpus": [...]}` |
| `GET /events?model=` | | `{"model", "state", "events": [event, ...]}` |
| `POST /reload` | | `{"changes": [...]}` |
| `POST /shutdown` | | JSON lines like /down; the last one also has the daemon's `pid`, which then exits |

`/up`, `/down` and `/shutdown` answer with JSON lines (application/x-ndjson), because a load or a stop can
rightly take minutes: each instance event as `{"event": {...}}`; while nothing happens, a
heartbeat every HEARTBEAT_S, `{"waiting": {"model", "state", "stage", "elapsed_s"}}`; last,
`{"done": true, "ok": true, ...}` or `{"done": true, "ok": false, "error": "...", "code": "..."}`.
A client can so use a read timeout of a few heartbeats: it sees a dead daemon, never a long wait,
as one. Every error is `{"error": "<for people>", "code": "<ErrorCode>"}` with a 4xx/5xx status:
clients decide on the code, never on the wording.

Standard library only: the CLI imports this on every call.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, TypedDict
from urllib.parse import urlencode

HEARTBEAT_S = 5.0
"""While /up or /down waits with nothing to report, a `waiting` line this often."""
STREAM_READ_TIMEOUT_S = 15.0
"""A client's limit on silence while it reads /up or /down: three heartbeats."""
BODY_READ_TIMEOUT_S = 10.0
"""A request body not in within this is answered 408: a half-sent request holds no handler."""

STATUS, UP, DOWN, LOGS, GPUS, EVENTS, RELOAD = "/status", "/up", "/down", "/logs", "/gpus", "/events", "/reload"
SHUTDOWN = "/shutdown"
"""Stop every model (streamed like /down), then the daemon itself: `bawt-vllm daemon stop`."""


class ErrorCode(StrEnum):
    BAD_REQUEST = "bad_request"  # a body or query that is not what the route takes
    UNKNOWN_MODEL = "unknown_model"  # no such alias or served name in the daemon's config
    NO_LOG = "no_log"  # the model has no log (yet)
    NO_ROUTE = "no_route"  # unknown path
    METHOD_NOT_ALLOWED = "method_not_allowed"
    TIMEOUT = "timeout"  # the request body did not arrive in time
    START_FAILED = "start_failed"  # the load ended without a ready server
    NO_CAPACITY = "no_capacity"  # no GPU/CPU slot and nothing idle to evict
    STOP_FAILED = "stop_failed"
    RELOAD_FAILED = "reload_failed"
    INTERNAL = "internal"  # anything else; the daemon's log has the details


class BadRequest(ValueError):
    """A request that is not what its route takes; the message says which key and what it must be."""


# -- requests ---------------------------------------------------------------------------------
class UpRequest(TypedDict):
    model: str


class DownRequest(TypedDict, total=False):
    model: str  # one model ...
    all: bool  # ... or every model


@dataclass(frozen=True)
class LogsRequest:
    model: str | None
    lines: int = 200
    start: int | None = None  # which start of the model (1 = first); None: the latest
    follow: bool = False

    def query(self) -> str:
        values: dict[str, Any] = {"model": self.model, "lines": self.lines, "follow": int(self.follow)}
        if self.start is not None:
            values["start"] = self.start
        return urlencode(values)

    @classmethod
    def from_query(cls, query: Mapping[str, str]) -> LogsRequest:
        lines = _int_value(query, "lines", minimum=0)
        return cls(model=query.get("model"), lines=200 if lines is None else lines,
                   start=_int_value(query, "start", minimum=1), follow=query.get("follow") in ("1", "true"))


_JSON_TYPES = {dict: "an object", list: "an array", str: "a string", int: "a number", float: "a number",
               bool: "a boolean", type(None): "null"}


def json_type(value: object) -> str:
    """How a JSON value is called in an error message ("an array", "a string", ...)."""
    return _JSON_TYPES.get(type(value), type(value).__name__)


def parse_object(raw: bytes) -> dict[str, Any]:
    """A request body: a JSON object ({} when empty)."""
    if not raw.strip():
        return {}
    try:
        body = json.loads(raw)
    except ValueError as error:
        raise BadRequest(f"the request body is not valid JSON: {error}") from None
    if not isinstance(body, dict):
        raise BadRequest(f"the request body must be a JSON object, not {json_type(body)}")
    return body


def _field(body: Mapping[str, Any], key: str, kind: type, what: str) -> Any:
    value = body.get(key)
    if value is not None and not isinstance(value, kind):
        raise BadRequest(f"'{key}' must be {what}, not {json_type(value)}")
    return value


def _int_value(query: Mapping[str, str], key: str, minimum: int) -> int | None:
    raw = query.get(key)
    if raw is None:
        return None
    try:
        value = int(raw)
    except ValueError:
        raise BadRequest(f"'{key}' must be an integer, not {raw!r}") from None
    if value < minimum:
        raise BadRequest(f"'{key}' must be at least {minimum}, not {value}")
    return value


def model_of(body: Mapping[str, Any]) -> str | None:
    """The `model` of an /up or /down body (None when absent)."""
    model: str | None = _field(body, "model", str, "a string (an alias)")
    return model


def wants_all(body: DownRequest | Mapping[str, Any]) -> bool:
    """Whether a /down body asks for every model."""
    return bool(_field(body, "all", bool, "true or false"))


# -- results ----------------------------------------------------------------------------------
class StopProof(TypedDict):
    """One stop's proof (runtime's StopResult.as_dict)."""

    alias: str
    took_s: float
    was_running: bool
    sigkilled: list[int]
    survivors: list[int]
    processes_checked: int
    clean: bool
    proof: str
    summary: str
    vram_freed_bytes: int | None
    vram_proven: bool | None


class UpDone(TypedDict):
    done: bool
    ok: bool
    model: dict[str, Any]  # the instance's status row
    gateway: str  # the gateway's OpenAI base URL
    llm_bawt_entry: str  # a models.yaml entry for llm-bawt, as YAML text


class DownDone(TypedDict):
    done: bool
    ok: bool
    results: list[StopProof]


class ShutdownDone(TypedDict):
    done: bool
    ok: bool
    results: list[StopProof]  # every model's stop, as /down gives them
    pid: int  # the daemon's process, which exits once this line is sent


def error_body(message: str, code: ErrorCode) -> dict[str, str]:
    return {"error": message, "code": code.value}


def up_done(model: dict[str, Any], gateway: str, llm_bawt_entry: str) -> UpDone:
    """The last line of a successful /up."""
    return {"done": True, "ok": True, "model": model, "gateway": gateway, "llm_bawt_entry": llm_bawt_entry}


def down_done(results: list[StopProof]) -> DownDone:
    """The last line of a successful /down."""
    return {"done": True, "ok": True, "results": results}


def shutdown_done(results: list[StopProof], pid: int) -> ShutdownDone:
    """The last line of /shutdown: the stops, and the pid of the daemon that now exits."""
    return {"done": True, "ok": True, "results": results, "pid": pid}


def done_error(message: str, code: ErrorCode) -> dict[str, Any]:
    """The last line of a failed /up, /down or /shutdown."""
    return {"done": True, "ok": False, **error_body(message, code)}


def event_line(model: str, event: dict[str, Any]) -> dict[str, Any]:
    return {"event": {**event, "model": model}}


def waiting_line(model: str | None, state: str | None, stage: str | None, elapsed_s: float) -> dict[str, Any]:
    return {"waiting": {"model": model, "state": state, "stage": stage, "elapsed_s": round(elapsed_s, 1)}}


def error_code(payload: object) -> ErrorCode:
    """The code of an error answer or a failed `done` line (INTERNAL if it names none we know)."""
    raw = payload.get("code") if isinstance(payload, dict) else None
    known = {code.value: code for code in ErrorCode}
    return known.get(raw, ErrorCode.INTERNAL) if isinstance(raw, str) else ErrorCode.INTERNAL
