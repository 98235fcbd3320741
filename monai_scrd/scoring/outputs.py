"""What a scoring run writes: ``scores.csv`` (:class:`ScoreWriter`), ``errors.csv`` (:class:`ErrorCollector`), anomaly
maps (:func:`save_map`) and heatmap overlays."""

from __future__ import annotations

import csv
import logging
import os
import re
import threading
from collections import deque
from collections.abc import Iterator, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
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
    ``slice k of N (highest score)``; 2D images: the map at the model's size, ``result.model_map``, when the scorer
    kept it, resampled straight to the overlay's size). ``color_range``: the ``(vmin, vmax)`` shared by a run's
    overlays (default: :func:`~monai_scrd.scoring.plots.overlay_color_range` of ``threshold``; without a threshold
    each overlay uses its map's own range)."""
    from monai_scrd.scoring import plots

    img = result.source
    if img is None or (result.model_map is None and result.anomaly_map is None):
        raise ValueError(f"{result.path}: no map kept for an overlay (score with return_maps=True)")
    where: dict = {}
    if result.kind == "volume":
        k = max(result.slice_scores, key=result.slice_scores.get)
        image, amap = np.take(img.array, k, axis=img.slice_axis), np.take(result.anomaly_map, k, axis=img.slice_axis)
        where = {"slice_index": int(k), "num_slices": int(img.array.shape[img.slice_axis])}
    else:
        # [C, H, W] colour: averaged by the overlay after it shrank the image (not here, at full size)
        image = img.array[:3] if img.array.shape[0] > 1 else img.array[0]
        if result.model_map is not None:  # [h, w] at the model's size: never blown up to the image's size
            amap = result.model_map
        else:
            amap = result.anomaly_map
            hw = image.shape[-2:]
            amap = amap.reshape(hw) if amap.size == hw[0] * hw[1] else amap.squeeze()
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

    The files of a result (map, overlay) and then its ``scores.csv`` row are written on one background thread, in
    input order, so scoring goes on meanwhile; at most ``max_pending`` results (and about ``max_pending_bytes`` of
    their arrays) wait, :meth:`add` waits for the oldest beyond that. A result with nothing to write but its row is
    written at once when nothing waits before it; a result with an error waits for the queue, then is recorded at
    once. A failed write (e.g. a full disk) becomes an ``errors.csv`` line (logged) and its row leaves :attr:`rows`
    and is not written. :meth:`close` (the end of a ``with`` block) waits for every write: :attr:`rows` and
    :attr:`errors` are then complete.

    Args:
        output_dir: where ``scores.csv``, ``errors.csv``, ``maps/`` and ``heatmaps/`` go.
        columns: ``scores.csv`` columns, from the result (``path``, ``score``, ``is_anomaly``, ``kind``,
            ``heatmap``, ``anomaly_map``) and its item (e.g. ``label``).
        maps: ``"none"``, ``"nifti"`` (``maps/<name>_anomaly_map.nii.gz`` for NIfTI inputs and volumes, with the
            input's affine) or ``"all"`` (every input).
        overlays: write ``heatmaps/<name>.png``.
        threshold: shown in the overlays, and the anchor of their one colour scale (:attr:`overlay_range`).
        errors: the :class:`ErrorCollector` (default: a new one writing ``output_dir/errors.csv``).
        max_pending: results waiting for the background writer, at most.
        max_pending_bytes: their images and maps, at most (one result more than this still waits alone).
    """

    def __init__(
        self,
        output_dir: str | os.PathLike,
        columns: Sequence[str] = ("path", "score", "is_anomaly", "heatmap", "anomaly_map"),
        maps: str = "none",
        overlays: bool = False,
        threshold: float | None = None,
        errors: ErrorCollector | None = None,
        max_pending: int = 32,
        max_pending_bytes: int = 1 << 30,
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
        self.max_pending = max(1, int(max_pending))
        self.max_pending_bytes = int(max_pending_bytes)
        self._pool: ThreadPoolExecutor | None = None  # started by the first result with files to write
        self._pending: deque[tuple[Future, dict, str, int]] = deque()  # (write, row, path, bytes), oldest first
        self._pending_bytes = 0
        self._csv_lock = threading.Lock()
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
        """Queue one result: its files and ``scores.csv`` row (the row is returned at once, with the paths its files
        will have), or record its ``errors.csv`` line (None)."""
        if self._file.closed:
            raise ValueError(f"{self.scores_csv}: the ScoreWriter is closed")
        if result.error:  # (rare) after the queued writes' own failures: errors.csv stays in input order
            self._collect(wait=True)
            self.errors.add(result.path, result.error)
            return None
        self._collect()  # failures of earlier writes go into errors here, on the caller's thread
        row = {**{k: v for k, v in result.item.items() if k != "image"}, "path": result.path, "score": result.score,
               "is_anomaly": result.is_anomaly, "kind": result.kind, "heatmap": "", "anomaly_map": ""}
        if self.maps != "none" or self.overlays:
            name = self._name(result.path)
            nifti = result.source is not None and (result.kind == "volume" or result.source.format == "nifti")
            # (the map at the file's size is read, and so made, only when it is written)
            if (self.maps == "all" or (self.maps == "nifti" and nifti)) and result.anomaly_map is not None:
                row["anomaly_map"] = os.path.join(self.output_dir, "maps", f"{name}_anomaly_map.nii.gz")
            if self.overlays:
                row["heatmap"] = os.path.join(self.output_dir, "heatmaps", f"{name}.png")
        if not (row["anomaly_map"] or row["heatmap"]) and not self._pending:
            self.add_row(row)  # only a row, nothing queued before it: on disk at once
            return row
        size = sum(a.nbytes for a in (result.anomaly_map if row["anomaly_map"] else None, result.model_map,
                                      result.source.array if result.source is not None else None)
                   if isinstance(a, np.ndarray))
        while self._pending and (len(self._pending) >= self.max_pending
                                 or self._pending_bytes + size > self.max_pending_bytes):
            self._finish(self._pending.popleft())  # bounded memory: wait for the oldest
        if self._pool is None:
            self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="scrd-writer")
        kept = dict(row)  # what gets written: the caller may change the returned row meanwhile
        self.rows.append(kept)
        self._pending.append((self._pool.submit(self._write, result, kept), kept, result.path, size))
        self._pending_bytes += size
        return row

    def _write(self, result: ScoreResult, row: dict) -> None:
        """On the writer thread: a result's map and overlay, then its ``scores.csv`` row."""
        if row["anomaly_map"]:
            header = result.source.meta.get("header") if result.source is not None else None
            save_map(result.anomaly_map, row["anomaly_map"], result.affine, header)
        if row["heatmap"]:
            _overlay(result, row["heatmap"], self.threshold, self.overlay_range)
        self._write_row(row)

    def _finish(self, entry: tuple[Future, dict, str, int]) -> None:
        """Account for one finished (or waited-for) background write; a failure drops its row and becomes an error."""
        future, row, path, size = entry
        self._pending_bytes -= size
        try:
            future.result()
        except Exception as e:  # noqa: BLE001 - e.g. a full disk: the file's outputs failed, the job goes on
            for i in range(len(self.rows) - 1, -1, -1):
                if self.rows[i] is row:
                    del self.rows[i]
                    break
            msg = f"{path}: could not write its outputs ({type(e).__name__}: {e})"
            logged = self.errors.reported == len(self.errors)  # all earlier errors were logged: keep that true
            self.errors.add(path, msg)
            logger.error(msg)  # it happened after add() returned the row: the caller could not log it
            if logged:
                self.errors.reported = len(self.errors)

    def _collect(self, wait: bool = False) -> None:
        """Account for the finished background writes, oldest first (all of them, waiting, with ``wait``)."""
        while self._pending and (wait or self._pending[0][0].done()):
            self._finish(self._pending.popleft())

    def _write_row(self, row: Mapping) -> None:
        with self._csv_lock:
            self._csv.writerow({k: _cell(row.get(k)) for k in self.columns})
            self._file.flush()

    def add_row(self, row: Mapping) -> None:
        """Append a row (a dict with the ``columns``) to ``scores.csv`` and flush it, now (after the queued writes)."""
        self._collect(wait=True)
        self._write_row(row)
        self.rows.append(dict(row))

    def close(self) -> None:
        """Wait for the queued writes, close ``scores.csv`` and write ``errors.csv``."""
        try:
            self._collect(wait=True)
        finally:
            if self._pool is not None:
                self._pool.shutdown(wait=True)
                self._pool = None
            if not self._file.closed:
                self._file.close()
            self.errors.write()

    def __enter__(self) -> ScoreWriter:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
