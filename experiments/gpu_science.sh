#!/usr/bin/env bash
# The paper's contrasts (issue 24) on one GPU, sized for <= 8 minutes of one H200 including compile:
# configs/family_gpu.py (4.2M -> 44.3M non-embedding parameters, bf16) at a fifth of its budget, so every
# progressive lineage sees under one pass over Shakespeare (0.79 epochs for the largest), 3 seeds x the three arms
# of claims (a)-(c): progressive (size-adjusted re-warm peak), fixed_lr (one re-warm peak), independent. No LR
# sweep runs here (it would not fit the 8 minutes): every arm uses family_gpu's own power rule, fixed_lr its
# first member's peak. Prints the claims table (comparison.md) and leaves the raw files in $OUT or runs/.
# With WHEELS=DIR it first installs the wheels in DIR (no index), as gpu_check.sh does.
#   usage: bash experiments/gpu_science.sh
# shellcheck source=experiments/gpu_env.sh
. "$(dirname "$0")/gpu_env.sh"
W="${OUT:-runs}/gpu_science"
start=$(date +%s)
# --parallel 1: one accelerator; the arms and seeds share one persistent compilation cache (W/xla_cache)
timeout 470 python3 experiments/reproduce_paper.py --config configs/family_gpu.py --workdir "$W" \
  --config.budget_scale=0.2 --seeds 0,1,2 --arms progressive,fixed_lr,independent --parallel 1 \
  --bench_suite '' --task_items 100
echo "gpu_science: $(( $(date +%s) - start )) s wall for 3 seeds x 3 arms; raw: $W/comparison.json"
