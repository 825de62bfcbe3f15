#!/usr/bin/env bash
# The README's understanding table, one dataset at a time: ACDiT (the blockwise recipe), the same
# network trained as full-sequence diffusion (one block), the same network untrained, and raw
# pixels, each probed linearly and fine-tuned.
#
#   cargo build --release && docs/understanding/compare.sh mnist 2
#   docs/understanding/compare.sh fashion-mnist 1
#
# Arguments: the dataset (mnist | fashion-mnist, fetched with `acdit data fetch`) and the
# fine-tuning epochs. Every step whose output exists is skipped, so an interrupted run resumes.
# Results land in runs/understand/DATASET/*.json.
set -euo pipefail
dataset=$1
epochs=$2
acdit=${ACDIT:-target/release/acdit}
data=data/$dataset
out=runs/understand/$dataset
mkdir -p "$out"

# The three networks, trained with one recipe and budget (the untrained one for 0 steps).
if [ "$dataset" = mnist ]; then
  blockwise=weights/mnist/ema.safetensors # the built-in model, `acdit train --preset mnist`
else
  blockwise=runs/$dataset/ema.safetensors
  [ -f "$blockwise" ] || "$acdit" train --preset "$dataset" --out "runs/$dataset"
fi
full=runs/$dataset-full-sequence/ema.safetensors
[ -f "$full" ] || "$acdit" train --preset "$dataset" \
  --config "docs/understanding/$dataset-full-sequence.toml" --out "runs/$dataset-full-sequence"
untrained=runs/$dataset-untrained/ema.safetensors
[ -f "$untrained" ] || "$acdit" train --preset "$dataset" --steps 0 --out "runs/$dataset-untrained"

for model in blockwise full untrained; do
  weights=${!model}
  for pool in mean concat; do
    for split in train test; do
      f=$out/features-$model-$pool-$split.safetensors
      [ -f "$f" ] || "$acdit" features --checkpoint "$weights" --data "$data" --split $split \
        --pool $pool --out "$f"
    done
    json=$out/probe-$model-$pool.json
    [ -f "$json" ] || "$acdit" probe --train "$out/features-$model-$pool-train.safetensors" \
      --test "$out/features-$model-$pool-test.safetensors" --json "$json"
  done
  classifier=$out/classifier-$model.safetensors
  if [ -f "$classifier" ]; then resume=(--resume "$classifier"); else resume=(); fi
  [ -f "$out/finetune-$model.done" ] || {
    "$acdit" finetune --checkpoint "$weights" --data "$data" --pool mean --epochs "$epochs" \
      --out "$classifier" "${resume[@]}" | tee "$out/finetune-$model.log"
    touch "$out/finetune-$model.done"
  }
done
[ -f "$out/probe-pixels.json" ] || "$acdit" probe --pixels --data "$data" --json "$out/probe-pixels.json"
