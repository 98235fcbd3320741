"""Per-file error handling for batch jobs: load or score every good file, collect one line per bad one into
``errors.csv``, and check training images up front.

Typical batch use (inference / evaluation)::

    errors = FileErrors()
    results = score_files(model, paths, image_size=256, errors=errors)   # every good file is scored
    errors.write(os.path.join(output_dir, "errors.csv"))                 # header only when nothing failed
    sys.exit(errors.exit_code)                                            # 1 when any file failed

Training set-up::

    check_training_files(datalist["training"])   # DataError listing *all* unreadable training images at once
"""

from __future__ import annotations

import csv
import os
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from monai_scrd.data.errors import DataError, describe
from monai_scrd.data.readers import _to_metatensor, read_medical_image
from monai_scrd.data.transforms import array_transforms, preprocessing_transforms

__all__ = [
    "unwrap_error",
    "error_message",
    "safe_load",
    "FileErrors",
    "validate_training_files",
    "check_training_files",
    "score_files",
    "SafeDataset",
]


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


def safe_load(
    path: str | os.PathLike,
    transform: Callable | None = None,
    image_size: int | Sequence[int] = 256,
    intensity: str = "minmax",
    percentiles: Sequence[float] = (0.5, 99.5),
    key: str = "image",
) -> tuple[torch.Tensor | None, str | None]:
    """Load and preprocess one 2D image without raising.

    Args:
        path: image file.
        transform: dictionary transform applied to ``{key: path}``; default ``preprocessing_transforms(key, image_size,
            intensity, percentiles)``.

    Returns:
        ``(image, None)`` on success (``[3, H, W]`` float32 in [0, 1]) or ``(None, "path: what is wrong")``.
    """
    tf = transform if transform is not None else preprocessing_transforms(key, image_size, intensity, percentiles)
    try:
        return tf({key: os.fspath(path)})[key], None
    except Exception as e:  # noqa: BLE001 - every failure becomes one error line
        return None, error_message(path, e)


class FileErrors:
    """Collects ``(path, error)`` rows for files that failed in a batch job and writes them to ``errors.csv``."""

    def __init__(self) -> None:
        self.rows: list[tuple[str, str]] = []

    def add(self, path: str | os.PathLike, error: str | BaseException) -> None:
        """Record a failure; ``error`` is a message or the exception raised for ``path``."""
        msg = error_message(path, error) if isinstance(error, BaseException) else str(error).replace("\n", " ")
        self.rows.append((os.fspath(path), msg))

    def __len__(self) -> int:
        return len(self.rows)

    def __iter__(self) -> Iterator[tuple[str, str]]:
        return iter(self.rows)

    @property
    def exit_code(self) -> int:
        """1 when any file failed, else 0 (use as the job's exit status)."""
        return 1 if self.rows else 0

    def summary(self, total: int | None = None) -> str:
        """One line, e.g. ``"2 of 10 files failed"``."""
        n = len(self.rows)
        return f"{n} of {total} files failed" if total is not None else f"{n} files failed"

    def write(self, csv_path: str | os.PathLike) -> str:
        """Write ``path,error`` rows (header always, so an empty file means no failures); returns the path."""
        csv_path = os.fspath(csv_path)
        os.makedirs(os.path.dirname(os.path.abspath(csv_path)), exist_ok=True)
        with open(csv_path, "w", newline="", encoding="utf-8") as f:
            w = csv.writer(f)
            w.writerow(["path", "error"])
            w.writerows(self.rows)
        return csv_path


def validate_training_files(items: Iterable[str | os.PathLike | Mapping], key: str = "image") -> list[tuple[str, str]]:
    """Fully read (decode and check) every image; return ``[(path, error), ...]`` for those that fail (empty when all
    are fine). ``items`` are paths or datalist dicts holding the path under ``key``. 3D volumes count as errors
    (training uses 2D images)."""
    bad = []
    for path in _paths(items, key):
        try:
            read_medical_image(path, allow_volume=False)
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


@torch.no_grad()
def score_files(
    model: torch.nn.Module,
    items: Iterable[str | os.PathLike | Mapping],
    image_size: int | Sequence[int] = 256,
    reduction: str = "mean",
    intensity: str = "minmax",
    percentiles: Sequence[float] = (0.5, 99.5),
    errors: FileErrors | None = None,
    batch_size: int = 8,
    device: str | torch.device | None = None,
    volume_axis: int | None = None,
    volume_reduction: str = "max",
    return_maps: bool = False,
    key: str = "image",
) -> list[dict]:
    """Score every readable file, collecting failures in ``errors`` instead of raising.

    2D images are preprocessed like ``preprocessing_transforms`` and scored in batches; 3D volumes are scored slice
    by slice (:func:`~monai_scrd.data.volume.score_volume`, volume score = ``volume_reduction`` of slice scores).

    Args:
        model: SCRD in eval mode (returns ``[B, 1, H, W]`` maps).
        items: paths, or datalist dicts with the path under ``key`` (other keys, e.g. ``label``, are copied to the
            result).
        image_size, intensity, percentiles: preprocessing (see ``preprocessing_transforms``).
        reduction: map -> image score, ``"mean"`` (paper) or ``"max"``.
        errors: collector for failures (a new one is made when None; read it back from your own instance).
        batch_size: images per forward pass.
        device: default: the model's device.
        volume_axis: slicing axis of volumes (default per format, see ``score_volume``).
        volume_reduction: slice scores -> volume score.
        return_maps: also return ``"map"`` (2D: ``[1, H, W]`` tensor at model resolution; volumes: a nibabel image).

    Returns:
        One dict per good file, in input order: ``{"image": path, "score": float, "kind": "image"|"volume", ...}``
        (volumes also get ``"slice_scores"``).
    """
    from monai_scrd.data.volume import score_volume
    from monai_scrd.scoring import image_score

    errors = errors if errors is not None else FileErrors()
    device = torch.device(device) if device is not None else next(model.parameters()).device
    model.eval()
    tf = array_transforms("image", image_size, intensity, percentiles)
    results: list[dict | None] = []
    pending: list[tuple[int, torch.Tensor]] = []

    def flush() -> None:
        if not pending:
            return
        x = torch.stack([t for _, t in pending]).to(device)
        amap = model(x).float()
        scores = image_score(amap, reduction).cpu()
        for (slot, _), s, m in zip(pending, scores, amap):
            results[slot]["score"] = float(s)
            if return_maps:
                results[slot]["map"] = m.cpu()
        pending.clear()

    for item in items:
        extra = dict(item) if isinstance(item, Mapping) else {}
        path = os.fspath(item[key]) if isinstance(item, Mapping) else os.fspath(item)
        try:
            img = read_medical_image(path, allow_volume=True)
            if img.is_volume:
                vs = score_volume(
                    model, img, image_size, volume_axis, volume_reduction, reduction, intensity, percentiles, device=device
                )
                res = {**extra, key: path, "score": vs.score, "kind": "volume", "slice_scores": vs.slice_scores}
                if return_maps:
                    res["map"] = vs.map_image
                results.append(res)
                continue
            x = torch.as_tensor(tf({"image": _to_metatensor(img)})["image"]).as_subclass(torch.Tensor)
        except Exception as e:  # noqa: BLE001 - keep going past bad files
            errors.add(path, e)
            continue
        results.append({**extra, key: path, "kind": "image"})
        pending.append((len(results) - 1, x))
        if len(pending) >= batch_size:
            flush()
    flush()
    return [r for r in results if r is not None]


class SafeDataset(Dataset):
    """A ``Dataset`` that never raises on a bad file: items that fail get a zero image and the error line.

    Each item is ``{**data[i], key: image, "path": original path, "error": ""}``; on failure ``key`` holds zeros of
    ``placeholder_shape`` and ``"error"`` the one-line message. After collation, drop the rows with a non-empty error
    (and record them with :class:`FileErrors`).

    Args:
        data: datalist items (dicts with ``key``).
        transform: dictionary transform, e.g. ``preprocessing_transforms()``.
        placeholder_shape: shape of the zero image for failed items (``(3, image_size, image_size)``).
        key: image key.
    """

    def __init__(
        self,
        data: Sequence[Mapping],
        transform: Callable,
        placeholder_shape: Sequence[int] = (3, 256, 256),
        key: str = "image",
    ) -> None:
        self.data = list(data)
        self.transform = transform
        self.placeholder_shape = tuple(int(s) for s in placeholder_shape)
        self.key = key

    def __len__(self) -> int:
        return len(self.data)

    def __getitem__(self, index: int) -> dict:
        item = dict(self.data[index])
        path = os.fspath(item[self.key])
        try:
            out = dict(self.transform(dict(item)))
            img = out[self.key]
            out[self.key] = img.as_tensor() if hasattr(img, "as_tensor") else torch.as_tensor(np.asarray(img))
            out.update(path=path, error="")
        except Exception as e:  # noqa: BLE001
            out = {**item, self.key: torch.zeros(self.placeholder_shape), "path": path, "error": error_message(path, e)}
        return out
