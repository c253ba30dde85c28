"""`bawt-vllm entries --catalog`: the supervised models registered in llm-bawt's model catalog
(supervisor/catalog/llmbawt*.py, supervisor/cli/catalog.py), against tests/llmbawt_standin.py,
which checks every request against llm-bawt's API contract."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import typer
import yaml
from bawt_vllm.supervisor.catalog import llmbawt
from bawt_vllm.supervisor.catalog.entries import openai_entries
from bawt_vllm.supervisor.catalog.llmbawt_api import (
    CatalogClient,
    CatalogHTTPError,
    CatalogUnreachableError,
    NoCatalogError,
    catalog_route,
    read_state,
)
from bawt_vllm.supervisor.cli.catalog import base_url_for_models_yaml, run_catalog_command
from bawt_vllm.supervisor.config.loading import load_config
from bawt_vllm.supervisor.config.problems import ConfigError
from helpers import free_port
from llmbawt_standin import LlmBawtStandin, silent_server

KEY_ENV = "BAWT_TEST_CATALOG_GATEWAY_KEY"
PATH = "bawt-vllm"


def write_config(tmp_path: Path, *, settings: dict[str, Any] | None = None,
                 models: dict[str, dict[str, Any]] | None = None) -> Path:
    local = tmp_path / "local-model"
    local.mkdir(exist_ok=True)
    (local / "config.json").write_text(json.dumps({"model_type": "llama", "max_position_embeddings": 2048}))
    document = {
        "bawt_vllm": {"gateway_port": 8411, "state_dir": str(tmp_path / "state"), "api_key_env": KEY_ENV,
                      **(settings or {})},
        "models": models if models is not None else {
            "qwen-awq": {"type": "vllm", "model_id": "Qwen/Qwen2.5-7B-Instruct-AWQ", "description": "Qwen AWQ",
                         "context_window": 8192, "max_tokens": 2048, "max_model_len": 16384,
                         "tool_call_parser": "hermes"},
            "small-gguf": {"type": "gguf", "backend": "vllm", "repo_id": "bartowski/Qwen2.5-0.5B-Instruct-GGUF",
                           "filename": "Qwen2.5-0.5B-Instruct-Q4_K_M.gguf", "max_model_len": 4096,
                           "tool_support": "none", "served_model_name": "small"},
            "local": {"type": "vllm", "model_id": str(local), "tool_support": "xml"},
        },
    }
    path = tmp_path / "models.yaml"
    path.write_text(yaml.safe_dump(document, sort_keys=False))
    return path


@pytest.fixture
def config_path(tmp_path: Path) -> Path:
    return write_config(tmp_path)


@pytest.fixture
def standin() -> Iterator[LlmBawtStandin]:
    with LlmBawtStandin() as server:
        yield server
        assert server.violations == [], "bawt-vllm broke llm-bawt's catalog contract"


def run(config_path: Path, standin: LlmBawtStandin | str, *names: str, env: dict[str, str] | None = None,
        **options: Any) -> None:
    url = standin if isinstance(standin, str) else standin.url
    run_catalog_command(config_path, list(names), catalog_url=url, environ=env or {}, **options)


def exit_code(error: pytest.ExceptionInfo[typer.Exit]) -> int:
    return error.value.exit_code


# --------------------------------------------------------------------------- registering


def test_registration_adds_our_access_path_models_and_endpoints(config_path: Path, standin: LlmBawtStandin,
                                                                 capsys: pytest.CaptureFixture[str]) -> None:
    run(config_path, standin)

    path = standin.access_paths[PATH]
    assert {k: path[k] for k in ("vendor", "protocol", "base_url", "auth_mechanism", "engine_kind")} == {
        "vendor": "openai", "protocol": "chat-completions", "base_url": "http://127.0.0.1:8411/v1",
        "auth_mechanism": "none", "engine_kind": None}
    qwen = standin.models["qwen-awq"]
    assert (qwen["default_context_window"], qwen["default_tool_support"], qwen["description"]) == (
        8192, "native", "Qwen AWQ")
    endpoint = standin.endpoint("qwen-awq", PATH)
    assert endpoint is not None
    assert endpoint["upstream_model_id"] == "qwen-awq"  # the alias: what the gateway routes by
    assert endpoint["serving_config"] == {"max_tokens": 2048, "managed_by": "bawt-vllm"}
    assert (endpoint["context_window_override"], endpoint["tool_support_override"]) == (8192, "native")
    assert [(call.method, call.path) for call in standin.writes] == [
        ("PUT", "/v1/models/catalog/access-paths/bawt-vllm"),
        ("PUT", "/v1/models/catalog/models/qwen-awq"),
        ("PUT", "/v1/models/catalog/endpoints/qwen-awq/bawt-vllm"),
        ("PUT", "/v1/models/catalog/models/small-gguf"),
        ("PUT", "/v1/models/catalog/endpoints/small-gguf/bawt-vllm"),
        ("PUT", "/v1/models/catalog/models/local"),
        ("PUT", "/v1/models/catalog/endpoints/local/bawt-vllm"),
    ]
    assert "7 change(s) made" in capsys.readouterr().out


def test_the_services_openai_base_url_means_the_service(standin: LlmBawtStandin) -> None:
    assert CatalogClient(standin.url + "/v1/").base_url == standin.url
    assert read_state(CatalogClient(standin.url + "/v1")).access_paths["openai-api"]["vendor"] == "openai"


def test_a_second_run_sends_no_put_and_says_so(config_path: Path, standin: LlmBawtStandin,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    run(config_path, standin)
    standin.calls.clear()
    capsys.readouterr()

    run(config_path, standin)

    assert standin.writes == []
    assert [call.method for call in standin.calls] == ["GET", "GET", "GET"]  # read first, then nothing
    assert "nothing to change (7 entries already up to date)" in capsys.readouterr().out


def test_a_changed_setting_updates_only_what_changed(tmp_path: Path, standin: LlmBawtStandin) -> None:
    run(write_config(tmp_path), standin)
    standin.calls.clear()

    run(write_config(tmp_path, settings={"gateway_port": 8412}), standin)

    assert [(call.method, call.path) for call in standin.writes] == [
        ("PUT", "/v1/models/catalog/access-paths/bawt-vllm")]
    assert standin.access_paths[PATH]["base_url"] == "http://127.0.0.1:8412/v1"


def test_named_models_only_and_an_unknown_name_is_refused(config_path: Path, standin: LlmBawtStandin,
                                                          capsys: pytest.CaptureFixture[str]) -> None:
    run(config_path, standin, "small")  # a served name resolves to its alias

    assert sorted(standin.models) == ["small-gguf"]
    with pytest.raises(typer.Exit) as error:
        run(config_path, standin, "nope")
    assert exit_code(error) == 1
    assert "'nope' is not a model bawt-vllm supervises" in capsys.readouterr().err


def test_what_someone_added_to_our_endpoint_is_kept(config_path: Path, standin: LlmBawtStandin,
                                                    tmp_path: Path) -> None:
    run(config_path, standin)
    endpoint = standin.endpoint("qwen-awq", PATH)
    assert endpoint is not None
    endpoint["serving_config"]["temperature"] = 0.2
    endpoint["pricing"] = {"input": 0}
    standin.calls.clear()

    run(config_path, standin)  # their key does not count as a difference
    assert standin.writes == []

    document = yaml.safe_load(config_path.read_text())
    document["models"]["qwen-awq"]["max_tokens"] = 1024
    config_path.write_text(yaml.safe_dump(document, sort_keys=False))
    run(config_path, standin)

    assert [call.path for call in standin.writes] == ["/v1/models/catalog/endpoints/qwen-awq/bawt-vllm"]
    assert standin.writes[0].body["endpoint_id"] == endpoint["id"]  # llm-bawt's compare-and-set guard
    assert endpoint["serving_config"] == {"max_tokens": 1024, "managed_by": "bawt-vllm", "temperature": 0.2}
    assert endpoint["pricing"] == {"input": 0}


def test_a_foreign_model_of_the_same_name_is_an_error_and_nothing_is_written(
        config_path: Path, standin: LlmBawtStandin, capsys: pytest.CaptureFixture[str]) -> None:
    standin.add_model("qwen-awq")
    standin.add_endpoint("qwen-awq", "openai-api")
    before = json.dumps([standin.models, standin.endpoints, standin.access_paths], sort_keys=True)

    with pytest.raises(typer.Exit) as error:
        run(config_path, standin)

    assert exit_code(error) == 1
    message = capsys.readouterr().err
    assert "'qwen-awq' is already in llm-bawt's catalog and bawt-vllm did not create it" in message
    assert "--suffix" in message
    assert standin.writes == []
    assert json.dumps([standin.models, standin.endpoints, standin.access_paths], sort_keys=True) == before

    run(config_path, standin, suffix="-gw")  # the way out

    assert sorted(standin.models) == ["local-gw", "qwen-awq", "qwen-awq-gw", "small-gguf-gw"]
    assert standin.endpoint("qwen-awq-gw", PATH)["upstream_model_id"] == "qwen-awq"  # type: ignore[index]
    assert standin.endpoint("qwen-awq", "openai-api") is not None


def test_a_registration_cut_short_is_finished_not_taken_for_foreign(config_path: Path,
                                                                   standin: LlmBawtStandin) -> None:
    standin.add_model("local", vendor="bawt-vllm")  # our model PUT went through, the endpoint's did not

    run(config_path, standin)

    assert standin.endpoint("local", PATH) is not None


def test_stale_registrations_are_reported_and_left(tmp_path: Path, standin: LlmBawtStandin,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    run(write_config(tmp_path), standin)
    capsys.readouterr()
    fewer = {"local": {"type": "vllm", "model_id": str(tmp_path / "local-model"), "tool_support": "xml"}}

    run(write_config(tmp_path, models=fewer), standin)

    out = capsys.readouterr().out
    assert "'qwen-awq' was registered by bawt-vllm" in out and "--remove qwen-awq" in out
    assert "qwen-awq" in standin.models


# --------------------------------------------------------------------------- removing


def test_remove_deletes_ours_in_order_and_leaves_the_rest(config_path: Path, standin: LlmBawtStandin,
                                                          capsys: pytest.CaptureFixture[str]) -> None:
    run(config_path, standin)
    standin.add_model("gpt-4o")
    standin.add_endpoint("gpt-4o", "openai-api")
    standin.add_endpoint("qwen-awq", "openai-compatible")  # someone gave our model a second endpoint
    standin.calls.clear()

    run(config_path, standin, remove=True)

    writes = [(call.method, call.path.rsplit("/", 2)[-2]) for call in standin.writes]
    assert writes == [("DELETE", "endpoints")] * 3 + [("DELETE", "models")] * 2 + [("DELETE", "access-paths")]
    assert sorted(standin.models) == ["gpt-4o", "qwen-awq"]  # qwen-awq keeps the endpoint we did not make
    assert standin.endpoint("qwen-awq", "openai-compatible") is not None
    assert standin.endpoint("gpt-4o", "openai-api") is not None
    assert PATH not in standin.access_paths and "openai-api" in standin.access_paths
    assert "model 'qwen-awq' is kept" in capsys.readouterr().out

    standin.calls.clear()
    run(config_path, standin, remove=True)  # nothing of ours left
    assert standin.writes == []


def test_remove_named_keeps_the_access_path_others_of_ours_use(config_path: Path, standin: LlmBawtStandin) -> None:
    run(config_path, standin)

    run(config_path, standin, "small-gguf", remove=True)

    assert sorted(standin.models) == ["local", "qwen-awq"]
    assert PATH in standin.access_paths


def test_remove_of_a_model_a_bot_uses_says_what_to_do_and_goes_on(config_path: Path, standin: LlmBawtStandin,
                                                                   capsys: pytest.CaptureFixture[str]) -> None:
    run(config_path, standin)
    standin.bind_to_bot("small-gguf", "helper")
    capsys.readouterr()

    with pytest.raises(typer.Exit) as error:
        run(config_path, standin, remove=True)

    assert exit_code(error) == 1
    err = capsys.readouterr().err
    assert "llm-bawt keeps 'small-gguf': Endpoint is used by bot 'helper' (409" in err
    assert "Move that bot to another model in llm-bawt" in err and "--remove small-gguf" in err
    assert sorted(standin.models) == ["small-gguf"]  # the others went; small-gguf and the path stay
    assert PATH in standin.access_paths


def test_what_went_between_reading_and_deleting_counts_as_removed(config_path: Path,
                                                                  standin: LlmBawtStandin) -> None:
    run(config_path, standin)
    client = CatalogClient(standin.url)
    plan = llmbawt.plan_removal(load_config(config_path), read_state(client))
    gone = standin.endpoint("local", PATH)
    assert gone is not None
    del standin.endpoints[gone["id"]]  # someone else deleted it meanwhile: the DELETE answers 404

    report = llmbawt.apply_plan(client, plan)

    assert report.failures == [] and report.skipped == [] and len(report.done) == len(plan.calls)
    assert standin.models == {} and PATH not in standin.access_paths


# --------------------------------------------------------------------------- errors of the service


def test_a_service_that_is_down_is_a_clear_error(config_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    url = f"http://127.0.0.1:{free_port()}"

    with pytest.raises(typer.Exit) as error:
        run(config_path, url)

    assert exit_code(error) == 1
    err = capsys.readouterr().err
    assert f"cannot reach llm-bawt at {url} (connection refused)" in err
    assert "--catalog-url URL" in err


def test_a_service_that_never_answers_times_out_with_the_url() -> None:
    with silent_server() as url, pytest.raises(CatalogUnreachableError) as error:
        CatalogClient(url, timeout_s=0.3).request("GET", catalog_route("models"))

    assert f"cannot reach llm-bawt at {url} (no answer within 0.3 s)" in str(error.value)


def test_an_error_answer_gives_its_status_and_message(config_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with LlmBawtStandin(database_down=True) as down, pytest.raises(typer.Exit):
        run(config_path, down)
    err = capsys.readouterr().err
    assert f"llm-bawt answered 503 to GET {down.url}/v1/models/catalog/access-paths: " in err
    assert err.rstrip().endswith("Model catalog database unavailable")

    with LlmBawtStandin() as server:
        with pytest.raises(CatalogHTTPError) as error:
            CatalogClient(server.url).request("PUT", catalog_route("models", "m"), {"vendor": "x", "display_name": "m",
                                              "default_context_window": 0, "default_tool_support": "native"})
        server.violations.clear()  # provoked on purpose
    assert error.value.status == 422
    assert "default_context_window: Input should be greater than 0" in str(error.value)


def test_an_llm_bawt_without_the_catalog_points_to_models_yaml() -> None:
    with LlmBawtStandin(catalog=False) as old, pytest.raises(NoCatalogError) as error:
        read_state(CatalogClient(old.url))

    assert "has no model catalog API" in str(error.value) and "entries --write" in str(error.value)


def test_the_standin_refuses_what_the_contract_forbids() -> None:
    """The checks the tests lean on can fail: each breach is refused and recorded."""
    with LlmBawtStandin() as server:
        client = CatalogClient(server.url)
        bad_path = {"vendor": "custom", "protocol": "chat-completions", "base_url": "http://x:1/v1",
                    "auth_mechanism": "none"}
        with pytest.raises(CatalogHTTPError):
            client.request("PUT", catalog_route("access-paths", "p"), bad_path)
        client.request("PUT", catalog_route("access-paths", "p"), {**bad_path, "vendor": "openai"})
        client.request("PUT", catalog_route("models", "m"), {"vendor": "v", "display_name": "m",
                                                             "default_context_window": 10,
                                                             "default_tool_support": "none"})
        client.request("PUT", catalog_route("endpoints", "m", "p"), {"upstream_model_id": "m",
                                                                     "serving_config": {"max_tokens": 2,
                                                                                        "managed_by": "bawt-vllm"}})
        for route in (catalog_route("models", "m"), catalog_route("access-paths", "p")):
            with pytest.raises(CatalogHTTPError) as error:
                client.request("DELETE", route)
            assert error.value.status == 409
        assert [v.split(":")[0] for v in server.violations] == [
            "PUT access-paths/p", "DELETE models/m while it has 1 endpoint(s)",
            "DELETE access-paths/p while 1 endpoint(s) use it"]


# --------------------------------------------------------------------------- the gateway URL and its key


def test_the_public_url_setting_and_the_flag(tmp_path: Path, standin: LlmBawtStandin,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    public = write_config(tmp_path, settings={"gateway_host": "0.0.0.0",
                                              "gateway_public_url": "http://host.docker.internal:8411/"})
    run(public, standin, "local")
    assert standin.access_paths[PATH]["base_url"] == "http://host.docker.internal:8411/v1"
    err = capsys.readouterr().err
    assert "which is not loopback, and no gateway key is set" in err and f"${KEY_ENV}" in err
    assert "listens on" not in err  # 0.0.0.0 is every address, not loopback

    run(public, standin, "local", base_url="https://gw.example:9443/v1", env={KEY_ENV: "s3cret"})
    assert standin.access_paths[PATH]["base_url"] == "https://gw.example:9443/v1"
    captured = capsys.readouterr()
    assert "no gateway key is set" not in captured.err  # a key: no warning ...
    assert "OPENAI_API_KEY" in captured.out and "s3cret" not in captured.out  # ... how to give it, never it
    assert "api_key" not in standin.endpoint("local", PATH)["serving_config"]  # type: ignore[index]
    assert openai_entries(load_config(public))["local"]["base_url"] == "http://host.docker.internal:8411/v1"


def test_the_models_yaml_path_gets_the_same_url_and_warnings(tmp_path: Path,
                                                             capsys: pytest.CaptureFixture[str]) -> None:
    config = load_config(write_config(tmp_path, settings={"gateway_public_url": "http://10.0.0.5:8411"}))

    url = base_url_for_models_yaml(config, None, environ={})

    assert url == "http://10.0.0.5:8411/v1" == openai_entries(config)["local"]["base_url"]
    err = capsys.readouterr().err
    assert "no gateway key is set" in err and "listens on 127.0.0.1 only" in err
    assert base_url_for_models_yaml(config, "http://gw:1", environ={KEY_ENV: "k"}) == "http://gw:1/v1"
    assert openai_entries(config, base_url="http://gw:1")["local"]["base_url"] == "http://gw:1/v1"
    with pytest.raises(typer.Exit):
        base_url_for_models_yaml(config, "gw:1")


def test_a_public_url_with_a_loopback_gateway_and_a_remote_llm_bawt_are_warned() -> None:
    settings = load_settings({"gateway_public_url": "http://10.0.0.5:8400"})
    assert any("listens on 127.0.0.1 only" in w for w in llmbawt.gateway_url_warnings(
        settings, "http://10.0.0.5:8400/v1", key_set=True))
    loopback = llmbawt.gateway_url_warnings(settings, "http://127.0.0.1:8400/v1", key_set=False,
                                            catalog_url="http://10.0.0.9:8642")
    assert len(loopback) == 1 and "set gateway_public_url" in loopback[0]
    assert llmbawt.gateway_url_warnings(settings, "http://127.0.0.1:8400/v1", key_set=False,
                                        catalog_url="http://localhost:8642") == []


def load_settings(values: dict[str, Any]) -> Any:
    from bawt_vllm.supervisor.config.schema import Settings

    return Settings(**values)


@pytest.mark.parametrize("bad", ["host.docker.internal:8400", "ftp://x", "http://", "http://h:99999", "http://a b",
                                 "http://h/?q=1", ""])
def test_gateway_public_url_must_be_an_http_url(tmp_path: Path, bad: str) -> None:
    with pytest.raises(ConfigError) as error:
        load_config(write_config(tmp_path, settings={"gateway_public_url": bad}), environ={})
    assert "gateway_public_url: must be an http:// or https:// URL with a host" in str(error.value)


def test_a_bad_base_url_flag_is_refused(config_path: Path, standin: LlmBawtStandin,
                                       capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(typer.Exit) as error:
        run(config_path, standin, base_url="gw:8400")
    assert exit_code(error) == 2 and "--base-url 'gw:8400': must be an http://" in capsys.readouterr().err
    assert standin.calls == []


def test_with_key_writes_the_key_and_warns(config_path: Path, standin: LlmBawtStandin,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(typer.Exit) as error:
        run(config_path, standin, "local", with_key=True)  # no key to write
    assert exit_code(error) == 2 and f"--with-key: ${KEY_ENV} is not set" in capsys.readouterr().err

    run(config_path, standin, "local", with_key=True, env={KEY_ENV: "s3cret"})

    assert standin.endpoint("local", PATH)["serving_config"]["api_key"] == "s3cret"  # type: ignore[index]
    assert "returns it in clear" in capsys.readouterr().err


def test_dry_run_prints_the_calls_and_sends_none(config_path: Path, standin: LlmBawtStandin,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    run(config_path, standin, "local", dry_run=True, with_key=True, env={KEY_ENV: "s3cret"})

    out = capsys.readouterr().out
    assert standin.writes == [] and PATH not in standin.access_paths
    assert f"PUT {standin.url}/v1/models/catalog/access-paths/bawt-vllm" in out
    assert f"PUT {standin.url}/v1/models/catalog/endpoints/local/bawt-vllm" in out
    assert '"default_context_window": 2048' in out
    assert "s3cret" not in out and '"api_key": "<the gateway key>"' in out
    assert "dry run: 3 call(s) not sent" in out


# --------------------------------------------------------------------------- context window, max tokens, tools


def test_context_window_and_max_tokens_are_always_filled(config_path: Path, standin: LlmBawtStandin) -> None:
    run(config_path, standin)

    windows = {key: (row["default_context_window"], row["default_tool_support"])
               for key, row in standin.models.items()}
    assert windows == {"qwen-awq": (8192, "native"), "small-gguf": (4096, "none"),  # context_window; max_model_len
                       "local": (2048, "react")}  # config.json's max_position_embeddings; xml -> react
    tokens = {key: standin.endpoint(key, PATH)["serving_config"]["max_tokens"]  # type: ignore[index]
              for key in windows}
    assert tokens == {"qwen-awq": 2048, "small-gguf": 1024, "local": 512}  # the entry's; else min(4096, window // 4)


def test_an_unknown_context_window_is_an_error_naming_the_alias(tmp_path: Path, standin: LlmBawtStandin,
                                                                capsys: pytest.CaptureFixture[str]) -> None:
    models = {"mystery": {"type": "vllm", "model_id": "nobody/never-downloaded", "tool_support": "none"},
              "known": {"type": "vllm", "model_id": "o/m", "tool_support": "none", "max_model_len": 100_000}}

    with pytest.raises(typer.Exit):
        run(write_config(tmp_path, models=models), standin)

    err = capsys.readouterr().err
    assert "'mystery': its context window is unknown" in err
    assert "set context_window or max_model_len for 'mystery'" in err
    assert standin.writes == []
    entries = openai_entries(load_config(tmp_path / "models.yaml"))
    assert "context_window" not in entries["mystery"]  # models.yaml: left to llm-bawt rather than guessed
    assert (entries["known"]["context_window"], entries["known"]["max_tokens"]) == (100_000, 4096)


def test_context_window_from_config_json_in_the_hf_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from bawt_vllm.supervisor.catalog.llmbawt_fields import context_window
    from bawt_vllm.supervisor.config.schema import ModelEntry
    from hub_standin import point_huggingface_hub

    home = tmp_path / "hf-home"
    point_huggingface_hub(monkeypatch, "http://127.0.0.1:9", home)  # never contacted
    snapshot = home / "hub" / "models--org--base" / "snapshots" / ("a" * 40)
    snapshot.mkdir(parents=True)
    (snapshot / "config.json").write_text(json.dumps({"text_config": {"max_position_embeddings": 131072}}))
    (home / "hub" / "models--org--base" / "refs").mkdir()
    (home / "hub" / "models--org--base" / "refs" / "main").write_text("a" * 40)

    assert context_window(ModelEntry(alias="v", model_id="org/base")) == 32768  # capped as `add` suggests
    gguf = ModelEntry(alias="g", type="gguf", backend="vllm", repo_id="o/x-GGUF", filename="x.gguf",
                      tokenizer="org/base")
    assert context_window(gguf) == 32768  # a GGUF's tokenizer is its base model
    assert context_window(ModelEntry(alias="n", model_id="org/absent")) is None


# --------------------------------------------------------------------------- llm-bawt's GGUF cache


def test_a_gguf_llm_bawt_downloaded_is_used_not_downloaded_again(tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    import huggingface_hub
    from bawt_vllm.supervisor.runtime import weights

    cache = tmp_path / "llm-bawt-models"
    monkeypatch.setenv(weights.LLM_BAWT_CACHE_ENV, str(cache))
    entry = {"type": "gguf", "backend": "vllm", "repo_id": "bartowski/Qwen2.5-0.5B-Instruct-GGUF",
             "filename": "Qwen2.5-0.5B-Instruct-Q4_K_M.gguf"}

    def no_download(*_args: Any, **_kwargs: Any) -> str:
        raise AssertionError("downloaded although llm-bawt has the file")

    monkeypatch.setattr(huggingface_hub, "try_to_load_from_cache", lambda *a, **k: None)
    assert weights.weights_present(entry) is False
    local = cache / "bartowski" / "Qwen2.5-0.5B-Instruct-GGUF" / "Qwen2.5-0.5B-Instruct-Q4_K_M.gguf"
    local.parent.mkdir(parents=True)
    local.write_bytes(b"GGUF")
    monkeypatch.setattr(huggingface_hub, "hf_hub_download", no_download)

    assert weights.weights_present(entry) is True
    assert weights.pull(entry, progress=False) == local
    assert weights.llm_bawt_gguf_file("../etc", "passwd", {weights.LLM_BAWT_CACHE_ENV: str(cache)}) is None
    home = tmp_path / "home"
    monkeypatch.setenv("HOME", str(home))  # the default place: ~/.cache/llm-bawt/models
    (home / ".cache" / "llm-bawt" / "models").mkdir(parents=True)
    (home / ".cache" / "llm-bawt" / "models" / "o").symlink_to(cache / "bartowski")
    found = weights.llm_bawt_gguf_file("o/Qwen2.5-0.5B-Instruct-GGUF", "Qwen2.5-0.5B-Instruct-Q4_K_M.gguf", {})
    assert found == home / ".cache" / "llm-bawt" / "models" / "o" / local.parent.name / local.name
