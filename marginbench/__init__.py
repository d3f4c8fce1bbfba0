"""marginbench: minimal adversarial perturbation norms of two-layer ReLU networks, against sqrt(d).

The work lives in three subpackages, one per stage of the data flow:
``marginbench.models`` (datasets, networks, training, constructions, diagnostics),
``marginbench.attacks`` (perturbation finders) and ``marginbench.bench`` (specs, registries, runner,
result store, reports, CLI).

The stable Python API is what this module exports (``from marginbench import ...``); the modules behind it
may move. Names are loaded on first use, so ``import marginbench.models`` stays light.

- registries: ``DATASETS``, ``MODELS``, ``ATTACKS``, ``TRAINING_PLANS``, ``PRESETS`` (``Registry``; each name
  knows its ``Source``; a model's or an attack's capabilities are its ``ModelEntry`` or ``AttackEntry``);
  plugins: ``load_plugins`` (installed entry points, then modules or .py files), ``load_plugin``;
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
    "ATTACKS": "marginbench.bench.registry.registries",
    "DATASETS": "marginbench.bench.registry.registries",
    "MODELS": "marginbench.bench.registry.registries",
    "TRAINING_PLANS": "marginbench.bench.registry.registries",
    "PRESETS": "marginbench.bench.registry.presets",
    "Registry": "marginbench.bench.registry.registries",
    "ModelEntry": "marginbench.bench.registry.entries",
    "AttackEntry": "marginbench.bench.registry.entries",
    "Attack": "marginbench.attacks.base",
    "AttackResult": "marginbench.checking.proposal",
    "AttackUnavailable": "marginbench.attacks.base",
    "SharedPerturbation": "marginbench.checking.proposal",
    "AttackFactory": "marginbench.bench.experiment.recipes",
    "ModelFactory": "marginbench.bench.experiment.recipes",
    "BuiltModel": "marginbench.bench.experiment.recipes",
    "RunContext": "marginbench.bench.experiment.recipes",
    "TrainingPlan": "marginbench.bench.experiment.recipes",
    "Dataset": "marginbench.models.datasets",
    "TwoLayerNet": "marginbench.models.two_layer",
    "TrainSpec": "marginbench.models.train",
    "TrainReport": "marginbench.models.train",
    "train": "marginbench.models.train",
    "RunSpec": "marginbench.bench.experiment.spec",
    "ExperimentSpec": "marginbench.bench.experiment.spec",
    "SpecError": "marginbench.bench.errors",
    "ExecutorSpec": "marginbench.bench.execution.executors",
    "run_sweep": "marginbench.bench.execution.sweep",
    "attack_directory": "marginbench.bench.execution.reattack",
    "load_plugins": "marginbench.bench.registry.plugins",
    "load_plugin": "marginbench.bench.registry.plugins",
    "Source": "marginbench.bench.registry.provenance",
    "read_results": "marginbench.bench.results.readback",
    "verify": "marginbench.checking.verify",
}
__all__ = [
    "ATTACKS",
    "DATASETS",
    "MODELS",
    "PRESETS",
    "TRAINING_PLANS",
    "Attack",
    "AttackEntry",
    "AttackFactory",
    "AttackResult",
    "AttackUnavailable",
    "BuiltModel",
    "Dataset",
    "ExecutorSpec",
    "ExperimentSpec",
    "ModelEntry",
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
    from marginbench.attacks.base import Attack, AttackUnavailable
    from marginbench.bench.errors import SpecError
    from marginbench.bench.execution.executors import ExecutorSpec
    from marginbench.bench.execution.reattack import attack_directory
    from marginbench.bench.execution.sweep import run_sweep
    from marginbench.bench.experiment.recipes import AttackFactory, BuiltModel, ModelFactory, RunContext, TrainingPlan
    from marginbench.bench.experiment.spec import ExperimentSpec, RunSpec
    from marginbench.bench.registry.entries import AttackEntry, ModelEntry
    from marginbench.bench.registry.plugins import load_plugin, load_plugins
    from marginbench.bench.registry.presets import PRESETS
    from marginbench.bench.registry.provenance import Source
    from marginbench.bench.registry.registries import ATTACKS, DATASETS, MODELS, TRAINING_PLANS, Registry
    from marginbench.bench.results.readback import read_results
    from marginbench.checking.proposal import AttackResult, SharedPerturbation
    from marginbench.checking.verify import verify
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
