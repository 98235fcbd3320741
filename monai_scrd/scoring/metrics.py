"""Image-level detection metrics (scikit-learn): AUROC, AP, and F1/accuracy at the best-F1 or a given threshold."""

from __future__ import annotations

import numpy as np
from sklearn.metrics import accuracy_score, average_precision_score, f1_score, precision_recall_curve, roc_auc_score

__all__ = ["best_f1_threshold", "threshold_metrics", "detection_metrics", "pixel_auroc"]


def _check(labels, scores) -> tuple[np.ndarray, np.ndarray]:
    y = np.asarray(labels).astype(int).ravel()
    s = np.asarray(scores, dtype=float).ravel()
    if y.shape != s.shape:
        raise ValueError(f"{y.size} labels but {s.size} scores")
    if not set(np.unique(y)) <= {0, 1}:
        raise ValueError(f"labels must be 0 (normal) or 1 (anomaly), found {sorted(set(np.unique(y)) - {0, 1})}")
    if not np.all(np.isfinite(s)):
        raise ValueError(f"{int((~np.isfinite(s)).sum())} scores are NaN or infinite")
    return y, s


def best_f1_threshold(labels, scores) -> float:
    """The score threshold (predict anomaly when ``score >= threshold``) that maximises F1 on these labels."""
    y, s = _check(labels, scores)
    precision, recall, thresholds = precision_recall_curve(y, s)
    f1 = np.divide(2 * precision * recall, precision + recall, out=np.zeros_like(precision), where=(precision + recall) > 0)
    return float(thresholds[int(np.argmax(f1[:-1]))])


def threshold_metrics(labels, scores, threshold: float) -> dict:
    """F1, accuracy, precision, recall and false-positive rate (the share of normal images flagged) when predicting
    anomaly for ``score >= threshold`` (e.g. one fitted elsewhere)."""
    y, s = _check(labels, scores)
    pred = (s >= threshold).astype(int)
    tp = int(((pred == 1) & (y == 1)).sum())
    fp = int(((pred == 1) & (y == 0)).sum())
    return {
        "threshold": float(threshold),
        "f1": float(f1_score(y, pred, zero_division=0)),
        "accuracy": float(accuracy_score(y, pred)),
        "precision": tp / max(int(pred.sum()), 1),
        "recall": tp / max(int(y.sum()), 1),
        "false_positive_rate": fp / max(int((y == 0).sum()), 1),
    }


def detection_metrics(labels, scores) -> dict:
    """AUROC, average precision, and F1/accuracy at the best-F1 threshold (the paper's protocol), plus counts.

    Note that the best-F1 threshold is fitted on the same labels, as in the paper; use ``threshold_metrics`` with a
    threshold fitted on other data for an honest operating point.
    """
    y, s = _check(labels, scores)
    if len(np.unique(y)) < 2:
        raise ValueError("metrics need both normal (0) and anomalous (1) images")
    at_best = threshold_metrics(y, s, best_f1_threshold(y, s))
    return {
        "auroc": float(roc_auc_score(y, s)),
        "average_precision": float(average_precision_score(y, s)),
        **at_best,
        "n_normal": int((y == 0).sum()),
        "n_anomalous": int((y == 1).sum()),
    }


def pixel_auroc(masks, maps, max_pixels: int | None = 1_000_000, seed: int = 0) -> float:
    """Pixel-level AUROC of anomaly ``maps`` against binary ``masks`` (same number of elements, e.g. ``[N, 1, H, W]``),
    pooled over all images (normal images contribute negatives only, as in the MVTec protocol). With more than
    ``max_pixels`` pixels, a fixed random subset of ``max_pixels`` (drawn from ``seed``, so repeated calls on the same
    inputs agree) is used to keep scikit-learn's sort cheap."""
    y = (np.asarray(masks).ravel() != 0).astype(int)
    s = np.asarray(maps, dtype=np.float32).ravel()
    if y.shape != s.shape:
        raise ValueError(f"{y.size} mask pixels but {s.size} map pixels")
    if max_pixels is not None and y.size > int(max_pixels):
        keep = np.random.default_rng(seed).choice(y.size, int(max_pixels), replace=False)
        y, s = y[keep], s[keep]
    if not np.all(np.isfinite(s)):
        raise ValueError(f"{int((~np.isfinite(s)).sum())} anomaly-map values are NaN or infinite")
    if len(np.unique(y)) < 2:
        raise ValueError("pixel AUROC needs both anomalous and normal pixels")
    return float(roc_auc_score(y, s))
