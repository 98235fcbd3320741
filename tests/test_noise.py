import numpy as np
import pytest
import torch
from monai.data import MetaTensor
from monai.data.utils import set_rnd

from monai_scrd.transforms import RandSimplexNoise, RandSimplexNoised, fractal_simplex_noise


def _changed_box(diff: np.ndarray) -> tuple[slice, ...]:
    """Bounding box of the nonzero entries of a (C, *spatial) difference, checked to be filled by them."""
    mask = np.abs(diff).max(axis=0) > 0
    assert mask.any(), "nothing changed"
    idx = np.nonzero(mask)
    box = tuple(slice(int(i.min()), int(i.max()) + 1) for i in idx)
    # simplex noise is exactly zero with probability 0: the changed region must be the whole box
    assert mask[box].all(), "changed region is not a single filled box"
    return box


@pytest.mark.parametrize("side", [256, 64])
@pytest.mark.parametrize("noise_type", ["simplex", "gaussian"])
def test_box_bounds_2d(side, noise_type):
    t = RandSimplexNoise(noise_type=noise_type)
    img = np.full((3, side, side), 0.5, dtype=np.float32)
    hi = max(10, side // 8)
    seen = set()
    for seed in range(40):
        t.set_random_state(seed)
        box = _changed_box(t(img) - img)
        assert box == t.box
        for b in box:
            assert 10 <= b.stop - b.start <= hi
            assert 0 <= b.start and b.stop <= side
            seen.add(b.stop - b.start)
    if side == 256:
        assert len(seen) > 5  # sizes actually vary over [10, 32]


def test_box_bounds_3d_and_tiny_images():
    t = RandSimplexNoise()
    img = np.zeros((1, 96, 40, 8), dtype=np.float32)  # box sides [10,12], [10,10], clipped to 8
    for seed in range(10):
        t.set_random_state(seed)
        box = _changed_box(t(img))
        sizes = [b.stop - b.start for b in box]
        assert 10 <= sizes[0] <= 12 and sizes[1] == 10 and sizes[2] == 8
        assert box[0].stop <= 96 and box[1].stop <= 40
    assert t.box_size_range(5) == (5, 5)


@pytest.mark.parametrize("shape", [(3, 64, 64), (2, 48, 48, 48)])
def test_intensity_bound_and_linearity(shape):
    img = np.random.default_rng(0).random(shape, dtype=np.float32)
    diffs = {}
    for intensity in (0.1, 0.2, 0.4):
        t = RandSimplexNoise(intensity=intensity).set_random_state(7)
        diff = t(img).astype(np.float64) - img
        assert np.abs(diff).max() <= intensity + 1e-6
        diffs[intensity] = diff
    assert np.abs(diffs[0.2]).max() > 0.01
    np.testing.assert_allclose(diffs[0.4], 2 * diffs[0.2], atol=1e-6)
    np.testing.assert_allclose(diffs[0.1], 0.5 * diffs[0.2], atol=1e-6)


@pytest.mark.parametrize("shape", [(3, 64, 64), (3, 32, 32, 32)])
def test_same_noise_on_all_channels(shape):
    img = np.stack([np.full(shape[1:], v, dtype=np.float32) for v in (0.1, 0.5, 0.9)])
    diff = RandSimplexNoise().set_random_state(3)(img) - img
    np.testing.assert_allclose(diff[1], diff[0], atol=1e-6)
    np.testing.assert_allclose(diff[2], diff[0], atol=1e-6)


def test_dict_keeps_original_and_types():
    img = torch.rand(3, 64, 64)
    ref = img.clone()
    data = {"image": img, "label": 0}
    out = RandSimplexNoised(keys="image").set_random_state(0)(data)
    assert set(data) == {"image", "label"}  # input dict not modified
    assert out["image"] is img and torch.equal(img, ref)  # original untouched
    noisy = out["image_noisy"]
    assert type(noisy) is torch.Tensor and noisy.dtype == img.dtype and noisy.device == img.device
    assert not torch.equal(noisy, img)
    # MetaTensor keeps type and metadata
    meta = MetaTensor(torch.rand(3, 32, 32, dtype=torch.float64), meta={"filename_or_obj": "x.png"})
    ref = meta.clone()
    out = RandSimplexNoised(keys="image", output_keys="pert").set_random_state(0)({"image": meta})
    assert isinstance(out["pert"], MetaTensor) and out["pert"].dtype == torch.float64
    assert out["pert"].meta["filename_or_obj"] == "x.png"
    assert torch.equal(out["image"].as_tensor(), ref.as_tensor()) and "image_noisy" not in out
    assert out["pert"].data_ptr() != meta.data_ptr()
    # non-contiguous and half-precision inputs
    for img in (torch.rand(32, 32, 3).permute(2, 0, 1), torch.rand(3, 32, 32, dtype=torch.bfloat16)):
        noisy = RandSimplexNoise().set_random_state(0)(img)
        assert noisy.dtype == img.dtype and noisy.shape == img.shape and not torch.equal(noisy, img)


def test_concurrent_threads():
    from concurrent.futures import ThreadPoolExecutor

    img = torch.rand(3, 256, 256)

    def work(seed):
        t = RandSimplexNoised(keys="image").set_random_state(seed)
        return [t({"image": img})["image_noisy"] for _ in range(50)][-1]

    with ThreadPoolExecutor(4) as pool:
        results = list(pool.map(work, [0, 1, 0, 1]))
    assert torch.equal(results[0], results[2]) and not torch.equal(results[0], results[1])


def test_numpy_and_torch_give_same_result():
    arr = np.random.default_rng(1).random((3, 64, 64), dtype=np.float32)
    ref = arr.copy()
    t = RandSimplexNoised(keys="image")
    out_np = t.set_random_state(5)({"image": arr})["image_noisy"]
    out_pt = t.set_random_state(5)({"image": torch.from_numpy(arr)})["image_noisy"]
    assert isinstance(out_np, np.ndarray) and out_np.dtype == np.float32
    assert isinstance(out_pt, torch.Tensor)
    np.testing.assert_array_equal(arr, ref)
    np.testing.assert_allclose(out_np, out_pt.numpy(), atol=1e-7)
    with pytest.raises(TypeError):
        RandSimplexNoise()(np.zeros((1, 16, 16), dtype=np.uint8))


def test_reproducible_and_seed_dependent():
    img = torch.zeros(3, 128, 128)

    def run(seed, n=5):
        t = RandSimplexNoised(keys="image").set_random_state(seed)
        return [t({"image": img})["image_noisy"] for _ in range(n)]

    a, b, c = run(0), run(0), run(1)
    assert all(torch.equal(x, y) for x, y in zip(a, b))
    assert not any(torch.equal(x, y) for x, y in zip(a, c))
    assert not torch.equal(a[0], a[1])  # successive calls differ
    # MONAI's DataLoader worker_init_fn reseeds each randomizable transform, nested ones included
    t1, t2 = RandSimplexNoised(keys="image"), RandSimplexNoised(keys="image")
    set_rnd(t1, 11), set_rnd(t2, 12)
    assert not torch.equal(t1({"image": img})["image_noisy"], t2({"image": img})["image_noisy"])
    # no global RNG use: global state untouched
    np_state, torch_state = np.random.get_state()[1].copy(), torch.get_rng_state().clone()
    run(2)
    assert np.array_equal(np.random.get_state()[1], np_state) and torch.equal(torch.get_rng_state(), torch_state)


def test_prob_zero_gives_identical_copy():
    img = torch.rand(3, 64, 64)
    out = RandSimplexNoised(keys="image", prob=0.0)({"image": img})
    assert torch.equal(out["image_noisy"], img) and out["image_noisy"] is not img
    arr = img.numpy()
    out = RandSimplexNoise(prob=0.0)(arr)
    assert np.array_equal(out, arr) and out is not arr


def test_gaussian_mode_and_clip():
    img = np.full((3, 256, 256), 0.5, dtype=np.float32)
    t = RandSimplexNoise(noise_type="gaussian", intensity=0.2).set_random_state(0)
    diff = t(img) - img
    vals = diff[0][t.box] / 0.2
    assert abs(vals.mean()) < 0.3 and 0.7 < vals.std() < 1.3
    clipped = RandSimplexNoise(noise_type="gaussian", intensity=2.0, clip=True).set_random_state(0)(img)
    assert clipped.min() >= 0.0 and clipped.max() <= 1.0
    with pytest.raises(ValueError):
        RandSimplexNoise(noise_type="perlin")


def _neighbour_corr(field: np.ndarray) -> float:
    return float(np.corrcoef(field[:, :-1].ravel(), field[:, 1:].ravel())[0, 1])


def test_simplex_is_smooth_gaussian_is_not():
    img = np.zeros((1, 256, 256), dtype=np.float32)
    simplex, gauss = RandSimplexNoise(), RandSimplexNoise(noise_type="gaussian")
    cs, cg = [], []
    for seed in range(20):
        simplex.set_random_state(seed)(img)
        gauss.set_random_state(seed)(img)
        cs.append(_neighbour_corr(simplex.noise()))
        cg.append(_neighbour_corr(gauss.noise()))
    assert np.mean(cs) > 0.8 and min(cs) > 0.5
    assert abs(np.mean(cg)) < 0.1


def test_fractal_noise_range_and_validation():
    rng = np.random.default_rng(0)
    field = fractal_simplex_noise((64, 64), rng.uniform(0, 4096, (6, 2)))
    assert field.dtype == np.float32 and np.abs(field).max() <= 1.0 and field.std() > 0.05
    vol = fractal_simplex_noise((8, 9, 10), rng.uniform(0, 4096, (3, 3)))
    assert vol.shape == (8, 9, 10)
    with pytest.raises(ValueError):
        fractal_simplex_noise((8, 8), np.zeros((6, 3)))
    with pytest.raises(ValueError):
        RandSimplexNoise()(np.zeros((8, 8), dtype=np.float32))
