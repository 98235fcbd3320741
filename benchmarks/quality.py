"""Quality benchmark: the paper's Brain Tumor ablation (Table 2 rows + the Gaussian-noise row of Table 3) and the
candidate fixes of the scale head, measured honestly on the official MedIAnomaly split and its de-duplicated version.

Every run trains through the product's training path: MONAI's ``SupervisedTrainer`` with
``monai_scrd.engines.training.SCRDTrainStep`` (what the bundle runs), the model, loss and noise transform the bundle
builds, and scores through the model's own anomaly map (``SCRD.forward`` in eval mode + ``image_score``).

Protocol (no test label is used for any choice):
- data: ``<data-root>`` (official split, see its MANIFEST.md), preprocessed once with
  ``monai_scrd.data.transforms.preprocessing_transforms`` (grayscale, resize, min-max to [0, 1]) and cached as uint8 ``.npy``.
- training: ``--val-normals`` training normals (fixed choice, seed 0) are held out; the model trains on the others
  for a FIXED number of iterations (Adam, lr 1e-3, betas (0.5, 0.999), as in the paper), shuffled epochs.
- scoring: mean of the anomaly map (paper). Rows with per-scale calibration fit it on the held-out normals only.
  Metrics: AUROC, AP, F1/ACC at the best-F1 threshold (the paper's protocol, fitted on the test labels) and F1/ACC at
  a threshold fitted WITHOUT test labels: the ``--val-quantile`` quantile of the held-out normals' scores.
- every run also stores the per-scale image scores (mean of each raw ``1 - cos`` map) of the held-out normals and
  the test images, and alpha, so that single-scale AUROCs and other scale weightings can be reported from the JSON.
- at every ``--eval-every`` iterations: test AUROC (reported only, never used for a choice) and, when available, the
  label-free synthetic-anomaly validation AUROC (``monai_scrd.engines.selection``), to compare best-of and last.

Every finished run is written at once to ``<out-dir>/<tag>/<row>_seed<k>.json`` (partial results survive).
``--report`` rebuilds ``benchmarks/RESULTS.md`` from all JSON files under ``benchmarks/results``.

    python benchmarks/quality.py --quick            # < 15 min on 2 CPU cores, prints a table
    python benchmarks/quality.py --device cuda --workers 14
    python benchmarks/quality.py --report           # regenerate RESULTS.md from the JSON files

The before/after runs of the noise and decoder fixes (tags ending in ``_legacy``, ``_legacy_noise`` and
``_legacy_decoder``) were made with switches since removed; the report still shows their JSON.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as C  # noqa: E402

import torch  # noqa: E402

from monai_scrd.losses import build_loss  # noqa: E402
from monai_scrd.networks import SCRD  # noqa: E402
from monai_scrd.scoring.anomaly_map import image_score  # noqa: E402
from monai_scrd.scoring.metrics import detection_metrics, threshold_metrics  # noqa: E402

CONTRASTIVE = dict(contrastive=True, scale_adaptive=False)
ADAPTIVE = dict(contrastive=True, scale_adaptive=True)
ROWS: dict[str, dict] = {
    # name: model switches ("model"), loss options ("loss"), noise options ("noise"), per-scale calibration ("calibrate")
    "rd4ad": dict(model=dict(contrastive=False, scale_adaptive=False), label="RD4AD (Eq. 1)"),
    "crd": dict(model=CONTRASTIVE, label="+ contrastive (CRD, Eq. 2)"),
    "scrd_eq4": dict(model=ADAPTIVE, label="+ scale adaptation, Eq. 4 (sum of ratios)"),
    "scrd_alg2": dict(model=ADAPTIVE, loss=dict(ratio_of_sums=True), label="+ scale adaptation, Algorithm 2 (ratio of sums)"),
    "scrd_eq4_gauss": dict(model=ADAPTIVE, noise=dict(noise_type="gaussian"), label="SCRD Eq. 4, Gaussian noise (Table 3)"),
    # candidates for a default that does not depend on which scale the head collapses to (issue 10)
    "rd4ad_cal": dict(model=dict(contrastive=False, scale_adaptive=False, scale_weighting="uniform"), calibrate=True,
                      label="RD4AD + per-scale calibration (z-scores on held-out normals, mean over scales)"),
    "crd_distill_cal": dict(model=dict(CONTRASTIVE, scale_weighting="uniform"), calibrate=True, loss=dict(distillation_weight=1.0),
                            label="CRD + distillation term + calibration (no scale head)"),
    "scrd_floor_cal": dict(model=dict(ADAPTIVE, alpha_floor=0.5, scale_weighting="uniform"), calibrate=True,
                           label="Eq. 4, alpha floor 0.5 + calibration"),
    "scrd_distill_cal": dict(model=dict(ADAPTIVE, alpha_floor=0.5, scale_weighting="uniform"), calibrate=True,
                             loss=dict(distillation_weight=1.0),
                             label="Eq. 4 + distillation term, alpha floor 0.5 + calibration"),
    "scrd_loc_cal": dict(model=dict(ADAPTIVE, alpha_floor=0.5, scale_weighting="uniform"), calibrate=True,
                         loss=dict(distillation_weight=1.0, contrast="location"),
                         label="per-location Eq. 4 + distillation term, alpha floor 0.5 + calibration"),
}
# rows of earlier runs (kept JSON), for the report
LEGACY_LABELS = {
    "rd4ad_scale3": "RD4AD, fixed alpha = (0, 0, 1) (control: coarsest scale only, no contrast)",
    "crd_scale3": "CRD, fixed alpha = (0, 0, 1) (control: what a collapsed head computes)",
    "scrd_alg2_ent": "Algorithm 2 + alpha entropy bonus 0.1",
    "scrd_alg2_ent001": "Algorithm 2 + alpha entropy bonus 0.01",
    "scrd_eq4_ent": "Eq. 4 + alpha entropy bonus 0.1",
}
LABELS = {**{k: v["label"] for k, v in ROWS.items()}, **LEGACY_LABELS}
ORDER = [*ROWS, *LEGACY_LABELS]
# earlier runs with the pre-fix noise and/or decoder (switches since removed; their results folder is the main tag
# plus this suffix), reported only
LEGACY_VARIANTS = ("legacy", "legacy_noise", "legacy_decoder")
PAPER = {  # Brain Tumor, WRN50-2, 256 px, 4000 it x 16 (Tables 2 and 3): AUC, F1, ACC in %
    "rd4ad": (90.52, 87.24, 85.67),
    "crd": (91.45, 88.17, 86.67),
    "scrd_eq4": (98.88, 96.52, 96.50),
    "scrd_alg2": (98.88, 96.52, 96.50),
    "scrd_eq4_gauss": (75.23, 74.88, 68.25),
}
QUICK_ROWS = ["rd4ad", "crd", "scrd_eq4", "scrd_alg2"]
# the row trained and weighted like the bundle's default (train.json: calibrated scales, scale_weighting "uniform")
DEFAULT_ROW = "scrd_distill_cal"
# the bundle's image-score reduction, read from its config (one place); every run also stores its scores with it
BUNDLE_REDUCTION = json.loads((C.REPO / "bundles" / "scrd" / "configs" / "train.json").read_text())["score_reduction"]


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data-root", type=Path, default=C.DEFAULT_DATA_ROOT)
    p.add_argument("--cache-dir", type=Path, default=C.DEFAULT_CACHE_DIR)
    p.add_argument("--out-dir", type=Path, default=C.RESULTS_DIR / "quality")
    p.add_argument("--rows", nargs="+", choices=list(ROWS), default=list(ROWS))
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    p.add_argument("--iterations", type=int, default=1500)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--image-size", type=int, default=128)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--backbone", default="efficientnet_lite0")
    p.add_argument("--pretrained-weights", default=None, help="teacher checkpoint path (default: ImageNet weights, offline only for Lite0)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    p.add_argument("--workers", type=int, default=1, help="runs in parallel processes (e.g. several per GPU)")
    p.add_argument("--val-normals", type=int, default=100, help="training normals held out (threshold, calibration, validation)")
    p.add_argument("--val-quantile", type=float, default=0.95)
    p.add_argument("--test-per-group", type=int, default=None, help="use the first N (seeded shuffle) of each test group")
    p.add_argument("--log-every", type=int, default=25)
    p.add_argument("--eval-every", type=int, default=250, help="test AUROC / synthetic validation every N iterations (0: off)")
    p.add_argument("--eval-batch", type=int, default=50)
    p.add_argument("--tag", default=None, help="results sub-folder (default: from the configuration)")
    p.add_argument("--quick", action="store_true", help="1 seed, 4 rows, 60 iterations, 150 test images per group")
    p.add_argument("--smoke", action="store_true", help="toy run for tests: 2 iterations, 8 images, 64 px")
    p.add_argument("--report", action="store_true", help="only rebuild RESULTS.md from the JSON files")
    p.add_argument("--results-md", type=Path, default=Path(__file__).resolve().parent / "RESULTS.md")
    args = p.parse_args(argv)
    if args.quick:
        args.rows, args.seeds, args.iterations, args.test_per_group = QUICK_ROWS, [0], 60, 150
        args.eval_every = 0
        args.tag = args.tag or "quick"
    if args.smoke:
        args.rows = [r for r in args.rows if r in ("rd4ad", "scrd_distill_cal")] if args.rows == list(ROWS) else args.rows
        args.seeds, args.iterations, args.batch_size, args.image_size = [0], 2, 4, 64
        args.test_per_group, args.val_normals, args.log_every, args.eval_batch, args.eval_every = None, 4, 1, 4, 1
        args.tag = args.tag or "smoke"
    if args.tag is None:
        bb = {"efficientnet_lite0": "lite0", "wide_resnet50_2": "wrn50"}.get(args.backbone, args.backbone)
        args.tag = f"{bb}_{args.image_size}px_{args.iterations}it_bs{args.batch_size}"
    return args


# ----------------------------------------------------------------------------------------------- data
def build_data(args) -> dict:
    split = C.read_split(args.data_root)
    paths = [p for g in C.GROUPS for p in split[g]]
    images = C.load_cached_images(args.data_root, paths, args.image_size, args.cache_dir)
    index = {p: i for i, p in enumerate(paths)}
    rng = np.random.default_rng(0)  # fixed data split, independent of the training seed
    train_all = [index[p] for p in split["train/normal"]]
    perm = rng.permutation(len(train_all))
    val = sorted(train_all[i] for i in perm[: args.val_normals])
    train = sorted(train_all[i] for i in perm[args.val_normals :])
    test_paths = []
    for g in C.GROUPS[1:]:
        group = list(split[g])
        if args.test_per_group is not None:
            group = [group[i] for i in sorted(rng.permutation(len(group))[: args.test_per_group])]
        test_paths += group
    test = [index[p] for p in test_paths]
    labels = np.array([0 if p.startswith("test/normal/") else 1 for p in test_paths])
    dups = C.duplicate_test_normals(args.data_root)
    dedup_mask = np.array([p not in dups for p in test_paths])
    return dict(paths=paths, images=images, train=train, val=val, test=test, test_paths=test_paths,
                labels=labels, dedup_mask=dedup_mask)


def to_tensor(images: np.ndarray, idx) -> torch.Tensor:
    """uint8 [N, S, S] -> float [B, 1, S, S] in [0, 1] (the teacher replicates one channel to three)."""
    return torch.from_numpy(images[np.asarray(idx)]).float().div_(255.0).unsqueeze(1)


# ----------------------------------------------------------------------------------------------- runs
def row_config(name: str) -> dict:
    """The row's model/loss/noise options."""
    row = ROWS[name]
    return {
        "model": dict(row.get("model", {})),
        "loss": dict(row.get("loss", {})),
        "noise": dict(row.get("noise", {})),
        "calibrate": bool(row.get("calibrate", False)),
    }


def make_model(args, cfg: dict, device) -> SCRD:
    pretrained = args.pretrained_weights if args.pretrained_weights else args.pretrained
    return SCRD(args.backbone, pretrained, **cfg["model"]).to(device)


def alpha_summary(alpha: torch.Tensor) -> dict:
    alpha = alpha.detach().float().cpu()
    ent = -(alpha * torch.log(alpha.clamp_min(1e-12))).sum(dim=1)  # nats: log K when uniform, 0 when one-hot
    return {
        "alpha_mean": [round(float(a), 5) for a in alpha.mean(0)],
        "alpha_std": [round(float(a), 5) for a in alpha.std(0)] if alpha.shape[0] > 1 else [0.0] * alpha.shape[1],
        "entropy_mean": round(float(ent.mean()), 5),
        "entropy_max_possible": round(math.log(alpha.shape[1]), 5),
        "frac_one_hot_0.99": round(float((alpha.amax(1) > 0.99).float().mean()), 5),
    }


@torch.no_grad()
def score_images(model: SCRD, images: np.ndarray, idx, device, batch: int) -> dict:
    """The product's scores (eval forward = anomaly map, then its mean, and the bundle's reduction of it) plus
    per-scale raw scores and alpha."""
    model.eval()
    scores, bundle_scores, scale_scores, alphas = [], [], [], []
    for s in range(0, len(idx), batch):
        x = to_tensor(images, idx[s : s + batch]).to(device)
        per_scale, alpha = model.scale_scores(x)
        amap = model(x).float()
        scores.append(image_score(amap).cpu())
        bundle_scores.append(image_score(amap, BUNDLE_REDUCTION).cpu())
        scale_scores.append(per_scale.float().cpu())
        alphas.append(alpha.float().cpu())
    model.train()
    return {"score": torch.cat(scores).numpy(), "bundle_score": torch.cat(bundle_scores).numpy(),
            "scale": torch.cat(scale_scores).numpy(), "alpha": torch.cat(alphas)}


def _auroc(labels, scores) -> float:
    return float(detection_metrics(labels, scores)["auroc"])


def _synthetic_validation(model: SCRD, valset, device, batch: int) -> dict | None:
    """Label-free validation on synthetic anomalies (``monai_scrd.engines.selection``), plus the AUROC of each single
    scale on it (to check whether such a set would pick the scale that real anomalies need)."""
    from monai_scrd.engines.selection import synthetic_validation_metrics

    out = synthetic_validation_metrics(model, valset, batch_size=batch, device=device)
    per_scale = []
    model.eval()
    with torch.no_grad():
        for images in (valset.normals, valset.anomalies):
            per_scale.append(torch.cat([model.scale_scores(images[s : s + batch].to(device))[0].float().cpu()
                                        for s in range(0, len(images), batch)]))
    model.train()
    y = np.r_[np.zeros(len(per_scale[0])), np.ones(len(per_scale[1]))]
    scores = torch.cat(per_scale).numpy()
    out["image_auroc_per_scale"] = [_auroc(y, scores[:, k]) for k in range(scores.shape[1])]
    return out


def run_one(args, name: str, seed: int, data: dict, device) -> dict:
    from ignite.engine import Events
    from monai.data import DataLoader, Dataset
    from monai.engines import SupervisedTrainer

    from monai_scrd.engines.training import SCRDTrainStep, train_log_values
    from monai_scrd.transforms import RandSimplexNoised

    cfg = row_config(name)
    torch.manual_seed(seed)
    np.random.seed(seed)
    model = make_model(args, cfg, device)
    loss_fn = build_loss(cfg["model"]["contrastive"], **cfg["loss"])
    opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=args.lr, betas=(0.5, 0.999))
    noise = RandSimplexNoised(keys="image", intensity=0.2, **cfg["noise"])
    noise.set_random_state(seed)
    # three channels, as the bundle's preprocessing gives (grayscale replicated), so that the noise draws its field
    # per channel as in the reference synthesis
    train_images = to_tensor(data["images"], data["train"]).expand(-1, 3, -1, -1).contiguous()
    dataset = Dataset([{"image": img} for img in train_images], transform=noise)
    loader = DataLoader(dataset, batch_size=args.batch_size, shuffle=True, drop_last=True, num_workers=0,
                        generator=torch.Generator().manual_seed(seed))
    trainer = SupervisedTrainer(
        device=device, max_epochs=math.ceil(args.iterations / len(loader)), train_data_loader=loader, network=model,
        optimizer=opt, loss_function=loss_fn, iteration_update=SCRDTrainStep(), decollate=False,
    )
    trainer.logger.setLevel("WARNING")  # no per-epoch lines; this script prints its own progress
    from monai_scrd.transforms.validation_anomaly import synthetic_validation_set

    valset = synthetic_validation_set(to_tensor(data["images"], data["val"]), seed=0) if args.eval_every else None
    labels = data["labels"]
    log, checkpoints = [], []
    t_start = time.perf_counter()

    @trainer.on(Events.ITERATION_COMPLETED(once=args.iterations))
    def _stop(engine):
        engine.terminate()

    @trainer.on(Events.ITERATION_COMPLETED)
    def _log(engine):
        it = engine.state.iteration
        if not (it % args.log_every == 0 or it == 1 or it == args.iterations):
            return
        entry = {"iteration": it, "elapsed_s": round(time.perf_counter() - t_start, 2)}
        entry.update({k: round(v, 6) for k, v in train_log_values(engine.state.output).items()})
        if model.scale_head is not None:
            w = model.scale_head.linear.weight
            entry["head_grad_norm"] = round(float(w.grad.norm()) if w.grad is not None else 0.0, 6)
            entry["head_weight_norm"] = round(float(w.detach().norm()), 6)
        log.append(entry)
        print(f"  [{name} seed {seed}] it {it}/{args.iterations} "
              + " ".join(f"{k} {v:.4g}" for k, v in entry.items() if k not in ("iteration",)), flush=True)

    @trainer.on(Events.ITERATION_COMPLETED)
    def _checkpoint_eval(engine):
        it = engine.state.iteration
        if not args.eval_every or not (it % args.eval_every == 0 or it == args.iterations):
            return
        test = score_images(model, data["images"], data["test"], device, args.eval_batch)
        entry = {"iteration": it,
                 "test_auroc_reported_only": round(_auroc(labels, test["score"]), 5),
                 "test_auroc_per_scale_reported_only": [round(_auroc(labels, test["scale"][:, k]), 5) for k in range(test["scale"].shape[1])]}
        entry["synthetic_validation"] = _synthetic_validation(model, valset, device, args.eval_batch)
        checkpoints.append(entry)

    trainer.run()
    train_s = time.perf_counter() - t_start

    t0 = time.perf_counter()
    val = score_images(model, data["images"], data["val"], device, args.eval_batch)
    if cfg["calibrate"]:
        model.anomaly_map.calibrate(torch.from_numpy(val["scale"]))
        val = score_images(model, data["images"], data["val"], device, args.eval_batch)
    test = score_images(model, data["images"], data["test"], device, args.eval_batch)
    eval_s = time.perf_counter() - t0
    thr = float(np.quantile(val["score"], args.val_quantile))
    dedup = data["dedup_mask"]
    metrics = {}
    for split_name, mask in (("official", np.ones_like(dedup)), ("dedup", dedup)):
        y, s = labels[mask], test["score"][mask]
        m = detection_metrics(y, s)
        m["val_threshold"] = threshold_metrics(y, s, thr)
        for g in ("glioma", "meningioma"):
            gm = np.array([p.startswith(f"test/{g}/") or p.startswith("test/normal/") for p in data["test_paths"]]) & mask
            m[f"auroc_{g}"] = detection_metrics(labels[gm], test["score"][gm])["auroc"]
        m["auroc_per_scale"] = [_auroc(y, test["scale"][mask, k]) for k in range(test["scale"].shape[1])]
        metrics[split_name] = m
    adaptive = model.scale_head is not None
    return {
        "row": name,
        "label": LABELS[name],
        "variant": "reference",  # the fixed noise and decoder (earlier runs: LEGACY_VARIANTS)
        "seed": seed,
        "config": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items() if k not in ("report",)},
        "row_config": cfg,
        "n_train": len(data["train"]),
        "n_val": len(data["val"]),
        "n_test": len(data["test"]),
        "train_seconds": round(train_s, 2),
        "seconds_per_iteration": round(train_s / args.iterations, 4),
        "eval_seconds": round(eval_s, 2),
        "metrics": metrics,
        "checkpoints": checkpoints,
        "alpha_test": {"normal": alpha_summary(test["alpha"][torch.as_tensor(labels == 0)]),
                       "anomalous": alpha_summary(test["alpha"][torch.as_tensor(labels == 1)])} if adaptive else None,
        "scale_calibration": {"mean": model.anomaly_map.scale_mean.tolist(), "std": model.anomaly_map.scale_std.tolist()},
        "train_log": log,
        "val_scores": [round(float(s), 6) for s in val["score"]],
        "test_scores": [round(float(s), 6) for s in test["score"]],
        "bundle_reduction": BUNDLE_REDUCTION,
        "val_scores_bundle_reduction": [round(float(s), 6) for s in val["bundle_score"]],
        "test_scores_bundle_reduction": [round(float(s), 6) for s in test["bundle_score"]],
        "val_scale_scores": np.round(val["scale"], 6).tolist(),
        "test_scale_scores": np.round(test["scale"], 6).tolist(),
        "test_alpha": np.round(test["alpha"].numpy(), 5).tolist() if adaptive else None,
        "test_paths": data["test_paths"],
        "dedup_dropped_index": np.flatnonzero(~dedup).tolist(),
        "machine": C.machine_info(),
        "peak_rss_mib": round(C.peak_rss_mib(), 1),
    }


def shortcut_check(args, data) -> dict:
    """AUROC of trivial, method-free scores on the same test split."""
    from sklearn.metrics import roc_auc_score

    sizes = C.original_sizes(args.data_root)
    labels, out = data["labels"], {}
    feats = {
        "mean_intensity_preprocessed": np.array([data["images"][i].mean() for i in data["test"]], dtype=float),
        "original_area_w_x_h": np.array([sizes[p][0] * sizes[p][1] for p in data["test_paths"]], dtype=float),
        "original_is_grayscale_mode": np.array([sizes[p][2] == "L" for p in data["test_paths"]], dtype=float),
    }
    for split_name, mask in (("official", np.ones_like(data["dedup_mask"])), ("dedup", data["dedup_mask"])):
        out[split_name] = {}
        for k, s in feats.items():
            auc = float(roc_auc_score(labels[mask], s[mask]))
            out[split_name][k] = {"auroc": auc, "auroc_best_direction": max(auc, 1 - auc)}
    return out


# ----------------------------------------------------------------------------------------------- report
def speed_section(results_dir: Path) -> str:
    files = sorted((results_dir / "speed").glob("*.json"))
    if not files:
        return "(speed.py has not been run yet)\n"
    from speed import report_markdown

    return report_markdown(json.loads(files[-1].read_text()), files[-1].relative_to(results_dir.parent))


def main_tag(runs: dict) -> str | None:
    """The reference-variant run with the most JSON files (ties: the longest schedule)."""
    full = [t for t in runs if t not in ("smoke", "quick") and not any(t.endswith(f"_{v}") for v in LEGACY_VARIANTS)
            and any(x.get("variant") == "reference" for rs in runs[t].values() for x in rs)]
    return max(full, key=lambda t: (sum(len(v) for v in runs[t].values()), t)) if full else None


def write_report(args) -> str:
    import quality_report as R

    results_dir = C.RESULTS_DIR
    runs = R.load_runs(results_dir)
    tag = main_tag(runs)
    sections = {"{machine}": "(no runs)", "{main}": "(no run recorded)", "{before_after}": "(no run recorded)",
                "{scales}": "", "{head}": "", "{selection}": "", "{earlier}": "", "{default}": "(no run recorded)"}
    if tag is not None:
        rows = runs[tag]
        sections.update({
            "{machine}": R.machine_line(rows, tag),
            "{main}": R.run_table(tag, rows, LABELS, PAPER),
            "{before_after}": R.before_after_table(runs, tag, LABELS),
            "{scales}": R.scale_table(rows, LABELS),
            "{head}": R.head_table(rows, LABELS),
            "{selection}": R.selection_table(rows, LABELS),
            "{default}": R.default_vs_baseline(rows, LABELS, DEFAULT_ROW, "calibrated, max of z", args.val_quantile),
        })
    earlier = [t for t in sorted(runs) if t != tag and t != "smoke" and not any(t == f"{tag}_{v}" for v in LEGACY_VARIANTS)]
    sections["{earlier}"] = "\n".join(
        R.run_table(t, runs[t], LABELS, PAPER)
        + ("\n" + R.default_vs_baseline(runs[t], LABELS, DEFAULT_ROW, "calibrated, max of z", args.val_quantile)
           if DEFAULT_ROW in runs[t] and "rd4ad" in runs[t] else "")
        for t in earlier) or "(none)"
    sections["{commands}"] = R.recorded_commands(results_dir, [t for t in sorted(runs) if t != "smoke"])
    sections["{shortcut}"] = R.shortcut_table(results_dir, tag)
    sections["{params}"] = R.parameter_table()
    sections["{speed}"] = speed_section(results_dir)
    sections["{bundle}"] = R.bundle_table(results_dir)
    sections["{auto}"] = R.auto_tables(results_dir)
    sections["{glance}"] = R.glance_section(results_dir)
    sections["{ablation}"] = R.ablation_table(results_dir)
    md = RESULTS_TEMPLATE
    for key, text in sections.items():
        md = md.replace(key, text)
    args.results_md.write_text(md)
    print(f"wrote {args.results_md}")
    return md


RESULTS_TEMPLATE = """# SCRD benchmarks

Generated by `python benchmarks/quality.py --report` from the per-run JSON files under `benchmarks/results/`
(`results/quality/<tag>/<row>_seed<k>.json`: configuration, training log, checkpoints, every test and validation
score, per-scale scores, machine; `results/speed/`). No number below is typed by hand.

## At a glance: what a user gets

Each model trained, fitted and evaluated by the bundle's own commands with its defaults unless the row says otherwise
(EfficientNet-Lite0 teacher, 128 px, all scales, top-5% image score, the threshold fitted on the
training normals alone); test labels only measure. Details and the scoring choices: the next section.

{glance}
## Defaults chosen on the user's own normals: brain and chest through the bundle

Lite0, 128 px, batch 8; brain: the official split prepared with `--val-fraction 0.1`, 1000 iterations; chest:
`prepare` on the class folders with no validation list (the bundle holds out 10%), 1500 iterations. Each model was
trained by the bundle's own `run training` (at commit 183de1b: the preprocessing fix, before the new scoring), then
`benchmarks/bundle_runs.py` re-ran the end of training on its final checkpoint (`run training --resume_from`: nothing
left to train, so the scoring fit, `model.pt` and `threshold.json` come from the checked-out code) and `run evaluating`.
The exact scripts and `prepare` lines: `results/bundle_auto/commands/`.

- `*_auto` rows: `scale_weighting auto` + `score_reduction auto` (the default at commit df8b617, where these fits ran):
  calibration of the scored statistic, scales and image reduction chosen by the AUROC of the held-out normals against
  foreign-patch anomalies made from them, cross-fitted 95th-percentile threshold (order statistic).
- "fixed default" columns: all scales with the top 5% under the same calibration and threshold rules, computed by
  `scoring_choice.py` with the same fitting code on the same normals; `*_fixed` rows are that scoring through the
  bundle's own commands at commit 69a8d20, where it is the default (seed 0), which reproduce those columns.
- "previous default" columns: the scoring shipped before (calibration of whole-map means, all scales, top 5%, numpy's
  default 95th percentile of the same normals that were calibrated on).
- `*_rd4ad` rows: trained with `--contrastive false --scale_adaptive false`, scored the same ways (brain, seed 0, at
  df8b617); `*_rd4ad_fixed` rows: RD4AD through the bundle with the fixed default scoring at bd22dae, 3 seeds
  (`commands/session22.sh`, `session22_rest.sh`; brain seed 0 reuses the brain_rd4ad checkpoint).
- `*_lite1`, `*_lite2` rows: the default with `--backbone efficientnet_lite1` / `efficientnet_lite2` (seed 0, at
  2bcc86e, `commands/session22_rest.sh`), against Lite0's `*_fixed` rows (issue 23, item 6).
- FPR: the share of the test normals flagged at the stored threshold (nominal 5).

The second table ranks the 24 candidate scorings by their synthetic AUROC and by their real test AUROC (Spearman),
and compares the `auto` choice with the fixed default and with the best candidate in hindsight (which uses the test
labels; reported, never chosen). The synthetic family (foreign patches at 1/16 to 1/2 of the side) was fixed before
these runs; "blob/blur/contrast" is the older family, recomputed on the same models for comparison. The rule set
before measuring (the issue's): `auto` becomes the default only with a correlation of at least 0.6 and a choice within
1 point of the best on both data sets. Chest fails it, so the bundle keeps the fixed scoring and `auto` is opt-in.

Which defaults were read from test tables (brain split): the distillation weight, the alpha floor, per-scale
calibration, the candidate set of scorings, the 15-pass training length, and (by the rule above) fixed over `auto`.
From the brain and chest tables of this section: the teacher, EfficientNet-Lite0 kept over Lite1 and Lite2 (the
`*_lite1` / `*_lite2` rows against `*_fixed`, test AUROC). RD4AD's lead over the default (`*_rd4ad_fixed`) was read
and not acted on.
Not read from any test table: the synthetic family, the threshold rule (order statistic, cross-fitting), the volume
rule, the colour rule.

{auto}
## Commands

The recorded runs, each as its own log printed it (`results/quality/<tag>/run_log.txt`; on the GPU machine the data
root held only the split files and the preprocessed cache; where an option repeats, the last one counts):

```
{commands}
```

```
python benchmarks/quality.py --quick        # CPU, 1 seed, 4 rows, 60 it, 150 test images per group
python benchmarks/speed.py                  # speed section below
python benchmarks/quality.py --report       # regenerate this file
```

Data: `../shared/data/brain_tumor` (official MedIAnomaly split: 1000 train normals, test 600 normal + 300 glioma +
300 meningioma). Each image goes once through `monai_scrd.data.transforms.preprocessing_transforms` (grayscale, resize, min-max
to [0, 1]) and is cached as uint8. 100 training normals (fixed, seed 0) are held out for the threshold, the per-scale
calibration and the synthetic validation; the rest train. "dedup" drops the 88 test normals that are byte-identical
to a training image.

Every run trains through the product: `SupervisedTrainer` + `monai_scrd.engines.training.SCRDTrainStep`, the bundle's
`SCRD`, `build_loss` and `RandSimplexNoised`, and scores with the model's own anomaly map.

## Machine

{machine}

## What follows the paper, the reference code, or neither

| | paper | here |
|---|---|---|
| teacher | WRN50-2, ImageNet, 256 px | EfficientNet-Lite0, ImageNet, 128 px (WRN50-2 and 256 px are configs, `configs/paper.json`) |
| schedule | 4000 it x 16 | 1000 it x 8 for the main table (every row and variant), 2500 it x 8 for four rows (below) |
| noise | simplex, 6 octaves, persistence 0.6, lambda 0.2, one box [10, h/8] (Algorithm 1) | the same; octave sum NOT normalised, first octave 32 px per lattice unit halving per octave, a field per channel: this follows the reference fractal-simplex helper that SCRD and AnoDDPM use (the paper does not state it) |
| student | RD4AD's OCBE + de-ResNet | the same block counts and upsampling-in-first-block layout for ResNets; scaled to Lite0's channels |
| loss | Eq. 4 (Algorithm 2 in the appendix) | both, switch `ratio_of_sums`; options not in the paper: `distillation_weight`, `contrast`, `alpha_floor`, `alpha_temperature` |
| anomaly map | alpha-weighted per-scale 1 - cos, upsampled, summed; image score = mean | the same; Gaussian sigma 4 comes from RD4AD (SCRD's Sec. 2.4 names none); option not in the paper: per-scale calibration on held-out normals, `scale_weighting` |
| selection | checkpoint picked on test AUROC (authors' code) | fixed iteration count, or the label-free synthetic validation; never a test label |
| noise seed | global (authors' code) | each transform's own `self.R` |

## Brain Tumor: the ablation after the fidelity fixes

Metrics: AUROC, AP, F1 at the best-F1 threshold (the paper's protocol: fitted on the test labels, optimistic), and
F1/ACC at an honest threshold: the 95th percentile of the scores of the 100 held-out training normals.

{main}

## The bundle's default against RD4AD

{default}

How the default was chosen (issue 10), read from the tables below: (1) with the reference noise the paper's head
drives alpha to one-hot within 25 iterations on every seed (logit spread, then a vanishing gradient on W), after
which the contrastive ratio of the two dropped scales stays at 1: only one scale is trained. (2) The contrastive
term on its own (CRD) scores below RD4AD, and the gap does not close with a longer schedule; restoring the plain
distillation term next to the ratio (`distillation_weight`) brings the trained model back to RD4AD's level or above.
The alpha floor keeps every scale trained. (3) The raw per-scale maps have different sizes and spreads, so their sum
is dominated by whichever is largest; standardising each scale on the held-out normals (`calibrate_scales`) puts them
on one footing without a label. (4) The image score: the whole-map mean (the paper's) dilutes a lesion that covers a
small part of the image with the normal rest. On the bundle's trained models (the scoring-ablation section) the mean
of the top 5% of the map raises the AUROC of the calibrated scale average and of each single scale except the
coarsest, and the finest scale, near chance with the whole-map mean, becomes informative. The bundle therefore
averages the calibrated scales (`scale_weighting: uniform`) and scores the top 5% of the map (`score_reduction:
top5%`). Until these runs it picked, per image, the most deviating calibrated scale with the whole-map mean
(`scale_weighting: max`), the "calibrated, max of z" lines. (5) Honest caveats: the scoring change was chosen after
looking at this split's test AUROC and F1 for two seeds of the trained default (the choice of 5% among 1%, 5% and
20% included); the third seed and the RD4AD models were scored after the choice. The synthetic validation cannot
confirm it without labels (its AUROC stays between 50 and 55 for every choice), and this is the only data set here:
held-out modalities may prefer another reduction, which stays one override away. The paper-literal behaviour is one
switch away: `configs/paper.json`. (6) Where the gain comes from: the 1500- and 2500-iteration GPU runs store every
model's scores with the bundle's reduction, and the rows trained like RD4AD (`rd4ad_cal`) or without the scale head
(`crd_distill_cal`) but calibrated and averaged like the default score within one seed-std of the default there (the
`bundle scoring` lines of those tables); through the bundle's own commands at 1000 iterations, RD4AD's training with
the bundle's scoring (`brain_rd4ad_bundle_scoring_1000it`: `--contrastive false --scale_adaptive false`, the
calibration, average and top 5% left on) matches the default too (next section). So the default's lead over the
paper-scored RD4AD is the scoring (calibration, scale average, top 5%), not the contrastive term or the scale head,
which on this split neither help nor hurt once the distillation term and the floor are in; the bundle keeps SCRD's
training as the method this project implements, at the cost of the noisy teacher's extra forward pass per iteration
(`seconds_per_iteration` in each run's JSON).

## The brain split through the bundle's own commands

`python -m monai_scrd.prepare` on the split file, then `benchmarks/bundle_sample.py`, which runs `monai.bundle run
training` and `run evaluating` per seed (and `run evaluating` once more on the de-duplicated datalist, made the same
way with `--drop-test-duplicates`, for the same trained model). F1, recall and FPR at the threshold the training
stored (95th percentile of the held-out normals), mean ± std over seeds. The training wall times come from different
sessions' machines (2 shared cores each, with other work on some of them) and compare only roughly.

{bundle}
## Scoring choices on the bundle's trained models (no retraining; the earlier record)

Written by `python benchmarks/scoring_ablation.py --datalist <the prepared datalist> --allow-absolute --models <model
folders kept by bundle_sample.py --keep-models>` at commit a89ced2 (`git show a89ced2:benchmarks/scoring_ablation.py`;
`benchmarks/scoring_choice.py` replaces it, see the section on defaults chosen on the user's normals), on models of
the scoring shipped then: the same trained weights scored with each per-scale-calibrated scale combination
(`max of z`: per image the scale whose mean z is highest; `mean of z`: the average of the calibrated maps; one scale
alone) and each image reduction of the map (`mean`, `max`, `top<q>`: the mean of the highest fraction q of the map).
Thresholds are the 95th percentile of the validation normals' scores under the same scoring. The synthetic-validation
AUROC (held-out normals against blob / blur / contrast anomalies made from them) is the only label-free signal here;
the test columns are reported, not used for any choice.

{ablation}
## Before / after the fidelity fixes (same seeds, same budget)

{before_after}

## Why the scale head decides everything: per-scale AUROC and scale weightings

{scales}

## The scale head and the contrastive ratio during training

{head}

## Label-free checkpoint selection (synthetic anomalies of another family)

{selection}

## Model size of the paper's configuration

{params}
## Shortcut check: trivial scores on the same test split

{shortcut}

## Other runs (other budgets and machines; the 300-iteration and unsuffixed 1000-iteration runs predate the fidelity fixes and used the old private training loop)

{earlier}

## Speed

{speed}
"""


def print_table(results: list[dict]) -> None:
    print("\n| row | seed | AUROC | AP | F1@bestF1 | ACC@bestF1 | F1@val | ACC@val | AUROC dedup | alpha entropy (test) | s/it |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for r in results:
        m, d = r["metrics"]["official"], r["metrics"]["dedup"]
        ent = "-" if not r["alpha_test"] else f"{r['alpha_test']['normal']['entropy_mean']:.3f}"
        print(f"| {r['row']} | {r['seed']} | {100 * m['auroc']:.2f} | {100 * m['average_precision']:.2f} | {100 * m['f1']:.2f} | "
              f"{100 * m['accuracy']:.2f} | {100 * m['val_threshold']['f1']:.2f} | {100 * m['val_threshold']['accuracy']:.2f} | "
              f"{100 * d['auroc']:.2f} | {ent} | {r['seconds_per_iteration']:.2f} |")


def _run_and_write(job) -> dict:
    """One (row, seed) run, written to its JSON at once. Also the entry point of worker processes."""
    args, name, seed, data = job
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    if data is None:  # worker process: the image cache is already on disk
        data = build_data(args)
    path = args.out_dir / args.tag / f"{name}_seed{seed}.json"
    t1 = time.perf_counter()
    res = run_one(args, name, seed, data, device)
    C.write_json(path, res)
    m = res["metrics"]["official"]
    print(f"[{name} seed {seed}] AUROC {100 * m['auroc']:.2f} AP {100 * m['average_precision']:.2f} "
          f"F1@val {100 * m['val_threshold']['f1']:.2f} per-scale {[round(100 * a, 1) for a in m['auroc_per_scale']]} "
          f"| {time.perf_counter() - t1:.0f} s -> {path}", flush=True)
    return res


def main(argv=None) -> list[dict]:
    args = parse_args(argv)
    if args.report:
        write_report(args)
        return []
    args.pretrained = not args.smoke  # smoke test: random teacher (fast, no weights needed)
    if args.workers > 1 and not args.threads:
        import os

        args.threads = max(1, (os.cpu_count() or 2) // args.workers)
    if args.threads:
        torch.set_num_threads(args.threads)
    print("command: python " + " ".join(["benchmarks/quality.py", *(argv if argv is not None else sys.argv[1:])]), flush=True)
    print("machine:", json.dumps(C.machine_info()), flush=True)
    t0 = time.perf_counter()
    data = build_data(args)
    print(f"data: {len(data['train'])} train / {len(data['val'])} val normals, {len(data['test'])} test "
          f"({int(data['labels'].sum())} tumour, {int((~data['dedup_mask']).sum())} duplicates), "
          f"{data['images'].shape[-1]} px, {time.perf_counter() - t0:.1f} s", flush=True)
    out_dir = args.out_dir / args.tag
    sc = shortcut_check(args, data)
    sc["n_test"] = len(data["test"])
    C.write_json(out_dir / "shortcut.json", sc)
    # the most important runs first, so that a stopped run keeps them: the paper's rows and the default, then the
    # other candidate rows
    main_rows = {*PAPER, DEFAULT_ROW, "rd4ad_cal"}
    jobs = [(args, name, seed) for seed in args.seeds for name in args.rows if name in main_rows]
    jobs += [(args, name, seed) for seed in args.seeds for name in args.rows if name not in main_rows]
    if args.workers > 1:
        import multiprocessing as mp

        with mp.get_context("spawn").Pool(args.workers, maxtasksperchild=1) as pool:
            results = pool.map(_run_and_write, [(*j, None) for j in jobs], chunksize=1)
    else:
        results = [_run_and_write((*j, data)) for j in jobs]
    print_table(results)
    print(f"\ntotal {time.perf_counter() - t0:.0f} s; JSON in {out_dir}; rebuild RESULTS.md with: python benchmarks/quality.py --report")
    return results


if __name__ == "__main__":
    main()
