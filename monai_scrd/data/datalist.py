"""Loading and validating the bundle's datalist JSON (MONAI decathlon style, plain JSON, no pickle).

Format::

    {
      "training":   [{"image": "train/normal/a.png", "label": 0}, ...],   # normal images only
      "validation": [{"image": "train/normal/b.png", "label": 0}, ...],   # optional
      "test":       [{"image": "test/tumour/c.png", "label": 1}, ...],    # label 0 (normal) or 1 (abnormal)
      "description": "...", "name": "..."                                # optional metadata
    }

Relative image paths are resolved against the JSON file's folder (or ``dataset_dir``) and may not leave it.
"""

from __future__ import annotations

import difflib
import json
import os
from typing import Any

from monai_scrd.data.errors import DataError

__all__ = ["DATALIST_KEYS", "METADATA_KEYS", "load_datalist", "validate_datalist", "resolve_path", "is_inside"]

DATALIST_KEYS = ("training", "validation", "test")
METADATA_KEYS = (
    "name",
    "description",
    "reference",
    "licence",
    "license",
    "release",
    "modality",
    "labels",
    "tensorImageSize",
    "numTraining",
    "numValidation",
    "numTest",
    "source",
    "version",
)


def is_inside(real_path: str, real_root: str) -> bool:
    """Whether ``real_path`` is ``real_root`` or lies below it; both already resolved (``os.path.realpath``)."""
    try:
        return os.path.commonpath([real_path, real_root]) == real_root
    except ValueError:  # different drives on Windows
        return False


def resolve_path(value: str, base: str, allow_absolute: bool = False, where: str = "") -> str:
    """Resolve one datalist path against ``base`` (an absolute, resolved folder).

    Refuses absolute paths and paths that leave ``base`` (through ``..`` or a symbolic link) unless
    ``allow_absolute`` is True. ``where`` (e.g. ``"datalist.json: test[3].image"``) prefixes error messages.
    """
    if not isinstance(value, str) or not value.strip():
        raise DataError(f"{where} is {value!r}; expected a non-empty path string")
    if "\x00" in value:
        raise DataError(f"{where} contains a NUL character")
    expanded = os.path.expanduser(value) if allow_absolute else value
    if os.path.isabs(expanded):
        if not allow_absolute:
            raise DataError(f"{where} is an absolute path ({value}); use paths relative to {base} or allow absolute paths")
        return os.path.realpath(expanded)
    resolved = os.path.realpath(os.path.join(base, expanded))
    if not allow_absolute and not is_inside(resolved, base):
        raise DataError(f"{where} ({value}) resolves to {resolved}, outside the dataset folder {base}")
    return resolved


def _suggest(key: str) -> str:
    close = difflib.get_close_matches(key, DATALIST_KEYS + METADATA_KEYS, n=1)
    return f"; did you mean {close[0]!r}?" if close else ""


def validate_datalist(
    data: Any,
    source: str = "datalist",
    base: str | None = None,
    allow_absolute: bool = False,
    require: tuple[str, ...] = (),
) -> dict[str, list[dict]]:
    """Validate a parsed datalist and resolve its image paths against ``base`` (see :func:`load_datalist`)."""
    if not isinstance(data, dict):
        raise DataError(f"{source}: top level is a JSON {type(data).__name__}; expected an object with keys {', '.join(DATALIST_KEYS)}")
    unknown = [k for k in data if k not in DATALIST_KEYS and k not in METADATA_KEYS]
    if unknown:
        k = unknown[0]
        raise DataError(f"{source}: unknown key {k!r} (expected {', '.join(DATALIST_KEYS)}){_suggest(k)}")
    present = [k for k in DATALIST_KEYS if k in data]
    if not present:
        raise DataError(f"{source}: no 'training', 'validation' or 'test' list")
    for k in require:
        if k not in data:
            raise DataError(f"{source}: missing key {k!r}")
    base = os.path.realpath(base) if base is not None else None
    out: dict[str, list[dict]] = {}
    for key in present:
        items = data[key]
        if not isinstance(items, list):
            raise DataError(f"{source}: {key} is a JSON {type(items).__name__}; expected a list of {{\"image\": ...}} objects")
        if key in require and not items:
            raise DataError(f"{source}: {key} is empty")
        resolved_items = []
        for i, item in enumerate(items):
            where = f"{source}: {key}[{i}]"
            if isinstance(item, str):
                item = {"image": item}
            if not isinstance(item, dict):
                raise DataError(f"{where} is a JSON {type(item).__name__}; expected an object with an 'image' path")
            if "image" not in item:
                raise DataError(f"{where} has no 'image' key (keys: {', '.join(sorted(item)) or 'none'})")
            label = item.get("label")
            if key == "test" and "label" not in item:
                raise DataError(f"{where} has no 'label'; test images need label 0 (normal) or 1 (abnormal)")
            if "label" in item:
                if isinstance(label, bool) or not isinstance(label, int) or label not in (0, 1):
                    raise DataError(f"{where}.label is {json.dumps(label)}; expected 0 or 1")
                if key == "training" and label != 0:
                    raise DataError(f"{where}.label is {label}; training images must be normal (label 0)")
            new = dict(item)
            if base is not None:
                new["image"] = resolve_path(item["image"], base, allow_absolute, where=f"{where}.image")
            elif not isinstance(item["image"], str) or not item["image"].strip():
                raise DataError(f"{where}.image is {item['image']!r}; expected a non-empty path string")
            resolved_items.append(new)
        out[key] = resolved_items
    _refuse_repeats(out, source)
    return out


def _refuse_repeats(lists: dict[str, list[dict]], source: str) -> None:
    """One image (same resolved path) twice in a list, or in two lists (a validation or test image that is also a
    training image, a test image also in validation), is refused: repeats silently weight an image twice and overlaps
    leak training images into what is meant to be held out."""
    seen: dict[str, tuple[str, int, Any]] = {}
    for key in DATALIST_KEYS:
        for i, item in enumerate(lists.get(key, [])):
            path = item["image"]
            if path not in seen:
                seen[path] = (key, i, item.get("label"))
                continue
            first, j, label = seen[path]
            where = f"{source}: {key}[{i}].image ({path})"
            if first != key:
                raise DataError(f"{where} is also {first}[{j}]; {key} images must not be {first} images")
            if key == "test" and label != item.get("label"):
                raise DataError(f"{where} is also {first}[{j}] with label {label}; an image cannot be both normal and anomalous")
            raise DataError(f"{where} is listed twice (also {first}[{j}]); remove the repeat")


def read_json_file(path: str | os.PathLike, what: str = "datalist"):
    """Parse a JSON file; a one-line ``DataError`` naming the file when it is missing, unreadable or not JSON.

    Args:
        path: the file.
        what: what the file is, for the messages (``"datalist"``, ``"split"``).
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise DataError(f"{path}: {what} file not found")
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except json.JSONDecodeError as e:
        raise DataError(f"{path}: not valid JSON ({e.msg} at line {e.lineno} column {e.colno})") from e
    except (OSError, UnicodeDecodeError) as e:
        raise DataError(f"{path}: cannot read {what} ({type(e).__name__}: {e})") from e


def load_datalist(
    json_path: str | os.PathLike,
    dataset_dir: str | os.PathLike | None = None,
    allow_absolute: bool = False,
    require: tuple[str, ...] = (),
) -> dict[str, list[dict]]:
    """Read and validate a datalist JSON; resolve image paths to absolute paths.

    Args:
        json_path: the datalist file.
        dataset_dir: folder relative image paths are resolved against; default: the JSON file's folder.
        allow_absolute: accept absolute paths and paths leaving ``dataset_dir`` (``..``, symbolic links).
        require: keys that must be present and non-empty (e.g. ``("training",)`` for training).

    Returns:
        ``{"training": [...], "validation": [...], "test": [...]}`` (only the keys present), each item a copy of the
        JSON object with ``"image"`` an absolute path. Metadata keys are dropped. Files are not opened (see
        ``check_training_files``).

    Raises:
        DataError: missing/invalid JSON, unknown keys, items without ``image``, test items without a 0/1 ``label``,
            training labels other than 0, or paths escaping ``dataset_dir``; the message names the file and key/index.
    """
    json_path = os.fspath(json_path)
    name = json_path
    data = read_json_file(json_path, "datalist")
    base = os.fspath(dataset_dir) if dataset_dir is not None else os.path.dirname(os.path.abspath(json_path))
    if not os.path.isdir(base):
        raise DataError(f"{name}: dataset folder {base} does not exist")
    return validate_datalist(data, name, base, allow_absolute, require)
