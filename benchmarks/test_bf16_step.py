"""pytest-benchmark for the bf16 gradient-descent step on the CPU (models/fused_pass.py, models/kernels.py): the step
with its one fused pass over H, the same step with the two passes it replaced (outputs, then the weighted mask), and
the step's two bare bf16 products, the yardstick, timed in the same session.

    python -m pytest benchmarks/test_bf16_step.py -m "not slow"     # d = 300, n = 5196, width 1000
    python -m pytest benchmarks/test_bf16_step.py                   # and d = 1000, n = 31,623 (the full grid's largest)

Read the step's median as a fraction of the products' (extra_info names the shape and the threads).
"""

from __future__ import annotations

import pytest
import torch

from marginbench.models.kernels import _whole_tiles, bf16_inputs, full_pass_bf16, hidden_bf16, margin_gradient_step_bf16

SHAPES = [(300, 5196, 1000), pytest.param((1000, 31623, 1000), marks=pytest.mark.slow, id="d1000-n31623-w1000")]


@pytest.fixture(params=SHAPES, ids=lambda s: f"d{s[0]}-n{s[1]}-w{s[2]}" if isinstance(s, tuple) else s)
def step_problem(request: pytest.FixtureRequest) -> dict:
    d, n, width = request.param
    g = torch.Generator().manual_seed(0)
    X = torch.randn(1, n, d, generator=g) / d**0.5
    Xa, XaT = bf16_inputs(X)
    return {
        "Xa": Xa, "XaT": XaT, "y": torch.randn(1, n, generator=g).sign(), "s": torch.randn(1, n, generator=g),
        "W": torch.randn(1, width, d, generator=g) / d**0.5, "b": torch.zeros(1, width),
        "v": torch.randn(1, width, generator=g) / width**0.5, "shape": f"d{d}-n{n}-w{width}",
    }  # fmt: skip


def _step(p: dict, fused: bool) -> tuple[torch.Tensor, ...]:
    H, _, shift = full_pass_bf16(p["Xa"], p["W"], p["b"], p["v"], p["y"], p["s"] if fused else None, "exp")
    return margin_gradient_step_bf16(H, p["XaT"], p["W"], p["b"], p["v"], p["s"], p["y"], shift)


def _products(p: dict) -> None:
    Wa = p["W"].new_zeros((1, _whole_tiles(p["W"].shape[1] + 1), p["Xa"].shape[2]), dtype=torch.bfloat16)
    torch.bmm(p["XaT"], torch.bmm(p["Xa"], Wa.transpose(1, 2)))


@pytest.mark.parametrize("passes", ["one-pass", "two-passes"])
def test_bf16_gd_step(benchmark, step_problem, passes) -> None:
    benchmark.extra_info.update(shape=step_problem["shape"], threads=torch.get_num_threads())
    benchmark.pedantic(_step, args=(step_problem, passes == "one-pass"), rounds=10, warmup_rounds=2)


def test_bf16_gd_step_products_only(benchmark, step_problem) -> None:
    hidden_bf16(step_problem["Xa"], step_problem["W"], step_problem["b"])  # oneDNN's primitives built before timing
    benchmark.extra_info.update(shape=step_problem["shape"], threads=torch.get_num_threads())
    benchmark.pedantic(_products, args=(step_problem,), rounds=10, warmup_rounds=2)
