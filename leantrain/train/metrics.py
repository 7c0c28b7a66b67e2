"""Measuring: wall-clock timers, memory, utilisation against a measured peak, and other processes' CPU use."""
from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import torch
from torch import nn
from torch.multiprocessing.reductions import StorageWeakRef

from leantrain._torch_private import TorchDispatchMode, inside_backward
from leantrain.fileio import write_json
from leantrain.machine import cpu_name, kernel_isa


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def now(device: torch.device) -> float:
    """perf_counter after the device has finished its queued work, so intervals measure real compute."""
    synchronize(device)
    return time.perf_counter()


class SavedTensorMeter:
    """Peak bytes of activations held for backward, via saved-tensor hooks, including checkpoint recomputation.

    Tensors are counted once per storage and only while alive (a saved tensor's storage is released
    when autograd frees its node), so the peak is the activation memory the step needed. Parameters
    are excluded: they are counted with the model's state. Works on any device.

    Activation checkpointing (torch.utils.checkpoint, non-reentrant) hides part of that memory from the
    hooks: the segment inputs it keeps are packed through them (so they are counted), but the tensors it
    recomputes during backward are packed by its own innermost hook and never reach ours. Left alone, the
    peak under checkpointing would miss the recomputed segment and look ~2x better than it is. So, around
    the backward pass (``backward()``), a dispatch mode also watches ops that run with grad enabled *inside*
    it (that is recomputation) and counts their outputs while their storages live (a C++ weak reference
    tells). Only around the backward: a ``torch.compile``d forward first called under a dispatch mode is
    skipped by dynamo, and its code stays eager for the rest of the process.

        with meter.measure():
            loss = forward(x)
            with meter.backward():
                loss.backward()
    """

    def __init__(self, exclude: list[torch.Tensor]):
        self._excluded = {storage_key(_local(t).untyped_storage()) for t in exclude}
        # Storages by identity (a storage keeps it when resized; an address is reused by the next allocation as soon
        # as FSDP frees a gathered weight, which made the peak depend on allocation timing): [references, storage].
        self._live: dict[int, list] = {}
        self._recomputed: dict[int, tuple[StorageWeakRef, int]] = {}  # identity -> (weak ref, bytes)
        self._recomputed_bytes = 0
        self.peak_bytes = 0
        self.excluded_saved: set[int] = set()  # the excluded storages that were saved for backward

    def _pack(self, tensor: torch.Tensor) -> object:
        storage = tensor.untyped_storage()
        key = storage_key(storage)
        if tensor.device.type == "meta":
            return tensor
        if key in self._excluded:
            self.excluded_saved.add(key)
            return tensor
        entry = self._live.setdefault(key, [0, storage])
        entry[0] += 1
        if entry[0] == 1:
            self._update_peak()
        # A detached alias: an op's output saved with its grad_fn would hold its own graph (output -> grad_fn ->
        # saved -> output), a cycle through C++ that only a backward breaks; a graph never back-propagated (a
        # pipeline's first stage infers its shapes so) then lived, and was counted, for the rest of the run.
        return _Held(tensor.detach(), self, key)

    def _release(self, key: int) -> None:
        entry = self._live[key]
        entry[0] -= 1
        if entry[0] == 0:
            del self._live[key]

    def held_bytes(self) -> int:
        """Bytes of the saved storages alive now, at their present size: FSDP frees a gathered weight (resizes its
        storage to 0) after a block's forward while autograd still holds it, and gathers it again for backward."""
        return sum(storage.nbytes() for _, storage in self._live.values())

    def _update_peak(self) -> None:
        self.peak_bytes = max(self.peak_bytes, self.held_bytes() + self._recomputed_bytes)

    def _watch_recomputed(self, outputs: object) -> None:
        """Called after every op while measuring: track new recomputed outputs, drop freed ones."""
        for key, (ref, nbytes) in list(self._recomputed.items()):
            if ref.expired():
                del self._recomputed[key]
                self._recomputed_bytes -= nbytes
        recomputing = torch.is_grad_enabled() and inside_backward()
        if recomputing:
            for t in _tensors(outputs):
                storage = t.untyped_storage()
                key = storage_key(storage)
                if t.device.type == "meta" or key in self._excluded or key in self._live or key in self._recomputed:
                    continue
                self._recomputed[key] = (StorageWeakRef(storage), storage.nbytes())
                self._recomputed_bytes += storage.nbytes()
        self._update_peak()

    @contextmanager
    def measure(self) -> Iterator[SavedTensorMeter]:
        """Counts what the forward and backward inside save for backward; wrap the backward in ``backward()``."""
        unpack = lambda held: held.tensor if isinstance(held, _Held) else held  # noqa: E731
        with torch.autograd.graph.saved_tensors_hooks(self._pack, unpack):
            yield self

    @contextmanager
    def backward(self) -> Iterator[SavedTensorMeter]:
        """Around a backward pass inside ``measure()``: counts what checkpointing recomputes."""
        with _RecomputeWatch(self):
            yield self


class _RecomputeWatch(TorchDispatchMode):
    # A compiled backward runs higher-order ops (run_with_rng_state, where a checkpointed region draws random numbers):
    # without this, torch refuses them under any dispatch mode; they run as any op does here.
    supports_higher_order_operators = True

    def __init__(self, meter: SavedTensorMeter):
        super().__init__()
        self._meter = meter

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # noqa: ANN001
        out = func(*args, **(kwargs or {}))
        self._meter._watch_recomputed(out)
        return out


def _tensors(value: object) -> list[torch.Tensor]:
    if isinstance(value, torch.Tensor):
        return [value]
    if isinstance(value, (tuple, list)):
        return [t for v in value for t in _tensors(v)]
    return []


def storage_key(storage: torch.UntypedStorage) -> int:
    """A storage's identity (its C++ object's address), the same before and after a resize."""
    return storage._cdata


class _Held:
    __slots__ = ("tensor", "_meter", "_key")

    def __init__(self, tensor: torch.Tensor, meter: SavedTensorMeter, key: int):
        self.tensor, self._meter, self._key = tensor, meter, key

    def __del__(self) -> None:
        self._meter._release(self._key)


def state_bytes(model: nn.Module, optimizer: torch.optim.Optimizer) -> int:
    """Bytes this process holds of parameters, their gradients (one per parameter) and the optimizer's state
    tensors (a sharded tensor counts its local shard)."""
    params = sum(_local_bytes(p) for p in model.parameters())
    grads = sum(_local_bytes(p) for p in model.parameters() if p.requires_grad)
    opt = sum(_local_bytes(v) for s in optimizer.state.values() for v in s.values() if torch.is_tensor(v))
    return params + grads + opt


def _local_bytes(tensor: torch.Tensor) -> int:
    local = _local(tensor)
    return local.numel() * local.element_size()


def _local(tensor: torch.Tensor) -> torch.Tensor:
    """This process's part of a tensor: a sharded DTensor's own shard, else the tensor."""
    return tensor.to_local() if hasattr(tensor, "to_local") else tensor


NOISY_FOREIGN_CORES = 0.15  # other processes' CPU above this makes a timing suspect


def training_utilisation(flops_per_unit: float, units_per_s: float, peak_flops: float) -> float:
    """Model FLOP/s over peak: training costs ~3x the forward FLOPs (forward, then backward for the
    inputs and for the weights)."""
    return 3.0 * flops_per_unit * units_per_s / peak_flops


def cache_dir() -> Path:
    return Path(os.environ.get("LEANTRAIN_CACHE_DIR", Path.home() / ".cache" / "leantrain"))


def peak_matmul_flops(device: torch.device, dtype: torch.dtype) -> float:
    """The machine's measured dense matmul peak (FLOP/s) for a dtype, cached on disk.

    Utilisation divides by this, not by a vendor's datasheet figure, so it cannot exceed 100% on
    hardware newer than a hard-coded table. A low-precision type slower than fp32 (fp16 on most CPUs)
    is held to fp32's peak: the machine could always have run the model at that rate, at no cost in
    accuracy (an AVX2 CPU emulates bf16 ~6x slower: dividing by that slow peak would flatter a slow run).
    A faster low-precision type is divided by its own peak, as MFU conventionally is. A measurement
    disturbed by other processes is used (and kept for this process) but not cached on disk; the cache
    keeps the best one seen.
    """
    peak = _cached_peak(device, dtype)
    return max(peak, _cached_peak(device, torch.float32)) if dtype != torch.float32 else peak


PEAK_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def matmul_peaks(device: torch.device) -> dict[str, float]:
    """Each dtype's own measured matmul peak (FLOP/s), unadjusted: what the machine can do in each."""
    return {name: _cached_peak(device, dtype) for name, dtype in PEAK_DTYPES.items()}


# Disturbed measurements (not on disk) of this process: (best FLOP/s seen, when last measured). Re-measured
# at most once a minute, keeping the best, so a run of many short runs on a busy machine neither pays ~2 s
# per dtype per run nor keeps one unlucky figure for good.
_MEASURED_HERE: dict[tuple[Path, str], tuple[float, float]] = {}
REMEASURE_S = 60.0


def _cached_peak(device: torch.device, dtype: torch.dtype) -> float:
    threads = torch.get_num_threads() if device.type == "cpu" else 0
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"{cpu_name()}|{kernel_isa()}"
    key = f"{device.type}|{name}|{dtype}|threads={threads}|torch={torch.__version__}"
    path = cache_dir() / "peak_flops.json"
    cached = _read_json(path)
    if key in cached:
        return cached[key]
    best_here, when = _MEASURED_HERE.get((path, key), (0.0, -math.inf))
    if time.monotonic() - when < REMEASURE_S:
        return best_here
    measured, quiet = 0.0, False
    for _ in range(3):  # a busy neighbour lowers the figure: try again, keep the best
        foreign = ForeignCpuMeter()
        measured = max(measured, _measure_matmul(device, dtype))
        quiet = (foreign.cores() or 0.0) <= NOISY_FOREIGN_CORES
        if quiet:
            break
    measured = max(measured, best_here)
    _MEASURED_HERE[(path, key)] = (measured, time.monotonic())
    if quiet:
        cached = _read_json(path)  # another process may have written meanwhile
        cached[key] = max(measured, cached.get(key, 0.0))
        path.parent.mkdir(parents=True, exist_ok=True)
        write_json(path, cached)
    return measured


def _measure_matmul(device: torch.device, dtype: torch.dtype, budget_s: float = 0.6) -> float:
    """Best of repeated n x n matmuls within a wall-time budget (slow types get fewer repeats, not more time).
    A type so slow that one product would overrun the budget gets a smaller n: fp16 on a CPU without fp16
    hardware (an AMD EPYC: 0.8 GFLOP/s, 2.6 s for one 1024 x 1024 product) would otherwise hold the main rank
    for seconds while the other ranks wait for its record."""
    n = 4096 if device.type == "cuda" else 1024
    if device.type == "cpu":
        n = _affordable_size(dtype, n, budget_s / 4)
    a = torch.randn(n, n, device=device).to(dtype)
    b = torch.randn(n, n, device=device).to(dtype)
    a @ b  # warm up: kernel selection, allocation
    best = float("inf")
    deadline = time.perf_counter() + budget_s
    while True:
        start = now(device)
        a @ b
        best = min(best, now(device) - start)
        if time.perf_counter() >= deadline:
            return 2.0 * n**3 / best


def _affordable_size(dtype: torch.dtype, largest: int, seconds: float, smallest: int = 128) -> int:
    """The largest power-of-two n <= ``largest`` whose n x n product takes about ``seconds`` or less, from one timed
    product at ``smallest`` (a few milliseconds even where the type is emulated)."""
    a = torch.randn(smallest, smallest).to(dtype)
    a @ a  # warm up
    start = time.perf_counter()
    a @ a
    rate = 2.0 * smallest**3 / max(time.perf_counter() - start, 1e-9)
    n = largest
    while n > smallest and 2.0 * n**3 / rate > seconds:
        n //= 2
    return n


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


class ForeignCpuMeter:
    """CPU time used by *other* processes during an interval, in cores (Linux /proc; None elsewhere).

    On a small shared machine one busy neighbour can halve a measurement; recording it lets a
    benchmark mark or repeat a polluted run instead of reporting it.
    """

    def __init__(self) -> None:
        self._start = self._read()

    @staticmethod
    def _read() -> tuple[float, float, float] | None:
        try:
            fields = Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]
            busy_all = sum(int(v) for i, v in enumerate(fields[:8]) if i not in (3, 4))  # minus idle, iowait
            self_fields = Path("/proc/self/stat").read_text().rsplit(")", 1)[1].split()
            busy_self = sum(int(v) for v in self_fields[11:15])  # utime, stime, cutime, cstime
        except (OSError, ValueError, IndexError):
            return None
        return busy_all, busy_self, time.monotonic()

    def cores(self) -> float | None:
        """Mean cores used by other processes since construction (or the last call)."""
        reading = self.split()
        return None if reading is None else max(0.0, reading[0] - reading[1])

    def split(self) -> tuple[float, float] | None:
        """(cores the whole machine used, cores this process used) since construction (or the last call)."""
        end = self._read()
        start, self._start = self._start, end
        if start is None or end is None or end[2] <= start[2]:
            return None
        per_s = os.sysconf("SC_CLK_TCK") * (end[2] - start[2])
        return (end[0] - start[0]) / per_s, (end[1] - start[1]) / per_s
