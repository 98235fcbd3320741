"""Bundle inference: score a folder, datalist or list of files with the one scorer and write ``scores.csv``, heatmap
overlays, NIfTI anomaly maps and ``errors.csv``.

Each file is read on its own: an unreadable file becomes a ``path,error`` row in ``errors.csv`` and the run goes on;
the bundle then exits non-zero at the end (``ErrorCollector.check``).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence

from monai_scrd.engines.utils import list_inputs

__all__ = ["AnomalyInference"]

logger = logging.getLogger("monai_scrd.engines")


class AnomalyInference:
    """Score images with :class:`monai_scrd.scoring.Scorer` and write, into ``output_dir``, ``scores.csv`` (path,
    score, is_anomaly at the scorer's threshold, heatmap, anomaly_map; a row as soon as a file is scored), a heatmap
    overlay PNG per image, the anomaly map as NIfTI with the input's affine for NIfTI inputs and 3D volumes, and
    ``errors.csv`` (always; a header alone means nothing failed).

    Args:
        scorer: the scorer (network with its weights, preprocessing, threshold).
        output_dir: where the outputs go.
        save_heatmaps: write ``heatmaps/<name>.png``.
        save_nifti: write ``maps/<name>_anomaly_map.nii.gz`` for NIfTI inputs and volumes.
        errors: :class:`~monai_scrd.scoring.ErrorCollector` for per-file errors (default: a new one).
        allow_absolute: for a datalist JSON input, accept absolute paths and paths leaving its folder.
        num_workers: loader processes that read and preprocess files while the network scores (0: none).
    """

    def __init__(
        self,
        scorer,
        output_dir: str,
        save_heatmaps: bool = True,
        save_nifti: bool = True,
        errors=None,
        allow_absolute: bool = False,
        num_workers: int = 0,
    ) -> None:
        from monai_scrd.scoring import ErrorCollector

        self.scorer = scorer
        self.output_dir = output_dir
        self.save_heatmaps = bool(save_heatmaps)
        self.save_nifti = bool(save_nifti)
        self.errors = errors if errors is not None else ErrorCollector(os.path.join(output_dir, "errors.csv"))
        self.allow_absolute = allow_absolute
        self.num_workers = int(num_workers)

    @staticmethod
    def _decision(result) -> str:
        """``score S >= threshold T: anomalous`` / ``score S < threshold T: normal`` (the threshold the scorer decided
        with: a volume's depends on its number of slices), or ``score S (no threshold: no decision)``."""
        if result.is_anomaly is None:
            return f"score {result.score:.5g} (no threshold: no decision)"
        return (f"score {result.score:.5g} >= threshold {result.threshold:.5g}: anomalous" if result.is_anomaly
                else f"score {result.score:.5g} < threshold {result.threshold:.5g}: normal")

    def __call__(self, inputs: str | Sequence[str] | Sequence[dict]) -> list[dict]:
        """Score a folder / datalist JSON / file / list of paths (or ``[{"image": path}]``); returns the rows."""
        from monai_scrd.scoring import ScoreWriter

        if isinstance(inputs, (list, tuple)) and inputs and isinstance(inputs[0], dict):
            items = list(inputs)
        else:
            items = list_inputs(inputs, allow_absolute=self.allow_absolute)
        if not items:
            from monai_scrd.data.errors import DataError

            raise DataError(f"{inputs}: no input images found (searched recursively for PNG, JPEG, TIFF, DICOM and NIfTI "
                            "files and DICOM series folders)")
        keep_maps = self.save_heatmaps or self.save_nifti
        writer = ScoreWriter(self.output_dir, maps="nifti" if self.save_nifti else "none", overlays=self.save_heatmaps,
                             threshold=self.scorer.threshold, errors=self.errors)
        with writer:
            for i, result in enumerate(self.scorer.score(items, return_maps=keep_maps, num_workers=self.num_workers), 1):
                if writer.add(result) is not None:
                    logger.info(f"[{i}/{len(items)}] {result.path}: {self._decision(result)}")
                else:
                    logger.error(f"[{i}/{len(items)}] {writer.errors.rows[-1][1]}")
                    writer.errors.reported = len(writer.errors)  # logged here: the summary does not repeat it
        writer.errors.written = len(writer.rows)
        logger.info(f"scored {len(writer.rows)} of {len(items)} file(s) -> {writer.scores_csv}")
        return writer.rows
