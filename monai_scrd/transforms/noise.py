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

The noise itself comes from :mod:`monai_scrd.transforms.simplex`.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence
from copy import deepcopy

import numpy as np
import torch
from monai.config import KeysCollection
from monai.config.type_definitions import NdarrayOrTensor
from monai.data import MetaTensor
from monai.transforms import MapTransform, RandomizableTransform
from monai.utils import TransformBackends

from monai_scrd.transforms.keys import paired_output_keys
from monai_scrd.transforms.simplex import DEFAULT_SEED, fractal_simplex_noise, warmup

__all__ = ["RandSimplexNoise", "RandSimplexNoised", "NOISE_TYPES"]

NOISE_TYPES = ("simplex", "gaussian")

# Permutation seeds are drawn from [0, _SEED_RANGE) (any int64 is valid; the set-up wraps it to 64 bits).
_SEED_RANGE = 2**62


_NUMPY_COMPATIBLE = (torch.float16, torch.float32, torch.float64)


def _copy(img: NdarrayOrTensor) -> NdarrayOrTensor:
    """
    Copy of ``img`` with the same type (MetaTensor metadata deep-copied, as ``MetaTensor.clone`` does).

    CPU tensors are copied through numpy (a single-threaded memcpy) rather than with torch's OpenMP-parallel
    ``clone``, which stalls for a scheduler slice when the cores are busy with other processes (e.g. DataLoader
    workers), as its worker threads go idle during the noise kernel.
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
        self.output_keys = paired_output_keys(self.keys, output_keys, output_postfix)
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
