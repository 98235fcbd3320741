#!/usr/bin/env bash
# RD4AD rows: the scoring choice (fixed-default and previous-default columns) on the fitted and evaluated seed-0 models,
# reusing fit_all.sh's fit and evaluation (same commands), at the commit checked out in /tmp/wt_final.
. /work/main/.venv/bin/activate
cd /tmp/wt_final
export PYTHONPATH=/tmp/wt_final
OUT=/work/main/benchmarks/results/bundle_auto
python benchmarks/bundle_runs.py --name brain_rd4ad --datalist /tmp/exp/bt.json --seeds 0 --runs-dir /tmp/exp/runs --out-dir $OUT --reuse -- --allow_absolute_paths true --max_iterations 1000 --contrastive false --scale_adaptive false
# not run: chest RD4AD's training was stopped at iteration 190 for lack of session time
# python benchmarks/bundle_runs.py --name chest_rd4ad --datalist /tmp/exp/cx.json --seeds 0 --runs-dir /tmp/exp/runs --out-dir $OUT --reuse -- --allow_absolute_paths true --max_iterations 1500 --contrastive false --scale_adaptive false
