"""Per-file error messages for batch jobs, and the up-front check of training images.

Training set-up::

    check_training_files(datalist["training"])   # DataError listing *all* unreadable training images at once

Scoring many files and collecting their errors is :mod:`monai_scrd.scoring.scorer`'s job (the data package never
runs a model).
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from typing import Any

from monai_scrd.data.errors import ConfigError, DataError, describe
from monai_scrd.data.readers import read_medical_image
from monai_scrd.data.volume import check_not_constant

__all__ = ["unwrap_error", "error_message", "validate_training_files", "check_training_files"]


def unwrap_error(exc: BaseException) -> BaseException:
    """The exception that caused ``exc``: MONAI's ``Compose``/``apply_transform`` wraps errors in
    ``RuntimeError("applying transform ...")``; this returns the first ``DataError`` in the cause chain, else the
    innermost cause."""
    seen = set()
    cur: BaseException | None = exc
    last = exc
    while cur is not None and id(cur) not in seen:
        seen.add(id(cur))
        if isinstance(cur, DataError):
            return cur
        last = cur
        cur = cur.__cause__ or cur.__context__
    return last


def error_message(path: str | os.PathLike, exc: BaseException) -> str:
    """One-line message naming ``path`` for any exception raised while loading or scoring it."""
    return describe(os.fspath(path), unwrap_error(exc))


def _paths(items: Iterable[Any], key: str = "image") -> list[str]:
    return [os.fspath(it[key]) if isinstance(it, Mapping) else os.fspath(it) for it in items]


def validate_training_files(items: Iterable[str | os.PathLike | Mapping], key: str = "image") -> list[tuple[str, str]]:
    """Fully read (decode and check) every image; return ``[(path, error), ...]`` for those that fail (empty when all
    are fine). ``items`` are paths or datalist dicts holding the path under ``key``. 3D volumes count as errors
    (training uses 2D images), and so do constant images (every pixel the same value), which scoring refuses."""
    bad = []
    for path in _paths(items, key):
        try:
            img = read_medical_image(path, allow_volume=False)
            check_not_constant(path, img.array)  # nothing to learn from, and scoring refuses it too
        except ConfigError:  # a bad setting (e.g. $SCRD_MAX_PIXELS) is not the image's fault
            raise
        except Exception as e:  # noqa: BLE001
            bad.append((path, error_message(path, e)))
    return bad


def check_training_files(items: Iterable[str | os.PathLike | Mapping], key: str = "image", what: str = "training") -> None:
    """Raise a :class:`DataError` listing *all* unreadable images (one line each) when any fails; training must not
    start on, nor silently drop, bad data. Also raises when ``items`` is empty."""
    paths = _paths(items, key)
    if not paths:
        raise DataError(f"no {what} images: the datalist's {what!r} list is empty")
    bad = validate_training_files(paths)
    if bad:
        lines = "\n".join(msg for _, msg in bad)
        raise DataError(
            f"{len(bad)} of {len(paths)} {what} images are unreadable; fix or remove them from the datalist:\n{lines}"
        )
