"""Fractal OpenSimplex noise: numba kernels for 2D, 3D and 4D fields and their octave sum.

The noise is OpenSimplex (Kurt Spencer's public-domain algorithm), computed as the ``opensimplex`` package 0.4
computes ``OpenSimplex(seed).noise2/3/4``: the same permutation set-up, lattice, choice of contributing vertices,
gradients and scaling. ``tests/test_noise.py`` holds :func:`fractal_simplex_noise` to the reference opensimplex
values. The algorithm's choice of vertices leaves small jumps (up to about 1e-4) in 3D and 4D noise; they are kept,
so that the values are the reference's.

The kernels are fused, non-parallel and ``nogil``, so they are safe to call from several threads (e.g. MONAI
``ThreadDataLoader``), unlike opensimplex's ``prange`` array functions, whose default numba ``workqueue`` threading
layer aborts on concurrent launches.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence

import numba
import numpy as np

__all__ = ["DEFAULT_SEED", "fractal_simplex_noise", "warmup"]

DEFAULT_SEED = 3  # opensimplex's default permutation seed
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
