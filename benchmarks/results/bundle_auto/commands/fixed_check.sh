#!/usr/bin/env bash
# The fixed default scoring through the bundle on the seed-0 models (fit + evaluate), at commit 69a8d20 in /tmp/wt_head.
. /work/main/.venv/bin/activate
cd /tmp/wt_head
export PYTHONPATH=/tmp/wt_head
OUT=/work/main/benchmarks/results/bundle_auto
python benchmarks/bundle_runs.py --name brain_fixed --datalist /tmp/exp/bt.json --seeds 0 --runs-dir /tmp/exp/runs --out-dir $OUT --no-choice -- --allow_absolute_paths true --max_iterations 1000
python benchmarks/bundle_runs.py --name chest_fixed --datalist /tmp/exp/cx.json --seeds 0 --runs-dir /tmp/exp/runs --out-dir $OUT --no-choice -- --allow_absolute_paths true --max_iterations 1500
