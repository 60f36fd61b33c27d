"""ExGra-Med: Extended Context Graph Alignment for medical vision-language models
(Nguyen et al., arXiv 2410.02615, NeurIPS 2025), in the paper's order.

A LLaVA-Med-style model (frozen CLIP ViT-L/14 → ``mlp2x_gelu`` projector → LLaMA-7B) is
instruction-tuned with

    L = L_AR + α · L_align,     α = 1

where L_align aligns, within each batch, three *graphs* whose nodes are the batch's samples:
the image (pooled projector outputs), the instruction response (an extra text-only LM pass on
the answers) and the extended caption (the same on GPT-4's longer rewrites of the answers,
``conversations_long``). Each graph is matched to their *barycenter* graph, both ways, by a
combinatorial graph-matching solver; the target is the identity (sample i ↔ sample i), and the
loss reaches the networks through the solver by perturb-and-MAP with the blackbox / I-MLE
gradient.

=======================  ==============================================================  ===============
step                     formula                                                         module
=======================  ==============================================================  ===============
§3.1 LLaVA-style input   [<bos> human: <img>] [C = proj(V)] [</img> Q assistant:] [A]…   :mod:`.prompt`
§3.2 node features       z_img = mean_P C;  z_txt = mean_T LM(text)  (masked)             :mod:`.model`
§3.2 graphs              kNN (k = 5), GNN: x′ = W_r x + W_n max_{N(i)} x_j, ReLU ×2       :mod:`.graphs`
§3.2 barycenter          Z_b = (1/M) Σ_m Z_m                                             :mod:`.graphs`
§3.3 matching            min_X ⟨U, X⟩ + Σ q(ij,ab) X_ia X_jb, U = ½ − cos − ε            :mod:`.matching`
§3.4 gradient            y = MAP(θ+ε), y′ = MAP(θ+ε+λ∂L/∂y), ∂L/∂θ ≈ (y′ − y)/λ         :mod:`.imle`
§3.4 loss                L_align = mean over 2M pairs of Hamming(y, I)                   :mod:`.aligner`
=======================  ==============================================================  ===============

**Our readings** (each a field of :class:`ExGraMedConfig`, the official code's value as default
unless said):

- *Node features*: the image node is the plain mean of the projector outputs (``image``);
  the text nodes come from one extra LM pass (with LoRA, with gradient) over ``<bos>`` + the
  answers joined with ". " (``separator``). The official code averages the padded sequence,
  pads included; we average the real tokens only (``text_pooling="masked"``; ``"with_pads"``
  is the official behaviour).
- *Topology*: the kNN graph of the first graph of a pair, reused by the second
  (``share_topology=True``, official); ``k′ = min(k, B − 1)``, so B = 1 gives an empty graph
  and a zero loss.
- *Barycenter*: the mean of the modality node matrices, not detached (official); an
  FGW / OT barycenter is not implemented.
- *Costs*: unary ``unary_shift − cos − ε``; quadratic ``quad_shift − quad_weight·⟨ê, f̂⟩``
  computed in factorised form (:class:`~.matching.QuadraticCost`; no E×E tensor).
- *Noise*: Gumbel(0, β = 0.05) on the unary costs, one draw per step shared by every pair
  (``shared_noise``, official), from torch's global generator (seeded and checkpointed by the
  trainer). The official code also adds Gumbel noise to each edge-pair cost; that needs the
  E×E tensor, so we perturb the unary costs only.
- *Solver*: LPMP's dual-decomposition QAP solver (a C++ build that does not install here,
  which may leave nodes unassigned) is replaced by ``ipfp``, a QAP local search started from
  the exact LAP, always a full permutation; ``solver="lap"`` drops the quadratic term.
- *Gradient*: the blackbox / I-MLE rule with λ = 80 as a surrogate loss whose gradient it is
  (:func:`~.imle.blackbox_surrogate`), 1 sample (``n_samples``).
- *Stages*: stage 1 trains the projector on captions with L_AR alone (``inputs: {align:
  false}``); stage 2 trains LoRA (full fine-tuning under FSDP at paper scale), the projector
  and the GNN with L_AR + α L_align.
- *InfoNCE baseline* (``alignment="infonce"``): the official contrastive option, image node ↔
  response node, rows only (image → text), τ = ``infonce_tau`` fixed.
"""
from __future__ import annotations

from .aligner import AlignmentOutput, BarycenterGraphAligner
from .graphs import (
    DenseGraphConv,
    Graphs,
    SharedGNN,
    barycenter,
    edge_weights,
    knn_graph,
    pair_topology,
)
from .imle import blackbox_surrogate, gumbel, hamming, hamming_grad
from .matching import (
    SOLVERS,
    QuadraticCost,
    ipfp,
    lap,
    matching_cost,
    solve,
    unary_cost,
)
from .model import ALIGNMENTS, MODALITIES, ExGraMed, ExGraMedConfig, build_exgramed
from .prompt import ConversationCollate, InstructionBatch, PromptFormat

__all__ = [
    "ALIGNMENTS",
    "MODALITIES",
    "SOLVERS",
    "AlignmentOutput",
    "BarycenterGraphAligner",
    "ConversationCollate",
    "DenseGraphConv",
    "ExGraMed",
    "ExGraMedConfig",
    "Graphs",
    "InstructionBatch",
    "PromptFormat",
    "QuadraticCost",
    "SharedGNN",
    "barycenter",
    "blackbox_surrogate",
    "build_exgramed",
    "edge_weights",
    "gumbel",
    "hamming",
    "hamming_grad",
    "ipfp",
    "knn_graph",
    "lap",
    "matching_cost",
    "pair_topology",
    "solve",
    "unary_cost",
]
