"""End-to-end tests of the SCRD MONAI bundle (bundles/scrd) at tiny sizes, run as a user would, via the CLI.

All outputs go to pytest tmp dirs (output_dir, model_dir, eval_dir, ckpt_dir are overridden); nothing is written into
the repository. Models use random teacher weights (``--pretrained_weights false``), 64 px, batch 4, a few iterations.
"""

from __future__ import annotations

import csv
import json
import os
import shutil
import socket
import subprocess
import sys

import numpy as np
import pytest
from monai.transforms import Compose
from sklearn.metrics import roc_auc_score
import torch

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BUNDLE = os.path.join(REPO, "bundles", "scrd")
CONFIGS = os.path.join(BUNDLE, "configs")
TRAIN = os.path.join(CONFIGS, "train.json")
EVALUATE = os.path.join(CONFIGS, "evaluate.json")
INFER = os.path.join(CONFIGS, "inference.json")
MULTI = os.path.join(CONFIGS, "multi_gpu_train.json")
META = os.path.join(CONFIGS, "metadata.json")
SCHEMA = os.path.join(BUNDLE, "schema", "meta_schema_20220324.json")
SAMPLE = os.path.join(BUNDLE, "sample_data")

TINY = ["--image_size", "64", "--batch_size", "4", "--pretrained_weights", "false", "--num_workers", "0"]
ABS = ["--allow_absolute_paths", "true"]


def _env() -> dict:
    env = dict(os.environ)
    env["PYTHONPATH"] = REPO + os.pathsep + env.get("PYTHONPATH", "")
    env.setdefault("OMP_NUM_THREADS", "2")
    env["MLFLOW_TRACKING_URI"] = ""  # never pick up a user's tracking server
    env.pop("MLFLOW_TRACKING_URI")
    return env


def bundle(*args: str, cwd: str | None = None, check: bool = True, timeout: int = 600, launcher=None):
    cmd = (launcher or [sys.executable, "-m"]) + ["monai.bundle", *args]
    proc = subprocess.run(cmd, cwd=cwd or REPO, env=_env(), capture_output=True, text=True, timeout=timeout)
    if check and proc.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}")
    return proc


def _train_args(out: str, *extra: str) -> list[str]:
    return [
        "run", "training", "--config_file", TRAIN, *TINY,
        "--output_dir", out, "--model_dir", os.path.join(out, "models"), *extra,
    ]


def _custom_datalist(folder: str) -> str:
    """A user datalist in another folder: relative paths for training/validation, absolute ones for the test list
    (so runs on it need ``--allow_absolute_paths true``)."""
    os.makedirs(os.path.join(folder, "imgs"), exist_ok=True)
    normals = sorted(os.listdir(os.path.join(SAMPLE, "train_normal")))[:8]
    for n in normals:
        shutil.copy(os.path.join(SAMPLE, "train_normal", n), os.path.join(folder, "imgs", n))
    tumours = sorted(os.listdir(os.path.join(SAMPLE, "test_glioma")))[:3]
    test = [{"image": os.path.join(SAMPLE, "test_normal", n), "label": 0}
            for n in sorted(os.listdir(os.path.join(SAMPLE, "test_normal")))[:3]]
    test += [{"image": os.path.join(SAMPLE, "test_glioma", n), "label": 1} for n in tumours]
    data = {
        "training": [{"image": f"imgs/{n}"} for n in normals[:6]],
        "validation": [{"image": f"imgs/{n}"} for n in normals[6:]],
        "test": test,
    }
    path = os.path.join(folder, "my_datalist.json")
    with open(path, "w") as f:
        json.dump(data, f)
    return path


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """One tiny training run on a custom datalist with MLflow tracking: 4 iterations, checkpoints every 2."""
    root = str(tmp_path_factory.mktemp("train"))
    datalist = _custom_datalist(os.path.join(root, "data"))
    out = os.path.join(root, "run")
    bundle_before = _files_with_mtimes(BUNDLE)
    proc = bundle(*_train_args(out, "--datalist", datalist, "--max_iterations", "4", "--ckpt_interval", "2",
                               "--val_interval", "2", "--log_interval", "1", "--tracking", "mlflow", *ABS))
    return {"root": root, "out": out, "datalist": datalist, "log": proc.stdout + proc.stderr,
            "bundle_before": bundle_before, "bundle_after": _files_with_mtimes(BUNDLE)}


def _synthetic_validation_of(models: str, datalist: str, calibrated: bool) -> dict:
    """The synthetic validation (:func:`~monai_scrd.engines.synthetic_validation_metrics`, the bundle's foreign-patch
    set and seed 0) of ``models/model.pt``, recomputed here on the datalist's validation images, preprocessed as
    ``threshold.json`` records; ``calibrated=False`` resets the calibration fitted at the end of training, giving the
    maps that training's evaluations scored."""
    from monai_scrd.engines import synthetic_validation_metrics
    from monai_scrd.networks import SCRD
    from monai_scrd.scoring import Preprocessor
    from monai_scrd.transforms.validation_anomaly import SCORING_FAMILIES, SCORING_SIZES

    with open(os.path.join(models, "threshold.json")) as f:
        thr = json.load(f)
    with open(TRAIN) as f:
        config = json.load(f)
    net = SCRD(thr["backbone"], pretrained=False, scale_weighting=thr["scale_weighting"],
               **{k: config[k] for k in ("contrastive", "scale_adaptive", "alpha_floor", "alpha_temperature")})
    net.load_state_dict(torch.load(os.path.join(models, "model.pt"), map_location="cpu", weights_only=True)["model"])
    if not calibrated:
        net.anomaly_map.scale_mean.zero_()
        net.anomaly_map.scale_std.fill_(1.0)
    with open(datalist) as f:
        items = json.load(f)["validation"]
    prepare = Preprocessor(**thr["preprocessing"])
    normals = torch.cat([prepare({"image": os.path.join(os.path.dirname(datalist), i["image"])}).images for i in items])
    return synthetic_validation_metrics(net, normals, seed=0, batch_size=4, reduction=thr["score_reduction"],
                                        anomalies_per_normal=config["synthetic_anomalies_per_normal"],
                                        families=SCORING_FAMILIES, sizes=SCORING_SIZES)


def _files_with_mtimes(folder: str) -> dict[str, float]:
    """Every file under ``folder`` (bytecode left out) with its modification time."""
    return {os.path.join(d, f): os.path.getmtime(os.path.join(d, f))
            for d, _, files in os.walk(folder) if "__pycache__" not in d for f in files}


@pytest.mark.slow  # includes the module's training run
def test_training_leaves_model_and_threshold(trained):
    models = os.path.join(trained["out"], "models")
    data = torch.load(os.path.join(models, "model.pt"), map_location="cpu", weights_only=True)
    assert set(data) == {"model"} and any(k.startswith("decoder.") for k in data["model"])
    with open(os.path.join(models, "threshold.json")) as f:
        thr = json.load(f)
    assert np.isfinite(thr["threshold"]) and thr["fitted_on"] == "validation" and thr["n_images"] == 2
    # label-free validation on synthetic anomalies (every val_interval=2) and the model selection record
    assert [e["iteration"] for e in thr["synthetic_validation"]["evaluations"]] == [2, 4]
    assert thr["last"]["iteration"] == 4 and thr["best_synthetic"]["iteration"] in (2, 4)
    best, last = thr["best_synthetic"], thr["last"]
    use_best = thr["model_selection"] == "best_synthetic" and best["val_auroc_synthetic"] > last["val_auroc_synthetic"]
    assert thr["selected"] == (best if use_best else last)
    # the recorded AUROCs are those of the shipped weights: recomputed from model.pt on the same set, without the
    # calibration fitted after the selection
    again = _synthetic_validation_of(models, trained["datalist"], calibrated=False)
    assert again["fingerprint"] == thr["synthetic_validation"]["fingerprint"]
    assert (again["image_auroc"], again["pixel_auroc"]) == pytest.approx(
        (thr["selected"]["val_auroc_synthetic"], thr["selected"]["val_pixel_auroc_synthetic"]))
    assert thr["synthetic_validation"]["n_normal"] == 2 and thr["synthetic_validation"]["n_anomalous"] == 6
    assert "synthetic validation at iteration 2" in trained["log"]
    # the default scores with per-scale calibration fitted on the validation normals, saved with the weights
    calibration = thr["scale_calibration"]
    assert calibration["n_images"] == 2 and len(calibration["std"]) == 3
    torch.testing.assert_close(data["model"]["anomaly_map.scale_std"], torch.tensor(calibration["std"]))
    assert "ratio_1" in trained["log"]  # the per-scale contrastive ratio is logged
    assert "iteration 4/4" in trained["log"]  # progress lines
    assert "alpha_1" in trained["log"]
    ckpts = os.listdir(os.path.join(trained["out"], "checkpoints"))
    assert "scrd_final.pt" in ckpts and any("iteration=2" in c or "iteration=4" in c for c in ckpts)
    # nothing written into the bundle folder (which may hold runs of the README's own commands already)
    assert trained["bundle_after"] == trained["bundle_before"]


def test_mlflow_sqlite_has_loss_and_alpha(trained):
    import mlflow

    db = os.path.join(trained["out"], "mlflow.db")
    assert os.path.isfile(db)
    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{db}")
    exp = client.get_experiment_by_name("scrd")
    runs = client.search_runs([exp.experiment_id])
    assert len(runs) == 1
    run = runs[0]
    assert run.info.status == "FINISHED"
    for key in ("backbone", "image_size", "lambda_noise_intensity", "max_iterations", "contrastive",
                "scale_adaptive", "seed"):
        assert key in run.data.params, key
    assert run.data.params["image_size"] == "64"
    assert len(client.get_metric_history(run.info.run_id, "train_loss")) == 4
    for k in ("alpha_1", "alpha_2", "alpha_3"):
        assert len(client.get_metric_history(run.info.run_id, k)) >= 4
    assert "val_mean_score" in run.data.metrics and "threshold" in run.data.metrics
    assert {"val_auroc_synthetic", "val_pixel_auroc_synthetic", "selected_iteration"} <= set(run.data.metrics)
    assert run.data.params["model_selection"] in ("last", "best_synthetic")
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"model.pt", "threshold.json"} <= artifacts


@pytest.mark.slow
def test_resume_continues_from_checkpoint(trained, tmp_path):
    out = str(tmp_path / "run")
    shutil.copytree(trained["out"], out)
    os.remove(os.path.join(out, "mlflow.db"))
    proc = bundle(*_train_args(out, "--datalist", trained["datalist"], "--max_iterations", "6", "--ckpt_interval", "2",
                               "--val_interval", "0", "--log_interval", "1", "--resume", "true", *ABS))
    log = proc.stdout + proc.stderr
    assert "resumed training at iteration 4" in log
    assert "iteration 5/6" in log and "iteration 1/6" not in log
    final = torch.load(os.path.join(out, "checkpoints", "scrd_final.pt"), map_location="cpu", weights_only=True)
    assert final["trainer"]["iteration"] == 6
    assert {"model", "optimizer", "trainer"} <= set(final)




def test_evaluation_metrics_scores_plots_and_bad_files(trained, tmp_path):
    with open(trained["datalist"]) as f:
        data = json.load(f)
    base = os.path.dirname(trained["datalist"])  # the copy lives elsewhere: its relative paths made absolute
    for key in ("training", "validation"):
        data[key] = [{"image": os.path.join(base, item["image"])} for item in data[key]]
    (tmp_path / "broken.png").write_bytes(b"not an image")
    data["test"].append({"image": str(tmp_path / "broken.png"), "label": 1})
    data["test"].append({"image": str(tmp_path / "missing.png"), "label": 0})
    dl = tmp_path / "dl.json"
    dl.write_text(json.dumps(data))
    ev = str(tmp_path / "eval")
    proc = bundle("run", "evaluating", "--config_file", f"['{TRAIN}','{EVALUATE}']", *TINY,
                  "--model_dir", os.path.join(trained["out"], "models"), "--output_dir", str(tmp_path / "out"),
                  "--eval_dir", ev, "--datalist", str(dl), *ABS, check=False)
    assert proc.returncode != 0, "unreadable inputs must make the run exit non-zero (after writing the results)"
    with open(os.path.join(ev, "errors.csv")) as f:
        errors = list(csv.DictReader(f))
    assert {os.path.basename(r["path"]) for r in errors} == {"broken.png", "missing.png"}
    with open(os.path.join(ev, "metrics.json")) as f:
        m = json.load(f)
    for key in ("auroc", "average_precision", "f1", "accuracy", "threshold", "n_normal", "n_anomalous"):
        assert key in m
    assert m["n_normal"] == 3 and m["n_anomalous"] == 3
    assert m["n_errors"] == 2 and m["n_scored"] == 6
    assert "stored_threshold" in m  # from models/threshold.json (validation normals)
    with open(os.path.join(ev, "scores.csv")) as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 6 and {"path", "label", "score", "is_anomaly"} <= set(rows[0])
    # the reported AUROC is that of the listed scores, and the decisions are the stored threshold's
    assert m["auroc"] == pytest.approx(roc_auc_score([int(r["label"]) for r in rows], [float(r["score"]) for r in rows]))
    assert all((r["is_anomaly"] == "1") == (float(r["score"]) >= m["stored_threshold"]["threshold"]) for r in rows), (
        [(r["score"], r["is_anomaly"]) for r in rows], m["stored_threshold"])
    for png in ("roc_curve.png", "score_histogram.png"):
        assert os.path.getsize(os.path.join(ev, png)) > 1000


@pytest.mark.slow
def test_evaluation_reports_synthetic_pixel_auroc_to_mlflow(trained, tmp_path):
    import mlflow

    ev, db = str(tmp_path / "eval"), tmp_path / "eval.db"
    proc = bundle("run", "evaluating", "--config_file", f"['{TRAIN}','{EVALUATE}']", *TINY,
                  "--model_dir", os.path.join(trained["out"], "models"), "--output_dir", str(tmp_path / "out"),
                  "--eval_dir", ev, "--datalist", trained["datalist"], "--tracking", "mlflow",
                  "--tracking_uri", f"sqlite:///{db}", *ABS)
    with open(os.path.join(ev, "synthetic_validation.json")) as f:
        synth = json.load(f)
    assert synth["n_normal"] == 2 and synth["seed"] == 0
    # the AUROCs are those of the evaluated model.pt, calibration included: recomputed here from the file
    again = _synthetic_validation_of(os.path.join(trained["out"], "models"), trained["datalist"], calibrated=True)
    assert (synth["image_auroc"], synth["pixel_auroc"]) == pytest.approx((again["image_auroc"], again["pixel_auroc"]))
    assert synth["iteration"] is None  # not the evaluator's batch count
    assert "synthetic validation of the evaluated weights" in proc.stdout + proc.stderr
    with open(os.path.join(trained["out"], "models", "threshold.json")) as f:
        stored = json.load(f)
    # the same validation set (fingerprint) and, model.pt holding the selected weights, the same AUROC as in training
    # (unless a per-scale calibration, fitted after the selection, changed the anomaly map)
    assert synth["fingerprint"] == stored["synthetic_validation"]["fingerprint"]
    if "scale_calibration" not in stored:
        assert synth["pixel_auroc"] == pytest.approx(stored["selected"]["val_pixel_auroc_synthetic"], abs=1e-6)
    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{db}")
    run = client.search_runs([client.get_experiment_by_name("scrd").experiment_id])[0]
    assert run.data.metrics["val_pixel_auroc_synthetic"] == pytest.approx(synth["pixel_auroc"])
    assert "val_auroc_synthetic" in run.data.metrics


def test_absolute_paths_refused_by_default(trained, tmp_path):
    proc = bundle("run", "evaluating", "--config_file", f"['{TRAIN}','{EVALUATE}']", *TINY,
                  "--model_dir", os.path.join(trained["out"], "models"), "--output_dir", str(tmp_path / "out"),
                  "--eval_dir", str(tmp_path / "eval"), "--datalist", trained["datalist"], check=False)
    assert proc.returncode != 0
    assert "test[0].image is an absolute path" in proc.stdout + proc.stderr


def test_training_refuses_unreadable_training_images(tmp_path):
    datalist = _custom_datalist(str(tmp_path / "data"))
    with open(datalist) as f:
        data = json.load(f)
    (tmp_path / "data" / "imgs" / "broken.png").write_bytes(b"not an image")
    data["training"] += [{"image": "imgs/broken.png"}, {"image": "imgs/missing.png"}]
    with open(datalist, "w") as f:
        json.dump(data, f)
    out = str(tmp_path / "run")
    proc = bundle(*_train_args(out, "--datalist", datalist, "--max_iterations", "2", *ABS), check=False)
    log = proc.stdout + proc.stderr
    assert proc.returncode != 0, "training must not start on unreadable training images"
    assert "2 of 8 training images are unreadable" in log
    assert "broken.png" in log and "missing.png" in log
    assert not os.path.exists(os.path.join(out, "models", "model.pt"))


@pytest.mark.slow  # a tiny training run (~30 s on 2 CPU cores)
def test_training_registers_model_with_alias(tmp_path):
    import mlflow

    datalist = _custom_datalist(str(tmp_path / "data"))
    out = str(tmp_path / "run")
    uri = f"sqlite:///{tmp_path / 'registry.db'}"
    bundle(*_train_args(out, "--datalist", datalist, "--max_iterations", "2", "--val_interval", "0",
                        "--ckpt_interval", "2", "--tracking_uri", uri, "--register_model_name", "scrd",
                        "--register_model_alias", "champion", *ABS))
    mv = mlflow.MlflowClient(tracking_uri=uri).get_model_version_by_alias("scrd", "champion")
    assert str(mv.version) == "1"
    assert os.path.isdir(tmp_path / "mlruns")  # artifacts beside the database, not in ./mlruns of the caller


def _write_inputs(folder) -> None:
    import nibabel as nib
    from pydicom.dataset import FileDataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, SecondaryCaptureImageStorage, generate_uid

    os.makedirs(folder, exist_ok=True)
    png = sorted(os.listdir(os.path.join(SAMPLE, "test_glioma")))[0]
    shutil.copy(os.path.join(SAMPLE, "test_glioma", png), os.path.join(folder, "scan.png"))
    rng = np.random.default_rng(0)
    aff = np.diag([0.5, 0.7, 2.0, 1.0])
    aff[:3, 3] = [10.0, -20.0, 5.0]
    nib.save(nib.Nifti1Image(rng.random((80, 90)).astype(np.float32), aff), os.path.join(folder, "slice.nii.gz"))
    nib.save(nib.Nifti1Image((rng.random((48, 40, 3)) * 100).astype(np.float32), aff), os.path.join(folder, "vol.nii.gz"))
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = FileDataset(os.path.join(folder, "mr.dcm"), {}, file_meta=meta, preamble=b"\0" * 128)
    ds.SOPClassUID, ds.SOPInstanceUID = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID
    ds.Modality, ds.Rows, ds.Columns, ds.SamplesPerPixel = "MR", 70, 60, 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    ds.PixelData = (rng.random((70, 60)) * 4000).astype(np.uint16).tobytes()
    ds.save_as(os.path.join(folder, "mr.dcm"), enforce_file_format=True)


def test_inference_png_dicom_nifti_and_bad_file(trained, tmp_path):
    import nibabel as nib

    inputs, out = str(tmp_path / "in"), str(tmp_path / "out")
    _write_inputs(inputs)
    with open(os.path.join(inputs, "truncated.dcm"), "wb") as f:
        f.write(b"\0" * 128 + b"DICM" + b"\x02\x00")
    proc = bundle("run", "--config_file", INFER, "--image_size", "64", "--model_dir",
                  os.path.join(trained["out"], "models"), "--inputs", inputs, "--output_dir", out, check=False)
    assert proc.returncode != 0, "an unreadable input must make the run exit non-zero (after the other files)"
    with open(os.path.join(out, "errors.csv")) as f:
        assert [os.path.basename(r["path"]) for r in csv.DictReader(f)] == ["truncated.dcm"]
    with open(os.path.join(out, "scores.csv")) as f:
        rows = {os.path.basename(r["path"]): r for r in csv.DictReader(f)}
    assert set(rows) == {"scan.png", "slice.nii.gz", "vol.nii.gz", "mr.dcm"}
    for r in rows.values():
        assert np.isfinite(float(r["score"])) and r["is_anomaly"] in ("0", "1")
        assert os.path.getsize(r["heatmap"]) > 1000
    src = nib.load(os.path.join(inputs, "slice.nii.gz"))
    amap = nib.load(rows["slice.nii.gz"]["anomaly_map"])
    assert amap.shape == src.shape and np.allclose(amap.affine, src.affine)
    vmap = nib.load(rows["vol.nii.gz"]["anomaly_map"])
    assert vmap.shape == (48, 40, 3) and np.allclose(vmap.affine, src.affine)
    assert rows["scan.png"]["anomaly_map"] == ""


def test_verify_metadata_offline(tmp_path):
    from monai.bundle import verify_metadata

    verify_metadata(meta_file=META, filepath=SCHEMA)  # the file exists, so nothing is downloaded
    bad = json.loads(open(META).read())
    del bad["network_data_format"]["inputs"]["image"]["dtype"]
    (tmp_path / "bad.json").write_text(json.dumps(bad))
    with pytest.raises(ValueError):
        verify_metadata(meta_file=str(tmp_path / "bad.json"), filepath=SCHEMA)


def test_verify_net_in_out():
    from monai.bundle import verify_net_in_out

    verify_net_in_out(net_id="network_def", meta_file=META, config_file=INFER, device="cpu", n=2)


def test_torchscript_and_onnx_export(trained, tmp_path):
    ckpt = os.path.join(trained["out"], "models", "model.pt")
    from monai.bundle import ckpt_export, onnx_export

    ts, onnx_path = str(tmp_path / "model.ts"), str(tmp_path / "model.onnx")
    common = dict(net_id="network_def", ckpt_file=ckpt, meta_file=META, config_file=INFER, key_in_ckpt="model",
                  use_trace=True, input_shape=[1, 3, 64, 64], image_size=64)
    ckpt_export(filepath=ts, **common)
    onnx_export(filepath=onnx_path, **common)

    from monai.bundle import ConfigParser

    from monai_scrd.engines import load_model_weights

    # the reference is the network the bundle's scorer runs: inference.json's network_def (scale head and map
    # options included) with the checkpoint loaded as its "initialize" step does
    parser = ConfigParser()
    parser.read_config(INFER)
    net = load_model_weights(parser.get_parsed_content("network_def"), ckpt).eval()
    x = torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        ref = net(x)
        out = torch.jit.load(ts)(x)
    assert out.shape == (1, 1, 64, 64) and torch.allclose(out, ref, atol=1e-4)
    import onnx

    model = onnx.load(onnx_path)
    onnx.checker.check_model(model)
    try:
        import onnxruntime as ort
    except ImportError:
        return
    sess = ort.InferenceSession(onnx_path)
    res = sess.run(None, {sess.get_inputs()[0].name: x.numpy()})[0]
    assert np.allclose(res, ref.numpy(), atol=1e-3)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _rank_logs(log_dir: str, rank: int) -> str:
    """stdout + stderr of one local rank, from torchrun's ``--log-dir`` with ``--redirects 3``."""
    text = ""
    for root, _, files in os.walk(log_dir):
        if os.path.basename(root) == str(rank) and os.path.basename(os.path.dirname(root)).startswith("attempt_"):
            for name in ("stdout.log", "stderr.log"):
                if name in files:
                    with open(os.path.join(root, name)) as f:
                        text += f.read()
    return text


@pytest.mark.slow
def test_torchrun_two_process_gloo(tmp_path):
    """2 CPU processes (gloo): training completes, the saved model is unwrapped, and only rank 0 logs, saves and
    tracks (rank 1's own output has no checkpoint, completion or progress lines)."""
    out = str(tmp_path / "run")
    logs = str(tmp_path / "rank_logs")
    launcher = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", f"--master_port={_free_port()}",
                "--log-dir", logs, "--redirects", "3", "-m"]
    bundle("run", "training", "--config_file", f"['{TRAIN}','{MULTI}']", *TINY, "--dist_backend", "gloo",
           "--max_iterations", "3", "--ckpt_interval", "2", "--val_interval", "2", "--log_interval", "1",
           "--synthetic_anomalies_per_normal", "1",  # rank 0's synthetic validation: 20 images, not 40
           "--output_dir", out, "--model_dir", os.path.join(out, "models"), "--tracking", "mlflow",
           launcher=launcher, timeout=300)
    rank0, rank1 = _rank_logs(logs, 0), _rank_logs(logs, 1)
    assert "rank 0 of 2" in rank0 and "rank 1 of 2" in rank1
    # (the trainer's own Ignite logger is quiet; the package logger prints these)
    for line in ("saved final model weights", "iteration 3/3", "alpha_1", "ratio_1"):
        assert line in rank0, (line, rank0[-3000:])
        assert line not in rank1, (line, rank1[-3000:])
    data = torch.load(os.path.join(out, "models", "model.pt"), map_location="cpu", weights_only=True)
    assert not any(k.startswith("module.") for k in data["model"])  # DDP unwrapped
    final = torch.load(os.path.join(out, "checkpoints", "scrd_final.pt"), map_location="cpu", weights_only=True)
    assert final["trainer"]["iteration"] == 3
    with open(os.path.join(out, "models", "threshold.json")) as f:
        assert [e["iteration"] for e in json.load(f)["synthetic_validation"]["evaluations"]] == [2, 3]  # under DDP too
    import mlflow

    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{os.path.join(out, 'mlflow.db')}")
    runs = client.search_runs([client.get_experiment_by_name("scrd").experiment_id])
    assert len(runs) == 1 and runs[0].info.status == "FINISHED"  # one run: rank 0's


@pytest.mark.parametrize("overrides", [{}, {"image_size": 96, "intensity": "percentile", "color_mode": "rgb"}])
def test_listed_training_transforms_equal_the_scorers_preprocessing(overrides):
    """``train.json`` lists its preprocessing step by step, as a model-zoo bundle does; the scorer builds the same steps
    from the recorded settings (``preprocessing_transforms``). Both must give one model input for every image."""
    from monai.bundle import ConfigParser

    from monai_scrd.data.transforms import preprocessing_transforms

    parser = ConfigParser()
    parser.read_config(TRAIN)
    parser.update({"bundle_root": BUNDLE, **overrides})
    listed = parser.get_parsed_content("train#preprocessing")
    factory = preprocessing_transforms(
        image_size=parser["image_size"], intensity=parser["intensity"], percentiles=parser["percentiles"],
        color_mode=parser.get_parsed_content("input_color_mode"),
    ).transforms
    assert [type(t) for t in listed] == [type(t) for t in factory]
    listed_compose, factory_compose = Compose(listed), Compose(factory)
    for item in parser.get_parsed_content("train#data")[:3] + parser.get_parsed_content("validation_data")[:1]:
        a, b = listed_compose(dict(item))["image"], factory_compose(dict(item))["image"]
        assert a.shape == b.shape == (3, parser["image_size"], parser["image_size"]) and torch.equal(a, b)
