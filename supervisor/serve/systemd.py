"""systemd units for `bawt-vllm daemon`: the canonical text, and installing it.

The unit text lives here, not only in the repository's systemd/ directory,
because that directory is not part of the installed package. The checked-in
systemd/*.service and systemd/bawt-vllm.env.example files are this module's
output for the default paths; tests/serve/test_systemd.py keeps them equal.

`install_service()` writes files and says which commands to run next; it
never runs systemctl (or useradd) itself, so it can be shown to a user first
and cannot start a GPU service behind anyone's back.
"""

from __future__ import annotations

import os
import pwd
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path

from ..config.atomic import write_atomically
from ..config.paths import SYSTEM_CONFIG_PATH, config_home

__all__ = [
    "DEFAULT_EXECUTABLE",
    "ENV_EXAMPLE",
    "ENV_FILE_NAME",
    "SERVICE_NAME",
    "SERVICE_USER",
    "SYSTEM_CONFIG",
    "SYSTEM_ENV_DIR",
    "SYSTEM_UNIT_DIR",
    "ServiceInstall",
    "default_executable",
    "default_unit_dir",
    "install_service",
    "render_unit",
]

SERVICE_NAME = "bawt-vllm"
UNIT_FILE_NAME = f"{SERVICE_NAME}.service"
ENV_FILE_NAME = f"{SERVICE_NAME}.env"
SERVICE_USER = "bawt-vllm"
DEFAULT_EXECUTABLE = "/usr/local/bin/bawt-vllm"
SYSTEM_UNIT_DIR = Path("/etc/systemd/system")
SYSTEM_ENV_DIR = Path("/etc/bawt-vllm")
SYSTEM_CONFIG = SYSTEM_CONFIG_PATH  # also the last place the CLI looks for a models.yaml
SYSTEM_ENV_FILE = str(SYSTEM_ENV_DIR / ENV_FILE_NAME)
USER_ENV_FILE = f"%h/.config/{SERVICE_NAME}/{ENV_FILE_NAME}"  # %h: the user's home, expanded by systemd

UNIT_MODE = 0o644
ENV_MODE = 0o600  # it holds HF_TOKEN and the gateway key

# Markers replaced by render_unit(); '@' never appears in the unit text otherwise.
_EXEC_START = "@EXEC_START@"
_CONFIG_LINES = "@CONFIG_LINES@\n"
_ENV_FILE = "@ENV_FILE@"

_COMMON_SERVICE = """\
# The daemon sends READY=1 once its control socket and the gateway (127.0.0.1:8400)
# listen, STOPPING=1 when shutdown starts, and STATUS= lines for `systemctl status`.
Type=notify
ExecStart=@EXEC_START@ daemon
# SIGHUP makes the daemon re-read models.yaml.
ExecReload=/bin/kill -HUP $MAINPID
Restart=on-failure
RestartSec=5
# Only the daemon's own sockets come up before READY=1 (models load afterwards, in
# the background), so this is generous: it covers a cold Python start on a slow disk.
TimeoutStartSec=120
# On SIGTERM the daemon stops every vLLM instance: SIGTERM, stop_grace_s (15 s by
# default), SIGKILL, then a check that the GPU memory really came back. 60 s leaves
# room for all of that; raise it if you raise stop_grace_s.
TimeoutStopSec=60
# control-group: systemd's SIGTERM goes to every process in the service's cgroup,
# vLLM engines and workers included (the same first signal the daemon sends them),
# and anything still alive after TimeoutStopSec is SIGKILLed. Nothing the daemon
# started can outlive the service, even if the daemon itself hangs.
KillMode=control-group
# vLLM opens many files and sockets per instance.
LimitNOFILE=65536
# Log lines reach the journal as they are written, not when a buffer fills. The
# daemon sees $JOURNAL_STREAM and writes each line with its priority and without a
# timestamp: `journalctl -u bawt-vllm -p warning` (--user for the user unit) shows
# only what went wrong.
Environment=PYTHONUNBUFFERED=1
"""

_SYSTEM_UNIT = (
    """\
# bawt-vllm: one daemon that owns every `vllm serve` instance on this machine.
# System unit. `bawt-vllm service install` writes it with this host's ExecStart=
# path; this copy shows the defaults.
#
# Before the first start:
#   useradd --system --user-group --home-dir /var/lib/bawt-vllm --no-create-home \\
#           --shell /usr/sbin/nologin bawt-vllm
#   put models.yaml in /etc/bawt-vllm/ (readable by bawt-vllm) and secrets in
#   /etc/bawt-vllm/bawt-vllm.env (mode 0600; see bawt-vllm.env.example)
#   systemctl daemon-reload && systemctl enable --now bawt-vllm

[Unit]
Description=bawt-vllm supervisor for local vLLM servers
# Models may be downloaded from the Hugging Face Hub when they start.
Wants=network-online.target
After=network-online.target nvidia-persistenced.service
# Stop retrying after 5 failed starts within 10 minutes instead of looping forever.
StartLimitIntervalSec=600
StartLimitBurst=5

[Service]
"""
    + _COMMON_SERVICE
    + """\
# Secrets and site settings (HF_TOKEN, BAWT_VLLM_API_KEY, HF_HOME...). The leading '-'
# makes the file optional; its values override this unit's Environment= lines.
EnvironmentFile=-@ENV_FILE@
@CONFIG_LINES@
# The state dir defaults to $XDG_STATE_HOME/bawt-vllm: here /var/lib/bawt-vllm,
# the StateDirectory= below.
Environment=XDG_STATE_HOME=/var/lib
# Caches go to the CacheDirectory= below: the Hugging Face hub
# ($XDG_CACHE_HOME/huggingface unless HF_HOME is set), vLLM, torch.compile.
Environment=XDG_CACHE_HOME=/var/cache/bawt-vllm
# Tools that ignore XDG (Triton's ~/.triton) write under $HOME: make it the state
# dir, whatever home the account has in /etc/passwd.
Environment=HOME=/var/lib/bawt-vllm

# A dedicated unprivileged account (create it first: see the top of this file).
User=bawt-vllm
Group=bawt-vllm
# Where /dev/nvidia* or /dev/dri/renderD* are mode 0660 with group video or render
# (some distros, and AMD's /dev/kfd), the account needs those groups: uncomment.
# Every group named must exist, or the service fails to start. The NVIDIA driver's
# default device mode is 0666, which needs nothing.
#SupplementaryGroups=video render
# Created for, and owned by, User= on every start: /var/lib/bawt-vllm (state),
# /var/cache/bawt-vllm (model and compile caches), /run/bawt-vllm (systemd passes it
# as $RUNTIME_DIRECTORY; the daemon puts its control socket there, where
# `bawt-vllm ps`, `status` and `daemon stop` look when no daemon of their own answers).
StateDirectory=bawt-vllm
CacheDirectory=bawt-vllm
RuntimeDirectory=bawt-vllm

# Hardening, chosen so the GPUs stay reachable. Deliberately NOT set:
#   PrivateDevices=yes, DevicePolicy=closed/strict, DeviceAllow=, ProtectClock=yes
#     (the last two imply a device allow-list): each hides or denies /dev/nvidia*,
#     /dev/nvidia-uvm, /dev/dri and /dev/kfd.
#   MemoryDenyWriteExecute=yes: the CUDA driver, PyTorch and Triton JIT-compile into
#     writable+executable memory.
#   SystemCallFilter=, RestrictAddressFamilies=: would have to track whatever CUDA,
#     NCCL and vLLM happen to call.
#   PrivateIPC=yes: vLLM's processes share /dev/shm segments; keep the host's.
# No privilege gain through setuid binaries. Side effect: the setuid nvidia-modprobe
# cannot create /dev/nvidia-uvm on first CUDA use, so on hosts where it is missing at
# boot, load it as root first (nvidia-persistenced, or `nvidia-modprobe -u -c=0`).
NoNewPrivileges=yes
# /usr, /boot, /efi and /etc read-only. "full" rather than "strict": an HF_HOME or
# model directory on /srv, /opt or /data stays writable (file permissions allowing)
# without being listed in ReadWritePaths=.
ProtectSystem=full
# /home, /root and /run/user read-only: a venv or model directory under a home can
# still be read and executed, not written. The Hugging Face cache is not affected as
# long as it lives in /var/cache/bawt-vllm (the default above); if HF_HOME points
# under /home, add ReadWritePaths=<that directory> (the hub writes lock files even
# for a model that is already downloaded).
ProtectHome=read-only
# A private /tmp and /var/tmp: vLLM's IPC sockets and compile scratch stay inside.
PrivateTmp=yes
# /proc/sys and /sys read-only: NVML, NCCL and PyTorch read GPU topology, never write.
ProtectKernelTunables=yes
ProtectControlGroups=yes
RestrictSUIDSGID=yes
RestrictRealtime=yes
LockPersonality=yes

[Install]
WantedBy=multi-user.target
"""
)

_USER_UNIT = (
    """\
# bawt-vllm: one daemon that owns every `vllm serve` instance of this user.
# User unit: runs as you, with your ~/.config/bawt-vllm/models.yaml, your state dir
# (~/.local/state/bawt-vllm) and your Hugging Face cache. `bawt-vllm service install
# --user` writes it with this host's ExecStart= path; this copy shows the defaults.
#
#   systemctl --user daemon-reload && systemctl --user enable --now bawt-vllm
#   loginctl enable-linger "$USER"   # start at boot and keep running after logout

[Unit]
Description=bawt-vllm supervisor for local vLLM servers (user)
# A user manager cannot order itself after system units such as network-online.target.
# Stop retrying after 5 failed starts within 10 minutes instead of looping forever.
StartLimitIntervalSec=600
StartLimitBurst=5

[Service]
"""
    + _COMMON_SERVICE
    + """\
# Secrets and settings (HF_TOKEN, BAWT_VLLM_API_KEY...). The leading '-' makes the
# file optional; its values override this unit's Environment= lines.
EnvironmentFile=-@ENV_FILE@
@CONFIG_LINES@
# Hardening that a user manager can apply without user namespaces. Namespace-based
# options (ProtectSystem=, ProtectHome=, PrivateTmp=...) are left out: in a user unit
# they imply PrivateUsers=yes, and ProtectHome= would hide your own model cache.
# Never set PrivateDevices=yes or MemoryDenyWriteExecute=yes: they break CUDA.
NoNewPrivileges=yes
RestrictSUIDSGID=yes
RestrictRealtime=yes
LockPersonality=yes

[Install]
WantedBy=default.target
"""
)

ENV_EXAMPLE = """\
# Environment for the bawt-vllm systemd unit (read through EnvironmentFile=).
#   system unit: /etc/bawt-vllm/bawt-vllm.env
#   user unit:   ~/.config/bawt-vllm/bawt-vllm.env
# Keep it mode 0600: it holds secrets. One VAR=value per line: no `export`, no
# $expansion. Values here override the unit's Environment= lines. Changes need
# `systemctl restart bawt-vllm` (add --user for the user unit); a reload only
# re-reads models.yaml.

# models.yaml to load. The system unit sets /etc/bawt-vllm/models.yaml; the user
# unit looks in $XDG_CONFIG_HOME/bawt-vllm/models.yaml (~/.config/bawt-vllm/...).
#BAWT_VLLM_CONFIG=/etc/bawt-vllm/models.yaml

# Key that clients must send to the gateway on 127.0.0.1:8400 as
# "Authorization: Bearer <key>". Unset or empty: no key is required. (models.yaml's
# api_key_env names the variable; BAWT_VLLM_API_KEY is the default name.)
#BAWT_VLLM_API_KEY=

# Hugging Face token, for gated or private models.
#HF_TOKEN=hf_...

# Hugging Face cache. Default: $XDG_CACHE_HOME/huggingface, which the system unit
# puts in /var/cache/bawt-vllm/huggingface (user unit: ~/.cache/huggingface).
# Under the system unit the bawt-vllm account must be able to write it (lock
# files), and a path under /home also needs ReadWritePaths= in the unit.
#HF_HOME=/srv/huggingface

# Number GPUs as nvidia-smi and NVML do (PCI bus order) rather than CUDA's
# "fastest first". bawt-vllm sets this for instances it pins to GPUs.
CUDA_DEVICE_ORDER=PCI_BUS_ID
"""


@dataclass(frozen=True)
class ServiceInstall:
    """What install_service() wrote (or would write) and what to run next."""

    unit_path: Path
    env_path: Path | None  # the env file written; None when an existing one was kept
    commands: list[str]  # shell commands for the user to run next, in order


def _quote(value: str, *, exec_line: bool) -> str:
    """Quote one word for a unit file: escape systemd's % specifiers (and, on an
    Exec line, its $ variables), and wrap it in double quotes if it has spaces."""
    if any(char in value for char in "\n\r\0"):
        raise ValueError(f"cannot put {value!r} in a systemd unit: it contains a line break or NUL")
    escaped = value.replace("%", "%%")
    if exec_line:
        escaped = escaped.replace("$", "$$")
    if any(char in escaped for char in " \t\"'\\;"):
        escaped = '"' + escaped.replace("\\", "\\\\").replace('"', '\\"') + '"'
    return escaped


def _config_lines(user: bool, config: Path | None) -> str:
    """BAWT_VLLM_CONFIG for the unit: the system unit always names one, the user unit
    only when asked (otherwise the daemon finds ~/.config/bawt-vllm/models.yaml)."""
    if config is None and user:
        return ""
    path = SYSTEM_CONFIG if config is None else config
    comment = "# models.yaml to load (overridable in the environment file).\n"
    return comment + "Environment=" + _quote(f"BAWT_VLLM_CONFIG={path}", exec_line=False) + "\n"


def render_unit(*, user: bool, executable: str, config: Path | None, env_file: Path | None = None) -> str:
    """The unit file text.

    `executable` is the absolute path of bawt-vllm. `config` None means the
    unit's default models.yaml lookup. `env_file` None means the standard
    location (/etc/bawt-vllm/bawt-vllm.env, or ~/.config/bawt-vllm/bawt-vllm.env
    for the user unit).
    """
    if not os.path.isabs(executable):
        raise ValueError(f"ExecStart= needs an absolute path, got {executable!r}")
    template = _USER_UNIT if user else _SYSTEM_UNIT
    default_env = USER_ENV_FILE if user else SYSTEM_ENV_FILE
    env_text = default_env if env_file is None else _quote(str(env_file), exec_line=False)
    return (
        template.replace(_EXEC_START, _quote(executable, exec_line=True))
        .replace(_CONFIG_LINES, _config_lines(user, config))
        .replace(_ENV_FILE, env_text)
    )


def default_executable() -> str:
    """The absolute path of the running `bawt-vllm`, else the one on $PATH.

    Symlinks are kept (not resolved): a pipx-style ~/.local/bin/bawt-vllm link
    keeps working across reinstalls that move its target.
    """
    running = sys.argv[0] if sys.argv else ""
    if os.path.basename(running) == SERVICE_NAME and os.path.isfile(running):
        return os.path.abspath(running)
    found = shutil.which(SERVICE_NAME)
    if found:
        return os.path.abspath(found)
    raise FileNotFoundError(f"cannot find the {SERVICE_NAME} executable; pass it explicitly")


def default_unit_dir(*, user: bool) -> Path:
    """/etc/systemd/system, or $XDG_CONFIG_HOME/systemd/user (~/.config/systemd/user)."""
    return config_home() / "systemd" / "user" if user else SYSTEM_UNIT_DIR


def _default_env_dir(*, user: bool) -> Path:
    return config_home() / SERVICE_NAME if user else SYSTEM_ENV_DIR


def _unit_env_file(user: bool, env_path: Path) -> Path | None:
    """What the unit's EnvironmentFile= should say: None (the template's default)
    when env_path is where that default points, else env_path itself."""
    standard = Path.home() / ".config" / SERVICE_NAME / ENV_FILE_NAME if user else Path(SYSTEM_ENV_FILE)
    return None if env_path == standard else env_path


def _write_atomic(path: Path, text: str, mode: int, *, overwrite: bool = True) -> bool:
    path.parent.mkdir(parents=True, exist_ok=True)
    return write_atomically(path, text.encode("utf-8"), mode, overwrite=overwrite)


def _user_exists(name: str) -> bool:
    try:
        pwd.getpwnam(name)
    except KeyError:
        return False
    return True


def _next_commands(user: bool) -> list[str]:
    if user:
        return [
            "systemctl --user daemon-reload",
            f"systemctl --user enable --now {SERVICE_NAME}",
            'loginctl enable-linger "$USER"',  # start at boot, keep running after logout
            f"journalctl --user -u {SERVICE_NAME} -f",
        ]
    commands = []
    if not _user_exists(SERVICE_USER):
        commands.append(
            f"useradd --system --user-group --home-dir /var/lib/{SERVICE_NAME} --no-create-home"
            f" --shell /usr/sbin/nologin {SERVICE_USER}"
        )
    commands += [
        "systemctl daemon-reload",
        f"systemctl enable --now {SERVICE_NAME}",
        f"journalctl -u {SERVICE_NAME} -f",
    ]
    return commands


def install_service(
    *,
    user: bool,
    executable: str | None = None,
    config: Path | None = None,
    unit_dir: Path | None = None,
    env_dir: Path | None = None,
    dry_run: bool = False,
) -> ServiceInstall:
    """Write the unit (0644, replacing an older one) and, if there is none yet, the
    environment file from ENV_EXAMPLE (0600). With dry_run, write nothing and
    report what would be written. Never runs systemctl."""
    exe = os.path.abspath(executable) if executable else default_executable()
    unit_path = (unit_dir or default_unit_dir(user=user)) / UNIT_FILE_NAME
    env_file = (env_dir or _default_env_dir(user=user)) / ENV_FILE_NAME
    config_path = config.expanduser().absolute() if config is not None else None
    text = render_unit(user=user, executable=exe, config=config_path, env_file=_unit_env_file(user, env_file))
    if dry_run:
        wrote_env = not env_file.exists()
    else:
        _write_atomic(unit_path, text, UNIT_MODE)
        wrote_env = _write_atomic(env_file, ENV_EXAMPLE, ENV_MODE, overwrite=False)
    return ServiceInstall(unit_path=unit_path, env_path=env_file if wrote_env else None, commands=_next_commands(user))
