"""A start that did not reach ready, told so that a person can act: why, the exit code, the log's tail.

Raised by an instance's load, by a wake from sleep that does not answer, and through the pool to
the gateway (a 502 with the tail), the control socket and the CLI.
"""

from __future__ import annotations

from pathlib import Path


class StartFailed(RuntimeError):
    """A start that did not reach ready: why, the exit code if it exited, the log tail."""

    def __init__(self, alias: str, reason: str, *, exit_code: int | None = None,
                 log_tail: list[str] | None = None, log_path: Path | None = None) -> None:
        self.alias = alias
        self.reason = reason
        self.exit_code = exit_code
        self.log_tail = log_tail or []
        self.log_path = log_path
        super().__init__(f"{alias}: {reason}")

    def details(self) -> str:
        lines = [str(self)]
        if self.log_path is not None:
            lines.append(f"log: {self.log_path}")
        if self.log_tail:
            lines.append("last log lines:")
            lines.extend(f"  {line}" for line in self.log_tail)
        return "\n".join(lines)
