from .anomaly_map import AnomalyMapGenerator, image_score
from .metrics import best_f1_threshold, detection_metrics, pixel_auroc, threshold_metrics

__all__ = ["AnomalyMapGenerator", "image_score", "best_f1_threshold", "detection_metrics", "threshold_metrics", "pixel_auroc"]
