"""§1 AIM-style adapters wrapped around the blocks of an existing ViT or BERT (no block re-implemented)."""
from __future__ import annotations

from collections.abc import Iterator, Sequence

import torch
import torch.nn.functional as F
from torch import nn


# --- §1 adapters ---------------------------------------------------------------------------
class Adapter(nn.Module):
    """A(x) = W_up·GELU(W_down·x + b_down) + b_up (d → ⌊r·d⌋ → d), W_up and b_up zero at start;
    with ``skip`` the module returns x + A(x) (the serial adapter), else A(x)."""

    def __init__(self, dim: int, ratio: float = 0.25, skip: bool = True):
        super().__init__()
        self.skip = skip
        self.down = nn.Linear(dim, max(1, int(dim * ratio)))
        self.up = nn.Linear(max(1, int(dim * ratio)), dim)
        nn.init.zeros_(self.up.weight)
        nn.init.zeros_(self.up.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.up(F.gelu(self.down(x)))
        return x + h if self.skip else h


class SerialAdapter(nn.Module):
    """``module`` followed by a skip adapter on its output: y = m(…); y + A(y). A tuple output
    (transformers attention: (output, weights)) is adapted in its first element."""

    def __init__(self, module: nn.Module, dim: int, ratio: float = 0.25):
        super().__init__()
        self.module = module
        self.adapter = Adapter(dim, ratio, skip=True)

    def forward(self, *args, **kwargs):
        out = self.module(*args, **kwargs)
        if isinstance(out, tuple):
            return (self.adapter(out[0]), *out[1:])
        return self.adapter(out)


class ParallelAdapter(nn.Module):
    """``module`` with a scaled adapter beside it: m(…) + s·A(x), x = the argument at
    ``input_index`` (the MLP's input: the first argument of a ViT MLP, the second,
    ``input_tensor``, of BERT's ``BertOutput``)."""

    def __init__(self, module: nn.Module, dim: int, ratio: float = 0.25, scale: float = 0.5, input_index: int = 0):
        super().__init__()
        self.module = module
        self.adapter = Adapter(dim, ratio, skip=False)
        self.scale, self.input_index = scale, input_index

    def forward(self, *args, **kwargs):
        return self.module(*args, **kwargs) + self.scale * self.adapter(args[self.input_index])


def _blocks(model: nn.Module) -> Iterator[tuple[str, nn.Module, str, str, int]]:
    """(name, block, attention attribute, MLP attribute, MLP input index) of every transformer
    block: timm ``Block`` (attn, mlp), transformers pre-LN ViT-MAE layers (attention, mlp) and
    post-LN BERT layers (attention, output ← its ``input_tensor``)."""
    for name, m in model.named_modules():
        if isinstance(m, (SerialAdapter, ParallelAdapter)):
            continue
        if hasattr(m, "attn") and hasattr(m, "mlp") and hasattr(m, "norm1"):
            yield name, m, "attn", "mlp", 0
        elif hasattr(m, "attention") and hasattr(m, "mlp") and hasattr(m, "layernorm_before"):
            yield name, m, "attention", "mlp", 0
        elif hasattr(m, "attention") and hasattr(m, "intermediate") and hasattr(m, "output"):
            yield name, m, "attention", "output", 1


def insert_adapters(model: nn.Module, dim: int, ratio: float = 0.25, scale: float = 0.5,
                    skip_names: Sequence[str] = ()) -> list[str]:
    """Wrap every transformer block of ``model`` in place: its attention sublayer in a
    :class:`SerialAdapter`, its MLP sublayer in a :class:`ParallelAdapter` (scale ``scale``).
    Blocks under a name starting with one of ``skip_names`` (e.g. an MAE's ``decoder``) are left
    alone. Returns the names of the adapted blocks; a model without a recognised block is an error."""
    done = []
    for name, block, attn, mlp, index in list(_blocks(model)):
        if any(name == s or name.startswith(s + ".") for s in skip_names):
            continue
        if isinstance(getattr(block, attn), SerialAdapter):
            raise ValueError(f"{name}: adapters already inserted")  # noqa: TRY004
        setattr(block, attn, SerialAdapter(getattr(block, attn), dim, ratio))
        setattr(block, mlp, ParallelAdapter(getattr(block, mlp), dim, ratio, scale, index))
        done.append(name)
    if not done:
        raise ValueError(f"{type(model).__name__}: no timm ViT, ViT-MAE or BERT block to adapt")
    return done
