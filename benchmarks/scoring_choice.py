"""Does the label-free ``auto`` scoring choose well? For trained bundle models, every candidate scoring that
``scoring: auto`` considers (scale combination x image reduction, :mod:`monai_scrd.scoring.fitting`) is scored on:

- the label-free synthetic validation that makes the choice (held-out normals against foreign patches from other
  normals, cross-fitted, exactly as training's ``ScoringFitter`` does), and, as a record, the older local family
  (blob / blur / contrast);
- the real test list (AUROC, reported only: no test label chooses anything).

Per model it gives the candidates' synthetic and test AUROCs, their Spearman correlation, the auto choice, the fixed
default (all scales, top 5%), the best candidate in hindsight, and the previously shipped scoring (per-scale
calibration of whole-map means, top 5%, numpy's default percentile of the same normals) with its test-normal FPR.
``benchmarks/bundle_runs.py`` records it per seed; ``--report DIR`` prints the table of RESULTS.md from those records.

    python benchmarks/scoring_choice.py --datalist /tmp/exp/bt.json --allow-absolute --models RUN/models --out x.json
    python benchmarks/scoring_choice.py --report benchmarks/results/bundle_auto
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch
from scipy.stats import spearmanr
from sklearn.metrics import roc_auc_score

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as C  # noqa: E402
from quality_report import ms  # noqa: E402

from monai_scrd.data import load_datalist  # noqa: E402
from monai_scrd.registry.spec import scorer_from_bundle  # noqa: E402
from monai_scrd.scoring.fitting import (  # noqa: E402
    DEFAULT_SCORING,
    calibration,
    candidate_weightings,
    combined_scores,
    fit_scoring,
    network_scale_maps,
)
from monai_scrd.scoring.metrics import threshold_metrics  # noqa: E402
from monai_scrd.transforms.validation_anomaly import (  # noqa: E402
    LOCAL_FAMILIES,
    SCORING_FAMILIES,
    SCORING_SIZES,
    synthetic_validation_set,
)


def _scores(maps: torch.Tensor, weights, mean, std, reduction: str) -> np.ndarray:
    """The fitting module's image scores of calibrated maps (``combined_scores``) as float64 numpy."""
    w = torch.tensor(weights, dtype=torch.float32)
    return combined_scores(maps, w, torch.as_tensor(mean), torch.as_tensor(std), reduction).numpy().astype(float)


def evaluate_model(model_dir: Path, lists: dict, seed: int = 0) -> dict:
    record = json.loads((model_dir / "threshold.json").read_text())
    state = torch.load(model_dir / "model.pt", map_location="cpu", weights_only=True)["model"]
    overrides = {"scale_adaptive": any(k.startswith("scale_head") for k in state), "scale_weighting": "auto"}
    _, scorer = scorer_from_bundle(C.REPO / "bundles" / "scrd", checkpoint=model_dir / "model.pt", config_file="train.json",
                                   overrides=overrides, threshold=str(model_dir / "threshold.json"), device="cpu")
    net = scorer.core.eval()

    def load(items):
        prepared = [scorer.prepare(it) for it in items]
        bad = [q.error for q in prepared if q.error]
        if bad:
            raise SystemExit(bad[0])
        return torch.cat([q.images for q in prepared])

    val, test = load(lists["validation"]), load(lists["test"])
    labels = np.array([int(it["label"]) for it in lists["test"]])
    per_normal = max(1, min(3, 600 // len(val)))
    patch = synthetic_validation_set(val, seed=seed, anomalies_per_normal=per_normal, families=SCORING_FAMILIES, sizes=SCORING_SIZES)
    local = synthetic_validation_set(val, seed=seed, families=LOCAL_FAMILIES)
    val_maps, _ = network_scale_maps(net, val)
    test_maps, _ = network_scale_maps(net, test)
    fit = fit_scoring(val_maps, network_scale_maps(net, patch.anomalies)[0], patch.sources, "auto", "auto", seed=seed)
    fit_local = fit_scoring(val_maps, network_scale_maps(net, local.anomalies)[0], local.sources, "auto", "auto", seed=seed)
    local_auroc = {(c["scales"], c["reduction"]): c["synthetic_auroc"] for c in fit_local.candidates}
    weightings = candidate_weightings(val_maps.shape[1])
    candidates = []
    for c in fit.candidates:
        test_scores = _scores(test_maps, weightings[c["scales"]], *calibration(val_maps, c["reduction"]), c["reduction"])
        candidates.append({**c, "synthetic_auroc_local": local_auroc[(c["scales"], c["reduction"])],
                           "test_auroc": float(roc_auc_score(labels, test_scores))})

    def find(scales, reduction):
        return next(c for c in candidates if (c["scales"], c["reduction"]) == (scales, reduction))

    # the previously shipped scoring: calibration of whole-map means, top 5%, numpy's default percentile, same normals
    means = val_maps.float().flatten(2).mean(2)
    prev_val = _scores(val_maps, weightings["all scales"], means.mean(0), means.std(0), "top5%")
    prev_test = _scores(test_maps, weightings["all scales"], means.mean(0), means.std(0), "top5%")
    default_fit = fit_scoring(val_maps, None, (), "uniform", DEFAULT_SCORING[1], seed=seed)
    default_test = _scores(test_maps, default_fit.weights, torch.tensor(default_fit.scale_mean), torch.tensor(default_fit.scale_std),
                           DEFAULT_SCORING[1])
    syn = [c["synthetic_auroc"] for c in candidates]
    return {
        "model_dir": str(model_dir),
        "n_val": len(val), "n_test": len(labels), "n_patch_anomalies": len(patch.anomalies),
        "recorded_choice": {"scales": record.get("scales"), "score_reduction": record.get("score_reduction")},
        "auto": find(fit.scales, fit.reduction),
        "default": find(*DEFAULT_SCORING),
        "best_in_hindsight": max(candidates, key=lambda c: c["test_auroc"]),
        "default_stored_threshold": {**threshold_metrics(labels, default_test, default_fit.threshold),
                                     "auroc": float(roc_auc_score(labels, default_test))},
        "previous_default": {"auroc": float(roc_auc_score(labels, prev_test)),
                             **threshold_metrics(labels, prev_test, float(np.percentile(prev_val, 95)))},
        "spearman_patch": float(spearmanr(syn, [c["test_auroc"] for c in candidates]).statistic),
        "spearman_local": float(spearmanr([c["synthetic_auroc_local"] for c in candidates],
                                          [c["test_auroc"] for c in candidates]).statistic),
        "candidates": candidates,
        "machine": C.machine_info(),
    }


def load_lists(datalist: str, allow_absolute: bool = False) -> dict:
    """The datalist's test list and the validation normals the bundle uses (its own hold-out when it has none)."""
    from monai_scrd.engines import validation_items

    with open(C.REPO / "bundles" / "scrd" / "configs" / "train.json") as f:
        fraction = json.load(f)["validation_fraction"]
    lists = load_datalist(datalist, allow_absolute=allow_absolute, require=("test",))
    lists["validation"] = validation_items(datalist, allow_absolute=allow_absolute, validation_fraction=fraction)
    return lists


def report(out_dir: Path) -> str:
    """The Spearman and choice table from ``bundle_runs.py`` records (``<out-dir>/<name>/seed<S>.json``)."""
    lines = ["| run | seeds | Spearman, foreign patches (per seed) | Spearman, blob/blur/contrast | auto: AUROC | "
             "fixed default: AUROC | best in hindsight: AUROC | auto - best |", "|---|---|---|---|---|---|---|---|"]
    for folder in sorted(p for p in out_dir.iterdir() if p.is_dir()):
        runs = [json.loads(f.read_text()) for f in sorted(folder.glob("seed*.json"))]
        sc = [r["scoring_choice"] for r in runs if "scoring_choice" in r]
        if not sc:
            continue
        lines.append(
            f"| {folder.name} | {', '.join(str(r['seed']) for r in runs)} | {np.mean([c['spearman_patch'] for c in sc]):.2f} "
            f"({', '.join(format(c['spearman_patch'], '.2f') for c in sc)}) | {np.mean([c['spearman_local'] for c in sc]):.2f} | "
            f"{ms([c['auto']['test_auroc'] for c in sc])} | {ms([c['default']['test_auroc'] for c in sc])} | "
            f"{ms([c['best_in_hindsight']['test_auroc'] for c in sc])} | "
            f"{100 * np.mean([c['auto']['test_auroc'] - c['best_in_hindsight']['test_auroc'] for c in sc]):.2f} |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--datalist")
    p.add_argument("--allow-absolute", action="store_true")
    p.add_argument("--models", nargs="+", default=[], help="model folders (model.pt + threshold.json)")
    p.add_argument("--out", type=Path, help="JSON file to write (default: print only)")
    p.add_argument("--report", type=Path, metavar="DIR", help="print the table of bundle_runs.py records in DIR")
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args(argv)
    if args.report:
        print(report(args.report))
        return
    torch.set_num_threads(args.threads)
    lists = load_lists(args.datalist, args.allow_absolute)
    results = {}
    for model_dir in map(Path, args.models):
        out = results[str(model_dir)] = evaluate_model(model_dir, lists)
        print(f"{model_dir}: Spearman {out['spearman_patch']:.2f} (local {out['spearman_local']:.2f}); auto "
              f"{out['auto']['scales']} / {out['auto']['reduction']} {100 * out['auto']['test_auroc']:.2f}, default "
              f"{100 * out['default']['test_auroc']:.2f}, best {100 * out['best_in_hindsight']['test_auroc']:.2f}", flush=True)
    if args.out:
        C.write_json(args.out, results)


if __name__ == "__main__":
    main()
