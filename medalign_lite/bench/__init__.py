"""Benchmarks behind ``medalign bench ...``: each measures in one run and returns plain dicts,
so ratios are taken on the same machine at the same moment (this project's shared machines
are noisy; absolute times are only comparable within one run).

- :mod:`.losses`: GLoRIA's local loss (``bench gloria``), AGA's head against the encoders and
  GLoRIA at the paper's shapes (``bench aga``);
- :mod:`.generation`: S2D-ALIGN's report generation (``bench s2d-generate``) and its aligner
  (SMA_v) against its encoder;
- :mod:`.s2d_step`: S2D-ALIGN's training step at paper scale (Vicuna-7B's shape, LoRA, gradient
  checkpointing; ``bench s2d-step``);
- :mod:`.exgramed`: ExGra-Med's aligner and text passes as shares of the LM step, the solvers
  per step (``bench exgramed``);
- :mod:`.alta`: ALTA's trainable fraction at paper scale, a masked adapter step against an
  unmasked full fine-tuning step (``bench alta``);
- :mod:`.train_step`: one training step of each registered method at its tutorial config,
  phase by phase (``bench train-step``);
- :mod:`.all`: every registered method's benches in one run, one dict keyed by method with
  the ratios between them (``bench all``);
- :mod:`.common`: synchronised timing, peak memory, the device's name, the load average.
"""
from __future__ import annotations

from .all import CPU_SHAPES, PAPER_SHAPES, AllShapes, bench_all
from .alta import bench_alta
from .common import PeakMemory, load_avg, time_fn
from .exgramed import bench_exgramed
from .generation import IU_MEAN_REPORT_TOKENS, bench_s2d_aligner, bench_s2d_generate
from .losses import BERT_BASE, bench_aga, bench_gloria
from .s2d_step import VICUNA_7B, bench_s2d_step
from .train_step import TrainStepSetup, bench_train_step, register_setup, train_step_setup

__all__ = ["BERT_BASE", "CPU_SHAPES", "IU_MEAN_REPORT_TOKENS", "PAPER_SHAPES", "VICUNA_7B", "AllShapes",
           "PeakMemory", "TrainStepSetup", "bench_aga", "bench_all", "bench_alta", "bench_exgramed",
           "bench_gloria", "bench_s2d_aligner", "bench_s2d_generate", "bench_s2d_step", "bench_train_step",
           "load_avg", "register_setup", "time_fn", "train_step_setup"]
