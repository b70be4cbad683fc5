#!/usr/bin/env bash
# issue 22, part 2: training ablations at equal CPU-minutes. Five runs side by side, one thread each,
# the same --time-budget (each gets about 2/5 of a core; all five share every slowdown of the machine):
#   base   configs/unet3d_cpu.yaml as shipped (batch 2, deep supervision)
#   resenc configs/resenc3d_cpu.yaml (nnU-Net's ResEnc-M encoder, one-conv decoder stages)
#   nods   unet3d_cpu without deep supervision (the loss on the full-resolution output only)
#   b4     unet3d_cpu at batch 4 (half the steps of twice the samples)
#   ema    unet3d_cpu validating and shipping a moving average of the weights (weight_ema: 0.99)
# Usage: benchmarks/run_issue22_ablations.sh [BUDGET_MIN] [WORK_TEMPLATE]; logs in /tmp/medseg_bench/b22_<name>.log
set -u
cd "$(dirname "$0")/.."
B=${1:-50}
T=${2:-/tmp/medseg_bench/hippo}
sed 's/^    deep_supervision: true/    deep_supervision: false/' configs/unet3d_cpu.yaml > /tmp/unet3d_cpu_nods.yaml
sed 's/^batch_size: 2 .*/batch_size: 4/' configs/unet3d_cpu.yaml > /tmp/unet3d_cpu_b4.yaml
sed 's/^weight_ema: null/weight_ema: 0.99/' configs/unet3d_cpu.yaml > /tmp/unet3d_cpu_ema.yaml
grep -q "deep_supervision: false" /tmp/unet3d_cpu_nods.yaml && grep -q "^batch_size: 4" /tmp/unet3d_cpu_b4.yaml \
  && grep -q "^weight_ema: 0.99" /tmp/unet3d_cpu_ema.yaml || exit 1
for w in base resenc nods b4 ema; do rm -rf /tmp/medseg_bench/hippo_$w; mkdir -p /tmp/medseg_bench/hippo_$w
  cp -r $T/{fingerprint.json,manifest.json,plan.json,preprocessed} /tmp/medseg_bench/hippo_$w/; done
run() { OMP_NUM_THREADS=1 .venv/bin/python benchmarks/bench_train_hippocampus.py --config $1 --time-budget $B --iterations-per-epoch 25 --work /tmp/medseg_bench/hippo_$2 > /tmp/medseg_bench/b22_$2.log 2>&1 & }
run configs/unet3d_cpu.yaml base
run configs/resenc3d_cpu.yaml resenc
run /tmp/unet3d_cpu_nods.yaml nods
run /tmp/unet3d_cpu_b4.yaml b4
run /tmp/unet3d_cpu_ema.yaml ema
wait
grep -h "^RESULT" /tmp/medseg_bench/b22_{base,resenc,nods,b4,ema}.log
