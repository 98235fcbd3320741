"""What a registered SCRD model is besides its weights (:class:`ModelSpec`), read from a bundle, and the scorer built
from a model folder or a bundle. Scoring is :class:`monai_scrd.scoring.Scorer`, the same as the bundle's evaluation
and inference; this module does not import MLflow.

A *model folder* holds two files, neither of which can carry code:

* ``model.safetensors``: the state dict of the whole SCRD module (the teacher's weights included, so no ImageNet
  weights are needed to rebuild it), as safetensors (plain tensors, no pickle);
* ``scrd_model.json``: the :class:`ModelSpec` (network arguments, preprocessing arguments, score reduction, the fitted
  decision threshold and the bundle's metadata). The network is always ``monai_scrd.networks.SCRD`` built from the
  installed package with these arguments checked as plain values (no ``_target_``, no expressions).
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import torch

from monai_scrd.scoring.anomaly_map import top_fraction
from monai_scrd.scoring.backends import exporter_installed, requested_backend, resolve_backend
from monai_scrd.scoring.dataset import PREPROCESSING_KEYS
from monai_scrd.scoring.io import json_safe
from monai_scrd.scoring.scorer import Scorer, read_threshold, resolve_score_reduction

__all__ = [
    "SPEC_FILE",
    "WEIGHTS_FILE",
    "CHECKPOINT_FILE",
    "GRAPH_FOLDER",
    "ModelSpec",
    "spec_from_bundle",
    "bundle_checkpoint",
    "write_model_dir",
    "build_scorer",
    "scorer_from_dir",
    "scorer_from_bundle",
]

logger = logging.getLogger("monai_scrd.registry")

SPEC_FILE = "scrd_model.json"
WEIGHTS_FILE = "model.safetensors"
CHECKPOINT_FILE = "model.pt"  # the bundle's trained weights (models/model.pt, weights-only torch file)
GRAPH_FOLDER = "compiled"  # beside the weights: the ONNX graphs of the compiled backends (scrd-<digest>.onnx)

FORMAT_VERSION = 1
NETWORK_TARGET = "monai_scrd.networks.SCRD"


def _plain(value: Any) -> bool:
    if value is None or isinstance(value, (str, bool, int, float)):
        return True
    return isinstance(value, list) and all(_plain(v) for v in value)


@dataclass
class ModelSpec:
    """Everything besides the weights needed to score images like the bundle does.

    Attributes:
        network: constructor arguments of ``monai_scrd.networks.SCRD`` (``backbone``, ``contrastive``,
            ``scale_adaptive``, ``sigma``, ``alpha_temperature``, ``alpha_floor``, ``scale_weighting``) as plain JSON
            values; ``pretrained`` is always rebuilt as False since the checkpoint holds the teacher's weights. A
            removed argument (``decoder``) naming what is now the only behaviour is dropped, any other value refused.
        preprocessing: the scorer's preprocessing settings (``image_size``, ``intensity``, ``percentiles``, ...).
        score_reduction: image score from the anomaly map, ``"mean"`` (paper), ``"max"`` or ``"top<P>%"``.
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

    def use_recorded_reduction(self) -> None:
        """Score with the image reduction the stored threshold was fitted with (``"mean"`` when the record names none
        or there is no threshold): for specs whose source names no reduction of its own."""
        self.score_reduction = str((self.threshold or {}).get("score_reduction") or "mean")

    @property
    def threshold_value(self) -> float | None:
        return None if not self.threshold else float(self.threshold["threshold"])

    def to_dict(self) -> dict:
        d = json_safe(asdict(self))
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
        if self.threshold is not None:
            self.threshold = read_threshold(self.threshold)
        self.score_reduction = resolve_score_reduction(self.score_reduction, self.threshold)
        top_fraction(self.score_reduction)  # raises on an unknown image reduction
        if self.volume_reduction not in ("mean", "max"):
            raise ValueError(f"volume_reduction {self.volume_reduction!r} is not 'mean' or 'max'")
        unknown = set(self.preprocessing) - set(PREPROCESSING_KEYS)
        if unknown:
            raise ValueError(f"unknown preprocessing arguments {sorted(unknown)} (known: {PREPROCESSING_KEYS})")
        self.network_args()

    def network_args(self) -> dict:
        """The SCRD constructor arguments: names of ``SCRD.__init__``'s parameters with plain JSON values (strings,
        numbers, booleans, null, lists of those); anything else is refused, so a spec cannot name code to run."""
        import inspect

        from monai_scrd.networks.scrd import SCRD, drop_removed_arguments

        known = set(inspect.signature(SCRD.__init__).parameters) - {"self", "pretrained"}
        args = {}
        for key, value in drop_removed_arguments(self.network, "model spec network").items():
            if key == "_target_":
                if value != NETWORK_TARGET:
                    raise ValueError(f"model spec network {value!r} is not {NETWORK_TARGET}")
                continue
            if key == "pretrained":
                continue
            if key not in known:
                raise ValueError(f"unknown network argument {key!r} in the model spec (SCRD takes {sorted(known)})")
            if not _plain(value) or (isinstance(value, str) and value.startswith(("$", "@", "%"))):
                raise ValueError(f"network argument {key}={value!r} in the model spec is not a plain value")
            args[key] = value
        return args

    def build_network(self) -> torch.nn.Module:
        """The SCRD module of the installed package (random weights; load the weights into it). The checkpoint carries
        the teacher, so no ImageNet weights are read."""
        from monai_scrd.networks import SCRD

        return SCRD(pretrained=False, **self.network_args())


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
    ``channels`` when present (the values the bundle's scorer gets); the reductions are ``score_reduction`` (default
    ``"mean"``) and ``volume_reduction`` (default ``"max"``).
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
        network[key] = json_safe(parser.get_parsed_content(f"network_def::{key}"))
    preprocessing = {}
    for key in PREPROCESSING_KEYS:
        if key in parser.config:
            preprocessing[key] = json_safe(parser.get_parsed_content(key))
    if preprocessing.get("color_mode") not in ("grayscale", "rgb"):  # "auto" (train.json): the mode threshold.json recorded
        preprocessing.pop("color_mode", None)
    reduction = str(parser.get_parsed_content("score_reduction")) if "score_reduction" in parser.config else "mean"
    volume_reduction = str(parser.get_parsed_content("volume_reduction")) if "volume_reduction" in parser.config else "max"
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
        volume_reduction=volume_reduction,
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


def load_weights(path: str | os.PathLike) -> dict:
    """A state dict from ``model.safetensors`` (safetensors) or a weights-only torch file (``{"model": ...}`` or
    bare); nothing is unpickled. Raises ``CheckpointError`` naming the file."""
    from monai_scrd.checkpoint import CheckpointError, extract_state_dict, load_weights_file

    path = os.fspath(path)
    if path.endswith(".safetensors"):
        from safetensors.torch import load_file

        if not os.path.isfile(path):
            raise CheckpointError(f"{path}: weights file not found")
        try:
            return load_file(path)
        except Exception as e:  # noqa: BLE001 - a tampered or truncated file
            raise CheckpointError(f"{path}: not a readable safetensors weights file ({type(e).__name__}: {e})") from e
    return extract_state_dict(load_weights_file(path), path)


def write_model_dir(out_dir: str | os.PathLike, checkpoint: str | os.PathLike, spec: ModelSpec, graph: bool = True) -> str:
    """Write a model folder (``model.safetensors`` with only the weights, plus ``scrd_model.json``) after checking
    that the checkpoint loads into the network the spec describes; with ``graph``, also the network exported to ONNX
    for the compiled backends, ``compiled/scrd-<digest>.onnx`` (when the exporter is installed and ``$SCRD_BACKEND``
    does not choose PyTorch). Returns the folder."""
    from safetensors.torch import save_file

    from monai_scrd.checkpoint import load_state_dict_checked

    out_dir = os.fspath(out_dir)
    checkpoint = os.fspath(checkpoint)
    spec.validate()
    state = load_weights(checkpoint)
    net = spec.build_network()
    load_state_dict_checked(net, state, checkpoint)  # fail now, not at serving time
    os.makedirs(out_dir, exist_ok=True)
    save_file({k: v.detach().cpu().contiguous().clone() for k, v in state.items()}, os.path.join(out_dir, WEIGHTS_FILE))
    spec.save(os.path.join(out_dir, SPEC_FILE))
    if graph and exporter_installed() and resolve_backend(requested_backend(), "cpu") != "torch":
        try:
            _scorer(spec, net.eval(), "cpu", 1, "torch").export_graph(os.path.join(out_dir, GRAPH_FOLDER))
        except Exception as e:  # noqa: BLE001 - the graph only speeds scoring up: a compiled backend can export it later
            logger.warning(f"{checkpoint}: no ONNX graph carried with the model ({type(e).__name__}: {e})")
    return out_dir


# ------------------------------------------------------------------------------------------------ scorers
def build_scorer(spec: ModelSpec, checkpoint: str | os.PathLike, device: str | torch.device | None = None,
                 batch_size: int = 16, backend: str | None = None, graph_cache: str | os.PathLike | None = None) -> Scorer:
    """The :class:`~monai_scrd.scoring.Scorer` of a spec and its weights (checked against the network).

    Args:
        spec: network, preprocessing, reductions and threshold.
        checkpoint: ``model.safetensors``, or a weights-only torch file (``{"model": state_dict}`` or bare); nothing
            is unpickled.
        device: ``"cpu"``, ``"cuda"``...; default: CUDA when available.
        batch_size: images per forward pass.
        backend: what runs the network (see :class:`~monai_scrd.scoring.Scorer`); default: ``$SCRD_BACKEND``, else
            ``"auto"``.
        graph_cache: folder of the compiled graphs; default: ``compiled`` beside the weights (a bundle's
            ``models/compiled``, a registered model's artifacts).
    """
    from monai_scrd.checkpoint import load_state_dict_checked

    spec.validate()
    checkpoint = os.fspath(checkpoint)
    device = torch.device(device) if device else torch.device("cuda" if torch.cuda.is_available() else "cpu")
    net = spec.build_network()
    load_state_dict_checked(net, load_weights(checkpoint), checkpoint)
    return _scorer(spec, net.to(device).eval(), device, batch_size, backend or requested_backend(),
                   graph_cache or os.path.join(os.path.dirname(os.path.abspath(checkpoint)), GRAPH_FOLDER))


def _scorer(spec: ModelSpec, net: torch.nn.Module, device, batch_size: int, backend: str, graph_cache=None) -> Scorer:
    return Scorer(net, **spec.preprocessing, score_reduction=spec.score_reduction, volume_reduction=spec.volume_reduction,
                  threshold=spec.threshold, batch_size=batch_size, device=device, backend=backend, graph_cache=graph_cache)


def scorer_from_dir(model_dir: str | os.PathLike, **kwargs) -> tuple[ModelSpec, Scorer]:
    """``(spec, scorer)`` of a model folder written by :func:`write_model_dir` (e.g. the pyfunc's artifacts)."""
    model_dir = os.fspath(model_dir)
    spec = ModelSpec.load(os.path.join(model_dir, SPEC_FILE))
    weights = os.path.join(model_dir, WEIGHTS_FILE)
    return spec, build_scorer(spec, weights if os.path.isfile(weights) else os.path.join(model_dir, CHECKPOINT_FILE), **kwargs)


def scorer_from_bundle(
    bundle_dir: str | os.PathLike,
    checkpoint: str | os.PathLike | None = None,
    config_file: str | Sequence[str] | None = None,
    overrides: Mapping | None = None,
    threshold=None,
    **kwargs,
) -> tuple[ModelSpec, Scorer]:
    """``(spec, scorer)`` of a trained bundle: its config (see :func:`spec_from_bundle`) and ``models/model.pt``."""
    spec = spec_from_bundle(bundle_dir, config_file, overrides, threshold)
    return spec, build_scorer(spec, checkpoint or bundle_checkpoint(bundle_dir, config_file), **kwargs)
