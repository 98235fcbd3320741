"""Anomaly maps, image scores, detection metrics, figures, and the one scoring path (:mod:`monai_scrd.scoring.scorer`;
reading in ``dataset``, written outputs in ``outputs``, JSON/CSV and containment in ``io``) that evaluation, inference,
the registry and MONAI Label share. Those names are imported on first use."""

from monai_scrd._lazy import lazy_exports

from .anomaly_map import AnomalyMapGenerator, image_score
from .fitting import fit_scoring, fit_threshold, volume_threshold
from .metrics import best_f1_threshold, detection_metrics, pixel_auroc, threshold_metrics

_LAZY = {  # submodule -> names, imported on first use (they pull in MONAI and the readers)
    "scorer": ["ScoreResult", "Scorer", "read_threshold", "resolve_score_reduction"],
    "dataset": ["PREPROCESSING_KEYS", "Prepared", "Preprocessor", "ScoringDataset", "collate_prepared"],
    "outputs": ["MAP_FORMATS", "save_map", "ErrorCollector", "ScoreWriter"],
    "io": ["json_safe", "write_json", "write_csv", "resolve_inside", "roots_from_env"],
}
_names, __getattr__, __dir__ = lazy_exports(__name__, _LAZY)
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
