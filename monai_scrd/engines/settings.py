"""Start-up checks of a bundle run (training, evaluation, inference): every setting and environment variable is checked
before any data is read, any weights are loaded or any iteration runs, and a bad one stops the run with one line
naming the setting, its value and what is allowed (a :class:`~monai_scrd.data.errors.ConfigError`, printed by
:func:`~monai_scrd.engines.one_line_errors` as ``error: ...``).

The bundle configs call, as the first steps of ``initialize``::

    "$monai_scrd.engines.one_line_errors()",
    "$monai_scrd.engines.check_settings(@checked_settings)",

where ``checked_settings`` maps setting names to their raw values (``{"image_size": "@image_size", ...}``); training
also checks what it would resume from (:func:`check_resume`), evaluation and inference their output folder
(:func:`prepare_output_dir`).
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Mapping

import numpy as np

from monai_scrd.data.errors import ConfigError

__all__ = ["NETWORK_STRIDE", "SETTINGS", "check_settings", "check_environment", "check_resume", "prepare_output_dir",
           "run_outputs"]

# The network works at 1/32 of the image (the one-class bottleneck after the teacher's stride-16 map) and its decoder
# doubles back up to 1/16, 1/8 and 1/4, where the student maps must match the teacher's: a side that is not a multiple
# of 32 ends in a tensor size mismatch (e.g. 100 px: "size of tensor a (15000) must match ... (24576)").
NETWORK_STRIDE = 32

def _is_whole(value) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_))


def _is_number(value) -> bool:
    return isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, (bool, np.bool_)) \
        and math.isfinite(float(value))


def _whole(minimum: int, what: str = "") -> Callable:
    def check(value):
        if not _is_whole(value) or value < minimum:
            return f"a whole number of at least {minimum}{what}"
    return check


def _number(low: float | None = None, high: float | None = None, low_open: bool = False, high_open: bool = False,
            what: str = "") -> Callable:
    def check(value):
        ok = _is_number(value)
        if ok and low is not None:
            ok = value > low if low_open else value >= low
        if ok and high is not None:
            ok = value < high if high_open else value <= high
        if not ok:
            bounds = ""
            if low is not None and high is not None:
                bounds = f" in {'(' if low_open else '['}{low:g}, {high:g}{')' if high_open else ']'}"
            elif low is not None:
                bounds = f" {'>' if low_open else '>='} {low:g}"
            return f"a number{bounds}{what}"
    return check


def _one_of(*allowed: str) -> Callable:
    def check(value):
        if value not in allowed:
            return "one of " + ", ".join(repr(a) for a in allowed)
    return check


def _boolean(value):
    if value is None or isinstance(value, (bool, np.bool_)) or (_is_whole(value) and value in (0, 1)):
        return None
    if isinstance(value, str):
        from monai_scrd.engines.utils import as_bool

        try:
            as_bool(value)
            return None
        except ValueError:
            pass
    return "true or false"


def _image_size(value):
    sides = list(value) if isinstance(value, (list, tuple)) and len(value) == 2 else [value]
    if all(_is_whole(s) and s >= NETWORK_STRIDE and s % NETWORK_STRIDE == 0 for s in sides):
        return None
    bad = next((s for s in sides if _is_whole(s) and s > 0), None)
    example = ""
    if bad is not None:
        low = max(NETWORK_STRIDE, bad // NETWORK_STRIDE * NETWORK_STRIDE)
        example = f", e.g. {low} or {low + NETWORK_STRIDE}" if low != bad else ""
    return (f"a multiple of {NETWORK_STRIDE} (at least {NETWORK_STRIDE}; one number or [height, width]){example}: the "
            f"network works at 1/{NETWORK_STRIDE} of the image and maps back up, so other sizes do not fit")


def _max_iterations(value):
    if isinstance(value, str) and value.strip().lower() == "auto":
        return None
    if (_is_whole(value) or (_is_number(value) and float(value).is_integer())) and value >= 1:  # 1e3 from the CLI
        return None
    return "'auto' or a whole number of at least 1"


def _percentiles(value):
    if (isinstance(value, (list, tuple)) and len(value) == 2 and all(_is_number(p) for p in value)
            and 0 <= value[0] < value[1] <= 100):
        return None
    return "[low, high] with 0 <= low < high <= 100 (percent)"


def _score_reduction(auto: bool) -> Callable:
    def check(value):
        from monai_scrd.scoring.anomaly_map import top_fraction

        if auto and value == "auto":
            return None
        try:
            top_fraction(value)
        except (TypeError, ValueError):
            return ("'auto', " if auto else "") + "'mean', 'max' or 'top<P>%' (0 < P <= 100, e.g. 'top5%')"
    return check


def _color_mode(value):
    from monai_scrd.data.color import COLOR_MODES

    return _one_of(*COLOR_MODES)(value)


def _intensity(value):
    from monai_scrd.data.transforms import INTENSITY_MODES

    return _one_of(*INTENSITY_MODES)(value)


def _backbone(value):
    from monai_scrd.networks.teacher import BACKBONES

    return _one_of(*BACKBONES)(value)


def _backend(value):
    from monai_scrd.scoring.backends import BACKENDS  # (imports torch: only when a config checks its backend)

    return _one_of(*BACKENDS)(value)


def _model_selection(value):
    from monai_scrd.engines.selection import MODEL_SELECTIONS

    return _one_of(*MODEL_SELECTIONS)(value)


def _pretrained_weights(value):
    if _boolean(value) is None:
        return None
    if isinstance(value, str) and value.strip() and os.path.isfile(value):
        return None
    return "true, false or the path of an existing weights file" + (" (no such file)" if isinstance(value, str) else "")


def _resume_from(value):
    if value in ("", None) or (isinstance(value, str) and os.path.isfile(value)):
        return None
    return "empty or the path of an existing training checkpoint (no such file)"


def _inputs(value):
    if isinstance(value, (list, tuple)):
        return None if value else "a folder, a datalist JSON, an image file or a non-empty list of files"
    if isinstance(value, (str, os.PathLike)) and os.path.exists(value):
        return None
    return "an existing folder, datalist JSON or image file (no such path)"


def _threshold_file(value):
    """A present threshold file must hold a finite threshold: read here, its error names the file and the value."""
    from monai_scrd.scoring import read_threshold

    read_threshold(value, missing_ok=True)


# setting -> check returning None when the value is allowed, else what is allowed
SETTINGS: dict[str, Callable] = {
    "image_size": _image_size,
    "batch_size": _whole(1),
    "max_iterations": _max_iterations,
    "threshold_percentile": _number(0, 100, low_open=True, high_open=True,
                                    what=" (the percentile of the validation normals' scores, e.g. 95)"),
    "color_mode": _color_mode,
    "backbone": _backbone,
    "intensity": _intensity,
    "percentiles": _percentiles,
    "score_reduction": _score_reduction(auto=True),
    "backend": _backend,
    "model_selection": _model_selection,
    "learning_rate": _number(0, low_open=True),
    "noise_intensity": _number(0),
    "distillation_weight": _number(0),
    "alpha_floor": _number(0, 1),
    "alpha_temperature": _number(0, low_open=True),
    "validation_fraction": _number(0, 1, high_open=True),
    "seed": _whole(0),
    "num_workers": _whole(0),
    "val_interval": _whole(0, " (0: no validation)"),
    "ckpt_interval": _whole(0, " (0: only the final checkpoint)"),
    "log_interval": _whole(1),
    "synthetic_anomalies_per_normal": _whole(1),
    "pretrained_weights": _pretrained_weights,
    "resume_from": _resume_from,
    "inputs": _inputs,
    "threshold_path": _threshold_file,
    **{name: _boolean for name in ("contrastive", "scale_adaptive", "ratio_of_sums", "calibrate_scales", "resume",
                                    "allow_absolute_paths", "save_heatmaps", "save_nifti", "overwrite", "amp")},
}


def _show(value) -> str:
    return repr(value) if isinstance(value, str) else str(value)


def check_environment(environ: Mapping[str, str] | None = None) -> None:
    """Check the environment variables the bundle reads (``SCRD_MAX_PIXELS``: a whole number of pixels, 0 for no
    limit), so that a bad one is named as the bad setting instead of failing every image.

    Raises:
        ConfigError: one line naming the variable, its value and what is allowed.
    """
    from monai_scrd.data.image import max_pixels

    max_pixels(environ)


def check_settings(settings: Mapping, environ: Mapping[str, str] | None = None) -> None:
    """Check a bundle run's settings (names of :data:`SETTINGS` with their values; the configs pass their raw values,
    ``"@image_size"``...) and environment variables, in that order, before anything is read.

    Raises:
        ConfigError: the first bad one, in one line: ``<setting> <value>: must be <what is allowed>``.
        KeyError: a name that has no check (a config that lists a setting this function does not know).
    """
    unknown = sorted(set(settings) - set(SETTINGS))
    if unknown:
        raise KeyError(f"check_settings: no check for {', '.join(unknown)}")
    for name, value in settings.items():
        allowed = SETTINGS[name](value)
        if allowed:
            raise ConfigError(f"{name} {_show(value)}: must be {allowed}")
    backbone = settings.get("backbone")
    if "threshold_path" in settings and backbone is not None:
        from monai_scrd.scoring import read_threshold

        trained = (read_threshold(settings["threshold_path"], missing_ok=True) or {}).get("backbone")
        if trained and trained != backbone:
            raise ConfigError(f"backbone {backbone!r}: must be the one the model was trained with, {trained!r} "
                              f"({settings['threshold_path']}); pass --backbone {trained}")
    check_environment(environ)


def _teacher_mismatch(state: Mapping, backbone: str) -> int:
    """How many of the checkpoint's ``teacher.*`` tensors are missing from or shaped unlike ``backbone``'s teacher
    (built on the meta device: shapes only, no memory, the global random state left as it was)."""
    import torch

    from monai_scrd.networks.teacher import TeacherEncoder

    with torch.random.fork_rng(devices=[]), torch.device("meta"):
        own = {f"teacher.{k}": v.shape for k, v in TeacherEncoder(backbone, pretrained=False).state_dict().items()}
    theirs = {k: tuple(v.shape) for k, v in state.items() if k.startswith("teacher.") and hasattr(v, "shape")}
    return sum(1 for k in own.keys() | theirs.keys() if k not in own or k not in theirs or tuple(own[k]) != theirs[k])


def check_resume(resume, resume_from, ckpt_dir, backbone: str) -> str | None:
    """What training resumes from (:func:`~monai_scrd.engines.resolve_resume`), checked before any data is read: the
    file must load as a weights-only checkpoint, hold ``model``, ``optimizer`` and ``trainer``, and its teacher must
    be ``backbone``'s. Returns the path (None when not resuming).

    Raises:
        ConfigError: ``--resume true`` with no usable checkpoint, or ``resume_from`` not found.
        CheckpointError: an unreadable file, not a training checkpoint, or a checkpoint of another backbone (naming it
            when it is one of the known backbones).
    """
    from monai_scrd.checkpoint import CheckpointError, load_weights_file
    from monai_scrd.engines.utils import resolve_resume
    from monai_scrd.networks.teacher import BACKBONES

    path = resolve_resume(resume, resume_from, ckpt_dir)
    if not path:
        return None
    data = load_weights_file(path)
    missing = [k for k in ("model", "optimizer", "trainer") if k not in data]
    if missing:
        raise CheckpointError(f"{path}: not a resumable training checkpoint (missing {missing}); use a file from "
                              "ckpt_dir (checkpoints/), not models/model.pt")
    state = data["model"] if isinstance(data["model"], Mapping) else {}
    if backbone in BACKBONES and _teacher_mismatch(state, backbone):
        trained = next((b for b in BACKBONES if b != backbone and not _teacher_mismatch(state, b)), None)
        what = f"a checkpoint of backbone {trained!r}" if trained else "its teacher weights fit no known backbone"
        raise CheckpointError(f"{path}: {what}, not {backbone!r}" + (f"; resume with --backbone {trained}" if trained else ""))
    return path


def run_outputs(folder: str | os.PathLike) -> list[str]:
    """The files in ``folder`` that an evaluation or inference run writes (``scores.csv``, ``errors.csv``,
    ``metrics.json``, ``roc_curve.png``, ``score_histogram.png``, ``synthetic_validation.json``,
    ``heatmaps/*.png``, ``maps/*_anomaly_map.nii.gz``), as paths."""
    folder = os.fspath(folder)
    names = ("scores.csv", "errors.csv", "metrics.json", "roc_curve.png", "score_histogram.png",
             "synthetic_validation.json")
    out = [os.path.join(folder, n) for n in names if os.path.isfile(os.path.join(folder, n))]
    for sub, suffix in (("heatmaps", ".png"), ("maps", "_anomaly_map.nii.gz")):
        d = os.path.join(folder, sub)
        if os.path.isdir(d):
            out += sorted(os.path.join(d, n) for n in os.listdir(d)
                          if n.endswith(suffix) and os.path.isfile(os.path.join(d, n)))
    return out


def prepare_output_dir(folder: str | os.PathLike, overwrite=False, setting: str = "output_dir") -> str:
    """Make sure one run's results never mix with another's: ``folder`` must be empty (or not exist yet); with
    ``overwrite`` the files an earlier evaluation/inference run wrote there (:func:`run_outputs`) are deleted first and
    anything else is left alone. Returns the folder.

    Raises:
        ConfigError: ``folder`` holds files and ``overwrite`` is off (one line naming the setting and what is there).
    """
    from monai_scrd.engines.utils import as_bool

    folder = os.fspath(folder)
    if os.path.exists(folder) and not os.path.isdir(folder):
        raise ConfigError(f"{setting} {folder!r}: must be a folder (it is a file)")
    if not os.path.isdir(folder):
        return folder
    if as_bool(overwrite):
        for path in run_outputs(folder):
            os.remove(path)
        for sub in ("heatmaps", "maps"):
            d = os.path.join(folder, sub)
            if os.path.isdir(d) and not os.listdir(d):
                os.rmdir(d)
        return folder
    entries = sorted(os.listdir(folder))
    if entries:
        ours = run_outputs(folder)
        shown = ", ".join(entries[:4]) + (f" and {len(entries) - 4} more" if len(entries) > 4 else "")
        what = "the results of an earlier run" if ours else "other files"
        raise ConfigError(f"{setting} {folder!r}: must be empty, and it holds {what} ({shown}); pass --overwrite true "
                          f"to replace an earlier run's results there, or choose another --{setting}")
    return folder
