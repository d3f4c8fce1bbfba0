"""The bf16 step's passes over the hidden activations on the CPU (models/fused_pass.py): the outputs against a
float64 sum, the weighted mask exactly, the one-pass margins and mask against the two passes, the same bits at any
thread count, and the torch passes they replace."""

from __future__ import annotations

import pytest
import torch

from marginbench.models.fused_pass import margins_and_mask_cpu, outputs_cpu, weighted_mask_cpu
from marginbench.models.kernels import (
    BF16_COLUMNS,
    SHIFT_RANGE,
    bf16_inputs,
    full_pass_bf16,
    hidden_bf16,
    margin_gradient_step_bf16,
    outputs_bf16,
)
from marginbench.models.train_spec import log_neg_loss_derivative


def _hidden(S: int = 2, n: int = 300, d: int = 40, width: int = 70, seed: int = 0) -> tuple[torch.Tensor, ...]:
    g = torch.Generator().manual_seed(seed)
    X, W = torch.randn(S, n, d, generator=g) / d**0.5, torch.randn(S, width, d, generator=g)
    b, v = torch.randn(S, width, generator=g), torch.randn(S, width, generator=g) / width**0.5
    Xa, XaT = bf16_inputs(X)
    return hidden_bf16(Xa, W, b), XaT, W, b, v


def test_hidden_activations_are_padded_to_whole_tiles_with_zero_columns() -> None:
    H, *_ = _hidden(width=70)
    assert H.shape[2] == 96 and H.shape[2] % BF16_COLUMNS == 0
    assert (H[:, :, 70:] == 0).all() and (H[:, :, :70] > 0).any() and (H >= 0).all()


def test_outputs_are_the_float64_sum_of_the_bf16_activations_to_float32_rounding() -> None:
    H, _, _, _, v = _hidden()
    exact = (H[:, :, :70].double() * v.double()[:, None, :]).sum(2)
    scale = (H[:, :, :70].double() * v.double().abs()[:, None, :]).sum(2)  # sum of |terms|: float32's error bound
    N = outputs_cpu(H, v)
    assert N.dtype == torch.float32 and N.shape == (2, 300)
    assert ((N.double() - exact).abs() <= 1e-6 * scale + 1e-30).all()
    # torch's two bf16 products round v to bf16 first: the fused pass is closer to the exact sum
    torch_error = (outputs_bf16(H.clone(), v).double() - exact).abs().max()
    assert (N.double() - exact).abs().max() < torch_error


def test_the_weighted_mask_is_each_rows_bf16_weight_where_the_relu_is_on() -> None:
    H, *_ = _hidden()
    weights = torch.randn(2, 300, generator=torch.Generator().manual_seed(1)) * 1e-20  # tiny and signed, as softmax * y
    expected = torch.where(H > 0, weights.to(torch.bfloat16)[:, :, None], torch.zeros((), dtype=torch.bfloat16))
    A = weighted_mask_cpu(H, weights)
    assert A.data_ptr() == H.data_ptr() and torch.equal(A, expected)


def _labels(seed: int = 2) -> torch.Tensor:
    return torch.randn(2, 300, generator=torch.Generator().manual_seed(seed)).sign()


def test_the_gradient_is_the_torch_passes_gradient() -> None:
    H, XaT, W, b, v = _hidden()
    s, y = torch.randn(2, 300, generator=torch.Generator().manual_seed(2)), _labels()
    fused = margin_gradient_step_bf16(H.clone(), XaT, W, b, v, s, y)
    weights = torch.softmax(s, 1) * y
    width, d = W.shape[1], W.shape[2]
    P = torch.bmm(XaT * weights.to(torch.bfloat16)[:, None, :], (H > 0).to(torch.bfloat16))[:, : d + 1, :width].double()
    G, c = P[:, :d].transpose(1, 2), P[:, d]
    reference = (G * v.double()[:, :, None], c * v.double(), (G * W.double()).sum(2) + c * b.double())
    for got, want in zip(fused, reference, strict=True):  # both round each weight's product to bf16 (2^-9)
        assert torch.linalg.vector_norm(got.double() - want) <= 1e-2 * torch.linalg.vector_norm(want)


@pytest.mark.parametrize("loss", ["exp", "logistic"])
def test_one_pass_gives_the_two_passes_margins_and_mask_bit_for_bit(loss: str) -> None:
    H, _, _, _, v = _hidden(seed=4)
    y, shift = _labels(), torch.tensor([3.0, -2.0])  # a shift a step late: off this pass's max either way
    two = H.clone()
    q = y * outputs_cpu(two, v)
    s = log_neg_loss_derivative(q, loss)
    weighted_mask_cpu(two, y * torch.exp(s.double() - shift.double()[:, None]))
    q_one, top = margins_and_mask_cpu(H, v, y, shift, loss)
    assert torch.equal(q_one, q) and torch.equal(H.view(torch.int16), two.view(torch.int16))
    assert torch.allclose(top, s.amax(1).double(), rtol=1e-6)


def test_the_shifted_mask_gives_the_softmax_weights_gradient() -> None:
    """The fused pass's weights are softmax(s) y times e^{logsumexp(s) - shift}: the step takes that factor out."""
    _, XaT, W, b, v = _hidden()
    Xa = XaT.transpose(1, 2).contiguous()
    y = _labels()
    H, q, shift = full_pass_bf16(Xa, W, b, v, y, None, "exp")
    assert shift is None  # the first pass: no shift yet, H is relu(Z)
    s = log_neg_loss_derivative(q, "exp")
    reference = margin_gradient_step_bf16(H, XaT, W, b, v, s, y)
    last_s = s + torch.tensor([[5.0], [-7.0]])  # the last pass's s: its max lags this one's by -5 and +7
    H, q_fused, shift = full_pass_bf16(Xa, W, b, v, y, last_s, "exp")
    assert shift is not None and torch.equal(q_fused, q) and (H < 0).any()  # signed weights: y_i e^{s_i - shift}
    fused = margin_gradient_step_bf16(H, XaT, W, b, v, s, y, shift)
    for got, want in zip(fused, reference, strict=True):  # the weights round to bf16 from different values (2^-9)
        assert torch.linalg.vector_norm(got - want) <= 1e-2 * torch.linalg.vector_norm(want)


def test_a_shift_too_far_from_this_pass_gives_relu_z_again() -> None:
    """Weights e^{s_i - shift} beyond bf16's range would vanish or overflow: the pass is made again, unfused."""
    _, XaT, W, b, v = _hidden()
    Xa = XaT.transpose(1, 2).contiguous()
    y = _labels()
    H0, q, _ = full_pass_bf16(Xa, W, b, v, y, None, "exp")
    s = log_neg_loss_derivative(q, "exp")
    H, q_far, shift = full_pass_bf16(Xa, W, b, v, y, s + 2 * SHIFT_RANGE, "exp")
    assert shift is None and torch.equal(H, H0) and torch.equal(q_far, q)


@pytest.mark.parametrize("threads", [1, 2])
def test_the_passes_give_the_same_bits_at_any_thread_count(threads: int) -> None:
    H, _, _, _, v = _hidden(seed=3)
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one, (q, _) = outputs_cpu(H, v), margins_and_mask_cpu(H.clone(), v, _labels(), torch.zeros(2), "exp")
        torch.set_num_threads(threads)
        assert torch.equal(outputs_cpu(H, v), one) and torch.equal(margins_and_mask_cpu(H.clone(), v, _labels(), torch.zeros(2), "exp")[0], q)
    finally:
        torch.set_num_threads(before)


def test_a_tensor_that_is_not_contiguous_bf16_is_refused() -> None:
    H, _, _, _, v = _hidden()
    with pytest.raises(ValueError, match="contiguous bfloat16"):
        outputs_cpu(H.float(), v)
    with pytest.raises(ValueError, match="contiguous bfloat16"):
        weighted_mask_cpu(H.transpose(1, 2), torch.ones(2, 96))
    with pytest.raises(ValueError, match="unknown loss 'hinge'"):
        margins_and_mask_cpu(H, v, torch.ones(2, 300), torch.zeros(2), "hinge")
