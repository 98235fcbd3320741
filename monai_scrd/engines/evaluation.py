"""Scoring images with a trained SCRD model inside MONAI evaluators, robust to unreadable files."""

from __future__ import annotations

import csv
import json
import os
from collections.abc import Sequence

import numpy as np
import torch

from monai_scrd.data.robust import SafeDataset  # the one SafeDataset (re-exported here for the bundle configs)
from monai_scrd.engines.utils import unwrap

__all__ = ["SafeDataset", "EvalCollate", "SCRDEvalStep", "write_scores_csv", "write_errors_csv", "write_json", "ErrorReport"]


def _describe(path, exc: BaseException) -> str:
    try:
        from monai_scrd.data.errors import describe

        return describe(path or "", exc)
    except ImportError:  # pragma: no cover - data helpers not available
        return f"{path}: {type(exc).__name__}: {exc}"


class EvalCollate:
    """``collate_fn`` for evaluation loaders over :class:`monai_scrd.data.SafeDataset`: keeps the fixed keys
    ``image``/``path``/``label``/``error`` (so items with different extra keys still collate), sets a missing or
    non-integer label to -1, and turns a good item whose image is not ``placeholder_shape`` into a failed one.

    Args:
        placeholder_shape: expected preprocessed shape ``(C, H, W)``; None: not checked.
    """

    def __init__(self, placeholder_shape: Sequence[int] | None = None) -> None:
        self.placeholder_shape = None if placeholder_shape is None else tuple(int(s) for s in placeholder_shape)

    def _item(self, item: dict) -> dict:
        path = str(item.get("path", item.get("image", "")))
        raw = item.get("label", -1)
        try:
            label = int(raw) if not isinstance(raw, bool) and float(raw) == int(float(raw)) else -1
        except (TypeError, ValueError):
            label = -1
        image = item["image"]
        image = image.as_tensor() if hasattr(image, "as_tensor") else torch.as_tensor(np.asarray(image))
        error = str(item.get("error", "") or "")
        shape = self.placeholder_shape
        if not error and shape is not None and tuple(image.shape) != shape:
            error = _describe(path, ValueError(f"preprocessed image has shape {tuple(image.shape)}, expected {shape}"))
        if error and shape is not None:
            image = torch.zeros(shape)
        return {"image": image.float(), "path": path, "label": label, "error": error}

    def __call__(self, batch: Sequence[dict]) -> dict:
        from torch.utils.data import default_collate

        return default_collate([self._item(dict(b)) for b in batch])


class SCRDEvalStep:
    """Evaluator ``iteration_update``: anomaly maps and image scores for a batch from :class:`monai_scrd.data.SafeDataset`
    (collated with :class:`EvalCollate`).

    Output: ``{"score": [B] (nan for unreadable items), "label": [B], "path": [...], "error": [...], "pred": maps}``.

    Args:
        reduction: image score from the anomaly map, ``"mean"`` (paper) or ``"max"``.
        keep_maps: keep the anomaly maps in the output (for heatmaps); otherwise ``pred`` is None.
    """

    def __init__(self, reduction: str = "mean", keep_maps: bool = False) -> None:
        self.reduction = reduction
        self.keep_maps = keep_maps

    def __call__(self, engine, batchdata: dict) -> dict:
        from monai_scrd.scoring import image_score

        x = torch.as_tensor(batchdata["image"])
        x = x.as_tensor() if hasattr(x, "as_tensor") else x
        paths = list(batchdata.get("path", [""] * x.shape[0]))
        errors = list(batchdata.get("error", [""] * x.shape[0]))
        labels = torch.as_tensor(batchdata.get("label", torch.full((x.shape[0],), -1))).view(-1).long()
        ok = torch.tensor([not e for e in errors], dtype=torch.bool)
        scores = torch.full((x.shape[0],), float("nan"))
        maps = None
        net = unwrap(engine.network)
        net.eval()
        if ok.any():
            with torch.no_grad():
                use_amp = bool(getattr(engine, "amp", False)) and torch.device(engine.state.device).type == "cuda"
                with torch.autocast("cuda", enabled=use_amp):
                    maps = net(x[ok].to(engine.state.device)).float()
            scores[ok] = image_score(maps, self.reduction).float().cpu()
        return {
            "score": scores,
            "label": labels,
            "path": paths,
            "error": errors,
            "pred": maps.cpu() if (maps is not None and self.keep_maps) else None,
            "ok": ok,
        }


def write_json(path: str, data: dict) -> str:
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w") as f:
        json.dump(data, f, indent=2, sort_keys=True)
    return path


def write_scores_csv(path: str, rows: Sequence[dict], fields: Sequence[str]) -> str:
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(fields), extrasaction="ignore")
        w.writeheader()
        w.writerows(rows)
    return path


def write_errors_csv(path: str, errors: Sequence[tuple[str, str]]) -> str | None:
    """Write ``path,error`` rows (only when there are errors; an old errors.csv is removed otherwise)."""
    if not errors:
        if os.path.isfile(path):
            os.remove(path)
        return None
    return write_scores_csv(path, [{"path": p, "error": e} for p, e in errors], ["path", "error"])


class ErrorReport:
    """Collects per-file errors of a run; ``check()`` (last step of a bundle's run list) exits non-zero if any."""

    def __init__(self, errors_csv: str) -> None:
        self.errors_csv = errors_csv
        self.errors: list[tuple[str, str]] = []

    def add(self, path: str, error: str) -> None:
        self.errors.append((str(path), str(error)))

    def write(self) -> str | None:
        return write_errors_csv(self.errors_csv, self.errors)

    def check(self) -> None:
        self.write()
        if self.errors:
            for p, e in self.errors[:10]:
                print(f"ERROR {e}")
            raise SystemExit(
                f"{len(self.errors)} input file(s) could not be processed; see {self.errors_csv} (other results were written)"
            )


def finite(values) -> np.ndarray:
    arr = np.asarray(values, dtype=float)
    return arr[np.isfinite(arr)]
