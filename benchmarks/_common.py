"""Helpers shared by ``benchmarks/quality.py`` and ``benchmarks/speed.py``: paths, machine/version info, the
preprocessed-image cache of the Brain Tumor split, and JSON writing."""

from __future__ import annotations

import csv
import datetime
import hashlib
import json
import os
import platform
import resource
import subprocess
import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))  # run from a checkout without installing

RESULTS_DIR = REPO / "benchmarks" / "results"
DEFAULT_DATA_ROOT = REPO.parent / "shared" / "data" / "brain_tumor"
DEFAULT_CACHE_DIR = Path(os.environ.get("MONAI_SCRD_CACHE", Path.home() / ".cache" / "monai_scrd"))
SPLIT_JSON = "splits/MedIAnomaly_BrainTumor_data.json"
GROUPS = ("train/normal", "test/normal", "test/glioma", "test/meningioma")


def code_commit() -> str | None:
    """The repository's commit, with ``+changes`` when tracked files differ from it (None outside a git checkout)."""
    try:
        rev = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True, check=True)
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=REPO, capture_output=True,
                               text=True, check=True)
    except (OSError, subprocess.CalledProcessError):
        return None
    return rev.stdout.strip() + ("+changes" if dirty.stdout.strip() else "")


def machine_info() -> dict:
    """Machine and library versions, recorded in every result JSON."""
    import monai
    import torch

    info = {
        "date_utc": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "monai": monai.__version__,
        "numpy": np.__version__,
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "loadavg": list(os.getloadavg()),
        "commit": code_commit(),
    }
    for mod in ("timm", "numba", "opensimplex", "sklearn", "ignite"):
        try:
            info[mod] = __import__(mod).__version__
        except Exception:  # pragma: no cover - optional
            info[mod] = None
    try:
        with open("/proc/cpuinfo") as f:
            names = [ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name")]
        info["cpu_model"] = names[0] if names else None
    except OSError:  # pragma: no cover
        info["cpu_model"] = None
    return info


def _proc_status_kib(field: str) -> float | None:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return float(line.split()[1])
    except OSError:  # pragma: no cover - not Linux
        return None
    return None


def peak_rss_mib() -> float:
    """Peak resident set size of this process so far (MiB): ``VmHWM`` from /proc (per address space, so not
    inherited from the parent process, unlike getrusage's ``ru_maxrss`` on Linux), else getrusage."""
    kib = _proc_status_kib("VmHWM")
    return (kib if kib is not None else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) / 1024.0


def current_rss_mib() -> float:
    """Current resident set size (MiB, ``VmRSS``; falls back to the peak)."""
    kib = _proc_status_kib("VmRSS")
    return kib / 1024.0 if kib is not None else peak_rss_mib()


def write_json(path: Path, data: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(data, indent=1, sort_keys=False))
    tmp.replace(path)  # atomic: partial results are always valid JSON


def read_split(data_root: Path) -> dict[str, list[str]]:
    """Relative paths (e.g. ``train/normal/x.jpg``) per group, from the official MedIAnomaly json."""
    data_root = Path(data_root)
    split = json.loads((data_root / SPLIT_JSON).read_text())
    on_disk = {g: {p.name for p in (data_root / g).iterdir()} for g in GROUPS if (data_root / g).is_dir()}

    def where(name: str, candidates: tuple[str, ...]) -> str:
        for g in candidates:
            if name in on_disk.get(g, ()):
                return f"{g}/{name}"
        raise FileNotFoundError(f"{name} of the split json is not under {candidates} in {data_root}")

    out = {g: [] for g in GROUPS}
    for name in split["train"]["0"]:
        out["train/normal"].append(where(name, ("train/normal",)))
    for name in split["test"]["0"]:
        out["test/normal"].append(where(name, ("test/normal",)))
    for name in split["test"]["1"]:
        rel = where(name, ("test/glioma", "test/meningioma"))
        out[rel.rsplit("/", 1)[0]].append(rel)
    return out


def duplicate_test_normals(data_root: Path) -> set[str]:
    """Test normals byte-identical to a training normal (``splits/exact_duplicates.csv``)."""
    dups: set[str] = set()
    with open(Path(data_root) / "splits" / "exact_duplicates.csv") as f:
        for row in csv.DictReader(f):
            paths = row["paths"].split(";")
            if any(p.startswith("train/") for p in paths):
                dups.update(p for p in paths if p.startswith("test/normal/"))
    return dups


def original_sizes(data_root: Path) -> dict[str, tuple[int, int, str]]:
    """``path -> (width, height, PIL mode)`` from ``files.csv``."""
    with open(Path(data_root) / "files.csv") as f:
        return {r["path"]: (int(r["width"]), int(r["height"]), r["mode"]) for r in csv.DictReader(f)}


def load_cached_images(data_root: Path, paths: list[str], image_size: int, cache_dir: Path) -> np.ndarray:
    """Preprocessed images ``uint8 [N, S, S]`` (grayscale, resized, min-max scaled to [0, 1] then x255), computed
    once with ``monai_scrd.data.transforms.preprocessing_transforms`` and cached as ``.npy`` keyed by the file list and size."""
    # keyed by the file list, the size and the data set's files.csv (which holds every file's sha1), not by the folder's
    # location, so that a cache made here can travel with the benchmark to another machine
    listing = Path(data_root) / "files.csv"
    fingerprint = hashlib.sha1(listing.read_bytes()).hexdigest() if listing.is_file() else str(Path(data_root).resolve())
    key = hashlib.sha1(("\n".join(paths) + f"|{image_size}|{fingerprint}").encode()).hexdigest()[:16]
    cache = Path(cache_dir) / f"brain_tumor_{image_size}px_{len(paths)}_{key}.npy"
    if cache.exists():
        arr = np.load(cache)
        if arr.shape == (len(paths), image_size, image_size):
            return arr
    from monai_scrd.data.transforms import preprocessing_transforms

    tf = preprocessing_transforms(keys="image", image_size=image_size)
    arr = np.empty((len(paths), image_size, image_size), dtype=np.uint8)
    for i, rel in enumerate(paths):
        img = tf({"image": str(Path(data_root) / rel)})["image"]
        arr[i] = np.clip(np.rint(np.asarray(img[0]) * 255.0), 0, 255).astype(np.uint8)
    cache.parent.mkdir(parents=True, exist_ok=True)
    np.save(cache.with_suffix(".tmp.npy"), arr)
    os.replace(cache.with_suffix(".tmp.npy"), cache)
    return arr
