import pickle

import pytest
import torch

from monai_scrd.checkpoint import CheckpointError, extract_state_dict, load_state_dict_checked, load_weights_file
from monai_scrd.networks import SCRD


def _model(**kw):
    return SCRD("resnet18", pretrained=False, **kw)


def test_round_trip_with_model_key(tmp_path):
    model = _model()
    path = tmp_path / "model.pt"
    torch.save({"model": model.state_dict()}, path)
    other = _model()
    load_state_dict_checked(other, extract_state_dict(load_weights_file(path), str(path)), str(path))
    for (k, a), b in zip(model.state_dict().items(), other.state_dict().values()):
        assert torch.equal(a, b), k


def test_missing_file(tmp_path):
    with pytest.raises(CheckpointError, match="nope.pt: checkpoint file not found"):
        load_weights_file(tmp_path / "nope.pt")


def test_truncated_file_names_the_file(tmp_path):
    path = tmp_path / "cut.pt"
    torch.save({"model": _model().state_dict()}, path)
    path.write_bytes(path.read_bytes()[:1000])
    with pytest.raises(CheckpointError, match="cut.pt: not a readable weights-only torch checkpoint"):
        load_weights_file(path)


class Evil:
    """Stands for any pickled object that is not plain tensors/containers."""


def test_pickled_object_is_refused(tmp_path):
    path = tmp_path / "evil.pt"
    torch.save({"model": Evil()}, path, pickle_module=pickle)
    with pytest.raises(CheckpointError, match="evil.pt"):
        load_weights_file(path)


def test_mismatched_model_checkpoint_lists_problems(tmp_path):
    path = tmp_path / "rd4ad.pt"
    torch.save({"model": _model(scale_adaptive=False).state_dict()}, path)
    with pytest.raises(CheckpointError, match=r"rd4ad.pt: checkpoint does not match SCRD: 2 missing keys \(e.g. scale_head"):
        load_state_dict_checked(_model(), extract_state_dict(load_weights_file(path), str(path)), str(path))
    lite = SCRD("efficientnet_lite0", pretrained=False)
    with pytest.raises(CheckpointError, match="shape mismatches"):
        load_state_dict_checked(lite, extract_state_dict(load_weights_file(path), str(path)), str(path))


def test_missing_key_in_checkpoint(tmp_path):
    path = tmp_path / "m.pt"
    torch.save({"weights": {}}, path)
    with pytest.raises(CheckpointError, match="m.pt: no key 'model'"):
        extract_state_dict(load_weights_file(path), str(path), key="model")
