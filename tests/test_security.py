"""Security and robustness (issue 13): each numbered finding's attack, and the safe outcome.

1. MONAI Label server: absolute paths, ``..`` and symbolic links out of the studies folder answer the same 404 as a
   missing image, on ``/infer`` and ``/datastore/`` (read, list, upload, delete, label); CORS is off. 2. The pyfunc
   reads only under its input roots (same row error for missing and not allowed, naming SCRD_INPUT_ROOTS) and writes
   maps only under its output roots. 3. A registered model loads without unpickling: tampered artifacts are refused,
   an MLmodel switched to a pickle is refused by our loaders whatever MLFLOW_ALLOW_PICKLE_DESERIALIZATION says, and no
   marker file appears. 4. Pixel budget from the header; resizing linear in pixels.
5. File names of any bytes survive CSV outputs; errors.csv is always written. 6. Silent wrong answers are refused:
   another image size than the trained one, repeated or overlapping datalist entries, unreadable validation images.
7. Errors are one line. 8. Rows are flushed as they are scored.
"""

from __future__ import annotations

import csv
import json
import os
import pickle
import subprocess
import sys
import urllib.error
import urllib.request

import numpy as np
import pytest
import torch
from PIL import Image

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from test_registry_support import REPO, clean_env, free_port, make_images, train_tiny_bundle  # noqa: E402

from monai_scrd.data import DataError  # noqa: E402
from monai_scrd.networks import SCRD  # noqa: E402
from monai_scrd.scoring import ErrorCollector, Preprocessor, Scorer, ScoreWriter  # noqa: E402


class _Marker:
    """Unpickling this writes a marker file: what an attacker's pickle would do."""

    def __init__(self, path: str) -> None:
        self.path = path

    def __reduce__(self):
        return (open, (self.path, "w"))


def _png(path, size=(40, 48), value=None) -> str:
    # random pixels: a constant image is refused (nothing to score); ``value`` picks another image
    arr = np.random.default_rng(0 if value is None else 1000 + value).integers(0, 256, size, dtype=np.uint8)
    Image.fromarray(arr).save(path)
    return os.fspath(path)


@pytest.fixture(scope="module")
def model_dirs(tmp_path_factory):
    """A tiny trained bundle and its pyfunc saved with MLflow (no registry needed): the registered model's format."""
    import mlflow.pyfunc

    from monai_scrd.registry.pyfunc import SCRDPyfuncModel, model_code_path, model_signature
    from monai_scrd.registry.spec import SPEC_FILE, WEIGHTS_FILE, spec_from_bundle, write_model_dir

    root = tmp_path_factory.mktemp("security")
    net, bundle = train_tiny_bundle(str(root / "bundle"))
    spec = spec_from_bundle(bundle)
    model_dir = write_model_dir(root / "weights", os.path.join(bundle, "models", "model.pt"), spec)
    pyfunc_dir = str(root / "pyfunc")
    mlflow.pyfunc.save_model(pyfunc_dir, python_model=model_code_path(), signature=model_signature(),
                             artifacts={"weights": os.path.join(model_dir, WEIGHTS_FILE), "spec": os.path.join(model_dir, SPEC_FILE)})
    assert isinstance(SCRDPyfuncModel(), SCRDPyfuncModel)
    return {"root": root, "net": net, "bundle": bundle, "pyfunc": pyfunc_dir}


def _load_pyfunc(path: str, **env):
    import mlflow.pyfunc

    old = {k: os.environ.get(k) for k in ("SCRD_DEVICE", "SCRD_INPUT_ROOTS", "SCRD_OUTPUT_ROOTS")}
    os.environ.update(SCRD_DEVICE="cpu", **env)
    try:
        return mlflow.pyfunc.load_model(path)
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


# ------------------------------------------------------------------------------------------------ 1. MONAI Label
@pytest.mark.slow
def test_1_label_server_reads_only_its_studies(model_dirs, tmp_path):
    from test_label import _require_label_venv
    from test_registry_support import running_server

    _require_label_venv()
    studies = tmp_path / "studies"
    studies.mkdir()
    _png(studies / "case.png")
    secret = tmp_path / "outside" / "secret.png"
    secret.parent.mkdir()
    _png(secret)
    os.symlink(secret, studies / "link.png")  # a link inside the studies folder to a file outside it
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    env = clean_env(MONAI_LABEL_SESSION_PATH=str(tmp_path / "sessions"), PYTHONPATH=REPO)
    env.pop("MONAI_LABEL_CORS_ORIGINS", None)
    cmd = [sys.executable, "-m", "monai_scrd.label", "serve", "--studies", str(studies), "--bundle", model_dirs["bundle"],
           "--app-dir", str(tmp_path / "app"), "--host", "127.0.0.1", "--port", str(port), "--device", "cpu",
           "--conf", "train", "false"]

    def infer(image: str) -> tuple[int, str]:
        url = f"{base}/infer/scrd?image={urllib.request.quote(image, safe='')}&output=json"
        try:
            urllib.request.urlopen(urllib.request.Request(url, data=b"", method="POST"), timeout=120).close()
            return 200, ""
        except urllib.error.HTTPError as e:
            return e.code, json.loads(e.read().decode())["detail"]

    with running_server(cmd, base + "/info/", tmp_path / "server.log", cwd=tmp_path, env=env, timeout=300):
        assert infer("case")[0] == 200
        for attack in (str(secret), "../outside/secret.png", "../../../../../../etc/passwd", "/etc/passwd",
                       str(studies / "link.png"), "link", str(tmp_path / "missing.png"), "ghost"):
            code, detail = infer(attack)
            # the same answer for a file outside the studies folder as for one that does not exist
            assert code == 404, (attack, code, detail)
            assert detail == f"image {attack!r} is not in the studies folder (list them with GET /datastore/?output=all)"
        # /datastore/ is contained like /infer: the link to a file outside is neither listed, served, described,
        # overwritten nor deleted; ids and label tags that leave the folder are refused
        secret_bytes = secret.read_bytes()
        listed = json.loads(urllib.request.urlopen(f"{base}/datastore/?output=all", timeout=10).read().decode())
        assert "case" in listed["objects"] and "link" not in listed["objects"], listed
        status = json.loads(urllib.request.urlopen(f"{base}/datastore/", timeout=10).read().decode())
        assert status["total"] == 1, status
        with urllib.request.urlopen(f"{base}/datastore/image?image=case", timeout=10) as r:
            assert r.read() == (studies / "case.png").read_bytes()
        assert _call(f"{base}/datastore/image?image=link")[0] == 404
        assert _call(f"{base}/datastore/image?image=link", "HEAD")[0] == 404
        code, body = _call(f"{base}/datastore/image/info?image=link")
        assert code == 200 and body == b"{}", body  # as for an image that is not there: no path, no info
        code, body = _call(f"{base}/datastore/image?image=link", "PUT", _multipart("file", "x.png", b"overwritten"))
        assert code == 400, (code, body)
        code, body = _call(f"{base}/datastore/image?image=..%2Foutside%2Fnew", "PUT", _multipart("file", "x.png", b"new"))
        assert code == 400, (code, body)
        assert _call(f"{base}/datastore/image?id=link", "DELETE")[0] == 404
        code, body = _call(f"{base}/datastore/label?image=case&tag=..%2F..%2Foutside", "PUT", _multipart("label", "l.png", b"label"))
        assert code == 400, (code, body)
        assert secret.read_bytes() == secret_bytes and sorted(os.listdir(secret.parent)) == ["secret.png"]
        # CORS is off: a browser page of another origin gets no Access-Control-Allow-Origin
        req = urllib.request.Request(base + "/info/", headers={"Origin": "http://evil.example"})
        with urllib.request.urlopen(req, timeout=10) as r:
            assert r.headers.get("access-control-allow-origin") is None


def _multipart(field: str, filename: str, content: bytes) -> tuple[bytes, str]:
    boundary = "scrdtestboundary"
    body = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"{field}\"; filename=\"{filename}\"\r\n"
            f"Content-Type: application/octet-stream\r\n\r\n").encode() + content + f"\r\n--{boundary}--\r\n".encode()
    return body, f"multipart/form-data; boundary={boundary}"


def _call(url: str, method: str = "GET", data: tuple[bytes, str] | None = None) -> tuple[int, bytes]:
    """``(status, body)`` of a request, errors included."""
    body, ctype = data if data else (None, None)
    req = urllib.request.Request(url, data=body, method=method, headers={"Content-Type": ctype} if ctype else {})
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


# ------------------------------------------------------------------------------------------------ 2. pyfunc roots
def test_2_pyfunc_reads_and_writes_only_under_its_roots(model_dirs, tmp_path):
    import pandas as pd
    from mlflow.exceptions import MlflowException

    inside = tmp_path / "inputs"
    inside.mkdir()
    good = _png(inside / "a.png")
    outside = tmp_path / "private"
    outside.mkdir()
    secret = _png(outside / "secret.png")
    locked = _png(outside / "locked.png")
    os.chmod(locked, 0)
    os.symlink(secret, inside / "link.png")
    out_root = tmp_path / "maps"
    model = _load_pyfunc(model_dirs["pyfunc"], SCRD_INPUT_ROOTS=str(inside), SCRD_OUTPUT_ROOTS=str(out_root))
    attacks = [secret, locked, str(inside / "link.png"), str(inside / "../private/secret.png"), "/etc/passwd",
               str(inside / "missing.png"), str(outside / "missing.png")]
    out = model.predict(pd.DataFrame({"image": [good, *attacks]}))
    assert out["error"][0] == "" and out["score"][0] is not None
    for row in out.iloc[1:].itertuples():
        assert row.error == (f"{row.image}: no such image file in the folders this model may read (SCRD_INPUT_ROOTS; "
                             "default: the working directory)"), row
        assert row.score is None and row.is_anomaly is None
    # outputs: only under SCRD_OUTPUT_ROOTS
    evil = tmp_path / "evil_maps"
    with pytest.raises(MlflowException, match="not inside the folders allowed for outputs"):
        model.predict(pd.DataFrame({"image": [good]}), params={"return_map": True, "map_dir": str(evil)})
    assert not evil.exists()
    res = model.predict(pd.DataFrame({"image": [good]}), params={"return_map": True, "map_dir": str(out_root / "run1")})
    assert res["map_path"][0].startswith(str(out_root / "run1")) and os.path.isfile(res["map_path"][0])
    # without any output root, a client-given map_dir is refused
    model2 = _load_pyfunc(model_dirs["pyfunc"], SCRD_INPUT_ROOTS=str(inside))
    with pytest.raises(MlflowException):
        model2.predict(pd.DataFrame({"image": [good]}), params={"return_map": True, "map_dir": str(out_root / "run2")})


# ------------------------------------------------------------------------------------------------ 3. no unpickling
def test_3_registered_model_loads_without_unpickling(model_dirs, tmp_path, monkeypatch, capsys):
    import shutil

    import yaml

    src = model_dirs["pyfunc"]
    mlmodel = yaml.safe_load(open(os.path.join(src, "MLmodel")))
    assert "model_code_path" in mlmodel["flavors"]["python_function"]  # a model from code, not python_model.pkl
    assert not any(f.endswith(".pkl") for _, _, fs in os.walk(src) for f in fs)

    # (a) an attacker's python_model.pkl next to it is never read
    a = str(tmp_path / "a")
    shutil.copytree(src, a)
    marker_a = tmp_path / "marker_a"
    with open(os.path.join(a, "python_model.pkl"), "wb") as f:
        pickle.dump(_Marker(str(marker_a)), f)
    _load_pyfunc(a)
    assert not marker_a.exists()

    # (b) weights replaced by a pickle: refused, naming the file
    b = str(tmp_path / "b")
    shutil.copytree(src, b)
    marker_b = tmp_path / "marker_b"
    with open(os.path.join(b, "artifacts", "model.safetensors"), "wb") as f:
        pickle.dump({"model": _Marker(str(marker_b))}, f)
    with pytest.raises(Exception, match=r"model\.safetensors: not a readable safetensors weights file"):
        _load_pyfunc(b)
    assert not marker_b.exists()

    # (c) a spec naming code to run instead of the SCRD network: refused
    for i, network in enumerate(({"_target_": "os.system", "command": f"touch {tmp_path / 'marker_c'}"},
                                 {"backbone": f"$__import__('os').system('touch {tmp_path / 'marker_c'}')"},
                                 {"backbone": "efficientnet_lite0", "sigma": {"_target_": "os.getcwd"}})):
        c = str(tmp_path / f"c{i}")
        shutil.copytree(src, c)
        spec_file = os.path.join(c, "artifacts", "scrd_model.json")
        spec = json.load(open(spec_file))
        spec["network"] = network
        json.dump(spec, open(spec_file, "w"))
        with pytest.raises(Exception, match="model spec|network argument"):
            _load_pyfunc(c)
    assert not (tmp_path / "marker_c").exists()

    # (d) the MLmodel switched to a pickled python_model.pkl, or to a loader module that unpickles its data: our
    #     loaders refuse it before MLflow sees it, with MLflow's own default (pickles allowed) in the environment
    from monai_scrd.registry import RegistryError
    from monai_scrd.registry.__main__ import main as registry_main

    monkeypatch.delenv("MLFLOW_ALLOW_PICKLE_DESERIALIZATION", raising=False)
    monkeypatch.setenv("SCRD_DEVICE", "cpu")
    marker_d = tmp_path / "marker_d"
    image = _png(tmp_path / "d.png")
    for i, (flavor, reason) in enumerate(((
            {"python_model": "python_model.pkl"}, "it is a pickled Python model"),
            ({"loader_module": "mlflow.sklearn", "data": "model.pkl"}, "its loader module is 'mlflow.sklearn'"))):
        d = str(tmp_path / f"d{i}")
        shutil.copytree(src, d)
        spec = yaml.safe_load(open(os.path.join(d, "MLmodel")))
        spec["flavors"]["python_function"].pop("model_code_path")
        spec["flavors"]["python_function"].update(flavor)
        with open(os.path.join(d, "MLmodel"), "w") as f:
            yaml.safe_dump(spec, f)
        for name in ("python_model.pkl", "model.pkl"):
            with open(os.path.join(d, name), "wb") as f:
                pickle.dump(_Marker(str(marker_d)), f)
        monkeypatch.chdir(tmp_path)
        try:
            code = registry_main(["predict", "--model-uri", d, image])
        except Exception as e:  # noqa: BLE001 - what the unpickled object does next does not matter
            code = e
        err = capsys.readouterr().err
        assert not marker_d.exists(), "registry predict unpickled the model"
        assert code == 2, code
        assert err.startswith(f"error: {d}{os.sep}MLmodel: refused, not an SCRD model from code: {reason}"), err
        assert err.count("\n") == 1, err  # one line
        from monai_scrd.registry import load_model

        with pytest.raises(RegistryError, match=reason):
            load_model(d)
        assert not marker_d.exists()
    # the same model as saved loads with our loader, and scores
    import pandas as pd

    model = load_model(src, input_roots=[tmp_path])
    assert model.predict(pd.DataFrame({"image": [image]}))["error"][0] == ""


# ------------------------------------------------------------------------------------------------ 4. big images
def test_4_pixel_budget_from_the_header_and_linear_resize(tmp_path, monkeypatch):
    import nibabel as nib

    from monai_scrd.data.readers import read_medical_image
    from monai_scrd.data.transforms import ShrinkLargeImage
    from test_data_utils import make_dicom

    big = str(tmp_path / "big.png")
    halves = np.zeros((6000, 5000), np.uint8)
    halves[:, 2500:] = 255  # not constant: a constant image is refused (nothing to score)
    Image.fromarray(halves).save(big)  # 30 megapixels, a few kB of PNG
    monkeypatch.setenv("SCRD_MAX_PIXELS", str(10_000_000))
    with pytest.raises(DataError) as info:
        read_medical_image(big)
    assert str(info.value) == (f"{big}: image of 6000 x 5000 = 30,000,000 pixels is over the pixel budget of "
                               "10,000,000 (set SCRD_MAX_PIXELS to allow more)")
    monkeypatch.setenv("SCRD_MAX_PIXELS", str(1_000_000))
    vol = str(tmp_path / "vol.nii.gz")
    nib.save(nib.Nifti1Image(np.zeros((120, 100, 100), np.uint8), np.eye(4)), vol)
    with pytest.raises(DataError, match=r"vol\.nii\.gz: NIfTI image of 120 x 100 x 100 = 1,200,000 pixels is over"):
        read_medical_image(vol, allow_volume=True)
    dcm = make_dicom(tmp_path / "frames.dcm", np.zeros((12, 300, 300), np.uint16))
    with pytest.raises(DataError, match=r"frames\.dcm: DICOM image of 12 x 300 x 300 = 1,080,000 pixels is over"):
        read_medical_image(dcm, allow_volume=True)
    # under the budget, the big image is averaged down by blocks before the anti-aliased resize (linear in pixels)
    monkeypatch.delenv("SCRD_MAX_PIXELS")
    shrunk = ShrinkLargeImage(64)(torch.zeros(1, 6000, 5000))
    assert tuple(shrunk.shape) == (1, 6000 // 23, 5000 // 19)  # <= 4x the target left for the Gaussian resize
    small = torch.rand(1, 250, 200)
    assert ShrinkLargeImage(64)(small) is small  # images within 4x the target are untouched
    # a shrunk image and an untouched one go through the preprocessing into one training batch (same metadata)
    from monai.data import list_data_collate

    from monai_scrd.data.transforms import preprocessing_transforms

    small_png = _png(str(tmp_path / "small.png"))
    Image.fromarray(np.zeros((1500, 1300), np.uint8)).save(tmp_path / "large.png")
    tf = preprocessing_transforms(image_size=64)
    batch = list_data_collate([tf({"image": small_png}), tf({"image": str(tmp_path / "large.png")})])
    assert tuple(batch["image"].shape) == (2, 3, 64, 64)
    p = Preprocessor(image_size=64)(big)
    assert p.error == "" and tuple(p.images.shape) == (1, 3, 64, 64)


# ------------------------------------------------------------------------------------------------ 5 + 8. file names
def test_5_8_file_names_of_any_bytes_and_rows_flushed(tmp_path):
    from monai_scrd.engines import AnomalyInference

    folder = os.fsencode(str(tmp_path / "in"))
    os.makedirs(folder)
    raw = [folder + b"/ok.png", folder + b"/caf\xe9.png", folder + b"/\xff\xfe.png"]
    for name in raw:
        _png(os.fsdecode(name))
    bad = folder + b"/bad\xff.png"
    open(bad, "wb").write(b"not an image")
    paths = [os.fsdecode(n) for n in raw] + [os.fsdecode(bad)]
    torch.manual_seed(0)
    scorer = Scorer(SCRD("efficientnet_lite0", pretrained=False), image_size=64, batch_size=1)
    out = tmp_path / "out"
    rows = AnomalyInference(scorer, str(out), save_heatmaps=False)(paths)
    assert [r["path"] for r in rows] == paths[:3]

    def read(name):
        with open(out / name, newline="", encoding="utf-8", errors="surrogateescape") as f:
            return list(csv.DictReader(f))

    assert [r["path"] for r in read("scores.csv")] == paths[:3]  # the exact bytes come back
    assert all(os.path.exists(r["path"]) for r in read("scores.csv"))
    assert [r["path"] for r in read("errors.csv")] == [paths[3]]

    # 8: a row is on disk as soon as its file is scored (a crash loses at most the file being scored)
    writer = ScoreWriter(tmp_path / "out2")
    results = scorer.score(paths[:2])
    writer.add(next(results))
    with open(tmp_path / "out2" / "scores.csv", encoding="utf-8", errors="surrogateescape") as f:
        assert len(list(csv.DictReader(f))) == 1
    writer.close()
    # errors.csv is always written, a header alone when nothing failed
    ErrorCollector(tmp_path / "none" / "errors.csv").check()
    assert (tmp_path / "none" / "errors.csv").read_text().strip() == "path,error"


_INFER_UNTIL_KILLED = """
import sys, torch
from monai_scrd.engines import AnomalyInference
from monai_scrd.networks import SCRD
from monai_scrd.scoring import Scorer
torch.manual_seed(0)
scorer = Scorer(SCRD("efficientnet_lite0", pretrained=False), image_size=64, batch_size=1)
AnomalyInference(scorer, sys.argv[1])(sys.argv[2:])
"""


def test_8_kill_9_during_inference_keeps_the_scored_rows(tmp_path):
    """The attack of item 8: ``kill -9`` while inference runs. Every heatmap on disk has its row in scores.csv, except at
    most the one of the file being scored when the process died."""
    import signal
    import time

    (tmp_path / "in").mkdir()
    paths = [_png(str(tmp_path / "in" / f"case_{i:03d}.png"), value=i) for i in range(200)]
    out = tmp_path / "out"
    proc = subprocess.Popen([sys.executable, "-c", _INFER_UNTIL_KILLED, str(out), *paths], cwd=tmp_path,
                            env=clean_env(PYTHONPATH=REPO), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    scores = out / "scores.csv"
    deadline = time.time() + 240
    while time.time() < deadline and proc.poll() is None:
        if scores.exists() and len(scores.read_text().splitlines()) >= 4:  # header + 3 rows
            break
        time.sleep(0.05)
    assert proc.poll() is None, f"inference ended before it could be killed: {proc.stderr.read().decode()[-2000:]}"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=60)
    with open(scores, newline="") as f:
        rows = list(csv.DictReader(f))
    heatmaps = list((out / "heatmaps").glob("*.png")) if (out / "heatmaps").exists() else []
    assert 3 <= len(rows) < len(paths)
    assert all(r["path"] in paths and r["score"] for r in rows)  # no half-written row
    assert len(heatmaps) <= len(rows) + 1, (len(heatmaps), len(rows))


def test_5_commands_keep_file_names_of_any_bytes(model_dirs, tmp_path, monkeypatch, capsysbinary):
    """``prepare`` (JSON and duplicate report) and ``registry predict`` (its CSV rows) on names that are not UTF-8."""
    import shutil

    from monai_scrd.registry.__main__ import main as registry_main

    base = os.fsencode(str(tmp_path))
    os.makedirs(base + b"/train")
    os.makedirs(base + b"/test")
    trained = _png(os.fsdecode(base + b"/train/caf\xe9.png"))
    _png(os.fsdecode(base + b"/train/ok.png"), value=7)
    tested = os.fsdecode(base + b"/test/\xff\xfe.png")
    shutil.copy(trained, tested)  # a test image identical to a training image: listed in the duplicate report
    out = tmp_path / "dl.json"
    proc = subprocess.run([sys.executable, "-m", "monai_scrd.prepare", "--train-normal", os.fsdecode(base + b"/train"),
                           "--test-normal", os.fsdecode(base + b"/test"), "--output", str(out)],
                          cwd=tmp_path, env=clean_env(PYTHONPATH=REPO), capture_output=True, timeout=120)
    assert proc.returncode == 0, (proc.stdout + proc.stderr).decode(errors="replace")[-2000:]
    datalist = json.loads(out.read_text())
    assert [os.fsencode(i["image"]) for i in datalist["training"]] == [b"train/caf\xe9.png", b"train/ok.png"]
    assert [os.fsencode(i["image"]) for i in datalist["test"]] == [b"test/\xff\xfe.png"]
    assert b"test/\xff\xfe.png,0," in (tmp_path / "dl_duplicates.csv").read_bytes()

    monkeypatch.setenv("SCRD_DEVICE", "cpu")
    monkeypatch.setenv("SCRD_INPUT_ROOTS", str(tmp_path))
    mlflow_env = {k: os.environ.get(k) for k in ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI")}
    code = registry_main(["predict", "--model-uri", model_dirs["pyfunc"], "--tracking-uri", f"sqlite:///{tmp_path / 'm.db'}",
                          trained, tested])
    # the command's tracking URI does not stay in the calling process (whose child processes would inherit it)
    assert {k: os.environ.get(k) for k in mlflow_env} == mlflow_env
    printed = capsysbinary.readouterr()
    rows = list(csv.DictReader(printed.out.decode("utf-8", "surrogateescape").splitlines()))
    assert code == 0, printed.err[-2000:]
    assert [r["image"] for r in rows] == [trained, tested] and all(r["score"] for r in rows)


# ------------------------------------------------------------------------------------------------ 6. refusals
def test_6_refuses_silent_wrong_answers(tmp_path):
    from monai_scrd.data import ConfigError, load_datalist
    from monai_scrd.engines import validation_items

    # scoring at another image size than the model was trained (and its threshold fitted) at
    thr = tmp_path / "threshold.json"
    thr.write_text(json.dumps({"threshold": 0.5, "preprocessing": {"image_size": 128, "intensity": "minmax"}}))
    net = SCRD("efficientnet_lite0", pretrained=False)
    with pytest.raises(ConfigError, match=r"threshold\.json: the model was trained with image_size=128, not 64"):
        Scorer(net, image_size=64, threshold=str(thr))
    with pytest.raises(ConfigError, match="intensity='minmax', not 'percentile'"):
        Scorer(net, image_size=128, intensity="percentile", threshold=str(thr))
    Scorer(net, image_size=128, threshold=str(thr))  # the trained settings are fine
    # ... or with another image reduction or scale weighting than the threshold was fitted with
    thr.write_text(json.dumps({"threshold": 0.5, "score_reduction": "top5%", "scale_weighting": "uniform"}))
    with pytest.raises(ConfigError, match="trained with score_reduction='top5%', not 'mean'"):
        Scorer(SCRD("efficientnet_lite0", pretrained=False, scale_weighting="uniform"), score_reduction="mean", threshold=str(thr))
    with pytest.raises(ConfigError, match="trained with scale_weighting='uniform', not 'alpha'"):
        Scorer(SCRD("efficientnet_lite0", pretrained=False, scale_weighting="alpha"), score_reduction="top5%", threshold=str(thr))
    Scorer(SCRD("efficientnet_lite0", pretrained=False, scale_weighting="uniform"), score_reduction="top5%", threshold=str(thr))
    # ... or a threshold of the removed scale weighting "max" (no network can score that way any more)
    thr.write_text(json.dumps({"threshold": 0.5, "score_reduction": "mean", "scale_weighting": "max"}))
    with pytest.raises(ConfigError) as err:
        Scorer(SCRD("efficientnet_lite0", pretrained=False, scale_weighting="uniform"), score_reduction="mean", threshold=str(thr))
    assert "\n" not in str(err.value) and str(err.value).startswith(f"{thr}: scale_weighting='max' was removed")

    for i in range(3):
        _png(tmp_path / f"n{i}.png")
    dl = tmp_path / "dl.json"
    cases = {
        "listed twice": {"training": [{"image": "n0.png"}, {"image": "n1.png"}, {"image": "./n0.png"}]},
        "validation images must not be training images": {"training": [{"image": "n0.png"}], "validation": [{"image": "n0.png"}]},
        "test images must not be training images": {"training": [{"image": "n0.png"}], "test": [{"image": "n0.png", "label": 1}]},
        "cannot be both normal and anomalous": {"test": [{"image": "n1.png", "label": 0}, {"image": "n1.png", "label": 1}]},
    }
    for fragment, content in cases.items():
        dl.write_text(json.dumps(content))
        with pytest.raises(DataError, match=fragment) as info:
            load_datalist(dl)
        assert str(info.value).startswith(f"{dl}: ") and "\n" not in str(info.value)
    # unreadable validation images refuse the run (no threshold fitted on the readable part)
    (tmp_path / "bad.png").write_bytes(b"junk")
    dl.write_text(json.dumps({"training": [{"image": "n0.png"}], "validation": [{"image": "n1.png"}, {"image": "bad.png"}]}))
    with pytest.raises(DataError, match=r"1 of 2 validation images are unreadable") as info:
        validation_items(dl)
    assert "bad.png" in str(info.value)


# ------------------------------------------------------------------------------------------------ 7. one-line errors
def test_7_errors_are_one_line(tmp_path, caplog):
    from ignite.engine import Engine

    from monai_scrd.checkpoint import CheckpointError
    from monai_scrd.data.prepare import main as prepare_main
    from monai_scrd.engines import TrainerCheckpointLoader, latest_checkpoint
    from monai_scrd.scoring import read_threshold

    # a bundle command on a bad datalist: one line, no traceback
    (tmp_path / "dl.json").write_text(json.dumps({"training": [{"image": "missing.png"}], "tesst": []}))
    train = os.path.join(REPO, "bundles", "scrd", "configs", "train.json")
    proc = subprocess.run([sys.executable, "-m", "monai.bundle", "run", "training", "--config_file", train,
                           "--datalist", str(tmp_path / "dl.json"), "--output_dir", str(tmp_path / "run"),
                           "--model_dir", str(tmp_path / "models"), "--pretrained_weights", "false"],
                          cwd=REPO, env=clean_env(PYTHONPATH=REPO), capture_output=True, text=True, timeout=600)
    assert proc.returncode == 1
    lines = [ln for ln in proc.stderr.splitlines() if ln.startswith("error: ")]
    assert lines == [f"error: {tmp_path / 'dl.json'}: unknown key 'tesst' (expected training, validation, test); "
                     "did you mean 'test'? (set SCRD_DEBUG=1 for the traceback)"], proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr
    # a truncated latest checkpoint is skipped with a warning naming it; a malformed threshold file is named
    torch.save({"trainer": {"iteration": 3}}, tmp_path / "a.pt")
    (tmp_path / "b.pt").write_bytes(b"PK\x03\x04 truncated")
    with caplog.at_level("WARNING", logger="monai_scrd.engines"):
        assert latest_checkpoint(tmp_path).endswith("a.pt")
    assert f"{tmp_path / 'b.pt'}: unreadable checkpoint (truncated?), skipped" in caplog.text

    # --resume_from a corrupt file, or a checkpoint of another backbone: one line naming the file
    def resume(path):
        trainer = Engine(lambda engine, batch: None)
        TrainerCheckpointLoader(load_path=str(path), load_dict={"model": SCRD("efficientnet_lite0", pretrained=False)}).attach(trainer)
        trainer.run([0], max_epochs=1)

    with pytest.raises(CheckpointError, match=r"b\.pt: not a readable weights-only torch checkpoint"):
        resume(tmp_path / "b.pt")
    other = tmp_path / "resnet18.pt"
    torch.save({"model": SCRD("resnet18", pretrained=False).state_dict(), "trainer": {"iteration": 1, "epoch_length": 1,
                                                                                     "max_epochs": 1}}, other)
    with pytest.raises(CheckpointError, match=r"resnet18\.pt: checkpoint does not match SCRD: \d+ shape mismatches") as info:
        resume(other)
    assert "\n" not in str(info.value)
    (tmp_path / "threshold.json").write_text("{not json")
    with pytest.raises(ValueError, match=r"threshold\.json: not a threshold file \(invalid JSON"):
        read_threshold(tmp_path / "threshold.json")
    # a binary file given to the datalist builder as CSV
    (tmp_path / "bin.csv").write_bytes(bytes(range(256)) * 4)
    assert prepare_main(["--csv", str(tmp_path / "bin.csv"), "--output", str(tmp_path / "out.json")]) == 2
