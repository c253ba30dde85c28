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

`/up` and `/down` answer with JSON lines (application/x-ndjson), because a load or a stop can
rightly take minutes: each instance event as `{"event": {...}}`; while nothing happens, a
heartbeat every HEARTBEAT_S, `{"waiting": {"model", "state", "stage", "elapsed_s"}}`; last,
`{"done": true, "ok": true, ...}` or `{"done": true, "ok": false, "error": "...", "code": "..."}`.
A client can so use a read timeout of a few heartbeats: it sees a dead daemon, never a long wait,
as one. Every error is `{"error": "<for people>", "code": "<ErrorCode>"}` with a 4xx/5xx status:
clients decide on the code, never on the wording.

Standard library only: the CLI imports this on every call.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Any

HEARTBEAT_S = 5.0
"""While /up or /down waits with nothing to report, a `waiting` line this often."""
STREAM_READ_TIMEOUT_S = 15.0
"""A client's limit on silence while it reads /up or /down: three heartbeats."""
BODY_READ_TIMEOUT_S = 10.0
"""A request body not in within this is answered 408: a half-sent request holds no handler."""

STATUS, UP, DOWN, LOGS, GPUS, EVENTS, RELOAD = "/status", "/up", "/down", "/logs", "/gpus", "/events", "/reload"


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


def error_body(message: str, code: ErrorCode) -> dict[str, str]:
    return {"error": message, "code": code.value}


def done_ok(**result: Any) -> dict[str, Any]:
    """The last line of a successful /up or /down."""
    return {"done": True, "ok": True, **result}


def done_error(message: str, code: ErrorCode) -> dict[str, Any]:
    """The last line of a failed /up or /down."""
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
