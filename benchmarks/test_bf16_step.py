"""pytest-benchmark for the bf16 gradient-descent step on the CPU (models/fused_pass.py, models/kernels.py): the step
with its one fused pass over H, and the same step with the two passes it replaced (outputs, then the weighted mask).

    python -m pytest benchmarks/test_bf16_step.py -m "not slow"     # d = 300, n = 5196, width 1000
    python -m pytest benchmarks/test_bf16_step.py                   # and d = 1000, n = 31,623 (the full grid's largest)

Each records the bf16 matmul yardstick measured in the same session (extra_info: matmul_gflops_bf16, the rate
``marginbench throughput`` uses) and the step's GFLOP: step_gflop / median / matmul_gflops_bf16 is the step's
fraction of the machine's bf16 rate.
"""

from __future__ import annotations

import pytest
import torch

from marginbench.bench.performance.yardsticks import precision_gflops
from marginbench.models.kernels import bf16_inputs, full_pass_bf16, margin_gradient_step_bf16, step_gflop

SHAPES = [(300, 5196, 1000), pytest.param((1000, 31623, 1000), marks=pytest.mark.slow, id="d1000-n31623-w1000")]
CPU = torch.device("cpu")


@pytest.fixture(params=SHAPES, ids=lambda s: f"d{s[0]}-n{s[1]}-w{s[2]}" if isinstance(s, tuple) else s)
def step_problem(request: pytest.FixtureRequest) -> dict:
    d, n, width = request.param
    g = torch.Generator().manual_seed(0)
    X = torch.randn(1, n, d, generator=g) / d**0.5
    Xa, XaT = bf16_inputs(X)
    return {
        "Xa": Xa, "XaT": XaT, "y": torch.randn(1, n, generator=g).sign(), "s": torch.randn(1, n, generator=g),
        "W": torch.randn(1, width, d, generator=g) / d**0.5, "b": torch.zeros(1, width),
        "v": torch.randn(1, width, generator=g) / width**0.5, "shape": (n, d, width),
    }  # fmt: skip


def _step(p: dict, fused: bool) -> tuple[torch.Tensor, ...]:
    H, _, shift = full_pass_bf16(p["Xa"], p["W"], p["b"], p["v"], p["y"], p["s"] if fused else None, "exp")
    return margin_gradient_step_bf16(H, p["XaT"], p["W"], p["b"], p["v"], p["s"], p["y"], shift)


@pytest.mark.parametrize("passes", ["one-pass", "two-passes"])
def test_bf16_gd_step(benchmark, step_problem, passes) -> None:
    benchmark.pedantic(_step, args=(step_problem, passes == "one-pass"), rounds=10, warmup_rounds=2)
    n, d, width = step_problem["shape"]  # the yardstick after the step: oneDNN warm, not its first call's set-up
    benchmark.extra_info.update(
        step_gflop=step_gflop(n, d, width), matmul_gflops_bf16=precision_gflops(n, d, width, CPU, "bf16"), threads=torch.get_num_threads()
    )
