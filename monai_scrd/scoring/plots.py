"""Figures: ROC curve, normal-vs-abnormal score histogram (paper Fig. 2) and heatmap overlays (matplotlib, Agg)."""

from __future__ import annotations

import os

import numpy as np

__all__ = ["save_roc_curve", "save_score_histogram", "save_heatmap_overlay", "overlay_color_range", "overlay_title"]


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


OVERLAY_CMAP = "coolwarm"  # diverging: blue below the threshold, white-grey at it, red above


def overlay_color_range(threshold: float | None) -> tuple[float, float] | None:
    """The colour range ``(vmin, vmax)`` shared by every heatmap overlay of a run with a decision threshold ``t``
    (None without one, or for a non-finite ``t``: each overlay then uses its map's own min..max).

    Rule: ``vmin = t - span``, ``vmax = t + span`` with ``span = |t|`` (1 when ``t == 0``). So the threshold sits at
    the centre of the diverging colour map: map values below it are cool (blue), above it warm (red), values at or
    below ``vmin`` the deepest blue and at or above ``vmax`` the deepest red (the colour bar's arrows). For the
    usual ``t > 0`` this is ``0 .. 2 t``: an uncalibrated map (``1 - cos`` distances) is never below 0, so red means
    "above the threshold" and full red "at least twice the threshold". A calibrated map (per-scale z-scores) can go
    below 0: those pixels clip to the deepest blue. The map values are on the image-score scale because the image
    score is a mean over (part of) the map: with the ``mean`` reduction a normal image can still have warm spots (its
    mean stays below ``t``), with ``top<P>%`` only small ones, with ``max`` none (only an anomalous image has pixels
    above ``t``).
    """
    if threshold is None:
        return None
    t = float(threshold)
    if not np.isfinite(t):
        return None
    span = abs(t) if t != 0 else 1.0
    return t - span, t + span


def overlay_title(score: float | None = None, threshold: float | None = None, slice_index: int | None = None,
                  num_slices: int | None = None, shared_scale: bool | None = None) -> str:
    """The title of a heatmap overlay: the score and decision, for a volume the slice shown (``slice k of N (highest
    score)``, ``k`` the 0-based index along the volume's slice axis) and, without a threshold, that the colours are the
    map's own scale (not comparable between images). ``shared_scale``: whether the colours are on a run-wide scale
    (default: when there is a ``threshold``)."""
    if shared_scale is None:
        shared_scale = threshold is not None
    parts = []
    if score is not None:
        text = f"score {score:.4g}"
        if threshold is not None:
            text += (" >= " if score >= threshold else " < ") + f"threshold {threshold:.4g}"
            text += " (anomalous)" if score >= threshold else " (normal)"
        parts.append(text)
    if slice_index is not None:
        parts.append(f"slice {int(slice_index)} of {int(num_slices)} (highest score)" if num_slices is not None
                     else f"slice {int(slice_index)} (highest score)")
    line = "  |  ".join(parts)
    if not shared_scale:
        line += ("\n" if line else "") + "own colour scale: no threshold"
    return line


def save_heatmap_overlay(image, anomaly_map, path: str, score: float | None = None, threshold: float | None = None,
                         vmin: float | None = None, vmax: float | None = None, slice_index: int | None = None,
                         num_slices: int | None = None, title: str | None = None) -> str:
    """Image (grayscale, [H, W] or [C, H, W]) with the anomaly map ([H, W], same size) overlaid as a heatmap, next
    to the image alone; returns ``path``.

    Colour range: ``vmin``/``vmax`` when given; else, with a ``threshold``, :func:`overlay_color_range` (the same
    for every image of a run: blue below the threshold, red above, the threshold marked on the colour bar); else the
    map's own min..max (said in the title: colours are then not comparable between images). ``slice_index`` /
    ``num_slices``: the volume slice shown (in the title, see :func:`overlay_title`); ``title`` replaces the title.
    """
    plt = _plt()
    img = np.asarray(image, dtype=float)
    if img.ndim == 3:
        img = img.mean(axis=0)
    amap = np.asarray(anomaly_map, dtype=float).squeeze()
    has_threshold = threshold is not None and bool(np.isfinite(threshold))
    shared = overlay_color_range(threshold) if has_threshold else None
    own_scale = shared is None and vmin is None and vmax is None
    lo = vmin if vmin is not None else (shared[0] if shared else float(amap.min()))
    hi = vmax if vmax is not None else (shared[1] if shared else float(amap.max()))
    if not hi > lo:
        hi = lo + 1e-6
    fig, axes = plt.subplots(1, 2, figsize=(8, 4.4), dpi=100)
    axes[0].imshow(img, cmap="gray")
    axes[0].set_title("input", fontsize=9)
    axes[1].imshow(img, cmap="gray")
    im = axes[1].imshow(amap, cmap=OVERLAY_CMAP, alpha=0.5, vmin=lo, vmax=hi)
    axes[1].set_title("anomaly map", fontsize=9)
    for ax in axes:
        ax.axis("off")
    extend = {(False, False): "neither", (True, False): "min", (False, True): "max", (True, True): "both"}[
        (bool(amap.min() < lo), bool(amap.max() > hi))]
    cbar = fig.colorbar(im, ax=axes[1], fraction=0.046, pad=0.04, extend=extend)
    if has_threshold and lo <= float(threshold) <= hi:
        t = float(threshold)
        cbar.ax.axhline(t, color="k", lw=2)
        cbar.set_ticks([lo, t, hi])
        cbar.set_ticklabels([f"{lo:.3g}", f"threshold {t:.3g}", f"{hi:.3g}"])
    cbar.ax.tick_params(labelsize=8)
    text = title if title is not None else overlay_title(score, threshold if has_threshold else None, slice_index,
                                                         num_slices, shared_scale=not own_scale)
    if text:
        fig.suptitle(text, fontsize=10)
    fig.tight_layout()
    fig.savefig(_prepare(path))
    plt.close(fig)
    return path
