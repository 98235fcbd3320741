"""Figures: ROC curve, normal-vs-abnormal score histogram (paper Fig. 2) (matplotlib, Agg) and heatmap overlays (numpy +
Pillow: one per scored file, so no matplotlib figure each)."""

from __future__ import annotations

import functools
import os
import struct
import threading
import zlib

import numpy as np

__all__ = ["save_roc_curve", "save_score_histogram", "save_heatmap_overlay", "overlay_color_range", "overlay_title"]


def _plt():
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    return plt


def _prepare(path: str) -> str:
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    return path


def save_roc_curve(labels, scores, path: str, title: str = "SCRD ROC") -> str:
    """ROC curve PNG with the AUROC in the legend."""
    from sklearn.metrics import roc_auc_score, roc_curve

    plt = _plt()
    y, s = np.asarray(labels).astype(int), np.asarray(scores, dtype=float)
    fpr, tpr, _ = roc_curve(y, s)
    auc = roc_auc_score(y, s)
    fig, ax = plt.subplots(figsize=(4.5, 4.5), dpi=100)
    ax.plot(fpr, tpr, lw=2, label=f"AUROC = {auc:.3f}")
    ax.plot([0, 1], [0, 1], "k--", lw=1)
    ax.set(xlabel="false positive rate", ylabel="true positive rate", title=title, xlim=(0, 1), ylim=(0, 1.01))
    ax.legend(loc="lower right")
    fig.tight_layout()
    fig.savefig(_prepare(path))
    plt.close(fig)
    return path


def save_score_histogram(labels, scores, path: str, threshold: float | None = None, title: str = "Anomaly scores") -> str:
    """Histogram of the image scores of normal (0) and abnormal (1) images, optionally with a threshold line."""
    plt = _plt()
    y, s = np.asarray(labels).astype(int), np.asarray(scores, dtype=float)
    bins = np.linspace(s.min(), s.max() if s.max() > s.min() else s.min() + 1e-6, 30)
    fig, ax = plt.subplots(figsize=(5.5, 4), dpi=100)
    ax.hist(s[y == 0], bins=bins, alpha=0.6, color="tab:blue", label=f"normal (n={int((y == 0).sum())})", density=True)
    ax.hist(s[y == 1], bins=bins, alpha=0.6, color="tab:red", label=f"abnormal (n={int((y == 1).sum())})", density=True)
    if threshold is not None and np.isfinite(threshold):
        ax.axvline(threshold, color="k", ls="--", lw=1, label=f"threshold {threshold:.4g}")
    ax.set(xlabel="anomaly score", ylabel="density", title=title)
    ax.legend()
    fig.tight_layout()
    fig.savefig(_prepare(path))
    plt.close(fig)
    return path


OVERLAY_CMAP = "coolwarm"  # diverging: blue below the threshold, white-grey at it, red above


def overlay_color_range(threshold: float | None) -> tuple[float, float] | None:
    """The colour range ``(vmin, vmax)`` shared by every heatmap overlay of a run with a decision threshold ``t``
    (None without one, or for a non-finite ``t``: each overlay then uses its map's own min..max).

    Rule: ``vmin = t - span``, ``vmax = t + span`` with ``span = |t|`` (1 when ``t == 0``). So the threshold sits at
    the centre of the diverging colour map: map values below it are cool (blue), above it warm (red), values at or
    below ``vmin`` the deepest blue and at or above ``vmax`` the deepest red (the colour bar's arrows). For the
    usual ``t > 0`` this is ``0 .. 2 t``: an uncalibrated map (``1 - cos`` distances) is never below 0, so red means
    "above the threshold" and full red "at least twice the threshold". A calibrated map (per-scale z-scores) can go
    below 0: those pixels clip to the deepest blue. The map values are on the image-score scale because the image
    score is a mean over (part of) the map: with the ``mean`` reduction a normal image can still have warm spots (its
    mean stays below ``t``), with ``top<P>%`` only small ones, with ``max`` none (only an anomalous image has pixels
    above ``t``).
    """
    if threshold is None:
        return None
    t = float(threshold)
    if not np.isfinite(t):
        return None
    span = abs(t) if t != 0 else 1.0
    return t - span, t + span


def overlay_title(score: float | None = None, threshold: float | None = None, slice_index: int | None = None,
                  num_slices: int | None = None, shared_scale: bool | None = None) -> str:
    """The title of a heatmap overlay: the score and decision, for a volume the slice shown (``slice k of N (highest
    score)``, ``k`` the 0-based index along the volume's slice axis) and, without a threshold, that the colours are the
    map's own scale (not comparable between images). ``shared_scale``: whether the colours are on a run-wide scale
    (default: when there is a ``threshold``)."""
    if shared_scale is None:
        shared_scale = threshold is not None
    parts = []
    if score is not None:
        text = f"score {score:.4g}"
        if threshold is not None:
            text += (" >= " if score >= threshold else " < ") + f"threshold {threshold:.4g}"
            text += " (anomalous)" if score >= threshold else " (normal)"
        parts.append(text)
    if slice_index is not None:
        parts.append(f"slice {int(slice_index)} of {int(num_slices)} (highest score)" if num_slices is not None
                     else f"slice {int(slice_index)} (highest score)")
    line = "  |  ".join(parts)
    if not shared_scale:
        line += ("\n" if line else "") + "own colour scale: no threshold"
    return line


# ----------------------------------------------------------------------------------------------- heatmap overlays
# Drawn with numpy + Pillow, not a matplotlib figure: a figure per image (axes, tight_layout, Agg draw, PNG) costs
# ~200 ms, while a batch job writes one overlay per scored file. So the panels, the colour bar and its ticks are laid
# out by hand below; matplotlib only lends its colour map (as a LUT) and its DejaVu font.
_MIN_PANEL = 256  # small images are upscaled to this (longest side) so the overlay stays readable
_MARGIN, _GAP, _BAR_GAP, _BAR_W, _TICK = 10, 16, 10, 14, 4  # px
_TITLE_PX, _LABEL_PX, _TICK_PX = 14, 12, 11  # font sizes (px)
_lock = threading.Lock()


@functools.cache
def _cmap_lut(name: str = OVERLAY_CMAP) -> np.ndarray:
    """The colour map as a read-only [256, 3] uint8 LUT (matplotlib's own colours, looked up once)."""
    import matplotlib

    with _lock:  # matplotlib's registry is global state: look it up from one thread at a time
        lut = np.ascontiguousarray(matplotlib.colormaps[name].resampled(256)(np.arange(256), bytes=True)[:, :3])
    lut.flags.writeable = False
    return lut


@functools.cache
def _blend_luts(name: str = OVERLAY_CMAP) -> tuple[np.ndarray, np.ndarray]:
    """Pixels as 3-byte (``"V3"``) items, so one ``np.take`` writes a panel's RGB straight into the canvas (numpy's
    fancy indexing of [N, 3] rows is ~5x slower): ``blend[i * 128 + g]`` is colour ``i`` at alpha 0.5 over gray
    level ``2 g`` (half of each, rounded down), ``gray[v]`` is ``(v, v, v)``."""
    half = _cmap_lut(name) >> 1
    blend = (half[:, None, :] + np.arange(128, dtype=np.uint8)[None, :, None]).reshape(-1, 3)
    gray = np.repeat(np.arange(256, dtype=np.uint8)[:, None], 3, axis=1)
    return np.ascontiguousarray(blend).view("V3").ravel(), gray.view("V3").ravel()


@functools.cache
def _font(size: int):
    """DejaVu Sans (bundled with matplotlib) at ``size`` px; Pillow's default font when it cannot be loaded."""
    from PIL import ImageFont

    try:
        from matplotlib import font_manager

        with _lock:
            path = font_manager.findfont("DejaVu Sans")
        return ImageFont.truetype(path, size)
    except Exception:  # noqa: BLE001 - no matplotlib font: still draw the text
        return ImageFont.load_default()


@functools.lru_cache(maxsize=256)
def _text_mask(text: str, size: int) -> np.ndarray:
    """One line of ``text`` rendered as an alpha mask [h, w] (uint8), cached: the labels and ticks of a run repeat."""
    from PIL import Image, ImageDraw

    font = _font(size)
    box = font.getbbox(text or " ")
    asc = font.getbbox("Ag")[3]
    im = Image.new("L", (max(1, int(box[2]) + 1), max(int(box[3]), asc) + 2), 0)
    ImageDraw.Draw(im).text((0, 0), text, fill=255, font=font)
    mask = np.asarray(im)
    mask.flags.writeable = False
    return mask


def _blit_text(canvas: np.ndarray, text: str, size: int, x: int, y: int, center: bool = False) -> None:
    """Draw black ``text`` on the RGB ``canvas`` at ``(x, y)`` (top-left, or top-centre with ``center``), clipped."""
    m = _text_mask(text, size)
    h, w = m.shape
    if center:
        x -= w // 2
    x0, y0 = max(0, x), max(0, y)
    x1, y1 = min(canvas.shape[1], x + w), min(canvas.shape[0], y + h)
    if x1 <= x0 or y1 <= y0:
        return
    a = m[y0 - y:y1 - y, x0 - x:x1 - x].astype(np.uint16)[..., None]
    region = canvas[y0:y1, x0:x1]
    region[:] = (region.astype(np.uint16) * (255 - a) // 255).astype(np.uint8)


def _panel_size(h: int, w: int, max_size: int) -> tuple[int, int]:
    """``(ph, pw)``: the image's aspect with the longest side in ``[min(_MIN_PANEL, max_size), max_size]``."""
    longest = max(h, w, 1)
    target = min(max_size, max(longest, min(_MIN_PANEL, max_size)))
    s = target / longest
    return max(1, round(h * s)), max(1, round(w * s))


def _decimate(a: np.ndarray, ph: int, pw: int) -> np.ndarray:
    """Every k-th pixel of ``a`` ([..., H, W]) down to about twice the panel size: cheap (an 8000 x 8000 input is
    never converted or filtered whole), and the antialiased resize that follows smooths what is left."""
    sy, sx = max(1, a.shape[-2] // (2 * ph)), max(1, a.shape[-1] // (2 * pw))
    return a[..., ::sy, ::sx] if sy > 1 or sx > 1 else a


def _resize(a: np.ndarray, ph: int, pw: int, nearest_up: bool = False) -> np.ndarray:
    """A 2D float32 array resampled to ``(ph, pw)`` (PIL "F" mode: bilinear, antialiased when shrinking; nearest
    when growing with ``nearest_up``)."""
    if a.shape == (ph, pw):
        return a
    from PIL import Image

    method = Image.NEAREST if nearest_up and (ph > a.shape[0] or pw > a.shape[1]) else Image.BILINEAR
    return np.asarray(Image.fromarray(np.ascontiguousarray(a, dtype=np.float32)).resize((pw, ph), method))


def _finite_range(a: np.ndarray) -> tuple[float, float, bool] | None:
    """``(min, max, all_finite)`` of the finite values of ``a`` (one pass when all are finite); None when none is."""
    lo, hi = float(a.min()), float(a.max())
    if np.isfinite(lo) and np.isfinite(hi):
        return lo, hi, True
    finite = a[np.isfinite(a)]
    return (float(finite.min()), float(finite.max()), False) if finite.size else None


def _gray(img: np.ndarray) -> np.ndarray:
    """uint8 grayscale of the image's own min..max (as matplotlib's ``cmap="gray"``: a constant image is black;
    NaN / inf black)."""
    rng = _finite_range(img)
    if rng is None or not rng[1] > rng[0]:
        return np.zeros(img.shape, np.uint8)
    g = (img - np.float32(rng[0])) * np.float32(255.0 / (rng[1] - rng[0])) + np.float32(0.5)
    if not rng[2]:
        g[~np.isfinite(g)] = 0
    np.clip(g, 0, 255, out=g)
    return g.astype(np.uint8)


@functools.lru_cache(maxsize=32)
def _colour_bar(ph: int, lo: float, hi: float, t: float | None, ext_lo: bool, ext_hi: bool) -> tuple[np.ndarray, int]:
    """The colour bar with its ticks and labels as an RGB block ``[ph + 2 pad, w, 3]`` (top ``pad`` px above the
    panel), and ``pad``: matplotlib's ``fig.colorbar`` (ticks at lo / threshold / hi, a black line at the threshold,
    a triangle at an end whose map values lie beyond the range) drawn by hand, cached as a run shares its range."""
    from PIL import Image, ImageDraw

    lut = _cmap_lut()
    ticks = [(lo, f"{lo:.3g}"), (hi, f"{hi:.3g}")]
    if t is not None and lo <= t <= hi:
        ticks.insert(1, (t, f"threshold {t:.3g}"))
    masks = [_text_mask(label, _TICK_PX) for _, label in ticks]
    pad = max(m.shape[0] for m in masks) // 2 + 1
    width = _BAR_W + _TICK + 3 + max(m.shape[1] for m in masks)
    block = np.full((ph + 2 * pad, width, 3), 255, np.uint8)
    tri = min(_BAR_W, ph // 4)
    y0, y1 = pad + (tri if ext_hi else 0), pad + ph - (tri if ext_lo else 0)
    bar_h = max(1, y1 - y0)
    rows = np.floor((1.0 - (np.arange(bar_h) + 0.5) / bar_h) * 256).clip(0, 255).astype(np.intp)
    block[y0:y0 + bar_h, :_BAR_W] = lut[rows][:, None, :]

    def y_of(v: float) -> int:
        return round(y0 + (hi - v) / (hi - lo) * (bar_h - 1))

    if t is not None and lo <= t <= hi:
        yt = y_of(t)
        block[max(y0, yt - 1):min(y0 + bar_h, yt + 1), :_BAR_W] = 0
    im = Image.fromarray(block)
    draw = ImageDraw.Draw(im)
    xb = _BAR_W - 1
    if ext_hi:
        draw.polygon([(0, y0 - 1), (xb, y0 - 1), (xb / 2, pad)], fill=tuple(int(c) for c in lut[255]), outline=(0, 0, 0))
    if ext_lo:
        draw.polygon([(0, y1), (xb, y1), (xb / 2, pad + ph - 1)], fill=tuple(int(c) for c in lut[0]), outline=(0, 0, 0))
    draw.rectangle([0, y0, xb, y0 + bar_h - 1], outline=(0, 0, 0))
    for v, _ in ticks:
        draw.line([(xb + 1, y_of(v)), (xb + _TICK, y_of(v))], fill=(0, 0, 0))
    block = np.array(im)
    for (v, label), m in zip(ticks, masks):
        _blit_text(block, label, _TICK_PX, xb + _TICK + 3, min(max(y_of(v) - m.shape[0] // 2, 0), block.shape[0] - m.shape[0]))
    block.flags.writeable = False
    return block, pad


def _write_png(path: str, rgb: np.ndarray) -> None:
    """Write an RGB uint8 array as PNG. By hand (zlib) because Pillow's encoder scores four PNG row filters on every
    row (adaptive, as libpng) in C loops, which costs more than drawing the overlay: here one "Up" filter (a numpy
    row difference) and zlib level 1 with run-length matching (Z_RLE): 2-3x faster, files ~1.3x larger."""
    h, w, _ = rgb.shape
    flat = rgb.reshape(h, w * 3)
    raw = np.empty((h, w * 3 + 1), np.uint8)
    raw[:, 0] = 2  # filter "Up": each byte minus the one above (the row above the first is zeros)
    raw[0, 1:] = flat[0]
    np.subtract(flat[1:], flat[:-1], out=raw[1:, 1:])
    z = zlib.compressobj(1, zlib.DEFLATED, 15, 9, zlib.Z_RLE)
    data = z.compress(raw) + z.flush()

    def chunk(tag: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + tag + body + struct.pack(">I", zlib.crc32(body, zlib.crc32(tag)))

    with open(path, "wb") as f:
        f.write(b"\x89PNG\r\n\x1a\n")
        f.write(chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0)))
        f.write(chunk(b"IDAT", data))
        f.write(chunk(b"IEND", b""))


def save_heatmap_overlay(image, anomaly_map, path: str, score: float | None = None, threshold: float | None = None,
                         vmin: float | None = None, vmax: float | None = None, slice_index: int | None = None,
                         num_slices: int | None = None, title: str | None = None, max_size: int = 512) -> str:
    """Image (grayscale, [H, W] or [C, H, W]) with the anomaly map overlaid as a heatmap (``coolwarm`` at alpha
    0.5), next to the image alone, with a colour bar and a title; written as PNG with numpy + Pillow (no matplotlib
    figure, a few ms); returns ``path``.

    Args:
        image: the image, any size (a huge one is decimated: it is never converted or filtered whole).
        anomaly_map: the map, 2D at any size (e.g. the model's): resampled straight to the panel size.
        path: the PNG.
        score, threshold: shown in the title; ``threshold`` also anchors the colour range and is marked on the
            colour bar (a black line and a tick).
        vmin, vmax: the colour range when given; else, with a ``threshold``, :func:`overlay_color_range` (the same
            for every image of a run: blue below the threshold, red above); else the map's own min..max (said in the
            title: colours are then not comparable between images).
        slice_index, num_slices: the volume slice shown (in the title, see :func:`overlay_title`).
        title: replaces the title.
        max_size: each panel's longest side at most (px, aspect kept); small images are upscaled to
            ``min(256, max_size)``.
    """
    img = np.asarray(image)
    amap = np.asarray(anomaly_map)
    while amap.ndim > 2 and 1 in amap.shape:  # [1, 1, h, w], NIfTI's (X, Y, 1): 2D (a 1 x 1 map stays one)
        amap = amap.squeeze(axis=amap.shape.index(1))
    if img.ndim not in (2, 3) or amap.ndim != 2:
        raise ValueError(f"{path}: an overlay needs an [H, W] or [C, H, W] image and a 2D map, not "
                         f"{tuple(img.shape)} and {tuple(np.shape(anomaly_map))}")
    has_threshold = threshold is not None and bool(np.isfinite(threshold))
    shared = overlay_color_range(threshold) if has_threshold else None
    own_scale = shared is None and vmin is None and vmax is None
    m_range = _finite_range(amap) or (0.0, 0.0, False)
    lo = float(vmin) if vmin is not None else (shared[0] if shared else m_range[0])
    hi = float(vmax) if vmax is not None else (shared[1] if shared else m_range[1])
    if not hi > lo:
        hi = lo + 1e-6
    ph, pw = _panel_size(img.shape[-2], img.shape[-1], int(max_size))

    small = _decimate(img, ph, pw).astype(np.float32)
    if small.ndim == 3:
        small = small.mean(axis=0)
    small = _resize(small, ph, pw, nearest_up=True)
    gray = _gray(small)
    mpanel = _resize(_decimate(amap, ph, pw).astype(np.float32), ph, pw)
    x = (mpanel - np.float32(lo)) * np.float32(256.0 / (hi - lo))  # matplotlib's Normalize + 256-colour LUT index
    bad_map = None if m_range[2] else ~np.isfinite(mpanel)
    if bad_map is not None:
        x[bad_map] = 0
    np.clip(x, 0, 255, out=x)
    key = (x.astype(np.uint16) << 7) | (gray >> 1)  # colour index and half gray level -> the blended pixel

    # layout (px): title lines, panel labels, [input | anomaly map | colour bar with tick labels]
    text = title if title is not None else overlay_title(score, threshold if has_threshold else None, slice_index,
                                                         num_slices, shared_scale=not own_scale)
    lines = text.split("\n") if text else []
    line_h = _text_mask("Ag", _TITLE_PX).shape[0] + 1
    label_h = _text_mask("Ag", _LABEL_PX).shape[0] + 2
    top = _MARGIN + (len(lines) * line_h + 4 if lines else 0) + label_h
    bar, pad = _colour_bar(ph, lo, hi, float(threshold) if has_threshold else None,
                           m_range[0] < lo, m_range[1] > hi)
    content = 2 * pw + _GAP + _BAR_GAP + bar.shape[1]
    width = max(content, max((_text_mask(ln, _TITLE_PX).shape[1] for ln in lines), default=0)) + 2 * _MARGIN
    x_img = (width - content) // 2  # centred under a wider title
    x_map = x_img + pw + _GAP
    x_bar = x_map + pw + _BAR_GAP
    height = top + ph + max(_MARGIN, pad)
    canvas = np.full((height, width, 3), 255, np.uint8)
    pixels = canvas.view("V3")[..., 0]  # [height, width] 3-byte pixels: views of the canvas
    blend_lut, gray_lut = _blend_luts()
    np.take(gray_lut, gray, out=pixels[top:top + ph, x_img:x_img + pw], mode="clip")
    np.take(blend_lut, key, out=pixels[top:top + ph, x_map:x_map + pw], mode="clip")  # alpha 0.5 blend
    if bad_map is not None:  # matplotlib draws NaN map values transparent: the image shows through
        canvas[top:top + ph, x_map:x_map + pw][bad_map] = gray[bad_map][:, None]
    canvas[top - pad:top - pad + bar.shape[0], x_bar:x_bar + bar.shape[1]] = bar
    for x0, label in ((x_img, "input"), (x_map, "anomaly map")):
        _blit_text(canvas, label, _LABEL_PX, x0 + pw // 2, top - label_h, center=True)
    for i, ln in enumerate(lines):
        _blit_text(canvas, ln, _TITLE_PX, width // 2, _MARGIN + i * line_h, center=True)
    _prepare(path)
    if str(path).lower().endswith(".png"):
        _write_png(path, canvas)
    else:
        from PIL import Image

        Image.fromarray(canvas).save(path)
    return path
