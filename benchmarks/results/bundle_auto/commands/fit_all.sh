#!/usr/bin/env bash
# End-of-training fit + evaluation + scoring choice through the bundle, at the commit checked out in /tmp/wt_final,
# for every run that train_all.sh finished; results into the main checkout's benchmarks/results/bundle_auto.
# As run: /tmp/wt_final was at 1540834 for brain seed 0 and chest seed 0's fit and evaluation, at df8b617 after (the two
# differ only in benchmarks/scoring_choice.py and bundle_runs.py); chest seed 0's first call stopped at the scoring-choice
# step (no validation list: fixed in df8b617) and was completed by the same call with --reuse, as below.
. /work/main/.venv/bin/activate
cd /tmp/wt_final
export PYTHONPATH=/tmp/wt_final
OUT=/work/main/benchmarks/results/bundle_auto
fit() { # name datalist iters seed extra...
  local name=$1 dl=$2 it=$3 seed=$4; shift 4
  local d=/tmp/exp/runs/$name/seed$seed
  [ -f $OUT/$name/seed$seed.json ] && return
  while ! grep -q '"rc": 0' $d/done 2>/dev/null; do sleep 20; done
  python benchmarks/bundle_runs.py --name $name --datalist $dl --seeds $seed --runs-dir /tmp/exp/runs --out-dir $OUT "$@" \
    -- --allow_absolute_paths true --max_iterations $it $EXTRA >> /tmp/exp/fit_all.log 2>&1
}
for s in 0 1 2; do
  EXTRA= fit brain_default /tmp/exp/bt.json 1000 $s
  EXTRA= fit chest_default /tmp/exp/cx.json 1500 $s --reuse
done
EXTRA="--contrastive false --scale_adaptive false" fit brain_rd4ad /tmp/exp/bt.json 1000 0 --no-choice
EXTRA="--contrastive false --scale_adaptive false" fit chest_rd4ad /tmp/exp/cx.json 1500 0 --no-choice
