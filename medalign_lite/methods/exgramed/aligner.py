"""ExGra-Med's alignment loss: M modality graphs matched to their barycenter graph, both ways.

For node matrices Z_1 … Z_M (N, D) of one batch (image, instruction response, extended
caption: M = 3):

1. Z_b = (1/M) Σ_m Z_m (:func:`~.graphs.barycenter`).
2. The 2M ordered pairs (Z_m → Z_b) and (Z_b → Z_m), stacked as P = 2M problems: the first
   graph's kNN topology, shared by the second (:func:`~.graphs.pair_topology`).
3. The shared GNN on all 2P graphs at once; unary costs from node cosines; the factorised
   quadratic term from the raw node features and the weighted adjacencies.
4. Perturb-and-MAP with the blackbox / I-MLE surrogate against the identity
   (:func:`~.imle.blackbox_surrogate`), all 2·S·P solves in one batched call.
5. L_align = mean over the P problems (and S samples) = (1/M) Σ_m ½ (L_{m→b} + L_{b→m}), the
   official average.

The GNN runs in its parameters' dtype (bf16 in a bf16 model); the barycenter, the topology, the
costs, the solver and the loss in float32 (the loss is float32 whatever the inputs), on the
inputs' device, except the LAP calls inside the solver (scipy, CPU).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from .graphs import Graphs, SharedGNN, barycenter, edge_weights, pair_topology
from .imle import blackbox_surrogate, gumbel
from .matching import SOLVERS, QuadraticCost, unary_cost

__all__ = ["AlignmentOutput", "BarycenterGraphAligner"]


@dataclass
class AlignmentOutput:
    """What one alignment step computed (P = 2M ordered pairs, N nodes).

    Attributes:
        loss: L_align, float32 scalar (value: the mean Hamming loss; gradient: blackbox).
        hamming: (P,) mean Hamming loss per pair (detached).
        accuracy: mean diagonal of the matchings, over pairs and samples (detached scalar).
        matchings: (P, N, N) the first sample's perturbed matching y per pair (detached).
        targets: (P, N, N) its target solve y′ (detached).
        pairs: P (source, destination) names, e.g. ("image", "barycenter").
        nodes: (M + 1, N, D) the modality node matrices and the barycenter last (detached).
        adjacency: (P, N, N) the topology of each pair's first graph (shared by the second
            with ``share_topology``); ``adjacency_dst`` the second graph's.
        unary: (P, N, N) the unary costs without noise (detached).
    """

    loss: torch.Tensor
    hamming: torch.Tensor
    accuracy: torch.Tensor
    matchings: torch.Tensor
    targets: torch.Tensor
    pairs: list[tuple[str, str]]
    nodes: torch.Tensor
    adjacency: torch.Tensor
    adjacency_dst: torch.Tensor
    unary: torch.Tensor


class BarycenterGraphAligner(nn.Module):
    """The barycenter multi-graph matching loss (module docstring).

    Args:
        dim: node width D (the LM's hidden size); the GNN keeps it (``gnn_dim`` = None).
        k: kNN neighbours (official 5). ``gnn_layers`` (2), ``gnn_dropout`` (0.1).
        lam: λ of the target solve (80). ``noise_scale``: β of the Gumbel noise (0.05).
        n_samples: S perturbations per step (official 1).
        unary_shift, quad_shift, quad_weight: c_u (0.5), c_q (0.25), w (0.5) of the costs.
        solver: ``"ipfp"`` (the QAP, default) or ``"lap"`` (unary costs only); ``max_iter``
            IPFP iterations.
        share_topology: the second graph of a pair reuses the first one's kNN edges (official).
        shared_noise: one node-noise matrix per step for every pair (official).
        names: the M modality names (for ``AlignmentOutput.pairs``).
    """

    def __init__(self, dim: int, k: int = 5, gnn_layers: int = 2, gnn_dropout: float = 0.1, gnn_dim: int | None = None,
                 lam: float = 80.0, noise_scale: float = 0.05, n_samples: int = 1, unary_shift: float = 0.5,
                 quad_shift: float = 0.25, quad_weight: float = 0.5, solver: str = "ipfp", max_iter: int = 20,
                 share_topology: bool = True, shared_noise: bool = True,
                 names: tuple[str, ...] = ("image", "response", "extended")):
        super().__init__()
        if solver not in SOLVERS:
            raise ValueError(f"unknown solver {solver!r}; choose from {SOLVERS}")
        if k < 1 or n_samples < 1 or max_iter < 0:
            raise ValueError(f"need k >= 1, n_samples >= 1, max_iter >= 0; got {k}, {n_samples}, {max_iter}")
        if not lam > 0 or noise_scale < 0:
            raise ValueError(f"need lam > 0 and noise_scale >= 0; got {lam}, {noise_scale}")
        self.gnn = SharedGNN(dim, gnn_dim, gnn_layers, gnn_dropout)
        self.k, self.lam, self.noise_scale, self.n_samples = int(k), float(lam), float(noise_scale), int(n_samples)
        self.unary_shift, self.quad_shift, self.quad_weight = float(unary_shift), float(quad_shift), float(quad_weight)
        self.solver, self.max_iter = solver, int(max_iter)
        self.share_topology, self.shared_noise = bool(share_topology), bool(shared_noise)
        self.names = tuple(names)

    def pair_names(self, m: int) -> list[tuple[str, str]]:
        names = list(self.names[:m]) + [f"modality{i}" for i in range(len(self.names), m)]
        return [p for n in names for p in ((n, "barycenter"), ("barycenter", n))]

    def forward(self, nodes: torch.Tensor, generator: torch.Generator | None = None) -> AlignmentOutput:
        """nodes (M, N, D): the M modality node matrices of a batch of N samples →
        :class:`AlignmentOutput`. ``generator`` draws the Gumbel noise (default: torch's global
        generator)."""
        if nodes.ndim != 3:
            raise ValueError(f"nodes must be (M, N, D), got {tuple(nodes.shape)}")
        z = nodes.float()
        m, n, _ = z.shape
        zb = barycenter(z)
        bary = zb.unsqueeze(0).expand(m, -1, -1)
        src = torch.stack([z, bary], 1).flatten(0, 1)                        # (P, N, D): m→b, b→m, …
        dst = torch.stack([bary, z], 1).flatten(0, 1)
        p = src.shape[0]
        g1, g2 = pair_topology(src, dst, self.k, self.share_topology)
        both = torch.cat([src, dst])                                         # (2P, N, D)
        adj = torch.cat([g1.adjacency, g2.adjacency])
        nbr = torch.cat([g1.neighbours, g2.neighbours])
        w_dtype = self.gnn.convs[0].lin_rel.weight.dtype                     # the GNN in its own dtype,
        h_all = self.gnn(both.to(w_dtype), Graphs(adj.to(w_dtype), nbr)).float()  # the costs in float32
        h, g = h_all[:p], h_all[p:]
        unary = unary_cost(h, g, self.unary_shift)                           # (P, N, N)
        quad = None
        if self.solver == "ipfp":
            w_all = edge_weights(h_all, Graphs(adj, nbr))
            quad = QuadraticCost.from_graphs(h, g, w_all[:p], w_all[p:], g1.adjacency, g2.adjacency,
                                             self.quad_weight, self.quad_shift)
        target = torch.eye(n, device=z.device)
        shape = (self.n_samples, 1 if self.shared_noise else p, n, n)
        noise = gumbel(shape, self.noise_scale, device=z.device, generator=generator)
        loss, y, y_t = blackbox_surrogate(unary, quad, target, noise, self.lam, self.solver, self.max_iter)
        return AlignmentOutput(
            loss=loss.mean(), hamming=loss.detach().mean(0), accuracy=y.diagonal(dim1=-2, dim2=-1).mean().detach(),
            matchings=y[0].detach(), targets=y_t[0].detach(), pairs=self.pair_names(m),
            nodes=torch.cat([z, zb[None]]).detach(), adjacency=g1.adjacency, adjacency_dst=g2.adjacency,
            unary=unary.detach())
