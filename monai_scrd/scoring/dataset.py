"""Reading and preprocessing for scoring: one file (2D image or volume) becomes the model's input tensors, or one
error line; a MONAI-compatible dataset and collate function run it in loader workers."""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch.utils.data import Dataset

from monai_scrd.data.color import check_color_mode
from monai_scrd.data.errors import ConfigError, DataError
from monai_scrd.data.image import MedicalImage
from monai_scrd.data.readers import read_medical_image
from monai_scrd.data.robust import error_message
from monai_scrd.data.transforms import array_transforms
from monai_scrd.data.volume import check_not_constant, slice_volume

if TYPE_CHECKING:
    from monai_scrd.scoring.scorer import Scorer

__all__ = ["PREPROCESSING_KEYS", "Prepared", "Preprocessor", "ScoringDataset", "collate_prepared"]

logger = logging.getLogger("monai_scrd.scoring")

PREPROCESSING_KEYS = ("image_size", "intensity", "percentiles", "apply_voi", "channels", "color_mode")

# ----------------------------------------------------------------------------------------------- preprocessing
@dataclass
class Prepared:
    """A file read and preprocessed for the model (or the one-line error that stopped it).

    Attributes:
        path: the file.
        item: the input item (``{"image": path, ...}``; other keys such as ``label`` are passed on to the result).
        images: ``[N, C, H, W]`` float32 model inputs: one for a 2D image, one per non-empty slice for a volume.
        kind: ``"image"`` or ``"volume"``.
        slice_indices: the slice index of each of ``images`` (volumes).
        source: the decoded file, kept when maps at the file's own size are wanted.
        error: one line naming the file, empty when fine.
    """

    path: str
    item: dict
    images: torch.Tensor | None = None
    kind: str = "image"
    slice_indices: list[int] = field(default_factory=list)
    source: MedicalImage | None = None
    error: str = ""

    @property
    def count(self) -> int:
        return 0 if self.images is None else int(self.images.shape[0])


def _as_item(item: Any, key: str = "image") -> dict:
    if isinstance(item, Mapping):
        return dict(item)
    return {key: item}


class Preprocessor:
    """Reads a file and turns it into model inputs with the preprocessing transforms, built once.

    Args:
        image_size: model input size (int for square).
        intensity: ``"minmax"``, ``"percentile"`` or ``"none"`` (see ``monai_scrd.data.ScaleIntensityToUnit``).
        percentiles: low/high percentiles for ``"percentile"``.
        apply_voi: apply a DICOM VOI LUT / window when the file has one.
        channels: model input channels (grayscale replicated).
        color_mode: the colour mode the model was trained in, ``"grayscale"`` or ``"rgb"``: a colour 2D image is
            refused by a grayscale model (one line naming the file and both modes, see
            :func:`~monai_scrd.data.color.check_color_mode`); an rgb model takes any image. ``None``: a model trained
            before colour modes existed, grayscale without a check.
        refuse_color_mismatch: refuse a colour image for a grayscale model (scoring with a trained model); False
            converts it to ``color_mode`` instead (validation during training, where ``color_mode`` may be forced on
            a mixed set).
    """

    def __init__(
        self,
        image_size: int | Sequence[int] = 256,
        intensity: str = "minmax",
        percentiles: Sequence[float] = (0.5, 99.5),
        apply_voi: bool = True,
        channels: int = 3,
        color_mode: str | None = None,
        refuse_color_mismatch: bool = True,
    ) -> None:
        if color_mode not in (None, "grayscale", "rgb"):
            raise ValueError(f"color_mode {color_mode!r} of a trained model is not 'grayscale' or 'rgb'")
        self.settings = {
            "image_size": int(image_size) if isinstance(image_size, (int, np.integer)) else [int(s) for s in image_size],
            "intensity": str(intensity),
            "percentiles": [float(p) for p in percentiles],
            "apply_voi": bool(apply_voi),
            "channels": int(channels),
            "color_mode": color_mode,
        }
        self.transform = array_transforms(
            "image", self.settings["image_size"], self.settings["intensity"], self.settings["percentiles"], self.settings["channels"],
            color_mode=color_mode or "grayscale",
        )
        self.refuse_color_mismatch = bool(refuse_color_mismatch)

    def _tensor(self, array: np.ndarray) -> torch.Tensor:
        x = self.transform({"image": torch.from_numpy(np.ascontiguousarray(array, dtype=np.float32))})["image"]
        return (x.as_tensor() if hasattr(x, "as_tensor") else torch.as_tensor(x)).float()

    def __call__(self, item: Any, keep_source: bool = False) -> Prepared:
        """:class:`Prepared` for ``item`` (a path or ``{"image": path, ...}``); never raises for the file's sake (a
        bad setting, e.g. ``$SCRD_MAX_PIXELS``, raises its :class:`ConfigError`: it is not the file's fault)."""
        item = _as_item(item)
        path = item.get("image")
        if not isinstance(path, (str, os.PathLike)) or not os.fspath(path).strip():
            return Prepared(path=str(path), item=item, error=f"{path!r}: empty or missing image path")
        path = os.fspath(path)
        try:
            img = read_medical_image(path, allow_volume=True, apply_voi=self.settings["apply_voi"])
            if img.is_volume:
                picked = slice_volume(img.array, img.slice_axis)
                if not picked:
                    raise DataError(f"{path}: all {img.array.shape[img.slice_axis]} slices along axis {img.slice_axis} "
                                    "are empty (constant)")
                images = torch.stack([self._tensor(s[None]) for _, s in picked])
                prepared = Prepared(path, item, images, "volume", [i for i, _ in picked])
            else:
                check_not_constant(path, img.array)  # the empty-slice rule of volumes, per channel
                if self.refuse_color_mismatch:
                    check_color_mode(img.array, self.settings["color_mode"], path)
                prepared = Prepared(path, item, self._tensor(img.array)[None], "image")
        except ConfigError:
            raise
        except Exception as e:  # noqa: BLE001 - every failure becomes the file's one error line
            return Prepared(path=path, item=item, error=error_message(path, e))
        if keep_source:
            prepared.source = img
        return prepared


class ScoringDataset(Dataset):
    """Dataset of :class:`Prepared` files for an evaluator's data loader (so reading runs in its workers); collate
    with :func:`collate_prepared` and score the batches with :meth:`Scorer.score_prepared`.

    Args:
        data: paths or datalist items ``{"image": path, ...}``.
        preprocessor: :class:`Preprocessor` or a :class:`Scorer` (its preprocessor is used).
        keep_source: keep each decoded file (for maps at the file's own size and heatmaps).
    """

    def __init__(self, data: Sequence[Any], preprocessor: Preprocessor | Scorer, keep_source: bool = False) -> None:
        self.data = list(data)
        self.preprocessor = getattr(preprocessor, "preprocessor", preprocessor)  # a Scorer's, or the Preprocessor itself
        self.keep_source = bool(keep_source)

    def __len__(self) -> int:
        return len(self.data)

    def __getitem__(self, index: int) -> Prepared:
        return self.preprocessor(self.data[index], self.keep_source)


def collate_prepared(batch: Sequence[Prepared]) -> list[Prepared]:
    """``collate_fn`` for :class:`ScoringDataset`: the batch as a list (files differ in kind and slice count)."""
    return list(batch)


