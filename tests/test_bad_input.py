"""Fuzz-style bad input: broken files, datalists and checkpoints each fail with one clear line naming the culprit;
batch scoring keeps going and scores every good file; training set-up lists all bad training images at once."""

import csv
import json
import os
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from test_data_utils import AFFINE, make_dicom, make_nifti, tiny_model
from torch.utils.data import DataLoader

from monai_scrd.checkpoint import CheckpointError, extract_state_dict, load_state_dict_checked, load_weights_file
from monai_scrd.data import DataError, load_datalist
from monai_scrd.data.robust import check_training_files, validate_training_files
from monai_scrd.data.transforms import preprocessing_transforms
from monai_scrd.data.prepare import main as prepare_main
from monai_scrd.scoring import ErrorCollector, Preprocessor, Scorer, ScoringDataset, collate_prepared


class _Evil:  # unpickling this would run code; weights-only loading must refuse it
    def __reduce__(self):
        return (os.system, ("echo pwned",))


def _write_good(d: Path) -> list[str]:
    rng = np.random.default_rng(0)
    good = []
    Image.fromarray(rng.integers(0, 256, (40, 48), dtype=np.uint8)).save(d / "good_l.png")
    Image.fromarray(rng.integers(0, 256, (40, 48, 3), dtype=np.uint8)).save(d / "good_rgb.jpg")
    Image.fromarray(rng.integers(0, 65536, (40, 48), dtype=np.uint16)).save(d / "good_16.png")
    make_dicom(d / "good.dcm", rng.integers(0, 4000, (32, 32)), "MONOCHROME1", slope=1, intercept=-1024)
    make_nifti(d / "good2d.nii.gz", rng.random((30, 30)).astype(np.float32), AFFINE)
    make_nifti(d / "good3d.nii.gz", rng.random((24, 24, 3)).astype(np.float32), AFFINE)
    good = ["good_l.png", "good_rgb.jpg", "good_16.png", "good.dcm", "good2d.nii.gz", "good3d.nii.gz"]
    return [str(d / g) for g in good]


def _write_bad(d: Path) -> dict[str, str]:
    """{path: expected message fragment} for >= 10 kinds of broken files."""
    rng = np.random.default_rng(1)
    Image.fromarray(rng.integers(0, 256, (64, 64), dtype=np.uint8)).save(d / "full.png")
    b = (d / "full.png").read_bytes()
    (d / "trunc.png").write_bytes(b[: len(b) // 2])
    Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(d / "full.jpg")
    b = (d / "full.jpg").read_bytes()
    (d / "trunc.jpg").write_bytes(b[: len(b) // 2])
    (d / "text.png").write_text("this is not an image\n")
    make_dicom(d / "full.dcm", rng.integers(0, 4000, (32, 32)))
    b = (d / "full.dcm").read_bytes()
    (d / "trunc.dcm").write_bytes(b[:-500])
    (d / "nodicom.dcm").write_text("x" * 400)
    make_nifti(d / "4d.nii.gz", np.ones((4, 4, 3, 2), np.float32))
    make_nifti(d / "1d.nii.gz", np.ones((5,), np.float32))
    nan = np.ones((8, 8), np.float32)
    nan[2, 2] = np.nan
    make_nifti(d / "nan.nii.gz", nan)
    Image.fromarray(np.array([[1, np.inf], [0, 2]], dtype=np.float32)).save(d / "inf.tiff")
    (d / "empty.png").write_bytes(b"")
    (d / "folder.png").mkdir()
    (d / "data.xyz").write_text("zzz")
    for f in ("full.png", "full.jpg", "full.dcm"):
        os.remove(d / f)
    return {
        str(d / "missing.png"): "file not found",
        str(d / "trunc.png"): "truncated or corrupt image file",
        str(d / "trunc.jpg"): "truncated or corrupt image file",
        str(d / "text.png"): "not a readable image",
        str(d / "trunc.dcm"): "unreadable DICOM pixel data",
        str(d / "nodicom.dcm"): "not a DICOM file (missing preamble)",
        str(d / "4d.nii.gz"): "is 4D; expected a 2D image or a 3D volume",
        str(d / "1d.nii.gz"): "is 1D; expected a 2D image or a 3D volume",
        str(d / "nan.nii.gz"): "1 NaN and 0 Inf pixel values",
        str(d / "inf.tiff"): "0 NaN and 1 Inf pixel values",
        str(d / "empty.png"): "file is empty (0 bytes)",
        str(d / "folder.png"): "is a folder, not an image file",
        str(d / "data.xyz"): "unknown image format",
    }


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("fuzz")
    return d, _write_good(d), _write_bad(d)


@pytest.fixture(scope="module")
def model():
    return tiny_model()


def test_each_broken_file_one_clear_line(files):
    _, good, bad = files
    assert len(bad) >= 10
    tf = preprocessing_transforms(image_size=32)
    prepare = Preprocessor(image_size=32)
    for path, fragment in bad.items():
        with pytest.raises(DataError) as info:
            tf({"image": path})  # the plain transform raises the DataError itself (not MONAI's wrapper)
        msg = str(info.value)
        assert msg.startswith(f"{path}: ") and fragment in msg and "\n" not in msg, msg
        p = prepare(path)  # the scorer reads volumes (and series folders) too: same file, same fragment, one line
        assert p.images is None and p.error.startswith(f"{path}: ") and fragment in p.error and "\n" not in p.error
        assert p.error == msg or os.path.isdir(path), (p.error, msg)
    for path in good[:-1]:  # every 2D good file loads
        p = prepare(path)
        assert p.error == "" and tuple(p.images.shape) == (1, 3, 32, 32) and 0 <= float(p.images.min()) <= float(p.images.max()) <= 1
    p = prepare(good[-1])  # a volume: one input per non-empty slice
    assert p.error == "" and p.kind == "volume" and tuple(p.images.shape) == (3, 3, 32, 32)
    with pytest.raises(DataError, match="3D volume"):
        tf({"image": good[-1]})  # the 2D training transforms refuse it


def test_batch_scores_every_good_file(files, model, tmp_path):
    _, good, bad = files
    items = [{"image": p, "label": i % 2} for i, p in enumerate(list(bad)[:4] + good[:3] + list(bad)[4:] + good[3:])]
    results = list(Scorer(model, image_size=64, batch_size=2).score(items))
    assert [r.path for r in results] == [i["image"] for i in items]  # one result per file, in order
    scored = [r for r in results if r.ok]
    assert [r.path for r in scored] == good and all(np.isfinite(r.score) for r in scored)
    assert scored[-1].kind == "volume" and [r.item["label"] for r in results] == [i["label"] for i in items]
    errors = ErrorCollector()
    for r in results:
        if not r.ok:
            errors.add(r.path, r.error)
    assert [p for p, _ in errors] == list(bad)
    for path, msg in errors:
        assert msg.startswith(path) and bad[path] in msg
    assert errors.exit_code == 1
    out = errors.write(tmp_path / "out" / "errors.csv")
    rows = list(csv.DictReader(open(out)))
    assert [r["path"] for r in rows] == list(bad) and all(r["error"] for r in rows)
    empty = ErrorCollector(tmp_path / "none.csv")
    empty.check()  # nothing failed: no exit, and errors.csv is still written
    assert (tmp_path / "none.csv").read_text().strip() == "path,error" and empty.exit_code == 0


def test_scoring_dataset_in_dataloader(files):
    _, good, bad = files
    data = [{"image": p} for p in [good[0], *list(bad)[:3], good[1]]]
    batch = next(iter(DataLoader(ScoringDataset(data, Preprocessor(image_size=32)), batch_size=5, collate_fn=collate_prepared)))
    assert [p.error == "" for p in batch] == [True, False, False, False, True]
    assert all(p.path in p.error for p in batch[1:4]) and tuple(batch[0].images.shape) == (1, 3, 32, 32)


def test_training_setup_lists_all_bad_files(files, tmp_path):
    d, good, bad = files
    train = [os.path.relpath(p, d) for p in good[:3] + list(bad)[:5] + [good[-1]]]
    dl_path = d / "train_datalist.json"
    dl_path.write_text(json.dumps({"training": [{"image": p} for p in train]}))
    dl = load_datalist(dl_path, require=("training",))
    bad_found = validate_training_files(dl["training"])
    expected_bad = list(bad)[:5] + [good[-1]]  # the 3D volume is not a 2D training image
    assert [p for p, _ in bad_found] == [os.path.realpath(p) if os.path.exists(p) else p for p in expected_bad]
    with pytest.raises(DataError) as info:
        check_training_files(dl["training"])
    lines = str(info.value).splitlines()
    assert lines[0].startswith("6 of 9 training images are unreadable")
    assert len(lines) == 7 and all(any(os.path.basename(p) in ln for ln in lines[1:]) for p in expected_bad)
    check_training_files(good[:3])  # all good: no error
    with pytest.raises(DataError, match="no training images"):
        check_training_files([])


@pytest.mark.parametrize(
    "content, fragment",
    [
        ({"train": [{"image": "a.png"}]}, "dl.json: unknown key 'train' (expected training, validation, test); did you mean 'training'?"),
        ({"name": "x"}, "dl.json: no 'training', 'validation' or 'test' list"),
        ([{"image": "a.png"}], "dl.json: top level is a JSON list"),
        ({"test": [{"image": "a.png", "label": 0}] * 3 + [{"image": "b.png", "label": 2}]}, "dl.json: test[3].label is 2; expected 0 or 1"),
        ({"test": [{"image": "a.png", "label": "1"}]}, 'dl.json: test[0].label is "1"; expected 0 or 1'),
        ({"test": [{"image": "a.png"}]}, "dl.json: test[0] has no 'label'"),
        ({"training": [{"image": "a.png", "label": 1}]}, "dl.json: training[0].label is 1; training images must be normal"),
        ({"training": [{"path": "a.png"}]}, "dl.json: training[0] has no 'image' key (keys: path)"),
        ({"training": {"image": "a.png"}}, "dl.json: training is a JSON dict; expected a list"),
        ({"training": [{"image": ""}]}, "dl.json: training[0].image is ''"),
        ({"training": [{"image": "../outside.png"}]}, "dl.json: training[0].image (../outside.png) resolves to"),
        ({"training": [{"image": "/etc/passwd"}]}, "dl.json: training[0].image is an absolute path (/etc/passwd)"),
    ],
)
def test_bad_datalists(tmp_path, content, fragment):
    ds = tmp_path / "ds"
    ds.mkdir()
    (ds / "dl.json").write_text(json.dumps(content))
    with pytest.raises(DataError) as info:
        load_datalist(ds / "dl.json")
    msg = str(info.value)
    assert fragment in msg and "\n" not in msg, msg
    assert msg.startswith(str(ds / "dl.json"))


def test_datalist_escape_and_allow_absolute(tmp_path):
    ds = tmp_path / "ds"
    (ds / "img").mkdir(parents=True)
    outside = tmp_path / "secret.png"
    outside.write_bytes(b"x")
    (ds / "img" / "link.png").symlink_to(outside)
    (ds / "img" / "ok.png").write_bytes(b"x")
    (ds / "dl.json").write_text(json.dumps({"test": [{"image": "img/ok.png", "label": 0}, {"image": "img/link.png", "label": 1}]}))
    with pytest.raises(DataError, match=r"test\[1\]\.image \(img/link\.png\) resolves to .*secret\.png, outside the dataset folder"):
        load_datalist(ds / "dl.json")
    dl = load_datalist(ds / "dl.json", allow_absolute=True)
    assert dl["test"][1]["image"] == str(outside.resolve())
    # dataset_dir overrides the JSON's folder as the base
    (tmp_path / "lists").mkdir()
    (tmp_path / "lists" / "dl.json").write_text(json.dumps({"test": [{"image": "img/ok.png", "label": 0}]}))
    assert load_datalist(tmp_path / "lists" / "dl.json", dataset_dir=ds)["test"][0]["image"] == str((ds / "img" / "ok.png").resolve())
    (tmp_path / "lists" / "abs.json").write_text(json.dumps({"test": [{"image": str(outside), "label": 1}]}))
    assert load_datalist(tmp_path / "lists" / "abs.json", allow_absolute=True)["test"][0]["image"] == str(outside.resolve())
    (tmp_path / "bad.json").write_text('{"training": [')
    with pytest.raises(DataError, match=r"bad\.json: not valid JSON \(Expecting value at line 1"):
        load_datalist(tmp_path / "bad.json")
    with pytest.raises(DataError, match=r"nope\.json: datalist file not found"):
        load_datalist(tmp_path / "nope.json")


def test_empty_folder_in_builder(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    assert prepare_main(["--train-normal", str(tmp_path / "empty"), "--output", str(tmp_path / "o.json")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"error: {tmp_path / 'empty'}: no image files found") and "\n" not in err


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")
def test_mismatched_and_untrusted_checkpoints(tmp_path, model):
    sd = {k: v.clone() for k, v in model.state_dict().items()}
    key = next(k for k in sd if k.startswith("decoder") and sd[k].ndim == 4)
    sd[key] = torch.zeros(3, 3, 1, 1)
    torch.save({"model": sd}, tmp_path / "wrong_shape.pt")
    with pytest.raises(CheckpointError) as info:
        load_state_dict_checked(model, extract_state_dict(load_weights_file(tmp_path / "wrong_shape.pt"), "wrong_shape.pt"), str(tmp_path / "wrong_shape.pt"))
    assert str(info.value).startswith(str(tmp_path / "wrong_shape.pt")) and "shape mismatch" in str(info.value)
    (tmp_path / "garbage.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match=r"garbage\.pt: not a readable weights-only torch checkpoint"):
        load_weights_file(tmp_path / "garbage.pt")
    with open(tmp_path / "evil.pt", "wb") as f:
        pickle.dump({"model": _Evil()}, f)
    with pytest.raises(CheckpointError, match=r"evil\.pt: "):
        load_weights_file(tmp_path / "evil.pt")
    with pytest.raises(CheckpointError, match=r"missing\.pt: checkpoint file not found"):
        load_weights_file(tmp_path / "missing.pt")


def test_no_pickle_in_data_code():
    root = Path(__file__).resolve().parents[1] / "monai_scrd" / "data"
    for f in root.glob("*.py"):
        text = f.read_text()
        assert "import pickle" not in text and "allow_pickle=True" not in text and "torch.load" not in text, f
