"""Anomaly maps, image scores, detection metrics, figures, and the one scoring path (:mod:`monai_scrd.scoring.scorer`)
that evaluation, inference, the registry and MONAI Label share. The scorer's names are imported on first use."""

from monai_scrd._lazy import lazy_exports

from .anomaly_map import AnomalyMapGenerator, image_score
from .fitting import fit_scoring, fit_threshold, volume_threshold
from .metrics import best_f1_threshold, detection_metrics, pixel_auroc, threshold_metrics

_SCORER = [
    "MAP_FORMATS",
    "PREPROCESSING_KEYS",
    "Preprocessor",
    "Prepared",
    "ScoreResult",
    "Scorer",
    "ScoringDataset",
    "collate_prepared",
    "read_threshold",
    "ErrorCollector",
    "ScoreWriter",
    "save_map",
    "write_csv",
    "write_json",
    "json_safe",
    "resolve_inside",
    "roots_from_env",
]
_names, __getattr__, __dir__ = lazy_exports(__name__, {"scorer": _SCORER})
__all__ = [
    "AnomalyMapGenerator",
    "image_score",
    "fit_scoring",
    "fit_threshold",
    "volume_threshold",
    "best_f1_threshold",
    "detection_metrics",
    "threshold_metrics",
    "pixel_auroc",
    *_names,
]
