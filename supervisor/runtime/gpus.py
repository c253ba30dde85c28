"""GPUs as NVML sees them: what is there, and which one an instance may take (the proof that VRAM
came back is in `vram`).

`pynvml` (the `nvidia-ml-py` package) is imported inside functions only, so importing this module is cheap
and works on machines without an NVIDIA driver.

GPU indices here are NVML indices, which follow PCI bus order. CUDA's default order is "fastest first", so
whoever starts `vllm serve` should set `CUDA_DEVICE_ORDER=PCI_BUS_ID` (or pass GPU UUIDs in
`CUDA_VISIBLE_DEVICES`) for an index chosen here to mean the same card there.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from types import ModuleType
from typing import Any, Protocol, runtime_checkable

log = logging.getLogger(__name__)

GIB = 1024**3

VLLM_DEFAULT_GPU_MEMORY_UTILIZATION = 0.9
"""What `vllm serve` reserves per GPU when `--gpu-memory-utilization` is not given."""


@dataclass(frozen=True)
class GpuProcess:
    """A process NVML lists on a GPU; `used_bytes` is None where the driver does not say (e.g. WDDM, MIG)."""

    pid: int
    used_bytes: int | None


@dataclass(frozen=True)
class GpuInfo:
    """One reading of one GPU."""

    index: int
    uuid: str
    name: str
    total_bytes: int
    used_bytes: int
    free_bytes: int
    processes: tuple[GpuProcess, ...]


@runtime_checkable
class GpuInventory(Protocol):
    """Anything that can read the machine's GPUs."""

    def snapshot(self) -> list[GpuInfo]:
        """A fresh reading of every GPU, on every call (never cached)."""
        ...


class GpuReadError(RuntimeError):
    """NVML could not be used at all (no library, no driver, init failed, device count failed)."""


class GpuUnavailableError(Exception):
    """No GPU (or not enough GPUs) fit what an instance asked for; the message says what holds what."""


# --------------------------------------------------------------------------------------------- inventories


class NoGpuInventory:
    """The inventory of a machine without usable GPUs."""

    def snapshot(self) -> list[GpuInfo]:
        return []


class StaticInventory:
    """Fixed readings, for tests and dry runs; `set` replaces them. Safe to use from several threads."""

    def __init__(self, gpus: Iterable[GpuInfo] = ()) -> None:
        self._lock = threading.Lock()
        self._gpus: list[GpuInfo] = list(gpus)

    def set(self, gpus: Iterable[GpuInfo]) -> None:
        """Replace all readings; later snapshots return these."""
        new = list(gpus)
        with self._lock:
            self._gpus = new

    def snapshot(self) -> list[GpuInfo]:
        with self._lock:
            return list(self._gpus)


class NvmlInventory:
    """The real GPUs, read through NVML.

    NVML is initialised on first use and then kept initialised. A GPU that NVML cannot read is left out of
    the snapshot (and logged) rather than failing the whole reading: callers then neither place work on it
    nor count it as proven free.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._initialised = False

    def _nvml(self) -> ModuleType:
        try:
            import pynvml
        except ImportError as exc:  # pragma: no cover - nvidia-ml-py is a dependency
            raise GpuReadError(f"pynvml (nvidia-ml-py) is not installed: {exc}") from exc
        with self._lock:
            if not self._initialised:
                try:
                    pynvml.nvmlInit()
                except pynvml.NVMLError as exc:
                    raise GpuReadError(f"NVML did not initialise: {exc}") from exc
                self._initialised = True
        module: ModuleType = pynvml
        return module

    def device_count(self) -> int:
        """How many GPUs NVML reports."""
        nvml = self._nvml()
        try:
            return int(nvml.nvmlDeviceGetCount())
        except nvml.NVMLError as exc:
            raise GpuReadError(f"NVML could not count GPUs: {exc}") from exc

    def snapshot(self) -> list[GpuInfo]:
        nvml = self._nvml()
        gpus: list[GpuInfo] = []
        for index in range(self.device_count()):
            try:
                gpus.append(_read_gpu(nvml, index))
            except nvml.NVMLError as exc:
                log.warning("GPU %d could not be read through NVML and is left out: %s", index, exc)
        return gpus

    def shutdown(self) -> None:
        """Release NVML; a later snapshot initialises it again."""
        with self._lock:
            if not self._initialised:
                return
            import pynvml

            self._initialised = False
            try:
                pynvml.nvmlShutdown()
            except pynvml.NVMLError as exc:
                log.debug("nvmlShutdown failed: %s", exc)


def _text(value: str | bytes) -> str:
    """Older pynvml releases return bytes for names and UUIDs."""
    return value.decode(errors="replace") if isinstance(value, bytes) else str(value)


def _read_gpu(nvml: ModuleType, index: int) -> GpuInfo:
    handle = nvml.nvmlDeviceGetHandleByIndex(index)
    memory = nvml.nvmlDeviceGetMemoryInfo(handle)
    return GpuInfo(
        index=index,
        uuid=_text(nvml.nvmlDeviceGetUUID(handle)),
        name=_text(nvml.nvmlDeviceGetName(handle)),
        total_bytes=int(memory.total),
        used_bytes=int(memory.used),
        free_bytes=int(memory.free),
        processes=_read_processes(nvml, handle),
    )


_PROCESS_LISTERS: tuple[tuple[str, ...], ...] = (
    (
        "nvmlDeviceGetComputeRunningProcesses_v3",
        "nvmlDeviceGetComputeRunningProcesses_v2",
        "nvmlDeviceGetComputeRunningProcesses",
    ),
    (
        "nvmlDeviceGetGraphicsRunningProcesses_v3",
        "nvmlDeviceGetGraphicsRunningProcesses_v2",
        "nvmlDeviceGetGraphicsRunningProcesses",
    ),
)


def _read_processes(nvml: ModuleType, handle: Any) -> tuple[GpuProcess, ...]:
    """Compute and graphics processes on one GPU, one entry per pid, ordered by pid."""
    found: dict[int, GpuProcess] = {}
    for names in _PROCESS_LISTERS:
        for entry in _list_processes(nvml, handle, names):
            pid = int(entry.pid)
            used = getattr(entry, "usedGpuMemory", None)
            known = found.get(pid)
            if known is None or known.used_bytes is None:
                found[pid] = GpuProcess(pid=pid, used_bytes=None if used is None else int(used))
    return tuple(found[pid] for pid in sorted(found))


def _list_processes(nvml: ModuleType, handle: Any, names: Sequence[str]) -> list[Any]:
    """Call the newest process lister that both pynvml and the driver have.

    A driver too old for a versioned symbol answers FunctionNotFound, so the next older one is tried. A GPU
    that does not support a kind of listing (NotSupported) has none of that kind. Other NVML errors propagate
    so that the GPU is left out of the snapshot instead of looking empty.
    """
    not_found: Any = getattr(nvml, "NVMLError_FunctionNotFound", ())
    not_supported: Any = getattr(nvml, "NVMLError_NotSupported", ())
    listers: list[Callable[[Any], list[Any]]] = [getattr(nvml, n) for n in names if hasattr(nvml, n)]
    last: Exception | None = None
    for lister in listers:
        try:
            return list(lister(handle))
        except not_found as exc:
            last = exc
        except not_supported:
            return []
    if last is not None:
        raise last
    raise nvml.NVMLError(nvml.NVML_ERROR_FUNCTION_NOT_FOUND)


def detect_inventory() -> GpuInventory:
    """NVML when it initialises and reports at least one GPU, else an empty inventory. Never raises."""
    inventory = NvmlInventory()
    try:
        count = inventory.device_count()
    except Exception as exc:  # any failure means "no GPUs here", which callers handle
        log.info("No NVIDIA GPUs through NVML (%s); running without GPUs", exc)
        return NoGpuInventory()
    if count < 1:
        log.info("NVML initialised but reports no GPUs; running without GPUs")
        inventory.shutdown()
        return NoGpuInventory()
    return inventory


# ----------------------------------------------------------------------------------------------- choosing


def gib_text(n: int | float) -> str:
    """n bytes, for people: "7.5 GiB"."""
    return f"{n / GIB:.1f} GiB"


def _label(gpu: GpuInfo) -> str:
    short = gpu.name.removeprefix("NVIDIA ").strip()
    return f"GPU {gpu.index} ({short})" if short else f"GPU {gpu.index}"


def _pids(gpu: GpuInfo) -> str:
    if not gpu.processes:
        return "no processes listed"
    parts = [str(p.pid) if p.used_bytes is None else f"{p.pid} ({gib_text(p.used_bytes)})" for p in gpu.processes]
    return "pids " + ", ".join(parts)


def _need_bytes(gpu: GpuInfo, fraction: float) -> float:
    return fraction * gpu.total_bytes


def _state(gpu: GpuInfo, held: Mapping[int, str]) -> str:
    """One clause saying who holds a GPU or how much it has free."""
    if gpu.index in held:
        return f"{_label(gpu)} is held by {held[gpu.index]}"
    return f"{_label(gpu)} has {gib_text(gpu.free_bytes)} free ({_pids(gpu)})"


def _ask(alias: str, count: int, gpus: Sequence[GpuInfo], fraction: float) -> str:
    """'tiny needs 1 GPU with >= 60.0 GiB free (gpu_memory_utilization 0.85 of 79.6 GiB)'."""
    noun = "GPU" if count == 1 else "GPUs"
    totals = {g.total_bytes for g in gpus}
    if len(totals) == 1:
        total = totals.pop()
        return (
            f"{alias} needs {count} {noun} with >= {gib_text(fraction * total)} free "
            f"(gpu_memory_utilization {fraction:g} of {gib_text(total)})"
        )
    return f"{alias} needs {count} {noun} with >= {fraction:g} of its memory free (gpu_memory_utilization)"


def choose_gpus(
    gpus: list[GpuInfo],
    *,
    count: int,
    held: Mapping[int, str],
    pin: int | None,
    memory_fraction: float | None,
    alias: str,
    packed: Mapping[int, float] | None = None,
) -> list[int]:
    """Pick `count` GPU indices for instance `alias`, or raise GpuUnavailableError saying why not.

    `held` maps GPU index -> who keeps `alias` off it (our instances already on it); such GPUs are never
    chosen. A GPU fits when its free memory covers `memory_fraction` (vLLM's `--gpu-memory-utilization`,
    0.9 when None) of its total, because vLLM refuses to start otherwise. `pin` names a GPU that must be
    among the chosen; the rest (tensor parallel) are picked like unpinned ones. `packed` maps GPUs that our
    budgeted instances share to the budget they use: the fullest that still fits comes first (so whole GPUs
    stay free for big models), then most free memory, then lowest index. The result is sorted by index.
    """
    if count < 1:
        raise ValueError(f"count must be >= 1, got {count}")
    fraction = VLLM_DEFAULT_GPU_MEMORY_UTILIZATION if memory_fraction is None else memory_fraction
    if not 0 < fraction <= 1:
        raise ValueError(f"memory_fraction must be in (0, 1], got {memory_fraction}")
    ordered = sorted(gpus, key=lambda g: g.index)
    ask = _ask(alias, count, ordered, fraction)
    if count > len(ordered):
        have = ", ".join(_label(g) for g in ordered) if ordered else "none"
        raise GpuUnavailableError(f"{ask}; this machine has {len(ordered)} GPU(s): {have}")

    chosen: list[GpuInfo] = []
    if pin is not None:
        chosen.append(_pinned(ordered, pin=pin, held=held, fraction=fraction, ask=ask))

    taken = {g.index for g in chosen}
    fitting = [
        g
        for g in ordered
        if g.index not in held and g.index not in taken and g.free_bytes >= _need_bytes(g, fraction)
    ]
    sharing = packed or {}
    fitting.sort(key=lambda g: (-sharing.get(g.index, 0.0), -g.free_bytes, g.index))
    chosen.extend(fitting[: count - len(chosen)])
    if len(chosen) < count:
        states = "; ".join(_state(g, held) for g in ordered)
        raise GpuUnavailableError(f"{ask}; {states}")
    return sorted(g.index for g in chosen)


def _pinned(
    gpus: Sequence[GpuInfo], *, pin: int, held: Mapping[int, str], fraction: float, ask: str
) -> GpuInfo:
    """The pinned GPU, or GpuUnavailableError when it is missing, held or short of free memory."""
    by_index = {g.index: g for g in gpus}
    gpu = by_index.get(pin)
    if gpu is None:
        have = ", ".join(str(i) for i in by_index) or "none"
        raise GpuUnavailableError(f"{ask}; it is pinned to GPU {pin}, which does not exist (GPUs: {have})")
    if pin in held or gpu.free_bytes < _need_bytes(gpu, fraction):
        raise GpuUnavailableError(f"{ask}; it is pinned to GPU {pin}, but {_state(gpu, held)}")
    return gpu


# ------------------------------------------------------------------------------------------------ display


def describe(gpus: Iterable[GpuInfo]) -> list[dict[str, Any]]:
    """A JSON-able table of GPUs, ordered by index (for `bawt-vllm gpus --json`)."""
    return [
        {
            "index": g.index,
            "uuid": g.uuid,
            "name": g.name,
            "total_bytes": g.total_bytes,
            "used_bytes": g.used_bytes,
            "free_bytes": g.free_bytes,
            "processes": [{"pid": p.pid, "used_bytes": p.used_bytes} for p in g.processes],
        }
        for g in sorted(gpus, key=lambda g: g.index)
    ]
