#!/usr/bin/env bash
# Session 22, at commit bd22dae checked out in /tmp/wt_s22 (the fixed default: all scales, top 5%, cross-fitted):
# 1. fixed-default rows for seeds 1 and 2 through the bundle (fit + evaluate on the models trained by train_all.sh);
# 2. RD4AD (--contrastive false --scale_adaptive false) trained and evaluated with the same scoring, 3 seeds per data
#    set (brain seed 0 reuses the checkpoint that train_all.sh trained).
. /work/main/.venv/bin/activate
cd /tmp/wt_s22
export PYTHONPATH=/tmp/wt_s22
OUT=/work/main/benchmarks/results/bundle_auto
R=/tmp/exp/runs
copy_checkpoint() { # from to
  [ -f $R/$2/runs/checkpoints/scrd_final.pt ] && return
  mkdir -p $R/$2/runs/checkpoints && cp $R/$1/runs/checkpoints/scrd_final.pt $R/$2/runs/checkpoints/ && cp $R/$1/done $R/$2/done
}
for s in 1 2; do
  copy_checkpoint brain_default/seed$s brain_fixed/seed$s
  copy_checkpoint chest_default/seed$s chest_fixed/seed$s
  [ -f $OUT/brain_fixed/seed$s.json ] || python benchmarks/bundle_runs.py --name brain_fixed --datalist /tmp/exp/bt.json --seeds $s --runs-dir $R --out-dir $OUT --no-choice -- --allow_absolute_paths true --max_iterations 1000
  [ -f $OUT/chest_fixed/seed$s.json ] || python benchmarks/bundle_runs.py --name chest_fixed --datalist /tmp/exp/cx.json --seeds $s --runs-dir $R --out-dir $OUT --no-choice -- --allow_absolute_paths true --max_iterations 1500
done
copy_checkpoint brain_rd4ad/seed0 brain_rd4ad_fixed/seed0
for s in 0 1 2; do
  for d in brain:bt:1000 chest:cx:1500; do
    IFS=: read name dl it <<< "$d"
    [ -f $OUT/${name}_rd4ad_fixed/seed$s.json ] || python benchmarks/bundle_runs.py --name ${name}_rd4ad_fixed --datalist /tmp/exp/$dl.json --seeds $s --runs-dir $R --out-dir $OUT --no-choice -- --allow_absolute_paths true --max_iterations $it --contrastive false --scale_adaptive false
  done
done
