"""GPU inventory, GPU choice and VRAM-release proof, against fake NVML readings."""

from __future__ import annotations

import asyncio
import json
import sys
import threading
import types
from collections.abc import Callable, Iterable
from dataclasses import replace
from typing import Any

import pytest
from bawt_vllm.supervisor.runtime.gpus import (
    GIB,
    GpuInfo,
    GpuInventory,
    GpuProcess,
    GpuUnavailableError,
    NoGpuInventory,
    NvmlInventory,
    StaticInventory,
    choose_gpus,
    describe,
    detect_inventory,
)
from bawt_vllm.supervisor.runtime.vram import used_bytes, wait_vram_released

TOTAL = 80 * GIB


def gpu(index: int, free_gib: float, *pids: tuple[int, float | None], name: str = "NVIDIA H100") -> GpuInfo:
    free = int(free_gib * GIB)
    return GpuInfo(
        index=index,
        uuid=f"GPU-{index:04d}",
        name=name,
        total_bytes=TOTAL,
        used_bytes=TOTAL - free,
        free_bytes=free,
        processes=tuple(GpuProcess(pid, None if g is None else int(g * GIB)) for pid, g in pids),
    )


# ------------------------------------------------------------------------------------------- choose_gpus


def choose(gpus: list[GpuInfo], **kw: Any) -> list[int]:
    args: dict[str, Any] = {"count": 1, "held": {}, "pin": None, "memory_fraction": None, "alias": "tiny"}
    args.update(kw)
    return choose_gpus(gpus, **args)


def test_picks_freest_unheld_gpu() -> None:
    gpus = [gpu(0, 79), gpu(1, 75), gpu(2, 78)]
    assert choose(gpus) == [0]
    assert choose(gpus, held={0: "qwen-32b"}) == [2]


def test_default_fraction_is_vllm_default() -> None:
    # 0.9 * 80 GiB = 72 GiB needed by default; 71 GiB free does not do, 0.85 * 80 = 68 GiB does.
    gpus = [gpu(0, 71)]
    with pytest.raises(GpuUnavailableError, match=r"gpu_memory_utilization 0\.9 of 80\.0 GiB"):
        choose(gpus)
    assert choose(gpus, memory_fraction=0.85) == [0]


def test_tie_break_is_lowest_index_and_deterministic() -> None:
    gpus = [gpu(3, 79), gpu(1, 79), gpu(2, 79)]
    assert choose(gpus) == [1]
    assert choose(list(reversed(gpus))) == [1]
    assert choose(gpus, count=2) == [1, 2]


def test_tensor_parallel_two_gpus() -> None:
    gpus = [gpu(0, 79), gpu(1, 20, (4242, 60)), gpu(2, 78), gpu(3, 79.5)]
    assert choose(gpus, count=2) == [0, 3]
    assert choose(gpus, count=2, held={3: "qwen-32b"}) == [0, 2]


def test_tensor_parallel_not_enough_fitting_gpus() -> None:
    gpus = [gpu(0, 79), gpu(1, 12.3, (4242, 67.7))]
    with pytest.raises(GpuUnavailableError) as err:
        choose(gpus, count=2, memory_fraction=0.85)
    msg = str(err.value)
    assert msg.startswith("tiny needs 2 GPUs with >= 68.0 GiB free (gpu_memory_utilization 0.85 of 80.0 GiB)")
    assert "GPU 0 (H100) has 79.0 GiB free (no processes listed)" in msg
    assert "GPU 1 (H100) has 12.3 GiB free (pids 4242 (67.7 GiB))" in msg


def test_count_more_than_gpus_is_clear() -> None:
    with pytest.raises(GpuUnavailableError, match=r"tiny needs 2 GPUs .*this machine has 1 GPU\(s\): GPU 0"):
        choose([gpu(0, 79)], count=2)
    with pytest.raises(GpuUnavailableError, match=r"this machine has 0 GPU\(s\): none"):
        choose([], count=1)


def test_refuses_when_all_held_or_too_small_naming_holders() -> None:
    gpus = [gpu(0, 2, (1111, 77)), gpu(1, 12.3, (4242, 12), (4243, None))]
    with pytest.raises(GpuUnavailableError) as err:
        choose(gpus, held={0: "qwen-32b"}, memory_fraction=0.75)
    assert str(err.value) == (
        "tiny needs 1 GPU with >= 60.0 GiB free (gpu_memory_utilization 0.75 of 80.0 GiB); "
        "GPU 0 (H100) is held by qwen-32b; "
        "GPU 1 (H100) has 12.3 GiB free (pids 4242 (12.0 GiB), 4243)"
    )


def test_pin_is_respected_even_when_not_freest() -> None:
    gpus = [gpu(0, 79), gpu(1, 75)]
    assert choose(gpus, pin=1) == [1]
    assert choose([*gpus, gpu(2, 78)], pin=1, count=2) == [0, 1]


def test_pin_held_too_small_or_missing_is_refused() -> None:
    gpus = [gpu(0, 79), gpu(1, 12.3, (4242, 67))]
    with pytest.raises(GpuUnavailableError, match=r"to GPU 0, but GPU 0 \(H100\) is held by qwen-32b$"):
        choose(gpus, pin=0, held={0: "qwen-32b"})
    with pytest.raises(GpuUnavailableError, match=r"pinned to GPU 1, but GPU 1 \(H100\) has 12\.3 GiB free"):
        choose(gpus, pin=1)
    with pytest.raises(GpuUnavailableError, match=r"pinned to GPU 7, which does not exist \(GPUs: 0, 1\)"):
        choose(gpus, pin=7)


def test_mixed_sizes_use_per_gpu_totals() -> None:
    small = replace(gpu(0, 20), total_bytes=24 * GIB, used_bytes=4 * GIB)
    assert choose([small, gpu(1, 70)], memory_fraction=0.8) == [1]  # 70 GiB >= 64 GiB
    assert choose([small], memory_fraction=0.8) == [0]  # 20 GiB >= 0.8 * 24 GiB
    with pytest.raises(GpuUnavailableError, match=r">= 0\.9 of its memory free"):
        choose([small, gpu(1, 10)])


@pytest.mark.parametrize("kw", [{"count": 0}, {"memory_fraction": 0.0}, {"memory_fraction": 1.5}])
def test_bad_arguments(kw: dict[str, Any]) -> None:
    with pytest.raises(ValueError):
        choose([gpu(0, 79)], **kw)


# ------------------------------------------------------------------------------------ inventories, describe


def test_static_inventory_set_replaces_readings() -> None:
    inv = StaticInventory([gpu(0, 79)])
    first = inv.snapshot()
    inv.set([gpu(0, 10), gpu(1, 79)])
    assert [g.free_bytes for g in first] == [79 * GIB]
    assert [g.index for g in inv.snapshot()] == [0, 1]
    assert isinstance(inv, GpuInventory)
    assert NoGpuInventory().snapshot() == []


def test_used_bytes_sums_requested_gpus() -> None:
    gpus = [gpu(0, 70), gpu(1, 60), gpu(2, 50)]
    assert used_bytes(gpus, [0, 2]) == 10 * GIB + 30 * GIB
    assert used_bytes(gpus, [9]) == 0


def test_describe_is_json_able() -> None:
    table = describe([gpu(1, 70, (5, None)), gpu(0, 79, (4242, 1))])
    assert [row["index"] for row in table] == [0, 1]
    assert table[0]["processes"] == [{"pid": 4242, "used_bytes": GIB}]
    assert table[1] == {
        "index": 1,
        "uuid": "GPU-0001",
        "name": "NVIDIA H100",
        "total_bytes": TOTAL,
        "used_bytes": 10 * GIB,
        "free_bytes": 70 * GIB,
        "processes": [{"pid": 5, "used_bytes": None}],
    }
    json.dumps(table)


def test_detect_inventory_on_this_machine_does_not_raise() -> None:
    # The dev machine has no libnvidia-ml; on a GPU machine this is an NvmlInventory with readings.
    inv = detect_inventory()
    if isinstance(inv, NoGpuInventory):
        assert inv.snapshot() == []
    else:
        assert isinstance(inv, NvmlInventory)
        assert inv.snapshot()


# ---------------------------------------------------------------------------------------------- fake NVML


class FakeNvml:
    """Builds a stand-in `pynvml` module with the parts NvmlInventory uses."""

    def __init__(self, devices: list[dict[str, Any]]) -> None:
        self.devices = devices
        self.init_calls = 0
        self.init_error: int | None = None
        self.module = types.ModuleType("pynvml")
        m = self.module

        class NVMLError(Exception):
            def __init__(self, value: int) -> None:
                super().__init__(value)
                self.value = value

        m.NVMLError = NVMLError
        m.NVML_ERROR_NOT_SUPPORTED = 3
        m.NVML_ERROR_LIBRARY_NOT_FOUND = 12
        m.NVML_ERROR_FUNCTION_NOT_FOUND = 13
        m.NVML_ERROR_GPU_IS_LOST = 15
        m.NVMLError_NotSupported = type("NVMLError_NotSupported", (NVMLError,), {})
        m.NVMLError_FunctionNotFound = type("NVMLError_FunctionNotFound", (NVMLError,), {})
        m.nvmlInit = self._init
        m.nvmlShutdown = lambda: None
        m.nvmlDeviceGetCount = lambda: len(self.devices)
        m.nvmlDeviceGetHandleByIndex = self._handle
        m.nvmlDeviceGetMemoryInfo = lambda h: self._field(h, "memory")
        m.nvmlDeviceGetUUID = lambda h: self._field(h, "uuid")
        m.nvmlDeviceGetName = lambda h: self._field(h, "name")
        for kind in ("Compute", "Graphics"):
            for suffix in ("_v3", "_v2", ""):
                name = f"nvmlDeviceGet{kind}RunningProcesses{suffix}"
                setattr(m, name, self._lister(kind.lower() + suffix))

    def _init(self) -> None:
        self.init_calls += 1
        if self.init_error is not None:
            raise self.module.NVMLError(self.init_error)

    def _handle(self, index: int) -> int:
        if index >= len(self.devices):
            raise self.module.NVMLError(2)
        return index

    def _field(self, handle: int, key: str) -> Any:
        value = self.devices[handle][key]
        if isinstance(value, Exception):
            raise value
        return value

    def _lister(self, key: str) -> Callable[[int], list[Any]]:
        def lister(handle: int) -> list[Any]:
            # Each device says what each lister does: a list of (pid, bytes), or an exception to raise.
            behaviour = self.devices[handle].get(key, [])
            if isinstance(behaviour, Exception):
                raise behaviour
            return [types.SimpleNamespace(pid=pid, usedGpuMemory=used) for pid, used in behaviour]

        return lister


def memory(total_gib: float, used_gib: float) -> types.SimpleNamespace:
    total, used = int(total_gib * GIB), int(used_gib * GIB)
    return types.SimpleNamespace(total=total, used=used, free=total - used)


@pytest.fixture
def fake_nvml(monkeypatch: pytest.MonkeyPatch) -> FakeNvml:
    fake = FakeNvml([])
    monkeypatch.setitem(sys.modules, "pynvml", fake.module)
    return fake


def test_nvml_reads_memory_and_processes(fake_nvml: FakeNvml) -> None:
    m = fake_nvml.module
    fake_nvml.devices = [
        {
            "uuid": "GPU-aaaa",
            "name": b"NVIDIA H100 80GB HBM3",  # older pynvml hands back bytes
            "memory": memory(80, 62),
            "compute_v3": [(4242, 60 * GIB), (4243, None)],
            "graphics_v3": [(4243, 1 * GIB), (99, 1 * GIB)],  # a pid may be in both lists: listed once
        },
        {
            "uuid": "GPU-bbbb",
            "name": "NVIDIA H100 80GB HBM3",
            "memory": memory(80, 0.5),
            "compute_v3": m.NVMLError_FunctionNotFound(13),  # old driver: falls back to _v2
            "compute_v2": [(7, None)],
            "graphics_v3": m.NVMLError_NotSupported(3),  # no graphics listing on this GPU
        },
    ]
    inv = NvmlInventory()
    first = inv.snapshot()
    second = inv.snapshot()
    assert fake_nvml.init_calls == 1
    assert first == second
    g0, g1 = first
    assert (g0.index, g0.uuid, g0.name) == (0, "GPU-aaaa", "NVIDIA H100 80GB HBM3")
    assert (g0.total_bytes, g0.used_bytes, g0.free_bytes) == (80 * GIB, 62 * GIB, 18 * GIB)
    assert g0.processes == (GpuProcess(99, GIB), GpuProcess(4242, 60 * GIB), GpuProcess(4243, GIB))
    assert g1.processes == (GpuProcess(7, None),)
    assert choose_gpus(first, count=1, held={}, pin=None, memory_fraction=None, alias="tiny") == [1]


def test_nvml_error_on_one_gpu_leaves_it_out(fake_nvml: FakeNvml) -> None:
    m = fake_nvml.module
    fake_nvml.devices = [
        {"uuid": "GPU-lost", "name": "NVIDIA H100", "memory": m.NVMLError(m.NVML_ERROR_GPU_IS_LOST)},
        {"uuid": "GPU-proc", "name": "NVIDIA H100", "memory": memory(80, 1), "compute_v3": m.NVMLError(999)},
        {"uuid": "GPU-good", "name": "NVIDIA H100", "memory": memory(80, 1)},
    ]
    assert [g.uuid for g in NvmlInventory().snapshot()] == ["GPU-good"]


def test_detect_inventory_with_fake_nvml(fake_nvml: FakeNvml) -> None:
    fake_nvml.devices = [{"uuid": "GPU-a", "name": "NVIDIA H100", "memory": memory(80, 1)}]
    inv = detect_inventory()
    assert isinstance(inv, NvmlInventory)
    assert [g.uuid for g in inv.snapshot()] == ["GPU-a"]


def test_detect_inventory_without_devices_or_driver(fake_nvml: FakeNvml) -> None:
    assert isinstance(detect_inventory(), NoGpuInventory)  # NVML up, zero devices
    fake_nvml.init_error = fake_nvml.module.NVML_ERROR_LIBRARY_NOT_FOUND
    assert isinstance(detect_inventory(), NoGpuInventory)


def test_detect_inventory_survives_unexpected_errors(fake_nvml: FakeNvml) -> None:
    def boom() -> None:
        raise OSError("driver exploded")

    fake_nvml.module.nvmlInit = boom
    assert isinstance(detect_inventory(), NoGpuInventory)


# -------------------------------------------------------------------------------------- wait_vram_released


class SignallingInventory(StaticInventory):
    """Sets `read` after `after_reads` readings, so a test can change the readings at a known point."""

    def __init__(self, gpus: Iterable[GpuInfo], after_reads: int = 1) -> None:
        super().__init__(gpus)
        self.reads = 0
        self.after_reads = after_reads
        self.read = threading.Event()

    def snapshot(self) -> list[GpuInfo]:
        readings = super().snapshot()
        self.reads += 1
        if self.reads >= self.after_reads:
            self.read.set()
        return readings


def change_after_read(inv: SignallingInventory, *steps: list[GpuInfo]) -> threading.Thread:
    """In a thread: each time the waiter has read the current readings, move on to the next step."""

    def run() -> None:
        for step in steps:
            assert inv.read.wait(5), "waiter never read the GPUs"
            # Set, then clear: the waiter is not done before the last step, so it reads each step again.
            inv.set(step)
            inv.read.clear()

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread


RUNNING = [gpu(0, 10, (4242, 69), (4243, 0.5)), gpu(1, 79.5)]
BASELINE = 0.5 * GIB


def wait(inv: GpuInventory, **kw: Any) -> Any:
    args: dict[str, Any] = {
        "indices": [0],
        "pids": {4242, 4243},
        "used_before_start": BASELINE,
        "used_while_running": used_bytes(RUNNING, [0]),
        "tolerance_bytes": GIB,
        "timeout_s": 5.0,
        "poll_s": 0.005,
    }
    args.update(kw)
    return asyncio.run(wait_vram_released(inv, **args))


def test_proven_when_pids_vanish_and_memory_drops() -> None:
    inv = SignallingInventory(RUNNING)
    thread = change_after_read(
        inv,
        [gpu(0, 10), gpu(1, 79.5)],  # pids gone, memory not yet back: not proven
        [gpu(0, 79.5), gpu(1, 79.5)],  # memory back to baseline: proven
    )
    result = wait(inv)
    thread.join(5)
    assert result.proven
    assert result.lingering_pids == ()
    assert result.freed_bytes == 69.5 * GIB
    assert inv.reads >= 3
    assert result.detail.startswith("VRAM released on GPU 0 in ")
    assert "69.5 GiB freed, 0.5 GiB used (baseline 0.5 GiB + 1.0 GiB tolerance)" in result.detail


def test_memory_alone_is_not_proof_while_pid_is_listed() -> None:
    inv = SignallingInventory([gpu(0, 79.5, (4243, None))])
    thread = change_after_read(inv, [gpu(0, 79.5)])
    result = wait(inv)
    thread.join(5)
    assert result.proven
    assert inv.reads >= 2


def test_not_proven_on_timeout_lists_lingering_pids_and_memory() -> None:
    inv = StaticInventory([gpu(0, 10, (4243, 0.5)), gpu(1, 79.5)])
    result = wait(inv, timeout_s=0.05)
    assert not result.proven
    assert result.lingering_pids == (4243,)
    assert result.freed_bytes == 0
    assert result.seconds >= 0.05
    assert "not proven after" in result.detail
    assert "pids 4243 still listed" in result.detail
    assert "70.0 GiB used (baseline 0.5 GiB + 1.0 GiB tolerance) still held" in result.detail


def test_not_proven_when_memory_stays_above_baseline() -> None:
    result = wait(StaticInventory([gpu(0, 70)]), timeout_s=0.02)
    assert not result.proven
    assert result.lingering_pids == ()
    assert result.freed_bytes == 60 * GIB
    assert "10.0 GiB used" in result.detail


def test_tolerance_covers_small_leftovers() -> None:
    result = wait(StaticInventory([gpu(0, 79)]), timeout_s=0.02)  # 1.0 GiB used <= 0.5 + 1.0
    assert result.proven


def test_without_baseline_only_pids_count() -> None:
    result = wait(StaticInventory([gpu(0, 10)]), used_before_start=None, used_while_running=None)
    assert result.proven
    assert result.freed_bytes is None
    assert "no baseline" in result.detail


def test_unreadable_gpu_is_not_proven() -> None:
    result = wait(StaticInventory([gpu(1, 79.5)]), timeout_s=0.02)
    assert not result.proven
    assert result.freed_bytes is None
    assert "GPU 0 not readable" in result.detail


def test_failing_reading_is_retried_not_raised() -> None:
    class Flaky(StaticInventory):
        def __init__(self, failures: int) -> None:
            super().__init__([gpu(0, 79.5)])
            self.failures = failures

        def snapshot(self) -> list[GpuInfo]:
            if self.failures > 0:
                self.failures -= 1
                raise RuntimeError("NVML hiccup")
            return super().snapshot()

    assert wait(Flaky(failures=1)).proven
    result = wait(Flaky(failures=10**9), timeout_s=0.02)
    assert not result.proven
    assert "no GPU reading (RuntimeError: NVML hiccup)" in result.detail


def test_no_gpus_assigned_is_trivially_released() -> None:
    result = wait(NoGpuInventory(), indices=[])
    assert result.proven
    assert result.freed_bytes is None


def test_tensor_parallel_release_checks_every_gpu() -> None:
    running = [gpu(0, 10, (4242, 69)), gpu(1, 10, (4243, 69))]
    inv = SignallingInventory(running)
    thread = change_after_read(inv, [gpu(0, 79.5), gpu(1, 10, (4243, 69))], [gpu(0, 79.5), gpu(1, 79.5)])
    result = wait(
        inv,
        indices=[0, 1],
        used_before_start=2 * BASELINE,
        used_while_running=used_bytes(running, [0, 1]),
    )
    thread.join(5)
    assert result.proven
    assert result.freed_bytes == 139 * GIB
    assert result.detail.startswith("VRAM released on GPUs 0, 1 in ")
