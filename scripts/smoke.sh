#!/usr/bin/env bash
# The whole pipeline on tiny volumes: phantoms, both training stages (one short epoch each),
# prediction and evaluation. Exits 0 only if every step produced its file.
set -euo pipefail
out=${1:-outputs/smoke}
py=${PYTHON:-.venv/bin/python}
rm -rf "$out"
start=$SECONDS
"$py" -m wspet.datasets.phantom "$out/data" --cases 4 --test-cases 2 --seed 0 --shape 32 32 32
# shellcheck source=scripts/tiny.env
source "$(dirname "$0")/tiny.env"
# shellcheck disable=SC2086
"$py" train.py data.root="$out/data" $TINY_OVERRIDES loss=mdice_ms hydra.run.dir="$out/run"
"$py" predict.py ckpt="$out/run/checkpoints/best.ckpt" input="$out/data" split=test output="$out/predict" \
    window=[32,32,32] overlap=[0,0,0]
expected=(
  "$out/data/dataset.json"
  "$out/run/pretrain_dice/checkpoints/best.ckpt"
  "$out/run/pretrain_dice/test_metrics.csv"
  "$out/run/checkpoints/best.ckpt"
  "$out/run/test_metrics.csv"
  "$out/run/summary.json"
  "$out/predict/hn_004_mask.nii.gz"
  "$out/predict/hn_005_mask.nii.gz"
)
missing=0
for file in "${expected[@]}"; do
  if [ -s "$file" ]; then echo "ok       $file"; else echo "MISSING  $file"; missing=1; fi
done
echo "smoke: $((SECONDS - start)) s"
exit $missing
