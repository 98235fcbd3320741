"""Quality benchmark: the paper's Brain Tumor ablation (Table 2 rows + the Gaussian-noise row of Table 3) and the
candidate fixes of the scale head, measured honestly on the official MedIAnomaly split and its de-duplicated version.

Every run trains through the product's training path: MONAI's ``SupervisedTrainer`` with
``monai_scrd.engines.training.SCRDTrainStep`` (what the bundle runs), the model, loss and noise transform the bundle
builds, and scores through the model's own anomaly map (``SCRD.forward`` in eval mode + ``image_score``).

Protocol (no test label is used for any choice):
- data: ``<data-root>`` (official split, see its MANIFEST.md), preprocessed once with
  ``monai_scrd.data.preprocessing_transforms`` (grayscale, resize, min-max to [0, 1]) and cached as uint8 ``.npy``.
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
    python benchmarks/quality.py --device cuda --iterations 1500 --workers 8     # the recorded GPU run
    python benchmarks/quality.py --variant legacy   # the same rows with the pre-fix noise and decoder
    python benchmarks/quality.py --report           # regenerate RESULTS.md from the JSON files
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

from monai_scrd.losses import alpha_entropy, build_loss  # noqa: E402
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
# the pre-fix behaviour, one switch at a time: normalised octave sum at 1/16 cycle/px, one field for all channels
# (noise) and the compact decoder (networks)
LEGACY_NOISE = dict(normalize=True, frequency=1 / 16, per_channel=False)
VARIANTS = {
    "reference": dict(),
    "legacy_noise": dict(noise=LEGACY_NOISE),
    "legacy_decoder": dict(model=dict(decoder="compact")),
    "legacy": dict(noise=LEGACY_NOISE, model=dict(decoder="compact")),
}
PAPER = {  # Brain Tumor, WRN50-2, 256 px, 4000 it x 16 (Tables 2 and 3): AUC, F1, ACC in %
    "rd4ad": (90.52, 87.24, 85.67),
    "crd": (91.45, 88.17, 86.67),
    "scrd_eq4": (98.88, 96.52, 96.50),
    "scrd_alg2": (98.88, 96.52, 96.50),
    "scrd_eq4_gauss": (75.23, 74.88, 68.25),
}
QUICK_ROWS = ["rd4ad", "crd", "scrd_eq4", "scrd_alg2"]


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data-root", type=Path, default=C.DEFAULT_DATA_ROOT)
    p.add_argument("--cache-dir", type=Path, default=C.DEFAULT_CACHE_DIR)
    p.add_argument("--out-dir", type=Path, default=C.RESULTS_DIR / "quality")
    p.add_argument("--rows", nargs="+", choices=list(ROWS), default=list(ROWS))
    p.add_argument("--variant", choices=list(VARIANTS), default="reference",
                   help="reference = the fixed noise and decoder; legacy* = the pre-fix behaviour, one switch at a time")
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
        if args.variant != "reference":
            args.tag += f"_{args.variant}"
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
def row_config(name: str, variant: str) -> dict:
    """The row's model/loss/noise options with the variant's overrides applied."""
    row, over = ROWS[name], VARIANTS[variant]
    return {
        "model": {**row.get("model", {}), **over.get("model", {})},
        "loss": dict(row.get("loss", {})),
        "noise": {**row.get("noise", {}), **over.get("noise", {})},
        "calibrate": bool(row.get("calibrate", False)),
    }


def make_model(args, cfg: dict, device) -> SCRD:
    pretrained = args.pretrained_weights if args.pretrained_weights else args.pretrained
    return SCRD(args.backbone, pretrained, **cfg["model"]).to(device)


def alpha_summary(alpha: torch.Tensor) -> dict:
    alpha = alpha.detach().float().cpu()
    ent = alpha_entropy(alpha)
    return {
        "alpha_mean": [round(float(a), 5) for a in alpha.mean(0)],
        "alpha_std": [round(float(a), 5) for a in alpha.std(0)] if alpha.shape[0] > 1 else [0.0] * alpha.shape[1],
        "entropy_mean": round(float(ent.mean()), 5),
        "entropy_max_possible": round(math.log(alpha.shape[1]), 5),
        "frac_one_hot_0.99": round(float((alpha.amax(1) > 0.99).float().mean()), 5),
    }


@torch.no_grad()
def score_images(model: SCRD, images: np.ndarray, idx, device, batch: int) -> dict:
    """The product's scores (eval forward = anomaly map, then its mean) plus per-scale raw scores and alpha."""
    model.eval()
    scores, scale_scores, alphas = [], [], []
    for s in range(0, len(idx), batch):
        x = to_tensor(images, idx[s : s + batch]).to(device)
        per_scale, alpha = model.scale_scores(x)
        scores.append(image_score(model(x)).float().cpu())
        scale_scores.append(per_scale.float().cpu())
        alphas.append(alpha.float().cpu())
    model.train()
    return {"score": torch.cat(scores).numpy(), "scale": torch.cat(scale_scores).numpy(), "alpha": torch.cat(alphas)}


def _auroc(labels, scores) -> float:
    return float(detection_metrics(labels, scores)["auroc"])


def _synthetic_validation(model, normals: torch.Tensor, seed: int) -> dict | None:
    """Label-free validation AUROC on synthetic anomalies, when the product provides it."""
    try:
        from monai_scrd.engines.selection import synthetic_validation_metrics
    except ImportError:
        return None
    return synthetic_validation_metrics(model, normals, seed=seed)


def run_one(args, name: str, seed: int, data: dict, device) -> dict:
    from ignite.engine import Events
    from monai.data import DataLoader, Dataset
    from monai.engines import SupervisedTrainer

    from monai_scrd.engines.training import SCRDTrainStep, train_log_values
    from monai_scrd.transforms import RandSimplexNoised

    cfg = row_config(name, args.variant)
    torch.manual_seed(seed)
    np.random.seed(seed)
    model = make_model(args, cfg, device)
    loss_fn = build_loss(cfg["model"]["contrastive"], **cfg["loss"])
    opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=args.lr, betas=(0.5, 0.999))
    noise = RandSimplexNoised(keys="image", intensity=0.2, **cfg["noise"])
    noise.set_random_state(seed)
    train_images = to_tensor(data["images"], data["train"])
    dataset = Dataset([{"image": img} for img in train_images], transform=noise)
    loader = DataLoader(dataset, batch_size=args.batch_size, shuffle=True, drop_last=True, num_workers=0,
                        generator=torch.Generator().manual_seed(seed))
    trainer = SupervisedTrainer(
        device=device, max_epochs=math.ceil(args.iterations / len(loader)), train_data_loader=loader, network=model,
        optimizer=opt, loss_function=loss_fn, iteration_update=SCRDTrainStep(), decollate=False,
    )
    trainer.logger.setLevel("WARNING")  # no per-epoch lines; this script prints its own progress
    val_normals = to_tensor(data["images"], data["val"])
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
        synthetic = _synthetic_validation(model, val_normals.to(device), seed=0)
        if synthetic is not None:
            entry["synthetic_validation"] = {k: (round(float(v), 5) if isinstance(v, (float, int)) else v) for k, v in synthetic.items()}
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
        "variant": args.variant,
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
        "val_scale_scores": np.round(val["scale"], 6).tolist(),
        "test_scale_scores": np.round(test["scale"], 6).tolist(),
        "test_alpha": np.round(test["alpha"].numpy(), 5).tolist() if adaptive else None,
        "test_paths": data["test_paths"],
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
def _load_quality(results_dir: Path) -> dict:
    runs: dict = {}
    for f in sorted((results_dir / "quality").glob("*/*.json")):
        d = json.loads(f.read_text())
        if "row" in d:
            runs.setdefault(f.parent.name, {}).setdefault(d["row"], []).append(d)
    return runs


def _ms(vals, scale=100.0, digits=2) -> str:
    v = np.asarray(vals, dtype=float) * scale
    if len(v) == 0:
        return "-"
    if len(v) == 1:
        return f"{v[0]:.{digits}f}"
    return f"{v.mean():.{digits}f} ± {v.std(ddof=1):.{digits}f}"


def quality_tables(tag: str, rows: dict) -> str:
    lines = []
    first = next(iter(rows.values()))[0]
    cfg = first["config"]
    seeds = sorted({r["seed"] for rs in rows.values() for r in rs})
    lines.append(f"### `{tag}`: {cfg['backbone']} teacher, {cfg['image_size']} px, {cfg['iterations']} iterations x batch "
                 f"{cfg['batch_size']}, train {first['n_train']} / val {first['n_val']} normals, {first['n_test']} test images, seeds {seeds}\n")
    n_runs = {len(v) for v in rows.values()}
    if tag != "quick" and (len(seeds) < 3 or len(n_runs) > 1):
        lines.append(f"_Partial: rows have {sorted(n_runs)} seed(s) so far (runs are written as they finish)._\n")
    order = [r for r in ROWS if r in rows]
    for split_name in ("official", "dedup"):
        n = first["metrics"][split_name]
        lines.append(f"**{split_name} test split** ({n['n_normal']} normal / {n['n_anomalous']} tumour); mean ± std over seeds, in %\n")
        lines.append("| row | n | AUROC | AP | F1 (best-F1 thr.) | ACC (best-F1 thr.) | F1 (val thr.) | ACC (val thr.) | AUROC glioma | AUROC meningioma | paper AUC / F1 / ACC |")
        lines.append("|---|---|---|---|---|---|---|---|---|---|---|")
        for r in order:
            rs = rows[r]
            m = [x["metrics"][split_name] for x in rs]
            paper = PAPER.get(r)
            lines.append(
                f"| {ROWS[r]['label']} | {len(rs)} | {_ms([x['auroc'] for x in m])} | {_ms([x['average_precision'] for x in m])} | "
                f"{_ms([x['f1'] for x in m])} | {_ms([x['accuracy'] for x in m])} | {_ms([x['val_threshold']['f1'] for x in m])} | "
                f"{_ms([x['val_threshold']['accuracy'] for x in m])} | {_ms([x['auroc_glioma'] for x in m])} | "
                f"{_ms([x['auroc_meningioma'] for x in m])} | {' / '.join(f'{p:.2f}' for p in paper) if paper else '-'} |"
            )
        lines.append("")
    lines.append("**Scale head** (alpha over scales 1-3 = strides 4/8/16; entropy in nats, uniform = 1.0986)\n")
    lines.append("| row | alpha entropy at it 1 -> end of training (batch mean) | alpha (test normals) | alpha (test tumours) | entropy (test) | share one-hot (max > 0.99, test) |")
    lines.append("|---|---|---|---|---|---|")
    for r in order:
        rs = [x for x in rows[r] if x.get("alpha_test")]
        if not rs:
            continue
        traj = " -> ".join(f"{_ms([x['train_log'][k]['entropy_mean'] for x in rs], 1, 3)}" for k in (0, len(rs[0]['train_log']) // 2, -1))
        an = np.mean([x["alpha_test"]["normal"]["alpha_mean"] for x in rs], axis=0)
        aa = np.mean([x["alpha_test"]["anomalous"]["alpha_mean"] for x in rs], axis=0)
        ent = [(x["alpha_test"]["normal"]["entropy_mean"] + x["alpha_test"]["anomalous"]["entropy_mean"]) / 2 for x in rs]
        oh = [(x["alpha_test"]["normal"]["frac_one_hot_0.99"] + x["alpha_test"]["anomalous"]["frac_one_hot_0.99"]) / 2 for x in rs]
        lines.append(f"| {ROWS[r]['label']} | {traj} | {np.round(an, 3).tolist()} | {np.round(aa, 3).tolist()} | {_ms(ent, 1, 3)} | {_ms(oh, 1, 2)} |")
    lines.append("")
    alpha_rows = [r for r in order if any(x.get("alpha_test") for x in rows[r])]
    if alpha_rows:
        lines.append("Alpha trajectory during training, seed " + str(seeds[0]) + " (batch-mean alpha per scale at logged iterations):\n")
        ref = next(x for x in rows[alpha_rows[0]] if x["seed"] == seeds[0] or True)["train_log"]
        lines.append("| row | " + " | ".join(f"it {e['iteration']}" for e in ref) + " |")
        lines.append("|---|" + "---|" * len(ref))
    for r in alpha_rows:
        x = next((x for x in rows[r] if x["seed"] == seeds[0] and x.get("alpha_test")), None)
        if x is None:
            continue
        lines.append(f"| {r} | " + " | ".join(f"{[round(a, 2) for a in e['alpha_mean']]}" for e in x["train_log"]) + " |")
    lines.append("")
    t = [(r, x["seconds_per_iteration"], x["machine"]["loadavg"][0]) for r in order for x in rows[r]]
    lines.append("Run time per row (shared 2-core machine; load average at the end of each run in brackets): "
                 + "; ".join(f"{r} {np.mean([s for rr, s, _ in t if rr == r]):.2f} s/it [{np.mean([la for rr, _, la in t if rr == r]):.1f}]" for r in order)
                 + "\n")
    return "\n".join(lines)


def shortcut_table(results_dir: Path) -> str:
    files = sorted((results_dir / "quality").glob("*/shortcut.json"))
    if not files:
        return "(no shortcut check recorded)\n"
    d = json.loads(files[-1].read_text())
    lines = [f"From `{files[-1].relative_to(results_dir.parent)}` (test images: {d['n_test']}).\n",
             "| trivial score | AUROC official | AUROC dedup | max(AUC, 1-AUC) official |", "|---|---|---|---|"]
    for k in d["official"]:
        lines.append(f"| {k} | {100 * d['official'][k]['auroc']:.2f} | {100 * d['dedup'][k]['auroc']:.2f} | "
                     f"{100 * d['official'][k]['auroc_best_direction']:.2f} |")
    return "\n".join(lines) + "\n"


def speed_section(results_dir: Path) -> str:
    files = sorted((results_dir / "speed").glob("*.json"))
    if not files:
        return "(speed.py has not been run yet)\n"
    try:
        from speed import report_markdown
    except Exception as e:  # pragma: no cover
        return f"(could not format speed results: {e})\n"
    md = report_markdown(json.loads(files[-1].read_text()), files[-1].relative_to(results_dir.parent))
    if len(files) > 1:  # every recorded run, to show how much the shared machine's load moves the numbers
        md += ("\nAll recorded speed runs (same command; files ending in `_rss_invalid` measured RSS with getrusage, "
               "which on Linux inherits the parent's peak, so their RSS is not valid; their timings are):\n\n"
               "| file | load at start | Lite0 256 px SCRD train images/s | ResNet-18 256 px SCRD train images/s | "
               "Lite0 256 px inference images/s, batch 1 / 16 | engine / plain |\n|---|---|---|---|---|---|\n")
        for f in files:
            d = json.loads(f.read_text())
            tr = {(r["backbone"], r["size"], r["method"]): r["images_per_s"] for r in d["training"]}
            inf = {(r["backbone"], r["batch"]): r["images_per_s"] for r in d["inference"]}
            md += (f"| `{f.name}` | {d['machine']['loadavg'][0]:.2f} | {tr.get(('efficientnet_lite0', 256, 'scrd'), float('nan')):.2f} | "
                   f"{tr.get(('resnet18', 256, 'scrd'), float('nan')):.2f} | {inf.get(('efficientnet_lite0', 1), float('nan')):.2f} / "
                   f"{inf.get(('efficientnet_lite0', 16), float('nan')):.2f} | {d['engine']['engine_over_plain']:.3f} |\n")
    return md


def write_report(args) -> str:
    results_dir = C.RESULTS_DIR
    runs = _load_quality(results_dir)
    body = []
    main_tag = _main_tag(runs)
    for tag in sorted(runs, key=lambda t: (t != main_tag, t == "smoke", t == "quick", t)):
        if tag == "smoke":
            continue
        body.append(quality_tables(tag, runs[tag]))
        for log in sorted((results_dir / "quality" / tag).glob("*.log")):
            text = log.read_text()
            wall = [ln.split("):", 1)[1].strip() for ln in text.splitlines() if "Elapsed (wall clock) time" in ln]
            la = [ln for ln in text.splitlines() if ln.startswith("machine:")]
            if wall:
                load0 = json.loads(la[0].split(":", 1)[1])["loadavg"][0] if la else float("nan")
                body.append(f"Whole command wall time (`/usr/bin/time -v`, log `{log.relative_to(results_dir.parent)}`): "
                            f"**{wall[0]}** (h:mm:ss or m:ss; preprocessed-image cache already present; 1-min load average "
                            f"at start {load0:.2f}).\n")
    md = RESULTS_TEMPLATE.replace("{n_rows}", str(len(ROWS)))
    md = md.replace("{machine}", machine_line(runs))
    md = md.replace("{findings}", findings(runs))
    md = md.replace("{quality}", "\n".join(body) or "(no quality runs recorded)")
    md = md.replace("{shortcut}", shortcut_table(results_dir))
    md = md.replace("{speed}", speed_section(results_dir))
    md = md.replace("{comparison}", paper_comparison(runs))
    args.results_md.write_text(md)
    print(f"wrote {args.results_md}")
    return md


def paper_comparison(runs: dict) -> str:
    tag = _main_tag(runs)
    if tag is None:
        return "(no full run recorded yet)"
    lines = [f"Run `{tag}`, official split, AUROC in % (mean over seeds) vs the paper (WRN50-2, 256 px, 4000 it x 16):\n",
             "| row | ours | paper | ours - paper |", "|---|---|---|---|"]
    for r in ROWS:
        if r in runs[tag]:
            ours = 100 * np.mean([x["metrics"]["official"]["auroc"] for x in runs[tag][r]])
            if r in PAPER:
                lines.append(f"| {ROWS[r]['label']} | {ours:.2f} | {PAPER[r][0]:.2f} | {ours - PAPER[r][0]:+.2f} |")
            else:
                lines.append(f"| {ROWS[r]['label']} (not in the paper) | {ours:.2f} | - | vs paper RD4AD {ours - PAPER['rd4ad'][0]:+.2f}, "
                             f"vs paper SCRD {ours - PAPER['scrd_eq4'][0]:+.2f} |")
    return "\n".join(lines) + "\n"


def _main_tag(runs: dict) -> str | None:
    full = [t for t in runs if t not in ("smoke", "quick")]
    return max(full, key=lambda t: (sum(len(v) for v in runs[t].values()), t)) if full else None


def machine_line(runs: dict) -> str:
    tag = _main_tag(runs) or next(iter(runs), None)
    if tag is None:
        return "(no runs)"
    all_runs = [x for rs in runs[tag].values() for x in rs]
    m = all_runs[0]["machine"]
    loads = [x["machine"]["loadavg"][0] for x in all_runs]
    dates = sorted(x["machine"]["date_utc"] for x in all_runs)
    return (f"{m['cpu_count']} vCPU ({m.get('cpu_model')}), no GPU, torch threads {m['torch_threads']}; Python {m['python']}, "
            f"torch {m['torch']}, MONAI {m['monai']}, timm {m['timm']}, numba {m['numba']}, opensimplex {m['opensimplex']}, "
            f"scikit-learn {m['sklearn']}, ignite {m['ignite']}, numpy {m['numpy']}; {m['platform']}. Runs of `{tag}` finished "
            f"between {dates[0]} and {dates[-1]} (UTC). The 2 cores were shared with other engineers' jobs: 1-min load "
            f"average at the end of the runs {min(loads):.1f}-{max(loads):.1f} (2.0 = both cores busy), so wall-clock "
            f"numbers fluctuate; quality numbers do not depend on load.")


def findings(runs: dict) -> str:
    tag = _main_tag(runs)
    if tag is None:
        return "(no full run recorded yet)"
    rows = runs[tag]

    def auc(r, split="official"):
        return np.array([x["metrics"][split]["auroc"] for x in rows.get(r, [])]) * 100

    def fmt(a):
        return f"{a.mean():.2f} ± {a.std(ddof=1):.2f}" if len(a) > 1 else (f"{a.mean():.2f}" if len(a) else "n/a")

    def cmp(a, b, name_a, name_b):
        ra, rb = auc(a), auc(b)
        if not len(ra) or not len(rb):
            return None
        d = ra.mean() - rb.mean()
        noise = (ra.std(ddof=1) if len(ra) > 1 else 0) + (rb.std(ddof=1) if len(rb) > 1 else 0)
        if min(len(ra), len(rb)) < 2:
            verdict = "single seed: no noise estimate yet"
        else:
            verdict = "within seed noise" if abs(d) <= noise else ("better" if d > 0 else "worse")
        return f"- {name_a} vs {name_b}: AUROC {fmt(ra)} vs {fmt(rb)} (difference {d:+.2f}; {verdict}, sum of the two stds {noise:.2f})."

    out = [f"Computed from the JSON files of `{tag}` (n = seeds per row):\n"]
    for line in (cmp("crd", "rd4ad", "CRD (+contrastive)", "RD4AD"), cmp("scrd_eq4", "crd", "SCRD Eq. 4", "CRD"),
                 cmp("scrd_alg2", "crd", "SCRD Algorithm 2", "CRD"), cmp("scrd_alg2", "scrd_eq4", "Algorithm 2", "Eq. 4"),
                 cmp("scrd_alg2_ent", "scrd_alg2", "Algorithm 2 + entropy bonus 0.1", "Algorithm 2 (literal)"),
                 cmp("scrd_alg2_ent001", "scrd_alg2", "Algorithm 2 + entropy bonus 0.01", "Algorithm 2 (literal)"),
                 cmp("scrd_eq4_ent", "scrd_eq4", "Eq. 4 + entropy bonus 0.1", "Eq. 4 (literal)"),
                 cmp("scrd_eq4_gauss", "scrd_eq4", "Gaussian noise", "simplex noise (Eq. 4)"),
                 cmp("scrd_eq4", "rd4ad", "SCRD Eq. 4", "RD4AD"),
                 cmp("scrd_eq4", "crd_scale3", "SCRD Eq. 4 (learned alpha)", "CRD with alpha fixed to scale 3"),
                 cmp("crd_scale3", "rd4ad_scale3", "CRD with alpha fixed to scale 3", "RD4AD with alpha fixed to scale 3")):
        if line:
            out.append(line)
    best = max((r for r in rows), key=lambda r: auc(r).mean())
    out.append(f"- Best row by mean official AUROC: {ROWS[best]['label']} ({fmt(auc(best))}); on the de-duplicated split "
               f"{fmt(auc(best, 'dedup'))}.")
    sc_file = C.RESULTS_DIR / "quality" / tag / "shortcut.json"
    if sc_file.exists():
        sc = json.loads(sc_file.read_text())["official"]
        k = max(sc, key=lambda k: sc[k]["auroc_best_direction"])
        out.append(f"- Shortcut: the trivial score `{k}` reaches AUROC {100 * sc[k]['auroc_best_direction']:.2f} on the same test "
                   f"split, {'above' if 100 * sc[k]['auroc_best_direction'] > auc(best).mean() else 'below'} the best trained row's mean "
                   f"({auc(best).mean():.2f}) and above the mean of {sum(auc(r).mean() < 100 * sc[k]['auroc_best_direction'] for r in rows)} of "
                   f"{len(rows)} trained rows: normals and tumours differ by source, so this set rewards source detection.")
    beaten = [r for r in rows if r in PAPER and auc(r).mean() > PAPER[r][0]]
    out.append(f"- Versus the paper: we beat its AUROC on {len(beaten)} of {sum(r in PAPER for r in rows)} comparable rows"
               + (f" ({', '.join(beaten)})" if beaten else "") + " (table below).")
    ratios = {r: np.mean([x["train_log"][-1]["loss"] / x["train_log"][0]["loss"] for x in rows[r]]) for r in ROWS if r in rows}
    out.append("- Training signal: loss at the end of training / loss at iteration 1 (mean over seeds): "
               + ", ".join(f"{r} {v:.3f}" for r, v in ratios.items())
               + ". The contrastive losses (a ratio pull/push of whole-map cosine distances) hardly move from their start, "
                 "while the RD4AD loss falls a lot.")
    dd = [auc(r, "dedup").mean() - auc(r).mean() for r in rows]
    out.append(f"- Removing the 88 duplicated test normals changes the mean AUROC by {min(dd):+.2f} to {max(dd):+.2f} points across rows.")
    gap = [100 * np.mean([x["metrics"]["official"]["f1"] - x["metrics"]["official"]["val_threshold"]["f1"] for x in rows[r]]) for r in rows]
    out.append(f"- F1 at the best-F1 threshold (fitted on test labels, the paper's protocol) exceeds F1 at the threshold fitted on "
               f"held-out training normals by {min(gap):.1f} to {max(gap):.1f} points: the paper-style F1/ACC are optimistic.")
    for r in rows:
        xs = [x for x in rows[r] if x.get("alpha_test")]
        if not xs:
            continue
        ent_end = np.mean([x["train_log"][-1]["entropy_mean"] for x in xs])
        # first logged iteration at which the batch-mean entropy is below 0.1 nats (near one-hot)
        its = [next((e["iteration"] for e in x["train_log"] if e.get("entropy_mean", 9) < 0.1), None) for x in xs]
        dom = [int(np.argmax(x["alpha_test"]["normal"]["alpha_mean"])) + 1 for x in xs]
        out.append(f"- alpha, {ROWS[r]['label']}: entropy at the end of training {ent_end:.3f} nats (uniform 1.099); first logged "
                   f"iteration below 0.1 nats per seed: {its}; dominant scale on test normals per seed: {dom}.")
    return "\n".join(out) + "\n"


RESULTS_TEMPLATE = """# SCRD benchmarks (issue 6)

This file is generated by `python benchmarks/quality.py --report` from the raw per-run JSON files under
`benchmarks/results/` (quality: `results/quality/<tag>/<row>_seed<k>.json`, one per training run, with the
configuration, training log incl. alpha, all test/validation scores and machine info; speed:
`results/speed/speed_<date>.json`). No number below is typed by hand.

## Commands

```
python benchmarks/quality.py                         # main CPU run: all {n_rows} rows x 3 seeds, 300 it (s/it per row below)
python benchmarks/quality.py --iterations 1000 --rows rd4ad rd4ad_scale3 crd_scale3 scrd_eq4 scrd_alg2   # longer schedule
python benchmarks/quality.py --quick                 # 1 seed, 4 rows, 60 it, 150 test images per group; < 15 min
/usr/bin/time -v python benchmarks/quality.py --quick > benchmarks/results/quality/quick/quick_run.log 2>&1   # as recorded
python benchmarks/speed.py                           # speed tables below; < ~10 min on 2 cores
python benchmarks/quality.py --report                # regenerate this file from the JSON files
# paper teacher (WRN50-2) on a GPU with a local ImageNet checkpoint -- prepared, NOT run (no GPU, no weights here):
python benchmarks/quality.py --backbone wide_resnet50_2 --pretrained-weights /path/wide_resnet50_2-imagenet.pth \\
    --device cuda --image-size 256 --batch-size 16 --iterations 4000 --no-feature-cache --rows rd4ad crd scrd_eq4 scrd_alg2 --seeds 0
```

Data: `../shared/data/brain_tumor` (official MedIAnomaly split: 1000 train normals, test 600 normal + 300 glioma +
300 meningioma; see its MANIFEST.md). Each image goes once through `monai_scrd.data.preprocessing_transforms`
(grayscale, resize, min-max to [0, 1]) and is cached as uint8 under `~/.cache/monai_scrd`.

## Machine

{machine}

## What was shortened relative to the paper

| | paper | here (CPU run) |
|---|---|---|
| teacher | WRN50-2, ImageNet | EfficientNet-Lite0, ImageNet (the only teacher with weights offline) |
| image size | 256 px | 128 px (noise boxes 10-16 px per Algorithm 1's [10, h/8]) |
| schedule | 4000 it x batch 16 (64 epochs of 1000 images) | 300 it x batch 8 (2.7 epochs of 900 images) = 3.75% of the paper's images seen |
| training normals | 1000 | 900 (100 held out, seed 0, to fit an operating threshold without test labels) |
| stopping | fixed 4000 it | fixed iteration count, no test label used for any choice |
| seeds | not stated | 3 (0, 1, 2), mean ± sample std |

Everything else follows the paper: Adam (lr 1e-3, betas 0.5/0.999), simplex noise with 6 octaves, persistence 0.6,
lambda 0.2, one box per image, anomaly map = alpha-weighted sum of per-scale 1 - cos maps, Gaussian sigma 4, image
score = mean of the map. The frozen teacher's clean features are computed once and reused (identical numbers,
much faster on CPU); the noisy-teacher pass runs every step on fresh noise.

## Quality: Brain Tumor ablation (paper Tables 2 and 3)

Metrics: AUROC, AP, F1 and ACC at the best-F1 threshold (the paper's protocol, which picks the threshold on the
test labels) and F1/ACC at an honest threshold: the 95th percentile of the scores of the 100 held-out training
normals. "dedup" removes the 88 test normals byte-identical to a training normal.

{quality}

Rows: the paper's ablation (RD4AD, + contrastive, + scale adaptation per Eq. 4 or per Algorithm 2, Gaussian
noise) plus measurements for the scale-head analysis: the alpha entropy bonus (`alpha_entropy_weight`, which
subtracts weight x mean entropy of alpha from the loss) at 0.1 and 0.01, and two controls that train and score with
alpha FIXED to (0, 0, 1), i.e. only the coarsest (stride-16) scale, which is what a head that collapsed onto scale 3
computes. The paper columns repeat the paper's SCRD numbers for both Eq. 4 and Algorithm 2 (it reports one model).

## Findings

{findings}

## Scale head: what the numbers say, and the recommended default

- Both literal losses (Eq. 4 and Algorithm 2) drive alpha to a one-hot vector within the first 25 iterations
  (entropy table above), on every seed. Minimising sum_k alpha_k r_k over alpha alone is minimised by putting all
  weight on the scale with the smallest ratio r_k, and Adam's size-normalised steps get there almost at once:
  the head's input is the global-max-pooled embedding (224 channels for Lite0, mean value about 3 at
  initialisation, checked by hand), so one Adam step of lr 1e-3 with consistent gradient signs moves a logit by
  up to about 224 x 1e-3 x 3 = 0.7, and ten steps already give a near one-hot softmax. alpha is then the same for every
  image (normal or tumour): the head stops being per-image scale adaptation and becomes a one-off scale SELECTION.
- Which scale wins depends on the seed (see "dominant scale" above). When it is scale 3 (stride 16), AUROC is
  high; when it is scale 1, AUROC collapses, hence the large std of the Algorithm 2 row.
- The entropy bonus does prevent the collapse (entropy stays near log 3), but keeps alpha near uniform, which is
  plain CRD, and CRD is the weakest contrastive row here; it lowered AUROC at both 0.1 and 0.01. So the obvious
  "fix" of the collapse makes the numbers worse on this data.
- The controls with alpha FIXED to the coarsest scale ask whether learning alpha adds anything beyond picking a
  scale. Plain RD4AD trained and scored on the coarsest (stride-16) scale only is the best and the most stable
  row of this run (see its line in the tables and Findings), well above RD4AD with all three scales and above
  every contrastive row. With the contrastive loss (which barely moves at this budget, see the training-signal
  line), the same fixed scale varies strongly from seed to seed. So at this budget the measured benefit of the
  "scale-adaptive" rows comes from ending up on the coarse scale, and the contrastive term adds variance, not
  accuracy.
- Recommendation for the library default (for the lead to decide): keep `ratio_of_sums=False` (Eq. 4: it
  collapsed onto the coarse scale on all seeds here, while Algorithm 2 picked the finest scale on one seed and
  failed there) and `alpha_entropy_weight=0.0`; keep the entropy bonus as an option, not the default, since it
  lowered AUROC at both weights tried. Document that the learned alpha collapses to one image-independent scale,
  and consider offering a fixed scale weighting (e.g. `alpha = (0, 0, 1)`) as a measured, cheaper baseline.
  A principled fix for the head worth measuring next (not done here; it needs the longer schedule and the
  paper's teacher to be judged): train the head on detached ratios with an image-dependent target (e.g. the
  scale at which the noisy copy is most separable), or a softmax temperature with a fixed prior.

## Versus the paper

{comparison}

Why we miss the paper's numbers:
1. Schedule: 3.75% of the paper's training images seen (300 x 8 vs 4000 x 16), forced by the 2-core CPU budget.
2. Teacher and resolution: EfficientNet-Lite0 at 128 px instead of WRN50-2 at 256 px. Table 4 of the paper
   already loses 4.7-6.7 AUROC points going from WRN50-2 to ResNet-50/34; Lite0 is smaller still.
3. Contrastive signal: Eq. 2/4 compare whole flattened feature maps. A 10-16 px noise box changes a small part
   of the map, so 1 - sim(z, v) stays close to 1 - sim(u, v) and the ratio stays near 1 (see the training losses
   in the JSON logs); the contrastive push is weak at this budget.
4. Scale head: see the alpha rows above; with the literal losses alpha collapses to one scale within tens of
   iterations, so "scale adaptation" becomes "use only one scale".
5. The Brain Tumor normals and tumours come from different sources (sizes, modalities, RGB/grayscale encodings):
   trivial scores below separate them, so high AUROCs on this set partly measure source, not anomaly.
   Duplicates: 88 test normals also appear in training.

## Shortcut check: trivial scores on the same test split

{shortcut}

## Speed

{speed}

## Not done in this session

- WRN50-2 (the paper's teacher): no GPU and no WRN50-2 ImageNet weights were available; the command above is
  prepared but was not run. ResNet-18 appears only in the speed tables, with random weights.
- The full paper schedule (4000 it x 16 at 256 px) on CPU: roughly 100x this budget.
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
    jobs = [(args, name, seed) for seed in args.seeds for name in args.rows]
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
