"""Small helpers used by the SCRD bundle configs: bundle location, datalists, ranks, checkpoints."""

from __future__ import annotations

import glob
import logging
import os
import sys
from collections.abc import Sequence

import torch

from monai_scrd.data.errors import ConfigError, DataError

logger = logging.getLogger("monai_scrd.engines")

__all__ = [
    "find_bundle_root",
    "as_bool",
    "is_rank0",
    "unwrap",
    "split_datalist",
    "training_items",
    "validation_items",
    "one_line_errors",
    "TrainingInterrupted",
    "list_inputs",
    "latest_checkpoint",
    "resolve_resume",
    "resolve_pretrained",
]


def find_bundle_root() -> str:
    """The bundle folder (the one holding ``configs/``), for the default ``bundle_root``: the current directory when it
    is the bundle, else ``./bundles/scrd`` (a checkout of the repository).

    Raises:
        ValueError: neither; run from the bundle folder or pass ``--bundle_root /path/to/bundle``.
    """
    cwd = os.getcwd()
    if os.path.isfile(os.path.join(cwd, "configs", "train.json")):
        return cwd
    if os.path.isdir(os.path.join(cwd, "bundles", "scrd", "configs")):
        return os.path.join(cwd, "bundles", "scrd")
    from monai_scrd.data.errors import ConfigError

    raise ConfigError(f"cannot tell where the SCRD bundle is from {cwd}: run from the bundle folder or pass "
                      "--bundle_root /path/to/bundle")


class TrainingInterrupted(KeyboardInterrupt):
    """Training stopped on SIGINT/SIGTERM after saving a resumable checkpoint; the message says where and how to
    continue (:class:`~monai_scrd.engines.TrainerCheckpointSaver`)."""


class _MissingCheckpoint(ConfigError, FileNotFoundError):
    """Resuming was asked for, but there is no checkpoint to resume from (a setting error, and a missing file)."""


def _user_error(exc: BaseException | None) -> BaseException | None:
    """The first error in ``exc``'s cause chain that carries a message for the user (bad data, checkpoint, setting,
    or an interruption by the user)."""
    from monai_scrd.checkpoint import CheckpointError

    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, (DataError, CheckpointError, ConfigError, KeyboardInterrupt)):
            return exc
        exc = exc.__cause__ or exc.__context__
    return None


class _QuietUserErrors(logging.Filter):
    """Drops the log records that Ignite and MONAI write for an error that is about to end the command with its own
    ``error:`` line: Ignite's "Engine run is terminating due to exception" and MONAI's ``StatsHandler``
    "Exception: ..." with its traceback. Other records pass."""

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        if exc is None and record.levelno >= logging.ERROR and "terminating due to exception" in str(record.msg):
            exc = sys.exc_info()[1]  # Ignite logs it inside its ``except`` block
        return exc is None or _user_error(exc) is None


# loggers that log an exception before re-raising it: Ignite's engines (the trainer, and the evaluators run during
# training, by evaluation and inference) and MONAI's StatsHandler (its default logger name)
_EXCEPTION_LOGGERS = ("ignite.engine.engine.SupervisedTrainer", "ignite.engine.engine.SupervisedEvaluator",
                      "ignite.engine.engine.Engine", "monai.handlers.StatsHandler")


def _quiet_user_error_logs() -> None:
    from monai.apps.utils import get_logger

    quiet = _QuietUserErrors()
    for name in _EXCEPTION_LOGGERS:
        # MONAI's StatsHandler gives its logger a stdout handler only when it does not exist yet: made here as MONAI
        # makes it (get_logger), so that its output stays the same
        logger_ = get_logger(name) if name.startswith("monai.") else logging.getLogger(name)
        if not any(isinstance(f, _QuietUserErrors) for f in logger_.filters):
            logger_.addFilter(quiet)
    for handler in logging.getLogger().handlers:
        if not any(isinstance(f, _QuietUserErrors) for f in handler.filters):
            handler.addFilter(quiet)


def one_line_errors(debug_env: str = "SCRD_DEBUG") -> None:
    """Make a bundle command that fails on bad data, a bad checkpoint or a bad setting print one line on stderr
    (``error: <file or setting>: <what is wrong>``) and exit with status 1, instead of MONAI's 80-line traceback ending
    in ``Failed to evaluate ConfigExpression``; other errors keep their traceback. An error that lists several files
    (e.g. every unreadable training image) prints that list below its line, one file a line. An interruption (Ctrl-C,
    or training stopped by SIGINT/SIGTERM: :class:`TrainingInterrupted`) is one line too. The log records that Ignite
    and MONAI's ``StatsHandler`` write for such an error on its way out (with a traceback) are dropped.
    ``$SCRD_DEBUG=1`` keeps every traceback. Installed by the bundle configs' ``initialize`` step (``sys.excepthook``,
    so it acts only on an error that ends the command)."""
    if os.environ.get(debug_env, "").strip() not in ("", "0"):
        return
    previous = sys.excepthook
    if getattr(previous, "scrd_one_line", False):
        return
    _quiet_user_error_logs()

    def hook(exc_type, exc, tb):
        found = _user_error(exc)
        if found is None:
            return previous(exc_type, exc, tb)
        from monai_scrd.data.errors import one_line

        hint = f"(set {debug_env}=1 for the traceback)"
        if isinstance(found, KeyboardInterrupt):
            text = str(found).strip() if isinstance(found, TrainingInterrupted) else "interrupted (Ctrl-C)"
            print(f"error: {text}", file=sys.stderr, flush=True)
            return
        first, *listed = [ln.strip() for ln in str(found).splitlines() if ln.strip()] or [one_line(found)]
        if listed:
            print("\n".join([f"error: {first}", *(f"  {ln}" for ln in listed), hint]), file=sys.stderr, flush=True)
        else:
            print(f"error: {one_line(first, limit=2000)} {hint}", file=sys.stderr, flush=True)

    hook.scrd_one_line = True
    sys.excepthook = hook


EPOCHS = 15
MIN_ITERATIONS, MAX_ITERATIONS = 300, 3000


def resolve_iterations(max_iterations, n_images: int, batch_size: int) -> int:
    """The training length: ``max_iterations`` itself, or for ``"auto"`` a schedule from the data set's size,
    ``EPOCHS`` passes over the training images, at least ``MIN_ITERATIONS`` and at most ``MAX_ITERATIONS``.

    Why 15 passes: on the brain split (900 training images, batch 8) test AUROC still rose from 1000 to 1500 and 2500
    iterations (9, 13 and 22 passes; benchmarks/RESULTS.md), so fewer passes under-train; the cap keeps a CPU run of a
    large set within hours. This rule was read from that test table, not from the user's data.

    Raises:
        ValueError: neither ``"auto"`` nor a whole number of at least 1 (one line naming the setting).
    """
    if isinstance(max_iterations, str) and max_iterations.strip().lower() == "auto":
        passes = EPOCHS * max(1, int(n_images)) / max(1, int(batch_size))
        return int(min(MAX_ITERATIONS, max(MIN_ITERATIONS, round(passes))))
    try:
        value = int(max_iterations)
    except (TypeError, ValueError):
        value = 0
    if isinstance(max_iterations, bool) or value < 1 or value != float(max_iterations):
        raise ValueError(f"max_iterations {max_iterations!r} is not 'auto' or a whole number of at least 1")
    return value


def as_bool(value) -> bool:
    """``True``/``False`` from a config or command-line value (``"true"``, ``"0"``, ``None``, ``1``...)."""
    if isinstance(value, str):
        v = value.strip().lower()
        if v in ("", "0", "false", "no", "off", "none", "null"):
            return False
        if v in ("1", "true", "yes", "on"):
            return True
        raise ValueError(f"cannot read {value!r} as true/false")
    return bool(value)


def is_rank0() -> bool:
    """Whether this process is rank 0 (or not distributed)."""
    return not (torch.distributed.is_available() and torch.distributed.is_initialized()) or torch.distributed.get_rank() == 0


def unwrap(network: torch.nn.Module) -> torch.nn.Module:
    """The module inside ``DistributedDataParallel`` / ``DataParallel`` (or the network itself)."""
    return network.module if isinstance(network, (torch.nn.parallel.DistributedDataParallel, torch.nn.DataParallel)) else network


def _training_and_validation(
    datalist: str | os.PathLike, base_dir: str | None, allow_absolute: bool, validation_fraction: float,
    require: tuple[str, ...] = (),
) -> tuple[list[dict], list[dict], int]:
    """The datalist's training and validation items; without a validation list, ``validation_fraction`` of the
    training items (seed 0, as ``python -m monai_scrd.prepare --val-fraction``) are held out as validation. Returns
    ``(training, validation, number held out)``."""
    from monai_scrd.data.datalist import load_datalist
    from monai_scrd.data.prepare import check_validation_fraction, hold_out_validation

    fraction = check_validation_fraction(validation_fraction, setting="validation_fraction")
    data = load_datalist(datalist, dataset_dir=base_dir, allow_absolute=as_bool(allow_absolute), require=require)
    training, validation = data.get("training", []), data.get("validation", [])
    if validation or len(training) < 2:
        return training, validation, 0
    training, validation = hold_out_validation(training, fraction, seed=0, setting="validation_fraction")
    return training, validation, len(validation)


def training_items(
    datalist: str | os.PathLike,
    base_dir: str | None = None,
    allow_absolute: bool = False,
    check_files: bool = True,
    validation_fraction: float = 0.0,
) -> list[dict]:
    """The datalist's ``training`` items (see :func:`monai_scrd.data.load_datalist`), less those
    :func:`validation_items` holds out when the datalist has no validation list (``validation_fraction``), after
    checking that every training image can be read (:func:`monai_scrd.data.check_training_files`): training refuses
    to start on bad data and names *all* unreadable images at once.

    Raises:
        DataError: invalid datalist, no training images, a ``validation_fraction`` outside [0, 1), or unreadable
            training images (one line each).
    """
    items, _, _ = _training_and_validation(datalist, base_dir, allow_absolute, validation_fraction, require=("training",))
    if check_files:
        from monai_scrd.data.robust import check_training_files

        check_training_files(items)
    return items


def split_datalist(
    datalist: str | os.PathLike,
    base_dir: str | None = None,
    allow_absolute: bool = False,
    check_files: bool = True,
    validation_fraction: float = 0.0,
    with_training: bool = True,
) -> dict[str, list[dict]]:
    """``{"training": training_items(...), "validation": validation_items(...)}``: the one split of a datalist that
    ``train.json`` reads both lists from (training checked first). ``with_training=False`` (evaluation) leaves
    ``training`` empty and does not require it."""
    args = (datalist, base_dir, allow_absolute, check_files, validation_fraction)
    return {"training": training_items(*args) if with_training else [], "validation": validation_items(*args)}


def validation_items(
    datalist: str | os.PathLike,
    base_dir: str | None = None,
    allow_absolute: bool = False,
    check_files: bool = True,
    validation_fraction: float = 0.0,
) -> list[dict]:
    """The datalist's ``validation`` items, the held-out normals that the decision threshold, the per-scale
    calibration and the synthetic validation are fitted on. Without a validation list, ``validation_fraction`` of the
    training items are held out instead (a random, fixed subset, seed 0; :func:`training_items` leaves them out), so
    that a datalist made without validation still gives a calibrated model with a threshold; with a fraction of 0 it
    is ``[]`` (a warning: nothing is fitted). Every item is checked to be readable: the threshold and model selection
    are never fitted on the readable part of the list only.

    Raises:
        DataError: invalid datalist, a ``validation_fraction`` outside [0, 1), or unreadable validation images (one
            line each, all at once).
    """
    training, items, held_out = _training_and_validation(datalist, base_dir, allow_absolute, validation_fraction)
    if held_out:
        logger.info(f"{os.fspath(datalist)} has no validation list: {held_out} of the {len(training) + held_out} "
                    f"training normals are held out (validation_fraction {validation_fraction}, seed 0) for the decision "
                    "threshold, the scale calibration and the synthetic validation")
    elif not items and training:  # (a datalist without training images only scores: nothing to fit)
        logger.warning(f"{os.fspath(datalist)} has no validation list and none is held out (validation_fraction "
                       f"{validation_fraction}, {len(training)} training images): no decision threshold and no scale "
                       "calibration are fitted (the scores stay uncalibrated)")
    if check_files and items:
        from monai_scrd.data.robust import check_training_files

        check_training_files(items, what="validation")
    if items and training:
        warn_validation_copies(training, items)
    return items


def warn_validation_copies(training: Sequence[dict], validation: Sequence[dict]) -> int:
    """Log one warning when validation images are byte-identical (same SHA-1 of the file's bytes) to training images:
    the threshold and the calibration are then fitted partly on images the model was trained on. Not refused. Only
    plain files are compared (a DICOM series folder is not). Returns the number of such validation images."""
    from monai_scrd.data.prepare import byte_identical, sha1_file

    def digest(path) -> str | None:
        try:
            return sha1_file(path) if os.path.isfile(path) else None
        except OSError:
            return None

    copies = [(os.fspath(it["image"]), os.fspath(paths[0])) for it, _, paths in byte_identical(training, validation, digest)]
    if copies:
        val, train = copies[0]
        logger.warning(f"{len(copies)} of the {len(validation)} validation images are byte-identical to training images "
                       f"(e.g. {val} = {train}): the decision threshold and the calibration are fitted partly on "
                       "trained-on images; remove the copies from the validation list")
    return len(copies)


def _datalist_inputs(source: str, key: str, allow_absolute: bool) -> list[dict]:
    """``[{"image": path}, ...]`` of a datalist JSON for scoring: its ``key`` list, else all lists. Labels are not
    required (unlike :func:`load_datalist` for ``test``), but paths are checked the same way."""
    from monai_scrd.data.datalist import DATALIST_KEYS, read_json_file, resolve_path
    from monai_scrd.data.errors import DataError

    content = read_json_file(source, "datalist")
    if not isinstance(content, dict):
        raise DataError(f"{source}: top level is a JSON {type(content).__name__}; expected an object with keys "
                        f"{', '.join(DATALIST_KEYS)}")
    base = os.path.realpath(os.path.dirname(os.path.abspath(source)))
    keys = [key] if content.get(key) else [k for k in DATALIST_KEYS if content.get(k)]
    out = []
    for k in keys:
        items = content[k]
        if not isinstance(items, list):
            raise DataError(f"{source}: {k} is a JSON {type(items).__name__}; expected a list of {{\"image\": ...}} objects")
        for i, item in enumerate(items):
            where = f"{source}: {k}[{i}]"
            if isinstance(item, str):
                item = {"image": item}
            if not isinstance(item, dict) or "image" not in item:
                raise DataError(f"{where} has no 'image' entry")
            out.append({**item, "image": resolve_path(item["image"], base, as_bool(allow_absolute), where=f"{where}.image")})
    return out


def list_inputs(
    source: str | os.PathLike | Sequence[str], key: str = "test", allow_absolute: bool = False
) -> list[dict]:
    """Images to score: a folder (searched recursively for PNG/JPEG/DICOM/NIfTI/..., each DICOM series folder one
    volume: ``monai_scrd.data.list_image_inputs``), a datalist JSON (its ``key`` list, falling back to all lists; paths
    as in :func:`load_datalist`, so absolute paths and paths leaving the JSON's folder need ``allow_absolute``), a
    single image file, or a list of paths. Returns ``[{"image": path}, ...]``."""
    if isinstance(source, (list, tuple)):
        return [{"image": os.fspath(p)} for p in source]
    source = os.fspath(source)
    if os.path.isdir(source):
        from monai_scrd.data.readers import list_image_inputs

        return [{"image": p} for p in list_image_inputs(source)]
    if source.lower().endswith(".json"):
        return _datalist_inputs(source, key, allow_absolute)
    return [{"image": source}]


def _checkpoint_iteration(path: str) -> int:
    try:
        data = torch.load(path, map_location="cpu", weights_only=True)
        return int(data.get("trainer", {}).get("iteration", -1))
    except Exception:  # unreadable/partial file: never picked
        return -2


def latest_checkpoint(ckpt_dir: str | os.PathLike) -> str | None:
    """The checkpoint in ``ckpt_dir`` with the highest saved trainer iteration (None if there is none); unreadable
    (e.g. truncated) files are skipped with a warning naming them."""
    files = glob.glob(os.path.join(os.fspath(ckpt_dir), "*.pt"))
    iterations = {p: _checkpoint_iteration(p) for p in files}
    for p, it in iterations.items():
        if it == -2:
            logger.warning(f"{p}: unreadable checkpoint (truncated?), skipped")
    best = max(files, key=lambda p: (iterations[p], os.path.getmtime(p)), default=None)
    if best is None or iterations[best] < 0:
        return None
    return best


def resolve_resume(resume, resume_from, ckpt_dir) -> str | None:
    """Checkpoint to resume from: ``resume_from`` if given, else with ``resume`` true the latest one in ``ckpt_dir``.

    Raises:
        ConfigError: resuming was asked for but there is nothing to resume from (also a ``FileNotFoundError``).
    """
    if resume_from:
        path = os.fspath(resume_from)
        if not os.path.isfile(path):
            raise _MissingCheckpoint(f"resume_from {path!r}: checkpoint file not found")
        return path
    if not as_bool(resume):
        return None
    path = latest_checkpoint(ckpt_dir)
    if path is None:
        raise _MissingCheckpoint(f"resume true: no training checkpoint in {ckpt_dir} to resume from (none saved there "
                                 "yet, or only unreadable ones); train without --resume, or pass --resume_from a file")
    return path


def resolve_pretrained(pretrained_weights):
    """``pretrained`` argument of SCRD from the ``pretrained_weights`` config value: true/false or a local path."""
    if isinstance(pretrained_weights, str) and pretrained_weights.strip().lower() not in (
        "", "0", "1", "true", "false", "none", "null", "yes", "no", "on", "off"
    ):
        return pretrained_weights
    return as_bool(pretrained_weights)


def load_model_weights(network: torch.nn.Module, path: str | os.PathLike) -> torch.nn.Module:
    """Load a bundle checkpoint (``{"model": state_dict}``, a training checkpoint, or a bare state dict) into
    ``network`` with a clear error naming the file when it is missing or does not fit."""
    from monai_scrd.checkpoint import extract_state_dict, load_state_dict_checked, load_weights_file

    path = os.fspath(path)
    data = load_weights_file(path)
    load_state_dict_checked(unwrap(network), extract_state_dict(data, path), path)
    return network


__all__ += ["load_model_weights"]
