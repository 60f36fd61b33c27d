"""ExGra-Med §3.2, the graphs: one node per sample of the batch, kNN edges, a shared GNN, edge
features, and the barycenter graph.

Shapes: P graphs (or ordered graph pairs) handled at once, N nodes (the batch's samples), D node
width (the LM's hidden size: 4096 for LLaMA-7B), k′ = min(k, N − 1) neighbours per node.

- **Topology** (:func:`knn_graph`): node i's neighbours are the k′ nodes nearest to it in
  Euclidean distance, itself excluded (``torch_geometric.nn.knn_graph(x, k=5, loop=False)``,
  the official code's call). Directed: A_ij = 1 iff j ∈ N(i); every row has exactly k′ ones.
- **Shared topology** (:func:`pair_topology`): the official code builds the kNN graph on the
  *first* graph of a pair and gives the second graph the same edges
  (``share_topology=True``); ``False`` computes each graph's own.
- **GNN** (:class:`DenseGraphConv`, :class:`SharedGNN`): two GraphConv layers with max
  aggregation, x′_i = W_root x_i + W_rel max_{j∈N(i)} x_j + b, ReLU after each, dropout 0.1
  at the end; one module for every modality and both directions (``GDPModel1``). Dense:
  the neighbours are an index tensor (P, N, k′), the max is over a gathered (P, N, k′, D)
  tensor (no sparse ops, no torch-geometric). A node without neighbours (N = 1) aggregates
  zeros, as PyG's scatter-max does.
- **Edge features**: edge (i, j) carries h_i − h_j (raw GNN outputs), L2-normalised; node
  features are L2-normalised too. The edge features are never materialised: the matching's
  quadratic term needs only their inner products, which :mod:`.matching` computes from the
  node features and the weighted adjacency A_ij / ‖h_i − h_j‖ (:func:`edge_weights`).
- **Barycenter graph** (:func:`barycenter`): its node features are the mean of the M
  modality node matrices, Z_b = (1/M) Σ_m Z_m (the official reading: not iterated, not an
  optimal-transport barycenter, not detached, so gradients reach every modality through it).
"""
from __future__ import annotations

import itertools
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["DenseGraphConv", "Graphs", "SharedGNN", "barycenter", "edge_weights", "knn_graph", "pair_topology"]


@dataclass
class Graphs:
    """P graphs on N nodes: ``adjacency`` (P, N, N) float 0/1 (A_ij = 1 iff j ∈ N(i)) and
    ``neighbours`` (P, N, k′) long, the indices j of each row's ones (in ascending distance)."""

    adjacency: torch.Tensor
    neighbours: torch.Tensor

    @property
    def k(self) -> int:
        return int(self.neighbours.shape[-1])


def knn_graph(x: torch.Tensor, k: int = 5) -> Graphs:
    """kNN graphs of node features x (P, N, D): each node's k′ = min(k, N − 1) nearest other
    nodes (Euclidean; ties by index), no self-loops. Computed without gradient (topology is
    discrete)."""
    if x.ndim != 3:
        raise ValueError(f"x must be (P, N, D), got {tuple(x.shape)}")
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    p, n, _ = x.shape
    kk = min(k, n - 1)
    with torch.no_grad():
        xf = x.detach().float() if x.dtype in (torch.float16, torch.bfloat16) else x.detach()
        d = torch.cdist(xf, xf)                                               # (P, N, N)
        d = d + torch.diag_embed(torch.full((p, n), float("inf"), device=x.device))  # no self-loops
        nbr = d.topk(kk, dim=-1, largest=False, sorted=True).indices if kk > 0 else \
            torch.zeros(p, n, 0, dtype=torch.long, device=x.device)
        adj = torch.zeros(p, n, n, device=x.device, dtype=x.dtype).scatter_(-1, nbr, 1.0)
    return Graphs(adj, nbr)


def pair_topology(src: torch.Tensor, dst: torch.Tensor, k: int = 5, share: bool = True) -> tuple[Graphs, Graphs]:
    """Topologies of P ordered graph pairs (src (P, N, D), dst (P, N, D)): the kNN graph of the
    first graph, reused by the second (``share=True``, the official code), or each its own."""
    g1 = knn_graph(src, k)
    return g1, (g1 if share else knn_graph(dst, k))


class DenseGraphConv(nn.Module):
    """GraphConv with max aggregation on dense neighbour lists:

        x′_i = W_root x_i + W_rel · max_{j ∈ N(i)} x_j + b        (x (P, N, D_in) → (P, N, D_out))

    (PyG's ``GraphConv(aggr="max")``: ``lin_rel`` has the bias, ``lin_root`` none.)"""

    def __init__(self, in_dim: int, out_dim: int):
        super().__init__()
        self.lin_rel = nn.Linear(in_dim, out_dim)
        self.lin_root = nn.Linear(in_dim, out_dim, bias=False)

    def forward(self, x: torch.Tensor, neighbours: torch.Tensor) -> torch.Tensor:
        p, n, d = x.shape
        k = neighbours.shape[-1]
        if k == 0:
            agg = x.new_zeros(p, n, d)
        else:
            idx = neighbours.reshape(p, n * k, 1).expand(-1, -1, d)
            agg = x.gather(1, idx).view(p, n, k, d).max(dim=2).values          # (P, N, D)
        return self.lin_rel(agg) + self.lin_root(x)


class SharedGNN(nn.Module):
    """The shared GNN (the official ``GDPModel1``): conv → ReLU → conv → ReLU → dropout.

    ``forward(x (P, N, D), graphs)`` → raw node features h (P, N, D_out) (not normalised).
    """

    def __init__(self, in_dim: int, out_dim: int | None = None, layers: int = 2, dropout: float = 0.1):
        super().__init__()
        if layers < 1:
            raise ValueError(f"layers must be >= 1, got {layers}")
        out_dim = out_dim or in_dim
        dims = [in_dim] + [out_dim] * layers
        self.convs = nn.ModuleList(DenseGraphConv(a, b) for a, b in itertools.pairwise(dims))
        self.dropout = float(dropout)

    def forward(self, x: torch.Tensor, graphs: Graphs) -> torch.Tensor:
        for conv in self.convs:
            x = F.relu(conv(x, graphs.neighbours))
        return F.dropout(x, p=self.dropout, training=self.training)


def edge_weights(h: torch.Tensor, graphs: Graphs, eps: float = 1e-8) -> torch.Tensor:
    """Weighted adjacency A^w_ij = A_ij / ‖h_i − h_j‖ (P, N, N) of raw node features h
    (P, N, D): with it the normalised edge feature is ê_ij = (h_i − h_j)·A^w_ij, so edge inner
    products factorise (:mod:`.matching`). The norms are taken on the E = N·k′ edges only
    (a (P, N, k′, D) difference, never (P, N, N, D)). An edge whose nodes coincide
    (‖h_i − h_j‖ ≤ ``eps``) gets weight 0: its ê is 0, as ``F.normalize`` gives, and the
    factorised products never multiply a cancelled difference's rounding by 1/eps (that made
    the quadratic term 1e-9 off in float64 when two nodes were equal); its gradient is 0."""
    p, n, d = h.shape
    k = graphs.k
    if k == 0:
        return h.new_zeros(p, n, n)
    idx = graphs.neighbours.reshape(p, n * k, 1).expand(-1, -1, d)
    diff = h.unsqueeze(2) - h.gather(1, idx).view(p, n, k, d)                 # (P, N, k′, D)
    norm = torch.linalg.vector_norm(diff, dim=-1)                              # (P, N, k′)
    w = torch.where(norm > eps, 1.0 / norm.clamp_min(eps), torch.zeros_like(norm))
    return h.new_zeros(p, n, n).scatter(-1, graphs.neighbours, w)


def barycenter(nodes: torch.Tensor) -> torch.Tensor:
    """The barycenter graph's node features: Z_b = (1/M) Σ_m Z_m, for nodes (M, N, D) → (N, D)."""
    return nodes.mean(0)
