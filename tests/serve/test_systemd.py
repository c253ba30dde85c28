"""systemd integration: unit files, sd_notify, install_service."""

from __future__ import annotations

import os
import shutil
import socket
import stat
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from bawt_vllm.supervisor.serve import systemd as service
from bawt_vllm.supervisor.serve.notify import notify_ready, notify_reloading, notify_status, notify_stopping, sd_notify
from bawt_vllm.supervisor.serve.systemd import (
    DEFAULT_EXECUTABLE,
    ENV_EXAMPLE,
    ServiceInstall,
    install_service,
    render_unit,
)

REPO_ROOT = Path(__file__).resolve().parents[2]
SYSTEMD_DIR = REPO_ROOT / "systemd"
# The console script of the environment running the tests: a real executable for ExecStart=.
VENV_EXECUTABLE = Path(sys.executable).parent / "bawt-vllm"


def _directives(text: str) -> dict[str, list[str]]:
    """Key -> values of a unit file, ignoring comments and section headers."""
    found: dict[str, list[str]] = {}
    for line in text.splitlines():
        if "=" in line and not line.startswith(("#", ";", "[")):
            key, value = line.split("=", 1)
            found.setdefault(key.strip(), []).append(value.strip())
    return found


# -- (a) systemd-analyze verify ----------------------------------------------------------

@pytest.fixture(scope="module")
def systemd_analyze() -> str:
    found = shutil.which("systemd-analyze")
    if found is None:
        reason = "systemd-analyze not found: install the Debian/Ubuntu package `systemd`"
        if os.environ.get("CI"):
            pytest.fail(reason + " (required when CI is set)")
        pytest.skip(reason)
    return found


def _verify(analyze: str, unit: Path, *, user: bool, tmp_path: Path) -> subprocess.CompletedProcess[str]:
    """Run `systemd-analyze verify` on one unit file.

    --user needs a runtime directory for the (offline) user manager it builds;
    a private one keeps the test independent of any login session.
    """
    runtime = tmp_path / "runtime"
    runtime.mkdir(mode=0o700, exist_ok=True)
    env = {**os.environ, "XDG_RUNTIME_DIR": str(runtime), "SYSTEMD_LOG_COLOR": "0"}
    command = [analyze, "verify", "--man=no", *(["--user"] if user else []), str(unit)]
    return subprocess.run(command, capture_output=True, text=True, env=env, timeout=60, check=False)


@pytest.mark.parametrize("user", [False, True], ids=["system", "user"])
def test_rendered_units_pass_systemd_analyze_verify(systemd_analyze: str, tmp_path: Path, user: bool) -> None:
    assert VENV_EXECUTABLE.is_file(), f"{VENV_EXECUTABLE} missing: is the package installed in this environment?"
    unit = tmp_path / "bawt-vllm.service"
    unit.write_text(render_unit(user=user, executable=str(VENV_EXECUTABLE), config=None))
    result = _verify(systemd_analyze, unit, user=user, tmp_path=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    # verify only warns (exit 0) about unknown keys and bad values: treat any output as a failure.
    assert result.stdout + result.stderr == ""


def test_verify_really_checks_the_unit(systemd_analyze: str, tmp_path: Path) -> None:
    """Guard against a verify that passes everything: a missing ExecStart= binary must fail."""
    unit = tmp_path / "bawt-vllm.service"
    unit.write_text(render_unit(user=False, executable=str(tmp_path / "no-such-bawt-vllm"), config=None))
    result = _verify(systemd_analyze, unit, user=False, tmp_path=tmp_path)
    assert result.returncode != 0
    assert "no-such-bawt-vllm" in result.stdout + result.stderr


# -- (b) the checked-in files are render_unit()'s output -------------------------------------

@pytest.mark.parametrize(("name", "user"), [("bawt-vllm.service", False), ("bawt-vllm-user.service", True)])
def test_checked_in_units_match_render_unit(name: str, user: bool) -> None:
    expected = render_unit(user=user, executable=DEFAULT_EXECUTABLE, config=None)
    assert (SYSTEMD_DIR / name).read_text() == expected, (
        f"systemd/{name} drifted from supervisor/serve/systemd.py; regenerate it from render_unit()"
    )


def test_checked_in_env_example_matches() -> None:
    assert (SYSTEMD_DIR / "bawt-vllm.env.example").read_text() == ENV_EXAMPLE


# -- (c) sd_notify -------------------------------------------------------------------------

@pytest.fixture
def notify_socket(tmp_path: Path) -> Iterator[tuple[socket.socket, dict[str, str]]]:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    path = tmp_path / "notify.sock"
    sock.bind(str(path))
    sock.settimeout(5)
    try:
        yield sock, {"NOTIFY_SOCKET": str(path)}
    finally:
        sock.close()


def _receive(sock: socket.socket) -> str:
    return sock.recv(4096).decode()


def test_sd_notify_sends_one_datagram(notify_socket: tuple[socket.socket, dict[str, str]]) -> None:
    sock, environ = notify_socket
    assert sd_notify("READY=1", "STATUS=gateway on 127.0.0.1:8400", environ=environ)
    assert _receive(sock) == "READY=1\nSTATUS=gateway on 127.0.0.1:8400"


def test_notify_helpers(notify_socket: tuple[socket.socket, dict[str, str]]) -> None:
    sock, environ = notify_socket
    assert notify_ready("serving", environ=environ)
    assert _receive(sock) == "READY=1\nSTATUS=serving"
    assert notify_ready(environ=environ)
    assert _receive(sock) == "READY=1"
    assert notify_status("2 models\nready", environ=environ)
    assert _receive(sock) == "STATUS=2 models ready"  # one line: a newline would start a new field
    assert notify_stopping("stopping 2 instances", environ=environ)
    assert _receive(sock) == "STOPPING=1\nSTATUS=stopping 2 instances"
    assert notify_reloading("reloading models.yaml", environ=environ)
    lines = _receive(sock).split("\n")
    assert lines[0] == "RELOADING=1"
    assert lines[1].startswith("MONOTONIC_USEC=") and lines[1].removeprefix("MONOTONIC_USEC=").isdigit()
    assert lines[2:] == ["STATUS=reloading models.yaml"]


def test_sd_notify_abstract_socket() -> None:
    name = f"bawt-vllm-test-{os.getpid()}-{id(object())}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind("\0" + name)
        sock.settimeout(5)
        assert sd_notify("READY=1", environ={"NOTIFY_SOCKET": "@" + name})
        assert _receive(sock) == "READY=1"


def test_sd_notify_without_socket_is_a_quiet_no_op() -> None:
    assert sd_notify("READY=1", environ={}) is False
    assert sd_notify("READY=1", environ={"NOTIFY_SOCKET": ""}) is False
    assert notify_ready("x", environ={}) is False
    assert sd_notify("READY=1", environ={"NOTIFY_SOCKET": "vsock:2:1234"}) is False


def test_sd_notify_send_failure_returns_false(tmp_path: Path) -> None:
    assert sd_notify("READY=1", environ={"NOTIFY_SOCKET": str(tmp_path / "nobody-listens")}) is False


def test_sd_notify_rejects_malformed_fields(notify_socket: tuple[socket.socket, dict[str, str]]) -> None:
    _sock, environ = notify_socket
    with pytest.raises(ValueError):
        sd_notify("READY=1\nSTATUS=x", environ=environ)
    with pytest.raises(ValueError):
        sd_notify("READY", environ=environ)


# -- (d) install_service -------------------------------------------------------------------

def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.mark.parametrize("user", [False, True], ids=["system", "user"])
def test_install_service_writes_unit_and_env(tmp_path: Path, user: bool) -> None:
    unit_dir, env_dir = tmp_path / "units", tmp_path / "etc"
    result = install_service(user=user, executable=str(VENV_EXECUTABLE), unit_dir=unit_dir, env_dir=env_dir)
    assert isinstance(result, ServiceInstall)
    assert result.unit_path == unit_dir / "bawt-vllm.service"
    assert result.env_path == env_dir / "bawt-vllm.env"
    assert _mode(result.unit_path) == 0o644
    assert _mode(result.env_path) == 0o600
    assert result.env_path.read_text() == ENV_EXAMPLE
    unit = _directives(result.unit_path.read_text())
    assert unit["ExecStart"] == [f"{VENV_EXECUTABLE} daemon"]
    assert unit["EnvironmentFile"] == [f"-{result.env_path}"]  # not the standard path, so named explicitly
    assert sorted(os.listdir(unit_dir)) == ["bawt-vllm.service"]  # no temporary files left behind
    flag = "--user " if user else ""
    assert f"systemctl {flag}daemon-reload" in result.commands
    assert f"systemctl {flag}enable --now bawt-vllm" in result.commands
    assert f"journalctl {flag}-u bawt-vllm -f" in result.commands
    assert result.commands.index(f"systemctl {flag}daemon-reload") < result.commands.index(
        f"systemctl {flag}enable --now bawt-vllm"
    )


def test_install_service_keeps_existing_env_and_replaces_unit(tmp_path: Path) -> None:
    unit_dir, env_dir = tmp_path / "units", tmp_path / "etc"
    env_dir.mkdir()
    (env_dir / "bawt-vllm.env").write_text("HF_TOKEN=mine\n")
    unit_dir.mkdir()
    (unit_dir / "bawt-vllm.service").write_text("old\n")
    result = install_service(user=False, executable="/opt/bawt/bin/bawt-vllm", config=Path("/srv/models.yaml"),
                             unit_dir=unit_dir, env_dir=env_dir)
    assert result.env_path is None
    assert (env_dir / "bawt-vllm.env").read_text() == "HF_TOKEN=mine\n"
    unit = _directives(result.unit_path.read_text())
    assert unit["ExecStart"] == ["/opt/bawt/bin/bawt-vllm daemon"]
    assert "BAWT_VLLM_CONFIG=/srv/models.yaml" in unit["Environment"]
    assert sorted(os.listdir(env_dir)) == ["bawt-vllm.env"]


def test_install_service_dry_run_writes_nothing(tmp_path: Path) -> None:
    unit_dir, env_dir = tmp_path / "units", tmp_path / "etc"
    result = install_service(user=True, executable=str(VENV_EXECUTABLE), unit_dir=unit_dir, env_dir=env_dir,
                             dry_run=True)
    assert result.unit_path == unit_dir / "bawt-vllm.service"
    assert result.env_path == env_dir / "bawt-vllm.env"
    assert "systemctl --user enable --now bawt-vllm" in result.commands
    assert list(tmp_path.iterdir()) == []


def test_install_service_default_dirs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "config"))
    result = install_service(user=True, executable=str(VENV_EXECUTABLE), dry_run=True)
    assert result.unit_path == tmp_path / "config" / "systemd" / "user" / "bawt-vllm.service"
    assert result.env_path == tmp_path / "config" / "bawt-vllm" / "bawt-vllm.env"
    monkeypatch.delenv("XDG_CONFIG_HOME")
    result = install_service(user=True, executable=str(VENV_EXECUTABLE), dry_run=True)
    assert result.unit_path == tmp_path / "home" / ".config" / "systemd" / "user" / "bawt-vllm.service"
    system = install_service(user=False, executable=str(VENV_EXECUTABLE), dry_run=True)
    assert system.unit_path == Path("/etc/systemd/system/bawt-vllm.service")


def test_user_unit_uses_home_specifier_for_the_standard_env_file(tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.delenv("XDG_CONFIG_HOME", raising=False)
    result = install_service(user=True, executable=str(VENV_EXECUTABLE), unit_dir=tmp_path / "units")
    unit = _directives(result.unit_path.read_text())
    assert unit["EnvironmentFile"] == ["-%h/.config/bawt-vllm/bawt-vllm.env"]
    assert result.env_path == tmp_path / ".config" / "bawt-vllm" / "bawt-vllm.env"


def test_default_executable_prefers_the_running_script(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    script = tmp_path / "bin" / "bawt-vllm"
    script.parent.mkdir()
    script.write_text("#!/bin/sh\n")
    script.chmod(0o755)
    monkeypatch.setattr(sys, "argv", [str(script), "install-service"])
    assert service.default_executable() == str(script)
    monkeypatch.setattr(sys, "argv", ["/somewhere/else/cli.py"])
    monkeypatch.setenv("PATH", str(script.parent))
    assert service.default_executable() == str(script)
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    with pytest.raises(FileNotFoundError):
        service.default_executable()


def test_render_unit_quotes_awkward_paths() -> None:
    unit = _directives(render_unit(user=True, executable="/opt/my tools/50%/bawt-vllm", config=Path("/a b/m.yaml")))
    assert unit["ExecStart"] == ['"/opt/my tools/50%%/bawt-vllm" daemon']
    assert '"BAWT_VLLM_CONFIG=/a b/m.yaml"' in unit["Environment"]
    with pytest.raises(ValueError):
        render_unit(user=False, executable="bawt-vllm", config=None)
    with pytest.raises(ValueError):
        render_unit(user=False, executable="/bin/bawt\nExecStartPre=/bin/evil", config=None)


# -- (e) GPU-safe, stoppable system unit ---------------------------------------------------------

@pytest.mark.parametrize("user", [False, True], ids=["system", "user"])
def test_unit_keeps_gpus_reachable_and_stops_cleanly(user: bool) -> None:
    unit = _directives(render_unit(user=user, executable=DEFAULT_EXECUTABLE, config=None))
    assert unit.get("PrivateDevices", ["no"]) == ["no"]
    assert unit.get("DevicePolicy", ["auto"]) == ["auto"]
    for key in ("DeviceAllow", "ProtectClock", "MemoryDenyWriteExecute"):
        assert key not in unit, f"{key}= blocks GPU access or CUDA's JIT"
    assert unit["Type"] == ["notify"]
    assert unit["KillMode"] == ["control-group"]
    assert float(unit["TimeoutStopSec"][0]) > 15  # above the daemon's default stop_grace_s
    assert unit["ExecReload"] == ["/bin/kill -HUP $MAINPID"]
    assert unit["Restart"] == ["on-failure"]
    assert unit["LimitNOFILE"] == ["65536"]


def test_system_unit_settings() -> None:
    unit = _directives(render_unit(user=False, executable=DEFAULT_EXECUTABLE, config=None))
    assert unit["User"] == ["bawt-vllm"]
    assert unit["StateDirectory"] == ["bawt-vllm"]
    assert unit["RuntimeDirectory"] == ["bawt-vllm"]
    assert unit["EnvironmentFile"] == ["-/etc/bawt-vllm/bawt-vllm.env"]
    environment = unit["Environment"]
    # The config module's default state dir is $XDG_STATE_HOME/bawt-vllm: /var/lib/bawt-vllm = StateDirectory=.
    assert "XDG_STATE_HOME=/var/lib" in environment
    assert "BAWT_VLLM_CONFIG=/etc/bawt-vllm/models.yaml" in environment
    assert unit["NoNewPrivileges"] == ["yes"]
    assert unit["ProtectHome"] == ["read-only"]
    assert unit["WantedBy"] == ["multi-user.target"]


def test_state_dir_under_the_system_unit_is_the_state_directory() -> None:
    from bawt_vllm.supervisor.config.paths import default_state_dir

    unit = _directives(render_unit(user=False, executable=DEFAULT_EXECUTABLE, config=None))
    environ = dict(value.split("=", 1) for value in unit["Environment"])
    assert default_state_dir(environ) == Path("/var/lib") / unit["StateDirectory"][0]


def test_user_unit_settings() -> None:
    unit = _directives(render_unit(user=True, executable=DEFAULT_EXECUTABLE, config=None))
    assert "User" not in unit
    assert unit["EnvironmentFile"] == ["-%h/.config/bawt-vllm/bawt-vllm.env"]
    assert not any(value.startswith("BAWT_VLLM_CONFIG=") for value in unit["Environment"])
    assert unit["WantedBy"] == ["default.target"]
