"""Unit tests of monai_scrd.engines (in-process, tiny): training step in a MONAI SupervisedTrainer, handlers,
resume helpers, the evaluator over the scorer, inference helpers."""

from __future__ import annotations

import csv
import json
import os

import numpy as np
import pytest
import torch
from monai.engines import SupervisedEvaluator, SupervisedTrainer
from ignite.engine import Events
from PIL import Image

from monai_scrd.data import load_datalist
from monai_scrd.engines import (
    AnomalyInference,
    IterationLimit,
    ProgressLog,
    ScoreCollector,
    SCRDEvalStep,
    SCRDTrainStep,
    TrainerCheckpointLoader,
    TrainerCheckpointSaver,
    as_bool,
    find_bundle_root,
    latest_checkpoint,
    list_inputs,
    training_items,
    resolve_pretrained,
    resolve_resume,
    train_log_values,
)
from monai_scrd.losses import build_loss
from monai_scrd.networks import SCRD
from monai_scrd.scoring import ErrorCollector, Scorer, ScoringDataset, collate_prepared


def _batches(n: int, size: int = 64, b: int = 2):
    g = torch.Generator().manual_seed(0)
    return [
        {"image": torch.rand(b, 3, size, size, generator=g), "image_noisy": torch.rand(b, 3, size, size, generator=g)}
        for _ in range(n)
    ]


def _trainer(net, data, max_iterations, handlers=(), contrastive=True):
    opt = torch.optim.Adam([p for p in net.parameters() if p.requires_grad], lr=1e-3, betas=(0.5, 0.999))
    hs = [IterationLimit(max_iterations), *handlers]
    return SupervisedTrainer(
        device="cpu", max_epochs=None, train_data_loader=data, network=net,
        optimizer=opt, loss_function=build_loss(contrastive), iteration_update=SCRDTrainStep(),
        train_handlers=hs, decollate=False,
    ), opt


@pytest.mark.parametrize("contrastive,scale_adaptive", [(True, True), (False, False)])
def test_train_step_updates_student_only_and_logs_alpha(contrastive, scale_adaptive):
    torch.manual_seed(0)
    net = SCRD("efficientnet_lite0", pretrained=False, contrastive=contrastive, scale_adaptive=scale_adaptive)
    teacher0 = {k: v.clone() for k, v in net.teacher.state_dict().items()}
    student0 = {k: v.clone() for k, v in net.decoder.state_dict().items()}
    trainer, _ = _trainer(net, _batches(2), 3, contrastive=contrastive)
    trainer.run()
    assert trainer.state.iteration == 3 and trainer.state.epoch == 2  # stops at max_iterations, mid-epoch
    for k, v in net.teacher.state_dict().items():
        assert torch.equal(v, teacher0[k]), f"teacher changed: {k}"
    assert any(not torch.equal(v, student0[k]) for k, v in net.decoder.state_dict().items())
    alphas = [trainer.state.metrics[f"alpha_{k}"] for k in (1, 2, 3)]
    assert abs(sum(alphas) - 1.0) < 1e-4 if scale_adaptive else alphas == [1.0, 1.0, 1.0]
    values = train_log_values(trainer.state.output)
    ratios = {"ratio_1", "ratio_2", "ratio_3"} if contrastive else set()  # the contrastive ratio per scale
    assert set(values) == {"loss", "alpha_1", "alpha_2", "alpha_3"} | ratios and np.isfinite(values["loss"])


def test_contrastive_step_needs_noisy_view():
    net = SCRD("efficientnet_lite0", pretrained=False)
    trainer, _ = _trainer(net, [{"image": torch.rand(2, 3, 64, 64)}], 1)
    with pytest.raises(KeyError, match="RandSimplexNoised"):
        trainer.run()


@pytest.mark.slow
def test_checkpoint_resume_restores_iteration_model_optimizer(tmp_path):
    torch.manual_seed(0)
    data = _batches(2)
    net = SCRD("efficientnet_lite0", pretrained=False)
    trainer, opt = _trainer(net, data, 4)
    TrainerCheckpointSaver(save_dir=str(tmp_path), save_dict={"model": net, "optimizer": opt}, file_prefix="scrd",
                           save_interval=2, epoch_level=False, n_saved=1, save_final=True,
                           final_filename="scrd_final.pt").attach(trainer)
    trainer.run()
    path = latest_checkpoint(tmp_path)
    assert path is not None
    saved = torch.load(path, weights_only=True)
    assert saved["trainer"]["iteration"] == 4 and "optimizer" in saved

    net2 = SCRD("efficientnet_lite0", pretrained=False)
    trainer2, opt2 = _trainer(net2, data, 6)
    TrainerCheckpointLoader(load_path=path, load_dict={"model": net2, "optimizer": opt2}).attach(trainer2)
    seen = []
    trainer2.add_event_handler(Events.ITERATION_COMPLETED, lambda e: seen.append(e.state.iteration))
    trainer2.run()
    assert seen == [5, 6]  # the configured limit (6), not the checkpoint's (4)
    # a models/model.pt file is not a training checkpoint
    torch.save({"model": net.state_dict()}, tmp_path / "model.pt")
    trainer3, opt3 = _trainer(SCRD("efficientnet_lite0", pretrained=False), data, 6)
    TrainerCheckpointLoader(load_path=str(tmp_path / "model.pt"), load_dict={"model": net2, "optimizer": opt3}).attach(trainer3)
    with pytest.raises(ValueError, match="not a resumable training checkpoint"):
        trainer3.run()


def test_resolve_resume_and_flags(tmp_path):
    assert resolve_resume(False, "", tmp_path) is None
    with pytest.raises(FileNotFoundError, match="no training checkpoint"):
        resolve_resume("true", "", tmp_path)
    with pytest.raises(FileNotFoundError, match="not found"):
        resolve_resume(False, str(tmp_path / "x.pt"), tmp_path)
    torch.save({"trainer": {"iteration": 3}}, tmp_path / "a.pt")
    torch.save({"trainer": {"iteration": 7}}, tmp_path / "b.pt")
    (tmp_path / "broken.pt").write_bytes(b"xx")
    assert resolve_resume(True, "", tmp_path).endswith("b.pt")
    assert [as_bool(v) for v in ("true", "False", "0", 1, None, "yes")] == [True, False, False, True, False, True]
    assert resolve_pretrained("false") is False and resolve_pretrained(True) is True
    assert resolve_pretrained("/w/teacher.pth") == "/w/teacher.pth"
    with pytest.raises(ValueError):
        IterationLimit(0)


def test_find_bundle_root(tmp_path, monkeypatch):
    (tmp_path / "b" / "configs").mkdir(parents=True)
    (tmp_path / "b" / "configs" / "train.json").write_text("{}")
    monkeypatch.chdir(tmp_path / "b")
    assert find_bundle_root() == str(tmp_path / "b")
    (tmp_path / "repo" / "bundles" / "scrd" / "configs").mkdir(parents=True)
    monkeypatch.chdir(tmp_path / "repo")
    assert find_bundle_root() == str(tmp_path / "repo" / "bundles" / "scrd")
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ValueError, match="--bundle_root"):
        find_bundle_root()


def test_progress_log_one_line(caplog):
    class _E:
        class state:
            iteration, max_iters = 10, 40
            output = [{"loss": torch.tensor(0.5), "alpha": torch.tensor([0.2, 0.3, 0.5])}]

    log = ProgressLog()
    with caplog.at_level("INFO", logger="monai_scrd.engines"):
        log(_E)
        _E.state.iteration = 20
        log(_E)
    lines = [r.getMessage() for r in caplog.records]
    assert lines[0] == "iteration 10/40: loss 0.5 alpha_1 0.2 alpha_2 0.3 alpha_3 0.5"
    assert lines[1].startswith("iteration 20/40: loss 0.5") and "s/it" in lines[1] and "s left" in lines[1]


def _png(path, size=(40, 50)):
    Image.fromarray((np.random.default_rng(0).random(size) * 255).astype(np.uint8)).save(path)
    return str(path)


def test_datalist_paths_and_errors(tmp_path):
    from monai_scrd.data import DataError

    _png(tmp_path / "a.png")
    dl = tmp_path / "dl.json"
    dl.write_text(json.dumps({"training": [{"image": "a.png"}], "test": [{"image": "b.png", "label": 1}]}))
    assert load_datalist(dl)["training"] == [{"image": str(tmp_path / "a.png")}]
    assert load_datalist(dl)["test"][0]["image"] == str(tmp_path / "b.png")
    assert load_datalist(dl).get("validation", []) == []
    with pytest.raises(DataError, match="missing key 'validation'"):
        load_datalist(dl, require=("validation",))
    dl.write_text(json.dumps({"training": [{"img": "a.png"}]}))
    with pytest.raises(ValueError, match=r"training\[0\] has no 'image'"):
        load_datalist(dl)
    assert [os.path.basename(i["image"]) for i in list_inputs(str(tmp_path))] == ["a.png"]


def test_bundle_holds_out_validation_when_the_datalist_has_none(tmp_path, caplog):
    import logging

    from monai_scrd.data import DataError
    from monai_scrd.engines import training_items, validation_items

    names = [f"n{i}.png" for i in range(20)]
    for n in names:
        _png(tmp_path / n)
    dl = tmp_path / "dl.json"
    dl.write_text(json.dumps({"training": [{"image": n} for n in names]}))
    with caplog.at_level(logging.INFO, logger="monai_scrd.engines"):
        val = validation_items(dl, validation_fraction=0.1)
    train = training_items(dl, validation_fraction=0.1)
    # a fixed 10%, disjoint from what is trained on, the same on every call (training and evaluation agree)
    assert len(val) == 2 and len(train) == 18 and not {v["image"] for v in val} & {t["image"] for t in train}
    assert sorted(v["image"] for v in val + train) == sorted(str(tmp_path / n) for n in names)
    assert validation_items(dl, validation_fraction=0.1) == val
    assert "2 of the 20 training normals are held out" in caplog.text
    # fraction 0 keeps everything for training, with a warning that nothing is fitted
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="monai_scrd.engines"):
        assert validation_items(dl, validation_fraction=0) == []
    assert "no decision threshold" in caplog.text and len(training_items(dl)) == 20
    # a datalist to score (no training list) says nothing about fitting
    caplog.clear()
    scoring = tmp_path / "scoring.json"
    scoring.write_text(json.dumps({"test": [{"image": names[0], "label": 0}]}))
    with caplog.at_level(logging.WARNING, logger="monai_scrd.engines"):
        assert validation_items(scoring, validation_fraction=0.1) == []
    assert "no decision threshold" not in caplog.text
    # a validation list of the datalist is used as it is
    dl.write_text(json.dumps({"training": [{"image": n} for n in names[:15]], "validation": [{"image": n} for n in names[15:]]}))
    assert len(validation_items(dl, validation_fraction=0.1)) == 5 and len(training_items(dl, validation_fraction=0.1)) == 15
    with pytest.raises(DataError, match=r"^validation_fraction 1\.5 must be in \[0, 1\)$"):
        training_items(dl, validation_fraction=1.5)


def test_datalist_absolute_paths_need_allow_absolute(tmp_path):
    from monai_scrd.data import DataError

    _png(tmp_path / "a.png")
    _png(tmp_path / "b.png")
    dl = tmp_path / "sub" / "dl.json"
    dl.parent.mkdir()
    dl.write_text(json.dumps({"training": [{"image": str(tmp_path / "a.png")}], "test": [{"image": "../b.png", "label": 1}]}))
    # the whole file is validated: the absolute training path is refused even when asking for another list
    with pytest.raises(DataError, match=r"dl\.json: training\[0\]\.image is an absolute path"):
        load_datalist(dl)
    with pytest.raises(DataError, match=r"training\[0\]\.image is an absolute path"):
        list_inputs(str(dl), "training")
    assert load_datalist(dl, allow_absolute=True)["training"] == [{"image": str(tmp_path / "a.png")}]
    assert load_datalist(dl, allow_absolute=True)["test"][0]["image"] == str(tmp_path / "b.png")  # ".." allowed too
    assert [i["image"] for i in list_inputs(str(dl), "test", allow_absolute=True)] == [str(tmp_path / "b.png")]
    dl.write_text(json.dumps({"test": [{"image": "../a.png", "label": 1}]}))
    with pytest.raises(DataError, match="outside the dataset folder"):
        load_datalist(dl)


def test_training_items_lists_all_unreadable_images(tmp_path):
    from monai_scrd.data import DataError

    _png(tmp_path / "a.png")
    (tmp_path / "bad.png").write_bytes(b"nope")
    dl = tmp_path / "dl.json"
    dl.write_text(json.dumps({"training": [{"image": "a.png"}, {"image": "bad.png"}, {"image": "missing.png"}]}))
    with pytest.raises(DataError, match="2 of 3 training images are unreadable") as info:
        training_items(dl)
    assert "bad.png" in str(info.value) and "missing.png" in str(info.value)
    dl.write_text(json.dumps({"training": [{"image": "a.png"}]}))
    assert training_items(dl) == [{"image": str(tmp_path / "a.png")}]


def test_evaluator_over_the_scorer_and_score_collector(tmp_path):
    from monai.data import DataLoader

    good = [_png(tmp_path / f"n{i}.png") for i in range(3)]
    (tmp_path / "bad.png").write_bytes(b"nope")
    items = [{"image": p, "label": i % 2} for i, p in enumerate(good)] + [{"image": str(tmp_path / "bad.png"), "label": 1}]
    items.append({"image": _png(tmp_path / "n3.png"), "label": 1})
    net = SCRD("efficientnet_lite0", pretrained=False)
    (tmp_path / "thr.json").write_text(json.dumps({"threshold": 0.5}))
    scorer = Scorer(net, image_size=64, threshold=str(tmp_path / "thr.json"))
    ds = ScoringDataset(items, scorer)
    assert ds[3].error.startswith(str(tmp_path / "bad.png")) and ds[0].error == "" and ds[0].images.shape == (1, 3, 64, 64)
    errors = ErrorCollector(str(tmp_path / "out" / "errors.csv"))
    collector = ScoreCollector("test", str(tmp_path / "out"), str(tmp_path / "thr.json"), errors=errors)
    loader = DataLoader(ds, batch_size=2, collate_fn=collate_prepared)
    ev = SupervisedEvaluator(device="cpu", val_data_loader=loader, network=net, iteration_update=SCRDEvalStep(scorer),
                             val_handlers=[collector], decollate=False)
    ev.run()
    assert {"auroc", "average_precision", "best_f1_on_test_labels_f1", "stored_threshold_f1",
            "stored_threshold_false_positive_rate"} <= set(ev.state.metrics)
    assert "f1" not in ev.state.metrics  # a figure fitted on the test labels is named as such
    metrics = json.loads((tmp_path / "out" / "metrics.json").read_text())
    assert metrics["n_errors"] == 1 and metrics["n_scored"] == 4 and "stored_threshold" in metrics
    rows = list(csv.DictReader(open(tmp_path / "out" / "scores.csv")))
    expected = {r.path: r for r in scorer.score(items)}
    for row in rows:  # the evaluator's numbers are the scorer's
        assert float(row["score"]) == pytest.approx(expected[row["path"]].score, abs=1e-6)
        assert row["is_anomaly"] == str(int(expected[row["path"]].is_anomaly))
    assert (tmp_path / "out" / "errors.csv").is_file() and (tmp_path / "out" / "roc_curve.png").is_file()
    with pytest.raises(SystemExit):
        errors.check()


def test_anomaly_inference_in_process(tmp_path):
    import nibabel as nib

    net = SCRD("efficientnet_lite0", pretrained=False)
    _png(tmp_path / "x.png")
    aff = np.diag([2.0, 3.0, 1.0, 1.0])
    nib.save(nib.Nifti1Image(np.random.rand(50, 40, 1).astype(np.float32), aff), tmp_path / "y.nii")
    inf = AnomalyInference(Scorer(net, image_size=64), str(tmp_path / "out"))
    rows = inf([str(tmp_path / "x.png"), str(tmp_path / "y.nii"), str(tmp_path / "missing.png")])
    assert len(rows) == 2 and rows[0]["is_anomaly"] is None
    m = nib.load(rows[1]["anomaly_map"])
    assert m.shape == (50, 40, 1) and np.allclose(m.affine, aff)
    assert len(inf.errors) == 1 and "missing.png" in inf.errors.rows[0][0]
    with open(tmp_path / "out" / "scores.csv") as f:
        assert [r["is_anomaly"] for r in csv.DictReader(f)] == ["", ""]
