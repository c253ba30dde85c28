"""A made-up NVML for the dashboard's GPU view: GPUs that show each running model of a pool as a
process holding `per_model` bytes (until its process is gone, so stops are proven as on a real GPU),
and processes bawt-vllm did not start (`foreign`: GPU index -> (pid, bytes))."""

from __future__ import annotations

from typing import Any

from bawt_vllm.supervisor.runtime.gpus import GIB, GpuInfo, GpuProcess
from helpers import alive

__all__ = ["GIB", "FakeGpus"]


class FakeGpus:
    def __init__(self, *, gpus: int = 1, per_model: int = 7 * GIB, foreign: dict[int, tuple[int, int]] | None = None,
                 total: int = 80 * GIB, baseline: int = GIB // 2, name: str = "NVIDIA H100 80GB HBM3") -> None:
        self.count, self.per_model, self.total, self.baseline, self.name = gpus, per_model, total, baseline, name
        self.foreign = foreign or {}
        self._pool: Any = None

    def watch(self, pool: Any) -> None:
        """Show pool's running models on the GPUs they were placed on."""
        self._pool = pool

    def snapshot(self) -> list[GpuInfo]:
        instances = list(self._pool.instances.values()) if self._pool is not None else []
        rows = []
        for index in range(self.count):
            processes = [GpuProcess(*self.foreign[index])] if index in self.foreign else []
            for instance in instances:
                process = instance.process
                if process is not None and index in instance.placement.gpus and alive([process.pid]):
                    processes.append(GpuProcess(process.pid, self.per_model))
            used = self.baseline + sum(process.used_bytes or 0 for process in processes)
            free = self.total - used
            rows.append(GpuInfo(index, f"GPU-{index}", self.name, self.total, used, free, tuple(processes)))
        return rows
