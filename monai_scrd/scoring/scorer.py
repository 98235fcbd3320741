"""The one scoring path of SCRD.

Bundle evaluation (and validation during training), bundle inference, the MLflow pyfunc and the MONAI Label app all
score through :class:`Scorer`, so one file gets the same score, the same decision and the same error everywhere:

* reading: :func:`~monai_scrd.data.read_medical_image` (DICOM, NIfTI, PNG/JPEG/...; 3D volumes allowed), then the
  preprocessing transforms (grayscale to ``channels`` or RGB by ``color_mode``, resize to ``image_size``, intensity
  scaling) built once from the bundle's settings (:class:`Preprocessor`), which also refuses a colour 2D image for a
  grayscale model (an rgb model takes grayscale images, replicated);
* 2D images and slice-wise 3D volumes: every non-empty slice is preprocessed like a 2D image, the volume score is the
  ``volume_reduction`` (max) of the slice scores;
* batching across files and slices, channels-last inputs on the CPU and mixed precision on CUDA;
* the anomaly map (the model's own eval forward, :class:`~monai_scrd.scoring.AnomalyMapGenerator`), the image score
  (:func:`~monai_scrd.scoring.image_score`) and the decision ``score >= threshold`` (:func:`read_threshold`);
* per-file errors (:class:`ErrorCollector`, always writes ``errors.csv``) and outputs (:class:`ScoreWriter`:
  ``scores.csv``, anomaly maps through :func:`save_map`, heatmap overlays).

Typical use::

    scorer = Scorer(network, image_size=128, intensity="percentile", threshold="models/threshold.json")
    with ScoreWriter("out", maps="nifti", overlays=True) as writer:
        for result in scorer.score(["a.png", "b.dcm", "vol.nii.gz"], return_maps=True):
            writer.add(result)          # a row in scores.csv, or a line in errors.csv
"""

from __future__ import annotations

import csv
import json
import logging
import math
import os
import re
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

from monai_scrd.data.color import check_color_mode
from monai_scrd.data.datalist import is_inside
from monai_scrd.data.errors import ConfigError, DataError
from monai_scrd.data.readers import MedicalImage, read_medical_image
from monai_scrd.data.robust import error_message
from monai_scrd.data.transforms import array_transforms
from monai_scrd.data.volume import assemble_volume, slice_volume
from monai_scrd.scoring.anomaly_map import check_scale_weighting, image_score, top_fraction
from monai_scrd.scoring.fitting import DEFAULT_SCORING, volume_threshold

__all__ = [
    "MAP_FORMATS",
    "PREPROCESSING_KEYS",
    "Preprocessor",
    "Prepared",
    "ScoreResult",
    "Scorer",
    "ScoringDataset",
    "collate_prepared",
    "read_threshold",
    "resolve_score_reduction",
    "ErrorCollector",
    "ScoreWriter",
    "save_map",
    "write_csv",
    "write_json",
    "json_safe",
    "resolve_inside",
    "roots_from_env",
]

logger = logging.getLogger("monai_scrd.scoring")

MAP_FORMATS = ("nii.gz", "nii", "npy", "png")
PREPROCESSING_KEYS = ("image_size", "intensity", "percentiles", "apply_voi", "channels", "color_mode")
REDUCTIONS = ("mean", "max")
# File names are bytes: one that is not valid UTF-8 (decoded by Python with surrogate escapes) is written to CSV as its
# own bytes, so nothing is lost and reading the CSV back with errors="surrogateescape" gives the same path; in JSON
# it becomes \udcXX escapes (json's default ensure_ascii), which json.load turns back into the same path.
CSV_ERRORS = "surrogateescape"


# ----------------------------------------------------------------------------------------------- plain outputs
def json_safe(value: Any) -> Any:
    """``value`` with NaN/Inf floats as None, numpy scalars/arrays and tensors as Python values (strict JSON)."""
    if isinstance(value, Mapping):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    if isinstance(value, (torch.Tensor, np.ndarray)):
        return json_safe(value.tolist())
    if isinstance(value, np.generic):
        return json_safe(value.item())
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    return value


def _parent(path: str) -> None:
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)


def write_json(path: str | os.PathLike, data: Any) -> str:
    """Write ``data`` as strict JSON (NaN -> null); returns the path."""
    path = os.fspath(path)
    _parent(path)
    with open(path, "w", encoding="utf-8") as f:
        json.dump(json_safe(data), f, indent=2, sort_keys=True, allow_nan=False)
    return path


def _cell(value: Any) -> Any:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return ""
    if isinstance(value, bool):
        return int(value)
    return value


def write_csv(path: str | os.PathLike, rows: Iterable[Mapping], fields: Sequence[str]) -> str:
    """Write ``rows`` (dicts) with a header of ``fields``; missing/None/NaN cells are empty. Returns the path."""
    path = os.fspath(path)
    _parent(path)
    with open(path, "w", newline="", encoding="utf-8", errors=CSV_ERRORS) as f:
        w = csv.DictWriter(f, fieldnames=list(fields), extrasaction="ignore")
        w.writeheader()
        for row in rows:
            w.writerow({k: _cell(row.get(k)) for k in fields})
    return path


def resolve_inside(path: Any, roots: Sequence[str | os.PathLike]) -> str | None:
    """The real path of ``path`` (symbolic links resolved) when it exists inside one of ``roots`` (resolved too),
    else None. Servers answer None the same way whether the file is missing or not allowed, so that a client learns
    nothing about files outside the roots."""
    if not isinstance(path, (str, os.PathLike)):
        return None
    path = os.fspath(path)
    if not path or "\x00" in path:
        return None
    real = os.path.realpath(path)
    if os.path.exists(real) and any(is_inside(real, os.path.realpath(os.fspath(root))) for root in roots):
        return real
    return None


def roots_from_env(name: str, default: Sequence[str] = ()) -> list[str]:
    """Folders listed in the environment variable ``name`` (separated by ``os.pathsep``), else ``default``."""
    value = os.environ.get(name)
    if value is None:
        return [os.fspath(d) for d in default]
    return [os.path.realpath(v) for v in value.split(os.pathsep) if v.strip()]


# ----------------------------------------------------------------------------------------------- threshold
def read_threshold(source: Any, missing_ok: bool = False) -> dict | None:
    """The decision-threshold record ``{"threshold": float, ...}`` from a number, a threshold JSON file (as training
    writes ``models/threshold.json``) or a dict; None for None/"".

    Args:
        source: the threshold.
        missing_ok: return None (instead of raising) when ``source`` names a file that does not exist.

    Raises:
        FileNotFoundError: a missing file (unless ``missing_ok``). ConfigError (a ValueError): not a finite number /
            not a threshold file (one line naming the file).
    """
    if source is None or (isinstance(source, str) and not source.strip()):
        return None
    if isinstance(source, bool):
        raise ValueError(f"threshold {source!r} is not a number")
    if isinstance(source, (int, float, np.integer, np.floating)):
        record: dict = {"threshold": float(source), "method": "given explicitly"}
        where = "threshold"
    elif isinstance(source, Mapping):
        record, where = dict(source), "threshold record"
    else:
        path = os.fspath(source)
        if not os.path.isfile(path):
            if missing_ok:
                return None
            raise FileNotFoundError(f"{path}: threshold file not found")
        try:
            with open(path, encoding="utf-8") as f:
                record = json.load(f)
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise ConfigError(f"{path}: not a threshold file (invalid JSON: {e})") from e
        where = path
        if not isinstance(record, dict):
            raise ConfigError(f"{path}: not a threshold file (expected {{'threshold': number, ...}})")
    t = record.get("threshold")
    if isinstance(t, bool) or not isinstance(t, (int, float)) or not math.isfinite(float(t)):
        raise ConfigError(f"{where}: 'threshold' is {t!r}; expected a finite number")
    record["threshold"] = float(t)
    return json_safe(record)


def resolve_score_reduction(reduction: str, record: Mapping | None) -> str:
    """``reduction`` itself, or for ``"auto"`` the image reduction that training chose and recorded in the threshold
    ``record`` (the bundle's fixed default, ``"top5%"``, without one)."""
    if reduction != "auto":
        return reduction
    return str((record or {}).get("score_reduction") or DEFAULT_SCORING[1])


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


# ----------------------------------------------------------------------------------------------- preprocessing
@dataclass
class Prepared:
    """A file read and preprocessed for the model (or the one-line error that stopped it).

    Attributes:
        path: the file.
        item: the input item (``{"image": path, ...}``; other keys such as ``label`` are passed on to the result).
        images: ``[N, C, H, W]`` float32 model inputs: one for a 2D image, one per non-empty slice for a volume.
        kind: ``"image"`` or ``"volume"``.
        slice_indices: the slice index of each of ``images`` (volumes).
        source: the decoded file, kept when maps at the file's own size are wanted.
        error: one line naming the file, empty when fine.
    """

    path: str
    item: dict
    images: torch.Tensor | None = None
    kind: str = "image"
    slice_indices: list[int] = field(default_factory=list)
    source: MedicalImage | None = None
    error: str = ""

    @property
    def count(self) -> int:
        return 0 if self.images is None else int(self.images.shape[0])


def _as_item(item: Any, key: str = "image") -> dict:
    if isinstance(item, Mapping):
        return dict(item)
    return {key: item}


class Preprocessor:
    """Reads a file and turns it into model inputs with the preprocessing transforms, built once.

    Args:
        image_size: model input size (int for square).
        intensity: ``"minmax"``, ``"percentile"`` or ``"none"`` (see ``monai_scrd.data.ScaleIntensityToUnit``).
        percentiles: low/high percentiles for ``"percentile"``.
        apply_voi: apply a DICOM VOI LUT / window when the file has one.
        channels: model input channels (grayscale replicated).
        color_mode: the colour mode the model was trained in, ``"grayscale"`` or ``"rgb"``: a colour 2D image is
            refused by a grayscale model (one line naming the file and both modes, see
            :func:`~monai_scrd.data.color.check_color_mode`); an rgb model takes any image. ``None``: a model trained
            before colour modes existed, grayscale without a check.
        refuse_color_mismatch: refuse a colour image for a grayscale model (scoring with a trained model); False
            converts it to ``color_mode`` instead (validation during training, where ``color_mode`` may be forced on
            a mixed set).
    """

    def __init__(
        self,
        image_size: int | Sequence[int] = 256,
        intensity: str = "minmax",
        percentiles: Sequence[float] = (0.5, 99.5),
        apply_voi: bool = True,
        channels: int = 3,
        color_mode: str | None = None,
        refuse_color_mismatch: bool = True,
    ) -> None:
        if color_mode not in (None, "grayscale", "rgb"):
            raise ValueError(f"color_mode {color_mode!r} of a trained model is not 'grayscale' or 'rgb'")
        self.settings = {
            "image_size": int(image_size) if isinstance(image_size, (int, np.integer)) else [int(s) for s in image_size],
            "intensity": str(intensity),
            "percentiles": [float(p) for p in percentiles],
            "apply_voi": bool(apply_voi),
            "channels": int(channels),
            "color_mode": color_mode,
        }
        self.transform = array_transforms(
            "image", self.settings["image_size"], self.settings["intensity"], self.settings["percentiles"], self.settings["channels"],
            color_mode=color_mode or "grayscale",
        )
        self.refuse_color_mismatch = bool(refuse_color_mismatch)

    def _tensor(self, array: np.ndarray) -> torch.Tensor:
        x = self.transform({"image": torch.from_numpy(np.ascontiguousarray(array, dtype=np.float32))})["image"]
        return (x.as_tensor() if hasattr(x, "as_tensor") else torch.as_tensor(x)).float()

    def __call__(self, item: Any, keep_source: bool = False) -> Prepared:
        """:class:`Prepared` for ``item`` (a path or ``{"image": path, ...}``); never raises for the file's sake (a
        bad setting, e.g. ``$SCRD_MAX_PIXELS``, raises its :class:`ConfigError`: it is not the file's fault)."""
        item = _as_item(item)
        path = item.get("image")
        if not isinstance(path, (str, os.PathLike)) or not os.fspath(path).strip():
            return Prepared(path=str(path), item=item, error=f"{path!r}: empty or missing image path")
        path = os.fspath(path)
        try:
            img = read_medical_image(path, allow_volume=True, apply_voi=self.settings["apply_voi"])
            if img.is_volume:
                picked = slice_volume(img.array, img.slice_axis)
                if not picked:
                    raise DataError(f"{path}: all {img.array.shape[img.slice_axis]} slices along axis {img.slice_axis} "
                                    "are empty (constant)")
                images = torch.stack([self._tensor(s[None]) for _, s in picked])
                prepared = Prepared(path, item, images, "volume", [i for i, _ in picked])
            else:
                if self.refuse_color_mismatch:
                    check_color_mode(img.array, self.settings["color_mode"], path)
                prepared = Prepared(path, item, self._tensor(img.array)[None], "image")
        except ConfigError:
            raise
        except Exception as e:  # noqa: BLE001 - every failure becomes the file's one error line
            return Prepared(path=path, item=item, error=error_message(path, e))
        if keep_source:
            prepared.source = img
        return prepared


class ScoringDataset(Dataset):
    """Dataset of :class:`Prepared` files for an evaluator's data loader (so reading runs in its workers); collate
    with :func:`collate_prepared` and score the batches with :meth:`Scorer.score_prepared`.

    Args:
        data: paths or datalist items ``{"image": path, ...}``.
        preprocessor: :class:`Preprocessor` or a :class:`Scorer` (its preprocessor is used).
    """

    def __init__(self, data: Sequence[Any], preprocessor: Preprocessor | Scorer) -> None:
        self.data = list(data)
        self.preprocessor = preprocessor.preprocessor if isinstance(preprocessor, Scorer) else preprocessor

    def __len__(self) -> int:
        return len(self.data)

    def __getitem__(self, index: int) -> Prepared:
        return self.preprocessor(self.data[index])


def collate_prepared(batch: Sequence[Prepared]) -> list[Prepared]:
    """``collate_fn`` for :class:`ScoringDataset`: the batch as a list (files differ in kind and slice count)."""
    return list(batch)


# ----------------------------------------------------------------------------------------------- results
@dataclass
class ScoreResult:
    """One scored file.

    Attributes:
        path: the file.
        item: the input item (e.g. ``label``).
        score: image score (volumes: ``volume_reduction`` of the slice scores); None on error.
        is_anomaly: ``score >= threshold``; None on error or without a threshold.
        error: one line naming the file, empty when fine.
        kind: ``"image"`` or ``"volume"``.
        slice_scores: ``{slice index: score}`` of a volume's non-empty slices.
        anomaly_map: with ``return_maps``: float32 map at the file's own size (2D NIfTI: the file's own shape;
            volumes: the volume's shape, 0 on skipped slices) or, with ``map_size="model"``, at the model's size (2D).
        affine: the file's affine (for NIfTI maps).
        source: the decoded file (with ``return_maps``).
    """

    path: str
    item: dict = field(default_factory=dict)
    score: float | None = None
    is_anomaly: bool | None = None
    error: str = ""
    kind: str = "image"
    slice_scores: dict | None = None
    anomaly_map: np.ndarray | None = None
    affine: np.ndarray | None = None
    source: MedicalImage | None = None

    @property
    def ok(self) -> bool:
        return not self.error

    def row(self) -> dict:
        """JSON-safe summary: the item's keys plus ``path``, ``score``, ``is_anomaly``, ``error``, ``kind``."""
        out = {k: v for k, v in self.item.items() if k != "image"}
        out.update(path=self.path, score=self.score, is_anomaly=self.is_anomaly, error=self.error, kind=self.kind)
        if self.slice_scores is not None:
            out["slice_scores"] = {str(k): v for k, v in self.slice_scores.items()}
        return json_safe(out)


# ----------------------------------------------------------------------------------------------- scorer
class Scorer:
    """Scores files with a trained SCRD model (see the module docstring).

    Args:
        network: SCRD (or a module whose eval forward returns ``[B, 1, H, W]`` anomaly maps); DDP/DataParallel
            wrappers are looked through. Its weights are used as they are when scoring (load them first).
        image_size, intensity, percentiles, apply_voi, channels: preprocessing (:class:`Preprocessor`).
        color_mode: the model's colour mode (:class:`Preprocessor`); default: the ``color_mode`` recorded in the
            threshold record (``threshold.json``), else none (grayscale, unchecked: models from before colour modes).
        refuse_color_mismatch: a grayscale model refuses colour images (default), or converts them (:class:`Preprocessor`).
        score_reduction: anomaly map -> image score, ``"mean"`` (paper), ``"max"`` or ``"top<P>%"`` (the mean of the
            map's highest P percent, see :func:`~monai_scrd.scoring.image_score`), or ``"auto"``: the reduction that
            training chose and recorded in the threshold record (``"top5%"`` for a model without one).
        volume_reduction: slice scores -> volume score, ``"max"`` or ``"mean"``. With ``"max"`` and a threshold
            record that keeps its validation scores, a volume of ``n`` slices is decided with the threshold for the
            maximum of ``n`` slice scores (:func:`~monai_scrd.scoring.volume_threshold`).
        threshold: decision threshold (number, threshold JSON file or record; a missing file means none, with a
            warning); ``is_anomaly`` is None without one.
        batch_size: images (2D images and slices together) per forward pass.
        device: where the network runs; default: where its parameters are.
        amp: on CUDA, run the network's features in float16 autocast (the anomaly map and score stay float32).
        channels_last: feed the network channels-last inputs (faster convolutions on the CPU and on tensor cores).
    """

    def __init__(
        self,
        network: torch.nn.Module,
        image_size: int | Sequence[int] = 256,
        intensity: str = "minmax",
        percentiles: Sequence[float] = (0.5, 99.5),
        apply_voi: bool = True,
        channels: int = 3,
        color_mode: str | None = None,
        refuse_color_mismatch: bool = True,
        score_reduction: str = "mean",
        volume_reduction: str = "max",
        threshold: Any = None,
        batch_size: int = 16,
        device: str | torch.device | None = None,
        amp: bool = True,
        channels_last: bool = True,
    ) -> None:
        if volume_reduction not in REDUCTIONS:
            raise ValueError(f"volume_reduction {volume_reduction!r} is not 'mean' or 'max'")
        self.network = network
        self.volume_reduction = volume_reduction
        self.threshold_info = read_threshold(threshold, missing_ok=True)
        if threshold not in (None, "") and self.threshold_info is None:
            logger.warning(f"no threshold file at {threshold}: is_anomaly stays empty (train with validation images first)")
        self.score_reduction = resolve_score_reduction(score_reduction, self.threshold_info)
        top_fraction(self.score_reduction)  # raises on an unknown image reduction
        self._volume_thresholds: dict[int, float] = {}
        if color_mode is None and self.threshold_info is not None:
            color_mode = self.threshold_info.get("color_mode")
        self.preprocessor = Preprocessor(image_size, intensity, percentiles, apply_voi, channels, color_mode, refuse_color_mismatch)
        self._check_trained_settings(threshold)
        self.batch_size = max(1, int(batch_size))
        self._device = None if device is None else torch.device(device)
        self.amp = bool(amp)
        self.channels_last = bool(channels_last)

    def _check_trained_settings(self, source: Any) -> None:
        """Refuse preprocessing settings other than those the threshold was fitted with (recorded by training in
        ``threshold.json``): scores at another image size or intensity scaling are not comparable to it."""
        record = self.threshold_info or {}
        trained = dict(record.get("preprocessing") or {})
        if "image_size" not in trained and "image_size" in record:  # threshold files of older bundles
            trained["image_size"] = record["image_size"]
        mine = dict(self.preprocessor.settings)
        where = os.fspath(source) if isinstance(source, (str, os.PathLike)) else "the threshold record"
        if record.get("scale_weighting") is not None:
            try:
                check_scale_weighting(record["scale_weighting"])
            except ValueError as e:
                raise ConfigError(f"{where}: {e}") from None
        # the scoring settings the threshold was fitted with: another image reduction or scale weighting gives scores
        # on another scale, so a threshold (and the scale calibration) fitted with the first would be silently wrong
        mine["score_reduction"] = self.score_reduction
        if self.scale_weighting is not None:
            mine["scale_weighting"] = self.scale_weighting
        for key in ("score_reduction", "scale_weighting"):
            if record.get(key) is not None:
                trained[key] = record[key]
        for key in ("image_size", "intensity", "percentiles", "channels", "apply_voi", "score_reduction", "scale_weighting"):
            if key in trained and key in mine and json_safe(trained[key]) != json_safe(mine[key]):
                raise ConfigError(f"{where}: the model was trained with {key}={trained[key]!r}, not {mine[key]!r}; "
                                  f"score with {key}={trained[key]!r}")

    @property
    def preprocessing(self) -> dict:
        """The preprocessing settings (``image_size``, ``intensity``, ``percentiles``, ``apply_voi``, ``channels``,
        ``color_mode``)."""
        return dict(self.preprocessor.settings)

    @property
    def threshold(self) -> float | None:
        return None if self.threshold_info is None else float(self.threshold_info["threshold"])

    @property
    def core(self) -> torch.nn.Module:
        return getattr(self.network, "module", self.network)  # DistributedDataParallel / DataParallel

    @property
    def scale_weighting(self) -> str | None:
        """How the network's anomaly map weights its scales (None for a network without an ``anomaly_map``)."""
        return getattr(getattr(self.core, "anomaly_map", None), "scale_weighting", None)

    @property
    def device(self) -> torch.device:
        if self._device is not None:
            return self._device
        param = next(self.core.parameters(), None)
        return param.device if param is not None else torch.device("cpu")

    def threshold_for(self, n_slices: int = 1) -> float | None:
        """The threshold of an image (``n_slices`` 1) or of a volume's maximum over ``n_slices`` slice scores."""
        record = self.threshold_info or {}
        scores = record.get("validation_scores")
        if self.threshold is None or n_slices <= 1 or self.volume_reduction != "max" or not scores or len(scores) < 2:
            return self.threshold
        if n_slices not in self._volume_thresholds:
            percentile = float(record.get("percentile", 95.0))
            self._volume_thresholds[n_slices] = max(self.threshold, volume_threshold(scores, percentile, n_slices))
        return self._volume_thresholds[n_slices]

    def decide(self, score: float | None, n_slices: int = 1) -> bool | None:
        """``score >= threshold`` (None without a score or a threshold); ``n_slices``: of a volume (see
        :meth:`threshold_for`)."""
        thr = self.threshold_for(n_slices)
        return None if (score is None or thr is None) else bool(score >= thr)

    def prepare(self, item: Any, keep_source: bool = False) -> Prepared:
        """Read and preprocess one file (never raises; see :class:`Preprocessor`)."""
        return self.preprocessor(item, keep_source)

    @torch.no_grad()
    def forward(self, images: torch.Tensor, keep_maps: bool = False) -> tuple[torch.Tensor | None, torch.Tensor]:
        """Anomaly maps ``[N, 1, H, W]`` (float32, CPU; None unless ``keep_maps``) and image scores ``[N]`` of
        preprocessed images ``[N, C, H, W]``, ``batch_size`` at a time, with the network in eval mode."""
        net = self.core
        device = self.device
        use_amp = self.amp and device.type == "cuda"
        split = use_amp and hasattr(net, "features") and hasattr(net, "anomaly_map")
        was_training = net.training
        net.eval()
        maps, scores = [], []
        try:
            for chunk in images.split(self.batch_size):
                x = chunk.to(device, non_blocking=True)
                if self.channels_last:
                    x = x.contiguous(memory_format=torch.channels_last)
                if split:  # half-precision features, float32 map and score
                    with torch.autocast(device_type="cuda", dtype=torch.float16):
                        u, v, alpha = net.features(x)
                    amap = net.anomaly_map([t.float() for t in u], [t.float() for t in v], alpha.float(), tuple(x.shape[-2:]))
                else:
                    amap = net(x)
                amap = amap.float()
                scores.append(image_score(amap, self.score_reduction).cpu())
                if keep_maps:
                    maps.append(amap.cpu())
        finally:
            net.train(was_training)
        return (torch.cat(maps) if keep_maps and maps else None), (torch.cat(scores) if scores else torch.zeros(0))

    def _finish(self, p: Prepared, maps: torch.Tensor | None, scores: torch.Tensor, map_size: str) -> ScoreResult:
        values = [float(s) for s in scores]
        res = ScoreResult(p.path, p.item, kind=p.kind, source=p.source)
        if p.kind == "volume":
            res.slice_scores = dict(zip(p.slice_indices, values))
            res.score = float(np.max(values) if self.volume_reduction == "max" else np.mean(values))
        else:
            res.score = values[0]
        if not math.isfinite(res.score):
            res.score, res.error = None, f"{p.path}: the model returned a non-finite anomaly score"
            return res
        res.is_anomaly = self.decide(res.score, len(values) if p.kind == "volume" else 1)
        if maps is not None and p.source is not None:
            img = p.source
            res.affine = np.asarray(img.affine)
            if p.kind == "volume":
                res.anomaly_map = assemble_volume([m[0] for m in maps], p.slice_indices, img.array.shape, img.slice_axis)
            elif map_size == "model":
                res.anomaly_map = maps[0, 0].numpy()
            else:
                h, w = img.array.shape[-2:]
                amap = F.interpolate(maps[:1], size=(h, w), mode="bilinear", align_corners=False)[0, 0].numpy()
                header = img.meta.get("header") if img.format == "nifti" else None
                shape = tuple(int(s) for s in header.get_data_shape()) if header is not None else amap.shape
                res.anomaly_map = amap.reshape(shape) if int(np.prod(shape)) == amap.size else amap  # NIfTI: (X, Y[, 1])
        return res

    def score_prepared(self, prepared: Sequence[Prepared], return_maps: bool = False, map_size: str = "original") -> list[ScoreResult]:
        """Score files already prepared (e.g. a batch of a :class:`ScoringDataset` loader), all their images
        together in batches; one :class:`ScoreResult` per file, in order."""
        if map_size not in ("original", "model"):
            raise ValueError(f"map_size {map_size!r} is not 'original' or 'model'")
        good = [p for p in prepared if not p.error]
        images = torch.cat([p.images for p in good]) if good else None
        try:
            maps, scores = self.forward(images, keep_maps=return_maps) if images is not None else (None, None)
        except Exception as e:  # noqa: BLE001 - e.g. out of memory: every file of the batch gets the error
            return [ScoreResult(p.path, p.item, kind=p.kind, error=p.error or error_message(p.path, e)) for p in prepared]
        out, start = [], 0
        for p in prepared:
            if p.error:
                out.append(ScoreResult(p.path, p.item, kind=p.kind, error=p.error))
                continue
            n = p.count
            out.append(self._finish(p, None if maps is None else maps[start : start + n], scores[start : start + n], map_size))
            start += n
        return out

    def score(self, items: Iterable[Any], return_maps: bool = False, map_size: str = "original") -> Iterator[ScoreResult]:
        """Score files (paths or ``{"image": path, ...}`` items) in input order, reading each on its own (a bad
        file only fails its own result) and running the network on ``batch_size`` images at a time. Yields each
        :class:`ScoreResult` as soon as its batch is done.

        Args:
            items: the files.
            return_maps: keep each anomaly map (and the decoded file) in the result.
            map_size: ``"original"`` (the file's own size and affine) or ``"model"`` (2D maps at the model's size).
        """
        pending: list[Prepared] = []
        count = 0
        for item in items:
            p = self.prepare(item, keep_source=return_maps)
            pending.append(p)
            count += p.count
            if count >= self.batch_size:
                yield from self.score_prepared(pending, return_maps, map_size)
                pending, count = [], 0
        if pending:
            yield from self.score_prepared(pending, return_maps, map_size)


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
