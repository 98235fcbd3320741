"""Synthetic-anomaly transforms for SCRD (Algorithm 1 of the paper).

A single axis-aligned box per image is filled with multi-octave (fractal) simplex noise ``xi`` and the
perturbed copy ``x' = x + intensity * xi`` is produced (``xi`` is zero outside the box).

By default the field reproduces the reference synthesis behind Algorithm 1, the fractal simplex helper of
AnoDDPM that RD++ and SCRD call as ``rand_3d_octaves((3, h_noise, w_noise), 6, 0.6)``: the octave sum
``sum_o persistence**o * simplex3(p / f_o)`` over 6 octaves, **not** normalised, with ``f_0 = 32`` pixels per
lattice unit halving every octave (1/32 cycles per pixel first, 1 last), sampled over ``(C, h, w)`` with the
channel index as the third simplex coordinate (a different but correlated field per channel), and added in
[0, 1] intensity space without clipping. Two deliberate differences: each draw uses a fresh permutation seed
(the reference seeds once per process, so its noise for a given box size never changes during a run), and
grayscale (1-channel) input gets the channel-0 slice of that field. The earlier behaviour of this module
(amplitude-normalised 2D field shared by all channels, 1/16 cycles per pixel, a fixed permutation translated
by random offsets) stays available through ``normalize``, ``frequency``, ``per_channel`` and ``random_offset``.

Speed: opensimplex's per-point functions are numba-compiled (``opensimplex.internals._noise2`` / ``_noise3`` /
``_noise4``, ``@njit(cache=True)``). The fractal sums below are fused, *non-parallel*, ``nogil`` numba kernels
calling them, so a call costs about a millisecond or less for a 3x32x32 box and is safe to call from several
threads (e.g. MONAI ``ThreadDataLoader``), unlike opensimplex's ``prange`` array functions whose default numba
``workqueue`` threading layer aborts on concurrent launches and oversubscribes the DataLoader's cores.
opensimplex's permutation set-up (``_init``) is a pure-Python loop (about 1 ms), so it is ported to numba here.
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
from opensimplex import DEFAULT_SEED
from opensimplex.internals import _noise2 as _simplex2
from opensimplex.internals import _noise3 as _simplex3
from opensimplex.internals import _noise4 as _simplex4

__all__ = ["RandSimplexNoise", "RandSimplexNoised", "fractal_simplex_noise", "warmup", "NOISE_TYPES"]

NOISE_TYPES = ("simplex", "gaussian")

# Offsets for ``random_offset=True``: the permutation table is periodic over 256 lattice cells, so offsets in
# [0, _OFFSET_RANGE) cover the whole domain.
_OFFSET_RANGE = 4096.0
# Permutation seeds are drawn from [0, _SEED_RANGE) (any int64 is valid; opensimplex wraps it to 64 bits).
_SEED_RANGE = 2**62
_LCG_MULTIPLIER = 6364136223846793005
_LCG_INCREMENT = 1442695040888963407
_GRADIENTS3_COUNT = 24  # len(opensimplex.constants.GRADIENTS3) // 3


# cache=True keeps compiled code in __pycache__ across processes (numba falls back to a user cache dir if
# that is read-only). Caveat: numba's cache does not notice changes in the opensimplex callees; clear
# __pycache__ after upgrading opensimplex.
@numba.njit(cache=True, nogil=True)
def _permutation(seed):
    # Port of opensimplex.internals._init: the same 64-bit LCG (int64 arithmetic wraps like its c_int64
    # overflow) and the same Fisher-Yates shuffle, a few microseconds instead of about 1 ms; tests check the
    # noise against OpenSimplex(seed).
    perm = np.zeros(256, dtype=np.int64)
    perm_grad_index3 = np.zeros(256, dtype=np.int64)
    source = np.arange(256)
    s = np.int64(seed)
    for _ in range(3):
        s = s * np.int64(_LCG_MULTIPLIER) + np.int64(_LCG_INCREMENT)
    for i in range(255, -1, -1):
        s = s * np.int64(_LCG_MULTIPLIER) + np.int64(_LCG_INCREMENT)
        n = np.int64(i + 1)
        r = (s % n + np.int64(31) % n) % n  # == (s + 31) % n without int64 overflow; numba's % is Python's
        perm[i] = source[r]
        perm_grad_index3[i] = (perm[i] % _GRADIENTS3_COUNT) * 3
        source[r] = source[i]
    return perm, perm_grad_index3


_DEFAULT_PERM, _DEFAULT_PERM_GRAD_INDEX3 = _permutation(np.int64(DEFAULT_SEED))


# Axis convention of all kernels: the last axis is simplex x, the one before y, then z, then w, as in
# opensimplex's noise2array/noise3array and the reference (field[c, i, j] = simplex3(j / f, i / f, c / f)).
# ``offsets[o, a]`` is added to the coordinate of axis ``a`` in octave ``o``.
@numba.njit(cache=True, nogil=True)
def _fractal2(n0, n1, frequency, persistence, normalize, offsets, perm):
    out = np.zeros((n0, n1), dtype=np.float64)
    amplitude, freq, total = 1.0, frequency, 0.0
    for o in range(offsets.shape[0]):
        for a in range(n0):
            y = offsets[o, 0] + a * freq
            for b in range(n1):
                out[a, b] += amplitude * _simplex2(offsets[o, 1] + b * freq, y, perm)
        total += amplitude
        amplitude *= persistence
        freq *= 2.0
    if normalize:
        out = np.clip(out / total, -1.0, 1.0)
    return out.astype(np.float32)


@numba.njit(cache=True, nogil=True)
def _fractal3(n0, n1, n2, frequency, persistence, normalize, offsets, perm, perm_grad_index3):
    out = np.zeros((n0, n1, n2), dtype=np.float64)
    amplitude, freq, total = 1.0, frequency, 0.0
    for o in range(offsets.shape[0]):
        for a in range(n0):
            z = offsets[o, 0] + a * freq
            for b in range(n1):
                y = offsets[o, 1] + b * freq
                for c in range(n2):
                    out[a, b, c] += amplitude * _simplex3(offsets[o, 2] + c * freq, y, z, perm, perm_grad_index3)
        total += amplitude
        amplitude *= persistence
        freq *= 2.0
    if normalize:
        out = np.clip(out / total, -1.0, 1.0)
    return out.astype(np.float32)


@numba.njit(cache=True, nogil=True)
def _fractal4(n0, n1, n2, n3, frequency, persistence, normalize, offsets, perm):
    out = np.zeros((n0, n1, n2, n3), dtype=np.float64)
    amplitude, freq, total = 1.0, frequency, 0.0
    for o in range(offsets.shape[0]):
        for a in range(n0):
            w = offsets[o, 0] + a * freq
            for b in range(n1):
                z = offsets[o, 1] + b * freq
                for c in range(n2):
                    y = offsets[o, 2] + c * freq
                    for d in range(n3):
                        out[a, b, c, d] += amplitude * _simplex4(offsets[o, 3] + d * freq, y, z, w, perm)
        total += amplitude
        amplitude *= persistence
        freq *= 2.0
    if normalize:
        out = np.clip(out / total, -1.0, 1.0)
    return out.astype(np.float32)


def fractal_simplex_noise(
    size: Sequence[int],
    offsets: np.ndarray,
    frequency: float = 1 / 32,
    persistence: float = 0.6,
    normalize: bool = False,
    seed: int = DEFAULT_SEED,
) -> np.ndarray:
    """
    Fractal (multi-octave) simplex noise on a 2D, 3D or 4D grid (opensimplex ``noise2``/``noise3``/``noise4``).

    Octave ``o`` samples simplex noise at ``offsets[o] + p * frequency * 2**o`` (``p``: grid index) with
    amplitude ``persistence**o``. The last axis is simplex x, the one before y, and so on, as in opensimplex's
    ``noise3array``: ``field[c, i, j]`` is ``sum_o persistence**o * noise3(x_j, y_i, z_c)``. With zero offsets,
    ``frequency=1/32``, 6 octaves, persistence 0.6 and ``size=(3, h, w)`` this is the reference
    ``rand_3d_octaves((3, h, w), 6, 0.6)`` for the permutation of ``seed``.

    Args:
        size: shape of the field, 2 to 4 integers.
        offsets: float array of shape ``(octaves, len(size))``: where each octave starts in the noise domain.
        frequency: base frequency in cycles per pixel (the simplex lattice spacing is ``1 / frequency`` px).
        persistence: amplitude ratio between consecutive octaves.
        normalize: divide the sum by the sum of amplitudes (then clipped to [-1, 1]); the reference does not, so
            its values reach about +-1.5 (standard deviation about 0.44 in 10-32 px boxes).
        seed: opensimplex permutation seed (``OpenSimplex(seed)``).

    Returns:
        float32 array of shape ``size``.
    """
    size = tuple(int(s) for s in size)
    offsets = np.ascontiguousarray(offsets, dtype=np.float64)
    if offsets.ndim != 2 or offsets.shape[1] != len(size) or offsets.shape[0] < 1:
        raise ValueError(f"offsets must have shape (octaves>=1, {len(size)}), got {offsets.shape}.")
    args = (float(frequency), float(persistence), bool(normalize), offsets)
    if int(seed) == DEFAULT_SEED:
        perm, grad3 = _DEFAULT_PERM, _DEFAULT_PERM_GRAD_INDEX3
    else:
        perm, grad3 = _permutation(np.int64(seed))
    if len(size) == 2:
        return _fractal2(*size, *args, perm)
    if len(size) == 3:
        return _fractal3(*size, *args, perm, grad3)
    if len(size) == 4:
        return _fractal4(*size, *args, perm)
    raise ValueError(f"only 2D, 3D and 4D noise is supported, got size {size}.")


_warm = False


def warmup() -> None:
    """Trigger (or load from numba's on-disk cache) the JIT compilation of the noise kernels once per process,
    on tiny arrays, so that the first training step is not slowed down. Cheap when already done."""
    global _warm
    if not _warm:
        for ndim in (2, 3, 4):
            fractal_simplex_noise((2,) * ndim, np.zeros((2, ndim)), seed=1)
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
    ``x' = x + intensity * xi`` is returned (``xi`` is zero outside the box).
    The input is never modified; the result has the input's type (numpy array, torch Tensor or
    MetaTensor, which keeps its metadata), dtype and device. Intensities are assumed in [0, 1] space.

    Each box side is drawn uniformly from the integers ``[box_min, max(box_min, side // box_divisor)]``
    (e.g. [10, 32] for 256 px), limited to the image side for tiny images, and the box position is drawn
    uniformly so that the box lies inside the image. All randomness (apply or not, box size and position,
    noise seed/offsets or Gaussian values) comes from ``self.R``, see ``set_random_state``.

    The defaults reproduce the reference synthesis (see the module docstring): 6 octaves from 1/32 to 1 cycle
    per pixel, persistence 0.6, octave sum not normalised (values within about +-1.5, standard deviation about
    0.44 over 10-32 px boxes), a field over ``(C, *box)`` with the channel index as the next simplex
    coordinate (so channels differ, mostly in the fine octaves; a 1-channel image gets the channel-0 slice),
    lattice origin at the box corner and a fresh permutation seed per draw. The earlier behaviour of this
    transform is ``frequency=1/16, normalize=True, per_channel=False, random_offset=True``.

    Args:
        prob: probability of adding the noise; otherwise a copy of the input is returned.
        intensity: scale ``lambda`` of the noise (0.2 in the paper).
        noise_type: ``"simplex"`` (the paper's default) or ``"gaussian"`` (i.i.d. N(0, 1) in the box, the
            paper's Table 3 ablation).
        octaves: number of simplex octaves, each doubling the frequency.
        persistence: amplitude multiplier between consecutive octaves.
        frequency: base frequency of the first octave in cycles per pixel (the reference: 1/32).
        normalize: divide the octave sum by the sum of amplitudes (``1 + 0.6 + ... + 0.6**5 = 2.38``), so that
            ``|x' - x| <= intensity``. The reference does not; unnormalised, ``|x' - x|`` stays below
            ``intensity * sum(persistence**o)``.
        per_channel: a different (correlated) noise field per channel: for simplex noise, the field is one
            dimension larger with the channel index as its first axis (3D for 2D images, 4D for volumes); for
            Gaussian noise, independent values per channel. False: one field shared by all channels.
        random_offset: randomise the simplex field by translating one fixed permutation (opensimplex's default
            seed) by a random offset per octave and axis, instead of the reference's lattice anchored at the
            box corner with a fresh permutation per draw. Both give distinct fields per draw, but not the
            same amplitude statistics (simplex noise is not stationary relative to its lattice).
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
        frequency: float = 1 / 32,
        normalize: bool = False,
        per_channel: bool = True,
        random_offset: bool = False,
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
        self.normalize = bool(normalize)
        self.per_channel = bool(per_channel)
        self.random_offset = bool(random_offset)
        self.box_min = int(box_min)
        self.box_divisor = int(box_divisor)
        self.clip = clip
        self.box: tuple[slice, ...] | None = None
        self._channels = 1
        self.simplex_seed = DEFAULT_SEED  # opensimplex permutation seed of the last draw
        self.simplex_offsets: np.ndarray | None = None  # (octaves, field dims) lattice offsets of the last draw
        self._field: np.ndarray | None = None
        if noise_type == "simplex":
            warmup()

    def box_size_range(self, side: int) -> tuple[int, int]:
        """Inclusive range of the box side for an image side of ``side`` pixels."""
        low = min(self.box_min, side)
        return low, max(low, side // self.box_divisor)

    def randomize(self, spatial_shape: Sequence[int], channels: int = 1) -> None:  # type: ignore[override]
        """
        Draw whether to apply, then the box and the noise parameters, for an image of ``spatial_shape``.

        Args:
            spatial_shape: spatial size of the image (without the channel dimension), 2 or 3 integers.
            channels: number of image channels (the noise is drawn for this many channels when ``per_channel``).
        """
        super().randomize(None)
        self._field = None
        if not self._do_transform:
            return
        if len(spatial_shape) not in (2, 3):
            raise ValueError(f"expected a 2D or 3D image (C, H, W[, D]), got spatial shape {tuple(spatial_shape)}.")
        sizes = [self.R.randint(lo, hi + 1) for lo, hi in map(self.box_size_range, spatial_shape)]
        starts = [self.R.randint(0, side - size + 1) for side, size in zip(spatial_shape, sizes)]
        self.box = tuple(slice(s, s + n) for s, n in zip(starts, sizes))
        self._channels = int(channels) if self.per_channel else 1
        if self.noise_type == "gaussian":
            self._field = self.R.standard_normal(size=(self._channels, *sizes)).astype(np.float32)
            return
        field_ndim = len(sizes) + (1 if self.per_channel else 0)
        if self.random_offset:
            self.simplex_seed = DEFAULT_SEED
            self.simplex_offsets = self.R.uniform(0.0, _OFFSET_RANGE, size=(self.octaves, field_ndim))
        else:
            self.simplex_seed = int(self.R.randint(0, _SEED_RANGE, dtype=np.int64))
            self.simplex_offsets = np.zeros((self.octaves, field_ndim))

    def noise(self) -> np.ndarray:
        """The noise field ``xi`` for the current box from the last ``randomize``: float32 of shape
        ``(channels, *box)`` when ``per_channel``, else ``(1, *box)``."""
        if self.box is None:
            raise RuntimeError("call randomize() first.")
        if self._field is None:
            sizes = [b.stop - b.start for b in self.box]
            shape = [self._channels, *sizes] if self.per_channel else sizes
            field = fractal_simplex_noise(
                shape, self.simplex_offsets, self.frequency, self.persistence, self.normalize, self.simplex_seed  # type: ignore[arg-type]
            )
            self._field = field if self.per_channel else field[None]
        return self._field

    def __call__(self, img: NdarrayOrTensor, randomize: bool = True) -> NdarrayOrTensor:
        """
        Args:
            img: channel-first floating-point image, shape (C, H, W) or (C, H, W, D).
            randomize: whether to draw new random parameters first; False reuses the last ones (which must
                have been drawn for the same spatial shape and, with ``per_channel``, at least C channels).
        """
        if randomize:
            self.randomize(img.shape[1:], img.shape[0])
        is_tensor = isinstance(img, torch.Tensor)
        if not (img.is_floating_point() if is_tensor else np.issubdtype(img.dtype, np.floating)):
            raise TypeError(f"expected a floating-point image, got dtype {img.dtype}.")
        out = _copy(img)
        if not self._do_transform:
            return out
        region = (slice(None), *self.box)  # type: ignore[misc]
        noise = self.noise()
        if self.per_channel:
            if noise.shape[0] < img.shape[0]:
                raise ValueError(f"noise drawn for {noise.shape[0]} channels, image has {img.shape[0]}: call randomize again.")
            noise = noise[: img.shape[0]]
        noise = self.intensity * noise
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
    spatial shape (with ``per_channel``, a key with C channels gets the first C channels of the field). When the
    noise is not applied (see ``prob``) the outputs are plain copies of the inputs.

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
        normalize: divide the octave sum by the sum of amplitudes (the reference does not).
        per_channel: a different noise field per channel (the reference's) instead of one shared field.
        random_offset: translate one fixed permutation by random offsets instead of the reference's fresh
            permutation per draw anchored at the box corner.
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
        frequency: float = 1 / 32,
        normalize: bool = False,
        per_channel: bool = True,
        random_offset: bool = False,
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
            normalize=normalize,
            per_channel=per_channel,
            random_offset=random_offset,
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
            channels = max(d[key].shape[0] for key in self.key_iterator(d))
            self.rand_noise.randomize(d[first_key].shape[1:], channels)
        for key, out_key in self.key_iterator(d, self.output_keys):
            img = d[key]
            if apply:
                d[out_key] = self.rand_noise(img, randomize=False)
            else:
                d[out_key] = _copy(img)
        return d
