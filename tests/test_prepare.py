"""Datalist builder (python -m monai_scrd.prepare): class folders, MedIAnomaly split, CSV, validation hold-out,
duplicates; the official brain-tumour split from ../shared."""

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from monai_scrd.data.datalist import load_datalist
from monai_scrd.data.prepare import main

BRAIN = Path(__file__).resolve().parents[2] / "shared" / "data" / "brain_tumor"
SPLIT = BRAIN / "splits" / "MedIAnomaly_BrainTumor_data.json"
needs_brain = pytest.mark.skipif(
    not SPLIT.is_file(), reason=f"shared brain-tumour data not staged at {BRAIN} (../shared/data/brain_tumor)"
)
REPO = Path(__file__).resolve().parents[1]


def _png(path: Path, seed: int) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.random.default_rng(seed).integers(0, 256, (8, 8), dtype=np.uint8)).save(path)
    return path


@pytest.fixture()
def folders(tmp_path):
    root = tmp_path / "data"
    for i in range(10):
        _png(root / "train" / "normal" / f"tr{i}.png", i)
    for i in range(4):
        _png(root / "test" / "normal" / f"te{i}.png", 100 + i)
    (root / "test" / "normal" / "dup.png").write_bytes((root / "train" / "normal" / "tr3.png").read_bytes())
    for i in range(3):
        _png(root / "test" / "tumour" / "sub" / f"ab{i}.png", 200 + i)
    (root / "test" / "tumour" / "notes.txt").write_text("not an image")
    return root


def test_class_folders_relative_paths_and_duplicates(folders, capsys):
    out = folders / "datalist.json"
    rc = main(["--train-normal", str(folders / "train/normal"), "--test-normal", str(folders / "test/normal"),
               "--test-abnormal", str(folders / "test/tumour"), "--output", str(out), "--val-fraction", "0.2"])
    assert rc == 0
    text = capsys.readouterr().out
    assert "1 of 5 test normal and 0 of 3 test abnormal images are byte-identical" in text
    raw = json.loads(out.read_text())
    assert all(not it["image"].startswith("/") for k in ("training", "validation", "test") for it in raw[k])
    dl = load_datalist(out)  # relative to the JSON's folder
    assert len(dl["training"]) == 8 and len(dl["validation"]) == 2
    assert sorted(it["label"] for it in dl["test"]) == [0] * 5 + [1] * 3
    assert all(os.path.isfile(it["image"]) for k in dl for it in dl[k])
    rows = list(csv.DictReader(open(folders / "datalist_duplicates.csv")))
    assert len(rows) == 1 and rows[0]["test_image"] == "test/normal/dup.png"
    assert rows[0]["training_images"] == "train/normal/tr3.png"
    # dropping the duplicate
    out2 = folders / "dl_nodup.json"
    assert main(["--train-normal", str(folders / "train/normal"), "--test-normal", str(folders / "test/normal"),
                 "--test-abnormal", str(folders / "test/tumour"), "--output", str(out2), "--drop-test-duplicates"]) == 0
    test = load_datalist(out2)["test"]
    assert len(test) == 7 and not any(it["image"].endswith("dup.png") for it in test)


def test_val_fraction_deterministic(folders):
    args = ["--train-normal", str(folders / "train/normal"), "--no-duplicate-check"]
    sets = []
    for seed in (0, 0, 1):
        out = folders / f"v{len(sets)}.json"
        assert main(args + ["--output", str(out), "--val-fraction", "0.3", "--seed", str(seed)]) == 0
        dl = load_datalist(out)
        assert len(dl["validation"]) == 3 and len(dl["training"]) == 7
        assert not {i["image"] for i in dl["validation"]} & {i["image"] for i in dl["training"]}
        sets.append({i["image"] for i in dl["validation"]})
    assert sets[0] == sets[1] and sets[0] != sets[2]


def test_csv_source(folders, capsys):
    rows = [("path", "label", "split"), ("train/normal/tr0.png", 0, "train"), ("train/normal/tr1.png", 0, "val"),
            ("test/normal/te0.png", 0, "test"), ("test/tumour/sub/ab0.png", 1, "test")]
    with open(folders / "labels.csv", "w", newline="") as f:
        csv.writer(f).writerows(rows)
    out = folders / "dl_csv.json"
    assert main(["--csv", str(folders / "labels.csv"), "--output", str(out)]) == 0
    dl = load_datalist(out)
    assert [len(dl[k]) for k in ("training", "validation", "test")] == [1, 1, 2]
    assert [it["label"] for it in dl["test"]] == [0, 1]
    # no split column: everything is a test image
    with open(folders / "plain.csv", "w", newline="") as f:
        csv.writer(f).writerows([("path", "label"), ("test/normal/te1.png", 0), ("test/tumour/sub/ab1.png", 1)])
    assert main(["--csv", str(folders / "plain.csv"), "--output", str(folders / "p.json")]) == 0
    assert list(load_datalist(folders / "p.json")) == ["test"]
    # bad label / missing files / training label 1 -> exit 2 with the row named
    for bad_rows, expected in [
        ([("path", "label"), ("test/normal/te1.png", 2)], "row 2: label is '2'; expected 0 or 1"),
        ([("path", "label"), ("nope1.png", 0), ("nope2.png", 1)], "2 files not found"),
        ([("path", "label", "split"), ("test/tumour/sub/ab1.png", 1, "train")], "training images must be normal"),
        ([("file", "class"), ("a.png", 0)], "needs columns 'path' and 'label'"),
    ]:
        with open(folders / "bad.csv", "w", newline="") as f:
            csv.writer(f).writerows(bad_rows)
        capsys.readouterr()
        assert main(["--csv", str(folders / "bad.csv"), "--output", str(folders / "b.json")]) == 2
        err = capsys.readouterr().err
        assert "bad.csv" in err and expected in err, err


def test_split_json_missing_and_empty_folder(folders, tmp_path, capsys):
    split = {"train": {"0": ["tr0.png", "tr1.png", "gone_a.png"]}, "test": {"0": ["te0.png"], "1": ["ab0.png", "gone_b.png"]}}
    (tmp_path / "split.json").write_text(json.dumps(split))
    assert main(["--split-json", str(tmp_path / "split.json"), "--images-root", str(folders), "--output", str(tmp_path / "o.json")]) == 2
    err = capsys.readouterr().err
    assert "2 listed files not found" in err and "train/0: gone_a.png not found" in err and "test/1: gone_b.png not found" in err
    (tmp_path / "empty").mkdir()
    assert main(["--train-normal", str(tmp_path / "empty"), "--output", str(tmp_path / "o.json")]) == 2
    assert f"{tmp_path / 'empty'}: no image files found" in capsys.readouterr().err
    assert main(["--train-normal", str(tmp_path / "missing_dir"), "--output", str(tmp_path / "o.json")]) == 2
    assert "missing_dir: folder not found" in capsys.readouterr().err
    (tmp_path / "bad_split.json").write_text(json.dumps({"train": {"0": []}}))
    assert main(["--split-json", str(tmp_path / "bad_split.json"), "--images-root", str(folders), "--output", str(tmp_path / "o.json")]) == 2
    assert "missing 'test' object" in capsys.readouterr().err


def test_same_folder_for_training_and_test_refused(folders, tmp_path, capsys):
    """The same folder (or file) as training and test images: one error line naming it, exit 2, nothing written."""
    train = folders / "train" / "normal"
    out = tmp_path / "o.json"
    assert main(["--train-normal", str(train), "--test-normal", str(train), "--test-abnormal", str(folders / "test/tumour"),
                 "--output", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith(f"error: {train / 'tr0.png'}: is both a training and a test image"), err
    assert f"10 of the 13 test images" in err and f"folder {train} is given as training and as test folder" in err
    assert not out.exists()
    # the same folder reached through another path; a CSV listing one file as train and test
    assert main(["--train-normal", str(train), "--test-abnormal", str(train / ".." / "normal"), "--output", str(out)]) == 2
    assert "is both a training and a test image" in capsys.readouterr().err and not out.exists()
    with open(folders / "both.csv", "w", newline="") as f:
        csv.writer(f).writerows([("path", "label", "split"), ("train/normal/tr0.png", 0, "val"),
                                 ("train/normal/tr1.png", 0, "train"), ("train/normal/tr0.png", 0, "test")])
    assert main(["--csv", str(folders / "both.csv"), "--output", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "tr0.png: is both a training and a test image" in err, err


def test_cli_help_is_fast_and_clear():
    res = subprocess.run([sys.executable, "-m", "monai_scrd.prepare", "--help"], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert res.returncode == 0
    for flag in ("--train-normal", "--test-abnormal", "--split-json", "--images-root", "--csv", "--val-fraction",
                 "--drop-test-duplicates", "--output"):
        assert flag in res.stdout
    res = subprocess.run([sys.executable, "-m", "monai_scrd.prepare", "--output", "x.json"], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert res.returncode == 2 and "exactly one source" in res.stderr


@needs_brain
def test_official_brain_tumour_split(tmp_path, capsys):
    out = tmp_path / "bt" / "datalist.json"
    rc = main(["--split-json", str(SPLIT), "--images-root", str(BRAIN), "--output", str(out), "--base-dir", str(BRAIN)])
    assert rc == 0
    text = capsys.readouterr().out
    assert "88 of 600 test normal and 0 of 600 test abnormal images are byte-identical to a training image" in text
    dl = load_datalist(out, dataset_dir=BRAIN)
    split = json.loads(SPLIT.read_text())
    assert len(dl["training"]) == 1000 and "validation" not in dl
    test = dl["test"]
    assert sum(it["label"] == 0 for it in test) == 600 and sum(it["label"] == 1 for it in test) == 600
    assert [os.path.basename(it["image"]) for it in dl["training"]] == split["train"]["0"]
    assert [os.path.basename(it["image"]) for it in test] == split["test"]["0"] + split["test"]["1"]
    assert all(it["image"].startswith(str(BRAIN.resolve()) + "/train/normal/") for it in dl["training"])
    # the 88 duplicates match the staged manifest of exact duplicates
    rows = list(csv.DictReader(open(out.with_name("datalist_duplicates.csv"))))
    assert len(rows) == 88 and {r["label"] for r in rows} == {"0"}
    expected = set()
    for r in csv.DictReader(open(BRAIN / "splits" / "exact_duplicates.csv")):
        paths = r["paths"].split(";")
        if any(p.startswith("train/") for p in paths):
            expected |= {p for p in paths if p.startswith("test/normal/")}
    assert {r["test_image"] for r in rows} == expected
    # de-duplicated version and the same files from the class folders
    out2 = tmp_path / "bt" / "dedup.json"
    assert main(["--split-json", str(SPLIT), "--images-root", str(BRAIN), "--output", str(out2), "--absolute-paths",
                 "--drop-test-duplicates", "--val-fraction", "0.1"]) == 0
    dl2 = load_datalist(out2, allow_absolute=True)
    assert (len(dl2["training"]), len(dl2["validation"])) == (900, 100)
    assert sum(it["label"] == 0 for it in dl2["test"]) == 512 and sum(it["label"] == 1 for it in dl2["test"]) == 600
    out3 = tmp_path / "bt" / "folders.json"
    assert main(["--train-normal", str(BRAIN / "train/normal"), "--test-normal", str(BRAIN / "test/normal"),
                 "--test-abnormal", str(BRAIN / "test/glioma"), str(BRAIN / "test/meningioma"),
                 "--output", str(out3), "--base-dir", str(BRAIN), "--no-duplicate-check"]) == 0
    dl3 = load_datalist(out3, dataset_dir=BRAIN)
    assert {i["image"] for i in dl3["training"]} == {i["image"] for i in dl["training"]}
    assert {(i["image"], i["label"]) for i in dl3["test"]} == {(i["image"], i["label"]) for i in dl["test"]}


def test_prepare_starts_without_torch_or_monai():
    """``python -m monai_scrd.prepare`` only lists folders and writes JSON, so it must not import torch or MONAI
    (seconds of start-up): the reason ``monai_scrd.data`` re-exports only its standard-library modules."""
    code = ("import sys, monai_scrd.prepare, monai_scrd.data, monai_scrd.data.prepare; "
            "heavy = sorted({'torch', 'monai', 'numpy'} & set(sys.modules)); print(heavy); sys.exit(1 if heavy else 0)")
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr
