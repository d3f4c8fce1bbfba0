"""The bf16 training step's passes over the hidden activations H = relu(Z) (S, n, C) on the CPU, compiled by numba:
the outputs N(x_i) = sum_j v_j H_ij in float32, and H overwritten by weights_i 1[H_ij > 0] for the gradient's product.

Once the two products run on the matrix units, the passes over the (n x C) bf16 matrix take much of a step. torch
needed four: two bf16 matrix-vector products for the outputs (a bf16 product rounds its result, so it was taken
twice, ``kernels.outputs_bf16``), a comparison for the mask and the weights' product with X. Gradient descent needs
one here (``margins_and_mask_cpu``): each row is read once, its margin summed, its weight y_i e^{s_i - shift} formed
from that margin and written over the row's nonzeros. Softmax's normalizer needs every margin first, so the weights
are shifted by the last pass's max s (``kernels.full_pass_bf16``) and the step rescales after the product.
``outputs_cpu`` and ``weighted_mask_cpu`` are the same two halves for the SGD mini-batches, whose examples change.
numba compiles them with LLVM (no C compiler needed) and caches the machine code on disk; this module, and numba
with it, is imported on the first bf16 step on a CPU. They run on the calling thread, each row's sum in one order,
so their bits do not depend on the number of threads (numba's own thread pool next to torch's OpenMP one made
2-thread steps slower, not faster).

Measured (interleaved repeats of the step with one pass, with two, and of its two bare bf16 products, best of, 1
thread, Xeon family 6 model 207, AMX; this machine's times drift 2x from minute to minute, their ratios much less):
the passes take ~1.2 ms of a 7.8 ms step at d = 300, n = 5196, width 1000, where one pass and two cost the same
within the noise and the step runs at 74% of its two bare products' rate; at d = 1000, n = 31,623 (H 65 MB, out of
cache) the one pass makes the step 169 against 178 ms (median 178 against 210), i.e. as fast as the products.
benchmarks/test_bf16_step.py times both steps against the bf16 matmul yardstick: 59-71% of it at d = 300, 1 thread.
"""

from __future__ import annotations

import numba
import numpy as np
import torch
from torch import Tensor


@numba.njit(fastmath=True, boundscheck=False, cache=True, inline="always")
def _row_output(row: np.ndarray, vs: np.ndarray, bits: np.ndarray, values: np.ndarray) -> np.float32:  # pragma: no cover
    """sum_j vs_j row_j in float32 for one row of bf16 bits (int16); bits/values: a (width,) scratch buffer."""
    width = vs.shape[0]
    for j in range(width):  # a bf16 value's bits are the upper half of its float32's
        bits[j] = np.uint32(np.uint16(row[j])) << 16
    total = np.float32(0.0)
    for j in range(width):  # fastmath: summed in vector lanes, in one fixed order on a given CPU
        total += values[j] * vs[j]
    return total


@numba.njit(fastmath=True, boundscheck=False, cache=True)
def _outputs(H: np.ndarray, v: np.ndarray, out: np.ndarray) -> None:  # pragma: no cover - compiled by numba
    """H: (S, n, C) int16 (bf16 bits), v: (S, width) float32, out: (S, n) float32; see ``outputs_cpu``."""
    S, n, _ = H.shape
    bits = np.empty(v.shape[1], np.uint32)
    values = bits.view(np.float32)
    for s in range(S):
        for i in range(n):
            out[s, i] = _row_output(H[s, i], v[s], bits, values)


@numba.njit(boundscheck=False, cache=True, inline="always")
def _bf16_bits(x: np.float32, scratch: np.ndarray) -> np.int16:  # pragma: no cover - compiled by numba
    """x rounded to bf16 (to nearest, ties to even, as torch's conversion), as the bits of an int16; scratch: (1,)
    float32. In integers only, so that fastmath cannot change it."""
    scratch[0] = x
    u = scratch.view(np.uint32)[0]
    if (u & np.uint32(0x7FFFFFFF)) > np.uint32(0x7F800000):  # NaN stays NaN (rounding could carry it to infinity)
        return np.int16(np.uint16((u >> 16) | np.uint32(0x40)))
    return np.int16(np.uint16((u + np.uint32(0x7FFF) + ((u >> 16) & np.uint32(1))) >> 16))


@numba.njit(fastmath=True, boundscheck=False, cache=True)
def _margins_and_mask(
    H: np.ndarray, v: np.ndarray, y: np.ndarray, shift: np.ndarray, logistic: bool, q: np.ndarray, top: np.ndarray
) -> None:  # pragma: no cover - compiled by numba
    """H: (S, n, C) int16, v: (S, width), y: (S, n), shift: (S,) float32 -> q: (S, n), top: (S,) float64;
    see ``margins_and_mask_cpu``."""
    S, n, C = H.shape
    bits = np.empty(v.shape[1], np.uint32)
    values, scratch = bits.view(np.float32), np.empty(1, np.float32)
    zero = np.int16(0)
    for s in range(S):
        top[s] = -np.inf
        for i in range(n):
            row = H[s, i]
            margin = y[s, i] * _row_output(row, v[s], bits, values)
            q[s, i] = margin
            m = np.float64(margin)  # log(-loss'(q)): -q (exp), log sigmoid(-q) = -softplus(q) (logistic)
            log_weight = -(max(m, 0.0) + np.log1p(np.exp(-abs(m)))) if logistic else -m
            top[s] = max(top[s], log_weight)
            w = _bf16_bits(np.float32(y[s, i] * np.exp(log_weight - shift[s])), scratch)
            for j in range(C):  # as an int16, relu(z)'s bits are > 0 iff relu(z) > 0 (-0.0's are negative)
                row[j] = w if row[j] > 0 else zero


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


def margins_and_mask_cpu(H: Tensor, v: Tensor, y: Tensor, shift: Tensor, loss: str) -> tuple[Tensor, Tensor]:
    """One pass for both: H (S, n, C) bf16 relu(Z), v: (S, width), y: (S, n), shift: (S,) -> the margins
    q_i = y_i N(x_i): (S, n) float32 (``outputs_cpu``'s sums) and max_i s_i: (S,), with s_i = log(-loss'(q_i));
    H is overwritten by bf16(y_i e^{s_i - shift}) 1[H_ij > 0], the step's weights softmax(s)_i y_i up to the
    factor e^{shift - logsumexp(s)}, which the caller applies to the product instead (it needs every q first).
    Each row is read once and written once."""
    if loss not in ("exp", "logistic"):
        raise ValueError(f"unknown loss {loss!r}; the fused pass knows exp and logistic")
    q, top = torch.empty(H.shape[:2], dtype=torch.float32), torch.empty(H.shape[0], dtype=torch.float64)
    as_numpy = [t.float().contiguous().numpy() for t in (v, y, shift)]
    _margins_and_mask(_checked(H), *as_numpy, loss == "logistic", q.numpy(), top.numpy())
    return q, top
