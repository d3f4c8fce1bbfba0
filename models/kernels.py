"""The batched products of a training step, for S nets of one shape at once: the forward pass (preactivations,
hidden activations, outputs) and the margin gradient sum_i weights_i grad_theta N(x_i), in the nets' dtype or from
bf16 factors on the matrix units (precision bf16).

Pure functions of tensors: no training state. ``marginbench.models.train`` calls them; tests/test_two_layer.py
checks the gradient against autograd, tests/test_reference.py the trained nets against the plain-PyTorch recipe.
"""

from __future__ import annotations

import functools

import torch
from torch import Tensor


def step_gflop(n: int, d: int, width: int) -> float:
    """GFLOPs of one full-batch training step of a two-layer net: the (n, d, width) products X W^T and A^T X."""
    return 4e-9 * n * d * width


def margin_gradient_step(H: Tensor, X: Tensor, v: Tensor, weights: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """sum_i weights_i * grad_theta N(x_i) for each of S nets, analytically: dW: (S, width, d), db, dv: (S, width).

    H: (S, n, width) hidden activations relu(w_j . x_i + b_j); X: (S, n, d); v: (S, width); weights: (S, n).
    grad_{w_j} N(x) = v_j 1[w_j.x + b_j > 0] x,  grad_{b_j} N(x) = v_j 1[...],  grad_{v_j} N(x) = relu(w_j.x + b_j).
    """
    active_weighted = (H > 0).to(X.dtype) * weights[:, :, None] * v[:, None, :]  # (S, n, width); relu(z) > 0 iff z > 0
    dv = torch.bmm(H.transpose(1, 2), weights[:, :, None])[:, :, 0]
    return torch.bmm(active_weighted.transpose(1, 2), X), active_weighted.sum(1), dv


def preactivations(X: Tensor, W: Tensor, b: Tensor) -> Tensor:
    """X: (S, n, d), W: (S, width, d), b: (S, width) -> (S, n, width), the values w_j . x_i + b_j of each net."""
    return torch.bmm(X, W.transpose(1, 2)) + b[:, None, :]


def outputs(H: Tensor, v: Tensor) -> Tensor:
    """H: (S, n, width) hidden activations relu(Z), v: (S, width) -> N(x_i) of each net: (S, n).

    One matrix-vector product per net, not one bmm: on the CPU, MKL rounds a gemv and a batched gemm with one
    column differently, while every other product of the step gives each net the same bits in any batch.
    """
    return torch.stack([h @ u for h, u in zip(H, v, strict=True)])


# The bf16 products (precision bf16): bf16 inputs, float32 accumulation, on the CPU's AMX / AVX512_BF16 units
# (oneDNN) or CUDA tensor cores. The passes over the (n x C) matrices cost as much as the products once those are
# fast, so the layout saves passes: the bias rides in the product (a ones column of X), relu is fused into it
# (oneDNN post-op on the CPU), the outputs and the weighted mask are one pass over H on the CPU
# (``fused_pass``), and dv comes out of the gradient product instead of its own pass over relu(Z).
BF16_COLUMNS = 32  # the bf16 inputs' columns are padded to a multiple of this (one AMX tile row: 32 bf16)
SHIFT_RANGE = 20.0  # how far softmax's shift may lag in the fused pass (e^20 against bf16's range e^{+-87})


def _whole_tiles(columns: int) -> int:
    """``columns`` rounded up to a multiple of BF16_COLUMNS."""
    return -(-columns // BF16_COLUMNS) * BF16_COLUMNS


def bf16_inputs(X: Tensor) -> tuple[Tensor, Tensor]:
    """X: (S, n, d) -> (Xa, Xa^T), its bf16 copies for the products, made once per training: Xa (S, n, D) =
    [X | 1 | 0 ...] with D = d + 1 rounded up to BF16_COLUMNS (the ones column carries the bias), and Xa^T
    (S, D, n) contiguous (the gradient product's left factor)."""
    S, n, d = X.shape
    Xa = X.new_zeros((S, n, _whole_tiles(d + 1)), dtype=torch.bfloat16)
    Xa[:, :, :d], Xa[:, :, d] = X, 1
    return Xa, Xa.transpose(1, 2).contiguous()


def _fused_linear_relu(x: Tensor, w: Tensor) -> Tensor:
    """relu(x w^T) for 2-d bf16 x, w on the CPU: oneDNN's matmul with a relu post-op (one pass instead of two)."""
    return torch.ops.mkldnn._linear_pointwise(x, w, None, "relu", [], "")


@functools.cache
def fused_relu_available() -> bool:
    """Whether oneDNN has the bf16 matmul with a relu post-op here: on AVX-512 and AMX CPUs it does; where its
    kernels stop at AVX2 it cannot build that primitive (the plain bf16 product still works)."""
    if not torch.backends.mkldnn.is_available():
        return False
    try:
        probe = torch.ones(2, BF16_COLUMNS, dtype=torch.bfloat16)
        _fused_linear_relu(probe, probe)
    except RuntimeError:
        return False
    return True


def hidden_bf16(Xa: Tensor, W: Tensor, b: Tensor) -> Tensor:
    """Xa: (S, n, D) of ``bf16_inputs``, W: (S, width, d), b: (S, width) -> (S, n, C) bf16: relu(X W^T + b) from
    bf16 factors with float32 accumulation, rounded to bf16, in the first width columns; C is width + 1 rounded up to
    BF16_COLUMNS (whole AMX tiles: 2.05 against 2.42 ms at width 1000, n = 5196), the columns past width are 0 (the
    last is ``outputs_bf16``'s spare)."""
    S, width, d = W.shape
    Wa = W.new_zeros((S, _whole_tiles(width + 1), Xa.shape[2]), dtype=torch.bfloat16)
    Wa[:, :width, :d], Wa[:, :width, d] = W, b
    if Xa.device.type == "cpu" and fused_relu_available():
        if S == 1:
            return _fused_linear_relu(Xa[0], Wa[0])[None]
        return torch.stack([_fused_linear_relu(x, w) for x, w in zip(Xa, Wa, strict=True)])
    return torch.bmm(Xa, Wa.transpose(1, 2)).relu_()


def outputs_of_hidden_bf16(H: Tensor, v: Tensor) -> Tensor:
    """H: (S, n, C) of ``hidden_bf16``, v: (S, width) -> N(x_i) of each net: (S, n) in float32. On the CPU one pass
    over H with float32 products and sums (``fused_pass``); elsewhere ``outputs_bf16``."""
    if H.device.type == "cpu":
        from marginbench.models.fused_pass import outputs_cpu  # imports numba: bf16 on a CPU only

        return outputs_cpu(H, v)
    return outputs_bf16(H, v)


def outputs_bf16(H: Tensor, v: Tensor) -> Tensor:
    """H: (S, n, C) of ``hidden_bf16``, v: (S, width) -> N(x_i) of each net: (S, n) in float32.

    A bf16 product rounds its result to bf16 (8 bits: steps of 0.5 at a margin of 70), so it is taken twice:
    N0 = bf16(H v), then H v - N0 with N0 in H's spare (last) column and -1 in v's, whose rounding is 2^-9 of the
    difference; N0 + that difference in float32 is the float32 sum of the bf16 H and v. On trained nets (arc,
    loss 1e-30; d = 64 and 100, margins 72 ... 98) the largest error against float64 is 0.19 ... 0.23 so, the
    bf16 inputs' own, against 0.36 ... 0.39 from one rounded product."""
    S, _, columns = H.shape
    u = H.new_zeros((S, columns, 1))
    u[:, : v.shape[1], 0] = v
    first = torch.bmm(H, u)  # (S, n, 1) bf16
    H[:, :, -1:] = first
    u[:, -1, 0] = -1
    rest = torch.bmm(H, u)
    H[:, :, -1] = 0
    return first[:, :, 0].float() + rest[:, :, 0].float()


def full_pass_bf16(Xa: Tensor, W: Tensor, b: Tensor, v: Tensor, y: Tensor, last_s: Tensor | None, loss: str) -> tuple[Tensor, Tensor, Tensor | None]:
    """A full pass from bf16 products: Xa of ``bf16_inputs``, W, b, v, y (S, n) -> (H, q, shift): H (S, n, C) of
    ``hidden_bf16``, the margins q_i = y_i N(x_i) (S, n) in float32, and shift (S,) or None.

    On the CPU, given the last pass's s = log(-loss'(q)) (S, n), one pass over H (``fused_pass.margins_and_mask_cpu``)
    gives q and turns H into the step's weighted mask y_i e^{s_i - shift} 1[z_ij > 0], with shift the last pass's
    max_i s_i: softmax's shift, one step late (the step divides by e^{logsumexp(s) - shift} after the product).
    Where that shift is more than SHIFT_RANGE from this pass's max, H is made again (the weights could have left bf16's
    range, e^{+-87}); there, on the first pass and off the CPU, H stays relu(Z) and shift is None.
    """
    H = hidden_bf16(Xa, W, b)
    if last_s is None or H.device.type != "cpu":
        return H, y * outputs_of_hidden_bf16(H, v), None
    from marginbench.models.fused_pass import margins_and_mask_cpu

    shift = last_s.amax(1)
    q, top = margins_and_mask_cpu(H, v, y, shift, loss)
    if ((top - shift.double()).abs() <= SHIFT_RANGE).all():
        return H, q, shift
    return hidden_bf16(Xa, W, b), q, None


def margin_gradient_step_bf16(
    H: Tensor, XaT: Tensor, W: Tensor, b: Tensor, v: Tensor, s: Tensor, y: Tensor, shift: Tensor | None = None
) -> tuple[Tensor, Tensor, Tensor]:
    """``margin_gradient_step`` with weights softmax(s)_i y_i (s, y: (S, n)) from bf16 products: H (S, n, C) of
    ``full_pass_bf16`` (relu(Z), or with its shift the weighted mask), XaT (S, D, n) of ``bf16_inputs``, W, b, v
    float32 -> dW: (S, width, d), db, dv: (S, width) in float32. H becomes the weighted mask weights_i 1[z_ij > 0]
    in place (no fresh (n x C) buffer; on the CPU one pass, ``fused_pass.weighted_mask_cpu``).

    One product P = [X | 1]^T diag(weights) 1[Z > 0]: (S, D, C), i.e. G_j = sum_i w_i 1[z_ij > 0] x_i and
    c_j = sum_i w_i 1[z_ij > 0]. Then dW_j = v_j G_j, db_j = v_j c_j and, since relu(z_ij) = 1[z_ij > 0] (w_j . x_i
    + b_j), dv_j = sum_i w_i relu(z_ij) = w_j . G_j + b_j c_j: no pass over relu(Z) for dv.
    """
    width, d = W.shape[1], W.shape[2]
    if shift is not None:  # H holds y_i e^{s_i - shift} 1[z_ij > 0]: P is e^{logsumexp(s) - shift} times too large
        P, scale = torch.bmm(XaT, H), torch.exp(shift - torch.logsumexp(s, 1))[:, None]
    elif H.device.type == "cpu":
        from marginbench.models.fused_pass import weighted_mask_cpu

        P, scale = torch.bmm(XaT, weighted_mask_cpu(H, torch.softmax(s, 1) * y)), None  # (S, D, C) bf16
    else:
        weights = (torch.softmax(s, 1) * y).to(torch.bfloat16)
        P, scale = torch.bmm(XaT * weights[:, None, :], torch.gt(H, 0, out=H)), None
    Q = P.transpose(1, 2)[:, :width, : d + 1].float()  # (S, width, d + 1), rows contiguous: [G_j | c_j]
    G, c = Q[:, :, :d], Q[:, :, d]
    u = v if scale is None else v * scale  # the scale rides on width-long vectors, not on G
    dv = torch.linalg.vecdot(G, W) + c * b
    return G * u[:, :, None], c * u, dv if scale is None else dv * scale
