"""Medical image input for SCRD: validating readers (DICOM, NIfTI, PNG/JPEG), preprocessing transforms, datalists,
slice-wise volume scoring and per-file error handling for batch jobs.

Attributes are imported lazily, so ``python -m monai_scrd.prepare`` starts without importing torch/MONAI.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "errors": ["DataError"],
    "formats": ["IMAGE_EXTENSIONS", "detect_format", "is_image_file"],
    "readers": ["MedicalImage", "read_medical_image", "LoadMedicalImage", "LoadMedicalImaged", "MedicalImageReader"],
    "transforms": [
        "ToGrayscaleChannels",
        "ToGrayscaleChannelsd",
        "ScaleIntensityToUnit",
        "ScaleIntensityToUnitd",
        "intensity_bounds",
        "preprocessing_transforms",
        "array_transforms",
        "DataCompose",
    ],
    "volume": ["slice_volume", "assemble_volume", "aggregate_scores", "score_slices", "score_volume", "save_map_nifti", "VolumeScore"],
    "robust": [
        "unwrap_error",
        "error_message",
        "safe_load",
        "FileErrors",
        "validate_training_files",
        "check_training_files",
        "score_files",
        "SafeDataset",
    ],
    "datalist": ["DATALIST_KEYS", "load_datalist", "validate_datalist", "resolve_path"],
}
_WHERE = {name: mod for mod, names in _EXPORTS.items() for name in names}
__all__ = sorted(_WHERE)


def __getattr__(name: str) -> Any:
    if name in _WHERE:
        value = getattr(importlib.import_module(f"{__name__}.{_WHERE[name]}"), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
