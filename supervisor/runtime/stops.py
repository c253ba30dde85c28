"""What a stop proves: every process of the tree checked and gone, and on a GPU the VRAM back.

Built in one place (`StopResult.of_kill`) for every stop: a user's `down`, an eviction, an
idle unload, a reload, and a tree a previous supervisor left behind.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from .process import KillReport
from .vram import VramRelease


@dataclass
class StopResult:
    alias: str
    took_s: float
    was_running: bool
    sigkilled: list[int] = field(default_factory=list)
    survivors: list[int] = field(default_factory=list)
    processes_checked: int = 0
    vram: VramRelease | None = None

    @classmethod
    def of_kill(cls, alias: str, report: KillReport, vram: VramRelease | None = None) -> StopResult:
        """The stop of a tree that was running: what the kill found, and the VRAM proof on a GPU."""
        return cls(alias, report.took_s + (vram.seconds if vram else 0.0), was_running=True,
                   sigkilled=report.sigkilled, survivors=report.survivors, processes_checked=report.checked,
                   vram=vram)

    @property
    def clean(self) -> bool:
        return not self.survivors and (self.vram is None or self.vram.proven)

    def proof(self) -> str:
        if not self.was_running:
            return "was not running"
        parts = [f"{self.processes_checked} process(es) of the tree checked, "
                 + ("none alive" if not self.survivors else f"STILL ALIVE: {self.survivors}")]
        if self.sigkilled:
            parts.append(f"SIGKILLed after the grace period: {self.sigkilled}")
        if self.vram is not None:
            parts.append(self.vram.detail)
        return "; ".join(parts)

    def summary(self) -> str:
        """One line for people: 'tiny: gone in 0.31s (...proof...)'."""
        if not self.was_running:
            return f"{self.alias}: was not running"
        verdict = "gone" if self.clean else "NOT CLEAN"
        return f"{self.alias}: {verdict} in {self.took_s:.2f}s ({self.proof()})"

    def as_dict(self) -> dict[str, Any]:
        return {
            "alias": self.alias, "took_s": round(self.took_s, 3), "was_running": self.was_running,
            "sigkilled": self.sigkilled, "survivors": self.survivors,
            "processes_checked": self.processes_checked, "clean": self.clean, "proof": self.proof(),
            "summary": self.summary(),
            "vram_freed_bytes": None if self.vram is None else self.vram.freed_bytes,
            "vram_proven": None if self.vram is None else self.vram.proven,
        }
