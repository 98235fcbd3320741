#!/usr/bin/env bash
# Issue 23 item 6: EfficientNet-Lite1 and Lite2 teachers against Lite0 (brain_fixed / chest_fixed), 128 px, the
# default scoring, seed 0, through the bundle; at the commit checked out in /tmp/wt_lite (Lite1/2 support added).
# Waits for session22.sh so that the two never share the 2 cores.
. /work/main/.venv/bin/activate
cd /tmp/wt_lite
export PYTHONPATH=/tmp/wt_lite
OUT=/work/main/benchmarks/results/bundle_auto
while pgrep -f commands/session22.sh > /dev/null; do sleep 30; done
for b in lite1 lite2; do
  for d in brain:bt:1000 chest:cx:1500; do
    IFS=: read name dl it <<< "$d"
    [ -f $OUT/${name}_$b/seed0.json ] || python benchmarks/bundle_runs.py --name ${name}_$b --datalist /tmp/exp/$dl.json --seeds 0 --runs-dir /tmp/exp/runs --out-dir $OUT --no-choice -- --allow_absolute_paths true --max_iterations $it --backbone efficientnet_$b
  done
done
