"""The gateway's metrics against a daemon running the stand-in: time to first token and stream events
measured in the relay, bounded route labels, and a model's own /metrics behind the gateway key."""

from __future__ import annotations

from pathlib import Path

from helpers import RunningDaemon, free_port, http, standin_entry, standin_settings, stream_lines, write_models_yaml

KEY = {"BAWT_VLLM_API_KEY": "s3cret"}
AUTH = {"Authorization": "Bearer s3cret"}


def config_for(tmp_path: Path) -> Path:
    models = {"m": standin_entry(env={"FAKE_VLLM_TOKENS": "5"}), "idle": standin_entry()}
    return write_models_yaml(tmp_path / "models.yaml", models,
                             **standin_settings(tmp_path, gateway_port=free_port()))


def test_a_stream_is_measured_in_the_relay_and_labels_stay_bounded(tmp_path: Path) -> None:
    with RunningDaemon(config_for(tmp_path), env=KEY) as daemon:
        base = daemon.gateway()
        lines = stream_lines(base + "/chat/completions", {"model": "m", "stream": True, "messages": []},
                             headers=AUTH)
        events = [line for line in lines if line.startswith("data:") and "[DONE]" not in line]
        assert events, "the stand-in streamed nothing"
        http("POST", base + "/made-up/path", body={"model": "m"}, headers=AUTH)
        text = http("GET", base.removesuffix("/v1") + "/metrics", headers=AUTH)[2]
        assert 'bawt_vllm_time_to_first_token_seconds_count{model="m"} 1.0' in text
        assert f'bawt_vllm_stream_events_total{{model="m"}} {float(len(events))}' in text
        assert 'bawt_vllm_requests_total{model="m",route="other"} 1.0' in text
        assert "made-up" not in text
        assert "_created" not in text


def test_a_models_own_metrics_are_reachable_with_the_gateway_key_only(tmp_path: Path) -> None:
    with RunningDaemon(config_for(tmp_path), env=KEY) as daemon:
        root = daemon.gateway().removesuffix("/v1")
        daemon.client.up("m")
        status, _, text = http("GET", root + "/upstream/m/metrics", headers=AUTH)
        assert status == 200 and "vllm:num_requests_running" in text
        assert http("GET", root + "/upstream/m/metrics")[0] == 401
        status, _, body = http("GET", root + "/upstream/idle/metrics", headers=AUTH)
        assert status == 409 and body["error"]["code"] == "model_not_loaded"
        assert daemon.client.status()["models"][1]["state"] == "stopped", "the route loaded a model"
        assert http("GET", root + "/upstream/nope/metrics", headers=AUTH)[0] == 404
