"""The daemon against the stand-in: control API, gateway routing and errors, reload, shutdown."""

from __future__ import annotations

import json
import os
import socket
import stat
import subprocess
import sys
import time

import openai
import pytest
import yaml
from helpers import (
    LineReader,
    RunningDaemon,
    alive,
    daemon_pid,
    free_port,
    http,
    standin_entry,
    standin_settings,
    stop_daemon,
    stream_lines,
    wait_until,
    write_models_yaml,
)


def config_for(tmp_path, models, **settings):
    merged = standin_settings(tmp_path, gateway_port=free_port(), **settings)
    return write_models_yaml(tmp_path / "models.yaml", models, **merged)


def cli(*args, config, env=None, timeout=60):
    return subprocess.run([sys.executable, "-m", "bawt_vllm.supervisor.cli", *args, "--config", str(config)],
                          capture_output=True, text=True, timeout=timeout, env={**os.environ, **(env or {})})


def tree_pids(daemon: RunningDaemon) -> list[int]:
    pids = []
    for record in (daemon.state_dir / "instances").glob("*.json"):
        pids += [int(pid) for pid, _ in json.loads(record.read_text())["members"]]
    return pids


def test_up_autostarts_the_daemon_and_down_proves_gone(tmp_path):
    config = config_for(tmp_path, {"m": standin_entry("engine_child")})
    up = cli("up", "m", config=config)
    started = daemon_pid(tmp_path / "state")
    try:
        assert up.returncode == 0, up.stderr
        assert "no daemon running: starting one" in up.stderr
        assert "[ready]" in up.stderr and "m is ready" in up.stdout
        assert "type: openai" in up.stdout and "model_id: m" in up.stdout
        ps = json.loads(cli("ps", "--json", config=config).stdout)
        assert [(r["alias"], r["state"]) for r in ps] == [("m", "ready")]
        status = json.loads(cli("status", "--json", config=config).stdout)
        assert status["daemon"]["pid"] == started
        members = [int(p) for p, _ in json.loads((tmp_path / "state/instances/m.json").read_text())["members"]]
        assert len(alive(members)) == 2
        down = cli("down", "m", config=config)
        assert down.returncode == 0 and "m: gone in" in down.stdout and "none alive" in down.stdout
        assert alive(members) == []
    finally:
        stop_daemon(started)


def test_control_socket_is_owner_only(tmp_path):
    with RunningDaemon(config_for(tmp_path, {"m": standin_entry()})) as daemon:
        mode = stat.S_IMODE(os.stat(daemon.socket).st_mode)
        assert mode == 0o600
        assert stat.S_IMODE(os.stat(daemon.state_dir).st_mode) & 0o077 == 0


def test_gateway_routes_loads_on_demand_and_streams(tmp_path):
    models = {"a": standin_entry(), "b": standin_entry(env={"FAKE_VLLM_TOKENS": "6", "FAKE_VLLM_TOKEN_S": "0.05"})}
    with RunningDaemon(config_for(tmp_path, models)) as daemon:
        client = openai.OpenAI(base_url=daemon.gateway(), api_key="none")
        listed = {m.id: m for m in client.models.list().data}
        assert set(listed) == {"a", "b"} and listed["a"].model_extra["state"] == "stopped"
        reply = client.chat.completions.create(model="a", messages=[{"role": "user", "content": "hi"}])
        assert reply.choices[0].message.content == "standin reply"
        arrivals = []
        stream = client.chat.completions.create(model="b", messages=[{"role": "user", "content": "hi"}], stream=True)
        for chunk in stream:
            if chunk.choices and chunk.choices[0].delta.content:
                arrivals.append((time.monotonic(), chunk.choices[0].delta.content))
        assert [text for _, text in arrivals] == [f"t{i} " for i in range(6)]
        assert arrivals[-1][0] - arrivals[0][0] > 0.15, "chunks arrive as they are written, not buffered"
        states = {row["alias"]: row["state"] for row in daemon.client.status()["models"]}
        assert states == {"a": "ready", "b": "ready"}


def test_gateway_errors_are_openai_shaped(tmp_path):
    models = {"m": standin_entry(), "broken": standin_entry("exit_during_load")}
    with RunningDaemon(config_for(tmp_path, models)) as daemon:
        base = daemon.gateway()
        status, _, body = http("POST", f"{base}/chat/completions", body=b"{not json")
        assert status == 400 and "not valid JSON" in body["error"]["message"]
        status, _, body = http("POST", f"{base}/chat/completions", body={"messages": []})
        assert status == 400 and "model" in body["error"]["message"]
        status, _, body = http("POST", f"{base}/chat/completions", body={"model": "nope", "messages": []})
        error = body["error"]
        assert status == 404 and error["code"] == "model_not_found"
        assert "known models: m, broken" in error["message"]
        status, _, body = http("POST", f"{base}/chat/completions", body={"model": "broken", "messages": []})
        error = body["error"]
        assert status == 502 and error["code"] == "model_load_failed"
        assert "exited during load with code 3" in error["message"] and "CUDA out of memory" in error["message"]
        client = openai.OpenAI(base_url=base, api_key="none", max_retries=0)
        with pytest.raises(openai.NotFoundError, match="known models"):
            client.chat.completions.create(model="nope", messages=[{"role": "user", "content": "x"}])


def test_gateway_api_key_is_checked_first(tmp_path):
    env = {"BAWT_VLLM_API_KEY": "s3cret"}
    with RunningDaemon(config_for(tmp_path, {"m": standin_entry()}), env=env) as daemon:
        base = daemon.gateway()
        status, _, body = http("POST", f"{base}/chat/completions", body={"model": "nope"})
        assert status == 401 and body["error"]["code"] == "invalid_api_key"
        allowed = openai.OpenAI(base_url=base, api_key="s3cret").chat.completions.create(
            model="m", messages=[{"role": "user", "content": "x"}])
        assert allowed.choices[0].message.content == "standin reply"
        assert http("GET", base.removesuffix("/v1") + "/health")[0] == 200


def test_capacity_full_and_busy_answers_503_with_retry_after(tmp_path):
    models = {"a": standin_entry(env={"FAKE_VLLM_TOKENS": "40", "FAKE_VLLM_TOKEN_S": "0.05"}), "b": standin_entry()}
    config = config_for(tmp_path, models, max_cpu_instances=1, eviction_wait_s=0.3)
    with RunningDaemon(config) as daemon:
        base = daemon.gateway()
        lines = stream_lines(f"{base}/chat/completions", {"model": "a", "stream": True, "messages": []})
        assert next(line for line in lines if line.startswith("data:"))
        status, headers, body = http("POST", f"{base}/chat/completions", body={"model": "b", "messages": []})
        assert status == 503 and headers["Retry-After"] == "10"
        assert "every running model is busy" in body["error"]["message"]
        rest = [line for line in lines if line.startswith("data:")]
        assert rest[-1] == "data: [DONE]", "the in-flight stream was not cut"


def test_idle_ttl_unloads(tmp_path):
    config = config_for(tmp_path, {"m": standin_entry(idle_ttl_s=0.5)})
    with RunningDaemon(config) as daemon:
        daemon.client.up("m")
        pids = tree_pids(daemon)
        assert wait_until(lambda: daemon.client.status()["models"][0]["state"] == "stopped", 10)
        assert alive(pids) == []
        events = [e["message"] for e in daemon.client.events("m")["events"]]
        assert any("stopped in" in m for m in events)


def test_sighup_reload_keeps_unchanged_and_stops_changed(tmp_path):
    models = {"keep": standin_entry(), "change": standin_entry()}
    config = config_for(tmp_path, models)
    with RunningDaemon(config) as daemon:
        daemon.client.up("keep")
        daemon.client.up("change")
        before = {r["alias"]: r["pid"] for r in daemon.client.status()["models"]}
        document = yaml.safe_load(config.read_text())
        document["models"]["change"]["max_model_len"] = 2048
        document["models"]["new"] = standin_entry()
        config.write_text(yaml.safe_dump(document))
        daemon.process.send_signal(1)  # SIGHUP
        assert wait_until(lambda: len(daemon.client.status()["models"]) == 3, 10)
        after = {r["alias"]: (r["state"], r.get("pid")) for r in daemon.client.status()["models"]}
        assert after["keep"] == ("ready", before["keep"])
        assert after["change"][0] == "stopped" and alive([before["change"]]) == []
        assert after["new"][0] == "stopped"


def test_sigterm_stops_every_instance_before_exit(tmp_path):
    notify_path = tmp_path / "notify.sock"
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    listener.bind(str(notify_path))
    listener.settimeout(30)
    try:
        seen = tmp_path / "a-env.json"
        a = standin_entry("engine_child", env={"FAKE_VLLM_ARGV_FILE": str(seen)})
        config = config_for(tmp_path, {"a": a, "b": standin_entry("ignore_sigterm")}, stop_grace_s=0.5)
        daemon = RunningDaemon(config, env={"NOTIFY_SOCKET": str(notify_path)})
        with daemon:
            assert b"READY=1" in listener.recv(4096)
            daemon.client.up("a")
            daemon.client.up("b")
            pids = tree_pids(daemon)
            assert len(alive(pids)) == 3
            assert json.loads(seen.read_text())["notify_socket"] is None, "vLLM must not talk to systemd"
            assert daemon.stop() == 0
            assert b"STOPPING=1" in listener.recv(4096)
            assert alive(pids) == []
            assert not daemon.socket.exists()
            output = daemon.output()
            assert "a: gone in" in output and "b: gone in" in output and "SIGKILLed" in output
    finally:
        listener.close()


def test_metrics_count_starts_and_requests(tmp_path):
    with RunningDaemon(config_for(tmp_path, {"m": standin_entry()})) as daemon:
        openai.OpenAI(base_url=daemon.gateway(), api_key="x").completions.create(model="m", prompt="x")
        text = http("GET", daemon.gateway().removesuffix("/v1") + "/metrics")[2]
        assert 'bawt_vllm_instances{state="ready"} 1.0' in text
        assert 'bawt_vllm_starts_total{model="m"} 1.0' in text
        assert 'bawt_vllm_requests_total{model="m",route="completions"} 1.0' in text


def test_client_disconnect_cancels_the_upstream_generation(tmp_path):
    models = {"m": standin_entry(env={"FAKE_VLLM_TOKENS": "200", "FAKE_VLLM_TOKEN_S": "0.02"})}
    with RunningDaemon(config_for(tmp_path, models)) as daemon:
        lines = stream_lines(daemon.gateway() + "/chat/completions", {"model": "m", "stream": True, "messages": []})
        assert next(line for line in lines if line.startswith("data:"))
        lines.close()  # the client goes away mid-stream
        log = tmp_path / "state" / "logs" / "m.1.log"
        assert wait_until(lambda: "generation aborted" in log.read_text(), 10)
        row = daemon.client.status()["models"][0]
        assert row["in_flight"] == 0


def test_logs_follow_and_cli_errors(tmp_path):
    config = config_for(tmp_path, {"m": standin_entry()})
    broken = tmp_path / "broken.yaml"
    broken.write_text("models:\n  x:\n    type: vllm\n    max_model_length: 5\n  y:\n    type: vllm\n"
                      "    model_id: a/b\n    tool_support: native\n")
    check = cli("config", "check", config=broken)
    assert check.returncode == 2
    assert "models.x.max_model_length: unknown key 'max_model_length' (did you mean 'max_model_len'?)" in check.stderr
    assert "models.x.model_id" in check.stderr and "models.y.tool_call_parser" in check.stderr
    listed = cli("gpus", "--json", config=config)  # a config with problems: NVML's own view, no daemon asked
    assert listed.returncode == 0 and json.loads(listed.stdout) == [], listed.stderr
    gpus = subprocess.run([sys.executable, "-m", "bawt_vllm.supervisor.cli", "gpus"], capture_output=True, text=True)
    assert gpus.returncode == 0 and "no GPU" in gpus.stdout
    with RunningDaemon(config) as daemon:
        daemon.client.up("m")
        follower = subprocess.Popen([sys.executable, "-m", "bawt_vllm.supervisor.cli", "logs", "m", "-f",
                                     "--config", str(config)], stdout=subprocess.PIPE, text=True)
        try:
            output = LineReader(follower.stdout)
            output.wait_for("Application startup complete.", 10)  # the tail
            daemon.client.down("m")
            output.wait_for("Shutting down", 10)  # followed as it was written
        finally:
            follower.kill()
            follower.wait()
        unknown = cli("logs", "nope", config=config)
        assert unknown.returncode == 1 and "unknown model 'nope'" in unknown.stderr


def test_one_supervisor_per_state_directory(tmp_path):
    config = config_for(tmp_path, {"m": standin_entry()})
    with RunningDaemon(config):
        second = cli("daemon", config=config, timeout=30)
        assert second.returncode == 1 and "already supervises" in second.stderr
        foreground = cli("up", "m", "--foreground", config=config, timeout=30)
        assert foreground.returncode == 1 and "a bawt-vllm daemon (pid" in foreground.stderr
        assert "drop --foreground" in foreground.stderr


def test_streaming_client_gets_sse_comments_while_the_model_loads(tmp_path):
    models = {"slow": standin_entry(env={"FAKE_VLLM_LOAD_S": "2.5"})}
    with RunningDaemon(config_for(tmp_path, models)) as daemon:
        lines = [line for line in stream_lines(daemon.gateway() + "/chat/completions",
                                               {"model": "slow", "stream": True, "messages": []}) if line]
        assert lines[0].startswith(": loading slow ("), lines
        assert lines[-1] == "data: [DONE]"
        assert sum(line.startswith("data: {") for line in lines) == 5


def test_events_say_why_a_model_stopped(tmp_path):
    config = config_for(tmp_path, {"a": standin_entry(), "b": standin_entry(idle_ttl_s=0.5)}, max_cpu_instances=1)
    with RunningDaemon(config) as daemon:
        daemon.client.up("a")
        daemon.client.up("b")  # evicts a, the least recently used idle model
        assert wait_until(lambda: daemon.client.status()["models"][1]["state"] == "stopped", 10)
        a_events = [e["message"] for e in daemon.client.events("a")["events"] if e["state"] == "stopping"]
        b_events = [e["message"] for e in daemon.client.events("b")["events"] if e["state"] == "stopping"]
        assert a_events == ["evicted (least recently used) for b"]
        assert b_events == ["idle TTL"]


def test_up_of_a_model_added_after_the_daemon_started_reloads_it(tmp_path):
    config = config_for(tmp_path, {"a": standin_entry()})
    with RunningDaemon(config):
        document = yaml.safe_load(config.read_text())
        document["models"]["b"] = standin_entry()
        config.write_text(yaml.safe_dump(document))
        up = cli("up", "b", config=config)
        assert up.returncode == 0, up.stderr
        assert "daemon reloaded the config: b: added" in up.stderr and "b is ready" in up.stdout
        document["models"]["b"] = {"type": "vllm", "tool_support": "none"}  # no model_id
        config.write_text(yaml.safe_dump(document))
        refused = cli("reload", config=config)
        assert refused.returncode == 1 and refused.stdout.startswith("refused") and "model_id" in refused.stdout
        rows = {row["alias"]: row["state"] for row in json.loads(cli("ps", "--json", config=config).stdout)}
        assert rows == {"a": "stopped", "b": "ready"}, "a refused reload keeps the running config"


def test_preload_starts_marked_models_with_the_daemon(tmp_path):
    config = config_for(tmp_path, {"warm": standin_entry(preload=True), "cold": standin_entry()},
                        gateway_host="0.0.0.0")
    with RunningDaemon(config) as daemon:
        assert wait_until(lambda: daemon.client.status()["models"][0]["state"] == "ready", 20)
        assert daemon.client.status()["models"][1]["state"] == "stopped"
    assert "listens on 0.0.0.0 without an API key" in daemon.output()


def test_a_model_that_cannot_be_placed_is_an_openai_error(tmp_path):
    config = config_for(tmp_path, {"m": standin_entry(port=free_port())})
    taken = socket.socket()
    taken.bind(("127.0.0.1", yaml.safe_load(config.read_text())["models"]["m"]["port"]))
    taken.listen()
    try:
        with RunningDaemon(config) as daemon:
            status, _, body = http("POST", daemon.gateway() + "/chat/completions", body={"model": "m", "messages": []})
            assert status == 502 and body["error"]["code"] == "model_load_failed"
            assert "already in use by another program" in body["error"]["message"]
    finally:
        taken.close()
