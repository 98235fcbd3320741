"""Synthetic-anomaly transforms for SCRD (Algorithm 1 of the paper).

A single axis-aligned box per image is filled with multi-octave (fractal) simplex noise ``xi`` and the
perturbed copy ``x' = x + intensity * xi`` is produced (``xi`` is zero outside the box). The noise field is
identical on every channel, since the images are grayscale replicated to 3 channels.

Speed: opensimplex's per-point functions are numba-compiled (``opensimplex.internals._noise2`` / ``_noise3``,
``@njit(cache=True)``). The fractal sum below is one fused, *non-parallel*, ``nogil`` numba kernel calling
them, so a call costs well under a millisecond for a 32x32 box and is safe to call from several threads
(e.g. MONAI ``ThreadDataLoader``), unlike opensimplex's ``prange`` array functions whose default numba
``workqueue`` threading layer aborts on concurrent launches and oversubscribes the DataLoader's cores.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence
from copy import deepcopy

import numba
import numpy as np
import torch
from monai.config import KeysCollection
from monai.config.type_definitions import NdarrayOrTensor
from monai.data import MetaTensor
from monai.transforms import MapTransform, RandomizableTransform
from monai.utils import TransformBackends, ensure_tuple
from opensimplex.internals import _init as _simplex_init
from opensimplex.internals import _noise2 as _simplex2
from opensimplex.internals import _noise3 as _simplex3

__all__ = ["RandSimplexNoise", "RandSimplexNoised", "fractal_simplex_noise", "warmup", "NOISE_TYPES"]

NOISE_TYPES = ("simplex", "gaussian")

# Randomness design: a *fixed* permutation table and a random offset into the noise domain per octave and
# axis, drawn from the transform's own ``self.R``. Building a permutation per seed (``_init``) is a
# 256-step pure-Python loop (~0.3 ms) and per-seed caching cannot be bounded, whereas translating the
# (stationary) noise field is free and, with an independent offset for every octave, already gives a
# continuum of distinct fields -- statistically equivalent to re-seeding for our purpose.
# The table is periodic over 256 lattice cells, so offsets in [0, _OFFSET_RANGE) cover the whole domain.
_PERM, _PERM_GRAD_INDEX3 = _simplex_init(3)  # 3 == opensimplex.DEFAULT_SEED
_OFFSET_RANGE = 4096.0


# cache=True keeps compiled code in __pycache__ across processes (numba falls back to a user cache dir if
# that is read-only). Caveat: numba's cache does not notice changes in the opensimplex callees; clear
# __pycache__ after upgrading opensimplex.
@numba.njit(cache=True, nogil=True)
def _fractal2d(size_h, size_w, frequency, persistence, offsets, perm):
    out = np.zeros((size_h, size_w), dtype=np.float64)
    amplitude, freq, total = 1.0, frequency, 0.0
    for o in range(offsets.shape[0]):
        for i in range(size_h):
            for j in range(size_w):
                out[i, j] += amplitude * _simplex2(offsets[o, 0] + i * freq, offsets[o, 1] + j * freq, perm)
        total += amplitude
        amplitude *= persistence
        freq *= 2.0
    return np.clip(out / total, -1.0, 1.0).astype(np.float32)


@numba.njit(cache=True, nogil=True)
def _fractal3d(size_h, size_w, size_d, frequency, persistence, offsets, perm, perm_grad_index3):
    out = np.zeros((size_h, size_w, size_d), dtype=np.float64)
    amplitude, freq, total = 1.0, frequency, 0.0
    for o in range(offsets.shape[0]):
        for i in range(size_h):
            for j in range(size_w):
                for k in range(size_d):
                    out[i, j, k] += amplitude * _simplex3(
                        offsets[o, 0] + i * freq,
                        offsets[o, 1] + j * freq,
                        offsets[o, 2] + k * freq,
                        perm,
                        perm_grad_index3,
                    )
        total += amplitude
        amplitude *= persistence
        freq *= 2.0
    return np.clip(out / total, -1.0, 1.0).astype(np.float32)


def fractal_simplex_noise(
    size: Sequence[int], offsets: np.ndarray, frequency: float = 1 / 16, persistence: float = 0.6
) -> np.ndarray:
    """
    Fractal (multi-octave) simplex noise on a 2D or 3D pixel grid.

    Octave ``o`` samples simplex noise at ``offsets[o] + p * frequency * 2**o`` (``p``: pixel index) with
    amplitude ``persistence**o``; the sum is divided by the sum of amplitudes, so values lie in [-1, 1]
    (in practice mostly within about [-0.6, 0.6]).

    Args:
        size: spatial size of the field, 2 or 3 integers.
        offsets: float array of shape ``(octaves, len(size))``: where each octave starts in the noise domain.
        frequency: base frequency in cycles per pixel (the simplex lattice spacing is ``1 / frequency`` px).
        persistence: amplitude ratio between consecutive octaves.

    Returns:
        float32 array of shape ``size``.
    """
    size = tuple(int(s) for s in size)
    offsets = np.ascontiguousarray(offsets, dtype=np.float64)
    if offsets.ndim != 2 or offsets.shape[1] != len(size) or offsets.shape[0] < 1:
        raise ValueError(f"offsets must have shape (octaves>=1, {len(size)}), got {offsets.shape}.")
    if len(size) == 2:
        return _fractal2d(*size, float(frequency), float(persistence), offsets, _PERM)
    if len(size) == 3:
        return _fractal3d(*size, float(frequency), float(persistence), offsets, _PERM, _PERM_GRAD_INDEX3)
    raise ValueError(f"only 2D and 3D noise is supported, got size {size}.")


_warm = False


def warmup() -> None:
    """Trigger (or load from numba's on-disk cache) the JIT compilation of the 2D and 3D noise kernels once
    per process, on tiny arrays, so that the first training step is not slowed down. Cheap when already done."""
    global _warm
    if not _warm:
        fractal_simplex_noise((2, 2), np.zeros((2, 2)))
        fractal_simplex_noise((2, 2, 2), np.zeros((2, 3)))
        _warm = True


_NUMPY_COMPATIBLE = (torch.float16, torch.float32, torch.float64)


def _copy(img: NdarrayOrTensor) -> NdarrayOrTensor:
    """
    Copy of ``img`` with the same type (MetaTensor metadata deep-copied, as ``MetaTensor.clone`` does).

    CPU tensors are copied through numpy (a single-threaded memcpy): torch's OpenMP-parallel ``clone`` of a
    256x256x3 image stalls for a scheduler slice (~10 ms) on each call when the cores are busy with other
    processes (e.g. DataLoader workers), as its worker threads go idle during the noise kernel.
    """
    if isinstance(img, np.ndarray):
        return np.array(img, copy=True)
    data = img.as_tensor() if isinstance(img, MetaTensor) else img
    if data.device.type == "cpu" and not data.requires_grad and data.dtype in _NUMPY_COMPATIBLE:
        copied = torch.from_numpy(data.numpy().copy())
    else:
        copied = data.clone()
    if isinstance(img, MetaTensor):
        out = MetaTensor(copied)
        out.__dict__ = deepcopy(img.__dict__)
        return out
    return copied


class RandSimplexNoise(RandomizableTransform):
    """
    Add a synthetic anomaly to a channel-first image (SCRD, Algorithm 1): one random axis-aligned box is
    filled with fractal simplex noise ``xi`` (or i.i.d. standard Gaussian noise) and
    ``x' = x + intensity * xi`` is returned (``xi`` is zero outside the box, and identical on all channels).
    The input is never modified; the result has the input's type (numpy array, torch Tensor or
    MetaTensor, which keeps its metadata), dtype and device. Intensities are assumed in [0, 1] space.

    Each box side is drawn uniformly from the integers ``[box_min, max(box_min, side // box_divisor)]``
    (e.g. [10, 32] for 256 px), limited to the image side for tiny images, and the box position is drawn
    uniformly so that the box lies inside the image. All randomness (apply or not, box size and position,
    noise offsets or Gaussian values) comes from ``self.R``, see ``set_random_state``.

    With the defaults (base frequency 1/16 cycle/px, 6 octaves up to 2 cycles/px, persistence 0.6) the
    noise in a 10-32 px box shows one or two smooth blobs with fine texture on top, neighbouring pixels
    being strongly correlated (about 0.9).

    Args:
        prob: probability of adding the noise; otherwise a copy of the input is returned.
        intensity: scale ``lambda`` of the noise. The simplex noise lies in [-1, 1], so ``|x' - x| <= intensity``.
        noise_type: ``"simplex"`` (the paper's default) or ``"gaussian"`` (i.i.d. N(0, 1) in the box, the
            paper's Table 3 ablation).
        octaves: number of simplex octaves, each doubling the frequency.
        persistence: amplitude multiplier between consecutive octaves.
        frequency: base frequency of the first octave in cycles per pixel.
        box_min: smallest box side in pixels.
        box_divisor: largest box side is ``max(box_min, side // box_divisor)``.
        clip: clip the perturbed box to [0, 1]. Defaults to False, as in the paper.
    """

    backend = [TransformBackends.TORCH, TransformBackends.NUMPY]

    def __init__(
        self,
        prob: float = 1.0,
        intensity: float = 0.2,
        noise_type: str = "simplex",
        octaves: int = 6,
        persistence: float = 0.6,
        frequency: float = 1 / 16,
        box_min: int = 10,
        box_divisor: int = 8,
        clip: bool = False,
    ) -> None:
        RandomizableTransform.__init__(self, prob)
        if noise_type not in NOISE_TYPES:
            raise ValueError(f"noise_type must be one of {NOISE_TYPES}, got {noise_type!r}.")
        if octaves < 1 or box_min < 1 or box_divisor < 1:
            raise ValueError("octaves, box_min and box_divisor must be positive.")
        self.intensity = float(intensity)
        self.noise_type = noise_type
        self.octaves = int(octaves)
        self.persistence = float(persistence)
        self.frequency = float(frequency)
        self.box_min = int(box_min)
        self.box_divisor = int(box_divisor)
        self.clip = clip
        self.box: tuple[slice, ...] | None = None
        self._offsets: np.ndarray | None = None
        self._gaussian: np.ndarray | None = None
        if noise_type == "simplex":
            warmup()

    def box_size_range(self, side: int) -> tuple[int, int]:
        """Inclusive range of the box side for an image side of ``side`` pixels."""
        low = min(self.box_min, side)
        return low, max(low, side // self.box_divisor)

    def randomize(self, spatial_shape: Sequence[int]) -> None:  # type: ignore[override]
        """
        Draw whether to apply, then the box and the noise parameters, for an image of ``spatial_shape``.

        Args:
            spatial_shape: spatial size of the image (without the channel dimension), 2 or 3 integers.
        """
        super().randomize(None)
        if not self._do_transform:
            return
        if len(spatial_shape) not in (2, 3):
            raise ValueError(f"expected a 2D or 3D image (C, H, W[, D]), got spatial shape {tuple(spatial_shape)}.")
        sizes = [self.R.randint(lo, hi + 1) for lo, hi in map(self.box_size_range, spatial_shape)]
        starts = [self.R.randint(0, side - size + 1) for side, size in zip(spatial_shape, sizes)]
        self.box = tuple(slice(s, s + n) for s, n in zip(starts, sizes))
        if self.noise_type == "simplex":
            self._offsets = self.R.uniform(0.0, _OFFSET_RANGE, size=(self.octaves, len(sizes)))
        else:
            self._gaussian = self.R.standard_normal(size=sizes).astype(np.float32)

    def noise(self) -> np.ndarray:
        """The noise field ``xi`` for the current box (float32, shape of the box), from the last ``randomize``."""
        if self.box is None:
            raise RuntimeError("call randomize() first.")
        if self.noise_type == "gaussian":
            return self._gaussian  # type: ignore[return-value]
        sizes = [b.stop - b.start for b in self.box]
        return fractal_simplex_noise(sizes, self._offsets, self.frequency, self.persistence)  # type: ignore[arg-type]

    def __call__(self, img: NdarrayOrTensor, randomize: bool = True) -> NdarrayOrTensor:
        """
        Args:
            img: channel-first floating-point image, shape (C, H, W) or (C, H, W, D).
            randomize: whether to draw new random parameters first; False reuses the last ones (which must
                have been drawn for the same spatial shape).
        """
        if randomize:
            self.randomize(img.shape[1:])
        is_tensor = isinstance(img, torch.Tensor)
        if not (img.is_floating_point() if is_tensor else np.issubdtype(img.dtype, np.floating)):
            raise TypeError(f"expected a floating-point image, got dtype {img.dtype}.")
        out = _copy(img)
        if not self._do_transform:
            return out
        region = (slice(None), *self.box)  # type: ignore[misc]
        noise = self.intensity * self.noise()
        if is_tensor:
            data = out.as_tensor() if isinstance(out, MetaTensor) else out  # shares storage, skips meta handling
            patch = data[region]
            patch += torch.from_numpy(noise).to(device=data.device, dtype=data.dtype)
            if self.clip:
                patch.clamp_(0.0, 1.0)
        else:
            patch = out[region]
            patch += noise.astype(out.dtype, copy=False)
            if self.clip:
                np.clip(patch, 0.0, 1.0, out=patch)
        return out


class RandSimplexNoised(RandomizableTransform, MapTransform):
    """
    Dictionary-based version of :py:class:`RandSimplexNoise`: the inputs under ``keys`` are left untouched
    and their perturbed copies are stored under the output keys (``key + output_postfix`` by default, e.g.
    ``"image"`` -> ``"image_noisy"``). All keys share the same box and noise, so they must share their
    spatial shape. When the noise is not applied (see ``prob``) the outputs are plain copies of the inputs.

    Args:
        keys: keys of the corresponding items to be transformed.
            See also: :py:class:`monai.transforms.compose.MapTransform`
        prob: probability of adding the noise.
        output_postfix: postfix of the output keys, used when ``output_keys`` is None.
        output_keys: explicit output keys, one per key.
        intensity: scale ``lambda`` of the noise.
        noise_type: ``"simplex"`` or ``"gaussian"``.
        octaves: number of simplex octaves, each doubling the frequency.
        persistence: amplitude multiplier between consecutive octaves.
        frequency: base frequency of the first octave in cycles per pixel.
        box_min: smallest box side in pixels.
        box_divisor: largest box side is ``max(box_min, side // box_divisor)``.
        clip: clip the perturbed box to [0, 1].
        allow_missing_keys: don't raise exception if key is missing.
    """

    backend = RandSimplexNoise.backend

    def __init__(
        self,
        keys: KeysCollection,
        prob: float = 1.0,
        output_postfix: str = "_noisy",
        output_keys: KeysCollection | None = None,
        intensity: float = 0.2,
        noise_type: str = "simplex",
        octaves: int = 6,
        persistence: float = 0.6,
        frequency: float = 1 / 16,
        box_min: int = 10,
        box_divisor: int = 8,
        clip: bool = False,
        allow_missing_keys: bool = False,
    ) -> None:
        MapTransform.__init__(self, keys, allow_missing_keys)
        RandomizableTransform.__init__(self, prob)
        if output_keys is None:
            self.output_keys = tuple(f"{key}{output_postfix}" for key in self.keys)
        else:
            self.output_keys = ensure_tuple(output_keys)
        if len(self.output_keys) != len(self.keys):
            raise ValueError(f"output_keys {self.output_keys} must match keys {self.keys} one to one.")
        if set(self.output_keys) & set(self.keys):
            raise ValueError("output_keys must differ from keys: the inputs are kept unchanged.")
        self.rand_noise = RandSimplexNoise(
            prob=1.0,
            intensity=intensity,
            noise_type=noise_type,
            octaves=octaves,
            persistence=persistence,
            frequency=frequency,
            box_min=box_min,
            box_divisor=box_divisor,
            clip=clip,
        )

    def set_random_state(
        self, seed: int | None = None, state: np.random.RandomState | None = None
    ) -> RandSimplexNoised:
        super().set_random_state(seed, state)
        self.rand_noise.set_random_state(seed, state)
        return self

    def __call__(self, data: Mapping[Hashable, NdarrayOrTensor]) -> dict[Hashable, NdarrayOrTensor]:
        d = dict(data)
        self.randomize(None)
        first_key: Hashable = self.first_key(d)
        if first_key == ():
            return d
        apply = self._do_transform
        if apply:
            self.rand_noise.randomize(d[first_key].shape[1:])
        for key, out_key in self.key_iterator(d, self.output_keys):
            img = d[key]
            if apply:
                d[out_key] = self.rand_noise(img, randomize=False)
            else:
                d[out_key] = _copy(img)
        return d
