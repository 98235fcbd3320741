"""Where the one scorer runs the network: PyTorch, or the same trained network exported to ONNX and run by ONNX Runtime
or OpenVINO (about twice PyTorch's speed on CPU cores: ``benchmarks/results/speed/SPEED.md``).

The exported graph is the eval-mode network itself, the anomaly map with its per-scale calibration and weighting
(buffers of :class:`~monai_scrd.scoring.AnomalyMapGenerator`), followed by the image reduction
(:func:`~monai_scrd.scoring.image_score`): it returns the maps and the scores, so no PyTorch operation runs between two
batches (PyTorch's and the runtime's thread pools would compete for the cores). A graph is made once per set of
weights, input shape and image reduction and cached as ``<graph_cache>/scrd-<digest>.onnx`` (the registered MLflow
model carries it the same way); before it is used, its maps and scores of a fixed probe batch must equal PyTorch's to
:data:`TOLERANCE` (relative), else the scorer warns and stays with PyTorch.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import io
import logging
import os
import tempfile
import threading
import warnings
from collections.abc import Sequence

import numpy as np
import torch
from torch import nn

from monai_scrd.data.errors import ConfigError
from monai_scrd.scoring.anomaly_map import image_score

__all__ = ["BACKENDS", "CPU_PREFERENCE", "TOLERANCE", "CompiledNetwork", "MapAndScore", "cache_graph", "compile_network", "export_onnx",
           "exporter_installed", "graph_digest", "installed_backends", "relative_difference", "requested_backend", "resolve_backend"]

logger = logging.getLogger("monai_scrd.scoring")

BACKENDS = ("auto", "torch", "onnxruntime", "openvino")
#: CPU backends, fastest first, as measured on the same cores (``benchmarks/speed.py``, section ``inference``)
CPU_PREFERENCE = ("onnxruntime", "openvino")
#: largest allowed ``max |map - map_torch| / max |map_torch|`` of a compiled graph on the probe batch
TOLERANCE = 1e-4
PRECISIONS = ("f32", "bf16", "f16")
_EXPORT_PACKAGES = ("onnx", "onnxscript")  # torch.onnx's exporter needs them
GRAPH_FORMAT = "2"  # part of the digest: bump when the export changes what a cached graph computes


def _has(module: str) -> bool:
    return importlib.util.find_spec(module) is not None


def installed_backends() -> list[str]:
    """``"torch"`` and the compiled backends whose runtime (the Python package of the backend's name) is installed
    (a model that carries its graph needs no exporter; one that does not is exported with torch's, see
    :func:`exporter_installed`)."""
    return ["torch"] + [b for b in CPU_PREFERENCE if _has(b)]


def exporter_installed() -> bool:
    """Whether torch's ONNX exporter has its packages (``onnx``, ``onnxscript``)."""
    return all(_has(m) for m in _EXPORT_PACKAGES)


def requested_backend() -> str:
    """The backend asked for where none is given (bundle runs, registered models, MONAI Label): ``$SCRD_BACKEND``,
    else ``"auto"``."""
    return os.environ.get("SCRD_BACKEND") or "auto"


def resolve_backend(backend: str, device: torch.device | str) -> str:
    """The backend that runs: ``backend`` itself, or for ``"auto"`` PyTorch on a GPU and the first installed of
    :data:`CPU_PREFERENCE` on the CPU (PyTorch when none is).

    Raises:
        ConfigError: an unknown backend, or one whose packages are not installed (one line saying what to install).
    """
    if backend not in BACKENDS:
        raise ConfigError(f"backend {backend!r}: must be one of {', '.join(repr(b) for b in BACKENDS)}")
    device = torch.device(device)
    have = installed_backends()
    if backend == "auto":
        if device.type != "cpu":
            return "torch"
        return next((b for b in CPU_PREFERENCE if b in have), "torch")
    if backend not in have:
        raise ConfigError(f"backend {backend!r}: needs the Python package {backend} (pip install {backend})")
    if backend == "openvino" and device.type != "cpu":
        raise ConfigError(f"backend 'openvino' runs on the CPU, not on device {str(device)!r}; use backend 'torch' there")
    return backend


class MapAndScore(nn.Module):
    """The exported computation: the eval-mode network's anomaly maps ``[B, 1, H, W]`` and their image scores ``[B]``
    (:func:`~monai_scrd.scoring.image_score` with ``score_reduction``)."""

    def __init__(self, network: nn.Module, score_reduction: str) -> None:
        super().__init__()
        self.network = network
        self.score_reduction = score_reduction

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        maps = self.network(images).float()
        return maps, image_score(maps, self.score_reduction)


def graph_digest(network: torch.nn.Module, input_shape: Sequence[int], score_reduction: str) -> str:
    """Hex digest of what an exported graph computes: the network's class, every parameter and buffer (the
    calibration and the smoothing kernel included), its scale weighting, the input shape ``(C, H, W)`` and the image
    reduction."""
    h = hashlib.sha256(f"{GRAPH_FORMAT}|{type(network).__name__}|{list(input_shape)}|{score_reduction}".encode())
    h.update(str(getattr(getattr(network, "anomaly_map", None), "scale_weighting", "")).encode())
    for name, t in [*network.named_parameters(), *network.named_buffers()]:
        h.update(f"|{name}|{t.dtype}|{list(t.shape)}|".encode())
        h.update(t.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()[:24]


def export_onnx(network: torch.nn.Module, input_shape: Sequence[int], path: str | os.PathLike,
                score_reduction: str = "mean") -> str:
    """Export the eval-mode ``network`` with its image reduction (:class:`MapAndScore`: ``[B, C, H, W]`` images ->
    ``[B, 1, H, W]`` anomaly maps and ``[B]`` scores) to ONNX at the fixed ``input_shape`` ``(C, H, W)`` with a dynamic
    batch size (input ``image``, outputs ``anomaly_map`` and ``score``), written atomically to ``path``. torch's
    exporter (``torch.export`` + onnxscript) gives a graph ONNX Runtime runs faster than the TorchScript-based one's."""
    path = os.fspath(path)
    was_training = network.training
    network.eval()
    example = torch.rand(2, *[int(s) for s in input_shape], generator=torch.Generator().manual_seed(0))
    try:
        with warnings.catch_warnings(), torch.no_grad(), _quiet_exporter_logs():
            warnings.simplefilter("ignore")
            with contextlib.redirect_stdout(io.StringIO()):  # torch.onnx prints its progress: kept out of the user's log
                program = torch.onnx.export(MapAndScore(network, score_reduction), (example.to(network_device(network)),),
                                            input_names=["image"], output_names=["anomaly_map", "score"], dynamo=True,
                                            dynamic_shapes=({0: torch.export.Dim("batch", min=1, max=65536)},),
                                            verbose=False)
    finally:
        network.train(was_training)
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(suffix=".onnx.part", dir=folder)
    os.close(fd)
    try:
        program.save(tmp)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # readable like any other model file (mkstemp makes it private)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    return path


@contextlib.contextmanager
def _quiet_exporter_logs():
    """The exporter's packages log every graph pass at INFO, which the bundle's log configuration would print."""
    loggers = [logging.getLogger(n) for n in ("onnx_ir", "onnxscript", "torch.onnx", "torch.export")]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.WARNING)
    try:
        yield
    finally:
        for lg, level in zip(loggers, levels):
            lg.setLevel(level)


def network_device(network: torch.nn.Module) -> torch.device:
    """The device of the network's first parameter (CPU for a network without parameters)."""
    param = next(network.parameters(), None)
    return param.device if param is not None else torch.device("cpu")


class CompiledNetwork:
    """An exported graph (:func:`export_onnx`) run by ONNX Runtime or OpenVINO: called with images ``[N, C, H, W]``
    (float32), returns their maps ``[N, 1, H, W]`` and scores ``[N]`` (float32, CPU).

    Args:
        path: the ONNX file (see :func:`export_onnx`).
        backend: ``"onnxruntime"`` or ``"openvino"``.
        device: ONNX Runtime uses its CUDA provider on a CUDA device when it has one; OpenVINO runs on the CPU.
        precision: OpenVINO's inference precision: ``"f32"`` (default: the maps of PyTorch to :data:`TOLERANCE`) or a
            reduced one (``"bf16"``, ``"f16"``: faster on CPUs that have it, not held to PyTorch).
    """

    def __init__(self, path: str, backend: str, device: torch.device | str = "cpu", precision: str = "f32") -> None:
        self.difference: float | None = None  # relative to PyTorch on the probe batch (set by compile_network)
        if precision not in PRECISIONS:
            raise ConfigError(f"precision {precision!r}: must be one of {', '.join(repr(p) for p in PRECISIONS)}")
        self.path, self.backend, self.precision = path, backend, precision
        self._lock = threading.Lock()  # an OpenVINO infer request serves one call at a time (MONAI Label is threaded)
        if backend == "onnxruntime":
            import onnxruntime as ort

            providers = ["CPUExecutionProvider"]
            if torch.device(device).type == "cuda" and "CUDAExecutionProvider" in ort.get_available_providers():
                providers.insert(0, "CUDAExecutionProvider")
            options = ort.SessionOptions()
            options.log_severity_level = 3  # errors only: its graph-optimisation notices are not the user's business
            self._session = ort.InferenceSession(path, options, providers=providers)
        elif backend == "openvino":
            import openvino as ov

            core = ov.Core()
            self._compiled = core.compile_model(core.read_model(path), "CPU",
                                                {"INFERENCE_PRECISION_HINT": precision, "PERFORMANCE_HINT": "LATENCY"})
            self._request = self._compiled.create_infer_request()
        else:
            raise ValueError(f"{backend!r} is not a compiled backend (onnxruntime, openvino)")

    def __call__(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = np.ascontiguousarray(images.detach().cpu().numpy(), dtype=np.float32)
        if self.backend == "onnxruntime":
            maps, scores = self._session.run(["anomaly_map", "score"], {"image": x})
        else:
            with self._lock:
                self._request.infer({0: x})
                maps, scores = (self._request.get_output_tensor(i).data.copy() for i in range(2))
        return torch.from_numpy(maps), torch.from_numpy(scores)


def relative_difference(maps: torch.Tensor, reference: torch.Tensor) -> float:
    """``max |maps - reference| / max |reference|`` (the measure :data:`TOLERANCE` bounds)."""
    scale = float(reference.abs().max().clamp_min(1e-12))
    return float((maps.float() - reference.float()).abs().max()) / scale


def cache_graph(network: torch.nn.Module, input_shape: Sequence[int], graph_cache: str | os.PathLike | None = None,
                score_reduction: str = "mean") -> str:
    """The ONNX graph of ``network``'s current weights at ``input_shape`` ``(C, H, W)`` with ``score_reduction``:
    ``<graph_cache>/scrd-<digest>.onnx`` when it is there, else exported into ``graph_cache`` (a new temporary folder
    when that one cannot be written). Returns its path."""
    name = f"scrd-{graph_digest(network, input_shape, score_reduction)}.onnx"
    if graph_cache:
        path = os.path.join(os.fspath(graph_cache), name)
        if os.path.isfile(path):
            return path
        try:
            os.makedirs(graph_cache, exist_ok=True)
            if not os.access(graph_cache, os.W_OK):
                raise PermissionError(graph_cache)
        except OSError:
            path = None
    else:
        path = None
    if path is None:
        path = os.path.join(tempfile.mkdtemp(prefix="scrd_graph_"), name)
    logger.info(f"exporting the model to ONNX (once for these weights): {path}")
    return export_onnx(network, input_shape, path, score_reduction)


def compile_network(network: torch.nn.Module, backend: str, input_shape: Sequence[int], graph_cache: str | None = None,
                    device: torch.device | str = "cpu", precision: str = "f32",
                    score_reduction: str = "mean") -> CompiledNetwork | None:
    """The network compiled for ``backend`` (``"onnxruntime"``/``"openvino"``) from its graph (:func:`cache_graph`).
    None, with a warning, when that fails or when, at ``precision="f32"``, its maps or scores of a fixed probe batch
    differ from PyTorch's by more than :data:`TOLERANCE`: the scorer then stays with PyTorch.

    Args:
        network: the SCRD whose weights are loaded.
        backend: the compiled backend.
        input_shape: ``(C, H, W)`` of the preprocessed images.
        graph_cache: folder of cached graphs (the bundle's ``models/compiled``; a registered model's artifacts).
        device, precision: see :class:`CompiledNetwork`.
        score_reduction: the image reduction (:func:`~monai_scrd.scoring.image_score`).
    """
    try:
        compiled = CompiledNetwork(cache_graph(network, input_shape, graph_cache, score_reduction), backend, device, precision)
        x = torch.rand(2, *[int(s) for s in input_shape], generator=torch.Generator().manual_seed(1))
        was_training = network.training
        network.eval()
        try:
            with torch.no_grad():
                ref_maps, ref_scores = (t.cpu() for t in MapAndScore(network, score_reduction)(x.to(network_device(network))))
        finally:
            network.train(was_training)
        maps, scores = compiled(x)
        compiled.difference = max(relative_difference(maps, ref_maps), relative_difference(scores, ref_scores))
    except Exception as e:  # noqa: BLE001 - any failure of the exporter or the runtime: PyTorch still scores
        first = str(e).splitlines()[0] if str(e) else ""
        logger.warning(f"backend {backend!r} unavailable for this model ({type(e).__name__}: {first}); scoring with PyTorch")
        return None
    if precision == "f32" and not compiled.difference <= TOLERANCE:
        logger.warning(f"backend {backend!r} differs from PyTorch by {compiled.difference:.2e} (relative, allowed "
                       f"{TOLERANCE:g}) on this model; scoring with PyTorch")
        return None
    return compiled
