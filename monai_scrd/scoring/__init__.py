"""Anomaly maps, image scores, detection metrics, figures, and the one scoring path (:mod:`monai_scrd.scoring.scorer`;
reading in ``dataset``, written outputs in ``outputs``, JSON/CSV and containment in ``io``, compiled backends in
``backends``, the fitting of calibration and threshold in ``fitting``) that evaluation, inference, the registry and
MONAI Label share."""

from monai_scrd.scoring.anomaly_map import AnomalyMapGenerator, image_score
from monai_scrd.scoring.dataset import PREPROCESSING_KEYS, Prepared, Preprocessor, ScoringDataset, collate_prepared
from monai_scrd.scoring.fitting import fit_scoring, fit_threshold, volume_threshold
from monai_scrd.scoring.io import json_safe, resolve_inside, roots_from_env, write_csv, write_json
from monai_scrd.scoring.metrics import best_f1_threshold, detection_metrics, pixel_auroc, threshold_metrics
from monai_scrd.scoring.outputs import MAP_FORMATS, ErrorCollector, ScoreWriter, save_map
from monai_scrd.scoring.scorer import ScoreResult, Scorer, read_threshold, resolve_score_reduction

__all__ = [
    "AnomalyMapGenerator",
    "image_score",
    "PREPROCESSING_KEYS",
    "Prepared",
    "Preprocessor",
    "ScoringDataset",
    "collate_prepared",
    "fit_scoring",
    "fit_threshold",
    "volume_threshold",
    "json_safe",
    "resolve_inside",
    "roots_from_env",
    "write_csv",
    "write_json",
    "best_f1_threshold",
    "detection_metrics",
    "pixel_auroc",
    "threshold_metrics",
    "MAP_FORMATS",
    "ErrorCollector",
    "ScoreWriter",
    "save_map",
    "ScoreResult",
    "Scorer",
    "read_threshold",
    "resolve_score_reduction",
]
