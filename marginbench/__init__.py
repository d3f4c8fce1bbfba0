"""marginbench: minimal adversarial perturbation norms of two-layer ReLU networks, against sqrt(d).

The work lives in three subpackages, one per stage of the data flow:
``marginbench.models`` (datasets, networks, training, constructions, diagnostics),
``marginbench.attacks`` (perturbation finders) and ``marginbench.bench`` (specs, registries, runner,
result store, reports, CLI).
"""

__version__ = "0.1.0"
