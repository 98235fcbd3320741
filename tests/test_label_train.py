"""MONAI Label train task on 127.0.0.1, from an app without trained weights to a served model: the server starts with
only the train task, refuses to train on fewer than the minimum of studies marked normal, trains a few iterations
through the bundle's train config with progress in the train status, publishes the bundle, and the next infer uses
the new weights (scores equal to the trained bundle's own scorer).

Needs the MONAI Label venv (``scripts/install_label.sh``), like tests/test_label.py; skipped without it unless
``SCRD_REQUIRE_LABEL=1``."""

from __future__ import annotations

import json
import os
import shutil
import sys
import time
import urllib.error
import urllib.parse
import urllib.request

import numpy as np
import pytest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from test_label import _require_label_venv  # noqa: E402
from test_registry_support import BUNDLE, REPO, TOL, clean_env, free_port, running_server  # noqa: E402


def _studies(folder: str, n: int) -> list[str]:
    """``n`` smooth 64x64 8-bit gray PNGs ``case00.png``... (the datastore ids are ``case00``...)."""
    from PIL import Image

    os.makedirs(folder, exist_ok=True)
    yy, xx = np.mgrid[0:64, 0:64]
    ids = []
    for i in range(n):
        rng = np.random.default_rng(i)
        img = 120 + 50 * np.sin(xx / (5.0 + i % 3)) * np.cos(yy / 7.0) + rng.normal(0, 8, (64, 64))
        Image.fromarray(img.clip(0, 255).astype(np.uint8)).save(os.path.join(folder, f"case{i:02d}.png"))
        ids.append(f"case{i:02d}")
    return ids


def _request(url: str, method: str = "GET", data: bytes | None = None, headers: dict | None = None, timeout: float = 60):
    req = urllib.request.Request(url, data=data, method=method, headers=headers or {})
    with urllib.request.urlopen(req, timeout=timeout) as r:
        return json.loads(r.read().decode())


def _mark_normal(base: str, image_id: str) -> None:
    body = urllib.parse.urlencode({"info": json.dumps({"normal": True})}).encode()
    _request(f"{base}/datastore/image/info?image={image_id}", "PUT", body,
             {"Content-Type": "application/x-www-form-urlencoded"})


def _train(base: str, params: dict) -> dict:
    return _request(f"{base}/train/scrd", "POST", json.dumps(params).encode(), {"Content-Type": "application/json"})


def _wait_for_training(base: str, task_id: str, timeout: float, log_path) -> tuple[dict, list[str]]:
    """Poll ``GET /train/`` until the task ends; returns the final task and the statuses seen."""
    deadline, seen = time.time() + timeout, []
    while True:
        task = _request(f"{base}/train/")
        assert task["id"] == task_id
        seen.append(task["status"])
        if task["status"] not in ("SUBMITTED", "RUNNING"):
            return task, seen
        assert time.time() < deadline, "training did not finish:\n" + open(log_path).read()[-4000:]
        time.sleep(1)


@pytest.mark.slow
@pytest.mark.timeout(900)  # three Python processes start torch and MONAI: server, refused training, training
def test_train_task_trains_publishes_and_serves(tmp_path):
    _require_label_venv()
    bundle = tmp_path / "bundle"  # the repository bundle's configs, no trained weights
    shutil.copytree(os.path.join(BUNDLE, "configs"), bundle / "configs")
    studies = tmp_path / "studies"
    ids = _studies(str(studies), 11)
    normal, query = ids[:10], ids[10]
    app_dir = tmp_path / "app"

    port = free_port()
    log_path = tmp_path / "server.log"
    env = clean_env(MONAI_LABEL_SESSION_PATH=str(tmp_path / "sessions"), PYTHONPATH=REPO, OMP_NUM_THREADS="2")
    # serve runs in the active environment and re-runs itself with the label venv's Python
    cmd = [sys.executable, "-m", "monai_scrd.label", "serve", "--studies", str(studies), "--bundle", str(bundle),
           "--app-dir", str(app_dir), "--host", "127.0.0.1", "--port", str(port), "--device", "cpu"]
    base = f"http://127.0.0.1:{port}"
    with running_server(cmd, base + "/info/", log_path, cwd=tmp_path, env=env) as proc:
        info = _request(base + "/info/", timeout=10)
        # no weights yet: a train task, no infer model, and a clear answer to an infer request
        assert "scrd" in info["trainers"] and "scrd" not in info["models"]
        assert info["trainers"]["scrd"]["config"]["min_normal_studies"] == 10
        with pytest.raises(urllib.error.HTTPError) as err:
            _request(f"{base}/infer/scrd?image={query}&output=json", "POST", b"")
        assert err.value.code == 404 and "no trained weights yet" in json.loads(err.value.read())["detail"]

        # nine studies marked normal: refused, nothing published
        for image_id in normal[:9]:
            _mark_normal(base, image_id)
        task, _ = _wait_for_training(base, _train(base, {"max_iterations": 2})["id"], 300, log_path)
        assert task["status"] == "ERROR", task
        assert any("9 studies marked normal in the datastore, at least 10 needed" in line for line in task["details"]), task
        assert not (app_dir / "model" / "scrd").exists()

        # the tenth: a short training through the bundle's train config
        _mark_normal(base, normal[9])
        params = {"max_iterations": 3, "image_size": 64, "batch_size": 4, "pretrained_weights": False}
        task, seen = _wait_for_training(base, _train(base, params)["id"], 420, log_path)
        assert task["status"] == "DONE", "\n".join(task.get("details", [])) + open(log_path).read()[-4000:]
        assert "RUNNING" in seen
        details = "\n".join(task["details"])
        assert "SCRD training: iteration 3/3" in details and "model published to" in details, details
        assert "served from the next request" in details, details  # the bundle has no weights: the trained one is served

        trained = app_dir / "model" / "scrd"
        assert (trained / "models" / "model.pt").is_file() and not (app_dir / "model" / "scrd.training").exists()
        threshold = json.load(open(trained / "models" / "threshold.json"))["threshold"]
        datalist = json.load(open(trained / "datalist.json"))
        used = sorted(os.path.basename(d["image"]) for d in datalist["training"] + datalist["validation"])
        assert used == [f"{i}.png" for i in normal] and len(datalist["validation"]) == 2
        assert json.load(open(trained / "configs" / "train.json"))["max_iterations"] == 3

        # the next requests use the new model
        info = _request(base + "/info/")
        assert info["models"]["scrd"]["image_size"] == 64
        assert info["models"]["scrd"]["threshold"] == pytest.approx(threshold)
        assert info["models"]["scrd"]["served"]["source"] == "app training"
        assert info["models"]["scrd"]["served"]["path"] == str(trained)
        assert info["train_stats"]["scrd"]["status"] == "DONE" and info["train_stats"]["scrd"]["iteration"] == 3
        res = _request(f"{base}/infer/scrd?image={query}&output=json", "POST", b"", timeout=120)
        from monai_scrd.registry import scorer_from_bundle

        _, scorer = scorer_from_bundle(str(trained), device="cpu")
        expected = next(scorer.score([str(studies / f"{query}.png")]))
        assert expected.ok and abs(res["score"] - expected.score) <= TOL, (res, expected.row())
        assert res["threshold"] == pytest.approx(threshold)
    assert proc.poll() is not None
