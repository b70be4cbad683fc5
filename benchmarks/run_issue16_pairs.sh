#!/usr/bin/env bash
# issue 16, second round: the 2D pair (unet2d vs segformer2d) and the identity-attention ablation
# (segformer3d_cpu vs the same with attention: identity), four runs side by side, one thread each,
# the same --time-budget: each pair shares every slowdown.
# Usage: run_issue16_pairs.sh [BUDGET_MIN] [all|2d-adamw]. 2d-adamw: the fair 2D pair only, two runs
# side by side (one core each): unet2d on unet3d_cpu.yaml's optimiser (AdamW 3e-3, cosine, 1 warm-up
# epoch) against segformer2d as shipped, both at batch 32.
set -u
cd "$(dirname "$0")/.."
B=${1:-25}
MODE=${2:-all}
sed 's/attention: sdpa .*/attention: identity/' configs/segformer3d_cpu.yaml > /tmp/segformer3d_cpu_identity.yaml
grep -q "attention: identity" /tmp/segformer3d_cpu_identity.yaml || exit 1
# 2D: the plan's batch (290 slices, nnU-Net's GPU-sized choice) gives a few dozen steps in these minutes; both get 32
for m in unet2d segformer2d; do sed 's/^batch_size: null .*/batch_size: 32/' configs/$m.yaml > /tmp/${m}_b32.yaml
  grep -q "^batch_size: 32" /tmp/${m}_b32.yaml || exit 1; done
for w in c d $([ "$MODE" = all ] && echo e f); do rm -rf /tmp/medseg_bench/hippo_$w; mkdir -p /tmp/medseg_bench/hippo_$w
  cp -r /tmp/medseg_bench/hippo/{fingerprint.json,manifest.json,plan.json,preprocessed,splits.json} /tmp/medseg_bench/hippo_$w/; done
if [ "$MODE" = 2d-adamw ]; then
  .venv/bin/python - <<'PY' || exit 1
import yaml
cfg = yaml.safe_load(open("/tmp/unet2d_b32.yaml"))
cfg["optimizer"] = yaml.safe_load(open("configs/unet3d_cpu.yaml"))["optimizer"]
yaml.safe_dump(cfg, open("/tmp/unet2d_adamw_b32.yaml", "w"), sort_keys=False)
PY
fi
run() { OMP_NUM_THREADS=1 .venv/bin/python benchmarks/bench_train_hippocampus.py --config $1 --time-budget $B --iterations-per-epoch 25 --work /tmp/medseg_bench/hippo_$2 > /tmp/medseg_bench/b16_$3.log 2>&1 & }
if [ "$MODE" = 2d-adamw ]; then
  run /tmp/unet2d_adamw_b32.yaml c unet2d_adamw
  run /tmp/segformer2d_b32.yaml d segformer2d_pair
  wait; exit 0
fi
run /tmp/unet2d_b32.yaml c unet2d
run /tmp/segformer2d_b32.yaml d segformer2d
run configs/segformer3d_cpu.yaml e segformer3d_sdpa
run /tmp/segformer3d_cpu_identity.yaml f segformer3d_identity
wait
