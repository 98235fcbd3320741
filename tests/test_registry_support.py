"""Helpers (no tests) shared by the registry and MONAI Label tests: a tiny trained SCRD bundle and small PNG, DICOM and
NIfTI images, all made in seconds on the CPU (nothing downloaded), and a server started and stopped around a block."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator

import numpy as np
import torch
from test_data_utils import make_dicom as write_dicom

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BUNDLE = os.path.join(REPO, "bundles", "scrd")
IMAGE_SIZE = 64
TOL = 1e-5


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def clean_env(**extra) -> dict:
    """Environment for a fresh subprocess: no PYTHONPATH pointing at the checkout, no inherited MLflow URIs."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI")}
    env.update({k: str(v) for k, v in extra.items()})
    return env


def _log_tail(path, chars: int = 4000) -> str:
    with open(path, errors="replace") as f:
        return f.read()[-chars:]


def stop_process_group(proc: subprocess.Popen) -> None:
    """SIGTERM the process group of ``proc`` (started with ``start_new_session=True``), wait up to 20 s, then SIGKILL
    what is left of the group (workers, or a leader that ignored SIGTERM). A group that is already gone (the server
    crashed) is not an error, so the test reports the crash, not the clean-up."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(timeout=20)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=10)


@contextlib.contextmanager
def running_server(cmd: list[str], ready_url: str, log_path, *, cwd, env: dict, timeout: float = 180) -> Iterator:
    """Start a server (own process group, stdout+stderr to ``log_path``), wait until ``ready_url`` answers, yield the
    process, and stop the whole group afterwards. Any failure, while starting or in the ``with`` block, is raised with
    the tail of the server's own output, which usually names the real cause."""
    log = open(log_path, "w")
    proc = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.time() + timeout
        while True:
            if proc.poll() is not None:
                raise AssertionError(f"server exited with code {proc.returncode}: {' '.join(cmd)}\n{_log_tail(log_path)}")
            try:
                urllib.request.urlopen(ready_url, timeout=5).close()
                break
            except (urllib.error.URLError, ConnectionError, OSError):
                if time.time() > deadline:
                    raise AssertionError(f"server did not answer {ready_url} in {timeout:.0f} s\n{_log_tail(log_path)}")
                time.sleep(1)
        try:
            yield proc
        except Exception as exc:
            raise AssertionError(f"{type(exc).__name__}: {exc}\n--- server output (tail) ---\n{_log_tail(log_path)}") from exc
    finally:
        stop_process_group(proc)
        log.close()


def bundle_scoring() -> tuple[str, str]:
    """The repository bundle's ``(scale_weighting, score_reduction)`` (inference.json), so that the test networks
    and reference scores follow the shipped scoring."""
    from monai_scrd.scoring.scorer import resolve_score_reduction

    with open(os.path.join(BUNDLE, "configs", "inference.json")) as f:
        cfg = json.load(f)
    # "auto": what the threshold record names; the test's record is written with the fixed default
    return cfg["scale_weighting"], resolve_score_reduction(cfg["score_reduction"], None)


def _write_configs(bundle_dir: str) -> None:
    """The repository bundle's inference config (and metadata) with ``image_size`` set small; a minimal equivalent
    when the bundle has no inference config yet."""
    cfg_dir = os.path.join(bundle_dir, "configs")
    os.makedirs(cfg_dir, exist_ok=True)
    src = os.path.join(BUNDLE, "configs", "inference.json")
    if os.path.isfile(src):
        with open(src) as f:
            cfg = json.load(f)
    else:
        cfg = {
            "imports": ["$import monai_scrd"],
            "backbone": "efficientnet_lite0",
            "contrastive": True,
            "scale_adaptive": True,
            "score_reduction": "mean",
            "network_def": {"_target_": "monai_scrd.networks.SCRD", "backbone": "@backbone", "pretrained": False,
                            "contrastive": "@contrastive", "scale_adaptive": "@scale_adaptive"},
        }
    cfg["image_size"] = IMAGE_SIZE
    cfg["bundle_root"] = bundle_dir
    with open(os.path.join(cfg_dir, "inference.json"), "w") as f:
        json.dump(cfg, f, indent=2)
    meta = os.path.join(BUNDLE, "configs", "metadata.json")
    if os.path.isfile(meta):
        shutil.copy(meta, os.path.join(cfg_dir, "metadata.json"))
    else:
        with open(os.path.join(cfg_dir, "metadata.json"), "w") as f:
            json.dump({"name": "SCRD unsupervised anomaly detection", "version": "0.1.0"}, f)


def train_tiny_bundle(bundle_dir: str, iterations: int = 3, seed: int = 0) -> tuple[torch.nn.Module, str]:
    """Train an SCRD (EfficientNet-Lite0 teacher, random weights) for a few iterations at 64 px with a plain loop and
    save it like the bundle does: ``models/model.pt`` = ``{"model": state_dict}`` plus ``models/threshold.json``.
    Returns ``(network in eval mode, bundle_dir)``."""
    from monai_scrd.losses import ReverseDistillationLoss
    from monai_scrd.networks import SCRD
    from monai_scrd.scoring import image_score

    _write_configs(bundle_dir)
    torch.manual_seed(seed)
    # the bundle configs' scale-head and scoring settings, so that a net built from them scores the same
    weighting, reduction = bundle_scoring()
    net = SCRD("efficientnet_lite0", pretrained=False, contrastive=True, scale_adaptive=True, alpha_floor=0.5,
               scale_weighting=weighting)
    opt = torch.optim.Adam([p for p in net.parameters() if p.requires_grad], lr=1e-3)
    loss_fn = ReverseDistillationLoss()
    net.train()
    for _ in range(iterations):
        x = torch.rand(2, 3, IMAGE_SIZE, IMAGE_SIZE)
        u, v, alpha = net(x)
        loss = loss_fn(u, v, alpha)
        opt.zero_grad()
        loss.backward()
        opt.step()
    net.eval()
    models = os.path.join(bundle_dir, "models")
    os.makedirs(models, exist_ok=True)
    torch.save({"model": {k: v.detach().cpu() for k, v in net.state_dict().items()}}, os.path.join(models, "model.pt"))
    with torch.no_grad():
        scores = image_score(net(torch.rand(4, 3, IMAGE_SIZE, IMAGE_SIZE)), reduction)
    with open(os.path.join(models, "threshold.json"), "w") as f:
        json.dump({"threshold": float(scores.median()), "method": "test: median of random images", "fitted_on": "test",
                   "score_reduction": reduction, "scale_weighting": weighting}, f)
    return net, bundle_dir


def make_dicom(path: str, stored: np.ndarray) -> str:
    """16-bit MONOCHROME2 DICOM with a rescale (slope 2, intercept -100) and 0.7 mm pixels."""
    return write_dicom(path, stored, slope=2, intercept=-100, pixel_spacing=(0.7, 0.7))


def make_images(folder: str, seed: int = 1) -> dict[str, str]:
    """PNG (8-bit gray, 70x60), DICOM (16-bit, rescaled, 56x72), 2D NIfTI (float, 48x40), 3D NIfTI (40x36x3) and
    a corrupt PNG. Returns ``{kind: path}``."""
    import nibabel as nib
    from PIL import Image

    os.makedirs(folder, exist_ok=True)
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:70, 0:60]
    png = (128 + 60 * np.sin(xx / 6.0) * np.cos(yy / 9.0) + rng.normal(0, 10, (70, 60))).clip(0, 255).astype(np.uint8)
    paths = {"png": os.path.join(folder, "case_png.png")}
    Image.fromarray(png).save(paths["png"])
    dcm = (1000 + 400 * rng.random((56, 72))).astype(np.uint16)
    dcm[20:30, 30:45] += 900  # a bright "lesion"
    paths["dicom"] = make_dicom(os.path.join(folder, "case_dcm.dcm"), dcm)
    nii = (rng.random((48, 40)) * 300).astype(np.float32)
    paths["nifti"] = os.path.join(folder, "case_nii.nii.gz")
    nib.save(nib.Nifti1Image(nii, np.diag([0.8, 0.8, 2.0, 1.0])), paths["nifti"])
    vol = (rng.random((40, 36, 3)) * 500).astype(np.float32)
    paths["volume"] = os.path.join(folder, "case_vol.nii.gz")
    nib.save(nib.Nifti1Image(vol, np.eye(4)), paths["volume"])
    paths["broken"] = os.path.join(folder, "broken.png")
    with open(paths["broken"], "wb") as f:
        f.write(b"\x89PNG\r\n\x1a\n" + bytes(rng.integers(0, 256, 200, dtype=np.uint8)))
    return paths


@torch.no_grad()
def direct_scores(net: torch.nn.Module, paths: list[str]) -> list[float]:
    """Reference scores computed with the core pieces only: preprocessing_transforms -> SCRD -> image_score (the
    bundle's reduction)."""
    from monai_scrd.data.transforms import preprocessing_transforms
    from monai_scrd.scoring import image_score

    tf = preprocessing_transforms("image", image_size=IMAGE_SIZE)
    reduction = bundle_scoring()[1]
    out = []
    for p in paths:
        x = torch.as_tensor(tf({"image": p})["image"])[None].float()
        out.append(float(image_score(net.eval()(x), reduction)[0]))
    return out


def bundle_inference_scores(bundle_dir: str, paths: list[str], output_dir: str) -> dict[str, float] | None:
    """Scores from the bundle's own inference config (``scores.csv``), or None when the bundle has no inference yet."""
    import csv

    if not os.path.isfile(os.path.join(BUNDLE, "configs", "inference.json")):
        return None
    from monai.bundle import ConfigWorkflow

    wf = ConfigWorkflow(
        config_file=os.path.join(bundle_dir, "configs", "inference.json"),
        workflow_type="infer",
        bundle_root=bundle_dir,
        inputs=list(paths),
        output_dir=output_dir,
        device="cpu",
        save_heatmaps=False,
    )
    wf.initialize()
    wf.run()
    wf.finalize()
    with open(os.path.join(output_dir, "scores.csv")) as f:
        return {row["path"]: float(row["score"]) for row in csv.DictReader(f)}


PYTHON = sys.executable
