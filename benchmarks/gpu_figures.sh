#!/usr/bin/env bash
# The GPU figures of issue #16 in one run (about 5 minutes on an H100): the AGA head at the paper's
# shapes in fp32 and bf16, compiled (as a run uses it) and eager, against the encoders and GLoRIA;
# then every method's tutorial training step on the GPU. Writes JSON next to OUT (default: .).
# Record the numbers in benchmarks/RESULTS.md with the device, the date and the PyTorch version.
set -euo pipefail
OUT="${OUT:-.}"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$OUT/gpu.txt"
python -c "import torch; print('torch', torch.__version__)" | tee -a "$OUT/gpu.txt"
medalign bench aga --device cuda --json | tee "$OUT/aga.txt"
tail -n 1 "$OUT/aga.txt" > "$OUT/aga.json"
medalign bench train-step --method all --device cuda --json | tee "$OUT/train_step.txt"
tail -n 1 "$OUT/train_step.txt" > "$OUT/train_step.json"
