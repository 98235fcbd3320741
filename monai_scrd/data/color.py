"""Colour modes: whether a model sees images as grayscale (replicated to 3 channels) or as RGB.

ImageNet teachers were trained on colour, and where colour carries the anomaly (dermoscopy, pathology, endoscopy) a
grayscale pipeline cannot see a change of hue at constant luminance. ``color_mode`` is one of:

* ``"grayscale"``: RGB averaged to one channel, replicated to 3 (the right choice for MRI, CT, X-ray);
* ``"rgb"``: the three colour channels kept (alpha dropped; a grayscale source is replicated);
* ``"auto"``: decided from the data set as a whole: ``"rgb"`` when at least half of the sources are genuinely colour,
  ``"grayscale"`` otherwise (a mix is never refused; the minority is converted, see :func:`resolve_color_mode`).

A source is *colour* when it has three or more channels that differ (a colour PNG/JPEG/TIFF, a DICOM with
PhotometricInterpretation RGB or YBR_*, which pydicom converts to RGB); MONOCHROME DICOM, NIfTI and single-channel
files are grayscale, and so is a grayscale picture stored as RGB (common for exported MRI slices), recognised by its
near-equal channels (see :func:`image_color_mode`). A trained model records its resolved mode (``threshold.json``,
the registered model's spec, MONAI Label's ``/info/``). An rgb model scores any image (a grayscale source replicated,
a pale RGB one with its channels kept); a grayscale model refuses a genuinely colour image, since averaging its hue
away would hide what such data may carry: it is not the kind of data the model learned (:func:`check_color_mode`).
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterable, Mapping

import numpy as np

from monai_scrd.data.errors import DataError, one_line

__all__ = [
    "COLOR_MODES",
    "image_color_mode",
    "source_color_mode",
    "resolve_color_mode",
    "check_color_mode",
    "trained_color_mode",
]

logger = logging.getLogger("monai_scrd.data")

COLOR_MODES = ("auto", "grayscale", "rgb")
# A pixel is chromatic when its channels spread over more than CHROMA_SPREAD of the image's intensity range; an image
# is colour when more than COLOR_FRACTION of its pixels are. Measured on 1,790 RGB-stored grayscale brain MRI JPEGs
# (JPEG chroma noise, a few burned-in annotations): at most 4.8% chromatic pixels, median 0. Dermoscopy, endoscopy and
# stained tissue are chromatic almost everywhere.
CHROMA_SPREAD = 0.1
COLOR_FRACTION = 0.1
_GRAY_PIL_MODES = ("1", "L", "LA", "I", "F")
_MAX_SAMPLED_PIXELS = 1 << 18  # the colour test looks at a strided subset of larger images


def _check_mode(color_mode: str, allowed: tuple[str, ...] = COLOR_MODES) -> str:
    if color_mode not in allowed:
        raise ValueError(f"color_mode {color_mode!r} is not one of {allowed}")
    return color_mode


def image_color_mode(array) -> str:
    """``"rgb"`` or ``"grayscale"`` for a channel-first image array ``[C, H, W]`` (numpy or torch).

    Colour means at least three channels of which more than ``COLOR_FRACTION`` of the pixels have a channel spread
    (max - min over R, G, B) above ``CHROMA_SPREAD`` of the image's intensity range; a fourth (alpha) channel is
    ignored.
    """
    arr = array.detach().cpu().numpy() if hasattr(array, "detach") else np.asarray(array)
    if arr.ndim != 3 or arr.shape[0] < 3:
        return "grayscale"
    rgb = arr[:3]
    step = max(1, int(np.ceil(np.sqrt(rgb.shape[1] * rgb.shape[2] / _MAX_SAMPLED_PIXELS))))
    rgb = rgb[:, ::step, ::step].astype(np.float32, copy=False)
    value_range = float(rgb.max() - rgb.min())
    if value_range <= 0:
        return "grayscale"
    chromatic = (rgb.max(axis=0) - rgb.min(axis=0)) > CHROMA_SPREAD * value_range
    return "rgb" if float(chromatic.mean()) > COLOR_FRACTION else "grayscale"


def source_color_mode(path: str | os.PathLike, apply_voi: bool = True) -> str:
    """``"rgb"`` or ``"grayscale"`` for an image file (see :func:`image_color_mode`); headers answer for MONOCHROME
    DICOM, NIfTI and single-channel PNG/JPEG/TIFF without decoding the pixels, and JPEGs are decoded at 1/4 scale.

    Raises:
        DataError: the file cannot be read (one line naming it).
    """
    from monai_scrd.data.formats import detect_format
    from monai_scrd.data.readers import read_medical_image

    path = os.fspath(path)
    fmt = detect_format(path) if os.path.isfile(path) else None
    try:
        if fmt == "nifti":
            return "grayscale"  # the reader refuses RGB NIfTI
        if fmt == "dicom":
            import pydicom

            header = pydicom.dcmread(path, stop_before_pixels=True)
            if int(header.get("SamplesPerPixel", 1) or 1) == 1:
                return "grayscale"
        elif fmt == "pil":
            from PIL import Image

            with Image.open(path) as im:
                if im.mode in _GRAY_PIL_MODES or im.mode.startswith("I;16"):
                    return "grayscale"
                if im.mode in ("RGB", "RGBA", "P", "PA", "CMYK", "YCbCr"):
                    im.draft("RGB", (max(1, im.width // 4), max(1, im.height // 4)))  # JPEG: decode at 1/4 scale
                    return image_color_mode(np.moveaxis(np.asarray(im.convert("RGB")), -1, 0))
    except Exception:  # noqa: BLE001, S110 - unreadable file: the full read below names the problem
        pass
    image = read_medical_image(path, allow_volume=True, apply_voi=apply_voi)
    return "grayscale" if image.is_volume else image_color_mode(image.array)


def resolve_color_mode(items: Iterable[str | os.PathLike | Mapping], color_mode: str = "auto", key: str = "image") -> str:
    """The colour mode of a training run: ``color_mode`` itself unless it is ``"auto"``, else the mode of the data set
    as a whole: ``"rgb"`` when at least half of the readable sources are colour (:func:`source_color_mode`; a tie goes
    to rgb), else ``"grayscale"`` (also when there are none). A mix is never refused: under ``"rgb"`` the few pale or
    grayscale images keep their channels or have their one channel replicated, under ``"grayscale"`` the few colour
    ones are averaged. Logs the choice once, with the counts.

    Args:
        items: image paths or datalist items holding the path under ``key`` (training and validation images).
        color_mode: ``"auto"``, ``"grayscale"`` or ``"rgb"``.
        key: the datalist key holding the image path.

    Raises:
        ValueError: unknown ``color_mode``.
    """
    _check_mode(color_mode)
    paths = [os.fspath(it[key]) if isinstance(it, Mapping) else os.fspath(it) for it in items]
    if color_mode != "auto":
        logger.info(f"color_mode {color_mode!r} (set explicitly) for {len(paths)} images")
        return color_mode
    counts = {"rgb": 0, "grayscale": 0}
    for path in paths:
        try:
            counts[source_color_mode(path)] += 1
        except DataError:
            continue  # unreadable files are reported by the data checks and loaders, not here
    total = counts["rgb"] + counts["grayscale"]
    mode = "rgb" if total and 2 * counts["rgb"] >= total else "grayscale"
    if mode == "rgb":
        detail = f"{counts['rgb']} of {total} source images are colour"
        if counts["grayscale"]:
            detail += (f"; {counts['grayscale']} pale or grayscale ones are read as rgb with their channels kept or a "
                       "grayscale channel replicated")
    else:
        detail = f"{counts['grayscale']} of {total} source images are grayscale"
        if counts["rgb"]:
            detail += f"; {counts['rgb']} colour ones are averaged to grayscale"
    logger.info(f"color_mode 'auto' -> {mode!r} ({detail})")
    return mode


def check_color_mode(array, model_mode: str | None, source: str | os.PathLike = "image") -> str:
    """Refuse a colour image for a grayscale model; return the image's mode.

    An ``"rgb"`` model accepts every image: a grayscale source is replicated to 3 channels and a pale (grayscale-
    looking) RGB image keeps its channels. A ``"grayscale"`` model refuses a genuinely colour image
    (:func:`image_color_mode`): averaging its hue away would hide what colour data may carry, and a colour photo is not
    the kind of data the model learned.

    Args:
        array: the image as read, channel-first ``[C, H, W]`` (before any grayscale conversion).
        model_mode: the model's resolved mode, ``"grayscale"`` or ``"rgb"``; ``None`` or ``"auto"`` checks nothing.
        source: the file, for the message.

    Raises:
        DataError: a colour image for a grayscale model (one line naming ``source``, the image's mode and the model's).
    """
    mode = image_color_mode(array)
    if model_mode == "grayscale" and mode == "rgb":
        raise DataError(
            f"{os.fspath(source)}: {mode} image, but the model was trained on {model_mode} images (color_mode "
            f"{model_mode!r}); score it with a model trained on {mode} images"
        )
    return mode


def trained_color_mode(threshold_path: str | os.PathLike | None, default: str = "auto") -> str:
    """The colour mode a trained bundle recorded in its threshold file (``"color_mode"``), for evaluation and inference.

    Args:
        threshold_path: the ``threshold.json`` written by training.
        default: used when the file or its ``color_mode`` is missing: a concrete ``"grayscale"``/``"rgb"`` as is;
            ``"auto"`` means ``"grayscale"``, which is what models trained before colour modes existed saw.

    Raises:
        DataError: the file exists but is not readable JSON, or records an unknown mode.
    """
    _check_mode(default)
    recorded = None
    if threshold_path and os.path.isfile(os.fspath(threshold_path)):
        path = os.fspath(threshold_path)
        try:
            with open(path) as f:
                record = json.load(f)
        except (OSError, json.JSONDecodeError) as e:
            raise DataError(f"{path}: not a readable threshold file ({one_line(e)})") from e
        recorded = record.get("color_mode") if isinstance(record, Mapping) else None
        if recorded is not None and recorded not in ("grayscale", "rgb"):
            raise DataError(f"{path}: color_mode {recorded!r} is not 'grayscale' or 'rgb'")
    if recorded is not None:
        return str(recorded)
    return "grayscale" if default == "auto" else default
