#!/usr/bin/env bash
# issue 22, part 2: training ablations at equal CPU-minutes. Runs side by side, one thread each, the
# same --time-budget (with N runs each gets about 2/N of a core; all share every slowdown of the machine):
#   base   configs/unet3d_cpu.yaml as shipped (batch 2, patch 40x56x40, deep supervision)
#   resenc configs/resenc3d_cpu.yaml (nnU-Net's ResEnc-M encoder, one-conv decoder stages)
#   resenc_w05 resenc3d_cpu at unet3d_cpu's width 0.5 (half the features per stage)
#   nods   unet3d_cpu without deep supervision (the loss on the full-resolution output only)
#   b4     unet3d_cpu at batch 4 (half the steps of twice the samples)
#   p32b4  unet3d_cpu at patch 32x40x32 and batch 4 (about the same voxels per step as base: patch against batch)
#   ema    unet3d_cpu validating and shipping a moving average of the weights (weight_ema: 0.99)
#   augnn  unet3d_cpu with configs/unet3d.yaml's augmentation strength (nnU-Net's) instead of the lighter preset's
#   aug_half unet3d_cpu with half the preset's augmentation probabilities (affine, intensity, noise)
#   dsw_equal / dsw_steep  deep supervision weights 1, 1, 1, ... / 1, 1/4, 1/16, ... (loss.deep_supervision_decay
#          1.0 / 0.25) instead of nnU-Net's 1, 1/2, 1/4, ...
#   lr2x / lr_half  unet3d_cpu at twice / half its AdamW learning rate (6e-3 / 1.5e-3)
#   aug_anneal / aug_fade / aug_ramp  augmentation strength over the run (augment.strength_start -> _end): the
#          preset's probabilities (mirroring aside) times 2 -> 0 (strong early, none at the end; the same amount
#          on average) / 1 -> 0 / 0 -> 2 (none early, strong at the end)
#   p32b4_fade  the two that came out ahead, together: p32b4 with aug_fade's strength 1 -> 0
#   ens    half the budget on configs/unet2d_cpu.yaml, then half on unet3d_cpu, one after the other in the
#          same slot; benchmarks/bench_ensemble_2d3d.py then scores each and their mean probabilities
# Usage: benchmarks/run_issue22_ablations.sh [BUDGET_MIN] [WORK_TEMPLATE] [VARIANT...]
#        (default variants: base resenc nods b4 ema); logs in /tmp/medseg_bench/b22_<name>.log
set -u
cd "$(dirname "$0")/.."
B=${1:-50}
T=${2:-/tmp/medseg_bench/hippo}
shift 2 2>/dev/null || shift $#
VARIANTS=${*:-base resenc nods b4 ema}
PY=${PYTHON:-.venv/bin/python}
set_key() {  # set_key OUT 'sed expression' 'grep check' [PRESET]: a variant of the preset (default unet3d_cpu), refused if the edit did not apply
  sed "$2" "${4:-configs/unet3d_cpu.yaml}" > "$1"; grep -q "$3" "$1" || { echo "variant $1: edit did not apply" >&2; exit 1; }; }
set_key /tmp/unet3d_cpu_nods.yaml 's/^    deep_supervision: true/    deep_supervision: false/' "deep_supervision: false"
set_key /tmp/unet3d_cpu_b4.yaml 's/^batch_size: 2 .*/batch_size: 4/' "^batch_size: 4"
set_key /tmp/unet3d_cpu_ema.yaml 's/^weight_ema: null/weight_ema: 0.99/' "^weight_ema: 0.99"
sed -e 's/^batch_size: 2 .*/batch_size: 4/' -e 's/^patch_size: null .*/patch_size: [32, 40, 32]/' configs/unet3d_cpu.yaml > /tmp/unet3d_cpu_p32b4.yaml
grep -q "^patch_size: \[32, 40, 32\]" /tmp/unet3d_cpu_p32b4.yaml && grep -q "^batch_size: 4" /tmp/unet3d_cpu_p32b4.yaml || exit 1
# nnU-Net's strength, as in configs/unet3d.yaml
sed -e 's/^  affine: .*/  affine: 0.2/' -e 's/^  rotate_degrees: .*/  rotate_degrees: 30.0/' -e 's/^  scale_range: .*/  scale_range: 0.3/' \
    -e 's/^  brightness: .*/  brightness: 0.15/' -e 's/^  contrast: .*/  contrast: 0.15/' -e 's/^  gamma: .*/  gamma: 0.3/' \
    -e 's/^  noise: .*/  noise: 0.1/' -e 's/^  blur: .*/  blur: 0.2/' -e 's/^  low_resolution: .*/  low_resolution: 0.25/' \
    configs/unet3d_cpu.yaml > /tmp/unet3d_cpu_augnn.yaml
[ "$(grep -cE '^  (affine: 0.2|rotate_degrees: 30.0|scale_range: 0.3|brightness: 0.15|contrast: 0.15|gamma: 0.3|noise: 0.1|blur: 0.2|low_resolution: 0.25)$' /tmp/unet3d_cpu_augnn.yaml)" = 9 ] || exit 1
sed -e 's/^  affine: .*/  affine: 0.05/' -e 's/^  brightness: .*/  brightness: 0.05/' -e 's/^  contrast: .*/  contrast: 0.05/' \
    -e 's/^  gamma: .*/  gamma: 0.05/' -e 's/^  noise: .*/  noise: 0.025/' configs/unet3d_cpu.yaml > /tmp/unet3d_cpu_aug_half.yaml
[ "$(grep -cE '^  (affine|brightness|contrast|gamma): 0.05$|^  noise: 0.025$' /tmp/unet3d_cpu_aug_half.yaml)" = 5 ] || exit 1
set_key /tmp/unet3d_cpu_dsw_equal.yaml 's/^  options: {}/  options: {}\n  deep_supervision_decay: 1.0/' "^  deep_supervision_decay: 1.0"
set_key /tmp/unet3d_cpu_dsw_steep.yaml 's/^  options: {}/  options: {}\n  deep_supervision_decay: 0.25/' "^  deep_supervision_decay: 0.25"
set_key /tmp/unet3d_cpu_lr2x.yaml 's/^  lr: 3.0e-3$/  lr: 6.0e-3/' "^  lr: 6.0e-3$"
set_key /tmp/unet3d_cpu_resenc_w05.yaml 's/^  features_per_stage: null .*/&\n  width: 0.5/' "^  width: 0.5$" configs/resenc3d_cpu.yaml
set_key /tmp/unet3d_cpu_lr_half.yaml 's/^  lr: 3.0e-3$/  lr: 1.5e-3/' "^  lr: 1.5e-3$"
set_strength() {  # set_strength OUT START END [SOURCE]: SOURCE (default the preset) with augment.strength_start/_end, refused unless both lines say so
  sed -e "s/^  strength_start: 1.0 /  strength_start: $2 /" -e "s/^  strength_end: 1.0 /  strength_end: $3 /" "${4:-configs/unet3d_cpu.yaml}" > "$1"
  [ "$(grep -cE "^  strength_start: $2 |^  strength_end: $3 " "$1")" = 2 ] || { echo "variant $1: edit did not apply" >&2; exit 1; }; }
set_strength /tmp/unet3d_cpu_aug_anneal.yaml 2.0 0.0
set_strength /tmp/unet3d_cpu_aug_fade.yaml 1.0 0.0
set_strength /tmp/unet3d_cpu_aug_ramp.yaml 0.0 2.0
set_strength /tmp/unet3d_cpu_p32b4_fade.yaml 1.0 0.0 /tmp/unet3d_cpu_p32b4.yaml
config_of() { case $1 in base) echo configs/unet3d_cpu.yaml;; resenc) echo configs/resenc3d_cpu.yaml;; *) echo /tmp/unet3d_cpu_$1.yaml;; esac; }
fresh() { rm -rf /tmp/medseg_bench/hippo_$1; mkdir -p /tmp/medseg_bench/hippo_$1
  cp -r $T/{fingerprint.json,manifest.json,plan.json,preprocessed} /tmp/medseg_bench/hippo_$1/; }
train() {  # train CONFIG WORK_NAME MINUTES
  OMP_NUM_THREADS=1 $PY benchmarks/bench_train_hippocampus.py --config $1 --time-budget $3 --iterations-per-epoch 25 --work /tmp/medseg_bench/hippo_$2; }
for w in $VARIANTS; do
  if [ "$w" = ens ]; then
    fresh ens; H=$(awk "BEGIN{print $B/2}")
    { train configs/unet2d_cpu.yaml ens $H && train configs/unet3d_cpu.yaml ens $H; } > /tmp/medseg_bench/b22_ens.log 2>&1 &
  else
    fresh $w; train "$(config_of $w)" $w $B > /tmp/medseg_bench/b22_$w.log 2>&1 &
  fi
done
wait
for w in $VARIANTS; do echo "== $w"; grep -h "^RESULT" /tmp/medseg_bench/b22_$w.log; done
