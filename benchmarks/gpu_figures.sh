#!/usr/bin/env bash
# Every GPU-only figure the issues ask for, in one run (about 8-10 minutes on an H100; each bench has
# its own time limit, and one that fails does not stop the others):
#   #16  the AGA head at the paper's shapes in fp32 and bf16, compiled (as a run uses it) and eager,
#        against the encoders and GLoRIA; one paper-scale S2D step (Vicuna-7B's shape in bf16, LoRA
#        r = 16, gradient checkpointing, batch 4, ~250 tokens); every method's tutorial training step;
#   #14  ALTA's masked adapter step against unmasked full fine-tuning at batch 24 (fp32 and bf16);
#   #13  ExGra-Med's aligner share against the LM step at paper shapes.
# Writes one .txt (what the bench printed) and one .json (its last line) per bench into OUT (default .).
# Arguments: the names of the benches to run (default: all), e.g. `gpu_figures.sh aga alta_fp32`, to
# split the run across calls that each have a time limit (the limits below add up to 20 minutes).
# Record the numbers in benchmarks/RESULTS.md with the device, the date and the PyTorch version.
set -uo pipefail
OUT="${OUT:-.}"
mkdir -p "$OUT"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$OUT/gpu.txt"
python -c "import torch; print('torch', torch.__version__)" | tee -a "$OUT/gpu.txt"

ONLY=" $* "
run() {  # run NAME SECONDS medalign-bench-arguments...
  local name=$1 limit=$2
  shift 2
  if [ "$ONLY" != "  " ] && [[ "$ONLY" != *" $name "* ]]; then return 0; fi
  echo "== $name: medalign bench $*" | tee -a "$OUT/gpu.txt"
  local t0=$SECONDS
  if timeout "$limit" medalign bench "$@" --json > "$OUT/$name.txt" 2> "$OUT/$name.err"; then
    tail -n 1 "$OUT/$name.txt" > "$OUT/$name.json"
    echo "   done in $((SECONDS - t0)) s" | tee -a "$OUT/gpu.txt"
  else
    echo "   FAILED (exit $?) after $((SECONDS - t0)) s; see $name.err" | tee -a "$OUT/gpu.txt"
  fi
}

run s2d_step_stage1 240 s2d-step --device cuda --stage 1
run s2d_step_stage3 180 s2d-step --device cuda --stage 3
run aga 180 aga --device cuda
run alta_fp32 120 alta --device cuda
run alta_bf16 120 alta --device cuda --dtype bfloat16
run exgramed 120 exgramed --device cuda
run train_step 240 train-step --method all --device cuda
