"""The CUDA precisions on a GPU machine, in under 5 minutes on an H200: ``python benchmarks/gpu_check.py``.

1. What ``--precision auto`` chooses on the GPU, and why.
2. A small net (d = 32, n = d, width 128) and a medium one (d = 300, n = 300^1.5 = 5196, width 1000, the medium
   presets' heaviest cell) trained on cuda with the arc schedule to loss 1e-30 in float32, bf16 and tf32 (and
   float64 for the small one): seconds, steps, the normalized margin and its difference from the reference
   (float64 for the small net, float32 for the medium one).
3. The matmul yardstick and the training step at the medium shape in each precision (``throughput --sizes medium``).
4. The bf16 tests with device cuda (tests/test_paper_scale.py -k bf16).

Exit status 1 if a trained net misses its reference by more than the tests' BF16_PATH, or the tests fail.
"""

from __future__ import annotations

import math
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import torch

from marginbench.bench.performance.throughput import step_records
from marginbench.models.datasets import sphere
from marginbench.models.precision import choose_precision
from marginbench.models.train import TrainSpec, train
from marginbench.models.train_spec import ARC_LATE_STEP, arc_schedule
from marginbench.models.two_layer import pytorch_default_init

TOLERANCE = 2e-2  # tests/test_paper_scale.py's BF16_PATH


def trained(d: int, n: int, width: int, precisions: tuple[str, ...], device: torch.device) -> dict[str, tuple[float, int, float]]:
    """precision -> (seconds, steps, normalized margin) of the arc schedule to loss 1e-30 on ``device``."""
    data = sphere(d=d, n=n, seed=0).to(device)
    init = pytorch_default_init(d, width, generator=torch.Generator().manual_seed(0)).to(device)
    spec = arc_schedule(TrainSpec(), late_lr=ARC_LATE_STEP) if n > 2 * d else arc_schedule(TrainSpec())
    results = {}
    for precision in precisions:
        torch.cuda.synchronize()
        start = time.perf_counter()
        net, report = train(init, data.X, data.y, replace(spec, precision=precision))
        torch.cuda.synchronize()
        seconds = time.perf_counter() - start
        margin = float((data.y * net(data.X)).min()) / net.sq_norm()
        results[precision] = (seconds, report.iterations, margin)
        print(f"  {precision:8s} {seconds:7.2f} s  {report.iterations:5d} steps ({report.stop_reason})  normalized margin {margin:.6g}", flush=True)
    return results


def main() -> int:
    if not torch.cuda.is_available():
        print("no CUDA device: nothing to check")
        return 0
    device = torch.device("cuda")
    choice = choose_precision("auto", device)
    print(f"auto on {choice.hardware}: {choice.used} ({choice.reason})", flush=True)
    failed = False
    for (d, n, width), precisions, reference in (
        ((32, 32, 128), ("float64", "float32", "bf16", "tf32"), "float64"),
        ((300, 5196, 1000), ("float32", "bf16", "tf32"), "float32"),
    ):
        print(f"d={d} n={n} width={width}:", flush=True)
        results = trained(d, n, width, precisions, device)
        ref = results[reference][2]
        for precision, (_, _, margin) in results.items():
            diff = (margin - ref) / abs(ref)
            failed |= not (math.isfinite(diff) and abs(diff) <= TOLERANCE)
            print(f"  {precision:8s} margin vs {reference}: {100 * diff:+.3f}%", flush=True)
    print("matmul yardstick and training step at d=300 n=5196 width 1000:", flush=True)
    for record in step_records(device, (300, 5196, 1000)):
        fractions = ", ".join(f"{p} {f:.2f}" for p, f in (record.fraction_of_matmul_by_precision or {}).items())
        print(f"  {record.kernel:22s} {1e3 * record.seconds:8.3f} ms  {record.gflops:9.0f} GFLOP/s  {fractions}", flush=True)
    tests = Path(__file__).resolve().parent.parent / "tests" / "test_paper_scale.py"
    status = subprocess.call([sys.executable, "-m", "pytest", "-q", str(tests), "-k", "bf16", "-rs"])
    return int(failed or status != 0)


if __name__ == "__main__":
    sys.exit(main())
