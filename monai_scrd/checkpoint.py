"""Safe checkpoint loading: ``torch.load(weights_only=True)`` plus errors that name the file and what is wrong."""

from __future__ import annotations

import os
from collections.abc import Mapping

import torch
from torch import nn

__all__ = ["CheckpointError", "load_weights_file", "extract_state_dict", "load_state_dict_checked"]


class CheckpointError(ValueError):
    """A checkpoint file that is missing, unreadable or does not fit the model it is loaded into."""


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
        data = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises RuntimeError, UnpicklingError, EOFError, zipfile errors...
        first_line = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise CheckpointError(f"{path}: not a readable weights-only torch checkpoint ({first_line})") from e
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
        differing = mismatched + (missing + unexpected if strict else [])
        if all(k.startswith("decoder.") for k in differing):
            problems.append("only the decoder differs: a model trained before the RD4AD decoder needs SCRD(decoder='compact')")
        raise CheckpointError(f"{source}: checkpoint does not match {type(module).__name__}: " + "; ".join(problems))
    module.load_state_dict(state_dict, strict=strict)
