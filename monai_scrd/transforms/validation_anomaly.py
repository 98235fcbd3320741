"""Synthetic anomalies for label-free *validation* (model selection), of families the training never sees.

Training perturbs one box with fractal simplex noise (:mod:`monai_scrd.transforms.noise`). A validation signal made
from the same noise would reward a student that merely learned to spot that noise, so validation uses other, smooth
and local changes of a normal image, each with its known region:

- ``"blob"``: an elliptical brightening or darkening with a Gaussian profile (a mass, an oedema, a lesion);
- ``"blur"``: a local Gaussian blur (loss of texture, e.g. partial-volume or motion);
- ``"contrast"``: a local contrast increase or decrease around the region's mean intensity;
- ``"patch"``: a region of *another* normal image (a donor) blended in at another place, as in natural synthetic
  anomalies and foreign-patch interpolation: real tissue of the user's own data, in the wrong place.

Each is drawn at several sizes (the ellipse's major axis as a fraction of the image side, 1/16, 1/8 and 1/4 by
default). :func:`synthetic_validation_set` turns held-out normal images into a fixed validation set (normals plus
anomalies and their masks), identical for a given seed.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Hashable, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from monai.config import KeysCollection
from monai.config.type_definitions import NdarrayOrTensor
from monai.transforms import MapTransform, RandomizableTransform
from monai.utils import TransformBackends, convert_to_dst_type, convert_to_tensor, ensure_tuple
from torchvision.transforms.functional import gaussian_blur

from monai_scrd.transforms.keys import paired_output_keys

__all__ = [
    "ANOMALY_FAMILIES",
    "ANOMALY_SIZES",
    "LOCAL_FAMILIES",
    "SCORING_FAMILIES",
    "SCORING_SIZES",
    "RandValidationAnomaly",
    "RandValidationAnomalyd",
    "SyntheticValidationSet",
    "synthetic_validation_set",
]

ANOMALY_FAMILIES = ("blob", "blur", "contrast", "patch")
LOCAL_FAMILIES = ANOMALY_FAMILIES[:3]  # made from the image alone (the default)
ANOMALY_SIZES = (1 / 16, 1 / 8, 1 / 4)
# the set that chooses the scoring at the end of training (monai_scrd.scoring.fitting): foreign patches from the
# user's own normals, from a small lesion to a quarter of the image and more (diffuse change)
SCORING_FAMILIES = ("patch",)
SCORING_SIZES = (1 / 16, 1 / 8, 1 / 4, 1 / 2)


def _elliptical_radius(shape: Sequence[int], center: Sequence[float], semi_axes: Sequence[float], angle: float) -> torch.Tensor:
    """Normalised elliptical radius ``rho`` on an ``(H, W)`` grid: 0 at ``center``, 1 on the ellipse with semi-axes
    ``(a, b)`` whose ``a`` axis makes ``angle`` (radians) with the column axis."""
    rows = torch.arange(shape[0], dtype=torch.float32).view(-1, 1) - float(center[0])
    cols = torch.arange(shape[1], dtype=torch.float32).view(1, -1) - float(center[1])
    c, s = math.cos(angle), math.sin(angle)
    along = cols * c + rows * s
    across = -cols * s + rows * c
    return torch.sqrt((along / semi_axes[0]) ** 2 + (across / semi_axes[1]) ** 2)


def _gaussian_profile(rho: torch.Tensor) -> torch.Tensor:
    """Gaussian of sigma = half the radius (``exp(-2 rho^2)``), shifted and rescaled so it is 1 at the centre and
    reaches exactly 0 on the ellipse (no change outside it)."""
    edge = math.exp(-2.0)
    return ((torch.exp(-2.0 * rho**2) - edge) / (1.0 - edge)).clamp_(min=0.0)


def _flat_top_window(rho: torch.Tensor) -> torch.Tensor:
    """1 inside half the radius, a raised-cosine fall to 0 on the ellipse: the full effect in the core, no seam."""
    t = ((rho - 0.5) / 0.5).clamp(0.0, 1.0)
    return 0.5 * (1.0 + torch.cos(math.pi * t))


class RandValidationAnomaly(RandomizableTransform):
    """
    Make a synthetic anomaly of a validation family in a channel-first 2D image in [0, 1] and return it with its
    mask: ``(anomalous_image, mask)``. The input is never modified; both outputs have the input's type (numpy array,
    torch Tensor or MetaTensor) and device, the image its dtype, the mask (``[1, H, W]``, 0 or 1) the image's dtype.

    One elliptical region is drawn per call: a family from ``families``, a size from ``sizes`` (the major axis as a
    fraction of the shorter image side), an aspect ratio in ``aspect``, a random orientation, and a centre on a
    foreground pixel (channel mean > ``foreground_threshold``; anywhere when there is none). The region is changed by

    - ``"blob"``: ``x + s * A * g`` with ``g`` a Gaussian profile (1 at the centre, 0 on the ellipse), ``s = +-1``,
      ``A`` in ``blob_amplitude``;
    - ``"blur"``: ``x + w * (blur(x) - x)``, torchvision's ``gaussian_blur`` with sigma ``blur_sigma`` times the
      major axis, ``w`` a flat-top window (1 in the inner half, raised cosine to 0 on the ellipse);
    - ``"contrast"``: ``x + w * (k - 1) * (x - m)``, ``m`` the region's (window-weighted) mean per channel, ``k`` in
      ``contrast_gain`` or its inverse (lower or higher contrast, equally likely);
    - ``"patch"``: ``x + L * w * (d - x)``, ``d`` a donor image (one of ``donors``) shifted so that a random
      foreground point of it lands on the centre, ``L`` in ``patch_blend``;

    and clipped to [0, 1] (pixels outside the ellipse are never changed). The mask marks the pixels the anomaly
    actually changed, by more than ``min_change`` on some channel: a blur of a flat area or a darkening of a black
    background changes nothing and is not marked. When fewer than ``min_mask_fraction`` of the ellipse's pixels
    changed (the anomaly fell on an area where it is nearly invisible), the region is drawn again, up to
    ``max_tries`` times (the last draw is kept). All randomness comes from ``self.R`` (see ``set_random_state``), so
    a seeded transform gives the same anomalies on the same images.

    Args:
        prob: probability of making an anomaly; otherwise a copy of the input and an all-zero mask are returned.
        families: anomaly families to draw from, a subset of ``ANOMALY_FAMILIES``.
        sizes: major axes of the ellipse as fractions of the shorter image side (at least 3 px).
        aspect: range of the minor/major axis ratio.
        blob_amplitude: range of the blob's peak intensity change ``A``.
        blur_sigma: range of the blur's sigma as a fraction of the major axis (at least 1 px).
        contrast_gain: range of the contrast factor below 1; its inverse is used for a contrast increase.
        foreground_threshold: pixels whose channel mean exceeds it may be centres (0 to allow any non-black pixel).
        min_change: smallest absolute change (on some channel) for a pixel to be marked in the mask.
        min_mask_fraction: redraw when fewer than this fraction of the ellipse's pixels are marked.
        max_tries: draws per call at most.
        patch_blend: range of the donor's weight ``L`` in the ``"patch"`` family.
        donors: ``[D, C, H, W]`` normal images of the input's shape, the donors of the ``"patch"`` family (a donor
            identical to the input changes nothing, and the region is drawn again).
    """

    backend = [TransformBackends.TORCH, TransformBackends.NUMPY]

    def __init__(
        self,
        prob: float = 1.0,
        families: Sequence[str] = LOCAL_FAMILIES,
        sizes: Sequence[float] = ANOMALY_SIZES,
        aspect: tuple[float, float] = (0.5, 1.0),
        blob_amplitude: tuple[float, float] = (0.1, 0.3),
        blur_sigma: tuple[float, float] = (0.15, 0.3),
        contrast_gain: tuple[float, float] = (0.3, 0.6),
        foreground_threshold: float = 0.05,
        min_change: float = 0.02,
        min_mask_fraction: float = 0.25,
        max_tries: int = 10,
        patch_blend: tuple[float, float] = (0.5, 1.0),
        donors: NdarrayOrTensor | None = None,
    ) -> None:
        RandomizableTransform.__init__(self, prob)
        self.families = tuple(ensure_tuple(families))
        unknown = [f for f in self.families if f not in ANOMALY_FAMILIES]
        if not self.families or unknown:
            raise ValueError(f"families must be a non-empty subset of {ANOMALY_FAMILIES}, got {self.families}")
        self.sizes = tuple(float(s) for s in ensure_tuple(sizes))
        if not self.sizes or not all(0.0 < s <= 1.0 for s in self.sizes):
            raise ValueError(f"sizes must be fractions of the image side in (0, 1], got {self.sizes}")
        for name, (low, high), top in (
            ("aspect", aspect, 1.0),
            ("blob_amplitude", blob_amplitude, 1.0),
            ("blur_sigma", blur_sigma, math.inf),
            ("contrast_gain", contrast_gain, 1.0),
            ("patch_blend", patch_blend, 1.0),
        ):
            if not 0.0 < low <= high <= top:
                raise ValueError(f"{name} must be a range (low, high) with 0 < low <= high <= {top}, got {(low, high)}")
        self.aspect = (float(aspect[0]), float(aspect[1]))
        self.blob_amplitude = (float(blob_amplitude[0]), float(blob_amplitude[1]))
        self.blur_sigma = (float(blur_sigma[0]), float(blur_sigma[1]))
        self.contrast_gain = (float(contrast_gain[0]), float(contrast_gain[1]))
        self.foreground_threshold = float(foreground_threshold)
        self.min_change = float(min_change)
        self.min_mask_fraction = float(min_mask_fraction)
        self.max_tries = max(1, int(max_tries))
        self.patch_blend = (float(patch_blend[0]), float(patch_blend[1]))
        self.donors = None if donors is None else convert_to_tensor(donors, dtype=torch.float32, track_meta=False, device="cpu")
        if "patch" in self.families and (self.donors is None or self.donors.ndim != 4 or self.donors.shape[0] == 0):
            raise ValueError("the 'patch' family needs donors: a non-empty [D, C, H, W] batch of normal images")
        self.params: dict | None = None

    def _draw(self, img: torch.Tensor) -> dict:
        """Draw the parameters of one region for the float image ``img`` ``[C, H, W]`` (from ``self.R``)."""
        height, width = img.shape[1:]
        family = self.families[self.R.randint(len(self.families))]
        size = self.sizes[self.R.randint(len(self.sizes))]
        semi_major = max(1.5, size * min(height, width) / 2.0)
        semi_minor = max(1.0, semi_major * self.R.uniform(*self.aspect))
        angle = self.R.uniform(0.0, math.pi)
        foreground = torch.nonzero(img.mean(dim=0) > self.foreground_threshold)
        if len(foreground):
            center = [float(v) for v in foreground[self.R.randint(len(foreground))]]
        else:
            center = [self.R.uniform(0, height - 1), self.R.uniform(0, width - 1)]
        params = {"family": family, "size": size, "center": center, "semi_axes": [semi_major, semi_minor], "angle": angle}
        if family == "blob":
            params["amplitude"] = (1.0 if self.R.rand() < 0.5 else -1.0) * self.R.uniform(*self.blob_amplitude)
        elif family == "blur":
            params["sigma"] = max(1.0, self.R.uniform(*self.blur_sigma) * 2.0 * semi_major)
        elif family == "patch":
            donor = int(self.R.randint(len(self.donors)))
            spots = torch.nonzero(self.donors[donor].mean(dim=0) > self.foreground_threshold)
            spot = [float(v) for v in spots[self.R.randint(len(spots))]] if len(spots) else center
            params.update(donor=donor, shift=[int(round(c - d)) for c, d in zip(center, spot)],
                          blend=self.R.uniform(*self.patch_blend))
        else:
            gain = self.R.uniform(*self.contrast_gain)
            params["gain"] = gain if self.R.rand() < 0.5 else 1.0 / gain
        return params

    def randomize(self, img: NdarrayOrTensor) -> None:  # type: ignore[override]
        """Draw whether to apply and, if so, a region for ``img`` (redrawn while nearly invisible, see the class)."""
        self._draw_and_apply(convert_to_tensor(img, dtype=torch.float32, track_meta=False, device="cpu"))

    def _draw_and_apply(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        super().randomize(None)
        if not self._do_transform:
            self.params = None
            return x.clone(), torch.zeros((1, *x.shape[1:]), dtype=torch.bool)
        if x.ndim != 3:
            raise ValueError(f"expected a channel-first 2D image (C, H, W), got shape {tuple(x.shape)}")
        for _ in range(self.max_tries):
            self.params = self._draw(x)
            out, mask, support = self._apply(x, self.params)
            if mask.sum() >= self.min_mask_fraction * support.sum():
                break
        return out, mask

    def _apply(self, x: torch.Tensor, params: dict) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(anomalous image, mask [1, H, W] bool, ellipse [H, W] bool)`` for a float image ``x`` ``[C, H, W]``."""
        rho = _elliptical_radius(x.shape[1:], params["center"], params["semi_axes"], params["angle"]).to(x.device)
        support = rho < 1.0
        family = params["family"]
        if family == "blob":
            out = x + params["amplitude"] * _gaussian_profile(rho)
        else:
            window = _flat_top_window(rho)
            if family == "patch":
                donor = self.donors[params["donor"]].to(x.device)
                if donor.shape != x.shape:
                    raise ValueError(f"patch donors must have the image's shape {tuple(x.shape)}, got {tuple(donor.shape)}")
                shifted = torch.roll(donor, shifts=params["shift"], dims=(1, 2))
                out = x + params["blend"] * window * (shifted - x)
            elif family == "blur":
                sigma = params["sigma"]
                radius = min(int(math.ceil(3.0 * sigma)), min(x.shape[1:]) - 1)  # reflect padding needs radius < side
                blurred = gaussian_blur(x, [2 * radius + 1, 2 * radius + 1], [sigma, sigma])
                out = x + window * (blurred - x)
            else:
                mean = (x * window).sum(dim=(1, 2), keepdim=True) / window.sum().clamp(min=1e-6)
                out = x + window * (params["gain"] - 1.0) * (x - mean)
        out = torch.where(support, out.clamp(0.0, 1.0), x)
        mask = ((out - x).abs().amax(dim=0, keepdim=True) > self.min_change) & support
        return out, mask, support

    def __call__(self, img: NdarrayOrTensor, randomize: bool = True) -> tuple[NdarrayOrTensor, NdarrayOrTensor]:
        """
        Args:
            img: channel-first 2D floating-point image ``(C, H, W)`` with values in [0, 1].
            randomize: draw a new region first; False re-applies the last one (drawn for the same spatial shape).

        Returns:
            ``(anomalous_image, mask)``, the mask of shape ``(1, H, W)``.
        """
        x = convert_to_tensor(img, dtype=torch.float32, track_meta=False)
        if randomize:
            out, mask = self._draw_and_apply(x)
        elif self.params is None:
            out, mask = x.clone(), torch.zeros((1, *x.shape[1:]), dtype=torch.bool, device=x.device)
        else:
            out, mask, _ = self._apply(x, self.params)
        return convert_to_dst_type(out, img)[0], convert_to_dst_type(mask, img)[0]


class RandValidationAnomalyd(RandomizableTransform, MapTransform):
    """
    Dictionary-based version of :py:class:`RandValidationAnomaly`. The inputs under ``keys`` are left untouched; their
    anomalous copies go to the output keys (``key + output_postfix`` by default, e.g. ``"image"`` ->
    ``"image_anomaly"``) and the mask to ``mask_key``. All keys share the region (drawn on the first key's image), so
    they must share their spatial shape; the mask is the first key's.

    Args:
        keys: keys of the corresponding items to be transformed.
            See also: :py:class:`monai.transforms.compose.MapTransform`
        prob: probability of making an anomaly; otherwise the outputs are copies and the mask is all zeros.
        output_postfix: postfix of the output keys, used when ``output_keys`` is None.
        output_keys: explicit output keys, one per key.
        mask_key: key of the mask ``(1, H, W)``.
        families, sizes, aspect, blob_amplitude, blur_sigma, contrast_gain, foreground_threshold, min_change,
            min_mask_fraction, max_tries, patch_blend, donors: see :py:class:`RandValidationAnomaly`.
        allow_missing_keys: don't raise exception if key is missing.
    """

    backend = RandValidationAnomaly.backend

    def __init__(
        self,
        keys: KeysCollection,
        prob: float = 1.0,
        output_postfix: str = "_anomaly",
        output_keys: KeysCollection | None = None,
        mask_key: str = "anomaly_mask",
        families: Sequence[str] = LOCAL_FAMILIES,
        sizes: Sequence[float] = ANOMALY_SIZES,
        aspect: tuple[float, float] = (0.5, 1.0),
        blob_amplitude: tuple[float, float] = (0.1, 0.3),
        blur_sigma: tuple[float, float] = (0.15, 0.3),
        contrast_gain: tuple[float, float] = (0.3, 0.6),
        foreground_threshold: float = 0.05,
        min_change: float = 0.02,
        min_mask_fraction: float = 0.25,
        max_tries: int = 10,
        patch_blend: tuple[float, float] = (0.5, 1.0),
        donors: NdarrayOrTensor | None = None,
        allow_missing_keys: bool = False,
    ) -> None:
        MapTransform.__init__(self, keys, allow_missing_keys)
        RandomizableTransform.__init__(self, prob)
        self.output_keys = paired_output_keys(self.keys, output_keys, output_postfix, {"mask_key": mask_key})
        self.mask_key = mask_key
        self.anomaly = RandValidationAnomaly(
            prob=1.0,
            families=families,
            sizes=sizes,
            aspect=aspect,
            blob_amplitude=blob_amplitude,
            blur_sigma=blur_sigma,
            contrast_gain=contrast_gain,
            foreground_threshold=foreground_threshold,
            min_change=min_change,
            min_mask_fraction=min_mask_fraction,
            max_tries=max_tries,
            patch_blend=patch_blend,
            donors=donors,
        )

    def set_random_state(
        self, seed: int | None = None, state: np.random.RandomState | None = None
    ) -> RandValidationAnomalyd:
        super().set_random_state(seed, state)
        self.anomaly.set_random_state(seed, state)
        return self

    def __call__(self, data: Mapping[Hashable, NdarrayOrTensor]) -> dict[Hashable, NdarrayOrTensor]:
        d = dict(data)
        self.randomize(None)
        first_key: Hashable = self.first_key(d)
        if first_key == ():
            return d
        if self._do_transform:
            self.anomaly.randomize(d[first_key])
        else:
            self.anomaly.params = None  # a copy and an empty mask
        mask = None
        for key, out_key in self.key_iterator(d, self.output_keys):
            d[out_key], key_mask = self.anomaly(d[key], randomize=False)
            mask = key_mask if mask is None else mask
        d[self.mask_key] = mask
        return d


@dataclass
class SyntheticValidationSet:
    """A fixed label-free validation set: held-out normal images and synthetic anomalies made from them.

    Attributes:
        normals: ``[N, C, H, W]`` float32 normal images in [0, 1].
        anomalies: ``[M, C, H, W]`` float32 anomalous images.
        masks: ``[M, 1, H, W]`` bool, the changed pixels of each anomaly.
        families: family of each anomaly.
        sizes: size (fraction of the image side) of each anomaly.
        sources: index into ``normals`` of the image each anomaly was made from.
        seed: the seed the set was made with.
    """

    normals: torch.Tensor
    anomalies: torch.Tensor
    masks: torch.Tensor
    families: list[str] = field(default_factory=list)
    sizes: list[float] = field(default_factory=list)
    sources: list[int] = field(default_factory=list)
    seed: int = 0

    def fingerprint(self) -> str:
        """SHA-1 of the images, masks and anomaly labels: equal fingerprints mean identical validation sets."""
        h = hashlib.sha1()
        for t in (self.normals, self.anomalies, self.masks):
            h.update(str(tuple(t.shape)).encode())
            h.update(t.contiguous().numpy().tobytes())
        h.update(repr((self.families, self.sizes, self.sources)).encode())
        return h.hexdigest()

    def summary(self) -> dict:
        """JSON-ready description (counts per family and size, seed, fingerprint)."""
        return {
            "seed": int(self.seed),
            "n_normal": int(self.normals.shape[0]),
            "n_anomalous": int(self.anomalies.shape[0]),
            "image_size": list(self.normals.shape[-2:]),
            "families": {f: self.families.count(f) for f in sorted(set(self.families))},
            "sizes": {f"{s:g}": self.sizes.count(s) for s in sorted(set(self.sizes))},
            "mean_mask_fraction": float(self.masks.float().mean()) if self.masks.numel() else 0.0,
            "fingerprint": self.fingerprint(),
        }


def synthetic_validation_set(
    normals: NdarrayOrTensor | Sequence[NdarrayOrTensor],
    seed: int = 0,
    anomalies_per_normal: int = 3,
    families: Sequence[str] = LOCAL_FAMILIES,
    sizes: Sequence[float] = ANOMALY_SIZES,
    **anomaly_args,
) -> SyntheticValidationSet:
    """
    Build the label-free validation set from held-out normal images: the normals themselves plus
    ``anomalies_per_normal`` anomalies of each (:class:`RandValidationAnomaly`). The (family, size) combinations are
    dealt out in turn (normal ``i`` gets combinations ``i*k .. i*k+k-1`` of the family-fastest list), so every family
    and size is equally represented when ``N * k`` is a multiple of their number (with the defaults, ``k = 3``: every
    normal gets one anomaly of each family, the sizes rotate over the normals). All draws come from one
    ``np.random.RandomState(seed)``: the same normals and seed always give the same set.

    Args:
        normals: ``[N, C, H, W]`` array/tensor or a sequence of ``[C, H, W]`` images, values in [0, 1].
        seed: seed of the anomalies.
        anomalies_per_normal: anomalies made from each normal image.
        families: anomaly families (see ``ANOMALY_FAMILIES``).
        sizes: anomaly sizes (fractions of the image side).
        anomaly_args: further arguments of :class:`RandValidationAnomaly` (e.g. ``blob_amplitude``).

    Raises:
        ValueError: no images, images not ``[C, H, W]`` of one shape, or values outside [0, 1].
    """
    if isinstance(normals, (np.ndarray, torch.Tensor)):
        images = convert_to_tensor(normals, dtype=torch.float32, track_meta=False, device="cpu")
    else:
        images = torch.stack([convert_to_tensor(x, dtype=torch.float32, track_meta=False, device="cpu") for x in normals])
    if images.ndim != 4 or images.shape[0] == 0:
        raise ValueError(f"normals must be a non-empty [N, C, H, W] batch, got shape {tuple(images.shape)}")
    if not torch.isfinite(images).all() or images.min() < -1e-6 or images.max() > 1.0 + 1e-6:
        raise ValueError("normal images must have finite values in [0, 1] (the preprocessing's output range)")
    images = images.clamp(0.0, 1.0).contiguous()
    families, sizes = tuple(ensure_tuple(families)), tuple(float(s) for s in ensure_tuple(sizes))
    combos = [(families[j % len(families)], sizes[(j // len(families)) % len(sizes)]) for j in range(len(families) * len(sizes))]
    state = np.random.RandomState(seed)
    makers = {}
    if "patch" in families:
        anomaly_args.setdefault("donors", images)  # foreign patches from the other normals of the set
    for family, size in combos:
        makers[(family, size)] = RandValidationAnomaly(families=(family,), sizes=(size,), **anomaly_args)
        makers[(family, size)].set_random_state(state=state)  # one shared stream: the order of draws fixes the set
    anomalies, masks, fams, szs, sources = [], [], [], [], []
    for i in range(images.shape[0]):
        for c in range(int(anomalies_per_normal)):
            family, size = combos[(i * int(anomalies_per_normal) + c) % len(combos)]
            out, mask = makers[(family, size)](images[i])
            anomalies.append(out)
            masks.append(mask.bool())
            fams.append(family)
            szs.append(size)
            sources.append(i)
    shape = (0, *images.shape[1:])
    return SyntheticValidationSet(
        normals=images,
        anomalies=torch.stack(anomalies) if anomalies else torch.zeros(shape),
        masks=torch.stack(masks) if masks else torch.zeros((0, 1, *images.shape[2:]), dtype=torch.bool),
        families=fams,
        sizes=szs,
        sources=sources,
        seed=int(seed),
    )
