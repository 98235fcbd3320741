"""``configs/paper.json`` composes with ``train.json`` and trains: the paper's recipe (WRN50-2 teacher, alpha-weighted
scales, whole-map mean, no calibration), shrunk to 2 iterations at 64 px, with the teacher read from a local file as a
user without internet would give it (random weights here: no download in tests)."""

from __future__ import annotations

import json
import os

import pytest
import torch

from test_bundle import ABS, CONFIGS, TRAIN, _custom_datalist, bundle


@pytest.mark.slow
def test_train_json_with_paper_json_trains_two_iterations(tmp_path):
    import torchvision

    weights = tmp_path / "wide_resnet50_2.pth"
    torch.save(torchvision.models.wide_resnet50_2().state_dict(), weights)
    out = tmp_path / "run"
    config = "[" + ",".join(repr(p) for p in (TRAIN, os.path.join(CONFIGS, "paper.json"))) + "]"
    proc = bundle("run", "training", "--config_file", config, "--datalist", _custom_datalist(str(tmp_path / "data")),
                  "--pretrained_weights", str(weights), "--image_size", "64", "--batch_size", "2", "--num_workers", "0",
                  "--max_iterations", "2", "--val_interval", "2", "--ckpt_interval", "2",
                  "--output_dir", str(out), "--model_dir", str(out / "models"), *ABS)
    assert "iteration 2/2" in proc.stdout + proc.stderr
    state = torch.load(out / "models" / "model.pt", map_location="cpu", weights_only=True)["model"]
    # WRN50-2's stage-3 width (1024 channels) reaches the student, and the scale head of the paper is there
    assert any(k.startswith("scale_head.") for k in state)
    record = json.loads((out / "models" / "threshold.json").read_text())
    assert record["score_reduction"] == "mean" and record["backbone"] == "wide_resnet50_2"
