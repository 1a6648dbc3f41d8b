#!/usr/bin/env bash
# The whole pipeline on tiny volumes: phantoms, both training stages (one short epoch each),
# prediction and evaluation. Exits 0 only if every step produced its file.
set -euo pipefail
out=${1:-outputs/smoke}
py=${PYTHON:-.venv/bin/python}
rm -rf "$out"
start=$SECONDS
"$py" -m wspet.data.phantom "$out/data" --cases 4 --test-cases 2 --seed 0 --shape 32 32 32
tiny="data.phantom=null data.volume_size=[32,32,32] data.patch_size=[32,32,32] data.batch_size=1
      data.samples_per_volume=1 data.val_fraction=0.25 model.net.features=[8,16,32]
      trainer.max_epochs=1 trainer.limit_train_batches=2 trainer.enable_progress_bar=false
      evaluate.window=[32,32,32] evaluate.overlap=[0,0,0] logger=csv"
# shellcheck disable=SC2086
"$py" train.py data.root="$out/data" $tiny loss=mdice_ms hydra.run.dir="$out/run"
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
