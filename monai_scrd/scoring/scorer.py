"""The one scoring path of SCRD.

Bundle evaluation (and validation during training), bundle inference, the MLflow pyfunc and the MONAI Label app all
score through :class:`Scorer`, so one file gets the same score, the same decision and the same error everywhere:

* reading: :func:`~monai_scrd.data.read_medical_image` (DICOM, NIfTI, PNG/JPEG/...; 3D volumes allowed), then the
  preprocessing transforms (grayscale to ``channels`` or RGB by ``color_mode``, resize to ``image_size``, intensity
  scaling) built once from the bundle's settings (:class:`~monai_scrd.scoring.dataset.Preprocessor`), which also refuses a colour 2D image for a
  grayscale model (an rgb model takes grayscale images, replicated);
* 2D images and slice-wise 3D volumes: every non-empty slice is preprocessed like a 2D image, the volume score is the
  ``volume_reduction`` (max) of the slice scores;
* batching across files and slices, channels-last inputs on the CPU and mixed precision on CUDA;
* the anomaly map (the model's own eval forward, :class:`~monai_scrd.scoring.AnomalyMapGenerator`), the image score
  (:func:`~monai_scrd.scoring.image_score`) and the decision ``score >= threshold`` (:func:`read_threshold`);
* per-file errors and outputs live in :mod:`monai_scrd.scoring.outputs` (``errors.csv``, ``scores.csv``, anomaly maps,
  heatmap overlays); reading and preprocessing in :mod:`monai_scrd.scoring.dataset`; JSON/CSV writers and path
  containment in :mod:`monai_scrd.scoring.io`.

Typical use::

    scorer = Scorer(network, image_size=128, intensity="percentile", threshold="models/threshold.json")
    with ScoreWriter("out", maps="nifti", overlays=True) as writer:
        for result in scorer.score(["a.png", "b.dcm", "vol.nii.gz"], return_maps=True):
            writer.add(result)          # a row in scores.csv, or a line in errors.csv
"""

from __future__ import annotations

import json
import logging
import math
import os
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from monai_scrd.data.errors import ConfigError
from monai_scrd.data.image import MedicalImage
from monai_scrd.data.robust import error_message
from monai_scrd.data.transforms import size_2d
from monai_scrd.data.volume import assemble_volume
from monai_scrd.scoring.anomaly_map import (
    check_scale_weighting,
    image_score,
    top_fraction,
)
from monai_scrd.scoring.backends import CompiledNetwork, cache_graph, compile_network, network_device, resolve_backend
from monai_scrd.scoring.dataset import Prepared, Preprocessor, ScoringDataset, collate_prepared
from monai_scrd.scoring.fitting import DEFAULT_SCORING, volume_threshold
from monai_scrd.scoring.io import json_safe

__all__ = ["ScoreResult", "Scorer", "read_threshold", "resolve_score_reduction"]

logger = logging.getLogger("monai_scrd.scoring")

REDUCTIONS = ("mean", "max")


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



# ----------------------------------------------------------------------------------------------- results
@dataclass
class ScoreResult:
    """One scored file.

    Attributes:
        path: the file.
        item: the input item (e.g. ``label``).
        score: image score (volumes: ``volume_reduction`` of the slice scores); None on error.
        is_anomaly: ``score >= threshold``; None on error or without a threshold.
        threshold: the threshold of that decision (a volume's depends on its number of slices); None without one.
        error: one line naming the file, empty when fine.
        kind: ``"image"`` or ``"volume"``.
        slice_scores: ``{slice index: score}`` of a volume's non-empty slices.
        anomaly_map: with ``return_maps``: float32 map at the file's own size (2D NIfTI: the file's own shape;
            volumes: the volume's shape, 0 on skipped slices) or, with ``map_size="model"``, at the model's size (2D).
            A 2D image's map at its own size is resampled from ``model_map`` when first read (a heatmap alone never
            needs the 64 megapixels of a large image).
        model_map: with ``return_maps``, a 2D image's map at the model's size ``[h, w]`` (float32): enough for a
            heatmap drawn at a bounded size, without resampling the file-size map.
        affine: the file's affine (for NIfTI maps).
        source: the decoded file (with ``return_maps``).
    """

    path: str
    item: dict = field(default_factory=dict)
    score: float | None = None
    is_anomaly: bool | None = None
    threshold: float | None = None
    error: str = ""
    kind: str = "image"
    slice_scores: dict | None = None
    anomaly_map: np.ndarray | None = None
    model_map: np.ndarray | None = None
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

    def resample_map_on_read(self, size: tuple[int, int], shape: tuple[int, ...]) -> None:
        """Make ``anomaly_map``, when first read, from ``model_map``: bilinear to ``size`` (H, W), then reshaped to
        ``shape`` (a 2D NIfTI's ``(X, Y[, 1])``) when it has as many values."""
        self.__dict__["_resample_to"] = (tuple(size), tuple(shape))


def _get_anomaly_map(self: ScoreResult) -> np.ndarray | None:
    target = self.__dict__.pop("_resample_to", None)
    if target is not None and self.model_map is not None:
        (h, w), shape = target
        amap = F.interpolate(torch.from_numpy(self.model_map)[None, None], size=(h, w), mode="bilinear",
                             align_corners=False)[0, 0].numpy()
        self.__dict__["_anomaly_map"] = amap.reshape(shape) if int(np.prod(shape)) == amap.size else amap
    return self.__dict__.get("_anomaly_map")


def _set_anomaly_map(self: ScoreResult, value: np.ndarray | None) -> None:
    self.__dict__.pop("_resample_to", None)
    self.__dict__["_anomaly_map"] = value


# after @dataclass, so that its __init__, repr and comparison go through the property
ScoreResult.anomaly_map = property(_get_anomaly_map, _set_anomaly_map, doc="See the class docstring.")


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
        backend: what runs the network (:mod:`monai_scrd.scoring.backends`): ``"torch"``, ``"onnxruntime"``,
            ``"openvino"`` or ``"auto"`` (PyTorch on a GPU, the fastest installed compiled backend on the CPU). A
            compiled backend exports the network's weights as they are at the first forward pass (load them first),
            and falls back to PyTorch, with a warning, when its maps differ from PyTorch's.
        graph_cache: folder where compiled graphs are cached, one per set of weights (default: a temporary folder).
        precision: OpenVINO's inference precision (``"f32"``; see :class:`~monai_scrd.scoring.backends.CompiledNetwork`).
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
        backend: str = "torch",
        graph_cache: str | os.PathLike | None = None,
        precision: str = "f32",
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
        self.backend = resolve_backend(backend, self.device)
        self.graph_cache = None if graph_cache in (None, "") else os.fspath(graph_cache)
        self.precision = precision
        self._compiled: CompiledNetwork | None = None

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
        return network_device(self.core)

    @property
    def input_shape(self) -> tuple[int, int, int]:
        """``(C, H, W)`` of the preprocessed images."""
        return (self.preprocessor.settings["channels"], *size_2d(self.preprocessor.settings["image_size"]))

    def compiled(self) -> CompiledNetwork | None:
        """The compiled network of a compiled backend (made at the first call, from the weights as they are then),
        or None for PyTorch (also after a compiled backend fell back to it)."""
        if self.backend != "torch" and self._compiled is None:
            self._compiled = compile_network(self.core, self.backend, self.input_shape, self.graph_cache, self.device,
                                             self.precision, self.score_reduction)
            if self._compiled is None:
                self.backend = "torch"
        return self._compiled

    def export_graph(self, graph_cache: str | os.PathLike) -> str:
        """Export the network with this scorer's input shape and image reduction into ``graph_cache`` (as the
        compiled backends look for it, :func:`~monai_scrd.scoring.backends.cache_graph`); returns the file."""
        return cache_graph(self.core, self.input_shape, graph_cache, self.score_reduction)

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
        compiled = self.compiled()
        use_amp = self.amp and device.type == "cuda"
        split = use_amp and hasattr(net, "features") and hasattr(net, "anomaly_map")
        was_training = net.training
        if was_training:  # (eval() walks every module: not on each call of an eval-mode network)
            net.eval()
        maps, scores = [], []
        try:
            for chunk in images.split(self.batch_size):
                if compiled is not None:  # maps and scores from the graph (see monai_scrd.scoring.backends)
                    amap, score = compiled(chunk)
                else:
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
                    score = image_score(amap, self.score_reduction)
                scores.append(score.cpu())
                if keep_maps:
                    maps.append(amap.cpu())
        finally:
            if was_training:
                net.train()
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
        n_slices = len(values) if p.kind == "volume" else 1
        res.threshold = self.threshold_for(n_slices)
        res.is_anomaly = self.decide(res.score, n_slices)
        if maps is not None and p.source is not None:
            img = p.source
            res.affine = np.asarray(img.affine)
            if p.kind == "volume":
                res.anomaly_map = assemble_volume([m[0] for m in maps], p.slice_indices, img.array.shape, img.slice_axis)
            elif map_size == "model":
                res.anomaly_map = res.model_map = maps[0, 0].numpy()
            else:
                res.model_map = maps[0, 0].numpy()
                size = tuple(int(s) for s in img.array.shape[-2:])
                header = img.meta.get("header") if img.format == "nifti" else None
                res.resample_map_on_read(size, tuple(int(s) for s in header.get_data_shape()) if header is not None else size)
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

    def score(self, items: Iterable[Any], return_maps: bool = False, map_size: str = "original",
              num_workers: int = 0) -> Iterator[ScoreResult]:
        """Score files (paths or ``{"image": path, ...}`` items) in input order, reading each on its own (a bad
        file only fails its own result) and running the network on ``batch_size`` images at a time. Yields each
        :class:`ScoreResult` as soon as its batch is done.

        Args:
            items: the files.
            return_maps: keep each anomaly map (and the decoded file) in the result.
            map_size: ``"original"`` (the file's own size and affine) or ``"model"`` (2D maps at the model's size).
            num_workers: read and preprocess in this many loader processes while the network scores the previous
                batch (0: in this process, one batch after the other).
        """
        if num_workers > 0:
            from torch.utils.data import DataLoader

            loader = DataLoader(ScoringDataset(list(items), self, keep_source=return_maps), batch_size=self.batch_size,
                                num_workers=int(num_workers), collate_fn=collate_prepared)
            for prepared in loader:
                yield from self.score_prepared(prepared, return_maps, map_size)
            return
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
