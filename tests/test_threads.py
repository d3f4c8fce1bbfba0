"""The thread rule (bench/performance/threads.py): which count a run gets for which size, and that the user's choice wins.
No timing here: the measurement behind the rule is benchmarks/thread_table.py, its target benchmarks/test_threads.py."""

from __future__ import annotations

import pytest
import torch

from marginbench.bench.cli import make_parser
from marginbench.bench.errors import SpecError
from marginbench.bench.execution.estimate import run_threads
from marginbench.bench.execution.executors import ExecutorSpec
from marginbench.bench.execution.runner import RunTask, compute_run
from marginbench.bench.experiment.spec import ExperimentSpec
from marginbench.bench.performance.threads import ONE_THREAD_BELOW_GFLOP, Threads, choose_threads, pool_share, user_threads, using
from marginbench.bench.registry.presets import PRESETS
from marginbench.models.train_spec import TrainSpec

NO_ENV: dict[str, str] = {}


@pytest.mark.parametrize("gflop", [0.0, 0.004, 0.36, 1.2, 0.99 * ONE_THREAD_BELOW_GFLOP])
def test_small_steps_get_one_thread_whatever_the_cores(gflop: float) -> None:
    assert choose_threads(gflop, share=16, environ=NO_ENV).count == 1


@pytest.mark.parametrize("share", [1, 2, 16])
def test_large_steps_get_the_process_share(share: int) -> None:
    assert choose_threads(ONE_THREAD_BELOW_GFLOP, share=share, environ=NO_ENV).count == share
    assert choose_threads(100.0, share=share, environ=NO_ENV).count == share


def test_the_share_defaults_to_torchs_thread_count() -> None:
    with using(Threads(count=3, why="test")):
        assert choose_threads(100.0, environ=NO_ENV).count == 3


def test_the_user_choice_wins_over_the_rule() -> None:
    assert choose_threads(0.004, requested=2, share=16, environ=NO_ENV) == Threads(count=2, why="--threads 2")
    assert choose_threads(100.0, share=16, environ={"OMP_NUM_THREADS": "1"}) == Threads(count=1, why="OMP_NUM_THREADS=1")
    assert choose_threads(0.004, share=16, environ={"OMP_NUM_THREADS": "4,2"}).count == 4  # OpenMP's nested form
    assert choose_threads(0.004, requested=3, environ={"OMP_NUM_THREADS": "1"}).count == 3  # the option over the variable


@pytest.mark.parametrize("value", ["", "0", "-1", "two", " "])
def test_an_unusable_omp_num_threads_leaves_the_rule(value: str) -> None:
    assert user_threads(None, {"OMP_NUM_THREADS": value}) is None


def test_the_default_run_gets_one_thread_and_the_largest_medium_run_the_cores(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    default = PRESETS.get("default").sweep("small")[0].runs()[0]
    assert (default.d, default.n, default.width) == (64, 64, 256)
    big = ExperimentSpec(family="kkt", d=300, alpha=1.5, width=1000, seeds=(0,)).runs()[0]  # n = 5196: 6.2 GFLOP per step
    with using(Threads(count=2, why="test")):
        assert run_threads(default, None).count == 1
        assert run_threads(big, None).count == 2
        assert run_threads(default, None, seeds=1000).count == 2  # a batch of seeds is one larger step
        assert run_threads(big, 1).count == 1


def test_using_restores_the_count() -> None:
    before = torch.get_num_threads()
    with using(Threads(count=1, why="test")):
        assert torch.get_num_threads() == 1
    assert torch.get_num_threads() == before


def test_pool_share_is_at_least_one() -> None:
    assert pool_share(1) >= 1 and pool_share(10_000) == 1


def test_threads_option_and_its_check() -> None:
    args = make_parser().parse_args(["run", "--out", "x", "--threads", "3"])
    assert args.threads == 3
    assert ExecutorSpec(threads=3).threads == 3
    with pytest.raises(SpecError, match="threads must be a positive integer"):
        ExecutorSpec(threads=0)


def test_a_run_records_its_threads_and_leaves_torchs_count_alone() -> None:
    spec = ExperimentSpec(family="kkt", d=8, alpha=1.0, width=8, models=("vanilla",), attacks=("universal-z",), seeds=(0,), train=TrainSpec(max_iters=20))
    before = torch.get_num_threads()
    task = RunTask(index=0, total=1, run=spec.runs()[0], attacks=("universal-z",), device=torch.device("cpu"), progress=False, threads=1)
    record = compute_run(task)
    assert record.manifest["threads"] == {"count": 1, "why": "--threads 1"}
    assert "  torch threads: 1 (--threads 1)" in record.log
    assert torch.get_num_threads() == before
