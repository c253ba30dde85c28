"""`bawt-vllm entries --catalog`: register the supervised models in llm-bawt's model catalog,
or take them out again (`--remove`).

Thin: reading the catalog, planning and sending are in catalog/llmbawt.py (and llmbawt_api.py);
this checks the options, reads the gateway key from the environment, prints and exits.
Exit status: 0 done (or nothing to do), 1 llm-bawt unreachable or a call refused or a conflict,
2 a bad option or config.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import typer

from ..catalog.llmbawt_api import CATALOG_URL_OPTION, DEFAULT_CATALOG_URL
from .common import fail, load_or_fail

if TYPE_CHECKING:
    from ..catalog.llmbawt import CatalogCall, CatalogPlan
    from ..catalog.llmbawt_api import CatalogClient, CatalogState
    from ..config.schema import Config

__all__ = ["CATALOG_URL_OPTION", "DEFAULT_CATALOG_URL", "base_url_for_models_yaml", "run_catalog_command"]


def run_catalog_command(
    config_path: Path | None,
    names: Sequence[str] | None = None,
    *,
    catalog_url: str = DEFAULT_CATALOG_URL,
    remove: bool = False,
    dry_run: bool = False,
    base_url: str | None = None,
    with_key: bool = False,
    suffix: str = "",
    environ: Mapping[str, str] | None = None,
) -> None:
    """Make llm-bawt's catalog at `catalog_url` hold the supervised models (or `names`), or remove ours.

    `dry_run` prints the calls (method, URL, body; a key masked) and sends none. Raises typer.Exit.
    """
    from ..catalog.llmbawt import plan_removal
    from ..catalog.llmbawt_api import CatalogClient, CatalogError, read_state
    from ..config.urls import http_url_problem

    loaded = load_or_fail(config_path)
    for option, value in ((CATALOG_URL_OPTION, catalog_url), ("--base-url", base_url)):
        if value is not None and (problem := http_url_problem(value)):
            raise fail(f"{option} {value!r}: {problem}", 2)
    env = os.environ if environ is None else environ
    key = _gateway_key(loaded, env)
    if with_key and not key and not remove:
        variable = loaded.settings.api_key_env or "BAWT_VLLM_API_KEY"
        raise fail(f"--with-key: ${variable} is not set here, so there is no gateway key to write", 2)
    client = CatalogClient(catalog_url)
    try:
        state = read_state(client)
        if remove:
            plan = plan_removal(loaded, state, names=names or (), suffix=suffix)
        else:
            plan = _registration(loaded, state, catalog_url, names or (), base_url, suffix, key, with_key)
    except CatalogError as error:
        raise fail(str(error)) from None
    for note in plan.notes:
        typer.echo(f"note: {note}")
    _send_or_show(client, plan, catalog_url, dry_run=dry_run, remove=remove)
    if not remove and key and not with_key and plan.calls:
        from ..catalog.llmbawt import key_instructions

        typer.echo(f"note: {key_instructions(loaded.settings)}")


def base_url_for_models_yaml(config: Config, base_url: str | None, environ: Mapping[str, str] | None = None) -> str:
    """For `entries` / `entries --write`: check a `--base-url`, warn about the URL llm-bawt is given
    (not loopback without a gateway key, a gateway listening on loopback only), and return it."""
    from ..catalog.llmbawt import gateway_url_warnings
    from ..config.urls import http_url_problem, llm_bawt_base_url

    if base_url is not None and (problem := http_url_problem(base_url)):
        raise fail(f"--base-url {base_url!r}: {problem}", 2)
    url = llm_bawt_base_url(config.settings, base_url)
    key = _gateway_key(config, os.environ if environ is None else environ)
    for warning in gateway_url_warnings(config.settings, url, key_set=bool(key)):
        typer.echo(f"bawt-vllm: warning: {warning}", err=True)
    return url


def _gateway_key(config: Config, env: Mapping[str, str]) -> str | None:
    variable = config.settings.api_key_env
    return (env.get(variable) or None) if variable else None


def _registration(
    config: Config, state: CatalogState, catalog_url: str, names: Sequence[str], base_url: str | None, suffix: str,
    key: str | None, with_key: bool,
) -> CatalogPlan:
    """Warn about the gateway URL llm-bawt is given, then plan the registration."""
    from ..catalog.llmbawt import WITH_KEY_WARNING, gateway_url_warnings, plan_registration
    from ..config.urls import llm_bawt_base_url

    url = llm_bawt_base_url(config.settings, base_url)
    for warning in gateway_url_warnings(config.settings, url, key_set=bool(key), catalog_url=catalog_url):
        typer.echo(f"bawt-vllm: warning: {warning}", err=True)
    if with_key:
        typer.echo(f"bawt-vllm: warning: {WITH_KEY_WARNING}", err=True)
    typer.echo(f"llm-bawt reaches the gateway at {url}")
    return plan_registration(config, state, base_url=url, names=names, suffix=suffix,
                             api_key=key if with_key else None)


def _send_or_show(client: CatalogClient, plan: CatalogPlan, catalog_url: str, *, dry_run: bool, remove: bool) -> None:
    from ..catalog.llmbawt import apply_plan
    from ..catalog.llmbawt_api import CatalogError

    if not plan.calls:
        what = "nothing of bawt-vllm's to remove" if remove else f"{len(plan.unchanged)} entries already up to date"
        typer.echo(f"{catalog_url}: nothing to change ({what})")
        return
    if dry_run:
        for call in plan.calls:
            typer.echo(_shown(call, catalog_url))
        unchanged = f", {len(plan.unchanged)} entries already up to date" if plan.unchanged else ""
        typer.echo(f"dry run: {len(plan.calls)} call(s) not sent{unchanged}")
        return
    try:
        report = apply_plan(client, plan, on_done=lambda call: typer.echo(f"{call.action}: done"))
    except CatalogError as error:
        raise fail(f"{error} (the changes listed above were made)") from None
    for _call, message in report.failures:
        typer.echo(f"bawt-vllm: {message}", err=True)
    summary = f"{catalog_url}: {len(report.done)} change(s) made"
    if plan.unchanged:
        summary += f", {len(plan.unchanged)} already up to date"
    if report.skipped:
        summary += f", {len(report.skipped)} skipped after a refusal"
    typer.echo(summary)
    if report.failures:
        raise typer.Exit(1)


def _shown(call: CatalogCall, catalog_url: str) -> str:
    line = f"{call.method} {catalog_url.rstrip('/')}{call.route}    # {call.action}"
    body = call.shown_body()
    return line if body is None else f"{line}\n{json.dumps(body, indent=2)}"
