"""Colour modes (issue 15): detection, datalist resolution, preprocessing, colour DICOM, refusal at scoring, and an
isoluminant hue anomaly that only the RGB pipeline can see."""

import csv
import json
import logging
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from monai.data import CacheDataset, DataLoader
from monai.engines import SupervisedTrainer
from monai.transforms import Compose
from PIL import Image

from monai_scrd.data import DataError
from monai_scrd.data.color import check_color_mode, image_color_mode, resolve_color_mode, source_color_mode, trained_color_mode
from monai_scrd.data.readers import read_medical_image
from monai_scrd.data.transforms import ToColorMode, preprocessing_transforms

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _png(path, array_hwc_or_hw):
    Image.fromarray(np.asarray(array_hwc_or_hw, dtype=np.uint8)).save(path)
    return str(path)


def _write_dicom(path, pixels, photometric):
    from pydicom.dataset import Dataset as DicomDataset
    from pydicom.dataset import FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, SecondaryCaptureImageStorage, generate_uid

    ds = DicomDataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.SOPClassUID, ds.SOPInstanceUID = SecondaryCaptureImageStorage, ds.file_meta.MediaStorageSOPInstanceUID
    ds.Rows, ds.Columns = pixels.shape[:2]
    ds.SamplesPerPixel = 1 if pixels.ndim == 2 else 3
    if pixels.ndim == 3:
        ds.PlanarConfiguration = 0
    ds.PhotometricInterpretation = photometric
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 8, 8, 7, 0
    ds.PixelData = np.ascontiguousarray(pixels, dtype=np.uint8).tobytes()
    ds.save_as(path, enforce_file_format=True)
    return str(path)


def _colour_image(rng, size=32):
    """Reddish skin-like texture: chromatic everywhere."""
    t = rng.uniform(-20, 20, (size, size, 1))
    return np.clip(np.array([180, 110, 90]) + t, 0, 255)


def _pale_image(rng, size=32):
    """A pale skin photo stored as RGB: textured, a faint tint that the per-image chroma rule reads as grayscale."""
    t = rng.uniform(-50, 50, (size, size, 1))
    return np.clip(np.array([200, 196, 194]) + t, 0, 255)


def _photo_set(folder, rng, n=14, pale=2, size=32):
    """``n`` colour photos of which the last ``pale`` are pale (grayscale-looking RGB) ones; their paths."""
    folder.mkdir(parents=True, exist_ok=True)
    return [_png(folder / f"{'pale' if i >= n - pale else 'photo'}{i:02d}.png",
                 _pale_image(rng, size) if i >= n - pale else _colour_image(rng, size)) for i in range(n)]


def test_image_color_mode():
    rng = np.random.default_rng(0)
    gray = rng.uniform(0, 255, (1, 32, 32))
    assert image_color_mode(gray) == "grayscale"
    gray_as_rgb = np.repeat(gray, 3, axis=0) + rng.integers(-2, 3, (3, 32, 32))  # JPEG-like chroma noise
    assert image_color_mode(gray_as_rgb) == "grayscale"
    colour = np.moveaxis(_colour_image(rng), -1, 0)
    assert image_color_mode(colour) == "rgb" and image_color_mode(torch.as_tensor(colour)) == "rgb"
    rgba = np.concatenate([np.repeat(gray, 3, axis=0), np.full((1, 32, 32), 255.0)])
    assert image_color_mode(rgba) == "grayscale"  # alpha is not colour
    annotated = gray_as_rgb.copy()
    annotated[0, :3, :3] = 255  # a few burned-in red pixels
    assert image_color_mode(annotated) == "grayscale"
    assert image_color_mode(np.zeros((3, 8, 8))) == "grayscale"


def test_colour_and_grayscale_dicom_are_read_correctly(tmp_path):
    from pydicom.pixels import convert_color_space

    rgb = _colour_image(np.random.default_rng(1), 16).astype(np.uint8)
    rgb[:, :8, 2] = 220  # a blue-ish half, so that the channels are not a fixed mix
    files = {
        "rgb": _write_dicom(tmp_path / "rgb.dcm", rgb, "RGB"),
        "ybr": _write_dicom(tmp_path / "ybr.dcm", convert_color_space(rgb, "RGB", "YBR_FULL"), "YBR_FULL"),
        "mono": _write_dicom(tmp_path / "mono.dcm", rgb[..., 0], "MONOCHROME2"),
    }
    expected = np.moveaxis(rgb, -1, 0).astype(np.float32)
    for kind in ("rgb", "ybr"):
        img = read_medical_image(files[kind])
        assert img.array.shape == (3, 16, 16)
        np.testing.assert_allclose(img.array, expected, atol=1.0 if kind == "ybr" else 0.0)  # YBR -> RGB rounding
        assert source_color_mode(files[kind]) == "rgb"
    assert read_medical_image(files["mono"]).array.shape == (1, 16, 16)
    assert source_color_mode(files["mono"]) == "grayscale"
    out = preprocessing_transforms(image_size=32, color_mode="rgb")({"image": files["ybr"]})["image"]
    assert out.shape == (3, 32, 32) and out.meta["color_mode"] == "rgb"
    assert float((out[0] - out[1]).abs().mean()) > 0.1  # channels kept apart


def test_resolve_color_mode_majority_of_a_mixed_datalist(tmp_path):
    rng = np.random.default_rng(2)
    gray = [_png(tmp_path / f"g{i}.png", rng.uniform(0, 255, (32, 32))) for i in range(3)]
    gray_rgb = _png(tmp_path / "g_rgb.jpg", np.repeat(rng.uniform(0, 255, (32, 32, 1)), 3, axis=2))
    colour = [_png(tmp_path / f"c{i}.png", _colour_image(rng)) for i in range(2)]
    colour_jpeg = tmp_path / "c.jpg"
    Image.fromarray(_colour_image(rng, 64).astype(np.uint8)).save(colour_jpeg, quality=90)
    assert resolve_color_mode([{"image": p} for p in gray + [gray_rgb]]) == "grayscale"
    assert resolve_color_mode(colour + [str(colour_jpeg)]) == "rgb"
    assert resolve_color_mode([]) == "grayscale"
    assert resolve_color_mode(gray + colour, "rgb") == "rgb"  # explicit: no scan
    assert resolve_color_mode(gray + colour) == "grayscale"  # a mix is never refused: the majority decides
    assert resolve_color_mode(gray + colour + [str(colour_jpeg)]) == "rgb"  # 3 of 6: a tie goes to rgb
    with pytest.raises(ValueError, match="is not one of"):
        resolve_color_mode(gray, "colour")


def test_resolve_color_mode_colour_set_with_pale_photos(tmp_path, caplog):
    """A dermoscopy-like set: 14 colour photos of which 2 pale ones fall under the per-image chroma rule."""
    photos = _photo_set(tmp_path, np.random.default_rng(6))
    assert [source_color_mode(p) for p in photos].count("grayscale") == 2
    with caplog.at_level(logging.INFO, logger="monai_scrd.data"):
        assert resolve_color_mode([{"image": p} for p in photos]) == "rgb"
    lines = [r.getMessage() for r in caplog.records if "color_mode 'auto'" in r.getMessage()]
    assert len(lines) == 1 and "\n" not in lines[0]
    assert lines[0].startswith("color_mode 'auto' -> 'rgb' (12 of 14 source images are colour; 2 pale or grayscale ")


def _bundle(*args: str) -> str:
    """``python -m monai.bundle *args`` as a user runs it (as in tests/test_bundle.py); its output."""
    env = dict(os.environ)
    env["PYTHONPATH"] = REPO + os.pathsep + env.get("PYTHONPATH", "")
    env.setdefault("OMP_NUM_THREADS", "2")
    env.pop("MLFLOW_TRACKING_URI", None)
    proc = subprocess.run([sys.executable, "-m", "monai.bundle", *args], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=300)
    log = proc.stdout + proc.stderr
    assert proc.returncode == 0, f"monai.bundle {' '.join(args)} failed ({proc.returncode}):\n{log[-4000:]}"
    return log


@pytest.mark.slow  # a tiny training run and an inference run (~40 s on 2 CPU cores)
def test_bundle_trains_and_scores_colour_set_with_pale_and_grayscale_photos(tmp_path):
    """Defaults (color_mode 'auto'): training on 14 colour photos of which 2 are pale resolves to rgb instead of
    stopping; the rgb model then scores a pale photo and a 1-channel grayscale PNG like any other."""
    configs = os.path.join(REPO, "bundles", "scrd", "configs")
    data = tmp_path / "data"
    photos = _photo_set(data / "imgs", np.random.default_rng(7), size=64)
    rel = [os.path.relpath(p, data) for p in photos]
    datalist = data / "datalist.json"
    datalist.write_text(json.dumps({"training": [{"image": p} for p in rel[3:13]],  # 9 colour + 1 pale
                                    "validation": [{"image": p} for p in rel[:3] + rel[13:]]}))  # 3 colour + 1 pale
    out, models = tmp_path / "run", tmp_path / "run" / "models"
    log = _bundle("run", "training", "--config_file", os.path.join(configs, "train.json"), "--image_size", "64",
                  "--batch_size", "4", "--pretrained_weights", "false", "--num_workers", "0", "--max_iterations", "2",
                  "--val_interval", "2", "--ckpt_interval", "2", "--output_dir", str(out), "--model_dir", str(models),
                  "--datalist", str(datalist))
    assert "color_mode 'auto' -> 'rgb' (12 of 14 source images are colour; 2 pale or grayscale" in log
    assert json.loads((models / "threshold.json").read_text())["color_mode"] == "rgb"

    inputs = tmp_path / "inputs"
    inputs.mkdir()
    rng = np.random.default_rng(8)
    tests = {"photo.png": _colour_image(rng, 64), "pale.png": _pale_image(rng, 64),
             "gray.png": rng.uniform(0, 255, (64, 64))}
    for name, pixels in tests.items():
        _png(inputs / name, pixels)
    assert Image.open(inputs / "gray.png").mode == "L"
    scored = tmp_path / "scored"
    _bundle("run", "--config_file", os.path.join(configs, "inference.json"), "--image_size", "64", "--model_dir",
            str(models), "--inputs", str(inputs), "--output_dir", str(scored), "--save_heatmaps", "false")
    errors = scored / "errors.csv"
    assert not errors.exists() or not list(csv.DictReader(errors.open()))
    with open(scored / "scores.csv") as f:
        rows = {os.path.basename(r["path"]): r for r in csv.DictReader(f)}
    assert set(rows) == set(tests) and all(np.isfinite(float(r["score"])) for r in rows.values())


def test_preprocessing_modes_and_grayscale_model_refusal(tmp_path):
    rng = np.random.default_rng(3)
    colour = _png(tmp_path / "c.png", _colour_image(rng))
    gray = _png(tmp_path / "g.png", rng.uniform(0, 255, (32, 32)))
    as_gray = preprocessing_transforms(image_size=32)({"image": colour})["image"]  # library default: grayscale
    assert torch.equal(as_gray[0], as_gray[1]) and as_gray.meta["color_mode"] == "grayscale"
    as_rgb = preprocessing_transforms(image_size=32, color_mode="auto")({"image": colour})["image"]
    assert as_rgb.meta["color_mode"] == "rgb" and not torch.equal(as_rgb[0], as_rgb[1])
    gray_in_rgb = preprocessing_transforms(image_size=32, color_mode="rgb")({"image": gray})["image"]
    assert gray_in_rgb.shape == (3, 32, 32) and torch.equal(gray_in_rgb[0], gray_in_rgb[2])
    with pytest.raises(DataError) as err:  # a grayscale model refuses a colour photo
        preprocessing_transforms(image_size=32, color_mode="grayscale", refuse_mismatch=True)({"image": colour})
    message = str(err.value)
    assert message.startswith(f"{colour}: rgb image") and "trained on grayscale images" in message
    assert "\n" not in message
    # an rgb model takes a grayscale source (replicated) and a pale RGB one (its channels kept, not averaged)
    scoring_rgb = preprocessing_transforms(image_size=32, color_mode="rgb", refuse_mismatch=True)
    out = scoring_rgb({"image": gray})["image"]
    assert out.shape == (3, 32, 32) and torch.equal(out[0], out[2]) and out.meta["color_mode"] == "rgb"
    pale = _png(tmp_path / "pale.png", _pale_image(rng))
    assert image_color_mode(read_medical_image(pale).array) == "grayscale"
    out = scoring_rgb({"image": pale})["image"]
    assert out.meta["color_mode"] == "rgb" and not torch.equal(out[0], out[2])
    assert check_color_mode(np.zeros((1, 4, 4)), None) == "grayscale"  # no recorded mode: nothing refused
    with pytest.raises(ValueError):
        ToColorMode("colour")


def test_trained_color_mode(tmp_path):
    record = tmp_path / "threshold.json"
    assert trained_color_mode(record) == "grayscale"  # no file: what models before colour modes saw
    assert trained_color_mode(record, "rgb") == "rgb"
    record.write_text(json.dumps({"threshold": 0.1, "color_mode": "rgb"}))
    assert trained_color_mode(record) == "rgb" and trained_color_mode(record, "grayscale") == "rgb"
    record.write_text(json.dumps({"threshold": 0.1, "color_mode": "cmyk"}))
    with pytest.raises(DataError, match="threshold.json: color_mode 'cmyk'"):
        trained_color_mode(record)


def test_scorer_rgb_model_scores_grayscale_grayscale_model_refuses_colour(tmp_path):
    from monai_scrd.networks import SCRD
    from monai_scrd.scoring import Scorer

    rng = np.random.default_rng(4)
    colour = _png(tmp_path / "colour.png", _colour_image(rng))
    gray = _png(tmp_path / "gray.png", rng.uniform(0, 255, (32, 32)))
    pale = _png(tmp_path / "pale.png", _pale_image(rng))
    net = SCRD("efficientnet_lite0", pretrained=False).eval()
    scorer = Scorer(net, image_size=32, threshold={"threshold": 0.1}, device="cpu")
    assert not any(r.error for r in scorer.score([colour, gray]))  # no recorded mode (older models): as before
    # the mode as recorded by training (threshold.json), which every entry point hands to the Scorer
    scorer = Scorer(net, image_size=32, threshold={"threshold": 0.1, "color_mode": "rgb"}, device="cpu")
    assert scorer.preprocessing["color_mode"] == "rgb"
    results = list(scorer.score([colour, gray, pale]))  # an rgb model scores every kind
    assert not any(r.error for r in results) and all(np.isfinite(r.score) for r in results)
    scorer = Scorer(net, image_size=32, threshold={"threshold": 0.1, "color_mode": "grayscale"}, device="cpu")
    results = list(scorer.score([colour, gray, pale]))
    assert results[0].error.startswith(f"{colour}: rgb image") and "trained on grayscale images" in results[0].error
    assert not results[1].error and not results[2].error and np.isfinite(results[2].score)  # pale reads as grayscale


def test_preprocessor_rgb_replicates_grayscale_and_grayscale_refuses_colour(tmp_path):
    from monai_scrd.scoring.dataset import Preprocessor

    rng = np.random.default_rng(5)
    gray = _png(tmp_path / "gray.png", rng.uniform(0, 255, (40, 48)))
    colour = _png(tmp_path / "colour.png", _colour_image(rng))
    assert read_medical_image(gray).array.shape[0] == 1
    prepared = Preprocessor(image_size=32, color_mode="rgb")(gray)
    assert not prepared.error
    x = prepared.images
    assert tuple(x.shape) == (1, 3, 32, 32) and torch.equal(x[0, 0], x[0, 1]) and torch.equal(x[0, 0], x[0, 2])
    assert check_color_mode(read_medical_image(gray).array, "rgb", gray) == "grayscale"  # not refused
    prepared = Preprocessor(image_size=32, color_mode="grayscale")(colour)
    assert prepared.images is None and "\n" not in prepared.error
    assert prepared.error.startswith(f"{colour}: rgb image, but the model was trained on grayscale images")
    with pytest.raises(DataError, match="color_mode 'grayscale'"):
        check_color_mode(read_medical_image(colour).array, "grayscale", colour)


# ------------------------------------------------------------------------------------------ isoluminant hue anomaly
def _hue_set(tmp_path, seed, n, swap: bool, size=64):
    """Images with a smooth texture on a reddish tint; with ``swap``, a 20x20 patch has R and G exchanged (greenish):
    the same channel mean (our grayscale) at every pixel, a different hue. The same ``seed`` gives the same textures."""
    texture_rng, patch_rng = np.random.default_rng(seed), np.random.default_rng(seed + 1)
    paths = []
    for i in range(n):
        coarse = texture_rng.uniform(-40, 40, (size // 8, size // 8))
        img = np.clip(np.array([170.0, 90.0, 80.0]) + np.kron(coarse, np.ones((8, 8)))[..., None], 0, 255).round()
        if swap:
            y, x = patch_rng.integers(8, size - 28, size=2)
            patch = img[y : y + 20, x : x + 20]
            patch[..., [0, 1]] = patch[..., [1, 0]]
        paths.append(_png(tmp_path / f"{'hue' if swap else 'norm'}{seed}_{i}.png", img))
    return paths


def _train_and_score(train_files, test_files, color_mode, iterations=10):
    """A short bundle-like training (SupervisedTrainer + SCRDTrainStep, Lite0 ImageNet teacher, simplex noise, 64 px)
    on ``train_files``; image scores (mean of the anomaly map) of ``test_files``."""
    from monai_scrd.engines import IterationLimit, SCRDTrainStep
    from monai_scrd.losses import build_loss
    from monai_scrd.networks import SCRD
    from monai_scrd.scoring import Scorer
    from monai_scrd.transforms.noise import RandSimplexNoised

    torch.manual_seed(0)
    pre = preprocessing_transforms(image_size=64, color_mode=color_mode)
    noise = RandSimplexNoised(keys="image", box_divisor=4).set_random_state(0)
    dataset = CacheDataset([{"image": p} for p in train_files], Compose([*pre.transforms, noise]), progress=False)
    data = DataLoader(dataset, batch_size=8, shuffle=True, generator=torch.Generator().manual_seed(0))
    net = SCRD("efficientnet_lite0", pretrained=True)
    optimizer = torch.optim.Adam([p for p in net.parameters() if p.requires_grad], lr=1e-3, betas=(0.5, 0.999))
    SupervisedTrainer(
        device="cpu", max_epochs=None, train_data_loader=data, network=net, optimizer=optimizer,
        loss_function=build_loss(True), iteration_update=SCRDTrainStep(), train_handlers=[IterationLimit(iterations)],
        decollate=False,
    ).run()
    x = torch.stack([pre({"image": p})["image"].as_tensor() for p in test_files])
    scorer = Scorer(net, image_size=64, color_mode=color_mode, device="cpu")
    return x, np.array([r.score for r in scorer.score(test_files)])


def test_isoluminant_hue_anomaly_needs_rgb(tmp_path):
    """A hue change at constant channel mean is invisible in grayscale (the model input is identical) and, after 10
    training iterations on normal images, raises the score of every anomalous image above that of the same image
    without the patch in RGB (fixed seeds; the scores are paired to take the texture's own effect out)."""
    train = _hue_set(tmp_path, 0, 16, swap=False)
    normal = _hue_set(tmp_path, 10, 6, swap=False)
    anomalous = _hue_set(tmp_path, 10, 6, swap=True)  # the held-out normals with a hue patch
    assert resolve_color_mode(train + normal + anomalous) == "rgb"  # the bundle's 'auto' keeps colour here

    gray = preprocessing_transforms(image_size=64, color_mode="grayscale")
    for a, b in zip(normal, anomalous):
        assert torch.equal(gray({"image": a})["image"], gray({"image": b})["image"])  # no grayscale model can tell

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # small convolutions: one thread is faster than two contended ones
    try:
        x, scores = _train_and_score(train, normal + anomalous, "rgb")
    finally:
        torch.set_num_threads(threads)
    assert not torch.equal(x[:6], x[6:])
    normal_scores, anomalous_scores = scores[:6], scores[6:]
    assert (anomalous_scores > normal_scores).all(), (normal_scores, anomalous_scores)
