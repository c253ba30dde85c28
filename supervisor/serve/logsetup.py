"""Where the daemon's log lines go, and how they look.

Three cases, chosen once at start (`setup_logging`):

- under systemd, with stderr connected to the journal (sd-daemon(3): `$JOURNAL_STREAM` names
  the device and inode of that stream): no timestamp (the journal adds its own) and each line
  starts with its syslog priority, `<3>` error, `<4>` warning, `<6>` info, `<7>` debug, so
  `journalctl -p warning` filters on it;
- with `--log-file` (a daemon the CLI started in the background): timestamped lines in that
  file, rotated at LOG_FILE_MAX_BYTES with LOG_FILE_BACKUPS old files kept;
- otherwise (a terminal, a pipe): timestamped lines on stderr.
"""

from __future__ import annotations

import logging
import logging.handlers
import os
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import TextIO

JOURNAL_STREAM_ENV = "JOURNAL_STREAM"
LOG_FILE_MAX_BYTES = 10 * 1024 * 1024
LOG_FILE_BACKUPS = 5
TIMESTAMPED = "%(asctime)s %(levelname)s %(message)s"

# sd-daemon(3)'s SD_ERR, SD_WARNING, SD_INFO, SD_DEBUG (and SD_CRIT for critical).
_PRIORITIES = ((logging.CRITICAL, 2), (logging.ERROR, 3), (logging.WARNING, 4), (logging.INFO, 6))
_DEBUG_PRIORITY = 7


def syslog_priority(level: int) -> int:
    """The syslog priority of a logging level (a custom level takes the next standard one below it)."""
    for threshold, priority in _PRIORITIES:
        if level >= threshold:
            return priority
    return _DEBUG_PRIORITY


class JournalFormatter(logging.Formatter):
    """`<N>message`, N the record's syslog priority, on every line of a multi-line record: the
    journal reads each line as its own entry, and a line without the prefix would be info."""

    def format(self, record: logging.LogRecord) -> str:
        prefix = f"<{syslog_priority(record.levelno)}>"
        return "\n".join(prefix + line for line in super().format(record).splitlines() or [""])


def writes_to_journal(stream: TextIO | None = None, environ: Mapping[str, str] | None = None) -> bool:
    """Whether stream (default stderr) is the journal stream systemd connected (sd-daemon(3)).

    `$JOURNAL_STREAM` is inherited by children, so a process whose stderr was redirected
    elsewhere must not trust the variable alone: the device and inode must match.
    """
    env = os.environ if environ is None else environ
    value = env.get(JOURNAL_STREAM_ENV, "")
    device, _, inode = value.partition(":")
    if not device.isdigit() or not inode.isdigit():
        return False
    try:
        status = os.fstat((stream or sys.stderr).fileno())
    except (OSError, ValueError, AttributeError):  # closed, or not backed by a file descriptor
        return False
    return (status.st_dev, status.st_ino) == (int(device), int(inode))


def log_handler(log_file: Path | None = None, *, stream: TextIO | None = None,
                environ: Mapping[str, str] | None = None) -> logging.Handler:
    """The handler for the daemon's log: a rotating file, the journal, or plain stderr lines."""
    if log_file is not None:
        log_file.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        handler: logging.Handler = logging.handlers.RotatingFileHandler(
            log_file, maxBytes=LOG_FILE_MAX_BYTES, backupCount=LOG_FILE_BACKUPS, encoding="utf-8")
        handler.setFormatter(logging.Formatter(TIMESTAMPED))
        return handler
    target = stream or sys.stderr
    handler = logging.StreamHandler(target)
    handler.setFormatter(JournalFormatter() if writes_to_journal(target, environ) else logging.Formatter(TIMESTAMPED))
    return handler


def setup_logging(log_file: Path | None = None, level: int = logging.INFO) -> logging.Handler:
    """Route every log record of the process through log_handler(log_file); returns the handler.

    Raises OSError when the log file cannot be opened (the caller says so in one line).
    """
    handler = log_handler(log_file)
    logging.basicConfig(level=level, handlers=[handler], force=True)
    return handler
