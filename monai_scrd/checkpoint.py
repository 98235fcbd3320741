"""Safe checkpoint loading: ``torch.load(weights_only=True)`` plus errors that name the file and what is wrong."""

from __future__ import annotations

import os
import warnings
from collections.abc import Mapping

import torch
from torch import nn

__all__ = ["CheckpointError", "load_weights_file", "extract_state_dict", "load_state_dict_checked"]


class CheckpointError(ValueError):
    """A checkpoint file that is missing, unreadable or does not fit the model it is loaded into."""


def _load_failure(exc: BaseException) -> str:
    """What is wrong with a file ``torch.load(weights_only=True)`` refused, in a few words, without PyTorch's advice to
    retry with ``weights_only=False`` (which would run whatever code the file holds)."""
    import pickle

    text = " ".join(str(exc).split())
    if isinstance(exc, EOFError) or "file is empty" in text:
        return "the file is empty or cut short"
    if "zip archive" in text or "central directory" in text or "PytorchStreamReader" in text:
        return "truncated or corrupt: its zip archive cannot be read"
    if isinstance(exc, pickle.UnpicklingError) or "Weights only load failed" in text:
        return ("not a file of tensors: it holds other Python objects, is an old or foreign format, or is not a torch "
                "file at all; such files are not unpickled, since that can run code")
    first = text.split(". ")[0][:200] or type(exc).__name__
    return f"not a torch.save file ({type(exc).__name__}: {first})"


def load_weights_file(path: str | os.PathLike) -> dict:
    """Load a checkpoint without unpickling arbitrary objects (``weights_only=True``).

    Args:
        path: file written by ``torch.save``.

    Raises:
        CheckpointError: the file is missing, truncated, not a torch file, or holds objects that are not plain tensors/containers.
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise CheckpointError(f"{path}: checkpoint file not found")
    try:
        with warnings.catch_warnings():  # e.g. "Detected pickle protocol 4": the error below says what is wrong
            warnings.simplefilter("ignore")
            data = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises RuntimeError, UnpicklingError, EOFError, zipfile errors...
        raise CheckpointError(f"{path}: not a readable weights-only torch checkpoint ({_load_failure(e)})") from e
    if not isinstance(data, Mapping):
        raise CheckpointError(f"{path}: expected a dict of tensors, found {type(data).__name__}")
    return dict(data)


def extract_state_dict(data: Mapping, path: str, key: str | None = None) -> dict:
    """Return the state dict inside a checkpoint dict: ``data[key]`` or, if ``key`` is None,
    the first of ``model``/``state_dict``/``network`` that is present, else ``data`` itself."""
    if key is not None:
        if key not in data:
            raise CheckpointError(f"{path}: no key {key!r} in checkpoint (keys: {sorted(data)[:10]})")
        return dict(data[key])
    for candidate in ("model", "state_dict", "network"):
        if candidate in data and isinstance(data[candidate], Mapping):
            return dict(data[candidate])
    return dict(data)


def load_state_dict_checked(module: nn.Module, state_dict: Mapping, source: str, strict: bool = True) -> None:
    """``module.load_state_dict`` with one clear error naming ``source`` and listing what does not fit.

    Args:
        module: the module to load into.
        state_dict: parameters and buffers.
        source: the file (or description) the state dict came from, used in the error message.
        strict: whether keys must match exactly (shapes must always match).
    """
    own = module.state_dict()
    mismatched = [k for k, v in state_dict.items() if k in own and hasattr(v, "shape") and tuple(v.shape) != tuple(own[k].shape)]
    shape_mismatch = [f"{k}: file {tuple(state_dict[k].shape)} vs model {tuple(own[k].shape)}" for k in mismatched]
    missing = [k for k in own if k not in state_dict]
    unexpected = [k for k in state_dict if k not in own]
    problems = []
    if shape_mismatch:
        problems.append(f"{len(shape_mismatch)} shape mismatches (e.g. {'; '.join(shape_mismatch[:3])})")
    if strict and missing:
        problems.append(f"{len(missing)} missing keys (e.g. {', '.join(missing[:3])})")
    if strict and unexpected:
        problems.append(f"{len(unexpected)} unexpected keys (e.g. {', '.join(unexpected[:3])})")
    if problems:
        renamed = missing + unexpected if strict else []
        if renamed and all(k.startswith("decoder.") for k in mismatched + renamed):  # another decoder layout
            problems.append("only the decoder differs: a model of the removed compact decoder (decoder='compact', before the "
                            "RD4AD decoder) cannot be loaded; retrain it")
        raise CheckpointError(f"{source}: checkpoint does not match {type(module).__name__}: " + "; ".join(problems))
    module.load_state_dict(state_dict, strict=strict)
