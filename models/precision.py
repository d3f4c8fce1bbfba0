"""Which precision training's large products run in, and why: ``--precision auto`` resolved against the hardware.

float64 and float32 compute everything in that dtype. bf16 keeps parameters, loss, margins, step lengths and
stopping in float32 and runs the large products (X W^T and the gradient's) on the bf16 matrix units: CPU AMX or
AVX512_BF16 through oneDNN, CUDA tensor cores from capability 8.0 (Ampere). tf32 (CUDA only) is float32 with
the CUDA matmul backend allowed to use TF32 tensor cores. ``auto`` is bf16 where the hardware has bf16 matrix
units, float32 elsewhere. The choice and the hardware it was made on go into a run's manifest.

bf16 runs to the end, the late phase (loss < 1e-10, where the margin is maximized) included. Measured against
float64 (arc schedule, late step 0.0007, width 1000, n = d^1.5; Xeon with AMX, 1 thread), the normalized margin
of bf16 throughout / bf16 until 1e-10 then float32 / float32: d = 64 seeds 0-2: -0.30 / +0.00 / -0.15%,
-0.11 / +0.05 / +0.01%, +0.13 / +0.04 / -0.19%; d = 100 seed 0: -0.34 / -0.21 / -0.02%. A float32 late phase
moves the net closer, but it is about half the steps, so it costs most of bf16's gain (d = 100: 5 s, 11 s,
14 s), while bf16 throughout is already within 0.5% (and ``--twin paper`` certifies each run).
"""

from __future__ import annotations

import functools
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch

Precision = Literal["float64", "float32", "bf16", "tf32", "auto"]
PRECISIONS: tuple[str, ...] = ("float64", "float32", "bf16", "tf32", "auto")
Used = Literal["float64", "float32", "bf16", "tf32"]
BF16_CPU_FLAGS = ("amx_bf16", "avx512_bf16")  # /proc/cpuinfo flags of bf16 matrix (or dot-product) units
BF16_CUDA_CAPABILITY = (8, 0)
# On the CPU, auto keeps float32 for training steps below this many GFLOP (4 n d width, per net): bf16's fixed
# costs per step (the compensated margins, oneDNN's setup) outweigh its faster products there. Measured on a Xeon
# with AMX, 1 thread, arc schedule, width 1000 (bf16 / float32 step time): n = d = 100 (0.04 GFLOP) 1.22x slower,
# n = d = 200 (0.16 GFLOP) 1.4x faster, n = d = 300 (0.36 GFLOP) 1.7x faster, n = 10, d = 100 (0.004) 4.5x slower.
# On an AMD Zen 4 (AVX512_BF16, no AMX), whole runs of the medium sweep at 1 thread: 0.12 GFLOP 1.4x slower (0.7 s vs
# 0.5 s), 0.16 GFLOP 1.3x faster, 0.36 GFLOP 1.4x faster, 6.2 GFLOP (n = 5196, d = 300) 2.7x faster.
AUTO_BF16_MIN_GFLOP = 0.1


@dataclass(frozen=True, kw_only=True)
class PrecisionChoice:
    """A precision as training uses it, and the hardware it was chosen on (a manifest entry)."""

    requested: str  # what the spec asked for
    used: Used  # what training computes in
    reason: str  # why (for auto: the flag or capability that decided)
    hardware: str  # CPU model name or GPU name
    flags: tuple[str, ...] = ()  # the CPU's bf16 flags present (CPU only)

    @property
    def dtype(self) -> torch.dtype:
        """The dtype of parameters, loss and margins: float64 for float64, float32 otherwise."""
        return torch.float64 if self.used == "float64" else torch.float32


def matmul_dtype(used: Used) -> torch.dtype:
    """The dtype of the large products' factors under ``used``: bfloat16 for bf16, float32 for tf32 and float32."""
    return {"float64": torch.float64, "float32": torch.float32, "bf16": torch.bfloat16, "tf32": torch.float32}[used]


@functools.cache
def cpu_info() -> tuple[str, tuple[str, ...]]:
    """(model name, the BF16_CPU_FLAGS present) from /proc/cpuinfo; ("unknown", ()) where it cannot be read."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return "unknown", ()
    model, flags = "unknown", set()
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() == "model name" and model == "unknown":
            model = value.strip()
        elif key.strip() == "flags" and not flags:
            flags = set(value.split())
    return model, tuple(flag for flag in BF16_CPU_FLAGS if flag in flags)


def choose_precision(requested: str, device: torch.device | str, step_gflop: float | None = None) -> PrecisionChoice:
    """Resolve ``requested`` (one of PRECISIONS) on ``device``; ValueError for tf32 off CUDA. ``step_gflop``: the
    training step's size (4 n d width per net), where known: on the CPU, auto keeps float32 below
    AUTO_BF16_MIN_GFLOP."""
    device = torch.device(device)
    if device.type == "cuda":
        index = device.index if device.index is not None else torch.cuda.current_device()
        hardware, capability = torch.cuda.get_device_name(index), torch.cuda.get_device_capability(index)
        has_bf16, flags = capability >= BF16_CUDA_CAPABILITY, ()
        why = f"CUDA capability {capability[0]}.{capability[1]} {'>=' if has_bf16 else '<'} 8.0"
    else:
        hardware, flags = cpu_info()
        has_bf16 = bool(flags)
        why = f"CPU flags {', '.join(flags)}" if flags else f"CPU without {' or '.join(BF16_CPU_FLAGS)}"
    if requested == "tf32" and device.type != "cuda":
        raise ValueError("precision tf32 needs a CUDA device (TF32 is a tensor-core format); choose bf16 or float32")
    if requested == "auto":
        used: Used = "bf16" if has_bf16 else "float32"
        reason = f"auto: {why}: {'bf16 matrix units' if has_bf16 else 'no bf16 matrix units'}"
        if has_bf16 and device.type == "cpu" and step_gflop is not None and step_gflop < AUTO_BF16_MIN_GFLOP:
            used = "float32"
            reason += f", but a {step_gflop:.3g} GFLOP step is below {AUTO_BF16_MIN_GFLOP:g}, where bf16 does not pay on the CPU"
    elif requested in ("float64", "float32", "bf16", "tf32"):
        used, reason = requested, f"requested ({why})"  # type: ignore[assignment]
    else:
        raise ValueError(f"unknown precision {requested!r}; choose one of {', '.join(PRECISIONS)}")
    return PrecisionChoice(requested=requested, used=used, reason=reason, hardware=hardware, flags=flags)


@contextmanager
def matmul_backend(used: Used, device: torch.device) -> Iterator[None]:
    """tf32 on CUDA: let float32 matmuls use TF32 tensor cores for the duration (restored after); else nothing."""
    if used != "tf32" or device.type != "cuda":
        yield
        return
    before = torch.backends.cuda.matmul.fp32_precision
    torch.backends.cuda.matmul.fp32_precision = "tf32"
    try:
        yield
    finally:
        torch.backends.cuda.matmul.fp32_precision = before
