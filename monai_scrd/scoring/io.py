"""Plain outputs and containment shared by every entry point: JSON and CSV writers that keep any file name, and the
check that a path stays inside configured folders."""

from __future__ import annotations

import csv
import json
import logging
import math
import os
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np
import torch

from monai_scrd.data.datalist import is_inside

__all__ = ["json_safe", "write_json", "write_csv", "resolve_inside", "roots_from_env"]

logger = logging.getLogger("monai_scrd.scoring")

# File names are bytes: one that is not valid UTF-8 (decoded by Python with surrogate escapes) is written to CSV as its
# own bytes, so nothing is lost and reading the CSV back with errors="surrogateescape" gives the same path; in JSON
# it becomes \udcXX escapes (json's default ensure_ascii), which json.load turns back into the same path.
CSV_ERRORS = "surrogateescape"

# ----------------------------------------------------------------------------------------------- plain outputs
def json_safe(value: Any) -> Any:
    """``value`` with NaN/Inf floats as None, numpy scalars/arrays and tensors as Python values (strict JSON)."""
    if isinstance(value, Mapping):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    if isinstance(value, (torch.Tensor, np.ndarray)):
        return json_safe(value.tolist())
    if isinstance(value, np.generic):
        return json_safe(value.item())
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    return value


def _parent(path: str) -> None:
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)


def write_json(path: str | os.PathLike, data: Any) -> str:
    """Write ``data`` as strict JSON (NaN -> null); returns the path."""
    path = os.fspath(path)
    _parent(path)
    with open(path, "w", encoding="utf-8") as f:
        json.dump(json_safe(data), f, indent=2, sort_keys=True, allow_nan=False)
    return path


def _cell(value: Any) -> Any:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return ""
    if isinstance(value, bool):
        return int(value)
    return value


def write_csv(path: str | os.PathLike, rows: Iterable[Mapping], fields: Sequence[str]) -> str:
    """Write ``rows`` (dicts) with a header of ``fields``; missing/None/NaN cells are empty. Returns the path."""
    path = os.fspath(path)
    _parent(path)
    with open(path, "w", newline="", encoding="utf-8", errors=CSV_ERRORS) as f:
        w = csv.DictWriter(f, fieldnames=list(fields), extrasaction="ignore")
        w.writeheader()
        for row in rows:
            w.writerow({k: _cell(row.get(k)) for k in fields})
    return path


def resolve_inside(path: Any, roots: Sequence[str | os.PathLike]) -> str | None:
    """The real path of ``path`` (symbolic links resolved) when it exists inside one of ``roots`` (resolved too),
    else None. Servers answer None the same way whether the file is missing or not allowed, so that a client learns
    nothing about files outside the roots."""
    if not isinstance(path, (str, os.PathLike)):
        return None
    path = os.fspath(path)
    if not path or "\x00" in path:
        return None
    real = os.path.realpath(path)
    if os.path.exists(real) and any(is_inside(real, os.path.realpath(os.fspath(root))) for root in roots):
        return real
    return None


def roots_from_env(name: str, default: Sequence[str] = ()) -> list[str]:
    """Folders listed in the environment variable ``name`` (separated by ``os.pathsep``), else ``default``."""
    value = os.environ.get(name)
    if value is None:
        return [os.fspath(d) for d in default]
    return [os.path.realpath(v) for v in value.split(os.pathsep) if v.strip()]

