"""MONAI transforms for SCRD."""

from .noise import NOISE_TYPES, RandSimplexNoise, RandSimplexNoised
from .simplex import fractal_simplex_noise, warmup
from .validation_anomaly import (
    ANOMALY_FAMILIES,
    ANOMALY_SIZES,
    LOCAL_FAMILIES,
    SCORING_FAMILIES,
    SCORING_SIZES,
    RandValidationAnomaly,
    RandValidationAnomalyd,
    SyntheticValidationSet,
    synthetic_validation_set,
)

__all__ = [
    "NOISE_TYPES",
    "RandSimplexNoise",
    "RandSimplexNoised",
    "fractal_simplex_noise",
    "warmup",
    "ANOMALY_FAMILIES",
    "ANOMALY_SIZES",
    "LOCAL_FAMILIES",
    "SCORING_FAMILIES",
    "SCORING_SIZES",
    "RandValidationAnomaly",
    "RandValidationAnomalyd",
    "SyntheticValidationSet",
    "synthetic_validation_set",
]
