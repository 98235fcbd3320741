"""The compiled backends (ONNX Runtime, OpenVINO) give PyTorch's anomaly maps and image scores (1e-4 relative), with the
calibration, the scale weighting and the image reduction of the trained model; graphs are cached per set of weights;
a backend that is not installed, unknown or wrong is named in one line, and one that differs falls back to PyTorch."""

from __future__ import annotations

import logging
import os
import shutil

import pytest
import torch

from monai_scrd.data.errors import ConfigError
from monai_scrd.networks import SCRD
from monai_scrd.scoring import Scorer
from monai_scrd.scoring import backends
from monai_scrd.scoring.backends import TOLERANCE, installed_backends, relative_difference, resolve_backend

COMPILED = [b for b in installed_backends() if b != "torch"]
SIZE = 64


def _network(scale_weighting: str) -> SCRD:
    """A Lite0 SCRD (ImageNet teacher, random student) with a non-trivial calibration and scale weights, so that
    a graph that dropped or froze any of them would differ."""
    torch.manual_seed(0)
    net = SCRD("efficientnet_lite0", True, scale_weighting=scale_weighting, alpha_floor=0.5).eval()
    net.anomaly_map.scale_mean.copy_(torch.tensor([0.30, 0.20, 0.10]))
    net.anomaly_map.scale_std.copy_(torch.tensor([0.05, 0.10, 0.20]))
    net.anomaly_map.scale_weights.copy_(torch.tensor([0.2, 0.5, 0.3]))
    return net


@pytest.fixture(scope="module")
def graph_cache(tmp_path_factory):
    """One graph folder for the module: each exported graph (about 8 s) is made once and found again by digest."""
    return str(tmp_path_factory.mktemp("graphs"))


def test_cpu_default_is_the_first_installed_compiled_backend():
    assert installed_backends()[0] == "torch"
    expected = COMPILED[0] if COMPILED else "torch"
    assert resolve_backend("auto", "cpu") == expected
    assert resolve_backend("auto", "cuda") == "torch"  # PyTorch stays the default on a GPU
    assert resolve_backend("torch", "cpu") == "torch"


@pytest.mark.skipif(not COMPILED, reason="no compiled backend installed")
@pytest.mark.parametrize("backend", COMPILED)
@pytest.mark.parametrize("weighting,reduction", [("alpha", "top5%"), ("auto", "mean"), ("uniform", "max")])
def test_backend_matches_pytorch(graph_cache, backend, weighting, reduction):
    """Each scale weighting and image reduction once (one graph each, exported for the first backend)."""
    net, cache = _network(weighting), graph_cache
    x = torch.rand(5, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(3))
    ref_maps, ref_scores = Scorer(net, image_size=SIZE, score_reduction=reduction, batch_size=2).forward(x, keep_maps=True)
    scorer = Scorer(net, image_size=SIZE, score_reduction=reduction, batch_size=2, backend=backend, graph_cache=cache)
    maps, scores = scorer.forward(x, keep_maps=True)  # batches of 2, 2 and 1: the batch size is dynamic
    assert scorer.backend == backend and scorer.compiled() is not None  # no fall-back to PyTorch
    assert maps.shape == ref_maps.shape == (5, 1, SIZE, SIZE)
    assert relative_difference(maps, ref_maps) <= TOLERANCE
    assert relative_difference(scores, ref_scores) <= TOLERANCE
    assert ref_maps.std() > 0.01  # the maps are not constant: the comparison means something


@pytest.mark.skipif(not COMPILED, reason="no compiled backend installed")
def test_graph_is_cached_per_weights(graph_cache, tmp_path, monkeypatch):
    net = _network("auto")
    Scorer(net, image_size=SIZE, backend=COMPILED[0], graph_cache=graph_cache).compiled()
    first = [f for f in os.listdir(graph_cache) if f.startswith(f"scrd-{backends.graph_digest(net, (3, SIZE, SIZE), 'mean')}")]
    assert len(first) == 1 and first[0].endswith(".onnx")
    shutil.copy(os.path.join(graph_cache, first[0]), tmp_path)

    def no_export(*args, **kwargs):
        raise AssertionError("exported again although the graph of these weights is cached")

    monkeypatch.setattr(backends, "export_onnx", no_export)
    monkeypatch.setattr(backends, "_has", lambda module: module not in ("onnx", "onnxscript"))  # a serving env
    assert Scorer(net, image_size=SIZE, backend=COMPILED[-1], graph_cache=tmp_path).compiled() is not None
    monkeypatch.undo()
    net.anomaly_map.scale_mean.add_(0.01)  # other weights (here: another calibration), another graph
    Scorer(net, image_size=SIZE, backend=COMPILED[0], graph_cache=tmp_path).compiled()
    assert len(os.listdir(tmp_path)) == 2


@pytest.mark.skipif(not COMPILED, reason="no compiled backend installed")
def test_backend_that_differs_falls_back_to_pytorch(graph_cache, monkeypatch, caplog):
    net = _network("alpha")
    monkeypatch.setattr(backends, "relative_difference", lambda maps, reference: 10 * TOLERANCE)
    scorer = Scorer(net, image_size=SIZE, backend=COMPILED[0], graph_cache=graph_cache, score_reduction="top5%")
    x = torch.rand(2, 3, SIZE, SIZE)
    with caplog.at_level(logging.WARNING, logger="monai_scrd.scoring"):
        scores = scorer.forward(x)[1]
    assert scorer.backend == "torch" and scorer.compiled() is None
    assert any("differs from PyTorch" in r.getMessage() for r in caplog.records)
    assert torch.allclose(scores, Scorer(net, image_size=SIZE, score_reduction="top5%").forward(x)[1])


def test_unknown_or_missing_backend_is_one_line(monkeypatch):
    with pytest.raises(ConfigError, match=r"^backend 'tensorrt': must be one of 'auto', 'torch', 'onnxruntime', 'openvino'$"):
        resolve_backend("tensorrt", "cpu")
    monkeypatch.setattr(backends, "_has", lambda module: module != "openvino")
    with pytest.raises(ConfigError, match=r"^backend 'openvino': needs the Python package openvino \(pip install openvino\)$"):
        Scorer(_network("alpha"), image_size=SIZE, backend="openvino")
    assert resolve_backend("auto", "cpu") == "onnxruntime"
