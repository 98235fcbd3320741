"""Issue 21, items 1-3: bad settings are refused when the bundle starts, with one line naming the setting, its value and
what is allowed; every user-caused failure is one ``error:`` line (tracebacks only with ``SCRD_DEBUG=1``), SIGINT and
SIGTERM leave a resumable checkpoint; and a run never mixes its results with an earlier run's.

Tiny and fast: 32 px synthetic images, random teachers, start-up checks run in-process (``ConfigWorkflow.initialize``)
where a subprocess adds nothing; the subprocess tests are the ones about what a user sees on stderr."""

from __future__ import annotations

import csv
import json
import logging
import os
import signal
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from test_data_utils import AFFINE, make_nifti, tiny_model  # noqa: E402
from test_dicom_series import _stored_volume, write_series  # noqa: E402

from monai_scrd.checkpoint import CheckpointError  # noqa: E402
from monai_scrd.data.errors import ConfigError, DataError  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BUNDLE = os.path.join(REPO, "bundles", "scrd")
CONFIGS = os.path.join(BUNDLE, "configs")
TRAIN, EVALUATE, INFER = (os.path.join(CONFIGS, f) for f in ("train.json", "evaluate.json", "inference.json"))
TINY = {"image_size": 32, "batch_size": 2, "pretrained_weights": False, "num_workers": 0}


def _env(**extra) -> dict:
    """A user's environment: no SCRD_DEBUG (tracebacks hidden), no MLflow URIs, the checkout importable."""
    env = {k: v for k, v in os.environ.items() if k not in ("SCRD_DEBUG", "MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI")}
    env["PYTHONPATH"] = REPO + os.pathsep + env.get("PYTHONPATH", "")
    env.setdefault("OMP_NUM_THREADS", "2")
    env.update({k: str(v) for k, v in extra.items()})
    return env


def _cli(config, run_id: str, settings: dict) -> list[str]:
    files = config if isinstance(config, str) else "[" + ",".join(f"'{c}'" for c in config) + "]"
    args = [sys.executable, "-m", "monai.bundle", "run", run_id, "--config_file", files]
    for key, value in settings.items():
        args += [f"--{key}", json.dumps(value) if isinstance(value, bool) else str(value)]
    return args


def _error_lines(proc_or_text) -> list[str]:
    text = proc_or_text if isinstance(proc_or_text, str) else proc_or_text.stderr
    return [ln for ln in text.splitlines() if ln.startswith("error:")]


def _user_error(exc: BaseException) -> BaseException:
    """The error a bundle command reports (MONAI wraps it in ``RuntimeError('Failed to evaluate ...')``)."""
    from monai_scrd.engines.utils import _user_error as find

    found = find(exc)
    assert found is not None, f"no user error in {exc!r}"
    return found


@pytest.fixture
def in_process(monkeypatch):
    """``initialize`` (and ``run``) of bundle configs in this process; SCRD_DEBUG=1 keeps the test process's
    ``sys.excepthook`` and logging as they are."""
    from monai.bundle import ConfigWorkflow

    monkeypatch.setenv("SCRD_DEBUG", "1")

    def make(configs, run_id="run", **override):
        override.setdefault("bundle_root", BUNDLE)
        return ConfigWorkflow(config_file=configs, logging_file=False, run_id=run_id, workflow_type=None, **override)

    return make


def _normals(folder, n: int = 8, seed: int = 0) -> list[str]:
    """Smooth 40x40 grayscale "normal" PNGs."""
    os.makedirs(folder, exist_ok=True)
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:40, 0:40] / 40.0
    paths = []
    for i in range(n):
        img = 120 + 60 * np.sin(6 * xx + i) * np.cos(4 * yy) + rng.normal(0, 8, (40, 40))
        path = os.path.join(folder, f"n{i}.png")
        Image.fromarray(np.clip(img, 0, 255).astype(np.uint8)).save(path)
        paths.append(path)
    return paths


def _datalist(root) -> str:
    paths = _normals(os.path.join(root, "imgs"))
    data = {"training": [{"image": f"imgs/{os.path.basename(p)}"} for p in paths[:6]],
            "validation": [{"image": f"imgs/{os.path.basename(p)}"} for p in paths[6:]]}
    path = os.path.join(root, "datalist.json")
    with open(path, "w") as f:
        json.dump(data, f)
    return path


def _model_dir(folder, threshold=0.5) -> str:
    """A bundle ``models/`` folder with random EfficientNet-Lite0 weights and a threshold file."""
    from monai_scrd.networks import SCRD

    folder = os.fspath(folder)
    os.makedirs(folder, exist_ok=True)
    torch.manual_seed(0)
    torch.save({"model": SCRD("efficientnet_lite0", pretrained=False).state_dict()}, os.path.join(folder, "model.pt"))
    with open(os.path.join(folder, "threshold.json"), "w") as f:
        json.dump({"threshold": threshold, "backbone": "efficientnet_lite0"}, f)
    return folder


# ------------------------------------------------------------------------------------------ 1. start-up checks
@pytest.mark.parametrize("setting, value, allowed", [
    ("image_size", 100, "must be a multiple of 32 (at least 32; one number or [height, width]), e.g. 96 or 128"),
    ("image_size", 48, "must be a multiple of 32"),
    ("threshold_percentile", 150, "must be a number in (0, 100)"),
    ("color_mode", "purple", "must be one of 'auto', 'grayscale', 'rgb'"),
    ("max_iterations", 0, "must be 'auto' or a whole number of at least 1"),
    ("batch_size", 0, "must be a whole number of at least 1"),
    ("backbone", "resnet7", "must be one of 'resnet18', 'resnet34'"),
    ("score_reduction", "median", "must be 'auto', 'mean', 'max' or 'top<P>%'"),
    ("log_interval", 0, "must be a whole number of at least 1"),
    ("percentiles", [99, 1], "must be [low, high] with 0 <= low < high <= 100"),
])
def test_bad_setting_refused_before_any_data_is_read(in_process, tmp_path, setting, value, allowed):
    """The datalist does not even exist: the setting is named first, before anything is read or built."""
    wf = in_process(TRAIN, "training", **{**TINY, setting: value}, datalist=str(tmp_path / "missing.json"),
                    output_dir=str(tmp_path / "run"), model_dir=str(tmp_path / "models"))
    with pytest.raises(Exception) as info:
        wf.initialize()
    err = _user_error(info.value)
    shown = repr(value) if isinstance(value, str) else str(value)
    assert isinstance(err, ConfigError) and str(err).startswith(f"{setting} {shown}: {allowed}"), str(err)
    assert "\n" not in str(err)
    assert not os.path.exists(tmp_path / "run") and not os.path.exists(tmp_path / "models")


def test_environment_variable_named_not_the_images(in_process, tmp_path, monkeypatch):
    """``SCRD_MAX_PIXELS=abc``: inference stops at start naming the variable, instead of failing every image as
    "truncated or corrupt"; the readers themselves blame the variable too, not the file."""
    from monai_scrd.data.readers import read_medical_image

    inputs = _normals(tmp_path / "in", n=2)
    monkeypatch.setenv("SCRD_MAX_PIXELS", "abc")
    wf = in_process(INFER, **TINY, inputs=str(tmp_path / "in"), output_dir=str(tmp_path / "out"),
                    model_dir=_model_dir(tmp_path / "models"))
    with pytest.raises(Exception) as info:
        wf.initialize()
    err = _user_error(info.value)
    assert isinstance(err, ConfigError) and str(err).startswith("environment variable SCRD_MAX_PIXELS 'abc': must be "
                                                                "a whole number of pixels >= 0"), str(err)
    with pytest.raises(ConfigError, match="SCRD_MAX_PIXELS"):
        read_medical_image(inputs[0])
    assert not os.path.exists(tmp_path / "out")


def test_image_size_rule_is_the_network_s():
    """The rule checked at start-up is the network's own: multiples of 32 run, a multiple of 16 that is not one of
    32 fails inside the network."""
    from monai_scrd.engines import check_settings
    from monai_scrd.networks import SCRD

    for ok in (32, 96, [64, 96]):
        check_settings({"image_size": ok})
    for bad in (16, 48, 100, 0, True, "128", [64, 100]):
        with pytest.raises(ConfigError, match=r"^image_size .*: must be a multiple of 32"):
            check_settings({"image_size": bad})
    torch.manual_seed(0)
    net = SCRD("efficientnet_lite0", pretrained=False).eval()
    with torch.no_grad():
        assert net(torch.rand(1, 3, 96, 64)).shape == (1, 1, 96, 64)
        with pytest.raises(RuntimeError):
            net(torch.rand(1, 3, 48, 48))


def test_bad_setting_is_one_line_on_stderr(tmp_path):
    """What the user sees: one ``error:`` line on stderr, exit status 1, no traceback anywhere."""
    proc = subprocess.run(_cli(TRAIN, "training", {**TINY, "image_size": 100, "datalist": tmp_path / "missing.json",
                                                   "output_dir": tmp_path / "run", "model_dir": tmp_path / "models"}),
                          cwd=REPO, env=_env(), capture_output=True, text=True, timeout=600)
    assert proc.returncode == 1
    assert _error_lines(proc) == ["error: image_size 100: must be a multiple of 32 (at least 32; one number or [height, "
                                  "width]), e.g. 96 or 128: the network works at 1/32 of the image and maps back up, "
                                  "so other sizes do not fit (set SCRD_DEBUG=1 for the traceback)"], proc.stderr[-3000:]
    assert "Traceback" not in proc.stdout + proc.stderr


# ------------------------------------------------------------------------------------------ 2. one-line errors
def test_resume_checks_at_start(tmp_path):
    """``--resume_from`` a corrupt file (no PyTorch advice to load it unsafely), a checkpoint of another backbone (named),
    ``--resume true`` with nothing to resume: one line each, before any data is read."""
    from monai_scrd.engines import check_resume
    from monai_scrd.networks.teacher import TeacherEncoder

    good = tmp_path / "scrd_checkpoint_iteration=2.pt"
    torch.save({"model": {"teacher." + k: v for k, v in TeacherEncoder("resnet18", pretrained=False).state_dict().items()},
                "optimizer": {}, "trainer": {"iteration": 2}}, good)
    corrupt = tmp_path / "corrupt.pt"
    corrupt.write_bytes(good.read_bytes()[:3000])
    with pytest.raises(CheckpointError) as info:
        check_resume(False, str(corrupt), tmp_path, "efficientnet_lite0")
    msg = str(info.value)
    assert msg == f"{corrupt}: not a readable weights-only torch checkpoint (truncated or corrupt: its zip archive cannot be read)"
    with pytest.raises(CheckpointError) as info:
        check_resume(False, str(good), tmp_path, "efficientnet_lite0")
    assert str(info.value) == (f"{good}: a checkpoint of backbone 'resnet18', not 'efficientnet_lite0'; resume with "
                               "--backbone resnet18")
    assert check_resume(True, "", tmp_path, "resnet18") == str(good)  # the latest usable one; the corrupt one skipped
    (tmp_path / "empty").mkdir()
    with pytest.raises(ConfigError, match=r"^resume true: no training checkpoint in .*empty to resume from"):
        check_resume("true", "", tmp_path / "empty", "resnet18")
    with pytest.raises(ConfigError, match=r"^resume_from '.*nope\.pt': checkpoint file not found"):
        check_resume(False, str(tmp_path / "nope.pt"), tmp_path, "resnet18")


def test_corrupt_resume_from_is_one_line(tmp_path):
    import datetime
    import pickle

    # a plain pickle, not a file of tensors: torch's own message advises loading it with weights_only=False
    (tmp_path / "bad.pt").write_bytes(pickle.dumps({"model": datetime.date(2020, 1, 1)}))
    proc = subprocess.run(_cli(TRAIN, "training", {**TINY, "datalist": _datalist(str(tmp_path / "data")),
                                                   "resume_from": tmp_path / "bad.pt", "output_dir": tmp_path / "run",
                                                   "model_dir": tmp_path / "models"}),
                          cwd=REPO, env=_env(), capture_output=True, text=True, timeout=600)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 1
    lines = _error_lines(proc)
    assert len(lines) == 1 and lines[0].startswith(f"error: {tmp_path / 'bad.pt'}: not a readable weights-only torch "
                                                   "checkpoint (not a file of tensors"), proc.stderr[-3000:]
    assert "Traceback" not in out and "weights_only=False" not in out and "weights_only` set to `False" not in out


def test_bad_threshold_file_named_at_start(in_process, tmp_path):
    models = _model_dir(tmp_path / "models", threshold="abc")
    wf = in_process(INFER, **TINY, inputs=str(tmp_path), output_dir=str(tmp_path / "out"), model_dir=models)
    with pytest.raises(Exception) as info:
        wf.initialize()
    err = _user_error(info.value)
    assert isinstance(err, ConfigError) and str(err) == f"{models}/threshold.json: 'threshold' is 'abc'; expected a finite number"


def test_empty_inputs_folder(tmp_path):
    from monai_scrd.engines import AnomalyInference

    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match=r"empty: no input images found \(searched recursively"):
        AnomalyInference(None, str(tmp_path / "out"))(str(tmp_path / "empty"))


def test_mixed_folder_scores_what_it_can(tmp_path, caplog):
    """PNG/NIfTI files next to two DICOM files of one series: the images are scored, the series (not in a folder of
    its own) is the one error, logged once, and the summary says what was written."""
    from monai_scrd.data.readers import list_image_inputs
    from monai_scrd.engines import AnomalyInference
    from monai_scrd.scoring import ErrorCollector, Scorer

    mixed = tmp_path / "mixed"
    series = write_series(mixed, _stored_volume()[..., :2])
    Image.fromarray(np.tile(np.arange(40, dtype=np.uint8) * 5, (40, 1))).save(mixed / "ramp.png")
    _normals(mixed, n=1)
    make_nifti(mixed / "slice.nii.gz", np.random.default_rng(0).random((40, 40)).astype(np.float32), AFFINE)
    assert list_image_inputs(mixed) == sorted([series, str(mixed / "ramp.png"), str(mixed / "n0.png"),
                                               str(mixed / "slice.nii.gz")])
    errors = ErrorCollector(tmp_path / "out" / "errors.csv")
    inference = AnomalyInference(Scorer(tiny_model(), image_size=32), str(tmp_path / "out"), save_heatmaps=False,
                                 errors=errors)
    with caplog.at_level(logging.INFO):
        rows = inference(str(mixed))
        with pytest.raises(SystemExit) as info:
            errors.check()
    assert sorted(os.path.basename(r["path"]) for r in rows) == ["n0.png", "ramp.png", "slice.nii.gz"]
    assert str(info.value) == (f"error: 1 input file(s) could not be processed; see {tmp_path / 'out' / 'errors.csv'} "
                               "(the results of the other 3 were written)")
    logged = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(logged) == 1 and "is not a DICOM file" in logged[0] and "folder of their own" in logged[0], logged
    with open(tmp_path / "out" / "scores.csv") as f:
        assert len(list(csv.DictReader(f))) == 3
    nothing = ErrorCollector()
    nothing.add("a.png", "a.png: broken")
    nothing.written = 0
    with pytest.raises(SystemExit, match=r"\(no file was scored\)$"):
        nothing.check()


def _start_training(tmp_path, **extra) -> subprocess.Popen:
    settings = {**TINY, "num_workers": 1, "datalist": _datalist(str(tmp_path / "data")), "max_iterations": 500,
                "val_interval": 0, "ckpt_interval": 100, "log_interval": 1, "output_dir": tmp_path / "run",
                "model_dir": tmp_path / "models", **extra}
    return subprocess.Popen(_cli(TRAIN, "training", settings), cwd=REPO, env=_env(), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)


@pytest.mark.slow  # a training run stopped after a few iterations (~20 s on 2 CPU cores)
@pytest.mark.parametrize("sig, whole_group", [(signal.SIGINT, True), (signal.SIGTERM, False)])
def test_signal_saves_resumable_checkpoint(tmp_path, sig, whole_group):
    """Ctrl-C (SIGINT to the whole process group, data loader worker included) or SIGTERM to the trainer: a checkpoint
    of the current iteration is saved, ``--resume true`` picks it, and the exit is one line."""
    from monai_scrd.engines import latest_checkpoint

    proc = _start_training(tmp_path)
    seen = ""
    try:
        for line in proc.stdout:
            seen += line
            if "iteration 2/500" in line:
                break
        assert "iteration 2/500" in seen, seen[-2000:]
        os.killpg(proc.pid, sig) if whole_group else os.kill(proc.pid, sig)
        out, err = proc.communicate(timeout=300)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode == 1
    lines = _error_lines(err)
    assert len(lines) == 1, err[-3000:]
    name = signal.Signals(sig).name
    head, _, path = lines[0].partition("; resumable checkpoint: ")
    path = path.split(" (continue with --resume true")[0]
    assert head.startswith(f"error: training stopped by {name} at iteration ") and head.endswith(" of 500"), lines[0]
    iteration = int(head.split(" at iteration ")[1].split()[0])
    assert iteration >= 2 and os.path.dirname(path) == str(tmp_path / "run" / "checkpoints")
    saved = torch.load(path, map_location="cpu", weights_only=True)
    assert saved["trainer"]["iteration"] == iteration and {"model", "optimizer"} <= set(saved)
    assert latest_checkpoint(tmp_path / "run" / "checkpoints") == path
    everything = seen + out + err
    assert "Traceback" not in everything and "KeyboardInterrupt" not in everything


# ------------------------------------------------------------------------------------------ 3. runs never mix
def test_second_inference_never_mixes_with_the_first(in_process, tmp_path):
    """Into a folder holding an earlier run's results, inference refuses to start; with ``--overwrite true`` it
    replaces them (the earlier heatmaps and maps go, other files stay) and lists only its own."""
    models = _model_dir(tmp_path / "models")
    first, second, out = tmp_path / "first", tmp_path / "second", tmp_path / "out"
    _normals(first, n=2, seed=1)
    make_nifti(first / "vol.nii.gz", np.random.default_rng(0).random((40, 40, 2)).astype(np.float32), AFFINE)
    _normals(second, n=1, seed=2)
    common = {**TINY, "model_dir": models, "output_dir": str(out), "device": "cpu"}

    def run(inputs, **extra):
        wf = in_process(INFER, inputs=str(inputs), **common, **extra)
        wf.initialize()
        wf.run()
        wf.finalize()

    run(first)
    assert sorted(os.listdir(out / "heatmaps")) == ["n0.png", "n1.png", "vol.png"] and os.listdir(out / "maps")
    (out / "notes.txt").write_text("mine")
    wf = in_process(INFER, inputs=str(second), **common)
    with pytest.raises(Exception) as info:
        wf.initialize()
    err = _user_error(info.value)
    assert isinstance(err, ConfigError) and str(err).startswith(f"output_dir {str(out)!r}: must be empty, and it holds "
                                                                "the results of an earlier run"), str(err)
    assert "--overwrite true" in str(err)
    run(second, overwrite=True)
    with open(out / "scores.csv") as f:
        assert [os.path.basename(r["path"]) for r in csv.DictReader(f)] == ["n0.png"]
    assert os.listdir(out / "heatmaps") == ["n0.png"] and not os.path.exists(out / "maps")
    assert (out / "notes.txt").read_text() == "mine"


def test_evaluation_refuses_an_earlier_runs_folder(in_process, tmp_path):
    ev = tmp_path / "eval"
    ev.mkdir()
    (ev / "metrics.json").write_text("{}")
    wf = in_process([TRAIN, EVALUATE], "evaluating", **TINY, eval_dir=str(ev), model_dir=str(tmp_path / "models"),
                    output_dir=str(tmp_path / "run"), datalist=str(tmp_path / "missing.json"))
    with pytest.raises(Exception) as info:
        wf.initialize()
    err = _user_error(info.value)
    assert isinstance(err, ConfigError) and str(err).startswith(f"eval_dir {str(ev)!r}: must be empty"), str(err)
    wf = in_process([TRAIN, EVALUATE], "evaluating", **TINY, eval_dir=str(ev), model_dir=str(tmp_path / "models"),
                    output_dir=str(tmp_path / "run"), datalist=str(tmp_path / "missing.json"), overwrite=True)
    wf.initialize()  # the earlier run's files are cleared; nothing else was read
    assert os.listdir(ev) == []


# --------------------------------------------------------------------- constant images, copies (issue 21)
def test_constant_image_refused_like_an_empty_volume(tmp_path):
    """A constant 2D image (gray or a flat colour) is refused with one line naming the file and its value, as a
    constant volume is; scoring writes an error, not a strong anomaly; the training check refuses it up front."""
    from monai_scrd.data.robust import check_training_files
    from monai_scrd.scoring import Scorer
    from monai_scrd.scoring.dataset import Preprocessor

    gray, red = tmp_path / "gray.png", tmp_path / "red.png"
    Image.fromarray(np.full((40, 40), 128, np.uint8)).save(gray)
    Image.fromarray(np.tile(np.array([255, 0, 0], np.uint8), (40, 40, 1))).save(red)
    volume = tmp_path / "flat.nii.gz"
    make_nifti(volume, np.full((40, 40, 3), 7.0, np.float32), AFFINE)
    prep = Preprocessor(image_size=32, color_mode="rgb")
    assert prep(str(gray)).error == f"{gray}: image is constant (every pixel 128): nothing to score"
    assert prep(str(red)).error == f"{red}: image is constant (every pixel (255, 0, 0)): nothing to score"
    assert prep(str(volume)).error == f"{volume}: all 3 slices along axis 2 are empty (constant)"
    normal = _normals(tmp_path / "ok", n=1)[0]
    assert prep(normal).error == "" and prep(normal).count == 1
    (result,) = Scorer(tiny_model(), image_size=32).score([str(gray)])
    assert result.score is None and result.error == f"{gray}: image is constant (every pixel 128): nothing to score"
    with pytest.raises(DataError) as info:
        check_training_files([normal, str(gray)])
    assert str(info.value).splitlines()[1:] == [f"{gray}: image is constant (every pixel 128): nothing to score"]


def test_validation_copy_of_a_training_image_is_warned(tmp_path, caplog):
    """A validation image byte-identical to a training image: one warning line with the count and an example."""
    from monai_scrd.engines.utils import validation_items

    root = tmp_path / "data"
    paths = _normals(root / "imgs")
    copy = root / "imgs" / "copy_of_n0.png"
    copy.write_bytes(open(paths[0], "rb").read())
    data = {"training": [{"image": f"imgs/{os.path.basename(p)}"} for p in paths[:6]],
            "validation": [{"image": f"imgs/{os.path.basename(p)}"} for p in paths[6:]] + [{"image": "imgs/copy_of_n0.png"}]}
    (root / "datalist.json").write_text(json.dumps(data))
    with caplog.at_level(logging.INFO, logger="monai_scrd.engines"):
        items = validation_items(str(root / "datalist.json"))
    assert len(items) == 3  # kept, not refused
    warned = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warned) == 1 and warned[0].startswith("1 of the 3 validation images are byte-identical to training images")
    assert "copy_of_n0.png" in warned[0] and "n0.png" in warned[0] and "\n" not in warned[0]
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="monai_scrd.engines"):
        validation_items(_datalist(str(tmp_path / "clean")))
    assert not [r for r in caplog.records if r.levelno == logging.WARNING]
