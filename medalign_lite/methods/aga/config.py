"""AGA's knobs (:class:`AGAConfig`); the readings behind each default are in the package docstring."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal


@dataclass
class AGAConfig:
    """AGA's knobs (paper symbol in the comment; see the module docstring for our readings)."""

    embed_dim: int = 128            # d, joint width of patches, tokens and global vectors
    proj: str = "linear"            # projection heads of the dual encoder
    # §3.2–3.3 threshold gates
    gamma_tg: float = 0.99          # γ_tg, momentum of σ_tg (0.99 MIMIC-CXR / 0.999 SMTs, see docstring)
    gamma_vg: float = 0.99          # γ_vg, momentum of σ_vg
    sigma_init: float | None = None  # σ_tg, σ_vg at start (None: the first training batch's S̄)
    fixed_thresholds: bool = False  # ablation: σ_tg = 1/P, σ_vg = 1/T instead of momentum gates
    fixed_sigma_tg: float | None = None  # σ_tg of the fixed variant (None: 1/P)
    fixed_sigma_vg: float | None = None  # σ_vg of the fixed variant (None: 1/M_i, valid tokens of pair i)
    minmax_eps: float = 1e-6        # a row with max − min ≤ eps is "all equal" (normalised to 1)
    group_values: Literal["normalized", "raw"] = "normalized"  # what p_j, q_n average
    # §3.4 IGA
    tau2: float = 0.3               # τ2
    iga_negatives: Literal["elements", "groups", "both"] = "elements"
    # ours, not the paper's: "batch" replaces IGA's pair-internal contrast by the groups'
    # contrast across the batch's pairs (losses.cross_pair_group_loss), at temperature tau_cross
    iga_scope: Literal["pair", "batch"] = "pair"
    tau_cross: float = 0.1          # GLoRIA's local temperature (1/γ3)
    # §3.5 BCGA
    tau3: float = 0.1               # τ3
    bcga_heads: int = 1             # attention heads of Q, K, V (formula: one)
    bcga_out_proj: bool = False     # output projection after attention (formula: none)
    bcga_shared: bool = False       # one attention for both directions
    # §3.6 objective
    tau1: float = 0.07              # τ1 of the global InfoNCE L_g (not in the summary: MGCA's)
    lambda1: float = 1.0            # λ1, weight of L_g
    lambda2: float = 1.0            # λ2, weight of (L_tf + L_vf)/2
    lambda3: float = 1.0            # λ3, weight of (L_gla + L_gva)/2
    # ablations
    use_iga: bool = True            # False: drop λ2·(L_tf + L_vf)/2
    use_bcga: bool = True           # False: drop λ3·(L_gla + L_gva)/2 (and the attention weights)
    global_only: bool = False       # True: L = λ1·L_g only
    # speed (ours, no paper knob): torch.compile the local part (§3.2–3.5) on CUDA ("auto"),
    # also on CPU ("always", worth it only for long runs: compiling takes a minute), or never
    compile: Literal["auto", "always", "never"] = "auto"

    def __post_init__(self):
        for name in ("gamma_tg", "gamma_vg"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"{name} must be in [0, 1], got {getattr(self, name)}")
        if self.iga_scope not in ("pair", "batch"):
            raise ValueError(f"iga_scope must be 'pair' or 'batch', got {self.iga_scope!r}")
        for name in ("tau1", "tau2", "tau3", "tau_cross"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be > 0, got {getattr(self, name)}")
        if self.group_values not in ("normalized", "raw"):
            raise ValueError(f"group_values must be 'normalized' or 'raw', got {self.group_values!r}")
        if self.iga_negatives not in ("elements", "groups", "both"):
            raise ValueError(f"iga_negatives must be 'elements', 'groups' or 'both', got {self.iga_negatives!r}")
        if self.compile not in ("auto", "always", "never"):
            raise ValueError(f"compile must be 'auto', 'always' or 'never', got {self.compile!r}")
        if self.embed_dim % self.bcga_heads:
            raise ValueError(f"embed_dim {self.embed_dim} is not divisible by bcga_heads {self.bcga_heads}")
