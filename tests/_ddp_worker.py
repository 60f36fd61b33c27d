"""Worker that ``tests/test_train.py`` launches with ``accelerate launch``.

``tests/_ddp_worker.py OUT BATCH`` (DDP test): trains :class:`TinyNet` through two stages on
:class:`NoisyRegression` (per-process micro-batch ``BATCH``) and writes ``OUT/final.safetensors``
from the main process; the test imports the same builders for its one-process reference run.

``tests/_ddp_worker.py OUT BATCH fsdp`` (FSDP recipe test, GPU): trains a 2-layer Llama
(:class:`TinyLlama`) through two stages with ``fit(resume=True)`` and writes what ``fit``
returned to ``OUT/launch-{n}.json``; under FSDP each launch runs one stage.
"""
from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import torch
from torch import nn
from torch.utils.data import Dataset

if __package__ in (None, ""):  # run as a script: make the repository importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from medalign_lite.train import Stage, TrainConfig, Trainer, save_weights


class NoisyRegression(Dataset):
    """``n`` items ``{"x": (4,), "y": (1,)}``; ``x`` gets fresh Gaussian noise per draw (augmentation)."""

    def __init__(self, n: int = 32, noise: float = 0.1):
        g = torch.Generator().manual_seed(1234)
        self.x = torch.randn(n, 4, generator=g)
        self.y = torch.randn(n, 1, generator=g)
        self.noise = noise

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, i: int) -> dict:
        return {"x": self.x[i] + self.noise * torch.randn(4), "y": self.y[i]}


class TinyNet(nn.Module):
    """Linear → tanh → (dropout) → Linear, mean-squared error; ``set_stage`` records its calls."""

    def __init__(self, dropout: float = 0.0, seed: int = 0):
        super().__init__()
        g = torch.random.fork_rng(devices=[])
        with g:
            torch.manual_seed(seed)
            self.enc = nn.Linear(4, 8)
            self.head = nn.Linear(8, 1)
        self.drop = nn.Dropout(dropout)
        self.stages_seen: list[str] = []

    def set_stage(self, stage) -> None:
        self.stages_seen.append(stage.name)

    def forward(self, batch: dict) -> dict:
        pred = self.head(self.drop(torch.tanh(self.enc(batch["x"]))))
        mse = ((pred - batch["y"]) ** 2).mean()
        reg = 1e-3 * self.head.weight.pow(2).sum()
        return {"loss": mse + reg, "mse": mse, "reg": reg, "pred": pred}


def make_config(out: str | Path, batch_size: int) -> TrainConfig:
    return TrainConfig(output_dir=str(out), batch_size=batch_size, grad_accum=2, seed=7, device="cpu",
                       precision="fp32", max_grad_norm=1.0,
                       stages=[Stage(name="heads", epochs=2, lr=3e-2, trainable=["head.*"], warmup_ratio=0.25),
                               Stage(name="all", epochs=1, lr=1e-2)])


class Tokens(Dataset):
    """``n`` fixed random token sequences ``{"ids": (T,)}``."""

    def __init__(self, n: int = 32, length: int = 16, vocab: int = 64):
        self.ids = torch.randint(0, vocab, (n, length), generator=torch.Generator().manual_seed(5))

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, i: int) -> dict:
        return {"ids": self.ids[i]}


class TinyLlama(nn.Module):
    """A 2-layer ``LlamaForCausalLM`` (hidden 64) with the trainer's forward contract."""

    def __init__(self):
        super().__init__()
        from transformers import LlamaConfig, LlamaForCausalLM

        cfg = LlamaConfig(vocab_size=64, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                          num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=32,
                          tie_word_embeddings=False)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            self.lm = LlamaForCausalLM(cfg)

    def forward(self, batch: dict) -> dict:
        out = self.lm(input_ids=batch["ids"], labels=batch["ids"], use_cache=False)
        return {"loss": out.loss}


def fsdp_config(out: str | Path, batch_size: int) -> TrainConfig:
    return TrainConfig(output_dir=str(out), batch_size=batch_size, seed=3, save_every=4,
                       stages=[Stage(name="head", epochs=1, lr=1e-2, trainable=["lm.lm_head.*"]),
                               Stage(name="all", epochs=1, lr=1e-3)])


def main(out: str, batch_size: int, mode: str = "ddp") -> None:
    torch.set_num_threads(1)
    rank0 = int(os.environ.get("RANK", "0")) == 0
    if mode == "fsdp":
        from accelerate import PartialState

        PartialState()  # the process group first, as docs/distributed.md says
        model = TinyLlama()
        kill = int(os.environ.get("MEDALIGN_TEST_KILL_AFTER", "0"))  # die in forward call kill + 1
        if kill:
            real, calls = model.forward, [0]

            def forward(batch):
                calls[0] += 1
                if calls[0] > kill:
                    raise SystemExit(3)
                return real(batch)

            model.forward = forward
        result = Trainer(model, Tokens(), fsdp_config(out, batch_size)).fit(resume=True)
        if rank0:
            n = len(list(Path(out).glob("launch-*.json"))) + 1
            (Path(out) / f"launch-{n}.json").write_text(json.dumps(
                {"done": result.done, "checkpoint": str(result.checkpoint), "history": result.history}))
        end_processes()
        return
    model = TinyNet()
    Trainer(model, NoisyRegression(), make_config(out, batch_size)).fit(resume=False)
    if rank0:
        save_weights(model.state_dict(), Path(out) / "final.safetensors")
    end_processes()


def end_processes() -> None:
    """Meet at a barrier, then tear the process group down before the interpreter exits.

    Without it, a rank that finishes first exits with gloo's threads still running and, now and
    then, aborts in C++ ("terminate called without an active exception", SIGABRT), which fails the
    launch although training finished. docs/distributed.md §2 ends its script the same way.
    """
    from accelerate import PartialState

    state = PartialState()
    state.wait_for_everyone()
    state.destroy_process_group()


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]), *sys.argv[3:4])
