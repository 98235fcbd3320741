"""Synthetic-anomaly transforms for SCRD (Algorithm 1 of the paper).

A single axis-aligned box per image is filled with multi-octave (fractal) simplex noise ``xi`` and the
perturbed copy ``x' = x + intensity * xi`` is produced (``xi`` is zero outside the box).

The field reproduces the reference synthesis behind Algorithm 1, the fractal simplex helper of AnoDDPM that RD++
and SCRD call as ``rand_3d_octaves((3, h_noise, w_noise), 6, 0.6)``: the octave sum
``sum_o persistence**o * simplex3(p / f_o)`` over 6 octaves, **not** normalised, with ``f_0 = 32`` pixels per
lattice unit halving every octave (1/32 cycles per pixel first, 1 last), sampled over ``(C, h, w)`` with the
channel index as the third simplex coordinate (a different but correlated field per channel), and added in
[0, 1] intensity space without clipping. Two deliberate differences: each draw uses a fresh permutation seed
(the reference seeds once per process, so its noise for a given box size never changes during a run), and
grayscale (1-channel) input gets the channel-0 slice of that field.

The simplex noise is OpenSimplex (Kurt Spencer's public-domain algorithm), computed as the ``opensimplex`` package
0.4 computes ``OpenSimplex(seed).noise2/3/4`` (the same permutation set-up, lattice, choice of contributing vertices,
gradients and scaling; the tests compare the values), by fused, non-parallel, ``nogil`` numba kernels: about a
millisecond or less for a 3x32x32 box, and safe to call from several threads (e.g. MONAI ``ThreadDataLoader``), unlike
opensimplex's ``prange`` array functions, whose default numba ``workqueue`` threading layer aborts on concurrent
launches. The algorithm's choice of vertices leaves small jumps (up to about 1e-4) in 3D and 4D noise; they are kept,
so that the values are the reference's.
"""

from __future__ import annotations

import itertools
import math
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

__all__ = ["RandSimplexNoise", "RandSimplexNoised", "fractal_simplex_noise", "warmup", "NOISE_TYPES"]

NOISE_TYPES = ("simplex", "gaussian")

DEFAULT_SEED = 3  # opensimplex's default permutation seed
# Permutation seeds are drawn from [0, _SEED_RANGE) (any int64 is valid; the set-up wraps it to 64 bits).
_SEED_RANGE = 2**62
_LCG_MULTIPLIER = 6364136223846793005
_LCG_INCREMENT = 1442695040888963407


# cache=True keeps compiled code in __pycache__ across processes (numba falls back to a user cache dir if
# that is read-only).
@numba.njit(cache=True, nogil=True)
def _permutation(seed):
    # opensimplex's permutation set-up: a 64-bit LCG (int64 arithmetic wraps like its c_int64 overflow) driving a
    # Fisher-Yates shuffle of 0..255.
    perm = np.zeros(256, dtype=np.int64)
    source = np.arange(256)
    s = np.int64(seed)
    for _ in range(3):
        s = s * np.int64(_LCG_MULTIPLIER) + np.int64(_LCG_INCREMENT)
    for i in range(255, -1, -1):
        s = s * np.int64(_LCG_MULTIPLIER) + np.int64(_LCG_INCREMENT)
        n = np.int64(i + 1)
        r = (s % n + np.int64(31) % n) % n  # == (s + 31) % n without int64 overflow; numba's % is Python's
        perm[i] = source[r]
        source[r] = source[i]
    return perm


# per dimension: stretch, squish, norm; gradient components big, small; the signs of x in the gradients' order
_CONSTANTS = {
    2: (-0.211324865405187, 0.366025403784439, 47.0, 5, 2, (1, -1)),
    3: (-1.0 / 6, 1.0 / 3, 103.0, 11, 4, (-1, 1)),
    4: (-0.138196601125011, 0.309016994374947, 30.0, 3, 1, (1, -1)),
}


class _Lattice:
    """OpenSimplex's constants for dimension ``d``, as arrays for the kernel.

    * ``stretch``/``squish``: the skews between input space and the hypercubic lattice (``(1 / sqrt(d + 1) - 1) / d``
      and ``(sqrt(d + 1) - 1) / d``, with the algorithm's published 15-digit values); ``norm`` scales the sum to about
      [-1, 1].
    * ``gradients[h]``: the gradient of a lattice vertex whose hash (``perm`` chained over its coordinates, x first)
      is ``h``: the sign patterns of ``(big, small, ..., small)`` and its axis rotations, in the algorithm's order
      (sign of x fastest), entry ``(h >> 1) & 7`` in 2D, ``h % 24`` in 3D and ``h >> 2`` in 4D.
    * ``corners[starts[r]:starts[r + 1]]``: bit masks of the corners of the unit cell that always contribute in region
      ``r``, those with ``r`` or ``r + 1`` ones (the vertices of the simplex or rectified simplex the point lies in).
    """

    def __init__(self, d: int) -> None:
        self.stretch, self.squish, self.norm, big, small, x_signs = _CONSTANTS[d]
        rows = []
        for outer in itertools.product((1, -1), repeat=d - 1):  # slowest axis first
            for sx in x_signs:
                signs = np.array([sx, *outer[::-1]])
                rows += [signs * np.where(np.arange(d) == k, big, small) for k in range(d)]
        pick = {2: lambda h: (h >> 1) & 7, 3: lambda h: h % 24, 4: lambda h: h >> 2}[d]
        self.gradients = np.array([rows[pick(h)] for h in range(256)], dtype=np.float64)
        corners = [[m for m in range(2**d) if m.bit_count() in (r, r + 1)] for r in range(d)]
        self.corners = np.array([m for per_region in corners for m in per_region], dtype=np.int64)
        self.starts = np.cumsum([0] + [len(c) for c in corners]).astype(np.int64)


_LATTICES = {d: _Lattice(d) for d in (2, 3, 4)}

# The kernel works on up to four scalar coordinates (x, y, z, w; the unused ones are 0 and skipped), which keeps
# them in registers. A lattice vertex is the point's cell corner plus an offset, written (mask, scale, minus):
# scale on the axes of the bit mask, 0 on the others, -1 on axis ``minus`` (-1: none); in the mirrored regions the
# offset is 1 minus that.


@numba.njit(cache=True, nogil=True, inline="always")
def _offset(axis, mask, scale, minus, mirrored):
    o = -1 if axis == minus else scale * ((mask >> axis) & 1)
    return 1 - o if mirrored else o


@numba.njit(cache=True, nogil=True)
def _contribution(perm, gradients, d, corner, rel, mask, scale, minus, mirrored, squish):
    """``max(0, 2 - |v|^2)^4 * (gradient . v)`` of a vertex, ``v`` the point's position relative to it in input space
    (``rel``: relative to the cell corner ``corner``)."""
    o0, o1 = _offset(0, mask, scale, minus, mirrored), _offset(1, mask, scale, minus, mirrored)
    o2 = _offset(2, mask, scale, minus, mirrored) if d > 2 else 0
    o3 = _offset(3, mask, scale, minus, mirrored) if d > 3 else 0
    shift = (o0 + o1 + o2 + o3) * squish
    v0, v1, v2, v3 = rel[0] - o0 - shift, rel[1] - o1 - shift, rel[2] - o2 - shift, rel[3] - o3 - shift
    attenuation = 2 - v0 * v0 - v1 * v1
    if d > 2:
        attenuation -= v2 * v2
    if d > 3:
        attenuation -= v3 * v3
    if attenuation <= 0:
        return 0.0
    h = perm[(perm[(corner[0] + o0) & 0xFF] + corner[1] + o1) & 0xFF]
    if d > 2:
        h = perm[(h + corner[2] + o2) & 0xFF]
    if d > 3:
        h = perm[(h + corner[3] + o3) & 0xFF]
    dot = gradients[h, 0] * v0 + gradients[h, 1] * v1
    if d > 2:
        dot += gradients[h, 2] * v2
    if d > 3:
        dot += gradients[h, 3] * v3
    attenuation *= attenuation
    return attenuation * attenuation * dot


@numba.njit(cache=True, nogil=True, inline="always")
def _closer(a, a_score, b, b_score, v, score):
    # vertex v replaces the farther of a and b (b when tied) if it is strictly closer
    if a_score >= b_score:
        if score > b_score:
            return a, a_score, v, score
    elif score > a_score:
        return v, score, b, b_score
    return a, a_score, b, b_score


@numba.njit(cache=True, nogil=True)
def _closest_two(d, middle, k, inside, f):
    """The two vertices of the point's simplex (``middle``: rectified simplex) closest to it, as bit masks, by the
    algorithm's scores (larger is closer): ``f`` are the fractional lattice coordinates, ``inside`` their sum and
    ``k`` the region's constant."""
    f0, f1, f2, f3 = f
    if not middle:  # simplex at the corner 0: the axes e_i scored by f_i, then the corner 0 itself
        a, a_score, b, b_score = 1, f0, 2, f1
        if d > 2:
            a, a_score, b, b_score = _closer(a, a_score, b, b_score, 4, f2)
        if d > 3:
            a, a_score, b, b_score = _closer(a, a_score, b, b_score, 8, f3)
        a, a_score, b, b_score = _closer(a, a_score, b, b_score, 0, k - inside)
        return a, b
    if d == 3:  # octahedron: the closer of each opposite pair (e_k or the other two axes), then the best two
        p1, p2, p3 = f0 + f1, f0 + f2, f1 + f2
        a, a_score = (3, p1 - 1) if p1 > 1 else (4, 1 - p1)
        b, b_score = (5, p2 - 1) if p2 > 1 else (2, 1 - p2)
        v, score = (6, p3 - 1) if p3 > 1 else (1, 1 - p3)
        if a_score <= b_score and a_score < score:
            a = v
        elif a_score > b_score and b_score < score:
            b = v
        return a, b
    # 4D first rectified simplex: the closer of each opposite pair of two-axis corners, then the one-axis corners
    a, a_score = (3, f0 + f1) if f0 + f1 > f2 + f3 else (12, f2 + f3)
    b, b_score = (5, f0 + f2) if f0 + f2 > f1 + f3 else (10, f1 + f3)
    v, score = (9, f0 + f3) if f0 + f3 > f1 + f2 else (6, f1 + f2)
    a, a_score, b, b_score = _closer(a, a_score, b, b_score, v, score)
    for i in range(4):
        a, a_score, b, b_score = _closer(a, a_score, b, b_score, 1 << i, k - inside + f[i])
    return a, b


@numba.njit(cache=True, nogil=True)
def _popcount(mask):
    n = 0
    while mask:
        n += mask & 1
        mask >>= 1
    return n


@numba.njit(cache=True, nogil=True, inline="always")
def _simplex(perm, gradients, corners, starts, stretch, squish, norm, d, p):
    """OpenSimplex noise at the point ``p = (x, y, z, w)`` of dimension ``d`` (unused coordinates 0)."""
    x, y, z, w = p
    stretched = x + y
    if d > 2:
        stretched += z
    if d > 3:
        stretched += w
    stretched *= stretch
    xs, ys, zs, ws = x + stretched, y + stretched, z + stretched, w + stretched
    c0, c1 = math.floor(xs), math.floor(ys)
    c2, c3 = (math.floor(zs) if d > 2 else 0), (math.floor(ws) if d > 3 else 0)
    f = (xs - c0, ys - c1, (zs - c2) if d > 2 else 0.0, (ws - c3) if d > 3 else 0.0)  # fractional lattice coordinates
    inside = f[0] + f[1]
    if d > 2:
        inside += f[2]
    if d > 3:
        inside += f[3]
    squished = (c0 + c1 + c2 + c3) * squish
    corner = (c0, c1, c2, c3)
    rel = (x - (c0 + squished), y - (c1 + squished), z - (c2 + squished), w - (c3 + squished))  # from the corner
    if inside <= 1:
        region = 0
    elif inside >= d - 1:
        region = d - 1
    else:
        region = 1 if inside <= 2 else 2
    value = 0.0
    for c in range(starts[region], starts[region + 1]):
        value += _contribution(perm, gradients, d, corner, rel, corners[c], 1, -1, False, squish)
    # the regions past the middle mirror those before it (f -> 1 - f): negated scores, offsets 1 - o
    mirrored = 2 * region > d - 1
    middle = region != 0 and region != d - 1
    if mirrored:
        f, inside = (-f[0], -f[1], -f[2], -f[3]), -inside
        k = -3.0 if middle else -float(d)
    else:
        k = 2.0 if middle else 1.0
    a, b = _closest_two(d, middle, k, inside, f)
    # The vertices outside the (rectified) simplex that contribute, from its two vertices closest to the point. Two
    # far corners (on the side away from 0): their union and twice their shared axis; two near ones: the corner 0;
    # one of each: twice the near one. Then the union of the two (or the far one) with each axis it lacks at -1.
    far = 2 if middle else 1
    a_far, b_far = _popcount(a) == far, _popcount(b) == far
    if a_far != b_far:
        base, near = (a, b) if a_far else (b, a)
        if near:
            value += _contribution(perm, gradients, d, corner, rel, near, 2, -1, mirrored, squish)
    else:
        base = a | b
        value += _contribution(perm, gradients, d, corner, rel, base if a_far else 0, 1, -1, mirrored, squish)
        if a_far and a & b:
            value += _contribution(perm, gradients, d, corner, rel, a & b, 2, -1, mirrored, squish)
    for axis in range(d):
        if not (base >> axis) & 1:
            value += _contribution(perm, gradients, d, corner, rel, base, 1, axis, mirrored, squish)
    return value / norm


@numba.njit(cache=True, nogil=True)
def _fractal(shape, octaves, frequency, persistence, perm, gradients, corners, starts, stretch, squish, norm):
    # array axis a is simplex axis d - 1 - a (the last axis is x), as in opensimplex's noise3array and the reference;
    # ``shape`` is a tuple, so that each dimension compiles with d a constant
    d = len(shape)
    size = 1
    for a in range(d):
        size *= shape[a]
    out = np.zeros(size, dtype=np.float64)
    index = np.zeros(4, dtype=np.int64)  # grid index, x first
    amplitude, freq = 1.0, frequency
    for _ in range(octaves):
        index[:] = 0
        for j in range(size):
            p = (index[0] * freq, index[1] * freq, index[2] * freq, index[3] * freq)
            out[j] += amplitude * _simplex(perm, gradients, corners, starts, stretch, squish, norm, d, p)
            a = 0
            while a < d:  # next grid point, x (the last array axis) fastest
                index[a] += 1
                if index[a] < shape[d - 1 - a]:
                    break
                index[a] = 0
                a += 1
        amplitude *= persistence
        freq *= 2.0
    return out.astype(np.float32)


def fractal_simplex_noise(
    size: Sequence[int], octaves: int = 6, frequency: float = 1 / 32, persistence: float = 0.6, seed: int = DEFAULT_SEED
) -> np.ndarray:
    """
    Fractal (multi-octave) OpenSimplex noise on a 2D, 3D or 4D grid, the lattice anchored at the grid's origin.

    Octave ``o`` samples the noise at ``p * frequency * 2**o`` (``p``: grid index) with amplitude ``persistence**o``;
    the sum is not normalised (values within about ``+-sum(persistence**o)``). The last axis is simplex x, the one
    before y, and so on, as in opensimplex's ``noise3array``: ``field[c, i, j]`` is
    ``sum_o persistence**o * OpenSimplex(seed).noise3(x_j, y_i, z_c)``. With the defaults and ``size=(3, h, w)`` this
    is the reference ``rand_3d_octaves((3, h, w), 6, 0.6)`` for the permutation of ``seed``.

    Args:
        size: shape of the field, 2 to 4 integers.
        octaves: number of octaves (>= 1), each doubling the frequency.
        frequency: base frequency in cycles per pixel (the simplex lattice spacing is ``1 / frequency`` px).
        persistence: amplitude ratio between consecutive octaves.
        seed: permutation seed (opensimplex's ``OpenSimplex(seed)``).

    Returns:
        float32 array of shape ``size``.
    """
    size = tuple(int(s) for s in size)
    if len(size) not in _LATTICES:
        raise ValueError(f"only 2D, 3D and 4D noise is supported, got size {size}.")
    if int(octaves) < 1:
        raise ValueError(f"octaves must be >= 1, got {octaves}.")
    lat = _LATTICES[len(size)]
    field = _fractal(size, int(octaves), float(frequency), float(persistence),
                     _permutation(np.int64(seed)), lat.gradients, lat.corners, lat.starts, lat.stretch, lat.squish,
                     lat.norm)
    return field.reshape(size)


_warm = False


def warmup() -> None:
    """Trigger (or load from numba's on-disk cache) the JIT compilation of the noise kernels once per process,
    on tiny arrays, so that the first training step is not slowed down. Cheap when already done."""
    global _warm
    if not _warm:
        for ndim in (2, 3, 4):
            fractal_simplex_noise((2,) * ndim, octaves=2, seed=1)
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
    noise seed or Gaussian values) comes from ``self.R``, see ``set_random_state``.

    The defaults reproduce the reference synthesis (see the module docstring): 6 octaves from 1/32 to 1 cycle
    per pixel, persistence 0.6, octave sum not normalised (values within about +-1.5, standard deviation about
    0.44 over 10-32 px boxes), a field over ``(C, *box)`` with the channel index as the next simplex
    coordinate (so channels differ, mostly in the fine octaves; a 1-channel image gets the channel-0 slice; 3D
    images get a 4D field), lattice origin at the box corner and a fresh permutation seed per draw. Gaussian
    noise is drawn independently per channel.

    Args:
        prob: probability of adding the noise; otherwise a copy of the input is returned.
        intensity: scale ``lambda`` of the noise (0.2 in the paper).
        noise_type: ``"simplex"`` (the paper's default) or ``"gaussian"`` (i.i.d. N(0, 1) in the box, the
            paper's Table 3 ablation).
        octaves: number of simplex octaves, each doubling the frequency.
        persistence: amplitude multiplier between consecutive octaves.
        frequency: base frequency of the first octave in cycles per pixel (the reference: 1/32). The octave sum is
            not normalised: ``|x' - x|`` stays below ``intensity * sum(persistence**o)``.
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
        self._channels = 1
        self.simplex_seed = DEFAULT_SEED  # permutation seed of the last draw
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
            channels: number of image channels (the noise is drawn for this many channels).
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
        self._channels = int(channels)
        if self.noise_type == "gaussian":
            self._field = self.R.standard_normal(size=(self._channels, *sizes)).astype(np.float32)
            return
        self.simplex_seed = int(self.R.randint(0, _SEED_RANGE, dtype=np.int64))

    def noise(self) -> np.ndarray:
        """The noise field ``xi`` for the current box from the last ``randomize``: float32 of shape
        ``(channels, *box)``."""
        if self.box is None:
            raise RuntimeError("call randomize() first.")
        if self._field is None:
            shape = [self._channels, *(b.stop - b.start for b in self.box)]
            self._field = fractal_simplex_noise(shape, self.octaves, self.frequency, self.persistence, self.simplex_seed)
        return self._field

    def __call__(self, img: NdarrayOrTensor, randomize: bool = True) -> NdarrayOrTensor:
        """
        Args:
            img: channel-first floating-point image, shape (C, H, W) or (C, H, W, D).
            randomize: whether to draw new random parameters first; False reuses the last ones (which must
                have been drawn for the same spatial shape and at least C channels).
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
        if noise.shape[0] < img.shape[0]:
            raise ValueError(f"noise drawn for {noise.shape[0]} channels, image has {img.shape[0]}: call randomize again.")
        noise = self.intensity * noise[: img.shape[0]]
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
    spatial shape (a key with C channels gets the first C channels of the field). When the
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
            channels = max(d[key].shape[0] for key in self.key_iterator(d))
            self.rand_noise.randomize(d[first_key].shape[1:], channels)
        for key, out_key in self.key_iterator(d, self.output_keys):
            img = d[key]
            if apply:
                d[out_key] = self.rand_noise(img, randomize=False)
            else:
                d[out_key] = _copy(img)
        return d
