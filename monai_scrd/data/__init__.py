"""Medical image input for SCRD: it reads and validates data and never runs a model (scoring is
:mod:`monai_scrd.scoring`).

Modules: ``errors`` (one-line errors), ``formats`` (file types), ``datalist`` (the bundle's JSON datalists),
``prepare`` (``python -m monai_scrd.prepare``), ``readers`` (any input: NIfTI, PNG/JPEG, DICOM via ``dicom``; the
shared checks and ``MedicalImage`` in ``image``), ``transforms`` (preprocessing), ``color`` (colour modes),
``volume`` (slicing volumes), ``robust`` (the check of training images).

This package re-exports only the standard-library modules (``errors``, ``formats``, ``datalist``), so that
``python -m monai_scrd.prepare`` starts without torch and MONAI (importing MONAI takes seconds); import the others from
their module, e.g. ``from monai_scrd.data.readers import read_medical_image``.
"""

from __future__ import annotations

from monai_scrd.data.datalist import DATALIST_KEYS, is_inside, load_datalist, resolve_path, validate_datalist
from monai_scrd.data.errors import ConfigError, DataError
from monai_scrd.data.formats import IMAGE_EXTENSIONS, detect_format, is_image_file

__all__ = [
    "ConfigError",
    "DataError",
    "IMAGE_EXTENSIONS",
    "detect_format",
    "is_image_file",
    "DATALIST_KEYS",
    "load_datalist",
    "validate_datalist",
    "resolve_path",
    "is_inside",
]
