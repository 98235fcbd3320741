"""Output keys of the dictionary transforms that keep their input and write a perturbed copy beside it."""

from __future__ import annotations

from collections.abc import Hashable, Mapping

from monai.config import KeysCollection
from monai.utils import ensure_tuple

__all__ = ["paired_output_keys"]


def paired_output_keys(
    keys: tuple[Hashable, ...],
    output_keys: KeysCollection | None,
    output_postfix: str,
    other_keys: Mapping[str, Hashable] | None = None,
) -> tuple[Hashable, ...]:
    """One output key per input key: ``output_keys``, or each key with ``output_postfix``.

    Args:
        keys: the transform's input keys.
        output_keys: explicit output keys, one per key; None uses ``output_postfix``.
        output_postfix: postfix of the output keys when ``output_keys`` is None.
        other_keys: further keys the transform writes, by setting name (e.g. ``{"mask_key": "anomaly_mask"}``).

    Raises:
        ValueError: not one output key per key, or an output key that would overwrite an input (the inputs are kept).
    """
    out = tuple(f"{key}{output_postfix}" for key in keys) if output_keys is None else ensure_tuple(output_keys)
    if len(out) != len(keys):
        raise ValueError(f"output_keys {out} must match keys {keys} one to one.")
    others = dict(other_keys or {})
    if set(out) & set(keys) or set(others.values()) & (set(keys) | set(out)):
        raise ValueError(f"{' and '.join(['output_keys', *others])} must differ from keys: the inputs are kept unchanged.")
    return out
