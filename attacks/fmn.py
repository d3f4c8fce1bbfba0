"""Fast Minimum-Norm attack, L2 (Pintor, Roli, Brendel, Biggio, NeurIPS 2021, Algorithm 1), native.

Foolbox 3.3.4's ``L2FMNAttack`` never projects onto its eps-ball (its L2 projection multiplies by
``norms / norms``, always 1), so it returns whatever norm its steps reach; ``fb-fmn`` keeps that behaviour
for comparison and this module implements the algorithm as published. With the loss
L(delta) = s N(x + delta), s = sign N(x) (the logit difference of [-N, N] up to the factor 2, which the
updates below do not see), each iteration k = 1..K does
    if x + delta is adversarial (L < 0):   keep delta if it is the smallest so far;
                                           eps <- min(eps (1 - gamma_k), ||delta*||)
    elif an adversarial point was found:   eps <- eps (1 + gamma_k)
    else:                                  eps <- ||delta|| + |L| / ||grad L||   (linear distance estimate)
    delta <- delta - alpha_k grad L / ||grad L||            (normalized L2 step toward the boundary)
    delta <- delta min(1, eps / ||delta||)                   (projection onto the eps-ball: the step
                                                              Foolbox skips)
with alpha_k and gamma_k cosine-annealed from their initial to their final values (the paper's Section 3
and its reference code). The answer is delta*, the smallest strictly adversarial iterate. There is no box
constraint here (the data have no bounded domain), so the paper's clipping step is the identity.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from marginbench.checking.flips import PROPOSAL_TAUS, rounding_bound
from marginbench.checking.proposal import SEARCH_RADIUS, AttackResult
from marginbench.models.two_layer import TwoLayerNet


@dataclass(frozen=True, kw_only=True)
class FMN:
    """Native L2 FMN; all examples batched.

    Args:
        steps: iterations K (the paper's default for L2 is 1000 on images; 200 suffices for these nets).
        alpha_init: initial step alpha_0 in units of sqrt(d). The reference alpha_0 = 1 is for [0, 1]
            images, whose norm is about a third of sqrt(d); 0.1 sqrt(d) is the same relative step for data
            of norm sqrt(d).
        alpha_final: final step, as a fraction of alpha_0 (the reference: alpha_0 / 100).
        gamma_init: initial relative eps change gamma_0 (the paper: 0.05).
        gamma_final: final gamma (the reference: 0.001), which sets the final precision of eps.
        max_norm_factor: eps never exceeds max_norm_factor * sqrt(d) (the reference caps eps at the
            largest norm inside the image box).
    """

    steps: int = 200  # iterations K
    alpha_init: float = 0.1  # alpha_0 = 0.1 sqrt(d)
    alpha_final: float = 0.01  # alpha_K = alpha_0 / 100
    gamma_init: float = 0.05  # the paper's gamma_0
    gamma_final: float = 0.001  # the reference code's final gamma
    max_norm_factor: float = SEARCH_RADIUS  # eps <= 10 sqrt(d)

    def __call__(self, net: TwoLayerNet, X: Tensor, y: Tensor) -> AttackResult:
        """X: (n, d), y: (n,) -> the smallest strictly flipping iterate per example (labels unused)."""
        n, d = X.shape
        tiny = torch.finfo(X.dtype).tiny
        s = torch.sign(net(X))  # (n,)
        alpha0 = self.alpha_init * math.sqrt(d)
        worst = self.max_norm_factor * math.sqrt(d)
        delta = torch.zeros_like(X)
        best = torch.zeros_like(X)
        best_norm = X.new_full((n,), math.inf)
        eps = X.new_zeros(n)
        found = torch.zeros(n, dtype=torch.bool, device=X.device)
        for k in range(self.steps + 1):
            cosine = (1.0 + math.cos(math.pi * k / self.steps)) / 2.0
            alpha = alpha0 * (self.alpha_final + (1.0 - self.alpha_final) * cosine)
            gamma = self.gamma_final + (self.gamma_init - self.gamma_final) * cosine
            dx = delta.detach().requires_grad_(True)
            loss = s * net(X + dx)  # (n,) < -PROPOSAL_TAUS tau: a flip the harness will confirm
            (g,) = torch.autograd.grad(loss.sum(), dx)
            loss = loss.detach()
            norm = delta.norm(dim=1)
            adversarial = (loss < -PROPOSAL_TAUS * rounding_bound(net, X + delta)) & (s != 0)
            smaller = adversarial & (norm < best_norm)
            best = torch.where(smaller[:, None], delta, best)
            best_norm = torch.where(smaller, norm, best_norm)
            found |= adversarial
            if k == self.steps:
                break
            g_norm = g.norm(dim=1)
            to_boundary = norm + loss.abs() / g_norm.clamp_min(tiny)
            eps = torch.where(
                adversarial,
                torch.minimum(eps * (1.0 - gamma), best_norm),
                torch.where(found, eps * (1.0 + gamma), to_boundary),
            ).clamp(max=worst)
            delta = delta - alpha * g / g_norm.clamp_min(tiny)[:, None]
            delta = delta * torch.clamp(eps / delta.norm(dim=1).clamp_min(tiny), max=1.0)[:, None]
        return AttackResult(delta=best, found=best_norm.isfinite())
