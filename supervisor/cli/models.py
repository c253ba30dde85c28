"""The CLI commands that edit model lists: `entries` (llm-bawt), `add` (with its Hub `--search`)
and `pull` (Hugging Face).

Thin: the work is in the catalog wing (entries, adding, hubapi, yamlfile) and runtime.weights;
this only asks, shows and reports.
Every prompt has a flag, and `--yes` takes the proposals, so each command runs unattended.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from ..config.urls import LLM_BAWT_SERVICE_URL
from .common import ConfigOption, fail, load_or_fail, require_known


def entries(
    config: ConfigOption = None,
    write: Annotated[bool, typer.Option("--write", help="Merge them into llm-bawt's models.yaml (older llm-bawt, "
                                        "or its --local mode).")] = False,
    catalog: Annotated[bool, typer.Option("--catalog", help="Register them in llm-bawt's model catalog (its REST "
                                          "API) instead of a models.yaml.")] = False,
    catalog_url: Annotated[str, typer.Option("--catalog-url", metavar="URL", help="llm-bawt's service.")]
    = LLM_BAWT_SERVICE_URL,
    remove: Annotated[bool, typer.Option("--remove", help="With --catalog: delete what bawt-vllm registered "
                                         "(all, or MODEL...).")] = False,
    base_url: Annotated[str | None, typer.Option("--base-url", metavar="URL", help="The gateway as llm-bawt reaches "
                                                 "it (default: gateway_public_url, else "
                                                 "http://127.0.0.1:<gateway_port>/v1).")] = None,
    with_key: Annotated[bool, typer.Option("--with-key", help="With --catalog: store the gateway key in "
                                           "serving_config.api_key (llm-bawt's API shows it in clear).")] = False,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="With --write or --catalog: show what would change, "
                                          "send or write nothing.")] = False,
    replace: Annotated[bool, typer.Option("--replace", help="Overwrite entries of the same alias that bawt-vllm "
                                          "did not write.")] = False,
    suffix: Annotated[str, typer.Option("--suffix", help="Append to each alias (e.g. -gw) to avoid clashes.")] = "",
    target: Annotated[Path | None, typer.Option("--target", help="llm-bawt's models.yaml (default: "
                                                "$LLM_BAWT_MODELS_CONFIG_PATH, else ~/.config/llm-bawt/models.yaml)")]
    = None,
    models: Annotated[list[str] | None, typer.Argument(metavar="[MODEL]...", show_default=False,
                                                       help="With --catalog: only these models.")] = None,
) -> None:
    """Print (or --write, or register --catalog) the llm-bawt entry of each supervised model."""
    if not catalog and (remove or with_key or models):
        raise fail("--remove, --with-key and MODEL names go with --catalog", 2)
    if catalog:
        from .catalog import run_catalog_command

        run_catalog_command(config, models, catalog_url=catalog_url, remove=remove, dry_run=dry_run,
                            base_url=base_url, with_key=with_key, suffix=suffix)
        return
    from ..catalog.entries import apply_merge, openai_entries, plan_merge
    from ..catalog.yamlfile import YamlFileError
    from ..config.paths import llm_bawt_models_path
    from .catalog import base_url_for_models_yaml

    loaded = load_or_fail(config)
    url = base_url_for_models_yaml(loaded, base_url)
    if not write:
        import yaml

        typer.echo(yaml.safe_dump({"models": openai_entries(loaded, suffix=suffix, base_url=url)},
                                  sort_keys=False).rstrip())
        return
    path = target or llm_bawt_models_path()
    try:
        plan = plan_merge(loaded, path, replace=replace, suffix=suffix, base_url=url)
        for message in plan.conflict_messages():
            typer.echo(message, err=True)
        if dry_run:
            typer.echo(plan.diff() or f"{path}: nothing would change")
            return
        backup = apply_merge(plan)
    except YamlFileError as error:
        raise fail(str(error)) from None
    summary = f"added {len(plan.added)}, updated {len(plan.updated)}, unchanged {len(plan.unchanged)}"
    typer.echo(f"{path}: {summary}" + (f" (backup: {backup})" if backup else ""))
    if plan.conflicts:
        raise typer.Exit(1)


def add(
    repo: Annotated[str | None, typer.Argument(help="A Hugging Face repo id (ORG/NAME).")] = None,
    search: Annotated[str | None, typer.Option("--search", "-s", help="Search the Hub instead.")] = None,
    choice: Annotated[int | None, typer.Option("--choice", help="Which search result (1 = first).")] = None,
    alias: Annotated[str | None, typer.Option("--alias", help="The alias to add it as.")] = None,
    gguf_file: Annotated[str | None, typer.Option("--gguf-file", help="For GGUF repos: which file.")] = None,
    quantization: Annotated[str | None, typer.Option("--quantization", help="Override the detected one.")] = None,
    tool_call_parser: Annotated[str | None, typer.Option("--tool-call-parser", help="Override the suggestion.")]
    = None,
    max_model_len: Annotated[int | None, typer.Option("--max-model-len", help="Override the suggestion.")] = None,
    replace: Annotated[bool, typer.Option("--replace", help="Overwrite an entry with the same alias.")] = False,
    yes: Annotated[bool, typer.Option("--yes", "-y", help="Take every proposal without asking.")] = False,
    config: ConfigOption = None,
) -> None:
    """Add a model from Hugging Face to models.yaml (paste ORG/NAME, or --search)."""
    from ..catalog.adding import add_model
    from ..catalog.building import entry_for_repo
    from ..catalog.formats import choose_gguf_file
    from ..catalog.hubapi import inspect_repo
    from ..catalog.naming import propose_alias
    from ..config.problems import ConfigError
    from ..runtime.hubclient import HubError

    if (repo is None) == (search is None):
        raise fail("give a repo id (ORG/NAME) or --search QUERY", 2)
    try:
        repo_id = repo or _pick_from_search(search or "", choice, yes)
        if gguf_file is None:
            candidate = inspect_repo(repo_id)
            if not candidate.has_safetensors and candidate.gguf_files:
                gguf_file = _pick_gguf(candidate.gguf_files, choose_gguf_file(candidate.gguf_files), yes)
        overrides = {key: value for key, value in {"quantization": quantization, "max_model_len": max_model_len,
                     "tool_call_parser": tool_call_parser}.items() if value is not None}
        if tool_call_parser:
            overrides["tool_support"] = "native"
        candidate, entry = entry_for_repo(repo_id, gguf_file=gguf_file, overrides=overrides)
        path = _target_config(config)
        taken = _aliases_in(path)
        proposed = propose_alias(repo_id, candidate.quantization, taken)
        chosen = alias or (proposed if yes else typer.prompt("alias", default=proposed))
        typer.echo(_entry_preview(chosen, entry))
        if not yes and not typer.confirm(f"add to {path}?", default=True):
            raise typer.Exit(1)
        backup = add_model(path, chosen, entry, replace=replace)
    except (HubError, ConfigError) as error:
        raise fail(str(error)) from None
    typer.echo(f"added '{chosen}' (type: {entry['type']}) to {path}" + (f"; backup {backup}" if backup else ""))
    typer.echo(f"next: bawt-vllm pull {chosen}   (download ahead)  then  bawt-vllm up {chosen}")


def _pick_from_search(query: str, choice: int | None, yes: bool) -> str:
    from rich.console import Console
    from rich.table import Table

    from ..catalog.hubapi import search_models

    found = search_models(query)
    if not found:
        raise fail(f"no model with safetensors or GGUF weights matches '{query}'")
    table = Table("#", "model", "quant", "size", "downloads")
    for number, candidate in enumerate(found, 1):
        size = "-" if candidate.size_bytes is None else f"{candidate.size_bytes / 1e9:.1f} GB"
        downloads = "-" if candidate.downloads is None else f"{candidate.downloads:,}"
        table.add_row(str(number), candidate.repo_id, candidate.quantization or "-", size, downloads)
    Console(stderr=True).print(table)
    if choice is None:
        choice = 1 if yes else typer.prompt("which one", default=1, type=int)
    if not 1 <= choice <= len(found):
        raise fail(f"choose 1 to {len(found)}", 2)
    return found[choice - 1].repo_id


def _pick_gguf(files: list[str], proposed: str | None, yes: bool) -> str:
    if proposed is None:
        raise fail("this repo has only split or projector GGUF files, which vLLM cannot load")
    if yes or len(files) == 1:
        return proposed
    for name in files:
        typer.echo(f"  {name}", err=True)
    return str(typer.prompt("GGUF file", default=proposed))


def _target_config(config: Path | None) -> Path:
    """The models.yaml to add to: the one in use, else ~/.config/bawt-vllm/models.yaml (created)."""
    from ..config.paths import SYSTEM_CONFIG_PATH, find_config_path, own_models_path
    from ..config.problems import ConfigError

    try:
        found = find_config_path(config)
    except ConfigError:
        return config.expanduser() if config is not None else own_models_path()
    # The system service's file is root's to edit; `add` alone writes the user's own.
    return own_models_path() if config is None and found == SYSTEM_CONFIG_PATH else found


def _aliases_in(path: Path) -> set[str]:
    if not path.exists():
        return set()
    import yaml

    document = yaml.safe_load(path.read_text()) or {}
    models = document.get("models") if isinstance(document, dict) else None
    return set(models) if isinstance(models, dict) else set()


def _entry_preview(alias: str, entry: dict[str, Any]) -> str:
    import yaml

    return yaml.safe_dump({alias: entry}, sort_keys=False).rstrip()


def pull(model: Annotated[str, typer.Argument(help="Alias from models.yaml.")], config: ConfigOption = None) -> None:
    """Download MODEL's weights ahead of time (with progress), so `up` does not wait silently."""
    from ..runtime.hubclient import HubError
    from ..runtime.weights import pull as pull_weights
    from ..runtime.weights import weights_present

    loaded = load_or_fail(config)
    require_known(loaded, model)
    entry = loaded.entry(model)
    if weights_present(entry):
        typer.echo(f"{model}: weights already present")
    try:
        path = pull_weights(entry, progress=True)
    except HubError as error:
        raise fail(str(error)) from None
    typer.echo(f"{model}: ready on disk at {path}")
