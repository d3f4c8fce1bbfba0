"""marginbench: minimal adversarial perturbation norms of two-layer ReLU networks, against sqrt(d).

The work lives in three subpackages, one per stage of the data flow:
``marginbench.models`` (datasets, networks, training, constructions, diagnostics),
``marginbench.attacks`` (perturbation finders) and ``marginbench.bench`` (specs, registries, runner,
result store, reports, CLI).

The stable Python API is what this module exports (``from marginbench import ...``); the modules behind it
may move. Names are loaded on first use, so ``import marginbench.models`` stays light.

- registries: ``DATASETS``, ``MODELS``, ``ATTACKS``, ``TRAINING_PLANS``, ``PRESETS`` (``Registry``; each name
  knows its ``Source``); plugins: ``load_plugins`` (installed entry points, then modules or .py files),
  ``load_plugin``;
- writing an attack or a model: ``Attack``, ``AttackResult``, ``AttackUnavailable``, ``SharedPerturbation``,
  ``AttackFactory``, ``ModelFactory``, ``BuiltModel``, ``RunContext``, ``Dataset``, ``TwoLayerNet``,
  ``TrainingPlan``, ``TrainSpec``, ``TrainReport``, ``train``;
- running and reading: ``ExperimentSpec``, ``RunSpec``, ``ExecutorSpec``, ``run_sweep``, ``attack_directory``
  (attack the saved models of a result directory), ``read_results``, ``verify``, ``SpecError``.
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

# public name -> the module that defines it
_EXPORTS = {
    "ATTACKS": "marginbench.bench.registry",
    "DATASETS": "marginbench.bench.registry",
    "MODELS": "marginbench.bench.registry",
    "TRAINING_PLANS": "marginbench.bench.registry",
    "PRESETS": "marginbench.bench.presets",
    "Registry": "marginbench.bench.registry",
    "Attack": "marginbench.attacks.base",
    "AttackResult": "marginbench.attacks.base",
    "AttackUnavailable": "marginbench.attacks.base",
    "SharedPerturbation": "marginbench.attacks.base",
    "AttackFactory": "marginbench.bench.build",
    "ModelFactory": "marginbench.bench.build",
    "BuiltModel": "marginbench.bench.build",
    "RunContext": "marginbench.bench.build",
    "TrainingPlan": "marginbench.bench.build",
    "Dataset": "marginbench.models.datasets",
    "TwoLayerNet": "marginbench.models.two_layer",
    "TrainSpec": "marginbench.models.train",
    "TrainReport": "marginbench.models.train",
    "train": "marginbench.models.train",
    "RunSpec": "marginbench.bench.spec",
    "ExperimentSpec": "marginbench.bench.spec",
    "SpecError": "marginbench.bench.errors",
    "ExecutorSpec": "marginbench.bench.executors",
    "run_sweep": "marginbench.bench.sweep",
    "attack_directory": "marginbench.bench.reattack",
    "load_plugins": "marginbench.bench.plugins",
    "load_plugin": "marginbench.bench.plugins",
    "Source": "marginbench.bench.sources",
    "read_results": "marginbench.bench.report.results",
    "verify": "marginbench.bench.measure",
}
__all__ = [
    "ATTACKS",
    "DATASETS",
    "MODELS",
    "PRESETS",
    "TRAINING_PLANS",
    "Attack",
    "AttackFactory",
    "AttackResult",
    "AttackUnavailable",
    "BuiltModel",
    "Dataset",
    "ExecutorSpec",
    "ExperimentSpec",
    "ModelFactory",
    "Registry",
    "RunContext",
    "RunSpec",
    "SharedPerturbation",
    "Source",
    "SpecError",
    "TrainReport",
    "TrainSpec",
    "TrainingPlan",
    "TwoLayerNet",
    "__version__",
    "attack_directory",
    "load_plugin",
    "load_plugins",
    "read_results",
    "run_sweep",
    "train",
    "verify",
]

if TYPE_CHECKING:
    from marginbench.attacks.base import Attack, AttackResult, AttackUnavailable, SharedPerturbation
    from marginbench.bench.build import AttackFactory, BuiltModel, ModelFactory, RunContext, TrainingPlan
    from marginbench.bench.errors import SpecError
    from marginbench.bench.executors import ExecutorSpec
    from marginbench.bench.measure import verify
    from marginbench.bench.plugins import load_plugin, load_plugins
    from marginbench.bench.presets import PRESETS
    from marginbench.bench.reattack import attack_directory
    from marginbench.bench.registry import ATTACKS, DATASETS, MODELS, TRAINING_PLANS, Registry
    from marginbench.bench.report.results import read_results
    from marginbench.bench.sources import Source
    from marginbench.bench.spec import ExperimentSpec, RunSpec
    from marginbench.bench.sweep import run_sweep
    from marginbench.models.datasets import Dataset
    from marginbench.models.train import TrainReport, TrainSpec, train
    from marginbench.models.two_layer import TwoLayerNet


def __getattr__(name: str) -> Any:
    """PEP 562: load an exported name from its module on first use."""
    if name not in _EXPORTS:
        raise AttributeError(f"module 'marginbench' has no attribute {name!r}")
    value = getattr(import_module(_EXPORTS[name]), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *_EXPORTS])
