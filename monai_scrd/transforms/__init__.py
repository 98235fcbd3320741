"""MONAI transforms for SCRD."""

from .noise import NOISE_TYPES, RandSimplexNoise, RandSimplexNoised, fractal_simplex_noise, warmup

__all__ = ["NOISE_TYPES", "RandSimplexNoise", "RandSimplexNoised", "fractal_simplex_noise", "warmup"]
