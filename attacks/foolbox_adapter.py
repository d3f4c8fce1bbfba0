"""Foolbox 3.3.4 L2 minimization attacks behind the one interface, through two logits [-N(x), N(x)].

The binary net becomes a two-class model with logits -N(x) and N(x), and "misclassified" is a change of
sign. Foolbox decides by argmax, which resolves a tie (N = 0) to the first logit; with the fixed order
[-N, N] a point on N = 0 would count as adversarial for every example with N(x) > 0, and on the Theorem 3.1
construction (whole regions where N = 0) Boundary would settle there. So examples are attacked in two
batches, each with its own class's logit first: [N, -N] for N(x) > 0 and [-N, N] for N(x) < 0, label 0.
A tie then never counts as adversarial, as in the harness's strict criterion N(x) N(x + delta) < 0 (which
still checks every answer).

Bounds. Foolbox needs a finite box [lo, hi] and clips every candidate to it. We take
    lo = min_{i,k} X_ik - R,   hi = max_{i,k} X_ik + R,   R = bound_factor * sqrt(d),
so for any perturbation with ||delta||_2 <= R, every coordinate |delta_k| <= ||delta||_2 <= R and x + delta
stays in the box: clipping is the identity on every answer of norm <= R = 10 sqrt(d), the same range in
which every other attack searches (the data have norm sqrt(d)). No answer of interest is ever clipped.

Boundary and Brendel-Bethge start from an adversarial point: the nearest attacked point of the other sign
(a strict flip by definition). Examples with no such point are not attacked by them.

``import foolbox`` runs GitPython's check for a ``git`` program and fails on machines without one unless
GIT_PYTHON_REFRESH=quiet is set first: ``_foolbox()`` sets it (without overriding a user's value). Foolbox
and numba are optional (``pip install 'marginbench[foolbox]'``); without them these attacks raise
``AttackUnavailable`` with one line, and the runner records that and goes on.
"""

from __future__ import annotations

import importlib.util
import math
import os
from dataclasses import dataclass
from types import ModuleType
from typing import TYPE_CHECKING

import torch
from torch import Tensor

from marginbench.attacks.base import AttackUnavailable
from marginbench.checking.flips import overshoot
from marginbench.checking.proposal import SEARCH_RADIUS, AttackResult
from marginbench.models.two_layer import TwoLayerNet

if TYPE_CHECKING:
    from foolbox.attacks.base import MinimizationAttack


def _foolbox() -> ModuleType:
    """Import foolbox (setting GIT_PYTHON_REFRESH=quiet first), or raise AttackUnavailable in one line."""
    os.environ.setdefault("GIT_PYTHON_REFRESH", "quiet")
    try:
        import foolbox
    except ImportError as err:
        raise AttackUnavailable(f"foolbox is not installed ({err}); pip install 'marginbench[foolbox]'") from None
    return foolbox


class TwoLogits(torch.nn.Module):
    """x: (n, d) -> (n, 2) logits [own N(x), -own N(x)]: [-N, N] for own = -1, [N, -N] for own = +1."""

    def __init__(self, net: TwoLayerNet, own: float) -> None:
        super().__init__()
        self.net = net
        self.own = own

    def forward(self, x: Tensor) -> Tensor:
        out = self.own * self.net(x)
        return torch.stack([out, -out], dim=1)


@dataclass(frozen=True, kw_only=True)
class FoolboxL2:
    """Run one Foolbox L2 minimization attack; subclasses say which one and with what settings.

    Args:
        bound_factor: R in units of sqrt(d); the box is [min X - R, max X + R] (see the module docstring).
        seed: Foolbox draws from torch's global generator (Boundary's random steps); the attack runs inside
            ``torch.random.fork_rng`` seeded with this, so results repeat and the caller's state is untouched.
    """

    bound_factor: float = SEARCH_RADIUS  # box margin R = 10 sqrt(d): no answer of norm <= R is clipped
    seed: int = 0  # torch's global generator, forked and seeded for the attack
    needs_start = False  # class attribute: start from an adversarial point (Boundary, Brendel-Bethge)

    def make(self, fb: ModuleType) -> MinimizationAttack:
        raise NotImplementedError

    def __call__(self, net: TwoLayerNet, X: Tensor, y: Tensor) -> AttackResult:
        """X: (n, d), y: (n,) -> Foolbox's clipped answers minus X (labels unused: the class is sign N(x))."""
        fb = _foolbox()
        n, d = X.shape
        N0 = net(X)
        s = torch.sign(N0)
        start, has_start = nearest_other_side(X, s) if self.needs_start else (X, torch.ones_like(s, dtype=torch.bool))
        delta = torch.zeros_like(X)
        found = torch.zeros(n, dtype=torch.bool, device=X.device)
        R = self.bound_factor * math.sqrt(d)
        bounds = (float(X.min()) - R, float(X.max()) + R)
        attack = self.make(fb)
        with torch.random.fork_rng(devices=[X.device] if X.device.type == "cuda" else []):
            torch.manual_seed(self.seed)
            for own in (1.0, -1.0):  # each batch with its own class's logit first: a tie is no flip
                rows = ((s == own) & has_start).nonzero(as_tuple=True)[0]
                if rows.numel() == 0:
                    continue
                model = fb.PyTorchModel(TwoLogits(net, own).eval(), bounds=bounds, device=X.device)
                labels = torch.zeros(rows.numel(), dtype=torch.long, device=X.device)  # class 0: the own sign
                if self.needs_start:
                    _, clipped, success = attack(model, X[rows], labels, epsilons=None, starting_points=start[rows])
                else:
                    _, clipped, success = attack(model, X[rows], labels, epsilons=None)
                delta[rows] = clipped - X[rows]
                found[rows] = success
        # Foolbox stops on its own argmax, i.e. on the boundary: step past it by the rounding bound
        return AttackResult(delta=overshoot(net, X, delta, found), found=found)


def nearest_other_side(X: Tensor, s: Tensor) -> tuple[Tensor, Tensor]:
    """For X: (n, d) with signs s: (n,), the nearest row of the strictly opposite sign (n, d), and (n,) bool
    whether one exists (rows without one get x itself)."""
    D = torch.where(s[:, None] * s[None, :] < 0, torch.cdist(X, X), math.inf)
    dist, idx = D.min(dim=1)
    has = dist.isfinite()
    return torch.where(has[:, None], X[idx], X), has


@dataclass(frozen=True, kw_only=True)
class FbFMN(FoolboxL2):
    """``L2FMNAttack`` exactly as Foolbox 3.3.4 ships it (it never projects onto its eps-ball; see ``fmn``).

    Args:
        steps: iterations (Foolbox's default).
    """

    steps: int = 100  # Foolbox default

    def make(self, fb: ModuleType) -> MinimizationAttack:
        return fb.attacks.L2FMNAttack(steps=self.steps)


@dataclass(frozen=True, kw_only=True)
class FbDDN(FoolboxL2):
    """Decoupled Direction and Norm (Rony et al. 2019), ``DDNAttack``.

    Args:
        steps: iterations (Foolbox's default 100).
        init_epsilon: initial norm budget (1.0, Foolbox's default; it adapts by gamma per step).
        gamma: relative budget change per step (Foolbox's default).
    """

    steps: int = 100  # Foolbox default
    init_epsilon: float = 1.0  # Foolbox default
    gamma: float = 0.05  # Foolbox default

    def make(self, fb: ModuleType) -> MinimizationAttack:
        return fb.attacks.DDNAttack(init_epsilon=self.init_epsilon, steps=self.steps, gamma=self.gamma)


@dataclass(frozen=True, kw_only=True)
class FbDeepFool(FoolboxL2):
    """``L2DeepFoolAttack`` (Moosavi-Dezfooli et al. 2016) with both classes as candidates.

    Args:
        steps: iterations (Foolbox's default).
        overshoot: relative overshoot past the linearized boundary (Foolbox's default).
    """

    steps: int = 50  # Foolbox default
    overshoot: float = 0.02  # Foolbox default

    def make(self, fb: ModuleType) -> MinimizationAttack:
        return fb.attacks.L2DeepFoolAttack(steps=self.steps, candidates=2, overshoot=self.overshoot)


@dataclass(frozen=True, kw_only=True)
class FbCW(FoolboxL2):
    """``L2CarliniWagnerAttack`` (Carlini & Wagner 2017), tuned for these nets (see the CLI help).

    Foolbox's defaults (initial_const 1e-3, stepsize 1e-2 in tanh space) were made for [0, 1] images; over the
    wide box required here (see ``bound_factor``) a step in tanh space moves x by about (hi - lo)/2 times as
    much, and a tiny constant leaves the distance term in charge, so the defaults return norms hundreds of
    times DDN's. The settings below start with a constant that already makes the margin term matter and take
    steps small relative to the box.

    Args:
        binary_search_steps: searches over the constant c (Foolbox's default 9).
        steps: Adam iterations per constant.
        stepsize: Adam step in tanh space.
        initial_const: the first c.
    """

    binary_search_steps: int = 9  # Foolbox default
    steps: int = 500  # Foolbox default 10000; early abort makes most runs far shorter
    stepsize: float = 1e-3  # Foolbox default 1e-2
    initial_const: float = 1.0  # Foolbox default 1e-3

    def make(self, fb: ModuleType) -> MinimizationAttack:
        return fb.attacks.L2CarliniWagnerAttack(
            binary_search_steps=self.binary_search_steps, steps=self.steps, stepsize=self.stepsize, initial_const=self.initial_const
        )


@dataclass(frozen=True, kw_only=True)
class FbBoundary(FoolboxL2):
    """``BoundaryAttack`` (Brendel et al. 2018), decision-based, from the nearest other-side point.

    Args:
        steps: iterations (Foolbox's default 25000 is minutes per batch; 2000 is enough to compare).
    """

    steps: int = 2000  # Foolbox default 25000
    needs_start = True

    def make(self, fb: ModuleType) -> MinimizationAttack:
        return fb.attacks.BoundaryAttack(steps=self.steps)


@dataclass(frozen=True, kw_only=True)
class FbBrendelBethge(FoolboxL2):
    """``L2BrendelBethgeAttack`` (Brendel et al. 2019), from the nearest other-side point; needs numba.

    Args:
        steps: iterations (Foolbox's default 1000).
    """

    steps: int = 200  # Foolbox default 1000
    needs_start = True

    def __call__(self, net: TwoLayerNet, X: Tensor, y: Tensor) -> AttackResult:
        if importlib.util.find_spec("numba") is None:
            raise AttackUnavailable("numba is not installed; pip install 'marginbench[foolbox]'")
        return super().__call__(net, X, y)

    def make(self, fb: ModuleType) -> MinimizationAttack:
        return fb.attacks.L2BrendelBethgeAttack(steps=self.steps)
