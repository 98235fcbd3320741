"""Smoke tests of benchmarks/quality.py and benchmarks/speed.py at toy sizes (a fake Brain Tumor layout)."""

from __future__ import annotations

import csv
import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from sklearn.metrics import roc_auc_score

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"
sys.path.insert(0, str(BENCH))


def _fake_brain_tumor(root: Path, n: int = 8) -> Path:
    rng = np.random.default_rng(0)
    split = {"train": {"0": [], "unlabeled": {}}, "test": {"0": [], "1": []}}
    rows = []
    for group, key, count in (("train/normal", ("train", "0"), n), ("test/normal", ("test", "0"), 4),
                              ("test/glioma", ("test", "1"), 2), ("test/meningioma", ("test", "1"), 2)):
        (root / group).mkdir(parents=True, exist_ok=True)
        for i in range(count):
            name = f"{group.replace('/', '_')}_{i}.png"
            size = 40 + 8 * i
            Image.fromarray(rng.integers(0, 255, (size, size), dtype=np.uint8)).save(root / group / name)
            split[key[0]][key[1]].append(name)
            rows.append({"path": f"{group}/{name}", "source_path": "", "bytes": 0, "width": size, "height": size,
                         "mode": "L", "format": "PNG", "sha1": ""})
    (root / "splits").mkdir()
    (root / "splits" / "MedIAnomaly_BrainTumor_data.json").write_text(json.dumps(split))
    with open(root / "files.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    with open(root / "splits" / "exact_duplicates.csv", "w") as f:
        f.write("sha1,n_files,spans_train_and_test,paths\n")
        f.write(f"x,2,True,test/normal/{split['test']['0'][0]};train/normal/{split['train']['0'][0]}\n")
    return root


def test_quality_smoke(tmp_path):
    import quality

    root = _fake_brain_tumor(tmp_path / "bt")
    out = tmp_path / "res"
    results = quality.main(["--smoke", "--data-root", str(root), "--cache-dir", str(tmp_path / "cache"), "--out-dir", str(out)])
    assert {r["row"] for r in results} == {"rd4ad", "scrd_distill_cal"}
    for r in results:
        labels = [0 if p.startswith("test/normal/") else 1 for p in r["test_paths"]]  # the recorded AUROC is the scores'
        assert r["metrics"]["official"]["auroc"] == pytest.approx(roc_auc_score(labels, r["test_scores"]), abs=1e-5)
        assert r["metrics"]["dedup"]["n_normal"] == r["metrics"]["official"]["n_normal"] - 1
        assert (out / "smoke" / f"{r['row']}_seed0.json").exists()
        assert len(r["test_scale_scores"]) == r["n_test"] and len(r["test_scale_scores"][0]) == 3
        assert [c["iteration"] for c in r["checkpoints"]] == [1, 2]
    rd4ad, scrd = results
    assert rd4ad["scale_calibration"] == {"mean": [0.0, 0.0, 0.0], "std": [1.0, 1.0, 1.0]}
    # the calibrated row standardises each scale on the held-out normals: their calibrated scores average to ~0
    assert scrd["scale_calibration"]["std"] != [1.0, 1.0, 1.0]
    assert abs(np.mean(scrd["val_scores"])) < 0.1  # up to the smoothing's border effects
    assert scrd["alpha_test"]["normal"]["entropy_mean"] >= 0
    # the shipped training step reports the contrastive ratio per scale
    assert {"ratio_1", "ratio_2", "ratio_3", "alpha_1"} <= set(scrd["train_log"][-1])
    assert (out / "smoke" / "shortcut.json").exists()


def test_speed_smoke(tmp_path):
    import speed

    res = speed.main(["--smoke", "--out", str(tmp_path / "speed.json")])
    assert res["training"] and res["inference"] and res["noise"]
    assert (tmp_path / "speed.json").exists()
    default = res["default_cpu_backend"]
    # the model per backend (PyTorch and the default CPU backend in smoke mode), with the backend that actually ran
    assert {r["backend"] for r in res["inference"]} == {"torch", default}
    assert all(r["backend_used"] == r["backend_resolved"] for r in res["inference"])
    if default != "torch":
        assert next(r for r in res["inference"] if r["backend"] == default)["speedup_vs_torch"] > 0
    assert {(r["entry"], r["backend"]) for r in res["entry_points"]} == {("evaluation", default), ("pyfunc", default)}
    assert all(r.get("backend_used") == default for r in res["entry_points"])
    st = res["stages"][0]
    assert set(st["ms_per_image"]) == {"decode", "preprocess", "model", "write"} and st["heatmaps_written"] == st["images"]
    run = res["pipeline"]["runs"][0]
    assert run["code"] == "current" and run["scores_rows"] == run["heatmaps_written"] == res["pipeline"]["images"]
    assert run["peak_rss_mib"] > 0 and run["monai_scrd_file"].startswith(str(Path(speed.__file__).resolve().parents[1]))
    assert res["large"]["heatmap_exists"] and res["large"]["seconds"] > 0 and res["large"]["peak_rss_mib"] > 0
    md = speed.report_markdown(res, "speed.json")
    assert "images/s" in md
    for title in ("per backend", "Time per stage", "Bundle inference as a user runs it", "Large image"):
        assert title in md


def test_bundle_brain_table(tmp_path):
    """The bundle section of RESULTS.md: one row per configuration and split, seeds pooled, commands seed-free."""
    import quality_report as R
    from bundle_sample import with_override

    assert with_override(["run", "--datalist", "a.json", "--seed", "0"], "--datalist", "b.json") == \
        ["run", "--datalist", "b.json", "--seed", "0"]
    assert with_override(["run"], "--datalist", "b.json") == ["run", "--datalist", "b.json"]
    op = {"f1": 0.5, "recall": 0.4, "false_positive_rate": 0.05}
    for seed, auroc in ((0, 0.8), (1, 0.9)):
        run = {"name": "default", "seed": seed, "train_wall_s": 100.0, "train_command": f"python -m x --seed {seed}",
               "metrics": {"auroc": auroc, "stored_threshold": op},
               "extra_evals": {"dedup": {"metrics": {"auroc": auroc - 0.1, "stored_threshold": op}}}}
        (tmp_path / "bundle_brain" / "default").mkdir(parents=True, exist_ok=True)
        (tmp_path / "bundle_brain" / "default" / f"seed{seed}.json").write_text(json.dumps(run))
    md = R.bundle_table(tmp_path)
    assert "| default | official | 0, 1 | 85.00 ± 7.07 | 50.00 ± 0.00 | 40.00 ± 0.00 | 5.00 ± 0.00 | 100 ± 0 s |" in md
    assert "| default | dedup | 0, 1 | 75.00 ± 7.07 |" in md
    assert md.count("python -m x --seed S") == 1
    assert R.bundle_table(tmp_path / "empty") == "(no run recorded)\n"
