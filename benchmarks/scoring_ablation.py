"""How a trained bundle model's scores depend on the scoring choices, without retraining: scale combination
(calibrated max of z, mean of z, each scale alone) x image-score reduction (map mean, map max, mean of the top
``q`` fraction of the map), on the test list and on the label-free synthetic validation set.

For every model folder (``model.pt`` + ``threshold.json``, e.g. kept by ``bundle_sample.py --keep-models``) this
scores the datalist's ``validation`` normals, its ``test`` list and the synthetic validation set built from the
validation normals, keeps every per-scale calibrated map, and writes, per combination x reduction:

- test AUROC, and F1 / precision / recall / test-normal FPR at the 95th percentile of the validation normals'
  scores (the bundle's label-free threshold);
- synthetic-validation image AUROC (held-out normals against their synthetic anomalies: no real label).

The test labels are only reported, never used to choose anything. Output: ``<out-dir>/<model name>.json``.

    python benchmarks/scoring_ablation.py --datalist /tmp/bt/bt.json --allow-absolute \
        --models /tmp/bb_models/brain_default_1000it/seed0 --out-dir benchmarks/results/scoring_ablation/brain
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from sklearn.metrics import roc_auc_score

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as C  # noqa: E402

from monai_scrd.data import load_datalist  # noqa: E402
from monai_scrd.registry.spec import scorer_from_bundle  # noqa: E402
from monai_scrd.scoring import image_score  # noqa: E402
from monai_scrd.scoring.metrics import threshold_metrics  # noqa: E402
from monai_scrd.transforms.validation_anomaly import synthetic_validation_set  # noqa: E402

TOP_FRACTIONS = (0.01, 0.05, 0.2)


def reductions(maps: torch.Tensor) -> dict[str, np.ndarray]:
    """Image scores ``[N]`` of maps ``[N, H, W]`` under each reduction (the scorer's ``image_score``)."""
    names = {"mean": "mean", "max": "max", **{f"top{q:g}": f"top{100 * q:g}%" for q in TOP_FRACTIONS}}
    return {key: image_score(maps, reduction).numpy().astype(float) for key, reduction in names.items()}


@torch.no_grad()
def scale_maps(net, images: torch.Tensor, batch: int = 50) -> torch.Tensor:
    """Calibrated, upsampled and smoothed per-scale maps ``[N, K, H, W]`` (the bundle's map before the weighting)."""
    gen = net.anomaly_map
    out = []
    for chunk in images.split(batch):
        u, v, _ = net.features(chunk)
        per = [gen.smooth(F.interpolate(d, size=tuple(chunk.shape[-2:]), mode="bilinear", align_corners=False))
               for d in gen.scale_distances(u, v)]
        out.append(torch.cat(per, 1))
    return torch.cat(out)


def combos(maps: torch.Tensor) -> dict[str, torch.Tensor]:
    """Maps ``[N, H, W]`` per scale combination. ``max of z`` picks, per image, the scale whose mean z is highest
    (the bundle's ``scale_weighting: max``)."""
    pick = maps.flatten(2).mean(2).argmax(1)
    out = {"max of z": maps[torch.arange(maps.shape[0]), pick], "mean of z": maps.mean(1)}
    for k in range(maps.shape[1]):
        out[f"scale {k + 1}"] = maps[:, k]
    return out


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--datalist", required=True)
    p.add_argument("--allow-absolute", action="store_true")
    p.add_argument("--models", nargs="+", required=True, help="model folders (model.pt + threshold.json)")
    p.add_argument("--out-dir", type=Path, required=True)
    p.add_argument("--quantile", type=float, default=0.95)
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    lists = load_datalist(args.datalist, allow_absolute=args.allow_absolute, require=("validation", "test"))
    for model_dir in map(Path, args.models):
        _, scorer = scorer_from_bundle(C.REPO / "bundles" / "scrd", checkpoint=model_dir / "model.pt",
                                       config_file="train.json", threshold=str(model_dir / "threshold.json"), device="cpu")
        net = scorer.core.eval()

        def load(items):
            prepared = [scorer.prepare(it) for it in items]
            bad = [q.error for q in prepared if q.error]
            if bad:
                raise SystemExit(bad[0])
            return torch.cat([q.images for q in prepared])

        val_images, test_images = load(lists["validation"]), load(lists["test"])
        labels = np.array([int(it["label"]) for it in lists["test"]])
        synth = synthetic_validation_set(val_images, seed=0)
        maps = {name: combos(scale_maps(net, x)) for name, x in
                (("val", val_images), ("test", test_images), ("synthetic", synth.anomalies))}
        results = {}
        for combo in maps["test"]:
            red = {name: reductions(m[combo]) for name, m in maps.items()}
            for r in red["test"]:
                val, test, syn = red["val"][r], red["test"][r], red["synthetic"][r]
                thr = float(np.quantile(val, args.quantile))
                op = threshold_metrics(labels, test, thr)
                results[f"{combo} | {r}"] = {
                    "test_auroc": float(roc_auc_score(labels, test)),
                    "f1_label_free": op["f1"], "precision": op["precision"], "recall": op["recall"],
                    "test_normal_fpr": op["false_positive_rate"],
                    "synthetic_auroc": float(roc_auc_score(np.r_[np.zeros(len(val)), np.ones(len(syn))], np.r_[val, syn])),
                }
        out = {"model_dir": str(model_dir), "datalist": args.datalist, "quantile": args.quantile,
               "n_val": len(val_images), "n_test": len(labels), "n_synthetic": len(synth.anomalies),
               "results": results, "machine": C.machine_info()}
        name = model_dir.parent.name + "_" + model_dir.name
        C.write_json(args.out_dir / f"{name}.json", out)
        for k, v in results.items():
            print(f"{name} {k:28s} test AUROC {100 * v['test_auroc']:5.1f}  F1 {100 * v['f1_label_free']:5.1f}  "
                  f"synthetic AUROC {100 * v['synthetic_auroc']:5.1f}", flush=True)


if __name__ == "__main__":
    main()
