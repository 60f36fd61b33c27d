"""Trainer: stages and freezing, schedule, accumulation, clipping, checkpoints, exact resume, DDP."""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from torch import nn
from torch.utils.data import Dataset

from medalign_lite.config import load_config
from medalign_lite.train import (
    EpochSampler,
    SeededItems,
    Stage,
    TrainConfig,
    Trainer,
    latest_checkpoint,
    load_checkpoint_weights,
    load_weights,
    save_weights,
    trainable_names,
    warmup_cosine,
)
from tests._ddp_worker import NoisyRegression, TinyLlama, TinyNet, make_config

REPO = Path(__file__).resolve().parents[1]
TIMING_KEYS = {"time"}


class Killed(RuntimeError):
    """Stands for the process dying in the middle of a step."""


def KillAfter(model: nn.Module, calls: int) -> nn.Module:
    """``model`` whose forward call number ``calls + 1`` raises :class:`Killed` (names unchanged)."""
    real, count = model.forward, [0]

    def forward(batch):
        count[0] += 1
        if count[0] > calls:
            raise Killed(f"killed in forward call {count[0]}")
        return real(batch)

    model.forward = forward
    return model


def config(out, **kw) -> TrainConfig:
    """Two stages over 28 items, batch 4, accumulation 2: 7 batches = 4 steps per epoch (the last
    one a single micro-batch), stage ``heads`` 2 epochs (8 steps), stage ``all`` 3 steps (max_steps)."""
    base = {"output_dir": str(out), "batch_size": 4, "grad_accum": 2, "seed": 11, "device": "cpu", "precision": "fp32",
            "max_grad_norm": 0.5, "save_every": 1,
            "stages": [Stage(name="heads", epochs=2, lr=3e-2, trainable=["head.*"], warmup_ratio=0.25),
                       Stage(name="all", epochs=2, lr=1e-2, max_steps=3, inputs={"aux": True})]}
    base.update(kw)
    return TrainConfig(**base)


def strip(rows):
    return [{k: v for k, v in r.items() if k not in TIMING_KEYS} for r in rows]


def losses(rows):
    return [r["loss"] for r in rows if "loss" in r]


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    """The reference run: dropout 0.3 + noisy items, never stopped."""
    out = tmp_path_factory.mktemp("full")
    model = TinyNet(dropout=0.3)
    result = Trainer(model, NoisyRegression(n=28), config(out)).fit(resume=False)
    return out, model, result


# --------------------------------------------------------------------------- exact resume


@pytest.mark.parametrize("k", [2, 5, 8, 10])  # mid-epoch, mid-epoch 2, end of stage 1, inside stage 2
def test_killed_and_resumed_run_is_identical(tmp_path, uninterrupted, k):
    _, ref_model, ref = uninterrupted
    assert len(losses(ref.history)) == 11
    # micro-batches before step k: 4 steps/epoch use 2+2+2+1 batches, stage 2 uses 2 per step
    calls = sum(([2, 2, 2, 1] * 2 + [2, 2, 2])[:k])
    with pytest.raises(Killed):
        Trainer(KillAfter(TinyNet(dropout=0.3), calls), NoisyRegression(n=28), config(tmp_path)).fit()
    assert latest_checkpoint(tmp_path).name == f"step-{k}"
    # a differently initialised model: every weight must come from the checkpoint
    fresh = TinyNet(dropout=0.3, seed=99)
    result = Trainer(fresh, NoisyRegression(n=28), config(tmp_path)).fit(resume=True)
    assert losses(result.history)[k:] == losses(ref.history)[k:]  # exact float equality
    assert strip(result.history) == strip(ref.history)
    for name, w in ref_model.state_dict().items():
        assert torch.equal(fresh.state_dict()[name], w), name
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert strip(rows) == strip(ref.history)  # the file was rewound to the checkpoint, not duplicated


def test_recorded_steps_time_every_phase_and_change_nothing(tmp_path, uninterrupted):
    """record_steps: one row per optimizer step (4 + 4 + 3, accumulation included) with every
    phase, the stage, the global step and whether it checkpointed; the run's losses and weights
    are those of the unrecorded run, and no trainer outside the block records anything."""
    from medalign_lite.train import PHASES, record_steps
    from medalign_lite.train.timing import active_timer

    _, ref_model, ref = uninterrupted
    model = TinyNet(dropout=0.3)
    with record_steps() as timer:
        assert active_timer() is timer
        result = Trainer(model, NoisyRegression(n=28), config(tmp_path)).fit(resume=False)
    assert active_timer() is None
    assert losses(result.history) == losses(ref.history)
    assert all(torch.equal(model.state_dict()[n], w) for n, w in ref_model.state_dict().items())
    assert [s["global_step"] for s in timer.steps] == list(range(1, 12))
    assert [s["stage"] for s in timer.steps] == ["heads"] * 8 + ["all"] * 3
    assert all(s["checkpoint"] for s in timer.steps)  # save_every=1
    for s in timer.steps:
        assert set(PHASES) <= set(s) and all(s[p] >= 0 and s[f"cpu/{p}"] >= 0 for p in PHASES), s
    # phases tile the step: their sum is the wall time between the first batch and the last step's end
    t0 = __import__("time").perf_counter()
    with record_steps() as timer:
        Trainer(TinyNet(dropout=0.3), NoisyRegression(n=28), config(tmp_path / "b", save_every=0)).fit(resume=False)
    total = __import__("time").perf_counter() - t0
    assert 0 < sum(s[p] for s in timer.steps for p in PHASES) < total
    assert [s["checkpoint"] for s in timer.steps] == [False] * 7 + [True] + [False] * 2 + [True]


def test_resume_needs_restored_rng(tmp_path, uninterrupted, monkeypatch):
    """The test above can fail: without restoring the generators the losses after k differ."""
    import medalign_lite.train as train_mod

    _, _, ref = uninterrupted
    with pytest.raises(Killed):
        Trainer(KillAfter(TinyNet(dropout=0.3), 6), NoisyRegression(n=28), config(tmp_path)).fit()
    monkeypatch.setattr(train_mod.Trainer, "_load_rng", lambda self, ckpt: None)
    result = Trainer(TinyNet(dropout=0.3), NoisyRegression(n=28), config(tmp_path)).fit()
    assert losses(result.history)[:3] == losses(ref.history)[:3]
    assert losses(result.history)[3:] != losses(ref.history)[3:]


def test_resume_of_finished_run_does_nothing(uninterrupted):
    out, ref_model, ref = uninterrupted
    model = TinyNet(dropout=0.3, seed=5)
    result = Trainer(model, NoisyRegression(n=28), config(out)).fit(resume=True)
    assert strip(result.history) == strip(ref.history)
    assert model.stages_seen == ["all"]  # only the checkpoint's stage is re-applied
    load_checkpoint_weights(model, result.checkpoint)
    assert all(torch.equal(model.state_dict()[n], w) for n, w in ref_model.state_dict().items())


def test_resume_refuses_changed_batch_size(tmp_path):
    cfg = config(tmp_path, stages=[Stage(name="s", epochs=1, lr=1e-2)])
    with pytest.raises(Killed):
        Trainer(KillAfter(TinyNet(), 3), NoisyRegression(n=28), cfg).fit()
    cfg2 = config(tmp_path, batch_size=2, stages=[Stage(name="s", epochs=1, lr=1e-2)])
    with pytest.raises(ValueError, match="batch_size"):
        Trainer(TinyNet(), NoisyRegression(n=28), cfg2).fit()


# --------------------------------------------------------------------------- stages, schedule, freezing


def test_stages_freeze_and_call_set_stage(uninterrupted):
    out, model, result = uninterrupted
    init = TinyNet(dropout=0.3)
    after_heads = load_weights(out / "checkpoints" / "step-8" / "model.safetensors")
    assert torch.equal(after_heads["enc.weight"], init.enc.weight)  # frozen in stage 1
    assert not torch.equal(after_heads["head.weight"], init.head.weight)
    assert not torch.equal(model.enc.weight, after_heads["enc.weight"])  # trained in stage 2
    assert model.stages_seen == ["heads", "all"]
    assert all(p.requires_grad for p in model.parameters())  # stage 2 trains everything
    rows = result.history
    assert [r["stage"] for r in rows] == ["heads"] * 8 + ["all"] * 3
    assert [r["step"] for r in rows] == list(range(1, 9)) + [1, 2, 3]
    assert [r["global_step"] for r in rows] == list(range(1, 12))
    assert [r["epoch"] for r in rows] == [0] * 4 + [1] * 4 + [0] * 3
    assert set(rows[0]) == {"stage", "epoch", "step", "global_step", "loss", "mse", "reg", "lr", "time"}
    assert all(abs(r["loss"] - r["mse"] - r["reg"]) < 1e-6 for r in rows)


def test_schedule_epochs_stretch_the_schedule_past_the_run(tmp_path):
    """ALTA's schedule: cosine over ``schedule_epochs``, the stage stopped after ``epochs``."""
    cfg = config(tmp_path, stages=[Stage(name="s", epochs=2, schedule_epochs=6, lr=1e-2, warmup_ratio=0.25)])
    rows = Trainer(TinyNet(), NoisyRegression(n=28), cfg).fit(resume=False).history
    lrs = [r["lr"] for r in rows if "lr" in r]
    assert len(lrs) == 8  # 2 epochs x 4 steps: the run stops at epoch 2 ...
    assert lrs == pytest.approx([1e-2 * warmup_cosine(s, 6, 24) for s in range(8)])  # ... of a 6-epoch schedule
    with pytest.raises(ValueError, match="schedule_epochs"):
        Stage(epochs=3, schedule_epochs=2)


def test_lr_follows_warmup_cosine_per_stage(uninterrupted):
    _, _, result = uninterrupted
    lrs = [r["lr"] for r in result.history]
    # stage 1: 8 steps, warm-up ceil(0.25 * 8) = 2; stage 2: 3 steps (max_steps), no warm-up
    want = [3e-2 * warmup_cosine(s, 2, 8) for s in range(8)] + [1e-2 * warmup_cosine(s, 0, 3) for s in range(3)]
    assert lrs == pytest.approx(want, rel=1e-12)
    assert lrs[0] == pytest.approx(1e-2) and lrs[2] == pytest.approx(3e-2)  # 1/3, then the peak
    assert warmup_cosine(0, 0, 10) == 1.0 and 0 < warmup_cosine(9, 0, 10) < 0.03


def test_trainable_patterns(tmp_path):
    m = TinyNet()
    assert trainable_names(m, ["head.*"]) == ["head.weight", "head.bias"]
    assert trainable_names(m, ["*.bias"]) == ["enc.bias", "head.bias"]
    with pytest.raises(ValueError, match="'decoder.\\*' matches no parameter.*enc.weight"):
        trainable_names(m, ["decoder.*"], "s")
    cfg = config(tmp_path, stages=[Stage(name="s", trainable=["Head.*"])])  # case-sensitive
    with pytest.raises(ValueError, match="matches no parameter"):
        Trainer(TinyNet(), NoisyRegression(n=8), cfg).fit()


def test_grad_accumulation_equals_large_batch(tmp_path):
    stages = [Stage(name="s", epochs=2, lr=1e-2)]
    a, b = TinyNet(), TinyNet()
    Trainer(a, NoisyRegression(n=16), config(tmp_path / "a", batch_size=2, grad_accum=2, max_grad_norm=None,
                                              stages=stages)).fit()
    Trainer(b, NoisyRegression(n=16), config(tmp_path / "b", batch_size=4, grad_accum=1, max_grad_norm=None,
                                              stages=stages)).fit()
    for n, w in a.state_dict().items():
        torch.testing.assert_close(w, b.state_dict()[n], rtol=0, atol=1e-6)
    assert not torch.equal(a.enc.weight, TinyNet().enc.weight)


def test_clipping_goes_through_accelerate(tmp_path, monkeypatch):
    from accelerate import Accelerator

    calls = []
    real = Accelerator.clip_grad_norm_

    def spy(self, parameters, max_norm, norm_type=2):
        parameters = list(parameters)
        calls.append((len(parameters), max_norm))
        return real(self, parameters, max_norm, norm_type)

    monkeypatch.setattr(Accelerator, "clip_grad_norm_", spy)
    Trainer(TinyNet(), NoisyRegression(n=28), config(tmp_path, save_every=0)).fit()
    assert calls == [(2, 0.5)] * 8 + [(4, 0.5)] * 3  # once per optimizer step, trainable params only
    calls.clear()
    Trainer(TinyNet(), NoisyRegression(n=28), config(tmp_path / "b", max_grad_norm=None, save_every=0)).fit()
    assert calls == []


# --------------------------------------------------------------------------- data order


def test_sampler_and_seeded_items():
    s = EpochSampler(10, seed=3)
    first = list(s)
    assert sorted(i for _, _, i in first) == list(range(10)) and first == list(s)
    s.set_epoch(1)
    second = list(s)
    assert [i for *_, i in second] != [i for *_, i in first] and second[0][:2] == (0, 1)
    s.stage = 1
    assert [i for *_, i in s] != [i for *_, i in second]

    items = SeededItems(NoisyRegression(n=10), seed=3)
    torch.manual_seed(0)
    before = torch.get_rng_state()
    x1 = items[(0, 0, 4)]["x"]
    assert torch.equal(torch.get_rng_state(), before)  # loading does not move the caller's generator
    assert torch.equal(items[(0, 0, 4)]["x"], x1)  # same position, same augmentation
    assert not torch.equal(items[(0, 1, 4)]["x"], x1)  # next epoch, new augmentation

    class Fixed(Dataset):  # says it draws no random number: read directly, no generator seeded
        deterministic = True

        def __len__(self):
            return 3

        def __getitem__(self, i):
            return {"state": torch.get_rng_state()}

    torch.manual_seed(0)
    assert torch.equal(SeededItems(Fixed(), seed=3)[(0, 0, 1)]["state"], torch.get_rng_state())
    noisy = NoisyRegression(n=10)
    noisy.deterministic = False  # only a True flag skips the seeding
    assert torch.equal(SeededItems(noisy, seed=3)[(0, 0, 4)]["x"], x1)

    class Stream(torch.utils.data.IterableDataset):
        def __iter__(self):
            return iter(range(3))

    with pytest.raises(TypeError, match="map-style"):
        SeededItems(Stream(), 0)


def test_workers_give_the_same_batches(tmp_path):
    """Augmentation is seeded per item, so worker processes change nothing."""
    stages = [Stage(name="s", epochs=1, lr=1e-2)]
    a, b = TinyNet(), TinyNet()
    ra = Trainer(a, NoisyRegression(n=16), config(tmp_path / "a", stages=stages, save_every=0)).fit()
    rb = Trainer(b, NoisyRegression(n=16), config(tmp_path / "b", stages=stages, save_every=0, num_workers=1)).fit()
    assert losses(ra.history) == losses(rb.history)


# --------------------------------------------------------------------------- batches, eval, files


class BatchNet(nn.Module):
    """Reads a :class:`medalign_lite.data.dataset.Batch`."""

    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(16, 14)

    def forward(self, batch):
        logits = self.lin(batch.images.flatten(1))
        target = torch.nan_to_num(batch.labels, nan=0.0).clamp(min=0)
        return {"loss": nn.functional.binary_cross_entropy_with_logits(logits, target)}


class BatchItems(Dataset):
    def __len__(self):
        return 8

    def __getitem__(self, i):
        return {"frontal": torch.randn(1, 4, 4), "text": f"report {i}", "study_id": f"s{i}",
                "labels": torch.tensor([float(i % 2)] * 14)}


def test_batch_dataclass_is_moved_with_its_to(tmp_path, monkeypatch):
    from medalign_lite.data.dataset import Batch, Collate

    moved = []
    real_to = Batch.to

    def spy(self, device, non_blocking=False):
        moved.append(torch.device(device).type)
        return real_to(self, device, non_blocking=non_blocking)

    monkeypatch.setattr(Batch, "to", spy)
    cfg = config(tmp_path, grad_accum=1, save_every=0, stages=[Stage(name="s", epochs=1, lr=1e-2)])
    result = Trainer(BatchNet(), BatchItems(), cfg, collate_fn=Collate()).fit()
    assert moved == ["cpu", "cpu"] and len(result.history) == 2


def test_eval_fn_is_logged_and_does_not_shift_training(tmp_path):
    seen = []

    def eval_fn(model):
        seen.append((model.training, torch.is_grad_enabled()))
        torch.rand(100)  # consumes randomness: must not change the training run
        return {"score": 0.5, "n": torch.tensor(3)}

    stages = [Stage(name="s", epochs=1, lr=1e-2)]
    plain = Trainer(TinyNet(dropout=0.3), NoisyRegression(n=28), config(tmp_path / "a", stages=stages)).fit()
    evald = Trainer(TinyNet(dropout=0.3), NoisyRegression(n=28), config(tmp_path / "b", stages=stages, eval_every=2),
                    eval_fn=eval_fn).fit()
    assert losses(evald.history) == losses(plain.history)
    evals = [r for r in evald.history if "eval/score" in r]
    assert [r["global_step"] for r in evals] == [2, 4]  # every 2 steps; step 4 also ends the stage
    assert evals[0]["eval/n"] == 3.0 and seen == [(False, False)] * 2


def test_checkpoint_files_load_safely(tmp_path, uninterrupted):
    out, model, result = uninterrupted
    ckpt = result.checkpoint
    assert ckpt == out / "checkpoints" / "step-11"
    assert {p.name for p in ckpt.iterdir()} == {"model.safetensors", "optimizer.pt", "scheduler.pt",
                                                "rng_state_0.pt", "trainer_state.json"}
    opt = torch.load(ckpt / "optimizer.pt", weights_only=True)
    assert len(opt["state"]) == 4 and opt["param_groups"][0]["betas"] == (0.9, 0.999)
    sched = torch.load(ckpt / "scheduler.pt", weights_only=True)
    assert sched["last_epoch"] == 3
    rng = torch.load(ckpt / "rng_state_0.pt", weights_only=True)
    assert set(rng) == {"python", "numpy", "torch", "cuda"}
    state = json.loads((ckpt / "trainer_state.json").read_text())
    assert (state["stage_index"], state["global_step"], state["stage_step"]) == (1, 11, 3)
    assert state["sampler"] == {"seed": 11, "stage": 1, "epoch": 0}
    weights = load_weights(ckpt / "model.safetensors")
    assert set(weights) == set(model.state_dict())
    assert all(torch.equal(weights[n], w) for n, w in model.state_dict().items())
    assert not list((out / "checkpoints").glob(".tmp-*"))
    cfg = load_config(TrainConfig, out / "config.yaml")
    assert cfg == config(out)


def test_keep_last_and_trained_only_weights(tmp_path):
    cfg = config(tmp_path, keep_last=2, save_weights="trained",
                 stages=[Stage(name="heads", epochs=1, lr=1e-2, trainable=["head.*"])])
    net = TinyNet()
    net.register_buffer("running", torch.ones(2))
    Trainer(net, NoisyRegression(n=28), cfg).fit()
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["step-3", "step-4"]
    weights = load_weights(tmp_path / "checkpoints" / "step-4" / "model.safetensors")
    assert set(weights) == {"head.weight", "head.bias", "running"}
    fresh = TinyNet()
    fresh.register_buffer("running", torch.zeros(2))
    load_checkpoint_weights(fresh, tmp_path / "checkpoints" / "step-4")  # not strict: frozen weights stay
    assert torch.equal(fresh.head.weight, net.head.weight) and torch.equal(fresh.running, torch.ones(2))


def test_tied_weights_are_saved_once(tmp_path):
    emb = nn.Embedding(5, 3)
    sd = {"a.weight": emb.weight, "b.weight": emb.weight, "c": torch.zeros(2)}
    save_weights(sd, tmp_path / "w.safetensors")
    back = load_weights(tmp_path / "w.safetensors")
    assert set(back) == {"a.weight", "b.weight", "c"} and back["a.weight"].data_ptr() == back["b.weight"].data_ptr()
    assert torch.equal(back["b.weight"], emb.weight.detach())


def test_resume_false_starts_over(tmp_path):
    cfg = config(tmp_path, stages=[Stage(name="s", epochs=1, lr=1e-2)])
    first = Trainer(TinyNet(), NoisyRegression(n=28), cfg).fit()
    (tmp_path / "checkpoints" / "step-99").mkdir()  # a stale folder without trainer_state.json
    (tmp_path / "checkpoints" / "step-99" / "junk").write_text("x")
    again = Trainer(TinyNet(), NoisyRegression(n=28), cfg).fit(resume=False)
    assert strip(again.history) == strip(first.history)
    assert len((tmp_path / "metrics.jsonl").read_text().splitlines()) == 4
    assert not (tmp_path / "checkpoints" / "step-99").exists()


def test_clear_errors(tmp_path):
    class NoLoss(nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = nn.Linear(4, 1)

        def forward(self, batch):
            return {"mse": self.lin(batch["x"]).mean()}

    cfg = config(tmp_path, stages=[Stage(name="s", epochs=1)])
    with pytest.raises(TypeError, match="'loss'"):
        Trainer(NoLoss(), NoisyRegression(n=8), cfg).fit()
    with pytest.raises(ValueError, match="fp16"):
        Trainer(TinyNet(), NoisyRegression(n=8), config(tmp_path, precision="fp16")).fit()
    with pytest.raises(ValueError, match="make no batch of 4"):
        Trainer(TinyNet(), NoisyRegression(n=2), config(tmp_path, drop_last=True)).fit()
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="CUDA is not available"):
            Trainer(TinyNet(), NoisyRegression(n=8), config(tmp_path, device="cuda")).fit()
    with pytest.raises(ValueError, match="unique"):
        TrainConfig(stages=[Stage(name="a"), Stage(name="a")])
    with pytest.raises(ValueError, match="warmup_ratio"):
        Stage(warmup_ratio=1.0)
    with pytest.raises(ValueError, match="batch_size"):
        TrainConfig(batch_size=0)
    with pytest.raises(TypeError, match="TrainConfig"):
        Trainer(TinyNet(), NoisyRegression(n=8), {"batch_size": 2})


# --------------------------------------------------------------------------- several processes


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_two_ddp_processes_match_one(tmp_path):
    """``accelerate launch`` with 2 CPU processes × batch 2 reaches the weights of 1 process × batch 4."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TQDM_DISABLE": "1", "HF_HOME": str(tmp_path / "hf"),
           "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]),
           "CUDA_VISIBLE_DEVICES": ""}  # CPU processes: accelerate's gloo barrier would address cuda:<rank>
    launcher = Path(sys.executable).with_name("accelerate")
    cmd = [str(launcher) if launcher.exists() else "accelerate", "launch", "--multi_gpu", "--num_processes", "2",
           "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
           "--main_process_port", str(_free_port()), str(REPO / "tests" / "_ddp_worker.py"), str(tmp_path / "ddp"), "2"]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=150, cwd=REPO, check=False)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]

    single = TinyNet()
    ref = Trainer(single, NoisyRegression(), make_config(tmp_path / "one", 4)).fit()
    ddp_weights = load_weights(tmp_path / "ddp" / "final.safetensors")
    diff = max((ddp_weights[n] - w).abs().max().item() for n, w in single.state_dict().items())
    assert diff < 1e-5, diff
    assert not torch.equal(single.enc.weight, TinyNet().enc.weight)  # stage 2 trained the encoder under DDP too
    rows = [json.loads(line) for line in (tmp_path / "ddp" / "metrics.jsonl").read_text().splitlines()]
    assert [r["global_step"] for r in rows] == [r["global_step"] for r in ref.history]
    assert losses(rows) == pytest.approx(losses(ref.history), abs=1e-5)
    state = json.loads((latest_checkpoint(tmp_path / "ddp") / "trainer_state.json").read_text())
    assert state["num_processes"] == 2
    assert {p.name for p in latest_checkpoint(tmp_path / "ddp").glob("rng_state_*.pt")} == {"rng_state_0.pt",
                                                                                          "rng_state_1.pt"}


# --------------------------------------------------------------------------- GPU only (skipped without CUDA)

needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


@needs_cuda
def test_exact_resume_on_gpu_with_mixed_precision(tmp_path):
    """bf16 autocast and CUDA dropout: the CUDA generator is saved and restored too."""
    def cfg(out):
        return config(out, device="auto", precision="auto")

    ref_model = TinyNet(dropout=0.3)
    trainer = Trainer(ref_model, NoisyRegression(n=28), cfg(tmp_path / "full"))
    ref = trainer.fit()
    assert trainer.accelerator.device.type == "cuda"
    assert trainer.accelerator.mixed_precision == ("bf16" if torch.cuda.is_bf16_supported() else "fp16")
    with pytest.raises(Killed):
        Trainer(KillAfter(TinyNet(dropout=0.3), 9), NoisyRegression(n=28), cfg(tmp_path / "cut")).fit()
    rng = torch.load(latest_checkpoint(tmp_path / "cut") / "rng_state_0.pt", weights_only=True)
    assert rng["cuda"] is not None
    fresh = TinyNet(dropout=0.3, seed=4)
    result = Trainer(fresh, NoisyRegression(n=28), cfg(tmp_path / "cut")).fit()
    assert losses(result.history) == losses(ref.history)
    for name, w in ref_model.state_dict().items():
        assert torch.equal(fresh.state_dict()[name], w), name


@needs_cuda
@pytest.mark.slow
def test_fsdp_recipe_one_stage_per_launch(tmp_path):
    """The FSDP YAML of docs/distributed.md, one process, a 2-layer Llama.

    Reference: launch 1 runs stage 1 and stops (``done=False``), launch 2 resumes with stage 2.
    Cut: a copy of the reference after launch 1; its stage 2 dies after step 14 and a third launch
    resumes from step 12 (FSDP optimizer state reloaded): same losses and weights as the reference.
    """
    import shutil

    text = (REPO / "docs" / "distributed.md").read_text()
    recipe = yaml.safe_load(text.split("<!-- fsdp-config -->", 1)[1].split("```yaml", 1)[1].split("```", 1)[0])
    assert recipe["fsdp_config"]["fsdp_transformer_layer_cls_to_wrap"] == "LlamaDecoderLayer"
    recipe["num_processes"] = 1
    (tmp_path / "fsdp.yaml").write_text(yaml.safe_dump(recipe))
    launcher = Path(sys.executable).with_name("accelerate")

    def launch(out, kill=0):
        env = {**os.environ, "TQDM_DISABLE": "1", "HF_HOME": str(tmp_path / "hf"),
               "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]),
               "MEDALIGN_TEST_KILL_AFTER": str(kill)}
        cmd = [str(launcher) if launcher.exists() else "accelerate", "launch", "--config_file", str(tmp_path / "fsdp.yaml"),
               "--main_process_port", str(_free_port()), str(REPO / "tests" / "_ddp_worker.py"), str(out), "4", "fsdp"]
        return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300, cwd=REPO, check=False)

    ref, cut = tmp_path / "ref", tmp_path / "cut"
    proc = launch(ref)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    shutil.copytree(ref, cut)
    proc = launch(ref)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    first = json.loads((ref / "launch-1.json").read_text())
    second = json.loads((ref / "launch-2.json").read_text())
    assert first["done"] is False and second["done"] is True
    assert [r["stage"] for r in first["history"]] == ["head"] * 8
    assert [r["global_step"] for r in second["history"]] == list(range(1, 17))
    assert [r["stage"] for r in second["history"][8:]] == ["all"] * 8
    init = TinyLlama().state_dict()
    after_head = load_weights(ref / "checkpoints" / "step-8" / "model.safetensors")
    assert set(after_head) == set(init)  # plain names, no FSDP prefixes
    assert torch.equal(after_head["lm.model.embed_tokens.weight"], init["lm.model.embed_tokens.weight"])
    assert not torch.equal(after_head["lm.lm_head.weight"], init["lm.lm_head.weight"])
    final = load_weights(ref / "checkpoints" / "step-16" / "model.safetensors")
    assert not torch.equal(final["lm.model.embed_tokens.weight"], init["lm.model.embed_tokens.weight"])
    assert (ref / "checkpoints" / "step-16" / "optimizer.bin").is_file()

    assert launch(cut, kill=6).returncode != 0  # dies in step 15 of stage 2; newest checkpoint: step 12
    assert latest_checkpoint(cut).name == "step-12"
    proc = launch(cut)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    resumed = json.loads((cut / "launch-2.json").read_text())
    assert resumed["done"] is True
    assert losses(resumed["history"]) == losses(second["history"])
    again = load_weights(cut / "checkpoints" / "step-16" / "model.safetensors")
    for name, w in final.items():
        assert torch.equal(again[name], w), name
