"""CI check that the README's main command trains a model that detects something: the AUROC in the evaluation's
``metrics.json`` on the embedded sample must reach the given floor (measured 0.921 / 0.938 / 0.926 for seeds 0-2 in
benchmarks/results/bundle_sample/default_fitted_scoring).

    python .ci/check_sample_auroc.py bundles/scrd/eval/metrics.json 0.85
"""

import json
import sys

path, floor = sys.argv[1], float(sys.argv[2])
with open(path) as f:
    auroc = json.load(f)["auroc"]
print(f"embedded sample: AUROC {auroc:.4f} (floor {floor}) from {path}")
sys.exit(0 if auroc >= floor else 1)
