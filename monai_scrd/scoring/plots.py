"""Figures: ROC curve, normal-vs-abnormal score histogram (paper Fig. 2) and heatmap overlays (matplotlib, Agg)."""

from __future__ import annotations

import os

import numpy as np

__all__ = ["save_roc_curve", "save_score_histogram", "save_heatmap_overlay"]


def _plt():
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    return plt


def _prepare(path: str) -> str:
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    return path


def save_roc_curve(labels, scores, path: str, title: str = "SCRD ROC") -> str:
    """ROC curve PNG with the AUROC in the legend."""
    from sklearn.metrics import roc_auc_score, roc_curve

    plt = _plt()
    y, s = np.asarray(labels).astype(int), np.asarray(scores, dtype=float)
    fpr, tpr, _ = roc_curve(y, s)
    auc = roc_auc_score(y, s)
    fig, ax = plt.subplots(figsize=(4.5, 4.5), dpi=100)
    ax.plot(fpr, tpr, lw=2, label=f"AUROC = {auc:.3f}")
    ax.plot([0, 1], [0, 1], "k--", lw=1)
    ax.set(xlabel="false positive rate", ylabel="true positive rate", title=title, xlim=(0, 1), ylim=(0, 1.01))
    ax.legend(loc="lower right")
    fig.tight_layout()
    fig.savefig(_prepare(path))
    plt.close(fig)
    return path


def save_score_histogram(labels, scores, path: str, threshold: float | None = None, title: str = "Anomaly scores") -> str:
    """Histogram of the image scores of normal (0) and abnormal (1) images, optionally with a threshold line."""
    plt = _plt()
    y, s = np.asarray(labels).astype(int), np.asarray(scores, dtype=float)
    bins = np.linspace(s.min(), s.max() if s.max() > s.min() else s.min() + 1e-6, 30)
    fig, ax = plt.subplots(figsize=(5.5, 4), dpi=100)
    ax.hist(s[y == 0], bins=bins, alpha=0.6, color="tab:blue", label=f"normal (n={int((y == 0).sum())})", density=True)
    ax.hist(s[y == 1], bins=bins, alpha=0.6, color="tab:red", label=f"abnormal (n={int((y == 1).sum())})", density=True)
    if threshold is not None and np.isfinite(threshold):
        ax.axvline(threshold, color="k", ls="--", lw=1, label=f"threshold {threshold:.4g}")
    ax.set(xlabel="anomaly score", ylabel="density", title=title)
    ax.legend()
    fig.tight_layout()
    fig.savefig(_prepare(path))
    plt.close(fig)
    return path


def save_heatmap_overlay(image, anomaly_map, path: str, score: float | None = None, threshold: float | None = None,
                         vmin: float | None = None, vmax: float | None = None) -> str:
    """Image (grayscale, [H, W] or [C, H, W]) with the anomaly map ([H, W], same size) overlaid as a jet heatmap
    (colour range: the map's own min..max unless ``vmin``/``vmax`` are given)."""
    plt = _plt()
    img = np.asarray(image, dtype=float)
    if img.ndim == 3:
        img = img.mean(axis=0)
    amap = np.asarray(anomaly_map, dtype=float).squeeze()
    fig, axes = plt.subplots(1, 2, figsize=(8, 4), dpi=100)
    axes[0].imshow(img, cmap="gray")
    axes[0].set_title("input")
    axes[1].imshow(img, cmap="gray")
    lo = float(amap.min()) if vmin is None else vmin
    hi = float(amap.max()) if vmax is None else vmax
    im = axes[1].imshow(amap, cmap="jet", alpha=0.45, vmin=lo, vmax=hi if hi > lo else lo + 1e-6)
    label = "anomaly map"
    if score is not None:
        label += f"  score {score:.4g}"
        if threshold is not None:
            label += " (anomalous)" if score >= threshold else " (normal)"
    axes[1].set_title(label, fontsize=9)
    for ax in axes:
        ax.axis("off")
    fig.colorbar(im, ax=axes[1], fraction=0.046, pad=0.04)
    fig.tight_layout()
    fig.savefig(_prepare(path))
    plt.close(fig)
    return path
