#!/usr/bin/env bash
# The paper's ablation on tiny phantoms (one seed, one short epoch): the multirun and the report.
set -euo pipefail
out=${1:-outputs/ablation-smoke}
py=${PYTHON:-.venv/bin/python}
rm -rf "$out"
start=$SECONDS
# shellcheck source=scripts/tiny.env
source "$(dirname "$0")/tiny.env"
"$py" -m wspet.datasets.phantom "$out/data" --cases 4 --test-cases 2 --seed 0 --shape 32 32 32
# shellcheck disable=SC2086
"$py" train.py -m experiment=fs,dice,mdice,mdice_ms,mdice_ms_morph,dice_levelset seed=0 \
    data.root="$out/data" $TINY_OVERRIDES hydra.sweep.dir="$out/sweep" stage_cache="$out/sweep/stage_cache"
"$py" -m wspet.evaluation.report "$out/sweep"
for file in results.csv results.md figure1.png figure2.png; do
  test -s "$out/sweep/$file" || { echo "MISSING $out/sweep/$file"; exit 1; }
done
cat "$out/sweep/results.md"
echo "ablation-smoke: $((SECONDS - start)) s"
