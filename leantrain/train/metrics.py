"""Measuring: wall-clock timers, memory, utilisation against a measured peak, and other processes' CPU use."""
from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Iterator

import torch
from torch import nn
from contextlib import contextmanager


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def now(device: torch.device) -> float:
    """perf_counter after the device has finished its queued work, so intervals measure real compute."""
    synchronize(device)
    return time.perf_counter()


class SavedTensorMeter:
    """Peak bytes of activations saved for backward, via saved-tensor hooks.

    Tensors are counted once per storage and only while alive (a saved tensor's storage is released
    when autograd frees its node), so the peak is the activation memory the step needed. Parameters
    are excluded: they are counted with the model's state. Works on any device.
    """

    def __init__(self, exclude: list[torch.Tensor]):
        self._excluded = {t.untyped_storage().data_ptr() for t in exclude}
        self._live: dict[int, int] = {}  # storage pointer -> reference count
        self._bytes = 0
        self.peak_bytes = 0

    def _pack(self, tensor: torch.Tensor) -> object:
        storage = tensor.untyped_storage()
        ptr = storage.data_ptr()
        if ptr in self._excluded or tensor.device.type == "meta":
            return tensor
        if ptr not in self._live:
            self._live[ptr] = 0
            self._bytes += storage.nbytes()
            self.peak_bytes = max(self.peak_bytes, self._bytes)
        self._live[ptr] += 1
        return _Held(tensor, self, ptr, storage.nbytes())

    def _release(self, ptr: int, nbytes: int) -> None:
        self._live[ptr] -= 1
        if self._live[ptr] == 0:
            del self._live[ptr]
            self._bytes -= nbytes

    @contextmanager
    def measure(self) -> Iterator["SavedTensorMeter"]:
        unpack = lambda held: held.tensor if isinstance(held, _Held) else held  # noqa: E731
        with torch.autograd.graph.saved_tensors_hooks(self._pack, unpack):
            yield self


class _Held:
    __slots__ = ("tensor", "_meter", "_ptr", "_nbytes")

    def __init__(self, tensor: torch.Tensor, meter: SavedTensorMeter, ptr: int, nbytes: int):
        self.tensor, self._meter, self._ptr, self._nbytes = tensor, meter, ptr, nbytes

    def __del__(self) -> None:
        self._meter._release(self._ptr, self._nbytes)


def state_bytes(model: nn.Module, optimizer: torch.optim.Optimizer) -> int:
    """Bytes of parameters, their gradients (one per parameter) and the optimizer's state tensors."""
    params = sum(p.numel() * p.element_size() for p in model.parameters())
    grads = sum(p.numel() * p.element_size() for p in model.parameters() if p.requires_grad)
    opt = sum(
        v.numel() * v.element_size()
        for s in optimizer.state.values()
        for v in s.values()
        if torch.is_tensor(v)
    )
    return params + grads + opt


def cache_dir() -> Path:
    return Path(os.environ.get("LEANTRAIN_CACHE_DIR", Path.home() / ".cache" / "leantrain"))


def peak_matmul_flops(device: torch.device, dtype: torch.dtype) -> float:
    """The machine's measured dense matmul peak (FLOP/s) for a dtype, measured once and cached on disk.

    Utilisation divides by this, not by a vendor's datasheet figure, so it cannot exceed 100% on
    hardware newer than a hard-coded table.
    """
    threads = torch.get_num_threads() if device.type == "cpu" else 0
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else _cpu_name()
    key = f"{device.type}|{name}|{dtype}|threads={threads}|torch={torch.__version__}"
    path = cache_dir() / "peak_flops.json"
    cached = _read_json(path)
    if key not in cached:
        cached[key] = _measure_matmul(device, dtype)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".tmp{os.getpid()}")
        tmp.write_text(json.dumps(cached, indent=1))
        os.replace(tmp, path)
    return cached[key]


def _measure_matmul(device: torch.device, dtype: torch.dtype) -> float:
    n = 4096 if device.type == "cuda" else 1024
    a = torch.randn(n, n, device=device).to(dtype)
    b = torch.randn(n, n, device=device).to(dtype)
    best = float("inf")
    for _ in range(3):  # warm up
        a @ b
    deadline = time.perf_counter() + (0.3 if device.type == "cpu" else 0.5)
    reps = 0
    while time.perf_counter() < deadline or reps < 5:
        start = now(device)
        for _ in range(4):
            a @ b
        best = min(best, (now(device) - start) / 4)
        reps += 1
    return 2.0 * n**3 / best


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    import platform

    return platform.processor() or "cpu"


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
        end = self._read()
        start, self._start = self._start, end
        if start is None or end is None or end[2] <= start[2]:
            return None
        ticks = os.sysconf("SC_CLK_TCK")
        foreign = (end[0] - start[0]) - (end[1] - start[1])
        return max(0.0, foreign / ticks / (end[2] - start[2]))
