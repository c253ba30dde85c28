"""Registering the supervised models in llm-bawt's model catalog (`bawt-vllm entries --catalog`).

A running llm-bawt service reads its models only from its PostgreSQL catalog, managed through
its REST API (llmbawt_api.py). Each supervised model becomes:

- one access path of ours, key `bawt-vllm`: vendor `openai`, protocol `chat-completions`,
  `base_url` our gateway, no auth mechanism (vendor `openai` with its own base_url is the one
  kind llm-bawt sends to an OpenAI-compatible server of our choosing);
- a model (key: the alias + `--suffix`) with its context window and tool support;
- the endpoint model x `bawt-vllm`: `upstream_model_id` the alias (what the gateway routes by),
  `serving_config.max_tokens`, and `serving_config.managed_by: bawt-vllm`, the mark of ours.

`plan_registration` / `plan_removal` read nothing themselves: they compare the wanted state with
a `CatalogState` already read and list the calls that close the gap, none whose state already
matches (a second run plans nothing). `apply_plan` sends them in order. What bawt-vllm did not
create is never changed or deleted: a model of the same name without an endpoint of ours is
an error that stops the whole plan before anything is sent.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from ..config.schema import DEFAULT_API_KEY_ENV, Config, ModelEntry, Settings
from ..config.urls import is_loopback_host, is_loopback_url
from .entries import MANAGED_KEY, MANAGED_VALUE
from .llmbawt_api import CatalogClient, CatalogError, CatalogHTTPError, CatalogState, Row, catalog_route
from .llmbawt_fields import MissingContextWindowError, catalog_tool_support, max_tokens, require_context_window

ACCESS_PATH_KEY = "bawt-vllm"
MODEL_VENDOR = "bawt-vllm"
API_KEY_FIELD = "api_key"
MASKED_KEY = "<the gateway key>"
_MODEL_FIELDS = ("vendor", "display_name", "description", "default_context_window", "default_tool_support")
_ENDPOINT_FIELDS = ("upstream_model_id", "serving_config", "context_window_override", "tool_support_override")
_PATH_FIELDS = ("vendor", "protocol", "base_url", "auth_mechanism", "engine_kind")


@dataclass(frozen=True)
class CatalogCall:
    """One write to the catalog: `method route` with `body`, concerning model `model` (None: the access path)."""

    method: str
    route: str
    body: dict[str, Any] | None
    model: str | None
    action: str

    def shown_body(self) -> dict[str, Any] | None:
        """The body to print: a gateway key in serving_config is masked."""
        if not self.body or API_KEY_FIELD not in (self.body.get("serving_config") or {}):
            return self.body
        return {**self.body, "serving_config": {**self.body["serving_config"], API_KEY_FIELD: MASKED_KEY}}


@dataclass
class CatalogPlan:
    calls: list[CatalogCall] = field(default_factory=list)
    unchanged: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


class CatalogPlanError(CatalogError):
    """Why nothing may be sent (foreign models, unknown names, windows nobody states): one line each."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = problems
        super().__init__("\n".join(problems))


def is_ours(endpoint: Mapping[str, Any]) -> bool:
    serving = endpoint.get("serving_config")
    return isinstance(serving, Mapping) and serving.get(MANAGED_KEY) == MANAGED_VALUE


def access_path_body(base_url: str) -> dict[str, Any]:
    return {"vendor": "openai", "protocol": "chat-completions", "base_url": base_url,
            "auth_mechanism": "none", "engine_kind": None}


def _half_made(state: CatalogState, key: str) -> bool:
    """A model of our vendor with no endpoint at all: a registration of ours cut short."""
    row = state.models.get(key)
    return row is not None and row.get("vendor") == MODEL_VENDOR and not state.endpoints_of(key)


def _ours(state: CatalogState, key: str) -> bool:
    return any(is_ours(row) for row in state.endpoints_of(key)) or _half_made(state, key)


def _differs(row: Mapping[str, Any], body: Mapping[str, Any], fields: Iterable[str]) -> list[str]:
    return [name for name in fields if row.get(name) != body.get(name)]


# --------------------------------------------------------------------------- registering


def plan_registration(
    config: Config,
    state: CatalogState,
    *,
    base_url: str,
    names: Sequence[str] = (),
    suffix: str = "",
    api_key: str | None = None,
) -> CatalogPlan:
    """The calls that make the catalog hold every supervised model (or those `names` name).

    `api_key` (only with `--with-key`) is written into each endpoint's serving_config. Raises
    CatalogPlanError, before any call, for unknown names, unknown context windows and models of
    the same key that bawt-vllm did not create.
    """
    aliases = _selected_aliases(config, names)
    problems: list[str] = []
    windows: dict[str, int] = {}
    for alias in aliases:
        key = alias + suffix
        try:
            windows[alias] = require_context_window(config.models[alias])
        except MissingContextWindowError as error:
            problems.append(str(error))
        if key in state.models and not _ours(state, key):
            problems.append(
                f"'{key}' is already in llm-bawt's catalog and bawt-vllm did not create it (no endpoint of ours): "
                f"left alone. Register ours under another name with --suffix (e.g. --suffix -gw), or delete "
                f"'{key}' in llm-bawt first"
            )
    if problems:
        raise CatalogPlanError(problems)
    plan = CatalogPlan()
    _plan_access_path(plan, state, base_url)
    for alias in aliases:
        _plan_model(plan, state, alias, suffix, config.models[alias], windows[alias], api_key)
    if not names:
        wanted = {alias + suffix for alias in aliases}
        for key in sorted({str(row.get("model_key")) for row in state.endpoints if is_ours(row)} - wanted):
            plan.notes.append(f"'{key}' was registered by bawt-vllm but is not among the models registered now; "
                              f"`bawt-vllm entries --catalog --remove {key}` deletes it")
    return plan


def _selected_aliases(config: Config, names: Sequence[str]) -> list[str]:
    if not names:
        return list(config.models)
    chosen: list[str] = []
    unknown = []
    for name in names:
        alias = config.resolve(name)
        if alias is None:
            unknown.append(name)
        elif alias not in chosen:
            chosen.append(alias)
    if unknown:
        known = ", ".join(config.models) or "none"
        raise CatalogPlanError([f"'{name}' is not a model bawt-vllm supervises (known: {known})" for name in unknown])
    return chosen


def _plan_access_path(plan: CatalogPlan, state: CatalogState, base_url: str) -> None:
    body = access_path_body(base_url)
    existing = state.access_paths.get(ACCESS_PATH_KEY)
    route = catalog_route("access-paths", ACCESS_PATH_KEY)
    if existing is None:
        plan.calls.append(CatalogCall("PUT", route, body, None, f"add access path {ACCESS_PATH_KEY} -> {base_url}"))
    elif changed := _differs(existing, body, _PATH_FIELDS):
        what = ", ".join(f"{name} {existing.get(name)!r} -> {body[name]!r}" for name in changed)
        plan.calls.append(CatalogCall("PUT", route, body, None, f"update access path {ACCESS_PATH_KEY} ({what})"))
    else:
        plan.unchanged.append(f"access path {ACCESS_PATH_KEY} ({base_url})")


def _plan_model(
    plan: CatalogPlan, state: CatalogState, alias: str, suffix: str, entry: ModelEntry, window: int,
    api_key: str | None,
) -> None:
    key = alias + suffix
    tools = catalog_tool_support(entry)
    model = {"vendor": MODEL_VENDOR, "display_name": key, "description": _description(entry),
             "default_context_window": window, "default_tool_support": tools}
    existing = state.models.get(key)
    if existing is None:
        plan.calls.append(CatalogCall("PUT", catalog_route("models", key), model, key, f"add model {key}"))
    elif changed := _differs(existing, model, _MODEL_FIELDS):
        plan.calls.append(CatalogCall("PUT", catalog_route("models", key), model, key,
                                      f"update model {key} ({', '.join(changed)})"))
    else:
        plan.unchanged.append(f"model {key}")
    ours = next((row for row in state.endpoints_of(key) if row.get("access_path_key") == ACCESS_PATH_KEY), None)
    endpoint = _endpoint_body(alias, entry, window, tools, ours, api_key)
    route = catalog_route("endpoints", key, ACCESS_PATH_KEY)
    if ours is None:
        plan.calls.append(CatalogCall("PUT", route, endpoint, key, f"add endpoint {key}@{ACCESS_PATH_KEY}"))
    elif changed := _differs(ours, endpoint, _ENDPOINT_FIELDS):
        plan.calls.append(CatalogCall("PUT", route, endpoint, key,
                                      f"update endpoint {key}@{ACCESS_PATH_KEY} ({', '.join(changed)})"))
    else:
        plan.unchanged.append(f"endpoint {key}@{ACCESS_PATH_KEY}")
    _endpoint_notes(plan, state, key, ours, api_key)


def _endpoint_body(
    alias: str, entry: ModelEntry, window: int, tools: str, existing: Row | None, api_key: str | None
) -> dict[str, Any]:
    """Ours over what is there: serving_config keys someone added in llm-bawt (and pricing) are kept."""
    current = existing.get("serving_config") if existing else None
    serving = {**(current if isinstance(current, dict) else {}), "max_tokens": max_tokens(entry, window),
               MANAGED_KEY: MANAGED_VALUE}
    if api_key:
        serving[API_KEY_FIELD] = api_key
    body: dict[str, Any] = {"upstream_model_id": alias, "serving_config": serving,
                            "context_window_override": window, "tool_support_override": tools}
    if existing is not None:
        body["endpoint_id"] = existing.get("id")  # llm-bawt's compare-and-set guard: refused if it changed meanwhile
        if existing.get("pricing") is not None:
            body["pricing"] = existing["pricing"]
    return body


def _endpoint_notes(plan: CatalogPlan, state: CatalogState, key: str, ours: Row | None, api_key: str | None) -> None:
    others = sorted(str(row.get("access_path_key")) for row in state.endpoints_of(key)
                    if row.get("access_path_key") != ACCESS_PATH_KEY)
    if others:
        plan.notes.append(f"'{key}' also has endpoint(s) at {', '.join(others)}: llm-bawt lists ours as "
                          f"'{key}@{ACCESS_PATH_KEY}'")
    serving = ours.get("serving_config") if ours else None
    if not api_key and isinstance(serving, Mapping) and serving.get(API_KEY_FIELD):
        plan.notes.append(f"'{key}': serving_config.api_key (from an earlier --with-key) is kept, and llm-bawt's "
                          "API shows it in clear; delete it in llm-bawt once the service has OPENAI_API_KEY")


def _description(entry: ModelEntry) -> str:
    if entry.description:
        return entry.description
    source = entry.model_id or entry.path or "/".join(part for part in (entry.repo_id, entry.filename) if part)
    return f"{source} served by bawt-vllm" if source else "served by bawt-vllm"


# --------------------------------------------------------------------------- removing


def plan_removal(config: Config, state: CatalogState, *, names: Sequence[str] = (), suffix: str = "") -> CatalogPlan:
    """The deletions of what bawt-vllm registered (all of it, or the models `names` name).

    Endpoints of ours first, then the models left with no endpoint bawt-vllm did not create,
    then our access path when nothing else uses it. Anything else is left alone.
    """
    plan = CatalogPlan()
    ours = [row for row in state.endpoints if is_ours(row)]
    half_made = [key for key in state.models if _half_made(state, key)]
    if names:
        keys = [_catalog_key(config, name, suffix) for name in names]
        plan.notes += [f"'{key}': nothing of bawt-vllm's in llm-bawt's catalog" for key in keys
                       if not _ours(state, key)]
        ours = [row for row in ours if row.get("model_key") in keys]
        half_made = [key for key in half_made if key in keys]
    removed: set[Any] = set()
    for row in ours:
        key, path = str(row.get("model_key")), row.get("access_path_key")
        plan.calls.append(CatalogCall("DELETE", catalog_route("endpoints", row.get("id", "?")), None, key,
                                      f"remove endpoint {key}@{path}"))
        removed.add(row.get("id"))
    for key in dict.fromkeys([str(row.get("model_key")) for row in ours] + half_made):
        left = sorted(str(row.get("access_path_key")) for row in state.endpoints_of(key)
                      if row.get("id") not in removed)
        if left:
            plan.notes.append(f"model '{key}' is kept: it still has endpoint(s) bawt-vllm did not create "
                              f"({', '.join(left)})")
        elif key in state.models:
            plan.calls.append(CatalogCall("DELETE", catalog_route("models", key), None, key, f"remove model {key}"))
    if ACCESS_PATH_KEY in state.access_paths:
        users = sorted(str(row.get("model_key")) for row in state.endpoints_on(ACCESS_PATH_KEY)
                       if row.get("id") not in removed)
        if not users:
            plan.calls.append(CatalogCall("DELETE", catalog_route("access-paths", ACCESS_PATH_KEY), None, None,
                                          f"remove access path {ACCESS_PATH_KEY}"))
        elif not names:
            plan.notes.append(f"access path {ACCESS_PATH_KEY} is kept: endpoints bawt-vllm did not create use it "
                              f"({', '.join(users)})")
    return plan


def _catalog_key(config: Config, name: str, suffix: str) -> str:
    """A supervised model's name -> its catalog key (alias + suffix); any other name is taken as a key."""
    alias = config.resolve(name)
    return alias + suffix if alias is not None else name


# --------------------------------------------------------------------------- sending


@dataclass
class ApplyReport:
    done: list[CatalogCall] = field(default_factory=list)
    failures: list[tuple[CatalogCall, str]] = field(default_factory=list)
    skipped: list[CatalogCall] = field(default_factory=list)


def apply_plan(
    client: CatalogClient, plan: CatalogPlan, on_done: Callable[[CatalogCall], None] | None = None
) -> ApplyReport:
    """Send the plan's calls in order. A refused call skips what depends on it (the rest of its
    model; everything, after the access path) and the others go on; a DELETE of something already
    gone counts as done. CatalogUnreachableError stops at once (what was done is in on_done)."""
    report = ApplyReport()
    failed_models: set[str | None] = set()
    for call in plan.calls:
        if call.model in failed_models or None in failed_models or (call.model is None and failed_models):
            report.skipped.append(call)
            continue
        try:
            client.request(call.method, call.route, call.body)
        except CatalogHTTPError as error:
            if not (call.method == "DELETE" and error.status == 404):
                report.failures.append((call, failure_message(call, error)))
                failed_models.add(call.model)
                continue
        report.done.append(call)
        if on_done is not None:
            on_done(call)
    return report


def failure_message(call: CatalogCall, error: CatalogHTTPError) -> str:
    """What a refused call means and what to do about it."""
    said = f"{error.detail} ({error.status} to {call.method} {call.route})"
    if error.status == 409 and call.method == "DELETE" and call.model is not None:
        return (f"llm-bawt keeps '{call.model}': {said}. Move that bot to another model in llm-bawt (its bot "
                f"settings), then run `bawt-vllm entries --catalog --remove {call.model}` again")
    if error.status == 409 and call.method == "DELETE":
        return f"llm-bawt keeps access path {ACCESS_PATH_KEY}: {said}; an endpoint bawt-vllm did not create uses it"
    if error.status == 409 and call.model is not None:
        return f"{call.action}: {said}; it changed in llm-bawt while this ran: run the command again"
    return f"{call.action}: llm-bawt refused it: {said}"


# --------------------------------------------------------------------------- the gateway URL and its key


def gateway_url_warnings(
    settings: Settings, base_url: str, *, key_set: bool, catalog_url: str | None = None
) -> list[str]:
    """What is likely wrong with the gateway URL llm-bawt is given (for the catalog and models.yaml)."""
    key_env = settings.api_key_env or DEFAULT_API_KEY_ENV
    public = not is_loopback_url(base_url)
    warnings = []
    if public and not key_set:
        warnings.append(f"llm-bawt is given {base_url}, which is not loopback, and no gateway key is set (${key_env} "
                        f"is empty here): anyone who reaches that address can use every model; set ${key_env} for "
                        "the daemon and give llm-bawt the same key")
    if public and is_loopback_host(settings.gateway_host):
        warnings.append(f"the gateway listens on {settings.gateway_host} only, so llm-bawt cannot reach it at "
                        f"{base_url}: set gateway_host in the bawt_vllm: section (e.g. 0.0.0.0, or the Docker "
                        "bridge address 172.17.0.1)")
    if not public and catalog_url and not is_loopback_url(catalog_url):
        warnings.append(f"llm-bawt at {catalog_url} runs on another machine but is given {base_url}, this "
                        "machine's loopback: set gateway_public_url in the bawt_vllm: section, or pass --base-url")
    return warnings


def key_instructions(settings: Settings) -> str:
    """How llm-bawt gets the gateway key without bawt-vllm writing it into its catalog."""
    key_env = settings.api_key_env or DEFAULT_API_KEY_ENV
    return (f"the gateway wants a key (${key_env}): llm-bawt sends its service's $OPENAI_API_KEY to an openai access "
            f"path without one of its own, so give the service OPENAI_API_KEY=<the value of ${key_env}> (e.g. under "
            "`environment:` in its docker-compose.yml) and restart it. If that variable already holds your OpenAI "
            "key, run again with --with-key instead, which stores the key in the catalog (llm-bawt's API returns "
            "it in clear)")


WITH_KEY_WARNING = ("the gateway key is written into serving_config.api_key of each endpoint: llm-bawt's API "
                    "(GET /v1/models/catalog/endpoints) returns it in clear to anyone who can reach the service")
