"""The registry's one error type."""

from __future__ import annotations

__all__ = ["RegistryError"]


class RegistryError(RuntimeError):
    """A registration that cannot be done as asked (no weights, no threshold, unusable backend...)."""
