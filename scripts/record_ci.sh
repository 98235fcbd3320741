#!/usr/bin/env bash
# Runs .ci/run in a fresh clone of this checkout's HEAD (a fresh venv, the install, the README's main command and
# its AUROC floor, the test suite) under `time`, and records how long it took, for the README's expected times:
#   bash scripts/record_ci.sh                 # -> benchmarks/results/ci_timing.txt
#   bash scripts/record_ci.sh LOG COMMIT      # only the record, from the log of such a run made by hand
set -euo pipefail
cd "$(dirname "$0")/.."
if [ $# -ge 2 ]; then
  LOG=$1 COMMIT=$2
else
  WORK=$(mktemp -d)
  COMMIT=$(git rev-parse --short HEAD)
  git clone -q "$PWD" "$WORK/clone"
  LOG=$WORK/ci.log
  ( cd "$WORK/clone" && { time bash .ci/run; } > "$LOG" 2>&1 ) || { tail -50 "$LOG"; exit 1; }
fi
{
  echo "commit $COMMIT, recorded $(date -u +%Y-%m-%dT%H:%M:%SZ), $(nproc) CPU cores"
  grep -E "^embedded sample: AUROC|^[0-9]+ passed|^real" "$LOG"
} > benchmarks/results/ci_timing.txt
cat benchmarks/results/ci_timing.txt
