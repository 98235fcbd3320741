"""Issue 21 item 6: quiet, useful output of the bundle commands (tiny sizes, a few iterations).

- the training log ends with a next-step line naming the inference and evaluation commands;
- Ignite's "Epoch[n] Metrics" lines (an epoch of an iteration-based run) are replaced by one validation line;
- inference logs, per file, the score, the threshold and the decision (normal / anomalous);
- importing the MLflow pyfunc model prints no MLflow type-hint warning (raw ANSI codes in a log).
"""

from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest

from test_bundle import INFER, SAMPLE, _env, _train_args, bundle

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    out = str(tmp_path_factory.mktemp("quiet"))
    train = bundle(*_train_args(os.path.join(out, "run"), "--max_iterations", "2", "--val_interval", "2",
                                "--log_interval", "1"))
    models = os.path.join(out, "run", "models")
    infer = bundle("run", "--config_file", INFER, "--image_size", "64", "--num_workers", "0",
                   "--model_dir", models, "--output_dir", os.path.join(out, "inference"),
                   "--inputs", os.path.join(SAMPLE, "test_glioma"))
    return {"train": train, "infer": infer, "models": models}


def test_training_log_ends_with_next_step(tiny_run):
    lines = [ln for ln in tiny_run["train"].stdout.splitlines() if ln.strip()]
    last = lines[-1]
    assert "next:" in last and "inference.json --inputs" in last and "run evaluating" in last, last
    assert f"--model_dir {tiny_run['models']}" in last and "--image_size 64" in last


def test_no_ignite_epoch_lines_during_training(tiny_run):
    log = tiny_run["train"].stdout + tiny_run["train"].stderr
    assert not re.search(r"Epoch\[\d+\]", log)
    assert "validation normals: mean_score" in log


def test_inference_logs_decision_per_file(tiny_run):
    log = tiny_run["infer"].stdout + tiny_run["infer"].stderr
    n = len(os.listdir(os.path.join(SAMPLE, "test_glioma")))
    decisions = re.findall(r"\[\d+/\d+\] \S+: score \S+ (?:>=|<) threshold \S+: (normal|anomalous)$", log, re.M)
    assert len(decisions) == n, log[-3000:]


def test_pyfunc_import_has_no_mlflow_type_hint_warning():
    proc = subprocess.run([sys.executable, "-W", "default", "-c", "import monai_scrd.registry.pyfunc"],
                          env=_env(), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert "Add type hints" not in proc.stderr and "\x1b[" not in proc.stderr, proc.stderr
