"""Speed of the SCRD synthetic-anomaly transform.

Prints the cold (first-call, incl. JIT compile or numba cache load) and warm median/p90 time per
``RandSimplexNoised`` call on a 3xSIZExSIZE float32 tensor, Gaussian mode, and plain opensimplex
(``noise2`` called per pixel from a Python loop, as a naive implementation would do, with numba's JIT
disabled and enabled) on one 32x32 box.

    python benchmarks/noise_speed.py --calls 200 --size 256
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

import numba
import numpy as np
import opensimplex
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing


_PLAIN_OPENSIMPLEX_LOOP = """
import time, numpy as np, opensimplex
opensimplex.seed(3)
opensimplex.noise2(0.5, 0.5)  # JIT compile / cache load outside the timing
times = []
for _ in range({calls}):
    t0 = time.perf_counter()
    field = np.zeros((32, 32))
    amp, freq = 1.0, 1 / 16
    for _ in range(6):
        for i in range(32):
            for j in range(32):
                field[i, j] += amp * opensimplex.noise2(i * freq, j * freq)
        amp, freq = amp * 0.6, freq * 2
    patch = np.repeat(field[None].astype(np.float32), 3, axis=0)
    times.append(time.perf_counter() - t0)
print(*times)
"""


def plain_opensimplex_times(calls: int, disable_jit: bool) -> list[float]:
    """Seconds per 6-octave 32x32 box from plain ``opensimplex.noise2`` in a per-pixel Python loop, in a fresh
    process (``NUMBA_DISABLE_JIT`` must be set before numba is imported)."""
    env = {**os.environ, **({"NUMBA_DISABLE_JIT": "1"} if disable_jit else {})}
    res = subprocess.run([sys.executable, "-c", _PLAIN_OPENSIMPLEX_LOOP.format(calls=calls)], env=env, capture_output=True, text=True)
    if res.returncode:
        raise RuntimeError(res.stderr)
    return [float(t) for t in res.stdout.split()]


def _stats(times_s: list[float]) -> str:
    ms = np.asarray(times_s) * 1e3
    return f"median {np.median(ms):.3f} ms, p90 {np.percentile(ms, 90):.3f} ms over {len(ms)} calls"


def _time_calls(fn, calls: int) -> list[float]:
    times = []
    for _ in range(calls):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--calls", type=int, default=200, help="timed calls after warm-up")
    parser.add_argument("--size", type=int, default=256, help="image side in pixels")
    parser.add_argument("--python-calls", type=int, default=3, help="calls of the pure-Python opensimplex loop")
    args = parser.parse_args()

    print("command:", " ".join([sys.executable.rsplit("/", 1)[-1], *sys.argv]))
    print(f"torch {torch.__version__}, numba {numba.__version__}, opensimplex {opensimplex.__version__}, "
          f"numpy {np.__version__}, torch threads {torch.get_num_threads()}")

    t0 = time.perf_counter()
    from monai_scrd.transforms import RandSimplexNoised  # noqa: E402  (import time is part of "cold")

    t1 = time.perf_counter()
    transform = RandSimplexNoised(keys="image").set_random_state(0)  # __init__ runs warmup() (JIT)
    t2 = time.perf_counter()
    data = {"image": torch.rand(3, args.size, args.size, dtype=torch.float32)}
    transform(data)
    t3 = time.perf_counter()
    print(f"cold: import {1e3 * (t1 - t0):.0f} ms, construction incl. JIT warm-up {1e3 * (t2 - t1):.0f} ms, "
          f"first call {1e3 * (t3 - t2):.3f} ms")

    for _ in range(20):
        transform(data)
    print(f"simplex  RandSimplexNoised 3x{args.size}x{args.size}: {_stats(_time_calls(lambda: transform(data), args.calls))}")

    gaussian = RandSimplexNoised(keys="image", noise_type="gaussian").set_random_state(0)
    for _ in range(20):
        gaussian(data)
    print(f"gaussian RandSimplexNoised 3x{args.size}x{args.size}: {_stats(_time_calls(lambda: gaussian(data), args.calls))}")

    # baselines: plain opensimplex, per-pixel Python loop over one 32x32 box, 6-octave fractal sum (the
    # transform's work for its largest 256 px box), noise shared by the 3 channels of a 3x32x32 patch
    for label, disable_jit in [("without JIT (NUMBA_DISABLE_JIT=1)", True), ("with JIT per point", False)]:
        times = plain_opensimplex_times(args.python_calls, disable_jit)
        print(f"opensimplex.noise2 Python pixel loop {label}, 6-octave 32x32 box: {_stats(times)}")


if __name__ == "__main__":
    main()
