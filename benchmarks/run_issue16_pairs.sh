#!/usr/bin/env bash
# issue 16, second round: the 2D pair (unet2d vs segformer2d) and the identity-attention ablation
# (segformer3d_cpu vs the same with attention: identity), four runs side by side, one thread each,
# the same --time-budget: each pair shares every slowdown.
set -u
cd "$(dirname "$0")/.."
B=${1:-25}
sed 's/attention: sdpa .*/attention: identity/' configs/segformer3d_cpu.yaml > /tmp/segformer3d_cpu_identity.yaml
grep -q "attention: identity" /tmp/segformer3d_cpu_identity.yaml || exit 1
# 2D: the plan's batch (290 slices, nnU-Net's GPU-sized choice) gives a few dozen steps in these minutes; both get 32
for m in unet2d segformer2d; do sed 's/^batch_size: null .*/batch_size: 32/' configs/$m.yaml > /tmp/${m}_b32.yaml
  grep -q "^batch_size: 32" /tmp/${m}_b32.yaml || exit 1; done
for w in c d e f; do rm -rf /tmp/medseg_bench/hippo_$w; mkdir -p /tmp/medseg_bench/hippo_$w
  cp -r /tmp/medseg_bench/hippo/{fingerprint.json,manifest.json,plan.json,preprocessed,splits.json} /tmp/medseg_bench/hippo_$w/; done
run() { OMP_NUM_THREADS=1 .venv/bin/python benchmarks/bench_train_hippocampus.py --config $1 --time-budget $B --iterations-per-epoch 25 --work /tmp/medseg_bench/hippo_$2 > /tmp/medseg_bench/b16_$3.log 2>&1 & }
run /tmp/unet2d_b32.yaml c unet2d
run /tmp/segformer2d_b32.yaml d segformer2d
run configs/segformer3d_cpu.yaml e segformer3d_sdpa
run /tmp/segformer3d_cpu_identity.yaml f segformer3d_identity
wait
