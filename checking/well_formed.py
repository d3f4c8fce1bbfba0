"""What an attack returns, checked before the harness verifies it (``checking.verify``).

An attack's code may come from anyone (plugins, entry points). A malformed return is that attack's failure,
with the reason in one line (``BadProposal``), never the run's: the other attacks' rows are kept. What can be
made right without changing what the attack proposed is: a delta that requires grad is detached (the
harness reads values, never gradients), and a delta or mask of another floating dtype or device is moved to
the points' (float32 to float64 is exact, and the harness verifies and saves the very values it converted).
What would mean guessing is refused: a ``found`` that is not a bool mask (is 0.5 a yes?), a wrong shape, or
NaN/inf in a row proposed as a flip (an attack bug that would otherwise pass as "not flipped").
"""

from __future__ import annotations

import dataclasses
import numbers

import torch
from torch import Tensor

from marginbench.checking.proposal import AttackResult, SharedPerturbation

# the keys of an attack's row in summary.csv (bench/results/rows.py's attack_row) that an attack's extras must not replace
ROW_KEYS = frozenset(
    {
        "run_id",
        "attack",
        "attack_seconds",
        "common_c",
        "forward_passes_per_example",
        "backward_passes_per_example",
        "rejected_ties",
        "attack_status",
        "attack_error",
    }
)


class BadProposal(ValueError):
    """An attack returned something the harness cannot verify; the message says what, in one line."""


def _what(value: object) -> str:
    if isinstance(value, Tensor):
        return f"a {str(value.dtype).removeprefix('torch.')} tensor of shape {tuple(value.shape)}"
    return f"a {type(value).__name__}"


def _mask(value: object, n: int, name: str, like: Tensor) -> Tensor:
    if not (isinstance(value, Tensor) and value.dtype == torch.bool and tuple(value.shape) == (n,)):
        raise BadProposal(f"{name} must be a bool tensor of shape ({n},), got {_what(value)}")
    return value.to(like.device)


def _perturbation(value: object, name: str, like: Tensor) -> Tensor:
    if not (isinstance(value, Tensor) and value.is_floating_point() and value.shape == like.shape):
        raise BadProposal(f"{name} must be a floating tensor of shape {tuple(like.shape)}, got {_what(value)}")
    return value.detach().to(dtype=like.dtype, device=like.device)


def checked(result: object, X: Tensor, y: Tensor) -> AttackResult:
    """``result`` fit for verification on points X: (n, d), labels y: (n,); BadProposal where it is not."""
    if not isinstance(result, AttackResult):
        raise BadProposal(f"an attack returns an AttackResult, not {_what(result)}")
    n = y.shape[0]
    found = _mask(result.found, n, "found", X)
    delta = _perturbation(result.delta, "delta", X)
    bad = found & ~torch.isfinite(delta).all(dim=1)
    if bool(bad.any()):
        raise BadProposal(f"delta holds NaN or inf in {int(bad.sum())} of the rows that found proposes as flips")
    shared = result.shared
    if shared is not None:
        shared = SharedPerturbation(rows=_mask(shared.rows, n, "shared.rows", X), delta=_perturbation(shared.delta, "shared.delta", X))
    facts = {}
    for key, values in result.example_facts.items():
        if not (isinstance(values, Tensor) and tuple(values.shape) == (n,)):
            raise BadProposal(f"example fact {key!r} must be a tensor of shape ({n},), got {_what(values)}")
        facts[key] = values.detach()
    for key, value in result.extras.items():
        if key in ROW_KEYS or not isinstance(value, numbers.Real):
            raise BadProposal(f"extra {key!r} must be a number under a name of its own, got {_what(value)}")
    return dataclasses.replace(result, delta=delta, found=found, shared=shared, example_facts=facts)
