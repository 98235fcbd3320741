"""One file, one score: the same five files (PNG, DICOM, 2D NIfTI, a 3D NIfTI volume and a broken PNG) through the
four entry points -- the bundle's evaluation, the bundle's inference, the registered MLflow pyfunc and the MONAI Label
server -- with a bundle at NON-default settings (96 px, percentile intensity scaling with 2/98 %) give identical
scores (1e-5), identical threshold decisions and the same one-line error for the broken file, with every installed
backend (PyTorch, ONNX Runtime, OpenVINO), each held to PyTorch's reference scores.

The MONAI Label part needs the label venv (``scripts/install_label.sh``); without it that test is skipped, unless
``SCRD_REQUIRE_LABEL=1`` (CI) makes it a failure, as in ``test_label.py``."""

from __future__ import annotations

import csv
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request

import numpy as np
import pytest
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from test_registry_support import BUNDLE, REPO, TOL, clean_env, free_port, make_images, train_tiny_bundle  # noqa: E402

SETTINGS = {"image_size": 96, "intensity": "percentile", "percentiles": [2.0, 98.0]}
KINDS = ("png", "dicom", "nifti", "volume")
LABELS = {"png": 0, "dicom": 1, "nifti": 0, "volume": 1, "broken": 1}


def _write_bundle_configs(bundle: str) -> None:
    """The repository's train/evaluate/inference configs with the non-default settings and this bundle as root."""
    cfg_dir = os.path.join(bundle, "configs")
    for name in ("train.json", "inference.json"):
        with open(os.path.join(BUNDLE, "configs", name)) as f:
            cfg = json.load(f)
        for key in ("image_size", "intensity", "percentiles"):
            assert key in cfg, f"{name} has no top-level {key!r}: the bundle's settings must reach its scorer"
        cfg.update(SETTINGS, bundle_root=bundle)
        if "pretrained_weights" in cfg:
            cfg["pretrained_weights"] = False
        with open(os.path.join(cfg_dir, name), "w") as f:
            json.dump(cfg, f, indent=2)
    shutil.copy(os.path.join(BUNDLE, "configs", "evaluate.json"), cfg_dir)


@torch.no_grad()
def _reference_scores(net, paths: list[str], **settings) -> list[float]:
    """Scores from the core pieces alone (2D): preprocessing_transforms -> SCRD -> image_score (the bundle's reduction)."""
    from test_registry_support import bundle_scoring

    from monai_scrd.data.transforms import preprocessing_transforms
    from monai_scrd.scoring import image_score

    tf = preprocessing_transforms("image", **settings)
    reduction = bundle_scoring()[1]
    return [float(image_score(net.eval()(torch.as_tensor(tf({"image": p})["image"])[None].float()), reduction)[0])
            for p in paths]


def _workflow(config_files: list[str], run_id: str, **override):
    from monai.bundle import ConfigWorkflow

    wf = ConfigWorkflow(config_file=config_files, logging_file=False, run_id=run_id, workflow_type=None, **override)
    wf.initialize()
    with pytest.raises(SystemExit):  # the broken file makes the run exit non-zero, after the other results
        wf.run()
    wf.finalize()


def _csv(path: str) -> dict[str, dict]:
    with open(path) as f:
        return {row["path"]: row for row in csv.DictReader(f)}


from monai_scrd.scoring.backends import installed_backends  # noqa: E402


def _graphs(folder: str) -> list[str]:
    return sorted(f for f in os.listdir(folder) if f.endswith(".onnx")) if os.path.isdir(folder) else []


@pytest.fixture(scope="module", params=installed_backends())
def case(tmp_path_factory, request):
    backend = request.param
    root = os.path.realpath(str(tmp_path_factory.mktemp(f"consistency_{backend}")))
    net, bundle = train_tiny_bundle(os.path.join(root, "bundle"))
    _write_bundle_configs(bundle)
    data = os.path.join(root, "data")
    images = make_images(data)
    paths = {k: os.path.realpath(images[k]) for k in (*KINDS, "broken")}
    ref = _reference_scores(net, [paths[k] for k in ("png", "dicom", "nifti")], **SETTINGS)
    lo = sorted(ref)
    threshold = (lo[0] + lo[1]) / 2  # between two scores: some files flagged, some not, none on the edge
    with open(os.path.join(bundle, "models", "threshold.json"), "w") as f:
        json.dump({"threshold": threshold, "method": "test: between two reference scores"}, f)
    with open(os.path.join(data, "datalist.json"), "w") as f:
        json.dump({"test": [{"image": os.path.basename(paths[k]), "label": LABELS[k]} for k in (*KINDS, "broken")]}, f)
    order = [paths[k] for k in (*KINDS, "broken")]
    out: dict = {"root": root, "net": net, "bundle": bundle, "paths": paths, "threshold": threshold, "reference": ref,
                 "data": data, "backend": backend}
    cfg = os.path.join(bundle, "configs")

    # 1. bundle evaluation (`run evaluating`)
    _workflow([os.path.join(cfg, "train.json"), os.path.join(cfg, "evaluate.json")], "evaluating",
              datalist=os.path.join(data, "datalist.json"), eval_dir=os.path.join(root, "eval"),
              output_dir=os.path.join(root, "runs"), device="cpu", backend=backend)
    rows, errors = _csv(os.path.join(root, "eval", "scores.csv")), _csv(os.path.join(root, "eval", "errors.csv"))
    out["evaluation"] = ({p: (float(r["score"]), r["is_anomaly"] == "1") for p, r in rows.items()},
                         {p: r["error"] for p, r in errors.items()})

    # 2. bundle inference (`run`)
    _workflow([os.path.join(cfg, "inference.json")], "run", inputs=order, output_dir=os.path.join(root, "infer"),
              device="cpu", save_heatmaps=False, backend=backend)
    rows, errors = _csv(os.path.join(root, "infer", "scores.csv")), _csv(os.path.join(root, "infer", "errors.csv"))
    out["inference"] = ({p: (float(r["score"]), r["is_anomaly"] == "1") for p, r in rows.items()},
                        {p: r["error"] for p, r in errors.items()})

    # 3. the registered MLflow pyfunc
    import mlflow
    import pandas as pd

    from monai_scrd.registry import register_model

    uri = f"sqlite:///{os.path.join(root, 'mlflow.db')}"
    cwd = os.getcwd()
    os.chdir(root)
    prev = (mlflow.get_tracking_uri(), mlflow.get_registry_uri(), os.environ.get("SCRD_DEVICE"), os.environ.get("SCRD_BACKEND"))
    try:
        os.environ["SCRD_DEVICE"], os.environ["SCRD_BACKEND"] = "cpu", backend
        register_model("scrd", bundle_dir=bundle, tracking_uri=uri, alias="champion", example_paths=[paths["png"]])
        mlflow.set_tracking_uri(uri)
        mlflow.set_registry_uri(uri)
        model = mlflow.pyfunc.load_model("models:/scrd@champion")
        pred = model.predict(pd.DataFrame({"image": order}))
        out["pyfunc_backend"] = model.unwrap_python_model().scorer.backend
        out["registered_graphs"] = _graphs(os.path.join(mlflow.artifacts.download_artifacts("models:/scrd@champion"),
                                                        "artifacts", "compiled"))
    finally:
        os.chdir(cwd)
        mlflow.set_tracking_uri(prev[0])
        mlflow.set_registry_uri(prev[1])
        for name, value in (("SCRD_DEVICE", prev[2]), ("SCRD_BACKEND", prev[3])):
            os.environ.pop(name, None) if value is None else os.environ.__setitem__(name, value)
    out["pyfunc_rows"] = json.loads(pred.to_json(orient="records"))
    out["pyfunc"] = ({r["image"]: (float(r["score"]), bool(r["is_anomaly"])) for r in out["pyfunc_rows"] if not r["error"]},
                     {r["image"]: r["error"] for r in out["pyfunc_rows"] if r["error"]})
    return out


def _check_same(case, name: str) -> None:
    ref_scores, ref_errors = case["evaluation"]
    scores, errors = case[name]
    paths = case["paths"]
    assert sorted(scores) == sorted(paths[k] for k in KINDS), (name, sorted(scores))
    for k in KINDS:
        p = paths[k]
        assert abs(scores[p][0] - ref_scores[p][0]) <= TOL, (name, k, scores[p][0], ref_scores[p][0])
        assert scores[p][1] == ref_scores[p][1] == (scores[p][0] >= case["threshold"]), (name, k)
    assert errors == ref_errors, name


def test_evaluation_uses_the_bundle_settings(case):
    scores, errors = case["evaluation"]
    paths = case["paths"]
    for k, ref in zip(("png", "dicom", "nifti"), case["reference"]):  # the non-default settings were applied
        assert abs(scores[paths[k]][0] - ref) <= TOL, k
    default = _reference_scores(case["net"], [paths["png"]], image_size=SETTINGS["image_size"])[0]
    assert abs(scores[paths["png"]][0] - default) > 1e-4  # ... and they matter (minmax gives another score)
    decisions = [scores[paths[k]][1] for k in KINDS]
    assert any(decisions) and not all(decisions)  # the threshold splits the files
    assert list(errors) == [paths["broken"]]
    assert errors[paths["broken"]].startswith(paths["broken"] + ": ") and "\n" not in errors[paths["broken"]]


def test_each_backend_runs_the_graph_of_these_weights(case):
    """The compiled backends ran (no silent fall-back to PyTorch) on the graph exported beside the bundle's weights;
    the registered model carries that same graph (none when registered with ``SCRD_BACKEND=torch``)."""
    assert case["pyfunc_backend"] == case["backend"]
    graphs = _graphs(os.path.join(case["bundle"], "models", "compiled"))
    if case["backend"] == "torch":
        assert graphs == [] and case["registered_graphs"] == []
    else:
        assert len(graphs) == 1 and graphs[0].startswith("scrd-") and case["registered_graphs"] == graphs


def test_inference_and_pyfunc_agree_with_evaluation(case):
    _check_same(case, "inference")
    _check_same(case, "pyfunc")
    rows = case["pyfunc_rows"]
    assert [r["image"] for r in rows] == [case["paths"][k] for k in (*KINDS, "broken")]
    assert rows[-1]["score"] is None and rows[-1]["is_anomaly"] is None  # JSON null, not NaN


def _label_python() -> str:
    """The MONAI Label venv's Python (skips, or fails with SCRD_REQUIRE_LABEL=1, when it is missing)."""
    from test_label import _require_label_venv

    from monai_scrd.label import default_label_venv

    _require_label_venv()
    return os.path.join(default_label_venv(), "bin", "python")


def _post(url: str, timeout: float = 120):
    return urllib.request.urlopen(urllib.request.Request(url, data=b"", method="POST"), timeout=timeout)


@pytest.mark.slow
def test_monai_label_agrees_with_evaluation(case, tmp_path):
    python = _label_python()
    studies = tmp_path / "studies"
    studies.mkdir()
    for k in (*KINDS, "broken"):
        shutil.copy(case["paths"][k], studies)
    port = free_port()
    log_path = tmp_path / "server.log"
    env = clean_env(MONAI_LABEL_SESSION_PATH=str(tmp_path / "sessions"), PYTHONPATH=REPO)
    with open(log_path, "w") as log:
        proc = subprocess.Popen(
            [python, "-m", "monai_scrd.label", "serve", "--studies", str(studies), "--bundle", case["bundle"],
             "--app-dir", str(tmp_path / "app"), "--host", "127.0.0.1", "--port", str(port), "--device", "cpu",
             "--conf", "backend", case["backend"]],
            cwd=tmp_path, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        )
    base = f"http://127.0.0.1:{port}"
    scores, errors = {}, {}
    try:
        deadline = time.time() + 180
        while True:
            assert proc.poll() is None, "server exited:\n" + log_path.read_text()[-4000:]
            try:
                info = json.loads(urllib.request.urlopen(base + "/info/", timeout=5).read().decode())
                break
            except (urllib.error.URLError, ConnectionError, OSError):
                assert time.time() < deadline, "MONAI Label did not start in 180 s:\n" + log_path.read_text()[-4000:]
                time.sleep(1)
        for k in (*KINDS, "broken"):
            name = os.path.basename(case["paths"][k])
            image_id = name[: -len(".nii.gz")] if name.endswith(".nii.gz") else os.path.splitext(name)[0]
            where = str(studies / name)
            try:
                res = json.loads(_post(f"{base}/infer/scrd?image={image_id}&output=json").read().decode())
                scores[where] = (res["score"], res["is_anomaly"])
            except urllib.error.HTTPError as e:
                assert e.code == 422, (k, e.code)
                errors[where] = json.loads(e.read().decode())["detail"]
    finally:
        try:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(timeout=20)
        except (ProcessLookupError, subprocess.TimeoutExpired):
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)
    assert info["models"]["scrd"]["served"]["backend"] == case["backend"], info["models"]["scrd"]["served"]
    # the studies are copies: compare by file name, the error with the copy's path in it
    ref_scores, ref_errors = case["evaluation"]
    by_name = {os.path.basename(p): v for p, v in ref_scores.items()}
    assert {os.path.basename(p) for p in scores} == set(by_name)
    for p, (score, decision) in scores.items():
        ref = by_name[os.path.basename(p)]
        assert abs(score - ref[0]) <= TOL and decision == ref[1], (p, score, ref)
    broken = case["paths"]["broken"]
    copy = str(studies / os.path.basename(broken))
    assert errors == {copy: ref_errors[broken].replace(broken, copy)}
    np.testing.assert_equal(len(scores), len(KINDS))
