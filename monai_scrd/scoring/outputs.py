"""What a scoring run writes: ``scores.csv`` (:class:`ScoreWriter`), ``errors.csv`` (:class:`ErrorCollector`), anomaly
maps (:func:`save_map`) and heatmap overlays."""

from __future__ import annotations

import csv
import logging
import os
import re
from collections.abc import Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from monai_scrd.data.robust import error_message
from monai_scrd.scoring.io import CSV_ERRORS, _cell, _parent, write_csv

if TYPE_CHECKING:
    from monai_scrd.scoring.scorer import ScoreResult

__all__ = ["MAP_FORMATS", "save_map", "ErrorCollector", "ScoreWriter"]

logger = logging.getLogger("monai_scrd.scoring")

MAP_FORMATS = ("nii.gz", "nii", "npy", "png")

# ----------------------------------------------------------------------------------------------- maps
def save_map(
    anomaly_map: np.ndarray | torch.Tensor,
    path: str | os.PathLike,
    affine: np.ndarray | None = None,
    header: Any = None,
) -> str:
    """Write an anomaly map (2D or 3D, float32) by extension: ``.nii.gz``/``.nii`` (with ``affine``; ``header``, a
    NIfTI header of the input, keeps its orientation codes and units), ``.npy``, or ``.png`` (2D only, 8-bit scaled
    by the map's own maximum: for viewing). The one map writer of the package. Returns the path."""
    path = os.fspath(path)
    amap = anomaly_map.detach().cpu().numpy() if isinstance(anomaly_map, torch.Tensor) else np.asarray(anomaly_map)
    amap = amap.astype(np.float32, copy=False)
    lower = path.lower()
    if lower.endswith(".png"):
        squeezed = amap.squeeze()
        if squeezed.ndim != 2:
            raise ValueError(f"{path}: a PNG map must be 2D, this one has shape {tuple(amap.shape)} (use .nii.gz)")
        from PIL import Image

        top = float(squeezed.max()) if squeezed.size else 0.0
        scaled = np.zeros_like(squeezed) if top <= 0 else np.clip(squeezed / top, 0.0, 1.0)
        _parent(path)
        Image.fromarray((scaled * 255.0 + 0.5).astype(np.uint8)).save(path)
    elif lower.endswith(".npy"):
        _parent(path)
        np.save(path, amap)
    elif lower.endswith((".nii.gz", ".nii")):
        import nibabel as nib

        aff = np.eye(4) if affine is None else np.asarray(affine, dtype=np.float64)
        img = nib.Nifti1Image(amap, aff)
        if header is not None:  # keep the input's orientation codes and voxel units
            img.set_qform(aff, code=int(header["qform_code"]) or 1)
            img.set_sform(aff, code=int(header["sform_code"]) or 1)
            img.header.set_xyzt_units(*header.get_xyzt_units())
        _parent(path)
        nib.save(img, path)
    else:
        raise ValueError(f"{path}: anomaly map format must be one of {', '.join('.' + f for f in MAP_FORMATS)}")
    return path


def _overlay(result: ScoreResult, path: str, threshold: float | None,
             color_range: tuple[float, float] | None = None) -> str:
    """Heatmap overlay PNG of a scored file (volumes: the slice with the highest score, named in the title as
    ``slice k of N (highest score)``). ``color_range``: the ``(vmin, vmax)`` shared by a run's overlays (default:
    :func:`~monai_scrd.scoring.plots.overlay_color_range` of ``threshold``; without a threshold each overlay uses its
    map's own range)."""
    from monai_scrd.scoring import plots

    img = result.source
    if img is None or result.anomaly_map is None:
        raise ValueError(f"{result.path}: no map kept for an overlay (score with return_maps=True)")
    where: dict = {}
    if result.kind == "volume":
        k = max(result.slice_scores, key=result.slice_scores.get)
        image, amap = np.take(img.array, k, axis=img.slice_axis), np.take(result.anomaly_map, k, axis=img.slice_axis)
        where = {"slice_index": int(k), "num_slices": int(img.array.shape[img.slice_axis])}
    else:
        image = img.array[:3].mean(axis=0) if img.array.shape[0] > 1 else img.array[0]
        amap = result.anomaly_map.reshape(image.shape)
    if color_range is None:
        color_range = plots.overlay_color_range(threshold)
    vmin, vmax = color_range if color_range is not None else (None, None)
    return plots.save_heatmap_overlay(image, amap, path, score=result.score, threshold=threshold, vmin=vmin, vmax=vmax,
                                      **where)



# ----------------------------------------------------------------------------------------------- errors
class ErrorCollector:
    """The per-file errors of a batch job, one ``(path, message)`` row each; ``write`` always writes ``errors.csv``
    (a header alone means nothing failed) and ``check`` (the last step of a bundle run) exits non-zero when any file
    failed.

    Args:
        errors_csv: where :meth:`write` and :meth:`check` write by default.
    """

    def __init__(self, errors_csv: str | os.PathLike | None = None) -> None:
        self.errors_csv = None if errors_csv is None else os.fspath(errors_csv)
        self.rows: list[tuple[str, str]] = []
        self.reported = 0  # the first ``reported`` rows were already logged (as they happened): not logged again
        self.written: int | None = None  # files whose results were written, when the job tells (for the summary)

    def add(self, path: str | os.PathLike, error: str | BaseException) -> None:
        """Record a failure: a one-line message, or the exception raised for ``path``."""
        path = os.fspath(path)
        msg = error_message(path, error) if isinstance(error, BaseException) else " ".join(str(error).split())
        self.rows.append((path, msg))

    def __len__(self) -> int:
        return len(self.rows)

    def __iter__(self) -> Iterator[tuple[str, str]]:
        return iter(self.rows)

    @property
    def exit_code(self) -> int:
        """1 when any file failed, else 0."""
        return 1 if self.rows else 0

    def write(self, csv_path: str | os.PathLike | None = None) -> str:
        """Write ``path,error`` rows (the header always); returns the file."""
        target = os.fspath(csv_path) if csv_path is not None else self.errors_csv
        if target is None:
            raise ValueError("ErrorCollector.write needs a path (none was given at construction)")
        return write_csv(target, ({"path": p, "error": e} for p, e in self.rows), ["path", "error"])

    def check(self) -> None:
        """Write ``errors.csv`` (when a path was given) and exit with status 1 naming it when any file failed."""
        if self.errors_csv is not None:
            self.write()
        if self.rows:
            for _, msg in self.rows[self.reported:][:10]:
                logger.error(msg)
            where = f"; see {self.errors_csv}" if self.errors_csv else ""
            if self.written is None:
                done = " (the other results were written)"
            elif self.written:
                done = f" (the results of the other {self.written} were written)"
            else:
                done = " (no file was scored)"
            raise SystemExit(f"error: {len(self.rows)} input file(s) could not be processed{where}{done}")



# ----------------------------------------------------------------------------------------------- batch outputs
def _stem(path: str) -> str:
    name = os.path.basename(path.rstrip("/\\")) or "image"
    low = name.lower()
    for ext in (".nii.gz", ".nii", ".dcm", ".dicom", ".ima", ".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff"):
        if low.endswith(ext):
            name = name[: -len(ext)]
            break
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name) or "image"


class ScoreWriter:
    """Writes a batch job's outputs as results arrive: a ``scores.csv`` row per scored file (flushed at once), the
    anomaly maps and heatmap overlays, and per-file errors into ``errors.csv`` (always written on :meth:`close`).

    Args:
        output_dir: where ``scores.csv``, ``errors.csv``, ``maps/`` and ``heatmaps/`` go.
        columns: ``scores.csv`` columns, from the result (``path``, ``score``, ``is_anomaly``, ``kind``,
            ``heatmap``, ``anomaly_map``) and its item (e.g. ``label``).
        maps: ``"none"``, ``"nifti"`` (``maps/<name>_anomaly_map.nii.gz`` for NIfTI inputs and volumes, with the
            input's affine) or ``"all"`` (every input).
        overlays: write ``heatmaps/<name>.png``.
        threshold: shown in the overlays, and the anchor of their one colour scale (:attr:`overlay_range`).
        errors: the :class:`ErrorCollector` (default: a new one writing ``output_dir/errors.csv``).
    """

    def __init__(
        self,
        output_dir: str | os.PathLike,
        columns: Sequence[str] = ("path", "score", "is_anomaly", "heatmap", "anomaly_map"),
        maps: str = "none",
        overlays: bool = False,
        threshold: float | None = None,
        errors: ErrorCollector | None = None,
    ) -> None:
        if maps not in ("none", "nifti", "all"):
            raise ValueError(f"maps {maps!r} is not 'none', 'nifti' or 'all'")
        self.output_dir = os.fspath(output_dir)
        self.columns = list(columns)
        self.maps = maps
        self.overlays = overlays
        self.threshold = threshold
        from monai_scrd.scoring.plots import overlay_color_range

        # the (vmin, vmax) of every overlay of this run, so their colours compare (None: each its own map's range)
        self.overlay_range = overlay_color_range(threshold)
        self.errors = errors if errors is not None else ErrorCollector(os.path.join(self.output_dir, "errors.csv"))
        if self.errors.errors_csv is None:
            self.errors.errors_csv = os.path.join(self.output_dir, "errors.csv")
        self.scores_csv = os.path.join(self.output_dir, "scores.csv")
        self.rows: list[dict] = []
        self._names: set[str] = set()
        os.makedirs(self.output_dir, exist_ok=True)
        self._file = open(self.scores_csv, "w", newline="", encoding="utf-8", errors=CSV_ERRORS)
        self._csv = csv.DictWriter(self._file, fieldnames=self.columns, extrasaction="ignore")
        self._csv.writeheader()
        self._file.flush()

    def _name(self, path: str) -> str:
        base, i = _stem(path), 1
        name = base
        while name in self._names:
            i += 1
            name = f"{base}_{i}"
        self._names.add(name)
        return name

    def add(self, result: ScoreResult) -> dict | None:
        """Write one result: its ``scores.csv`` row (returned) and files, or its ``errors.csv`` line (None)."""
        if result.error:
            self.errors.add(result.path, result.error)
            return None
        row = {**{k: v for k, v in result.item.items() if k != "image"}, "path": result.path, "score": result.score,
               "is_anomaly": result.is_anomaly, "kind": result.kind, "heatmap": "", "anomaly_map": ""}
        try:
            if self.maps != "none" or self.overlays:
                name = self._name(result.path)
                nifti = result.source is not None and (result.kind == "volume" or result.source.format == "nifti")
                if result.anomaly_map is not None and (self.maps == "all" or (self.maps == "nifti" and nifti)):
                    header = result.source.meta.get("header") if result.source is not None else None
                    row["anomaly_map"] = save_map(result.anomaly_map, os.path.join(self.output_dir, "maps", f"{name}_anomaly_map.nii.gz"),
                                                  result.affine, header)
                if self.overlays:
                    row["heatmap"] = _overlay(result, os.path.join(self.output_dir, "heatmaps", f"{name}.png"), self.threshold,
                                              self.overlay_range)
        except Exception as e:  # noqa: BLE001 - e.g. a full disk: the file's outputs failed, the job goes on
            self.errors.add(result.path, f"{result.path}: could not write its outputs ({type(e).__name__}: {e})")
            return None
        self.add_row(row)
        return row

    def add_row(self, row: Mapping) -> None:
        """Append a row (a dict with the ``columns``) to ``scores.csv`` and flush it."""
        self._csv.writerow({k: _cell(row.get(k)) for k in self.columns})
        self._file.flush()
        self.rows.append(dict(row))

    def close(self) -> None:
        """Close ``scores.csv`` and write ``errors.csv``."""
        if not self._file.closed:
            self._file.close()
        self.errors.write()

    def __enter__(self) -> ScoreWriter:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

