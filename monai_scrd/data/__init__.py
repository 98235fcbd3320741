"""Medical image input for SCRD: validating readers (DICOM files and series, NIfTI, PNG/JPEG), preprocessing
transforms, datalists, volume slicing, one-line error messages and the check of training images. It reads and
validates data and never runs a model (scoring is :mod:`monai_scrd.scoring`).

Attributes are imported lazily, so ``python -m monai_scrd.prepare`` starts without importing torch/MONAI.
"""

from __future__ import annotations

from monai_scrd._lazy import lazy_exports

_EXPORTS = {
    "errors": ["DataError", "ConfigError"],
    "formats": ["IMAGE_EXTENSIONS", "detect_format", "is_image_file"],
    "readers": [
        "MedicalImage",
        "read_medical_image",
        "read_dicom_series",
        "dicom_affine",
        "is_dicom_series_folder",
        "list_image_inputs",
        "LoadMedicalImage",
        "LoadMedicalImaged",
        "MedicalImageReader",
    ],
    "transforms": [
        "ToGrayscaleChannels",
        "ToGrayscaleChannelsd",
        "ToColorMode",
        "ToColorModed",
        "ScaleIntensityToUnit",
        "ScaleIntensityToUnitd",
        "intensity_bounds",
        "preprocessing_transforms",
        "array_transforms",
        "ShrinkLargeImage",
        "ShrinkLargeImaged",
        "DataCompose",
    ],
    "volume": ["is_empty", "check_not_constant", "slice_volume", "assemble_volume"],
    "robust": ["unwrap_error", "error_message", "validate_training_files", "check_training_files"],
    "datalist": ["DATALIST_KEYS", "load_datalist", "validate_datalist", "resolve_path", "is_inside"],
    "color": ["COLOR_MODES", "image_color_mode", "source_color_mode", "resolve_color_mode", "check_color_mode", "trained_color_mode"],
}
__all__, __getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
