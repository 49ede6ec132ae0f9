#!/usr/bin/env bash
# GPU/TPU check in one script (<= 8 min on one H200): MFU of a ~1B train step (seq 2048, bf16)
# and expansion bandwidth. Installs nothing from the network; with WHEELS=DIR it first installs
# the wheels in DIR (no index) into a scratch site dir, for machines without internet.
#   usage: bash experiments/gpu_check.sh
# shellcheck source=experiments/gpu_env.sh
. "$(dirname "$0")/gpu_env.sh"
echo "== bench_train: paper_family 1b member, seq 2048, bf16, batch 16"
python3 experiments/bench_train.py --config configs/paper_family.py --member 1b --config.data.seq_len=2048 \
  --config.data.batch_size=16 --config.optimizer.grad_accum_steps=1 --config.mesh.fsdp=-1 --steps 10
echo "== bench_train: same, remat dots (more memory, less recompute)"
python3 experiments/bench_train.py --config configs/paper_family.py --member 1b --config.data.seq_len=2048 \
  --config.data.batch_size=16 --config.optimizer.grad_accum_steps=1 --config.mesh.fsdp=-1 --steps 10 \
  --config.model.remat_policy=dots
echo "== bench_expand: ~254M -> ~501M params"
python3 experiments/bench_expand.py --reps 5
