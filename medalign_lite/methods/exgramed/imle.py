"""ExGra-Med §3.4, learning through the solver: perturb-and-MAP with the blackbox / I-MLE
gradient, as a surrogate loss.

The solver's output y(θ) = argmin_X f_θ(X) is piecewise constant in the costs θ, so autograd
gives nothing. The official code (BB-GM's LPMP module) does this instead:

1. **Perturb** (:func:`gumbel`): ε ~ Gumbel(0, β), β = 0.05, added to the unary costs; y =
   MAP(θ + ε). The node noise is drawn once per step and shared by every matching of the step
   (``shared_noise``); the official code also perturbs each edge-pair cost, which needs the
   E×E tensor this package never builds: we perturb the unary costs only.
2. **Loss** (:func:`hamming`): the Hamming distance to the identity T (sample i ↔ sample i),
   L(y) = Σ_ia [y_ia (1 − T_ia) + (1 − y_ia) T_ia] / N, whose gradient is ∂L/∂y = (1 − 2T)/N.
3. **Target solve**: y′ = MAP(θ + ε + λ ∂L/∂y) with the same ε, λ = 80.
4. **Gradient**: ∂L/∂θ ≈ (y′ − y)/λ for the unary costs and, for the quadratic costs (a cost
   per edge pair), the same difference of the induced edge-pair indicators. This is Vlastelica
   et al.'s blackbox rule, which with Gumbel noise and one sample is I-MLE (Niepert et al.,
   2021) with target θ′ = θ − λ ∂L/∂y, scaled by 1/λ.

**The surrogate** (:func:`blackbox_surrogate`): f_θ(X) = ⟨U, X⟩ + Σ q X X is linear in every
cost, so

    s = (f_θ(y′) − f_θ(y)) / λ,      ∂s/∂U = (y′ − y)/λ,      ∂s/∂q = (y′y′ᵀ − yyᵀ)/λ

is exactly that gradient, and chain rule carries it through whatever computed the costs (the
GNN, the cosines, the weighted adjacencies) — with the factorised quadratic term, and with no
custom ``autograd.Function``. The loss returned is L(y) + (s − s.detach()): its value is the
Hamming loss, its gradient the blackbox one.
"""
from __future__ import annotations

import torch

from .matching import QuadraticCost, matching_cost, solve

__all__ = ["blackbox_surrogate", "gumbel", "hamming", "hamming_grad"]


def gumbel(shape: tuple[int, ...], scale: float, *, device=None, generator: torch.Generator | None = None,
           loc: float = 0.0) -> torch.Tensor:
    """ε ~ Gumbel(loc, scale): loc − scale · log(−log u), u ~ U(0, 1) (float32; ``generator``
    seeds it, else torch's global generator, which the trainer seeds and checkpoints)."""
    u = torch.rand(shape, device=device, generator=generator).clamp(1e-10, 1 - 1e-7)
    return loc - scale * torch.log(-torch.log(u))


def hamming(y: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """L = Σ_ia [y (1 − t) + (1 − y) t] / N over the last two dims (…, N, N) → (…)
    (the official ``errors.mean(0).sum()``)."""
    return (y * (1 - target) + (1 - y) * target).sum((-1, -2)) / y.shape[-1]


def hamming_grad(target: torch.Tensor) -> torch.Tensor:
    """∂L/∂y of :func:`hamming`: (1 − 2T)/N."""
    return (1 - 2 * target) / target.shape[-1]


def blackbox_surrogate(unary: torch.Tensor, quad: QuadraticCost | None, target: torch.Tensor, noise: torch.Tensor,
                       lam: float = 80.0, solver: str = "ipfp", max_iter: int = 20
                       ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Hamming loss of the perturbed matching with the blackbox / I-MLE gradient.

    Args:
        unary: U (P, N, N), differentiable; ``quad``: its quadratic term (or None: a LAP).
        target: T (N, N) or (P, N, N), the wanted matching.
        noise: ε broadcastable to (S, P, N, N) (S samples; (S, 1, N, N) shares it over problems).
        lam: λ, the interpolation strength of the target solve.
        solver, max_iter: see :func:`~.matching.solve`.

    Returns:
        (loss (S, P): L(y) + s − s.detach(), y (S, P, N, N), y′ (S, P, N, N)).
    """
    if lam <= 0:
        raise ValueError(f"lam must be > 0, got {lam}")
    u_pert = (unary.detach() + noise).expand(*noise.shape[:-3], *unary.shape)   # (S, P, N, N)
    u_target = u_pert + lam * hamming_grad(target)
    # one batched solve for the perturbed and the target problems (2·S·P at once)
    y, y_target = solve(torch.cat([u_pert, u_target]), quad, solver, max_iter).chunk(2)
    s = (matching_cost(y_target, unary, quad) - matching_cost(y, unary, quad)) / lam
    return hamming(y, target) + (s - s.detach()), y, y_target
