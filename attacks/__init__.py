"""Attacks: the papers' closed-form perturbations and generic minimal-norm searches.

Every attack is a callable (net, X, y) -> AttackResult; the public names are registered in
``marginbench.bench.registry.registries``.
"""
