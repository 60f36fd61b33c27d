"""Worker that ``tests/test_train_guard.py`` launches with ``accelerate launch`` (2 CPU processes),
and the helpers its tests share: items with study ids, and a model wrapper whose loss goes bad
for chosen study ids.

``tests/_ddp_guard_worker.py OUT``: trains :class:`TinyNet` on :class:`IdRegression` (batch 2 per
process) with study ``POISON`` returning ``loss + NaN`` (finite gradients: only the process whose
shard holds it sees anything wrong); each process writes its weights to ``OUT/final-{rank}.safetensors``.
``... OUT stop``: three steps in a row go bad; each process writes the exception it raised to
``OUT/error-{rank}.txt`` and exits non-zero.
"""
from __future__ import annotations

import math
import os
import sys
import traceback
from pathlib import Path

import torch
from torch import nn

if __package__ in (None, ""):  # run as a script: make the repository importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from medalign_lite.train import (
    EpochSampler,
    Stage,
    TrainConfig,
    Trainer,
    batch_study_ids,
    save_weights,
)
from tests._ddp_worker import NoisyRegression, TinyNet, end_processes

NAN = float("nan")
POISON = "s13"


class IdRegression(NoisyRegression):
    """:class:`NoisyRegression` whose items carry a study id ``s{i}`` (collated into a list)."""

    def __getitem__(self, i: int) -> dict:
        return {**super().__getitem__(i), "study_id": f"s{i}"}


class NaNGrad(torch.autograd.Function):
    """Identity forward, NaN gradient: a finite loss whose gradient norm is not."""

    @staticmethod
    def forward(ctx, x):
        return x.clone()

    @staticmethod
    def backward(ctx, g):
        return g * NAN


def poison(model: nn.Module, ids, how: str = "nan", times: int | None = None) -> nn.Module:
    """``model`` whose loss goes bad for a batch holding any of the study ``ids`` (names unchanged),
    the first ``times`` such batches only (None: every one).

    ``how``: ``"nan"`` loss × NaN (loss and gradients NaN), ``"loss"`` loss + NaN (the gradients
    stay finite), ``"grad"`` a finite loss with NaN gradients, ``"inf"`` loss × inf.
    """
    real, ids, done = model.forward, set(ids), [0]

    def forward(batch):
        out = real(batch)
        if ids & set(batch_study_ids(batch) or []) and (times is None or done[0] < times):
            done[0] += 1
            loss = out["loss"]
            bad = {"nan": lambda: loss * NAN, "loss": lambda: loss + NAN, "grad": lambda: NaNGrad.apply(loss),
                   "inf": lambda: loss * math.inf}[how]()
            out = {**out, "loss": bad}
        return out

    model.forward = forward
    return model


def first_ids_of_steps(n: int, seed: int, steps, batch_size: int) -> list[str]:
    """A study id in each of the given (1-based, epoch-0, one-stage) steps of global batch ``batch_size``."""
    order = EpochSampler(n, seed).indices()
    return [f"s{order[(k - 1) * batch_size]}" for k in steps]


def build(out, batch_size: int, stop: bool = False):
    """(model, dataset, config) of the guard's DDP run; ``batch_size`` per process."""
    global_batch = 4
    ids = first_ids_of_steps(32, 5, [2, 3, 4], global_batch) if stop else [POISON]
    model = poison(TinyNet(), ids, "loss")
    cfg = TrainConfig(output_dir=str(out), batch_size=batch_size, seed=5, device="cpu", precision="fp32",
                      max_grad_norm=1.0, save_every=2, stages=[Stage(name="s", epochs=2, lr=1e-2)])
    return model, IdRegression(n=32), cfg


def main(out: str, mode: str = "") -> None:
    torch.set_num_threads(1)
    rank = int(os.environ.get("RANK", "0"))
    model, data, cfg = build(out, batch_size=2, stop=mode == "stop")
    try:
        Trainer(model, data, cfg).fit(resume=False)
    except Exception as e:
        Path(out).mkdir(parents=True, exist_ok=True)
        (Path(out) / f"error-{rank}.txt").write_text(f"{type(e).__name__}: {e}\n{traceback.format_exc()}")
        raise
    save_weights(model.state_dict(), Path(out) / f"final-{rank}.safetensors")  # every process: same weights?
    end_processes()  # else a rank that exits first can abort in gloo's teardown (SIGABRT, the launch fails)


if __name__ == "__main__":
    main(*sys.argv[1:3])
