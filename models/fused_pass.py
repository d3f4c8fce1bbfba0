"""The bf16 training step's passes over the hidden activations H = relu(Z) (S, n, C) on the CPU, compiled by numba:
the outputs N(x_i) = sum_j v_j H_ij in float32, and H overwritten by weights_i 1[H_ij > 0] for the gradient's product.

Once the two products run on the matrix units, the passes over the (n x C) bf16 matrix take much of a step. torch
needed four: two bf16 matrix-vector products for the outputs (a bf16 product rounds its result, so it was taken
twice, ``kernels.outputs_bf16``), a comparison for the mask and the weights' product with X. Here they are two,
each reading a row once. numba compiles them with LLVM (no C compiler needed) and caches the machine code on disk;
this module, and numba with it, is imported on the first bf16 step on a CPU. They run on the calling thread, each
row's sum in one order, so their bits do not depend on the number of threads (numba's own thread pool next to
torch's OpenMP one made 2-thread steps slower, not faster).

Measured (d = 300, n = 5196, width 1000, 1 thread; Xeon family 6 model 167, AVX-512 and AMX): a step's products
and passes (hidden, outputs, weighted mask, gradient product), timed in turn with the torch ones, 10.2 against
11.9 ms; the outputs' largest error against float64 3.6e-7 against 4.5e-3 (torch's product rounded v to bf16).
"""

from __future__ import annotations

import numba
import numpy as np
import torch
from torch import Tensor


@numba.njit(fastmath=True, boundscheck=False, cache=True)
def _outputs(H: np.ndarray, v: np.ndarray, out: np.ndarray) -> None:  # pragma: no cover - compiled by numba
    """H: (S, n, C) int16 (bf16 bits), v: (S, width) float32, out: (S, n) float32; see ``outputs_cpu``."""
    S, n, _ = H.shape
    width = v.shape[1]
    bits = np.empty(width, np.uint32)  # a bf16 value's bits are the upper half of its float32's
    values = bits.view(np.float32)
    for s in range(S):
        vs = v[s]
        for i in range(n):
            row = H[s, i]
            for j in range(width):
                bits[j] = np.uint32(np.uint16(row[j])) << 16
            total = np.float32(0.0)
            for j in range(width):  # fastmath: summed in vector lanes, in one fixed order on a given CPU
                total += values[j] * vs[j]
            out[s, i] = total


@numba.njit(boundscheck=False, cache=True)
def _weighted_mask(H: np.ndarray, weights: np.ndarray) -> None:  # pragma: no cover - compiled by numba
    """H: (S, n, C) int16 (bf16 bits of relu(Z) >= 0), weights: (S, n) int16 (bf16 bits); see ``weighted_mask_cpu``."""
    S, n, C = H.shape
    zero = np.int16(0)
    for s in range(S):
        for i in range(n):
            row, w = H[s, i], weights[s, i]
            for j in range(C):  # as an int16, relu(z)'s bits are > 0 iff relu(z) > 0 (-0.0's are negative)
                row[j] = w if row[j] > 0 else zero


def _checked(H: Tensor) -> np.ndarray:
    if not (H.is_contiguous() and H.dtype == torch.bfloat16 and H.device.type == "cpu"):
        raise ValueError(f"expected a contiguous bfloat16 CPU tensor, got {H.dtype} on {H.device}, contiguous: {H.is_contiguous()}")
    return H.view(torch.int16).numpy()


def outputs_cpu(H: Tensor, v: Tensor) -> Tensor:
    """H: (S, n, C) bf16 relu(Z) (C >= width), v: (S, width) -> N(x_i) = sum_j v_j H_ij: (S, n) float32, from
    float32 products and sums of the bf16 H and the float32 v."""
    out = torch.empty(H.shape[:2], dtype=torch.float32)
    _outputs(_checked(H), v.float().contiguous().numpy(), out.numpy())
    return out


def weighted_mask_cpu(H: Tensor, weights: Tensor) -> Tensor:
    """H: (S, n, C) bf16 relu(Z), weights: (S, n) -> H, overwritten by bf16(weights_i) 1[H_ij > 0]."""
    _weighted_mask(_checked(H), weights.to(torch.bfloat16).contiguous().view(torch.int16).numpy())
    return H
