"""The yardsticks that throughput is measured against: the machine's matmul rate at a kernel's shape, in every
precision the device offers training (float64, float32; bf16 where it has bf16 matrix units; tf32 on CUDA)."""

from __future__ import annotations

import torch

from marginbench.bench.performance.timing import timed
from marginbench.models.precision import Used, choose_precision, matmul_backend, matmul_dtype


def device_precisions(device: torch.device) -> tuple[Used, ...]:
    """The precisions ``device`` offers training: float64, float32, bf16 where it has bf16 matrix units (what
    ``auto`` would choose), and tf32 on CUDA."""
    offered: list[Used] = ["float64", "float32"]
    if choose_precision("auto", device).used == "bf16":
        offered.append("bf16")
    if device.type == "cuda":
        offered.append("tf32")
    return tuple(offered)


def precision_gflops(n: int, d: int, width: int, device: torch.device, precision: Used) -> float:
    """``matmul_gflops`` in ``precision`` as training uses it: bf16 factors, or float32 with TF32 allowed."""
    with matmul_backend(precision, device):
        return matmul_gflops(n, d, width, device, matmul_dtype(precision))


def matmul_gflops(n: int, d: int, width: int, device: torch.device, dtype: torch.dtype, *, repeats: int = 5, warmup: int = 1) -> float:
    """The yardstick: GFLOP/s of X @ W.T for X: (n, d), W: (width, d), the training step's main product
    (the median of ``repeats`` timed calls after ``warmup``)."""
    X = torch.randn(n, d, device=device, dtype=dtype)
    W = torch.randn(width, d, device=device, dtype=dtype)
    reps = max(1, int(2e8 // (2 * n * d * width)))  # about 0.2 GFLOP per timed call

    def run() -> None:
        for _ in range(reps):
            X @ W.T

    return 2e-9 * n * d * width * reps / timed(run, device, repeats=repeats, warmup=warmup)
