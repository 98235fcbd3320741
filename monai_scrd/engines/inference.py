"""Per-file SCRD inference: scores, heatmap overlays and NIfTI anomaly maps for PNG/JPEG/DICOM/NIfTI inputs.

Each file is handled on its own (``try``/``except`` per file): an unreadable file becomes a ``path,error`` row in
``errors.csv`` and the run goes on; the bundle then exits non-zero at the end (``ErrorReport.check``).
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from monai_scrd.engines.evaluation import ErrorReport, _describe, write_scores_csv
from monai_scrd.engines.handlers import load_threshold
from monai_scrd.engines.utils import list_inputs, unwrap

__all__ = ["AnomalyInference"]

logger = logging.getLogger("monai_scrd.engines")


def _stem(path: str) -> str:
    name = os.path.basename(path)
    for ext in (".nii.gz", ".nii", ".dcm", ".dicom", ".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".ima"):
        if name.lower().endswith(ext):
            name = name[: -len(ext)]
            break
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name) or "image"


class AnomalyInference:
    """Score images with a trained SCRD model and write ``scores.csv`` (path, score, is_anomaly at the stored
    threshold), a heatmap overlay PNG per image, and for NIfTI inputs (and 3D volumes) the anomaly map as NIfTI with
    the input's affine.

    2D images go through the same preprocessing as in training (grayscale to 3 channels, resize to ``image_size``,
    scaled to [0, 1]); the map is resized back to the input's size. 3D volumes (NIfTI, multi-frame DICOM) are scored
    slice by slice (``monai_scrd.data.score_volume``; volume score = max of slice scores).

    Args:
        network: SCRD model (weights already loaded).
        output_dir: where ``scores.csv``, ``errors.csv``, ``heatmaps/`` and ``maps/`` go.
        image_size: model input size (as in training).
        threshold_path: stored threshold JSON (``models/threshold.json`` from training); without it ``is_anomaly``
            is left empty.
        reduction: image score from the map, ``"mean"`` (paper) or ``"max"``.
        device: where to run.
        save_heatmaps: write ``heatmaps/<name>.png``.
        save_nifti: write ``maps/<name>_anomaly_map.nii.gz`` for NIfTI inputs and volumes.
        error_report: :class:`ErrorReport` that collects per-file errors (one is made if None).
        allow_absolute: for a datalist JSON input, accept absolute paths and paths leaving its folder.
    """

    def __init__(
        self,
        network: torch.nn.Module,
        output_dir: str,
        image_size: int = 256,
        threshold_path: str | None = None,
        reduction: str = "mean",
        device: str | torch.device | None = None,
        save_heatmaps: bool = True,
        save_nifti: bool = True,
        error_report: ErrorReport | None = None,
        allow_absolute: bool = False,
    ) -> None:
        self.network = unwrap(network)
        self.allow_absolute = allow_absolute
        self.output_dir = output_dir
        self.image_size = int(image_size)
        self.threshold_info = load_threshold(threshold_path)
        self.threshold = None if self.threshold_info is None else float(self.threshold_info["threshold"])
        if self.threshold is None:
            logger.warning(f"no stored threshold at {threshold_path}: is_anomaly will be empty (train first)")
        self.reduction = reduction
        self.device = torch.device(device) if device is not None else next(self.network.parameters()).device
        self.save_heatmaps = save_heatmaps
        self.save_nifti = save_nifti
        self.error_report = error_report if error_report is not None else ErrorReport(os.path.join(output_dir, "errors.csv"))
        self._names: set[str] = set()

    def _name(self, path: str) -> str:
        base, i = _stem(path), 1
        name = base
        while name in self._names:
            i += 1
            name = f"{base}_{i}"
        self._names.add(name)
        return name

    @torch.no_grad()
    def _score_2d(self, img) -> tuple[float, np.ndarray, np.ndarray]:
        from monai_scrd.data.color import check_color_mode
        from monai_scrd.data.transforms import array_transforms
        from monai_scrd.scoring import image_score

        # the colour mode the model was trained in (threshold.json); without a record: grayscale, no check (older models)
        color_mode = (self.threshold_info or {}).get("color_mode")
        check_color_mode(img.array, color_mode, img.path)
        tf = array_transforms("image", self.image_size, color_mode=color_mode or "grayscale")
        x = tf({"image": torch.from_numpy(np.ascontiguousarray(img.array))})["image"]
        x = torch.as_tensor(x)[None].float().to(self.device)
        amap = self.network(x).float()
        score = float(image_score(amap, self.reduction)[0])
        h, w = img.array.shape[-2:]
        full = F.interpolate(amap, size=(h, w), mode="bilinear", align_corners=False)[0, 0].cpu().numpy()
        arr = img.array[:3].mean(axis=0) if img.array.shape[0] > 1 else img.array[0]
        return score, full, arr

    def process(self, path: str) -> dict:
        """Score one file and write its outputs; raises on bad input."""
        from monai_scrd.data.readers import read_medical_image

        img = read_medical_image(path, allow_volume=True)
        name = self._name(path)
        row: dict = {"path": path, "heatmap": "", "anomaly_map": ""}
        if img.is_volume:
            from monai_scrd.data.volume import save_map_nifti, score_volume

            res = score_volume(self.network, img, self.image_size, reduction="max", slice_reduction=self.reduction,
                               device=self.device)
            score = res.score
            k = max(res.slice_scores, key=res.slice_scores.get)
            axis = img.slice_axis
            mvol = np.asarray(res.map_image.dataobj)
            overlay_img, overlay_map = np.take(img.array, k, axis=axis), np.take(mvol, k, axis=axis)
            row["slice"] = int(k)
            if self.save_nifti:
                out = os.path.join(self.output_dir, "maps", f"{name}_anomaly_map.nii.gz")
                save_map_nifti(res.map_image, None, out)
                row["anomaly_map"] = out
        else:
            score, full, overlay_img = self._score_2d(img)
            overlay_map = full
            if self.save_nifti and img.format == "nifti":
                from monai_scrd.data.volume import save_map_nifti

                header = img.meta.get("header")
                shape = tuple(header.get_data_shape()) if header is not None else full.shape
                # 2D NIfTI arrays are [1, X, Y] in nibabel order, so the map is already in the file's voxel order
                data = full.reshape(shape) if int(np.prod(shape)) == full.size else full
                out = os.path.join(self.output_dir, "maps", f"{name}_anomaly_map.nii.gz")
                save_map_nifti(data.astype(np.float32), img.affine, out)
                row["anomaly_map"] = out
        row["score"] = float(score)
        row["is_anomaly"] = "" if self.threshold is None else int(score >= self.threshold)
        if self.save_heatmaps:
            from monai_scrd.engines.plots import save_heatmap_overlay

            out = os.path.join(self.output_dir, "heatmaps", f"{name}.png")
            save_heatmap_overlay(overlay_img, overlay_map, out, score=score, threshold=self.threshold)
            row["heatmap"] = out
        return row

    def __call__(self, inputs: str | Sequence[str] | Sequence[dict]) -> list[dict]:
        """Score a folder / datalist JSON / file / list of paths (or ``[{"image": path}]``); returns the rows."""
        if isinstance(inputs, (list, tuple)) and inputs and isinstance(inputs[0], dict):
            items = list(inputs)
        else:
            items = list_inputs(inputs, allow_absolute=self.allow_absolute)
        if not items:
            raise FileNotFoundError(f"no input images found in {inputs}")
        self.network.eval().to(self.device)
        os.makedirs(self.output_dir, exist_ok=True)
        rows = []
        for i, item in enumerate(items, 1):
            path = str(item["image"])
            try:
                rows.append(self.process(path))
                logger.info(f"[{i}/{len(items)}] {path}: score {rows[-1]['score']:.5g}")
            except Exception as e:  # per-file isolation
                msg = _describe(path, e)
                self.error_report.add(path, msg)
                logger.error(f"[{i}/{len(items)}] {msg}")
        write_scores_csv(os.path.join(self.output_dir, "scores.csv"), rows,
                         ["path", "score", "is_anomaly", "heatmap", "anomaly_map"])
        self.error_report.write()
        logger.info(f"scored {len(rows)} of {len(items)} file(s) -> {self.output_dir}/scores.csv")
        return rows
