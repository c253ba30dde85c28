"""A stand-in of llm-bawt's model catalog API, for tests of `bawt-vllm entries --catalog`.

It serves the routes of llm-bawt's service/routes/model_catalog.py (read from its source,
bawthub/llm-bawt), under /v1/models/catalog, with the same answers and errors:

- `GET access-paths | models | endpoints`  -> `{"access_paths": [...]}` ... (endpoint rows carry
  model_key and access_path_key); `?model=` and `?access_path=` filter endpoints
- `PUT access-paths/{key}`, `PUT models/{key}`, `PUT endpoints/{model}/{access-path}`: upserts
  that return the row; `endpoint_id` in an endpoint body is a compare-and-set guard (409)
- `DELETE endpoints/{id}` (numeric), `DELETE models/{key}`, `DELETE access-paths/{key}`
- errors as FastAPI writes them: `{"detail": "text"}`, or a list of `{"loc", "msg", "type"}` (422)

On top of llm-bawt's own checks it CHECKS EVERY REQUEST against the contract bawt-vllm keeps:
known routes and methods only; an access path of vendor `openai`, protocol `chat-completions`, an
http(s) `base_url`, auth `none` and no engine kind; a model with `default_context_window` an
integer > 0 and `default_tool_support` native | react | none; an endpoint naming a model and an
access path that exist, with an `upstream_model_id`, `serving_config.max_tokens` > 0 and
`serving_config.managed_by: bawt-vllm`; deletions in order (no model that still has endpoints,
no access path still used; llm-bawt itself would cascade the first). A breach is answered 422
or 409 and recorded in `violations`, which the tests' fixture requires empty.

`bind_to_bot(model, slug)` makes the model's endpoints used by a bot: deleting them (or the
model) answers 409 as llm-bawt does. `catalog=False` is an llm-bawt from before the catalog
(every route 404); `database_down=True` answers 503 as llm-bawt does without its database.
"""

from __future__ import annotations

import json
import re
import threading
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

PREFIX = "/v1/models/catalog"
TOOL_SUPPORT = ("native", "react", "none")
HTTP_URL = re.compile(r"^https?://[^\s/?#]+(/[^\s?#]*)?$")
ACCESS_PATH_KEYS = {"vendor", "protocol", "base_url", "auth_mechanism", "engine_kind", "system_prompt_overrides"}
MODEL_KEYS = {"vendor", "display_name", "description", "default_context_window", "default_tool_support",
              "compact_threshold"}
ENDPOINT_KEYS = {"endpoint_id", "upstream_model_id", "serving_config", "context_window_override",
                 "tool_support_override", "pricing"}
SEEDED = (  # a few of llm-bawt's standard access paths (memory/model_catalog_migration.py)
    ("openai-api", "openai", "chat-completions", "https://api.openai.com/v1", "api-key", None),
    ("local-vllm", "local", "chat-completions", None, "none", "vllm"),
    ("openai-compatible", "custom", "chat-completions", None, "configured", None),
)


@dataclass
class Call:
    method: str
    path: str
    body: Any
    status: int


class Refusal(Exception):
    def __init__(self, status: int, detail: Any, violation: str | None = None) -> None:
        super().__init__(str(detail))
        self.status, self.detail, self.violation = status, detail, violation


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


class LlmBawtStandin:
    """The catalog in memory, served on 127.0.0.1 from a thread; use as a context manager."""

    def __init__(self, *, catalog: bool = True, database_down: bool = False, seed: bool = True) -> None:
        self.catalog, self.database_down = catalog, database_down
        self.access_paths: dict[str, dict[str, Any]] = {}
        self.models: dict[str, dict[str, Any]] = {}
        self.endpoints: dict[int, dict[str, Any]] = {}
        self.bots: dict[str, str] = {}  # model key -> the slug of a bot using it
        self.calls: list[Call] = []
        self.violations: list[str] = []
        self._ids = 0
        self._lock = threading.Lock()
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None
        if seed:
            for key, vendor, protocol, base_url, auth, engine in SEEDED:
                self._upsert_access_path(key, {"vendor": vendor, "protocol": protocol, "base_url": base_url,
                                               "auth_mechanism": auth, "engine_kind": engine})

    # -- life ---------------------------------------------------------------------------------
    def __enter__(self) -> LlmBawtStandin:
        standin = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                standin._handle(self, "GET")

            def do_PUT(self) -> None:
                standin._handle(self, "PUT")

            def do_DELETE(self) -> None:
                standin._handle(self, "DELETE")

            def do_POST(self) -> None:
                standin._handle(self, "POST")

            def log_message(self, *args: Any) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05},
                                        name="llmbawt-standin", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=10)

    @property
    def url(self) -> str:
        assert self._server is not None, "not started"
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    # -- what tests look at and set up ---------------------------------------------------------
    @property
    def writes(self) -> list[Call]:
        return [call for call in self.calls if call.method != "GET"]

    def bind_to_bot(self, model_key: str, slug: str) -> None:
        self.bots[model_key] = slug

    def add_model(self, key: str, **fields: Any) -> dict[str, Any]:
        """A model put there by someone else (no contract check)."""
        row = {"vendor": "openai", "display_name": key, "description": None, "default_context_window": 128000,
               "default_tool_support": "native", "compact_threshold": None, **fields}
        return self._upsert_model(key, row)

    def add_endpoint(self, model_key: str, access_path: str, **fields: Any) -> dict[str, Any]:
        """An endpoint put there by someone else (no contract check)."""
        body = {"upstream_model_id": model_key, "serving_config": {}, "context_window_override": None,
                "tool_support_override": None, "pricing": None, **fields}
        return self._upsert_endpoint(model_key, access_path, body)

    def endpoint(self, model_key: str, access_path: str) -> dict[str, Any] | None:
        return next((row for row in self.endpoints.values()
                     if self._model_key(row) == model_key and self._path_key(row) == access_path), None)

    # -- HTTP -------------------------------------------------------------------------------------
    def _handle(self, request: BaseHTTPRequestHandler, method: str) -> None:
        parts = urlsplit(request.path)
        length = int(request.headers.get("Content-Length") or 0)
        raw = request.rfile.read(length) if length else b""
        body: Any = None
        status, answer = 200, None
        try:
            if raw:
                try:
                    body = json.loads(raw)
                except ValueError:
                    raise Refusal(422, [{"loc": ["body"], "msg": "JSON decode error", "type": "json_invalid"}],
                                  f"{method} {parts.path}: the body is not JSON") from None
                if request.headers.get("Content-Type", "").split(";")[0] != "application/json":
                    raise Refusal(422, "body without Content-Type: application/json",
                                  f"{method} {parts.path}: no JSON content type")
            with self._lock:
                answer = self._route(method, parts.path, parse_qs(parts.query), body)
        except Refusal as refusal:
            status, answer = refusal.status, {"detail": refusal.detail}
            if refusal.violation:
                self.violations.append(refusal.violation)
        self.calls.append(Call(method, unquote(parts.path), body, status))
        data = json.dumps(answer, default=str).encode()
        request.send_response(status)
        request.send_header("Content-Type", "application/json")
        request.send_header("Content-Length", str(len(data)))
        request.end_headers()
        request.wfile.write(data)

    def _route(self, method: str, path: str, query: dict[str, list[str]], body: Any) -> Any:
        if not self.catalog or not path.startswith(PREFIX + "/"):
            raise Refusal(404, "Not Found", None if not self.catalog else f"{method} {path}: not a catalog route")
        if self.database_down:
            raise Refusal(503, "Model catalog database unavailable")
        segments = [unquote(part) for part in path[len(PREFIX) + 1:].split("/")]
        kind, args = segments[0], segments[1:]
        handlers = {
            ("GET", "access-paths", 0): lambda: {"access_paths": sorted(self.access_paths.values(),
                                                                        key=lambda r: r["key"])},
            ("GET", "models", 0): lambda: {"models": sorted(self.models.values(), key=lambda r: r["key"])},
            ("GET", "endpoints", 0): lambda: {"endpoints": self._endpoint_rows(query)},
            ("PUT", "access-paths", 1): lambda: self._put_access_path(args[0], body),
            ("PUT", "models", 1): lambda: self._put_model(args[0], body),
            ("PUT", "endpoints", 2): lambda: self._put_endpoint(args[0], args[1], body),
            ("DELETE", "endpoints", 1): lambda: self._delete_endpoint(args[0]),
            ("DELETE", "models", 1): lambda: self._delete_model(args[0]),
            ("DELETE", "access-paths", 1): lambda: self._delete_access_path(args[0]),
        }
        handler = handlers.get((method, kind, len(args)))
        if handler is None:
            known = any(k == kind and n == len(args) for _, k, n in handlers)
            status, detail = (405, "Method Not Allowed") if known else (404, "Not Found")
            raise Refusal(status, detail, f"{method} {path}: no such route")
        return handler()

    # -- access paths -----------------------------------------------------------------------------
    def _put_access_path(self, key: str, body: Any) -> dict[str, Any]:
        self._check_object(body, ACCESS_PATH_KEYS, f"PUT access-paths/{key}")
        for name in ("vendor", "protocol", "auth_mechanism"):
            self._require(isinstance(body.get(name), str), f"PUT access-paths/{key}", name, "a string is required")
        expected = {"vendor": "openai", "protocol": "chat-completions", "auth_mechanism": "none"}
        for name, value in expected.items():
            self._require(body[name] == value, f"PUT access-paths/{key}", name,
                          f"the contract wants {value!r} (got {body[name]!r})")
        self._require(isinstance(body.get("base_url"), str) and HTTP_URL.match(body["base_url"]) is not None,
                      f"PUT access-paths/{key}", "base_url", "an http(s) URL of the gateway is required")
        self._require(body.get("engine_kind") is None, f"PUT access-paths/{key}", "engine_kind",
                      "an engine kind sends llm-bawt to its in-process bridge")
        return self._upsert_access_path(key, body)

    def _upsert_access_path(self, key: str, body: dict[str, Any]) -> dict[str, Any]:
        row = self.access_paths.get(key) or {"id": self._next_id(), "key": key, "created_at": "seeded"}
        row.update({"vendor": body["vendor"], "protocol": body["protocol"], "base_url": body.get("base_url"),
                    "auth_mechanism": body["auth_mechanism"], "engine_kind": body.get("engine_kind"),
                    "system_prompt_overrides": body.get("system_prompt_overrides") or {},
                    "updated_at": f"write {len(self.calls)}"})
        self.access_paths[key] = row
        return dict(row)

    def _delete_access_path(self, key: str) -> dict[str, Any]:
        row = self.access_paths.get(key)
        if row is None:
            raise Refusal(404, "Access path not found")
        users = [r for r in self.endpoints.values() if r["access_path_id"] == row["id"]]
        if users:
            raise Refusal(409, "Access path is still in use: endpoints reference it",
                          f"DELETE access-paths/{key} while {len(users)} endpoint(s) use it")
        del self.access_paths[key]
        return {"ok": True, "key": key}

    # -- models -----------------------------------------------------------------------------------
    def _put_model(self, key: str, body: Any) -> dict[str, Any]:
        where = f"PUT models/{key}"
        self._check_object(body, MODEL_KEYS, where)
        for name in ("vendor", "display_name"):
            self._require(isinstance(body.get(name), str) and body[name] != "", where, name, "a string is required")
        self._require(body.get("description") is None or isinstance(body["description"], str), where,
                      "description", "a string or null")
        window = body.get("default_context_window")
        self._require(_is_int(window) and window > 0, where, "default_context_window",
                      "Input should be greater than 0 (required)")
        self._require(body.get("default_tool_support") in TOOL_SUPPORT, where, "default_tool_support",
                      f"one of {', '.join(TOOL_SUPPORT)}")
        return self._upsert_model(key, body)

    def _upsert_model(self, key: str, body: dict[str, Any]) -> dict[str, Any]:
        row = self.models.get(key) or {"id": self._next_id(), "key": key, "compact_threshold": None}
        row.update({name: body.get(name) for name in MODEL_KEYS if name != "compact_threshold"})
        if "compact_threshold" in body:
            row["compact_threshold"] = body["compact_threshold"]
        row["updated_at"] = f"write {len(self.calls)}"
        self.models[key] = row
        return dict(row)

    def _delete_model(self, key: str) -> dict[str, Any]:
        if key in self.bots:
            raise Refusal(409, f"Model is used by bot '{self.bots[key]}'")
        row = self.models.get(key)
        if row is None:
            raise Refusal(404, "Model not found")
        left = [r for r in self.endpoints.values() if r["model_id"] == row["id"]]
        if left:
            raise Refusal(409, "Model is still in use: it has endpoints",
                          f"DELETE models/{key} while it has {len(left)} endpoint(s): delete endpoints first")
        del self.models[key]
        return {"ok": True, "key": key}

    # -- endpoints --------------------------------------------------------------------------------
    def _put_endpoint(self, model_key: str, path_key: str, body: Any) -> dict[str, Any]:
        where = f"PUT endpoints/{model_key}/{path_key}"
        self._check_object(body, ENDPOINT_KEYS, where)
        if model_key not in self.models or path_key not in self.access_paths:
            raise Refusal(404, "Model or access path not found", f"{where}: model or access path missing")
        upstream = body.get("upstream_model_id")
        self._require(isinstance(upstream, str) and upstream != "", where, "upstream_model_id", "our alias")
        serving = body.get("serving_config")
        self._require(isinstance(serving, dict), where, "serving_config", "an object")
        self._require(_is_int(serving.get("max_tokens")) and serving["max_tokens"] > 0, where,
                      "serving_config.max_tokens", "an integer > 0")
        self._require(serving.get("managed_by") == "bawt-vllm", where, "serving_config.managed_by", "'bawt-vllm'")
        window = body.get("context_window_override")
        self._require(window is None or (_is_int(window) and window > 0), where, "context_window_override",
                      "Input should be greater than 0")
        self._require(body.get("tool_support_override") in (None, *TOOL_SUPPORT), where, "tool_support_override",
                      f"null or one of {', '.join(TOOL_SUPPORT)}")
        self._require(body.get("pricing") is None or isinstance(body["pricing"], dict), where, "pricing", "an object")
        expected = body.get("endpoint_id")
        self._require(expected is None or _is_int(expected), where, "endpoint_id", "an integer")
        existing = self.endpoint(model_key, path_key)
        if expected is not None and existing is None:
            raise Refusal(409, "Expected endpoint no longer exists")
        if expected is not None and existing is not None and existing["id"] != expected:
            raise Refusal(409, f"Endpoint changed: expected {expected}, found {existing['id']}")
        return self._upsert_endpoint(model_key, path_key, body)

    def _upsert_endpoint(self, model_key: str, path_key: str, body: dict[str, Any]) -> dict[str, Any]:
        row = self.endpoint(model_key, path_key)
        if row is None:
            row = {"id": self._next_id(), "model_id": self.models[model_key]["id"],
                   "access_path_id": self.access_paths[path_key]["id"]}
            self.endpoints[row["id"]] = row
        row.update({name: body.get(name) for name in ENDPOINT_KEYS if name != "endpoint_id"})
        row["serving_config"] = dict(body.get("serving_config") or {})
        row["updated_at"] = f"write {len(self.calls)}"
        return dict(row)

    def _delete_endpoint(self, raw_id: str) -> dict[str, Any]:
        if not raw_id.isdigit():
            raise Refusal(422, [{"loc": ["path", "endpoint_id"], "msg": "Input should be a valid integer",
                                 "type": "int_parsing"}], f"DELETE endpoints/{raw_id}: the id is not a number")
        row = self.endpoints.get(int(raw_id))
        if row is not None and self._model_key(row) in self.bots:
            raise Refusal(409, f"Endpoint is used by bot '{self.bots[self._model_key(row)]}'")
        if row is None:
            raise Refusal(404, "Endpoint not found")
        del self.endpoints[row["id"]]
        return {"ok": True, "id": row["id"]}

    def _endpoint_rows(self, query: dict[str, list[str]]) -> list[dict[str, Any]]:
        rows = []
        for row in self.endpoints.values():
            model = next(m for m in self.models.values() if m["id"] == row["model_id"])
            path = next(a for a in self.access_paths.values() if a["id"] == row["access_path_id"])
            rows.append({**row, "model_key": model["key"], "model_vendor": model["vendor"],
                         "display_name": model["display_name"], "description": model["description"],
                         "default_context_window": model["default_context_window"],
                         "default_tool_support": model["default_tool_support"],
                         "access_path_key": path["key"], "access_vendor": path["vendor"],
                         "protocol": path["protocol"], "base_url": path["base_url"],
                         "auth_mechanism": path["auth_mechanism"], "engine_kind": path["engine_kind"]})
        for name, column in (("model", "model_key"), ("access_path", "access_path_key")):
            if name in query:
                rows = [row for row in rows if row[column] == query[name][0]]
        return sorted(rows, key=lambda r: (r["model_key"], r["access_path_key"]))

    # -- helpers ----------------------------------------------------------------------------------
    def _next_id(self) -> int:
        self._ids += 1
        return self._ids

    def _model_key(self, row: dict[str, Any]) -> str:
        return next(m["key"] for m in self.models.values() if m["id"] == row["model_id"])

    def _path_key(self, row: dict[str, Any]) -> str:
        return next(a["key"] for a in self.access_paths.values() if a["id"] == row["access_path_id"])

    @staticmethod
    def _check_object(body: Any, allowed: set[str], where: str) -> None:
        if not isinstance(body, dict):
            raise Refusal(422, [{"loc": ["body"], "msg": "Input should be a valid dictionary", "type": "dict_type"}],
                          f"{where}: the body is not a JSON object")
        unknown = sorted(set(body) - allowed)
        if unknown:
            raise Refusal(422, [{"loc": ["body", name], "msg": "unknown field", "type": "extra"} for name in unknown],
                          f"{where}: unknown field(s) {', '.join(unknown)}")

    @staticmethod
    def _require(ok: bool, where: str, name: str, message: str) -> None:
        if not ok:
            raise Refusal(422, [{"loc": ["body", *name.split(".")], "msg": message, "type": "value_error"}],
                          f"{where}: {name}: {message}")


@contextmanager
def silent_server() -> Iterator[str]:
    """A URL whose server accepts connections (the kernel's backlog) and never answers."""
    import socket

    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        listener.bind(("127.0.0.1", 0))
        listener.listen(8)
        yield f"http://127.0.0.1:{listener.getsockname()[1]}"
    finally:
        listener.close()


if __name__ == "__main__":  # run it by hand: `python tests/llmbawt_standin.py`
    with LlmBawtStandin() as running:
        print(f"llm-bawt catalog stand-in at {running.url} (Ctrl-C stops it)", flush=True)
        with suppress(KeyboardInterrupt):
            threading.Event().wait()
