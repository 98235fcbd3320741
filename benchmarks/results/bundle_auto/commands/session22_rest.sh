#!/usr/bin/env bash
# Session 22, second half: session22.sh and teachers.sh were stopped after chest RD4AD seed 0 had started (its
# bundle_runs.py call ran to the end), to put the teachers (issue 23 item 6) before RD4AD seeds 1-2 for lack of time.
# The same calls, in this order: teachers.sh's loop (commit 2bcc86e in /tmp/wt_lite), then session22.sh's RD4AD loop for
# seeds 1 and 2 (commit bd22dae in /tmp/wt_s22).
. /work/main/.venv/bin/activate
OUT=/work/main/benchmarks/results/bundle_auto
R=/tmp/exp/runs
while pgrep -f "bundle_runs.py --name chest_rd4ad_fixed" > /dev/null; do sleep 20; done
cd /tmp/wt_lite && export PYTHONPATH=/tmp/wt_lite
for b in lite1 lite2; do
  for d in brain:bt:1000 chest:cx:1500; do
    IFS=: read name dl it <<< "$d"
    [ -f $OUT/${name}_$b/seed0.json ] || python benchmarks/bundle_runs.py --name ${name}_$b --datalist /tmp/exp/$dl.json --seeds 0 --runs-dir $R --out-dir $OUT --no-choice -- --allow_absolute_paths true --max_iterations $it --backbone efficientnet_$b
  done
done
cd /tmp/wt_s22 && export PYTHONPATH=/tmp/wt_s22
for s in 1 2; do
  for d in brain:bt:1000 chest:cx:1500; do
    IFS=: read name dl it <<< "$d"
    [ -f $OUT/${name}_rd4ad_fixed/seed$s.json ] || python benchmarks/bundle_runs.py --name ${name}_rd4ad_fixed --datalist /tmp/exp/$dl.json --seeds $s --runs-dir $R --out-dir $OUT --no-choice -- --allow_absolute_paths true --max_iterations $it --contrastive false --scale_adaptive false
  done
done
# then, with nothing else of these runs left (helpers' tests running at nice 10), at 2bcc86e in /tmp/wt_lite:
# python benchmarks/speed.py --sections training --sizes 128 --backbones efficientnet_lite0 efficientnet_lite1 efficientnet_lite2 --train-iters 10 --out /tmp/exp/teachers_training_speed.json
# copied to benchmarks/results/teachers/training_speed_128px.json
