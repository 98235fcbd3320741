"""MLflow model registry: a tiny trained model registered in a temporary sqlite registry, loaded by alias in a fresh
process and over REST on loopback, with scores equal to the core pieces and to the bundle's inference (1e-5)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import urllib.error
import urllib.request

import numpy as np
import pytest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from test_registry_support import (  # noqa: E402
    IMAGE_SIZE,
    PYTHON,
    REPO,
    TOL,
    bundle_inference_scores,
    clean_env,
    direct_scores,
    free_port,
    make_images,
    running_server,
    train_tiny_bundle,
)

from monai_scrd.scoring.backends import installed_backends  # noqa: E402

mlflow = pytest.importorskip("mlflow")

GOOD = ("png", "dicom", "nifti")


def _download(model_uri: str, uri: str) -> str:
    """Local copy of a logged model (``models:/...`` URIs resolve through the global tracking URI)."""
    prev_t, prev_r = mlflow.get_tracking_uri(), mlflow.get_registry_uri()
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    try:
        return mlflow.artifacts.download_artifacts(artifact_uri=model_uri)
    finally:
        mlflow.set_tracking_uri(prev_t)
        mlflow.set_registry_uri(prev_r)


@pytest.fixture(scope="module")
def registered(tmp_path_factory):
    """Tiny bundle trained, images written, model registered as scrd@champion in a temp sqlite registry."""
    from monai_scrd.registry import register_model

    root = tmp_path_factory.mktemp("registry")
    net, bundle = train_tiny_bundle(str(root / "bundle"))
    images = make_images(str(root / "images"))
    uri = f"sqlite:///{root / 'mlflow.db'}"
    cwd = os.getcwd()
    os.chdir(root)  # MLflow's default artifact folder (./mlruns) goes into the temp folder
    try:
        version = register_model("scrd", bundle_dir=bundle, tracking_uri=uri, alias="champion",
                                 example_paths=[images["png"]])
    finally:
        os.chdir(cwd)
    return {"root": root, "net": net, "bundle": bundle, "images": images, "uri": uri, "version": version}


FRESH_SCRIPT = r"""
import json, sys
import mlflow, pandas as pd
model = mlflow.pyfunc.load_model("models:/scrd@champion")
paths = json.loads(sys.argv[1])
out = model.predict(pd.DataFrame({"image": paths}), params={"return_map": True, "map_dir": sys.argv[2]})
import monai_scrd
print("RESULT" + json.dumps({"rows": json.loads(out.to_json(orient="records")), "columns": list(out.columns),
                             "monai_scrd": monai_scrd.__file__}))
"""


def test_registered_version(registered):
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=registered["uri"], registry_uri=registered["uri"])
    mv = client.get_model_version_by_alias("scrd", "champion")
    assert str(mv.version) == str(registered["version"].version) == "1"
    thr = json.load(open(os.path.join(registered["bundle"], "models", "threshold.json")))["threshold"]
    assert float(mv.tags["scrd.threshold"]) == pytest.approx(thr)
    assert mv.tags["scrd.backbone"] == "efficientnet_lite0"
    assert int(mv.tags["scrd.image_size"]) == IMAGE_SIZE
    # signature, input example, metadata and artifacts travel with the model
    local = _download(mv.source, registered["uri"])
    mlmodel = open(os.path.join(local, "MLmodel")).read()
    assert "signature:" in mlmodel and '"name": "image"' in mlmodel and "saved_input_example_info" in mlmodel
    assert "scrd_threshold" in mlmodel
    for name in ("model.safetensors", "scrd_model.json", "threshold.json", "metadata.json"):
        assert os.path.isfile(os.path.join(local, "artifacts", name)), name
    spec = json.load(open(os.path.join(local, "artifacts", "scrd_model.json")))
    assert spec["preprocessing"]["image_size"] == IMAGE_SIZE and spec["threshold"]["threshold"] == pytest.approx(thr)
    assert spec["metadata"].get("name")
    assert os.path.isfile(os.path.join(local, "code", "monai_scrd", "registry", "pyfunc.py"))


def test_load_by_alias_in_fresh_process(registered, tmp_path):
    """Fresh interpreter, run from an unrelated folder without PYTHONPATH: PNG, DICOM and NIfTI scores equal the
    direct model scores and the bundle's inference within 1e-5; a bad file gives an error row, not a crash."""
    imgs = registered["images"]
    paths = [imgs[k] for k in GOOD] + [imgs["broken"], str(tmp_path / "missing.png"), imgs["volume"]]
    work = tmp_path / "elsewhere"
    work.mkdir()
    proc = subprocess.run(
        [PYTHON, "-c", FRESH_SCRIPT, json.dumps(paths), str(tmp_path / "maps")],
        cwd=work, env=clean_env(MLFLOW_TRACKING_URI=registered["uri"], SCRD_DEVICE="cpu",
                                SCRD_INPUT_ROOTS=str(registered["root"]), SCRD_OUTPUT_ROOTS=str(tmp_path)),
        capture_output=True, text=True, timeout=240,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    line = next(ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT"))
    res = json.loads(line[len("RESULT"):])
    rows = res["rows"]
    assert res["columns"] == ["image", "score", "is_anomaly", "error", "map_path"]
    # the model's own copy of the code is imported first (MLflow puts its code folder at the front of sys.path)
    assert os.sep + "code" + os.sep + "monai_scrd" in res["monai_scrd"], res["monai_scrd"]

    expected = direct_scores(registered["net"], [imgs[k] for k in GOOD])
    thr = json.load(open(os.path.join(registered["bundle"], "models", "threshold.json")))["threshold"]
    for row, exp in zip(rows[:3], expected):
        assert row["error"] == ""
        assert abs(row["score"] - exp) <= TOL, (row, exp)
        assert row["is_anomaly"] == (row["score"] >= thr)
        assert os.path.isfile(row["map_path"]) and row["map_path"].endswith(".nii.gz")
    import nibabel as nib

    assert nib.load(rows[2]["map_path"]).shape[:2] == (48, 40)  # NIfTI map at the input's own size
    assert rows[3]["score"] is None  # a failed row has no score (JSON null, never NaN)
    assert "broken.png" in rows[3]["error"] and rows[3]["is_anomaly"] is None and rows[3]["map_path"] == ""
    assert rows[4]["error"] == (f"{paths[4]}: no such image file in the folders this model may read (SCRD_INPUT_ROOTS; "
                                "default: the working directory)")
    assert rows[5]["error"] == "" and np.isfinite(rows[5]["score"])  # 3D NIfTI scored slice by slice

    bundle_scores = bundle_inference_scores(registered["bundle"], paths[:3] + [imgs["volume"]], str(tmp_path / "bundle_out"))
    if bundle_scores is not None:  # the bundle's own inference config gives the same scores
        for row in rows[:3] + [rows[5]]:
            assert abs(row["score"] - bundle_scores[row["image"]]) <= TOL, (row, bundle_scores)


@pytest.mark.slow
@pytest.mark.parametrize("backend", installed_backends())
def test_rest_scoring_on_loopback(registered, tmp_path, backend):
    """`mlflow models serve` of models:/scrd@champion on 127.0.0.1, with each installed backend: JSON in, PyTorch's
    scores out (the compiled backends run the graph the registered model carries); a bad request is a 400."""
    port = free_port()
    cmd = [PYTHON, "-m", "mlflow", "models", "serve", "-m", "models:/scrd@champion", "--env-manager", "local",
           "-h", "127.0.0.1", "-p", str(port)]
    env = clean_env(MLFLOW_TRACKING_URI=registered["uri"], SCRD_DEVICE="cpu", SCRD_OUTPUT_ROOTS=str(tmp_path),
                    SCRD_BACKEND=backend)
    base = f"http://127.0.0.1:{port}"
    with running_server(cmd, base + "/ping", tmp_path / "serve.log", cwd=registered["root"], env=env, timeout=150):
        imgs = registered["images"]
        body = {"dataframe_split": {"columns": ["image"], "data": [[imgs[k]] for k in GOOD] + [[imgs["broken"]]]},
                "params": {"return_map": True, "map_dir": str(tmp_path / "maps"), "map_format": "png"}}
        req = urllib.request.Request(base + "/invocations", data=json.dumps(body).encode(),
                                     headers={"Content-Type": "application/json"}, method="POST")
        text = urllib.request.urlopen(req, timeout=120).read().decode()
        preds = json.loads(text, parse_constant=lambda c: pytest.fail(f"{c} in the REST answer: not valid JSON"))["predictions"]
        expected = direct_scores(registered["net"], [imgs[k] for k in GOOD])
        for row, exp in zip(preds[:3], expected):
            assert row["error"] == "" and abs(row["score"] - exp) <= TOL
            assert isinstance(row["is_anomaly"], bool) and row["map_path"].endswith(".png") and os.path.isfile(row["map_path"])
        assert "broken.png" in preds[3]["error"] and preds[3]["score"] is None and preds[3]["is_anomaly"] is None
        bad = urllib.request.Request(base + "/invocations", data=json.dumps({"dataframe_split": {"columns": ["img"], "data": [[1]]}}).encode(),
                                     headers={"Content-Type": "application/json"}, method="POST")
        with pytest.raises(urllib.error.HTTPError) as err:
            urllib.request.urlopen(bad, timeout=60)
        assert err.value.code == 400 and "image" in err.value.read().decode()
        assert urllib.request.urlopen(base + "/ping", timeout=5).status == 200  # still serving
    assert "scoring with PyTorch" not in (tmp_path / "serve.log").read_text()  # no fall-back from the backend asked


def test_register_run_cli(registered, tmp_path, monkeypatch):
    """`python -m monai_scrd.registry register --run-id` on a run shaped like the bundle's training run (model.pt and
    threshold.json artifacts, backbone/image_size params): new version logged into that run, alias set."""
    from mlflow.tracking import MlflowClient

    from monai_scrd.registry.__main__ import main

    monkeypatch.chdir(registered["root"])
    uri = registered["uri"]  # one database for the module: creating one costs seconds
    mlflow.set_tracking_uri(uri)
    try:
        mlflow.set_experiment("scrd")
        with mlflow.start_run() as run:
            mlflow.log_params({"backbone": "efficientnet_lite0", "image_size": IMAGE_SIZE, "contrastive": "True",
                               "scale_adaptive": "True", "max_iterations": 3})
            mlflow.log_artifact(os.path.join(registered["bundle"], "models", "model.pt"))
            mlflow.log_artifact(os.path.join(registered["bundle"], "models", "threshold.json"))
    finally:
        mlflow.set_tracking_uri(None)
    rc = main(["register", "--run-id", run.info.run_id, "--name", "scrd-run", "--alias", "champion", "--tracking-uri", uri])
    assert rc == 0
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    mv = client.get_model_version_by_alias("scrd-run", "champion")
    assert str(mv.version) == "1" and mv.run_id == run.info.run_id
    # second registration of the same run: version 2, alias moved with the alias command
    assert main(["register", "--run-id", run.info.run_id, "--name", "scrd-run", "--tracking-uri", uri,
                 "--bundle-dir", registered["bundle"]]) == 0
    assert main(["alias", "--name", "scrd-run", "--version", "2", "--alias", "champion", "--tracking-uri", uri]) == 0
    assert str(client.get_model_version_by_alias("scrd-run", "champion").version) == "2"
    import pandas as pd

    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    try:
        out = mlflow.pyfunc.load_model("models:/scrd-run@champion").predict(pd.DataFrame({"image": [registered["images"]["png"]]}))
    finally:
        mlflow.set_tracking_uri(None)
        mlflow.set_registry_uri(None)
    expected = direct_scores(registered["net"], [registered["images"]["png"]])[0]
    assert abs(float(out["score"][0]) - expected) <= TOL


def test_registration_errors(registered, tmp_path, monkeypatch):
    from monai_scrd.checkpoint import CheckpointError
    from monai_scrd.registry import RegistryError, register_model, register_run

    monkeypatch.chdir(registered["root"])
    uri = registered["uri"]
    ckpt = os.path.join(registered["bundle"], "models", "model.pt")
    with pytest.raises(RegistryError, match="file store"):
        register_model("x", ckpt, network={"backbone": "efficientnet_lite0"}, threshold=0.1, tracking_uri=str(tmp_path / "mlruns"))
    with pytest.raises(RegistryError, match="no decision threshold"):
        register_model("x", ckpt, network={"backbone": "efficientnet_lite0"}, tracking_uri=uri)
    with pytest.raises(CheckpointError, match="model.pt"):  # weights of another backbone: refused before logging
        register_model("x", ckpt, network={"backbone": "resnet18"}, threshold=0.1, tracking_uri=uri)
    with pytest.raises(RegistryError, match="not found"):
        register_run("0123456789abcdef0123456789abcdef", "x", tracking_uri=uri)
    from mlflow.tracking import MlflowClient

    names = [m.name for m in MlflowClient(tracking_uri=uri, registry_uri=uri).search_registered_models()]
    assert "x" not in names  # nothing half-registered


def test_register_trained_model_hook(registered, tmp_path, monkeypatch):
    """The bundle's end-of-training hook: the trained SCRD module itself describes the network."""
    from monai_scrd.registry import register_trained_model

    monkeypatch.chdir(registered["root"])
    uri = registered["uri"]
    assert register_trained_model("", "unused.pt", network=registered["net"]) is None  # opt-in: no name, no-op
    mv = register_trained_model(
        "scrd-hook", os.path.join(registered["bundle"], "models", "model.pt"), network=registered["net"],
        preprocessing={"image_size": IMAGE_SIZE}, threshold_path=os.path.join(registered["bundle"], "models", "threshold.json"),
        metadata=os.path.join(registered["bundle"], "configs", "metadata.json"), tracking_uri=uri, alias="champion",
    )
    assert str(mv.version) == "1"
    from monai_scrd.registry import scorer_from_dir

    local = _download(mv.source, uri)
    _, scorer = scorer_from_dir(os.path.join(local, "artifacts"), device="cpu")
    with open(os.path.join(registered["bundle"], "models", "threshold.json")) as f:
        assert scorer.score_reduction == json.load(f)["score_reduction"]  # none given: the one the threshold was fitted with
    score = next(scorer.score([registered["images"]["dicom"]])).score
    assert abs(score - direct_scores(registered["net"], [registered["images"]["dicom"]])[0]) <= TOL


@pytest.mark.parametrize("scale_adaptive", [True, False])
def test_network_spec_keeps_the_scoring_options(scale_adaptive):
    """A trained module's scale-head and map options survive spec -> plain JSON -> SCRD."""
    from monai_scrd.networks import SCRD
    from monai_scrd.registry import ModelSpec
    from monai_scrd.registry.spec_sources import spec_from_network

    net = SCRD("efficientnet_lite0", pretrained=False, scale_adaptive=scale_adaptive, sigma=2.0, alpha_temperature=2.0,
               alpha_floor=0.3, scale_weighting="uniform")
    spec = ModelSpec(network=spec_from_network(net))
    rebuilt = ModelSpec.from_dict(json.loads(json.dumps(spec.to_dict()))).build_network()
    assert (rebuilt.anomaly_map.scale_weighting, rebuilt.anomaly_map.sigma) == ("uniform", 2.0)
    if scale_adaptive:
        assert (rebuilt.scale_head.temperature, rebuilt.scale_head.alpha_floor) == (2.0, 0.3)
    else:
        assert rebuilt.scale_head is None and "alpha_floor" not in spec.network
    rebuilt.load_state_dict(net.state_dict())  # strict: the same layers


def test_readme_pyfunc_snippet_runs_as_written(registered, tmp_path, monkeypatch):
    """The README's Python snippet, with only its tracking URI replaced, in a folder holding its three images: every
    image scored like the core pieces score it, maps written into ./maps (issue 21: its map_dir was refused)."""
    import re
    import shutil

    import pandas as pd

    with open(os.path.join(REPO, "README.md")) as f:
        blocks = re.findall(r"^```python[ \t]*\n(.*?)^```", f.read(), re.M | re.S)
    snippet = next(b for b in blocks if "map_dir" in b)
    readme_uri = re.search(r'"(sqlite:///[^"]+)"', snippet).group(1)
    imgs = registered["images"]
    for kind, name in (("png", "a.png"), ("dicom", "b.dcm"), ("nifti", "c.nii.gz")):
        shutil.copy(imgs[kind], tmp_path / name)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("SCRD_DEVICE", "cpu")
    for name in ("SCRD_INPUT_ROOTS", "SCRD_OUTPUT_ROOTS", "MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI"):
        monkeypatch.delenv(name, raising=False)
    namespace: dict = {}
    try:
        exec(compile(snippet.replace(readme_uri, registered["uri"]), "README.md", "exec"), namespace)
    finally:
        mlflow.set_tracking_uri(None)
        mlflow.set_registry_uri(None)
    out = namespace["out"]
    assert isinstance(out, pd.DataFrame) and list(out["error"]) == ["", "", ""], out.to_dict("records")
    expected = direct_scores(registered["net"], [imgs[k] for k in GOOD])
    assert np.allclose(out["score"].astype(float), expected, atol=TOL)
    maps = os.path.realpath(tmp_path / "maps")
    assert all(os.path.isfile(p) and os.path.realpath(p).startswith(maps + os.sep) for p in out["map_path"]), out["map_path"]


def test_predict_cli_names_the_input_roots_and_writes_its_map_dir(registered, tmp_path, monkeypatch, capsys):
    """``registry predict``: a file outside SCRD_INPUT_ROOTS gets a row error naming the variable (as does --help);
    the --map-dir of the command line is written (it was refused: no SCRD_OUTPUT_ROOTS)."""
    import csv
    import shutil

    from monai_scrd.registry.__main__ import build_parser, main

    work = tmp_path / "work"
    work.mkdir()
    inside = str(work / "a.png")
    shutil.copy(registered["images"]["png"], inside)
    outside = registered["images"]["dicom"]  # exists, outside the working directory
    monkeypatch.chdir(work)
    monkeypatch.setenv("SCRD_DEVICE", "cpu")
    monkeypatch.delenv("SCRD_INPUT_ROOTS", raising=False)
    monkeypatch.delenv("SCRD_OUTPUT_ROOTS", raising=False)
    sub = next(a for a in build_parser()._actions if a.dest == "command").choices["predict"]
    assert "SCRD_INPUT_ROOTS" in sub.format_help()
    code = main(["predict", "--model-uri", "models:/scrd@champion", "--tracking-uri", registered["uri"],
                 "--map-dir", str(tmp_path / "maps"), inside, outside])
    printed = capsys.readouterr()
    rows = list(csv.DictReader(printed.out.splitlines()))
    assert code == 1 and len(rows) == 2, printed.err[-2000:]  # 1: a row failed
    assert rows[0]["error"] == "" and os.path.isfile(rows[0]["map_path"])
    assert os.path.dirname(rows[0]["map_path"]) == str(tmp_path / "maps")
    assert rows[1]["error"] == (f"{outside}: no such image file in the folders this model may read (SCRD_INPUT_ROOTS; "
                                "default: the working directory)")


@pytest.mark.slow
def test_label_server_serves_the_registered_model(registered, tmp_path):
    """``python -m monai_scrd.label serve --model-uri models:/scrd@champion`` serves that registered version, not the
    model an earlier training of the app published (issue 21), and says which at start and in /info/."""
    from test_label import _require_label_venv
    from test_registry_support import train_tiny_bundle

    _require_label_venv()
    app = tmp_path / "app"
    train_tiny_bundle(str(app / "model" / "scrd"), seed=7)  # what the app's train task had published
    stale_thr = json.load(open(app / "model" / "scrd" / "models" / "threshold.json"))["threshold"]
    thr = json.load(open(os.path.join(registered["bundle"], "models", "threshold.json")))["threshold"]
    assert stale_thr != pytest.approx(thr)
    studies = tmp_path / "studies"
    studies.mkdir()
    png = registered["images"]["png"]
    import shutil

    shutil.copy(png, studies / "case.png")
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    env = clean_env(MONAI_LABEL_SESSION_PATH=str(tmp_path / "sessions"), PYTHONPATH=REPO)
    cmd = [PYTHON, "-m", "monai_scrd.label", "serve", "--studies", str(studies), "--model-uri", "models:/scrd@champion",
           "--tracking-uri", registered["uri"], "--app-dir", str(app), "--host", "127.0.0.1", "--port", str(port),
           "--device", "cpu"]
    log = tmp_path / "server.log"
    with running_server(cmd, base + "/info/", log, cwd=tmp_path, env=env, timeout=300):
        served = json.loads(urllib.request.urlopen(base + "/info/", timeout=10).read().decode())["models"]["scrd"]
        assert served["threshold"] == pytest.approx(thr)
        assert {k: served["served"].get(k) for k in ("source", "model_uri", "name", "version", "alias")} == {
            "source": "registry", "model_uri": "models:/scrd@champion", "name": "scrd", "version": "1", "alias": "champion"}
        assert served["served"]["threshold"] == pytest.approx(thr)
        req = urllib.request.Request(f"{base}/infer/scrd?image=case&output=json", data=b"", method="POST")
        res = json.loads(urllib.request.urlopen(req, timeout=120).read().decode())
        assert abs(res["score"] - direct_scores(registered["net"], [png])[0]) <= TOL
        lines = [ln for ln in log.read_text(errors="replace").splitlines() if "SCRD serves" in ln]
        assert len(lines) == 1 and lines[0].endswith(
            f"SCRD serves registered model models:/scrd@champion (scrd version 1 @champion, run "
            f"{registered['version'].run_id}), threshold {thr:.6g}"), lines
