"""MONAI Label server serving SCRD on 127.0.0.1: /info/ and /infer/ over HTTP with PNG, DICOM and NIfTI studies,
the given bundle served (not a model an earlier training of the app published) and named in /info/ and at start,
score and heatmap checked, clear HTTP errors for bad requests, server still serving after them, a small request
answered while a large image is being scored, stopped at the end.

Started as a user does, ``python -m monai_scrd.label serve`` with this environment's Python, which runs the server in
the MONAI Label venv of this environment (``scripts/install_label.sh``; ``monai_scrd.label.default_label_venv``).
Without that venv the test is skipped, unless ``SCRD_REQUIRE_LABEL=1`` (CI) makes that a failure."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request

import pytest

from monai_scrd.label import default_label_venv
from monai_scrd.scoring.backends import requested_backend, resolve_backend

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from test_registry_support import (  # noqa: E402
    REPO,
    TOL,
    clean_env,
    direct_scores,
    free_port,
    make_images,
    running_server,
    train_tiny_bundle,
)


def _require_label_venv() -> None:
    venv = default_label_venv()
    python = os.path.join(venv, "bin", "python")
    ok = os.path.isfile(python) and subprocess.run(
        [python, "-c", "import monailabel"], capture_output=True, timeout=120
    ).returncode == 0
    if not ok:
        msg = f"MONAI Label venv not found at {venv} (run: bash scripts/install_label.sh)"
        if os.environ.get("SCRD_REQUIRE_LABEL", "") not in ("", "0"):
            pytest.fail(msg)
        pytest.skip(msg)


def _post(url: str, timeout: float = 120):
    return urllib.request.urlopen(urllib.request.Request(url, data=b"", method="POST"), timeout=timeout)


def _http_error(url: str) -> tuple[int, dict]:
    with pytest.raises(urllib.error.HTTPError) as err:
        _post(url)
    return err.value.code, json.loads(err.value.read().decode())


@pytest.mark.slow
def test_monai_label_server(tmp_path):
    _require_label_venv()
    net, bundle = train_tiny_bundle(str(tmp_path / "bundle"))
    studies = tmp_path / "studies"
    imgs = make_images(str(studies))
    os.remove(imgs["volume"])  # keep the studies to 2D images + the corrupt one
    from PIL import Image
    import numpy as np

    # a large image (within the pixel budget): scoring it takes seconds, decoding included
    ramp = np.add.outer(np.arange(6000) % 251, np.arange(6000) % 241).astype(np.uint8)
    Image.fromarray(ramp).save(studies / "big.png")
    thr = json.load(open(os.path.join(bundle, "models", "threshold.json")))["threshold"]
    expected = dict(zip(("png", "dicom", "nifti"), direct_scores(net, [imgs[k] for k in ("png", "dicom", "nifti")])))
    # a model that an earlier training of this app published: the server given --bundle serves the bundle, not it
    app = tmp_path / "app"
    train_tiny_bundle(str(app / "model" / "scrd"), seed=7)
    stale_thr = json.load(open(app / "model" / "scrd" / "models" / "threshold.json"))["threshold"]
    assert stale_thr != pytest.approx(thr)

    port = free_port()
    env = clean_env(MONAI_LABEL_SESSION_PATH=str(tmp_path / "sessions"), PYTHONPATH=REPO)
    cmd = [sys.executable, "-m", "monai_scrd.label", "serve", "--studies", str(studies), "--bundle", bundle,
           "--app-dir", str(app), "--host", "127.0.0.1", "--port", str(port), "--device", "cpu"]
    base = f"http://127.0.0.1:{port}"
    with running_server(cmd, base + "/info/", tmp_path / "server.log", cwd=tmp_path, env=env) as proc:
        info = json.loads(urllib.request.urlopen(base + "/info/", timeout=10).read().decode())
        assert "scrd" in info["models"]
        model_info = info["models"]["scrd"]
        assert model_info["threshold"] == pytest.approx(thr) and model_info["image_size"] == 64
        # which model is served: in /info/ and in one line at start
        assert model_info["served"] == {"source": "bundle", "path": bundle,
                                        "checkpoint": os.path.join(bundle, "models", "model.pt"), "threshold": model_info["threshold"],
                                        "backend": resolve_backend(requested_backend(), "cpu")}
        assert info["trainers"]["scrd"]["served_after_training"] is False
        lines = [ln for ln in (tmp_path / "server.log").read_text(errors="replace").splitlines() if "SCRD serves" in ln]
        assert len(lines) == 1 and lines[0].endswith(
            f"SCRD serves bundle {bundle} (weights {bundle}/models/model.pt), threshold {thr:.6g}"), lines
        assert "Pydantic serializer warnings" not in (tmp_path / "server.log").read_text(errors="replace")  # quiet start
        assert info["datastore"]["total"] == 5  # png, dcm, nii.gz, broken.png, big.png

        ids = {"png": "case_png", "dicom": "case_dcm", "nifti": "case_nii"}
        for kind, image_id in ids.items():
            res = json.loads(_post(f"{base}/infer/scrd?image={image_id}&output=json").read().decode())
            assert abs(res["score"] - expected[kind]) <= TOL, (kind, res, expected[kind])
            assert res["is_anomaly"] == (res["score"] >= thr)
            assert res["label"] == ("anomaly" if res["is_anomaly"] else "normal")

        # a small request is answered while a large one is being scored (inference runs in the server's thread pool)
        finished = []
        big = threading.Thread(target=lambda: finished.append(("big", _post(f"{base}/infer/scrd?image=big&output=json").status)))
        big.start()
        log = tmp_path / "server.log"
        deadline = time.time() + 60
        while "'image': 'big'" not in log.read_text(errors="replace") and time.time() < deadline:  # the big request has started
            time.sleep(0.05)
        res = json.loads(_post(f"{base}/infer/scrd?image=case_png&output=json").read().decode())
        finished.append(("small", 200))
        big.join(timeout=300)
        assert abs(res["score"] - expected["png"]) <= TOL
        assert finished == [("small", 200), ("big", 200)], finished

        # the heatmap as the result file: NIfTI at the image's own size, with the image's affine
        import nibabel as nib

        r = _post(f"{base}/infer/scrd?image=case_nii&output=image")
        assert r.status == 200
        heat = tmp_path / "heat.nii.gz"
        heat.write_bytes(r.read())
        himg = nib.load(str(heat))
        assert himg.shape[:2] == (48, 40)
        assert np.allclose(np.diag(himg.affine)[:2], [0.8, 0.8])
        assert np.isfinite(himg.get_fdata()).all() and himg.get_fdata().max() > 0
        r = _post(f"{base}/infer/scrd?image=case_png&output=image")  # PNG input: map at 70x60
        heat.write_bytes(r.read())
        assert nib.load(str(heat)).shape[:2] == (70, 60)

        # bad requests: clear errors, and the server keeps serving
        code, body = _http_error(f"{base}/infer/nope?image=case_png&output=json")
        assert code == 404 and "nope" in body["detail"] and "scrd" in body["detail"]
        code, body = _http_error(f"{base}/infer/scrd?image=broken&output=json")
        assert code == 422 and "broken.png" in body["detail"]
        code, body = _http_error(f"{base}/infer/scrd?image=ghost&output=json")
        assert code == 404 and "ghost" in body["detail"]
        assert urllib.request.urlopen(base + "/info/", timeout=10).status == 200
        res = json.loads(_post(f"{base}/infer/scrd?image=case_dcm&output=json").read().decode())
        assert abs(res["score"] - expected["dicom"]) <= TOL
    assert proc.poll() is not None


def test_default_label_venv(monkeypatch, tmp_path):
    """One MONAI Label venv per environment: inside a venv or conda env, in ~/.cache for a system-wide Python."""
    monkeypatch.delenv("SCRD_LABEL_VENV", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    venv, conda, system = tmp_path / "venv", tmp_path / "conda", tmp_path / "usr"
    (conda / "conda-meta").mkdir(parents=True)
    system.mkdir()
    for prefix, base, expected in (
        (venv, system, venv / "monai-scrd-label"),
        (conda, conda, conda / "monai-scrd-label"),
        (system, system, tmp_path / "home" / ".cache" / "monai-scrd" / "label-venv"),
    ):
        monkeypatch.setattr(sys, "prefix", str(prefix))
        monkeypatch.setattr(sys, "base_prefix", str(base))
        assert default_label_venv() == str(expected)
    monkeypatch.setenv("SCRD_LABEL_VENV", "~/elsewhere")
    assert default_label_venv() == str(tmp_path / "home" / "elsewhere")


def test_serve_without_label_venv_says_what_to_run(monkeypatch, tmp_path, capsys):
    import importlib.util

    from monai_scrd.label.__main__ import main

    if importlib.util.find_spec("monailabel") is not None:
        pytest.skip("this Python has monailabel: serve would start the server")
    monkeypatch.setenv("SCRD_LABEL_VENV", str(tmp_path / "missing"))
    assert main(["serve", "--studies", str(tmp_path), "--app-dir", str(tmp_path / "app")]) == 2
    err = capsys.readouterr().err
    assert str(tmp_path / "missing") in err and "scripts/install_label.sh" in err


def test_readme_serve_commands_parse_and_serve_one_model(capsys):
    """The README's ``serve`` commands run as written: one with a bundle, one with the registered model (issue 21: the
    README suggested adding --model-uri next to --bundle, which argparse refuses); bundle-only settings are refused
    with a registered model, which is served as it was registered."""
    import re
    import shlex

    from monai_scrd.label.__main__ import parse_args

    with open(os.path.join(REPO, "README.md")) as f:
        blocks = re.findall(r"^```bash[ \t]*\n(.*?)^```", f.read(), re.M | re.S)
    commands = []
    for body in blocks:
        for line in body.replace("\\\n", " ").splitlines():
            words = shlex.split(line, comments=True)
            if words[:4] == ["python", "-m", "monai_scrd.label", "serve"]:
                commands.append(words[4:])
    served = {"model_uri" if parse_args(["serve", *c]).model_uri else "bundle" for c in commands}
    assert served == {"bundle", "model_uri"}, commands
    for argv, message in (
        (["--bundle", "b", "--model-uri", "models:/scrd@champion"], "argument --model-uri: not allowed with argument --bundle"),
        (["--model-uri", "models:/scrd@champion", "--threshold", "0.1"], "--threshold: only with --bundle"),
        (["--bundle", "b", "--tracking-uri", "sqlite:///m.db"], "--tracking-uri: only with --model-uri"),
    ):
        with pytest.raises(SystemExit) as err:
            parse_args(["serve", "--studies", "s", *argv])
        assert err.value.code == 2 and message in capsys.readouterr().err
