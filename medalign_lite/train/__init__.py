"""Accelerate-based trainer: a run is a list of stages.

A **stage** (:class:`Stage`) names which parameters train (glob patterns over parameter names,
everything else frozen), for how long, at which learning rate and with which auxiliary inputs.
Stage *k* starts from the weights stage *k-1* ended with (same model object) and gets a fresh
AdamW over its own trainable parameters and a fresh linear-warm-up + cosine schedule. This is
S2D-ALIGN's three-stage curriculum (3e-4 → 1e-4 → 5e-5, each stage adding auxiliary inputs),
and a single stage is an ordinary run (ALTA: adapters, norms and heads train, backbones stay
frozen).

The model is any ``nn.Module`` whose ``forward(batch)`` returns a dict with a scalar ``loss``
and, optionally, named scalar parts (logged next to the loss; anything else in the dict is
ignored). If it defines ``set_stage(stage)`` the trainer calls it before each stage, with the
:class:`Stage` (its ``inputs`` dict says what the stage adds). ``set_stage`` must be
*declarative*: the model's configuration must depend on the stage given, not on the stages
called before, because a resumed run calls it only for the stage it resumes in.

Files under ``output_dir``::

    config.yaml                 the TrainConfig of the run
    metrics.jsonl               one JSON row per logged step (and per evaluation), flushed per row
    checkpoints/step-{N}/       after optimizer step N (every ``save_every`` steps and at the end of
        model.safetensors       each stage): model weights (all of them, or with
                                ``save_weights="trained"`` only the parameters some stage so far
                                trains, plus buffers);
        optimizer.pt            AdamW state (``torch.save``; read with ``weights_only=True``)
        scheduler.pt            LR schedule state (idem); scaler.pt with fp16
        rng_state_{rank}.pt     python / numpy / torch / CUDA generator states of each process
        trainer_state.json      stage index, epoch, step within epoch and stage, global step,
                                sampler seed/stage/epoch, the open logging window, the skipped
                                steps in a row, the sizes of the files above (written last)

**Exact resume.** ``fit(resume=True)`` continues from the newest complete checkpoint, and the
losses after it are bit-identical to those of a run that never stopped (same machine, seed and
process count), because nothing random depends on *when* the run started:

- data order: an :class:`EpochSampler` draws each epoch's permutation from
  ``(seed, stage, epoch)``; the batches of the current epoch already consumed are skipped with
  ``accelerate``'s ``skip_first_batches`` (at the index level: nothing is loaded);
- data augmentation: each item is produced under generators seeded from
  ``(seed, stage, epoch, index)`` and the caller's generator states are restored after, so
  augmentation is a pure function of the item's position, whatever the worker, the prefetching
  or the number of processes, and loading never moves the training generators;
- the DataLoader has its own ``torch.Generator`` (worker seeds are otherwise drawn from the
  global generator when an iterator is created, which happens at a different moment on resume);
- dropout and everything else in the forward pass: the global generator states are saved with
  each checkpoint and restored last when resuming; ``eval_fn`` runs with the generators
  preserved, so evaluation never shifts training randomness.

**Non-finite steps** (:mod:`.guard`). An optimizer step whose loss or gradient norm is not finite
is skipped: weights, AdamW state and LR schedule untouched, gradients zeroed, buffers its forward
passes changed restored; a ``logging`` warning and a ``metrics.jsonl`` row (``skipped``,
``study_ids``) report it. The step counters still advance (they are positions in the data
order), so exact resume holds with skipped steps too. ``TrainConfig.max_bad_steps`` skipped
steps in a row stop the run with :class:`NonFiniteLossError` (naming the stage, the global step
and the study ids); a checkpoint is never written with non-finite weights
(:class:`NonFiniteWeightsError`). Under several processes every process takes the same
decision (the flags are gathered), under gradient accumulation it is one decision per
optimizer step. The cost: one ``isfinite`` per micro-batch and on the total gradient norm
(which clipping computes anyway; without clipping one ``_foreach_norm`` over the gradients) and
one host sync per optimizer step.

**A corrupt checkpoint.** ``fit(resume=True)`` reads the newest checkpoint whole before resuming
(:func:`verify_checkpoint`); one that does not read back is named in a warning with the
underlying error, moved aside to ``checkpoints/corrupt-step-N``, and the previous one is used,
saying so; when none reads back, one :class:`CorruptCheckpointError` names the folder.

**Several processes.** Under ``accelerate launch`` each process sees ``batch_size`` examples per
micro-batch: the global batch is ``batch_size × num_processes × grad_accum``. The model is
wrapped (DDP) per stage, after freezing, so a stage's newly trainable parameters are
synchronised. Under FSDP a model cannot be re-wrapped: ``fit`` runs one stage per launch and
returns ``done=False``; launching the same command again resumes with the next stage (see
docs/distributed.md).

The package, in reading order:

- :mod:`.stages`: :class:`Stage`, :class:`TrainConfig`, :class:`TrainResult`; the LR schedule
  (:func:`warmup_cosine`) and the freezing of a stage (:func:`trainable_names`,
  :func:`freeze_for_stage`);
- :mod:`.sampling`: the data order (:class:`EpochSampler`) and seeded augmentation
  (:class:`SeededItems`);
- :mod:`.checkpoints`: weights on disk (:func:`save_weights`, :func:`load_weights`) and the
  checkpoint folders (:func:`latest_checkpoint`, :func:`load_checkpoint_weights`,
  :func:`verify_checkpoint`, :func:`resume_checkpoint`);
- :mod:`.guard`: the non-finite guard (:class:`StepGuard`, :class:`NonFiniteLossError`,
  :class:`NonFiniteWeightsError`);
- :mod:`.trainer`: :class:`Trainer`, the loop, its checkpoints and ``metrics.jsonl``;
- :mod:`.timing`: where a step's time goes (:func:`record_steps`: data, forward, backward,
  optimizer, bookkeeping per optimizer step; ``medalign bench train-step`` reads it).
"""
from __future__ import annotations

from .checkpoints import (
    CHECKPOINT_PREFIX,
    TRAINER_STATE,
    WEIGHTS,
    CorruptCheckpointError,
    checkpoint_folders,
    latest_checkpoint,
    load_checkpoint_weights,
    load_weights,
    replace_checkpoint_weights,
    resume_checkpoint,
    save_weights,
    verify_checkpoint,
)
from .guard import (
    NonFiniteError,
    NonFiniteLossError,
    NonFiniteWeightsError,
    StepGuard,
    batch_study_ids,
)
from .sampling import EpochSampler, SeededItems
from .stages import (
    PRECISIONS,
    Stage,
    TrainConfig,
    TrainResult,
    freeze_for_stage,
    trainable_names,
    warmup_cosine,
)
from .timing import PHASES, StepTimer, record_steps
from .trainer import Trainer

__all__ = [
    "CHECKPOINT_PREFIX",
    "PHASES",
    "PRECISIONS",
    "TRAINER_STATE",
    "WEIGHTS",
    "CorruptCheckpointError",
    "EpochSampler",
    "NonFiniteError",
    "NonFiniteLossError",
    "NonFiniteWeightsError",
    "SeededItems",
    "Stage",
    "StepGuard",
    "StepTimer",
    "TrainConfig",
    "TrainResult",
    "Trainer",
    "batch_study_ids",
    "checkpoint_folders",
    "freeze_for_stage",
    "latest_checkpoint",
    "load_checkpoint_weights",
    "load_weights",
    "record_steps",
    "replace_checkpoint_weights",
    "resume_checkpoint",
    "save_weights",
    "trainable_names",
    "verify_checkpoint",
    "warmup_cosine",
]
