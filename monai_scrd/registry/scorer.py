"""Score image files with a trained SCRD model exactly as the bundle's inference does: same preprocessing
(:func:`monai_scrd.data.preprocessing_transforms`), same network, same image score, same stored decision threshold.

Used by the MLflow pyfunc (:mod:`monai_scrd.registry.pyfunc`) and by the MONAI Label app (:mod:`monai_scrd.label`).
This module does not import MLflow.

A *model folder* holds two files:

* ``model.pt``: ``{"model": state_dict}`` of the whole SCRD module (the teacher's weights included, so no ImageNet
  weights are needed to rebuild it);
* ``scrd_model.json``: the :class:`ModelSpec` (network arguments, preprocessing arguments, score reduction, the fitted
  decision threshold and the bundle's metadata).
"""

from __future__ import annotations

import copy
import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

__all__ = [
    "SPEC_FILE",
    "CHECKPOINT_FILE",
    "ModelSpec",
    "SCRDScorer",
    "spec_from_bundle",
    "read_threshold",
    "write_model_dir",
    "save_map",
    "MAP_FORMATS",
]

SPEC_FILE = "scrd_model.json"
CHECKPOINT_FILE = "model.pt"
FORMAT_VERSION = 1
MAP_FORMATS = ("nii.gz", "npy", "png")
PREPROCESSING_KEYS = ("image_size", "intensity", "percentiles", "apply_voi", "channels", "color_mode")
NETWORK_TARGET = "monai_scrd.networks.SCRD"


def _error_message(path: str, exc: BaseException) -> str:
    """One line naming ``path`` (the data engineer's helpers when present, else a plain fallback)."""
    try:
        from monai_scrd.data.robust import error_message

        return error_message(path, exc)
    except ImportError:  # pragma: no cover - older data package
        pass
    cur, seen = exc, set()
    while cur is not None and id(cur) not in seen:  # MONAI wraps transform errors: find the DataError inside
        seen.add(id(cur))
        if type(cur).__name__ == "DataError":
            return str(cur).strip().splitlines()[0]
        cur = cur.__cause__ or cur.__context__
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return f"{path}: {type(exc).__name__}: {text}"


def _jsonable(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, (np.integer,)):
        return int(value)
    if isinstance(value, (np.floating,)):
        return float(value)
    if isinstance(value, torch.Tensor):
        return value.tolist()
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    return value


@dataclass
class ModelSpec:
    """Everything besides the weights needed to score images like the bundle does.

    Attributes:
        network: constructor arguments of ``monai_scrd.networks.SCRD`` (``backbone``, ``contrastive``,
            ``scale_adaptive``, ``sigma``); ``pretrained`` is always rebuilt as False since the checkpoint holds the
            teacher's weights.
        preprocessing: keyword arguments of ``preprocessing_transforms`` (``image_size``, ``intensity``, ...).
        score_reduction: image score from the anomaly map, ``"mean"`` (paper) or ``"max"``.
        volume_reduction: 3D volumes are scored slice by slice; their score is the ``"max"`` (bundle default) or
            ``"mean"`` of the slice scores.
        threshold: the stored decision threshold file content (``{"threshold": float, "method": ..., ...}``) or None;
            an image is anomalous when ``score >= threshold``.
        metadata: the bundle's ``metadata.json`` (or any dict describing the model).
        source: where the model came from (checkpoint, bundle, run id).
    """

    network: dict = field(default_factory=dict)
    preprocessing: dict = field(default_factory=lambda: {"image_size": 256})
    score_reduction: str = "mean"
    volume_reduction: str = "max"
    threshold: dict | None = None
    metadata: dict = field(default_factory=dict)
    source: dict = field(default_factory=dict)

    @property
    def threshold_value(self) -> float | None:
        return None if not self.threshold else float(self.threshold["threshold"])

    def to_dict(self) -> dict:
        d = _jsonable(asdict(self))
        d["format_version"] = FORMAT_VERSION
        return d

    @classmethod
    def from_dict(cls, d: Mapping) -> ModelSpec:
        d = dict(d)
        version = int(d.pop("format_version", FORMAT_VERSION))
        if version > FORMAT_VERSION:
            raise ValueError(f"model spec format {version} is newer than this monai_scrd understands ({FORMAT_VERSION})")
        known = {k: d[k] for k in ("network", "preprocessing", "score_reduction", "volume_reduction", "threshold", "metadata", "source") if k in d}
        spec = cls(**known)
        spec.validate()
        return spec

    @classmethod
    def load(cls, path: str | os.PathLike) -> ModelSpec:
        path = os.fspath(path)
        try:
            with open(path) as f:
                return cls.from_dict(json.load(f))
        except (OSError, json.JSONDecodeError, TypeError) as e:
            raise ValueError(f"{path}: not a readable SCRD model spec ({e})") from e

    def save(self, path: str | os.PathLike) -> str:
        path = os.fspath(path)
        with open(path, "w") as f:
            json.dump(self.to_dict(), f, indent=2, sort_keys=True)
        return path

    def validate(self) -> None:
        for what in ("score_reduction", "volume_reduction"):
            if getattr(self, what) not in ("mean", "max"):
                raise ValueError(f"{what} {getattr(self, what)!r} is not 'mean' or 'max'")
        unknown = set(self.preprocessing) - set(PREPROCESSING_KEYS)
        if unknown:
            raise ValueError(f"unknown preprocessing arguments {sorted(unknown)} (known: {PREPROCESSING_KEYS})")
        if self.threshold is not None:
            t = self.threshold.get("threshold") if isinstance(self.threshold, Mapping) else None
            if not isinstance(t, (int, float)) or isinstance(t, bool) or not np.isfinite(t):
                raise ValueError(f"threshold must be {{'threshold': finite number, ...}}, got {self.threshold!r}")

    def build_network(self) -> torch.nn.Module:
        """The SCRD module (random weights; load the checkpoint into it)."""
        from monai.bundle import ConfigParser

        cfg = {k: v for k, v in self.network.items() if k != "pretrained"}
        cfg.setdefault("_target_", NETWORK_TARGET)
        cfg["pretrained"] = False  # the checkpoint carries the teacher: never download or read ImageNet weights
        return ConfigParser({"network": cfg}).get_parsed_content("network")


def read_threshold(threshold: float | str | os.PathLike | Mapping | None) -> dict | None:
    """A threshold record from a number, a threshold JSON file (``{"threshold": float, ...}``) or a dict."""
    if threshold is None:
        return None
    if isinstance(threshold, bool):
        raise ValueError(f"threshold {threshold!r} is not a number")
    if isinstance(threshold, (int, float)):
        return {"threshold": float(threshold), "method": "given explicitly"}
    if isinstance(threshold, Mapping):
        rec = dict(threshold)
    else:
        path = os.fspath(threshold)
        if not os.path.isfile(path):
            raise FileNotFoundError(f"{path}: threshold file not found")
        try:
            with open(path) as f:
                rec = json.load(f)
        except json.JSONDecodeError as e:
            raise ValueError(f"{path}: not a threshold file: invalid JSON ({e})") from e
        if not isinstance(rec, dict):
            raise ValueError(f"{path}: not a threshold file (expected {{'threshold': number, ...}})")
    t = rec.get("threshold")
    if not isinstance(t, (int, float)) or isinstance(t, bool) or not np.isfinite(t):
        raise ValueError(f"not a threshold record (expected {{'threshold': finite number, ...}}): {rec!r}")
    rec["threshold"] = float(t)
    return _jsonable(rec)


# ------------------------------------------------------------------------------------------------ bundle -> spec
def _bundle_config_files(bundle_dir: str, config_file: str | Sequence[str] | None) -> list[str]:
    if config_file:
        files = [config_file] if isinstance(config_file, (str, os.PathLike)) else list(config_file)
        files = [os.fspath(f) if os.path.isabs(os.fspath(f)) else os.path.join(bundle_dir, "configs", os.fspath(f)) for f in files]
    else:
        files = [os.path.join(bundle_dir, "configs", n) for n in ("inference.json", "inference.yaml", "train.json", "train.yaml")]
        files = [f for f in files if os.path.isfile(f)][:1]
    missing = [f for f in files if not os.path.isfile(f)]
    if not files or missing:
        raise FileNotFoundError(f"{bundle_dir}: no bundle config {missing or 'configs/inference.json'} found")
    return files


def _find_component(config: Any, target_suffix: str, prefix: str = "") -> tuple[str, dict] | None:
    """``(id, raw dict)`` of the first component whose ``_target_`` ends with ``target_suffix`` (inference sections
    first), searching dicts and lists depth-first."""
    if isinstance(config, Mapping):
        target = config.get("_target_")
        if isinstance(target, str) and target.endswith(target_suffix):
            return prefix, dict(config)
        keys = sorted(config, key=lambda k: (0 if str(k).startswith(("infer", "predict", "evaluat")) else 1))
        for k in keys:
            found = _find_component(config[k], target_suffix, f"{prefix}::{k}" if prefix else str(k))
            if found is not None:
                return found
    elif isinstance(config, list):
        for i, v in enumerate(config):
            found = _find_component(v, target_suffix, f"{prefix}::{i}" if prefix else str(i))
            if found is not None:
                return found
    return None


def spec_from_bundle(
    bundle_dir: str | os.PathLike,
    config_file: str | Sequence[str] | None = None,
    overrides: Mapping | None = None,
    threshold: float | str | os.PathLike | Mapping | None = None,
) -> ModelSpec:
    """Read the network and preprocessing arguments from a MONAI bundle's config, the way its inference uses them.

    Args:
        bundle_dir: the bundle folder (holding ``configs/``).
        config_file: config(s) to parse, relative to ``configs/`` or absolute; default ``inference.json``
            (else ``train.json``).
        overrides: config values to override, as on the bundle command line (``{"image_size": 128}``).
        threshold: decision threshold (number, file or record); default: the file the config's ``threshold_path``
            names, else ``models/threshold.json`` when present.

    The network is the config's ``network_def`` (each argument resolved, so references like ``@backbone`` work);
    the preprocessing arguments are the config's ``image_size``, ``intensity``, ``percentiles``, ``apply_voi`` and
    ``channels`` when present; the score reduction is ``score_reduction`` (or ``reduction``), default ``"mean"``.
    """
    from monai.bundle import ConfigParser

    bundle_dir = os.path.abspath(os.fspath(bundle_dir))
    files = _bundle_config_files(bundle_dir, config_file)
    parser = ConfigParser()
    parser.read_config(files)
    parser["bundle_root"] = bundle_dir
    for k, v in dict(overrides or {}).items():
        parser[k] = v
    raw_net = parser.get("network_def")
    if not isinstance(raw_net, Mapping) or "_target_" not in raw_net:
        raise ValueError(f"{files[0]}: 'network_def' is not a component definition with a '_target_'")
    target = str(raw_net["_target_"])
    if target.rsplit(".", 1)[-1] != "SCRD":
        raise ValueError(f"{files[0]}: network_def target {target!r} is not monai_scrd.networks.SCRD")
    network: dict[str, Any] = {"_target_": NETWORK_TARGET}
    for key in raw_net:
        if key.startswith("_") or key == "pretrained":
            continue
        network[key] = _jsonable(parser.get_parsed_content(f"network_def::{key}"))
    preprocessing = {}
    for key in PREPROCESSING_KEYS:
        if key in parser.config:
            preprocessing[key] = _jsonable(parser.get_parsed_content(key))
    component = _find_component(parser.config, "preprocessing_transforms")
    if component is not None:  # the arguments the bundle's own preprocessing call gets win over top-level values
        cid, raw = component
        for key in PREPROCESSING_KEYS:
            if key in raw:
                preprocessing[key] = _jsonable(parser.get_parsed_content(f"{cid}::{key}"))
    reduction = "mean"
    for key in ("score_reduction", "reduction"):
        if key in parser.config:
            reduction = str(parser.get_parsed_content(key))
            break
    if threshold is None:
        candidates = []
        if "threshold_path" in parser.config:
            try:
                candidates.append(str(parser.get_parsed_content("threshold_path")))
            except Exception:  # noqa: BLE001 - an unresolvable path just means no stored threshold
                pass
        candidates.append(os.path.join(bundle_dir, "models", "threshold.json"))
        threshold = next((c for c in candidates if c and os.path.isfile(c)), None)
    metadata = {}
    meta_file = os.path.join(bundle_dir, "configs", "metadata.json")
    if os.path.isfile(meta_file):
        with open(meta_file) as f:
            metadata = json.load(f)
    spec = ModelSpec(
        network=network,
        preprocessing=preprocessing,
        score_reduction=reduction,
        threshold=read_threshold(threshold),
        metadata=metadata,
        source={"bundle_dir": bundle_dir, "config_files": files},
    )
    spec.validate()
    return spec


def bundle_checkpoint(bundle_dir: str | os.PathLike, config_file: str | Sequence[str] | None = None) -> str:
    """The bundle's trained weights: ``models/model.pt`` (or the file the config's ``model_path`` names)."""
    bundle_dir = os.path.abspath(os.fspath(bundle_dir))
    default = os.path.join(bundle_dir, "models", CHECKPOINT_FILE)
    if os.path.isfile(default):
        return default
    try:
        from monai.bundle import ConfigParser

        parser = ConfigParser()
        parser.read_config(_bundle_config_files(bundle_dir, config_file))
        parser["bundle_root"] = bundle_dir
        for key in ("model_path", "checkpoint", "ckpt_path"):
            if key in parser.config:
                path = str(parser.get_parsed_content(key))
                if os.path.isfile(path):
                    return path
    except FileNotFoundError:
        pass
    raise FileNotFoundError(f"{bundle_dir}: no trained weights at {default}; train the bundle first or pass the checkpoint")


def write_model_dir(out_dir: str | os.PathLike, checkpoint: str | os.PathLike, spec: ModelSpec) -> str:
    """Write a model folder (``model.pt`` with only the weights, plus ``scrd_model.json``) after checking that the
    checkpoint loads into the network the spec describes. Returns the folder."""
    from monai_scrd.checkpoint import extract_state_dict, load_state_dict_checked, load_weights_file

    out_dir = os.fspath(out_dir)
    checkpoint = os.fspath(checkpoint)
    spec.validate()
    state = extract_state_dict(load_weights_file(checkpoint), checkpoint)
    net = spec.build_network()
    load_state_dict_checked(net, state, checkpoint)  # fail now, not at serving time
    os.makedirs(out_dir, exist_ok=True)
    torch.save({"model": {k: v.detach().cpu() for k, v in state.items()}}, os.path.join(out_dir, CHECKPOINT_FILE))
    spec.save(os.path.join(out_dir, SPEC_FILE))
    return out_dir


# ------------------------------------------------------------------------------------------------ maps
def save_map(amap: np.ndarray, path: str | os.PathLike, affine: np.ndarray | None = None) -> str:
    """Save an anomaly map (2D ``[H, W]`` or a 3D volume): ``.nii.gz``/``.nii`` (float32, with ``affine``), ``.npy``
    (float32) or ``.png`` (2D only; 8-bit, scaled by the map's own maximum: for viewing only). Returns the path."""
    path = os.fspath(path)
    amap = np.asarray(amap, dtype=np.float32)
    if amap.ndim == 3 and amap.shape[0] == 1:
        amap = amap[0]
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    lower = path.lower()
    if lower.endswith((".nii.gz", ".nii")):
        import nibabel as nib

        # 2D NIfTI in the reader's convention: array [X, Y] = image [rows, cols] (see monai_scrd.data.readers)
        nib.save(nib.Nifti1Image(amap, np.eye(4) if affine is None else np.asarray(affine, dtype=np.float64)), path)
    elif lower.endswith(".npy"):
        np.save(path, amap)
    elif lower.endswith(".png"):
        from PIL import Image

        if amap.ndim != 2:
            raise ValueError(f"{path}: a PNG map must be 2D, this one has shape {tuple(amap.shape)} (use .nii.gz)")

        top = float(amap.max())
        scaled = np.zeros_like(amap) if top <= 0 else np.clip(amap / top, 0.0, 1.0)
        Image.fromarray((scaled * 255.0 + 0.5).astype(np.uint8)).save(path)
    else:
        raise ValueError(f"{path}: anomaly map format must be one of {MAP_FORMATS}")
    return path


# ------------------------------------------------------------------------------------------------ scorer
class SCRDScorer:
    """A trained SCRD model with its preprocessing and decision threshold.

    Args:
        spec: the :class:`ModelSpec`.
        checkpoint: ``{"model": state_dict}`` file (or a bare state dict).
        device: ``"cpu"``, ``"cuda"``... ; default: CUDA when available.
        batch_size: images per forward pass.
    """

    def __init__(self, spec: ModelSpec, checkpoint: str | os.PathLike, device: str | torch.device | None = None, batch_size: int = 8):
        from monai_scrd.checkpoint import extract_state_dict, load_state_dict_checked, load_weights_file
        from monai_scrd.data import preprocessing_transforms

        spec.validate()
        self.spec = spec
        self.checkpoint = os.fspath(checkpoint)
        self.device = torch.device(device) if device is not None else torch.device("cuda" if torch.cuda.is_available() else "cpu")
        self.batch_size = max(1, int(batch_size))
        net = spec.build_network()
        load_state_dict_checked(net, extract_state_dict(load_weights_file(self.checkpoint), self.checkpoint), self.checkpoint)
        self.network = net.to(self.device).eval()
        self.transform = preprocessing_transforms(keys="image", **copy.deepcopy(spec.preprocessing))

    @classmethod
    def from_dir(cls, model_dir: str | os.PathLike, **kwargs) -> SCRDScorer:
        """Load a model folder written by :func:`write_model_dir` (e.g. the pyfunc's artifacts)."""
        model_dir = os.fspath(model_dir)
        return cls(ModelSpec.load(os.path.join(model_dir, SPEC_FILE)), os.path.join(model_dir, CHECKPOINT_FILE), **kwargs)

    @classmethod
    def from_bundle(
        cls,
        bundle_dir: str | os.PathLike,
        checkpoint: str | os.PathLike | None = None,
        config_file: str | Sequence[str] | None = None,
        overrides: Mapping | None = None,
        threshold=None,
        **kwargs,
    ) -> SCRDScorer:
        """Load a trained bundle: its config (see :func:`spec_from_bundle`) and ``models/model.pt``."""
        spec = spec_from_bundle(bundle_dir, config_file, overrides, threshold)
        return cls(spec, checkpoint or bundle_checkpoint(bundle_dir, config_file), **kwargs)

    @property
    def threshold(self) -> float | None:
        return self.spec.threshold_value

    def _read(self, path: str):
        """Read a file for scoring; a 2D image whose colour mode differs from the model's recorded ``color_mode`` is
        refused (``DataError`` naming the file and both modes; models without a record accept both, as before)."""
        from monai_scrd.data.color import check_color_mode
        from monai_scrd.data.readers import read_medical_image

        img = read_medical_image(path, allow_volume=True, apply_voi=bool(self.spec.preprocessing.get("apply_voi", True)))
        if not img.is_volume:
            check_color_mode(img.array, self.spec.preprocessing.get("color_mode"), path)
        return img

    def _array_transform(self):
        from monai_scrd.data.transforms import array_transforms

        kw = {k: v for k, v in self.spec.preprocessing.items() if k != "apply_voi"}
        return array_transforms("image", **copy.deepcopy(kw))

    def preprocess(self, path: str) -> torch.Tensor:
        """``[C, H, W]`` float tensor in [0, 1] for a 2D image (raises on an unreadable file or a volume)."""
        image = self.transform({"image": path})["image"]
        image = image.as_tensor() if hasattr(image, "as_tensor") else torch.as_tensor(image)
        return image.float()

    @torch.no_grad()
    def anomaly_maps(self, images: torch.Tensor) -> torch.Tensor:
        """Anomaly maps ``[B, 1, H, W]`` for preprocessed images ``[B, C, H, W]``."""
        return self.network(images.to(self.device)).float().cpu()

    def image_scores(self, maps: torch.Tensor) -> torch.Tensor:
        from monai_scrd.scoring import image_score

        return image_score(maps, self.spec.score_reduction)

    def _score_volume(self, img) -> tuple[float, np.ndarray]:
        from monai_scrd.data.volume import score_volume

        pre = self.spec.preprocessing
        res = score_volume(
            self.network,
            img,
            pre.get("image_size", 256),
            reduction=self.spec.volume_reduction,
            slice_reduction=self.spec.score_reduction,
            intensity=pre.get("intensity", "minmax"),
            percentiles=pre.get("percentiles", (0.5, 99.5)),
            batch_size=self.batch_size,
            device=self.device,
        )
        return float(res.score), np.asarray(res.map_image.dataobj, dtype=np.float32)

    def score_files(self, paths: Sequence[str], return_maps: bool = False, map_size: str = "original") -> list[dict]:
        """Score files as the bundle's inference does: each file read on its own (so one bad file only fails its row),
        2D images preprocessed and scored in batches, 3D volumes (NIfTI, multi-frame DICOM) slice by slice with the
        volume score the ``volume_reduction`` (max) of the slice scores.

        Returns one dict per path, in order: ``{"image", "score" (nan on error), "is_anomaly" (bool; None on error or
        without threshold), "error" ("" when fine), "volume" (bool)}`` and, with ``return_maps``, ``"map"`` (float32
        array, None on error) and ``"affine"``: for ``map_size="original"`` the map has the image's own size (2D
        ``[H, W]`` in the reader's axis order, volumes their shape) and the image's affine, for ``"model"`` the model's
        input size (2D only; volumes always come at their own size).
        """
        if map_size not in ("original", "model"):
            raise ValueError(f"map_size {map_size!r} is not 'original' or 'model'")
        results = [
            {"image": os.fspath(p) if p is not None else "", "score": float("nan"), "is_anomaly": None, "error": "", "volume": False}
            for p in paths
        ]
        if return_maps:
            for r in results:
                r["map"], r["affine"] = None, None
        transform = self._array_transform()
        pending: list[tuple[int, torch.Tensor, Any]] = []
        thr = self.threshold

        def finish(i: int, score: float) -> None:
            results[i]["score"] = score
            results[i]["is_anomaly"] = None if thr is None else bool(score >= thr)

        def flush() -> None:
            if not pending:
                return
            batch = torch.stack([t for _, t, _ in pending])
            try:
                maps = self.anomaly_maps(batch)
                scores = self.image_scores(maps)
            except Exception as e:  # noqa: BLE001 - e.g. out of memory: report, keep the other batches
                for i, _, _ in pending:
                    results[i]["error"] = _error_message(results[i]["image"], e)
                pending.clear()
                return
            for j, (i, _, img) in enumerate(pending):
                finish(i, float(scores[j]))
                if return_maps:
                    amap = maps[j : j + 1]
                    if map_size == "original":
                        h, w = img.array.shape[-2:]
                        amap = F.interpolate(amap, size=(h, w), mode="bilinear", align_corners=False)
                        results[i]["affine"] = np.asarray(img.affine)
                    results[i]["map"] = amap[0, 0].numpy()
            pending.clear()

        for i, r in enumerate(results):
            path = r["image"]
            if not isinstance(path, str) or not path.strip():
                r["error"] = f"{path!r}: empty image path"
                continue
            try:
                img = self._read(path)
                if img.is_volume:
                    score, vmap = self._score_volume(img)
                    r["volume"] = True
                    finish(i, score)
                    if return_maps:
                        r["map"], r["affine"] = vmap, np.asarray(img.affine)
                    continue
                x = transform({"image": torch.from_numpy(np.ascontiguousarray(img.array))})["image"]
                x = x.as_tensor() if hasattr(x, "as_tensor") else torch.as_tensor(x)
                pending.append((i, x.float(), img))
            except Exception as e:  # noqa: BLE001 - per-file isolation
                r["error"] = _error_message(path, e)
                continue
            if len(pending) >= self.batch_size:
                flush()
        flush()
        return results
