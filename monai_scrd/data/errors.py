"""The one exception type for bad input data, and helpers that turn any failure into one clear line."""

from __future__ import annotations

import os

__all__ = ["DataError", "ConfigError", "one_line"]


class DataError(ValueError):
    """Bad input data: a missing, truncated, unreadable or wrongly shaped file, or a malformed datalist.

    The message is one line that starts with the file (or ``file: key``) at fault and says what is wrong, e.g.
    ``"/x/a.dcm: not a DICOM file (missing preamble)"`` or ``"datalist.json: test[3].label is 2; expected 0 or 1"``.
    """


class ConfigError(ValueError):
    """A setting that contradicts the trained model or another setting, e.g. scoring at an ``image_size`` other than
    the one the model's threshold was fitted at. The message is one line naming the file and the setting."""


def one_line(exc: BaseException | str, limit: int = 300) -> str:
    """First non-empty line of an exception's text (or its type name), shortened to ``limit`` characters."""
    text = str(exc).strip() if not isinstance(exc, str) else exc.strip()
    if not text and isinstance(exc, BaseException):
        text = type(exc).__name__
    line = next((ln.strip() for ln in text.splitlines() if ln.strip()), "")
    return line if len(line) <= limit else line[: limit - 3] + "..."


def describe(path: str | os.PathLike, exc: BaseException) -> str:
    """One-line message for ``exc`` raised while handling ``path``: the DataError text as is, else ``path: Type: text``."""
    if isinstance(exc, DataError):
        return one_line(exc, limit=1000)
    path = os.fspath(path)
    msg = one_line(exc)
    if path and path in msg:
        return msg
    return f"{path}: {type(exc).__name__}: {msg}" if msg else f"{path}: {type(exc).__name__}"
