"""How a device trains: mixed precision and memory layout on CUDA, augmentation on tensors, and
which worker trains on which device.

On the CPU nothing changes: fp32, contiguous tensors, no autocast (a CPU plan is the loop as it
was before this module). On CUDA a :class:`DevicePlan` turns on what small CNNs gain from there:

- automatic mixed precision (``torch.autocast``): bf16 where the GPU supports it (Ampere and
  later; no loss scaling needed, bf16 has fp32's exponent range), else fp16 with a
  ``torch.amp.GradScaler`` (Micikevicius et al., "Mixed Precision Training", ICLR 2018);
- ``channels_last`` memory format (NHWC: cuDNN's tensor-core convolution kernels take it without
  transposes, PyTorch's "(beta) Channels Last Memory Format" tutorial);
- pinned host memory for the one host-to-device copy of the dataset;
- ``torch.backends.cudnn.benchmark`` (every batch of a trial has the same shape, so the autotuned
  kernel choice pays for itself).

How many CPUs a process may use (:func:`usable_cpus`) is not ``os.cpu_count()``, the machine's
count: a process pinned to some cores (``taskset``, ``os.sched_setaffinity``) or in a container
with a CPU quota (cgroup v2 ``cpu.max``, ``docker run --cpus``) has fewer, and threads beyond
them only contend.

Augmentation for natural images (random crop with zero padding and horizontal flip, the CIFAR
recipe of He et al., "Deep Residual Learning", CVPR 2016, section 4.2: 4 pixels of padding at 32x32)
is done on the batch tensor on the training device, with the loop's seeded generator: no
``DataLoader``, no worker processes, reproducible. Padding is ``input side / 8`` pixels (4 at
32x32) and pads with 0, which after normalisation is the training split's mean colour.
"""

from __future__ import annotations

import contextlib
import math
import os
import statistics
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import torch
from torch.nn import functional as F

from search_spaces import InputError

__all__ = ["AMP_MODES", "AUGMENTATIONS", "DevicePlan", "ThreadGovernor", "augment_batch", "device_plan",
           "usable_cpus", "worker_devices"]

#: ``auto``: bf16 on a GPU that supports it, else fp16 with loss scaling; fp32 on the CPU.
AMP_MODES = ("auto", "off", "bf16", "fp16")
#: ``none``; ``crop-flip``: random crop after zero padding, and horizontal flip.
AUGMENTATIONS = ("none", "crop-flip")
_CGROUP_ROOT = Path("/sys/fs/cgroup")  # the cgroup v2 hierarchy
_PROC_CGROUP = Path("/proc/self/cgroup")  # "0::/path" names this process's cgroup v2 in it


@dataclass(frozen=True)
class DevicePlan:
    """What the training loop does on one device.

    Attributes:
        device: the training device.
        amp_dtype: autocast dtype (``torch.bfloat16``/``torch.float16``), ``None`` for fp32.
        grad_scaler: scale the loss (fp16 only: its gradients underflow without it).
        channels_last: model and images in NHWC memory format.
        pin_memory: copy the dataset to the device from pinned host memory.
        cudnn_benchmark: let cuDNN autotune its convolution algorithms.
    """

    device: torch.device
    amp_dtype: torch.dtype | None = None
    grad_scaler: bool = False
    channels_last: bool = False
    pin_memory: bool = False
    cudnn_benchmark: bool = False

    @property
    def precision(self) -> str:
        """``fp32``, ``bf16`` or ``fp16``: what the plan trains in."""
        return {None: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}[self.amp_dtype]

    def autocast(self) -> contextlib.AbstractContextManager[object]:
        """The autocast context of the forward pass (none in fp32)."""
        if self.amp_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.amp_dtype)


def device_plan(device: torch.device | str, amp: str = "auto", *, bf16_supported: bool | None = None) -> DevicePlan:
    """The plan for training on ``device``.

    Args:
        device: a resolved device (``cpu``, ``cuda``, ``cuda:N``).
        amp: one of :data:`AMP_MODES`; it applies on CUDA only (the CPU always trains in fp32, as
            before: CPU autocast is slower than fp32 for these networks).
        bf16_supported: whether the GPU does bf16 (``torch.cuda.is_bf16_supported()`` when not
            given); a parameter so that the choice is testable without a GPU.

    Raises:
        ValueError: ``amp`` is not one of :data:`AMP_MODES`; ``bf16`` asked of a GPU without it.
    """
    if amp not in AMP_MODES:
        raise ValueError(f"amp: {amp!r} is not a precision mode; accepted: {', '.join(AMP_MODES)}")
    device = torch.device(device)
    if device.type != "cuda":
        return DevicePlan(device)
    if amp == "off":
        dtype = None
    else:
        if bf16_supported is None:
            bf16_supported = bool(torch.cuda.is_bf16_supported())
        if amp == "bf16" and not bf16_supported:
            raise ValueError(f"amp: bf16 is not supported on {device}; accepted here: auto, off, fp16")
        dtype = torch.bfloat16 if amp == "bf16" or (amp == "auto" and bf16_supported) else torch.float16
    return DevicePlan(device, amp_dtype=dtype, grad_scaler=dtype == torch.float16, channels_last=True,
                      pin_memory=True, cudnn_benchmark=True)


def augment_batch(x: torch.Tensor, generator: torch.Generator, kind: str) -> torch.Tensor:
    """``x`` (``N x C x H x W``, on any device) augmented per example; ``x`` itself for ``none``.

    ``crop-flip``: each example is shifted by a random offset of up to ``pad = max(1, min(H, W) // 8)``
    pixels in each direction (a ``H x W`` crop of the zero-padded image) and flipped left-right
    with probability 1/2. The random numbers come from ``generator`` (a CPU generator: the same
    seed gives the same augmentation on every device).
    """
    if kind == "none":
        return x
    if kind != "crop-flip":
        raise ValueError(f"augment: {kind!r} is not an augmentation; accepted: {', '.join(AUGMENTATIONS)}")
    n, _c, h, w = x.shape
    pad = max(1, min(h, w) // 8)
    dy = torch.randint(0, 2 * pad + 1, (n,), generator=generator).to(x.device)
    dx = torch.randint(0, 2 * pad + 1, (n,), generator=generator).to(x.device)
    flip = (torch.rand(n, generator=generator) < 0.5).to(x.device)
    padded = F.pad(x, (pad, pad, pad, pad))
    rows = (dy[:, None] + torch.arange(h, device=x.device))[:, None, :, None]  # N x 1 x H x 1
    cols = dx[:, None] + torch.arange(w, device=x.device)  # N x W
    cols = torch.where(flip[:, None], cols.flip(1), cols)[:, None, None, :]  # N x 1 x 1 x W
    batch = torch.arange(n, device=x.device)[:, None, None, None]
    channels = torch.arange(x.shape[1], device=x.device)[None, :, None, None]
    return padded[batch, channels, rows, cols].contiguous(memory_format=_format_of(x))


def _format_of(x: torch.Tensor) -> torch.memory_format:
    return torch.channels_last if x.dim() == 4 and x.is_contiguous(memory_format=torch.channels_last) \
        and not x.is_contiguous() else torch.contiguous_format


def usable_cpus() -> int:
    """The CPUs this process may run on: its CPU affinity (``os.sched_getaffinity``, where the
    platform has it; else ``os.cpu_count()``), capped by a cgroup v2 CPU quota (``cpu.max`` of its
    cgroup or an ancestor, under ``/sys/fs/cgroup``) rounded down; at least 1.

    Example:
        >>> 1 <= usable_cpus() <= (os.cpu_count() or 1)
        True
    """
    try:
        cpus = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # macOS, Windows
        cpus = os.cpu_count() or 1
    quota = _cgroup_cpu_quota()
    if quota is not None:
        cpus = min(cpus, math.floor(quota))
    return max(1, cpus)


class ThreadGovernor:
    """Chooses, from measured step times, whether training runs at ``most`` torch threads or at 1,
    and checks again as the machine's load changes.

    Why: torch's CPU build parallelises inside each operator with OpenMP, and a parallel region
    ends only when its slowest thread does. When another process holds one of the cores, the
    thread the kernel descheduled makes every small convolution wait for a time slice: a small
    network of the demo's space trained 6 trials in 455 s at 2 threads with one busy process on 2
    cores, 35 s at 1 thread (BENCHMARKS.md, section 14). Networks too small to gain from a second
    thread lose nothing at 1; large ones keep their speed-up while the machine is quiet.

    How: training steps are the measurement (no extra work): after ``warmup`` steps, ``probe``
    steps at 1 thread interleaved with ``probe`` at ``most`` (so a load that changes during the
    probe hits both alike); the medians decide, ``most`` only when it is at least ``gain`` times
    faster. The choice holds for ``recheck_seconds`` (and at least ``recheck_steps`` steps), then
    the probe runs again. A probe costs at most ``probe`` steps at the slower setting.

    Use as ``with governor.step(): ...`` around each training step; ``most`` <= 1 does nothing.

    Attributes:
        steps_at: how many steps ran at each thread count (``{1: 120, 2: 480}``).
        choices: the thread count chosen by each probe, in order.
    """

    def __init__(self, most: int, *, warmup: int = 2, probe: int = 3, gain: float = 1.15,
                 recheck_seconds: float = 10.0, recheck_steps: int = 50,
                 clock: Callable[[], float] = time.perf_counter,
                 set_threads: Callable[[int], None] = torch.set_num_threads) -> None:
        self.most = max(1, int(most))
        self.gain = gain
        self.recheck_seconds = recheck_seconds
        self.recheck_steps = recheck_steps
        self._probe = probe
        self._clock = clock
        self._set = set_threads
        self.steps_at: dict[int, int] = {}
        self.choices: list[int] = []
        self._current = self.most
        self._plan: list[tuple[int, bool]] = [(self.most, False)] * warmup  # (threads, measured)
        self._times: dict[int, list[float]] = {}
        self._next_probe_at = 0.0
        self._steps_since = 0
        if self.most > 1:
            self._plan += self._probe_plan()

    def _probe_plan(self) -> list[tuple[int, bool]]:
        return [(t, True) for _ in range(self._probe) for t in (1, self.most)]

    @property
    def threads(self) -> int:
        """The thread count in use."""
        return self._current

    @contextlib.contextmanager
    def step(self) -> Iterator[None]:
        """Time one training step at the thread count the plan gives it."""
        if self.most <= 1:
            self.steps_at[1] = self.steps_at.get(1, 0) + 1
            yield
            return
        measured = False
        if not self._plan and self._steps_since >= self.recheck_steps and self._clock() >= self._next_probe_at:
            self._plan = self._probe_plan()
        if self._plan:
            threads, measured = self._plan.pop(0)
        else:
            threads = self.choices[-1] if self.choices else self.most
        if threads != self._current:
            self._set(threads)
            self._current = threads
        t0 = self._clock()
        yield
        elapsed = self._clock() - t0
        self.steps_at[threads] = self.steps_at.get(threads, 0) + 1
        self._steps_since += 1
        if measured:
            self._times.setdefault(threads, []).append(elapsed)
            if not self._plan:
                self._decide()

    def _decide(self) -> None:
        one = statistics.median(self._times.get(1, [math.inf]))
        many = statistics.median(self._times.get(self.most, [math.inf]))
        choice = self.most if many * self.gain <= one else 1
        self.choices.append(choice)
        self._times.clear()
        self._steps_since = 0
        self._next_probe_at = self._clock() + self.recheck_seconds
        if choice != self._current:
            self._set(choice)
            self._current = choice


def _cgroup_cpu_quota(root: Path = _CGROUP_ROOT, proc_cgroup: Path = _PROC_CGROUP) -> float | None:
    """The tightest cgroup v2 CPU quota (``cpu.max``: quota / period, in CPUs) over this process's
    cgroup and its ancestors; ``None`` when there is none (unlimited, cgroup v1, not Linux)."""
    try:
        lines = proc_cgroup.read_text().splitlines()
    except OSError:
        return None
    rel = next((line[3:].strip() for line in lines if line.startswith("0::")), None)
    if rel is None:  # no cgroup v2 hierarchy
        return None
    parts = [p for p in rel.split("/") if p and p != ".."]
    best: float | None = None
    for depth in range(len(parts), -1, -1):  # the process's cgroup, then each ancestor up to the root
        try:
            fields = (root.joinpath(*parts[:depth]) / "cpu.max").read_text().split()
        except OSError:
            continue
        if len(fields) == 2 and fields[0] != "max":
            try:
                quota = int(fields[0]) / int(fields[1])
            except (ValueError, ZeroDivisionError):
                continue
            best = quota if best is None else min(best, quota)
    return best


def worker_devices(workers: int, *, device: str = "auto", per_device: int = 1,
                   cuda_count: int | None = None) -> list[str | None]:
    """The device of each of ``workers`` local workers.

    On CUDA (``device`` ``auto`` or ``cuda`` with GPUs present) workers are spread over the GPUs,
    at most ``per_device`` on each (several small networks keep one GPU busy where one cannot):
    worker ``i`` trains on ``cuda:(i // per_device)``. Elsewhere every worker gets ``None``: the
    study's own device, as before (CPU workers share the cores through their thread counts).

    Raises:
        InputError: ``per_device`` below 1 (field ``workers_per_device``), or more workers than ``GPUs x per_device``.
    """
    if per_device < 1:
        raise InputError(f"must be at least 1, got {per_device}", field="workers_per_device")
    if cuda_count is None:
        cuda_count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if device not in ("auto", "cuda") or cuda_count == 0:
        return [None] * workers
    if workers > cuda_count * per_device:
        raise InputError(f"{workers} workers need more than {cuda_count} GPU(s) x "
                         f"{per_device} per device; accepted: at most {cuda_count * per_device}, or raise "
                         "--workers-per-device", field="workers")
    return [f"cuda:{i // per_device}" for i in range(workers)]
