"""The MLflow pyfunc wrapper of a trained SCRD model.

Input: a DataFrame with a column ``image`` of file paths (PNG/JPEG/BMP/TIFF, DICOM, NIfTI), as seen by the
process that serves the model. Output: a DataFrame with, per row, ``image``, ``score`` (float, None when the file
could not be scored, so that REST answers are valid JSON with ``null``), ``is_anomaly`` (``score >= threshold``; None
when the row failed or without a threshold), ``error`` (empty when fine, else one line naming the file) and, when
asked, ``map_path`` (the anomaly heatmap written to ``map_dir``). Scoring is :class:`monai_scrd.scoring.Scorer`, the
bundle's own.

Parameters (``predict(df, params={...})`` or the ``params`` of a REST request):

* ``return_map`` (bool, default False): write each anomaly map and return its path in ``map_path``;
  a DataFrame column ``return_map`` (bool per row) works too;
* ``map_dir`` (str): where maps are written (default: a new temporary folder);
* ``map_format`` (``"nii.gz"`` (default), ``"npy"`` or ``"png"``): file type of the maps;
* ``map_size`` (``"original"`` (default): the image's own size, with its affine in NIfTI, like the bundle's maps;
  ``"model"``: the model's input size).

3D volumes (3D NIfTI, multi-frame DICOM) are scored slice by slice like the bundle does (score: max over slices).

Containment (read when the model is loaded): images are read only inside the folders of ``SCRD_INPUT_ROOTS``
(``os.pathsep``-separated; default: the working directory of the process that loads the model), after resolving
symbolic links; a path outside them gets the same row error as a missing file. Maps are written only into a
``map_dir`` inside ``SCRD_OUTPUT_ROOTS`` (default: none, so a given ``map_dir`` is refused), or, without ``map_dir``,
into a new private temporary folder. :func:`monai_scrd.registry.load_model` sets both for the process that loads the
model (its ``input_roots`` and ``output_roots``).
"""

from __future__ import annotations

import hashlib
import os
import tempfile

import mlflow.pyfunc
import numpy as np
import pandas as pd

__all__ = ["SCRDPyfuncModel", "INPUT_COLUMN", "OUTPUT_COLUMNS", "model_signature", "input_example", "model_code_path",
           "DEFAULT_PARAMS"]

INPUT_COLUMN = "image"
OUTPUT_COLUMNS = ["image", "score", "is_anomaly", "error", "map_path"]
DEFAULT_PARAMS = {"return_map": False, "map_dir": "", "map_format": "nii.gz", "map_size": "original"}
#: the row error of a file that is missing or outside the input roots (the same for both: a client learns nothing more)
NOT_IN_INPUT_ROOTS = "no such image file in the folders this model may read (SCRD_INPUT_ROOTS; default: the working directory)"


def model_signature():
    """Input: string column ``image`` (``return_map`` optional); output: the prediction columns; params as above."""
    from mlflow.models.signature import ModelSignature
    from mlflow.types.schema import ColSpec, ParamSchema, ParamSpec, Schema

    inputs = Schema([ColSpec("string", INPUT_COLUMN), ColSpec("boolean", "return_map", required=False)])
    outputs = Schema(
        [
            ColSpec("string", "image"),
            ColSpec("double", "score"),
            ColSpec("boolean", "is_anomaly", required=False),
            ColSpec("string", "error"),
            ColSpec("string", "map_path", required=False),
        ]
    )
    params = ParamSchema(
        [
            ParamSpec("return_map", "boolean", DEFAULT_PARAMS["return_map"]),
            ParamSpec("map_dir", "string", DEFAULT_PARAMS["map_dir"]),
            ParamSpec("map_format", "string", DEFAULT_PARAMS["map_format"]),
            ParamSpec("map_size", "string", DEFAULT_PARAMS["map_size"]),
        ]
    )
    return ModelSignature(inputs=inputs, outputs=outputs, params=params)


def model_code_path() -> str:
    """The file MLflow runs to build the model when loading it ("models from code"): no pickle is involved."""
    return os.path.join(os.path.dirname(os.path.abspath(__file__)), "model_code.py")


def input_example(paths=None) -> pd.DataFrame:
    """A one-row example request (file paths are those of the serving machine)."""
    return pd.DataFrame({INPUT_COLUMN: list(paths or ["/data/images/case_0001.png"])})


def _as_bool(value) -> bool:
    if isinstance(value, str):
        return value.strip().lower() in ("1", "true", "yes", "on")
    if value is None:
        return False
    try:
        if pd.isna(value):
            return False
    except (TypeError, ValueError):
        pass
    return bool(value)


def _map_name(index: int, path: str, fmt: str) -> str:
    stem = os.path.basename(path.rstrip("/\\")) or "image"
    for ext in (".nii.gz", ".nii", ".dcm", ".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff"):
        if stem.lower().endswith(ext):
            stem = stem[: -len(ext)]
            break
    digest = hashlib.sha1(path.encode("utf-8", "replace")).hexdigest()[:8]
    return f"{index:05d}_{stem}_{digest}_anomaly_map.{fmt}"


class SCRDPyfuncModel(mlflow.pyfunc.PythonModel):
    """Loads the artifacts ``weights`` (``model.safetensors``) and ``spec`` (``scrd_model.json``) and scores image files
    with :class:`monai_scrd.scoring.Scorer`. Logged as a "model from code" (:func:`model_code_path`).

    The device is CUDA when available, else CPU; set ``SCRD_DEVICE`` (e.g. ``cpu``) to choose. The backend is the
    fastest installed one on the CPU (the graph the model carries, ``artifacts/compiled``), PyTorch on a GPU; set
    ``SCRD_BACKEND`` (``torch``, ``onnxruntime``, ``openvino``) to choose.
    """

    # ``predict`` has no type hint on purpose (the signature given when logging describes the input; a hint would
    # make MLflow convert and validate it again): this tells MLflow not to wrap it for type-hint validation, and so
    # not to warn "Add type hints to the `predict` method" (in raw ANSI colour) wherever this module is imported.
    # MLflow's own PythonModel subclasses (ChatModel...) set the same attribute.
    _skip_type_hint_validation = True

    def load_context(self, context):
        from monai_scrd.registry.spec import ModelSpec, build_scorer
        from monai_scrd.scoring import roots_from_env

        self.input_roots = roots_from_env("SCRD_INPUT_ROOTS", [os.getcwd()])
        self.output_roots = roots_from_env("SCRD_OUTPUT_ROOTS", [])
        self.spec = ModelSpec.load(context.artifacts["spec"])
        device = os.environ.get("SCRD_DEVICE") or None
        batch_size = int(os.environ.get("SCRD_BATCH_SIZE", "16"))
        # "checkpoint": a weights-only model.pt of models registered before the safetensors weights
        weights = context.artifacts.get("weights") or context.artifacts["checkpoint"]
        self.scorer = build_scorer(self.spec, weights, device=device, batch_size=batch_size)
        self.scorer.compiled()  # a compiled backend ($SCRD_BACKEND, default auto) is made now, not on the first request

    def predict(self, context, model_input, params=None):
        params = {**DEFAULT_PARAMS, **{k: v for k, v in dict(params or {}).items() if v is not None}}
        if isinstance(model_input, pd.DataFrame):
            df = model_input
        elif isinstance(model_input, dict):
            df = pd.DataFrame(model_input)
        else:
            df = pd.DataFrame({INPUT_COLUMN: list(np.ravel(model_input))})
        if INPUT_COLUMN not in df.columns:
            raise ValueError(f"input needs a column {INPUT_COLUMN!r} of image file paths (got columns {list(df.columns)})")
        paths = ["" if (p is None or (isinstance(p, float) and np.isnan(p))) else str(p) for p in df[INPUT_COLUMN].tolist()]
        per_row = [_as_bool(v) for v in df["return_map"].tolist()] if "return_map" in df.columns else [False] * len(paths)
        want_maps = [_as_bool(params["return_map"]) or r for r in per_row]
        fmt = str(params.get("map_format") or "nii.gz").lstrip(".")
        if any(want_maps) and fmt not in ("nii.gz", "npy", "png"):
            raise ValueError(f"map_format {fmt!r} is not one of 'nii.gz', 'npy', 'png'")
        map_size = str(params.get("map_size") or "original")
        if map_size not in ("original", "model"):
            raise ValueError(f"map_size {map_size!r} is not 'original' or 'model'")
        from monai_scrd.data import is_inside
        from monai_scrd.scoring import ScoreResult, resolve_inside, save_map

        map_dir = str(params.get("map_dir") or "")
        if any(want_maps) and map_dir:
            real_dir = os.path.realpath(map_dir)
            if not any(is_inside(real_dir, r) for r in self.output_roots):
                from mlflow.exceptions import INVALID_PARAMETER_VALUE, MlflowException

                raise MlflowException(f"map_dir {map_dir!r} is not inside the folders allowed for outputs "
                                      "(SCRD_OUTPUT_ROOTS; default: none, and without map_dir the maps go to a new temporary folder)",
                                      error_code=INVALID_PARAMETER_VALUE)
        real = [resolve_inside(p, self.input_roots) for p in paths]
        scored = iter(self.scorer.score([r for r in real if r is not None], return_maps=any(want_maps), map_size=map_size))
        results = [next(scored) if r is not None else
                   ScoreResult(p, error=f"{p}: {NOT_IN_INPUT_ROOTS}") for p, r in zip(paths, real)]
        for p, r in zip(paths, results):
            r.path = p  # rows name the file as it was asked for
        map_paths: list[str] = [""] * len(paths)
        if any(want_maps):
            map_dir = map_dir or tempfile.mkdtemp(prefix="scrd_maps_")
            os.makedirs(map_dir, exist_ok=True)
            for i, r in enumerate(results):
                if want_maps[i] and r.anomaly_map is not None:
                    header = r.source.meta.get("header") if r.source is not None else None
                    try:
                        map_paths[i] = save_map(r.anomaly_map, os.path.join(map_dir, _map_name(i, r.path, fmt)), r.affine, header)
                    except Exception as e:  # noqa: BLE001 - e.g. unwritable map_dir: report on the row
                        r.error = f"{r.path}: could not write the anomaly map ({type(e).__name__}: {e})"
        failed = [bool(r.error) for r in results]
        # object columns: None (JSON null) for failed rows instead of NaN, and file names that are not UTF-8 (surrogate
        # escapes), which pandas' Arrow-backed string columns refuse
        out = pd.DataFrame(
            {
                "image": pd.Series([r.path for r in results], dtype=object),
                "score": pd.Series([None if f else r.score for r, f in zip(results, failed)], dtype=object),
                "is_anomaly": pd.Series([None if f else r.is_anomaly for r, f in zip(results, failed)], dtype=object),
                "error": pd.Series([r.error for r in results], dtype=object),
            }
        )
        if not any(failed):
            out["score"] = out["score"].astype(np.float64)
            if all(r.is_anomaly is not None for r in results):
                out["is_anomaly"] = out["is_anomaly"].astype(bool)
        if any(want_maps):
            out["map_path"] = pd.Series(map_paths, dtype=object)
        return out
