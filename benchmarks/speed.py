"""Speed benchmark on the current machine (CPU unless ``--device cuda``).

Measures, in one run:
- noise synthesis, ms per sample: our ``RandSimplexNoised`` (simplex and Gaussian) on a 3xSxS image vs plain
  opensimplex (``noise2`` per pixel, 6 octaves, one 32x32 box) with numba's JIT disabled;
- training iterations/s and images/s of RD4AD vs SCRD (Algorithm 2 loss) at 128 and 256 px with the
  EfficientNet-Lite0 (ImageNet weights) and ResNet-18 (RANDOM init: no weights offline; speed only) teachers,
  with the share of wall time spent waiting for the data loader (in-memory preprocessed images + noise synthesis
  in the loader, ``num_workers=0``), plus the one-off JPEG decode + preprocessing cost per file;
- inference images/s and peak RSS (and CUDA peak memory on GPU) at batch 1 and 16 through the one scorer's forward
  (``monai_scrd.scoring.Scorer.forward``: channels-last inputs, AMP on CUDA; anomaly map + image score included) per
  backend (``--backends``, default: every installed one: PyTorch eager, ONNX Runtime, OpenVINO), each configuration
  in a fresh subprocess so that RSS peaks do not mix, the configurations interleaved over ``--rounds`` rounds (best
  and median images/s per row, speed-up of each compiled backend over PyTorch at the same batch; the ONNX export is
  done before timing, its seconds recorded apart; the backend actually used is recorded, so a fall-back to PyTorch
  shows);
- images/s and peak memory per entry point and backend (``--entry-backends``, default PyTorch and the default CPU
  backend) on the same image files (decode + preprocessing + scoring + outputs): the scorer itself, the bundle's
  evaluation (MONAI evaluator over a ScoringDataset loader), the bundle's inference (scores.csv, no figures), the
  MLflow pyfunc (saved and loaded with MLflow; ``SCRD_BACKEND``) and, when its venv exists, the MONAI Label server
  (one HTTP request per image; ``--conf backend``), each in a fresh process;
- stages: ms per image of decode (``read_medical_image``), preprocess (the scorer's transform), model
  (``Scorer.forward``, batch ``--entry-batch``) and write (``ScoreWriter``: NIfTI maps, heatmap overlays, scores.csv),
  per backend, on the entry-point files, in one process per backend;
- pipeline: ``python -m monai.bundle run`` of the bundle's inference config with its default settings (heatmaps on)
  at 256 px on ``--pipeline-images`` files, wall clock and peak RSS of that process, for this code and, with
  ``--compare-ref REV``, for the code of git revision REV (its tree and its inference.json) on the same files;
- large: one 8000x8000 PNG scored through ``AnomalyInference`` (heatmaps and NIfTI maps on, default backend): seconds
  and peak RSS of the scoring process;
- engine overhead: MONAI ``SupervisedTrainer`` + the bundle's ``SCRDTrainStep`` vs a plain PyTorch loop with the
  same model, data loader and batch, interleaved (plain, engine, plain, engine) to share the machine's load.

Timings on a shared machine fluctuate: every measurement records ``os.getloadavg()``.

    python benchmarks/speed.py                 # default run, < ~10 min on 2 CPU cores
    python benchmarks/speed.py --smoke         # seconds; used by tests/test_benchmarks.py
    python benchmarks/speed.py --device cuda --sections inference entry_points training   # GPU (results/speed/cuda/)
    python benchmarks/speed.py --sections inference entry_points stages pipeline large --compare-ref 3974d15

Each run writes its JSON (``results/speed/[cuda/]speed_<date>.json``) and regenerates ``results/speed/SPEED.md`` from
the latest CPU and the latest CUDA JSON (``--report`` only regenerates it).
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as C  # noqa: E402
from noise_speed import plain_opensimplex_times  # noqa: E402

import torch  # noqa: E402

from monai_scrd.losses import build_loss  # noqa: E402
from monai_scrd.networks import SCRD  # noqa: E402
from monai_scrd.scoring.backends import BACKENDS, installed_backends, resolve_backend  # noqa: E402

METHODS = {"rd4ad": dict(contrastive=False, scale_adaptive=False), "scrd": dict(contrastive=True, scale_adaptive=True)}
SECTIONS = ("noise", "preprocessing", "training", "inference", "entry_points", "stages", "pipeline", "large", "engine")
ENTRY_POINTS = ("scorer", "evaluation", "inference", "pyfunc", "monai_label")


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, default=None, help="JSON path (default benchmarks/results/speed/speed_<date>.json)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--sizes", nargs="+", type=int, default=[128, 256])
    p.add_argument("--backbones", nargs="+", default=["efficientnet_lite0", "resnet18"])
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--train-iters", type=int, default=5, help="timed training iterations per configuration")
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--infer-size", type=int, default=256)
    p.add_argument("--infer-batches", nargs="+", type=int, default=[1, 16])
    p.add_argument("--infer-images", type=int, default=32, help="images timed per inference configuration")
    p.add_argument("--engine-iters", type=int, default=16)
    p.add_argument("--engine-rounds", type=int, default=3)
    p.add_argument("--noise-calls", type=int, default=200)
    p.add_argument("--data-root", type=Path, default=C.DEFAULT_DATA_ROOT)
    p.add_argument("--smoke", action="store_true")
    p.add_argument("--entry-images", type=int, default=48, help="image files scored per entry point")
    p.add_argument("--entry-batch", type=int, default=16)
    p.add_argument("--infer-backbones", nargs="+", default=None,
                   help="teachers of the inference section (default efficientnet_lite0)")
    p.add_argument("--backends", nargs="+", default=None, choices=list(BACKENDS),
                   help="backends of the inference and stages sections (default: every installed one)")
    p.add_argument("--rounds", type=int, default=3, help="interleaved rounds of the inference configurations")
    p.add_argument("--entry-backends", nargs="+", default=None, choices=list(BACKENDS),
                   help="backends of the entry points (default: torch and the default CPU backend)")
    p.add_argument("--pipeline-images", type=int, default=600, help="files of the bundle inference run (pipeline)")
    p.add_argument("--pipeline-size", type=int, default=256)
    p.add_argument("--compare-ref", default=None, metavar="REV",
                   help="pipeline: also run the bundle inference of git revision REV (e.g. 3974d15) on the same files")
    p.add_argument("--pipeline-warm", action="store_true",
                   help="pipeline: run this code a second time, its ONNX graph then cached in models/compiled")
    p.add_argument("--large-size", type=int, default=8000, help="side of the large PNG (section large)")
    p.add_argument("--sections", nargs="+", default=list(SECTIONS), choices=list(SECTIONS))
    p.add_argument("--report", action="store_true", help="only regenerate results/speed/SPEED.md")
    p.add_argument("--child-infer", nargs=5, metavar=("BACKBONE", "SIZE", "BATCH", "IMAGES", "BACKEND"), help=argparse.SUPPRESS)
    p.add_argument("--child-entry", nargs=4, metavar=("ENTRY", "SIZE", "BATCH", "BACKEND"), help=argparse.SUPPRESS)
    p.add_argument("--child-stages", nargs=3, metavar=("SIZE", "BATCH", "BACKEND"), help=argparse.SUPPRESS)
    p.add_argument("--child-large", nargs=3, metavar=("IMAGE", "SIZE", "BACKEND"), help=argparse.SUPPRESS)
    p.add_argument("--files", type=Path, help=argparse.SUPPRESS)
    p.add_argument("--graph-cache", type=Path, default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.smoke:
        args.sizes, args.backbones, args.batch_size, args.train_iters, args.warmup = [64], ["resnet18"], 2, 1, 1
        args.infer_size, args.infer_batches, args.infer_images = 64, [2], 2
        args.engine_iters, args.engine_rounds, args.noise_calls = 3, 1, 5
        args.entry_images, args.entry_batch = 3, 2
        args.rounds, args.pipeline_images, args.pipeline_size, args.large_size = 1, 3, 64, 1000
    if args.infer_backbones is None:
        # smoke: the entry points' stand-in network (Lite0, random init, 64 px), so the run exports one ONNX graph
        args.infer_backbones = ["efficientnet_lite0"]
    default = default_backend(args.device)
    if args.backends is None:
        have = installed_backends()
        if torch.device(args.device).type != "cpu":
            have = [b for b in have if b != "openvino"]  # OpenVINO runs on the CPU only
        # smoke: PyTorch and the default backend (one export, few processes)
        args.backends = sorted({"torch", default}, key=BACKENDS.index) if args.smoke else have
    if args.entry_backends is None:
        args.entry_backends = [default] if args.smoke else sorted({"torch", default}, key=BACKENDS.index)
    return args


def default_backend(device: str = "cpu") -> str:
    """What ``backend="auto"`` (the bundle's, the pyfunc's and MONAI Label's default) runs on ``device``."""
    return resolve_backend("auto", device)


def load() -> float:
    return round(os.getloadavg()[0], 2)


def pretrained_for(backbone: str, smoke: bool) -> bool:
    return backbone == "efficientnet_lite0" and not smoke


# ---------------------------------------------------------------------------------------------- noise
def noise_speed(args) -> dict:
    from monai_scrd.transforms import RandSimplexNoised

    out = {}
    for size in sorted({128, 256} if not args.smoke else {64}):
        data = {"image": torch.rand(3, size, size)}
        for kind in ("simplex", "gaussian"):
            tf = RandSimplexNoised(keys="image", noise_type=kind).set_random_state(0)
            for _ in range(10):
                tf(data)
            ts = []
            for _ in range(args.noise_calls):
                t0 = time.perf_counter()
                tf(data)
                ts.append(time.perf_counter() - t0)
            out[f"RandSimplexNoised_{kind}_3x{size}x{size}"] = {"median_ms": 1e3 * float(np.median(ts)), "p90_ms": 1e3 * float(np.percentile(ts, 90)), "loadavg": load()}
    calls = 1 if args.smoke else 3
    ts = plain_opensimplex_times(calls, disable_jit=True)
    out["opensimplex_noise2_python_loop_no_jit_32x32x6oct"] = {"median_ms": 1e3 * float(np.median(ts)), "p90_ms": 1e3 * float(max(ts)), "loadavg": load()}
    return out


# ---------------------------------------------------------------------------------------------- training
def make_loader(n: int, size: int, batch: int, contrastive: bool, noise_type: str = "simplex"):
    """In-memory preprocessed images (as the quality benchmark caches them) + noise synthesis in the loader."""
    from monai.data import DataLoader, Dataset
    from monai.transforms import Compose, Lambdad

    from monai_scrd.transforms import RandSimplexNoised

    rng = np.random.default_rng(0)
    imgs = rng.integers(0, 256, (n, size, size), dtype=np.uint8)
    data = [{"image": imgs[i]} for i in range(n)]
    tfs = [Lambdad("image", lambda a: torch.from_numpy(a).float().div(255.0).unsqueeze(0).repeat(3, 1, 1))]
    if contrastive:
        tfs.append(RandSimplexNoised(keys="image", noise_type=noise_type))
    ds = Dataset(data, transform=Compose(tfs))
    ds.transform.set_random_state(0)
    return DataLoader(ds, batch_size=batch, shuffle=True, num_workers=0, drop_last=True)


def train_step(model, opt, loss_fn, batch, device):
    x = batch["image"].to(device)
    x = x.as_tensor() if hasattr(x, "as_tensor") else x
    u, v, alpha = model(x)
    if model.contrastive:
        xn = batch["image_noisy"].to(device)
        xn = xn.as_tensor() if hasattr(xn, "as_tensor") else xn
        loss = loss_fn(u, v, model.encode(xn), alpha)
    else:
        loss = loss_fn(u, v, alpha if model.scale_adaptive else None)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
    return loss


def training_speed(args, backbone: str, size: int, method: str, device) -> dict:
    torch.manual_seed(0)
    cfg = METHODS[method]
    model = SCRD(backbone, pretrained_for(backbone, args.smoke), **cfg).to(device).train()
    loss_fn = build_loss(cfg["contrastive"], ratio_of_sums=True)
    opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=1e-3, betas=(0.5, 0.999))
    n_iter = args.warmup + args.train_iters
    loader = make_loader(n_iter * args.batch_size, size, args.batch_size, cfg["contrastive"])
    t_load, t_step, la0 = 0.0, 0.0, load()
    it = iter(loader)
    for k in range(n_iter):
        t0 = time.perf_counter()
        batch = next(it)
        t1 = time.perf_counter()
        train_step(model, opt, loss_fn, batch, device)
        if device.type == "cuda":
            torch.cuda.synchronize()
        t2 = time.perf_counter()
        if k >= args.warmup:
            t_load += t1 - t0
            t_step += t2 - t1
    total = t_load + t_step
    return {
        "backbone": backbone, "pretrained": pretrained_for(backbone, args.smoke), "size": size, "method": method,
        "batch": args.batch_size, "iterations_timed": args.train_iters, "it_per_s": args.train_iters / total,
        "images_per_s": args.train_iters * args.batch_size / total, "load_share": t_load / total,
        "loadavg_before": la0, "loadavg_after": load(),
    }


# ---------------------------------------------------------------------------------------------- inference
def _graph_files(graph_cache) -> set[str]:
    return {f.name for f in Path(graph_cache).glob("*.onnx")} if graph_cache and Path(graph_cache).is_dir() else set()


def _compile(scorer) -> dict:
    """Make the scorer's compiled network now (not timed with the scoring): seconds, whether the ONNX graph had to be
    exported (not in the cache yet), the backend that runs (PyTorch after a fall-back) and the probe difference."""
    before = _graph_files(scorer.graph_cache)
    requested = scorer.backend
    t0 = time.perf_counter()
    compiled = scorer.compiled()
    return {"backend_resolved": requested, "backend_used": scorer.backend, "compile_s": time.perf_counter() - t0,
            "graph_exported": bool(_graph_files(scorer.graph_cache) - before),
            "probe_difference": getattr(compiled, "difference", None)}


def child_infer(backbone: str, size: int, batch: int, images: int, backend: str, device_name: str, graph_cache,
                smoke: bool) -> dict:
    from monai_scrd.scoring import Scorer

    device = torch.device(device_name)
    torch.manual_seed(0)  # the same weights in every child (and as the entry points' stand-in): one cached graph
    model = SCRD(backbone, pretrained_for(backbone, smoke), contrastive=True, scale_adaptive=True).to(device).eval()
    scorer = Scorer(model, image_size=size, batch_size=batch, device=device, backend=backend,
                    graph_cache=None if graph_cache is None else str(graph_cache))
    comp = _compile(scorer)
    x = torch.rand(images, 3, size, size, generator=torch.Generator().manual_seed(0))
    rss_model = C.current_rss_mib()
    scorer.forward(x[:batch])  # warm-up
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    scorer.forward(x)  # batch_size images per forward pass, scores back on the CPU
    if device.type == "cuda":
        torch.cuda.synchronize()
    dt = time.perf_counter() - t0
    return {
        "backbone": backbone, "size": size, "batch": batch, "images": images, "backend": backend, **comp,
        "images_per_s": images / dt, "ms_per_image": 1e3 * dt / images, "peak_rss_mib": C.peak_rss_mib(),
        "rss_before_inference_mib": rss_model,
        "cuda_peak_mib": torch.cuda.max_memory_allocated() / 2**20 if device.type == "cuda" else None,
        "amp": device.type == "cuda" and comp["backend_used"] == "torch", "torch_threads": torch.get_num_threads(),
        "loadavg": load(),
    }


def _child_env(args) -> dict:
    """Children write their temporary files into the run's folder (removed at the end)."""
    env = dict(os.environ)
    if getattr(args, "work", None) is not None:
        (args.work / "tmp").mkdir(parents=True, exist_ok=True)
        env["TMPDIR"] = str(args.work / "tmp")
    return env


def _run_child_in_process(args, child_args: list[str]) -> dict:
    """A child in this process, for ``--smoke``, which checks the code paths and not their speed: no interpreter
    start-up per child (most of a smoke run). Its environment variables and temporary folder are restored after it."""
    environ, tempdir, out = dict(os.environ), tempfile.tempdir, io.StringIO()
    if getattr(args, "work", None) is not None:
        (args.work / "tmp").mkdir(parents=True, exist_ok=True)
        tempfile.tempdir = str(args.work / "tmp")
    try:
        with contextlib.redirect_stdout(out):
            main(child_args)
    finally:
        os.environ.clear()
        os.environ.update(environ)
        tempfile.tempdir = tempdir
    return json.loads(out.getvalue().strip().splitlines()[-1])


def _run_child(args, child_args: list[str]) -> dict:
    """One ``speed.py --child-...`` process; its last stdout line is its JSON. A failure is recorded as
    ``{"skipped": ...}`` and the run goes on (with ``--smoke`` the child runs in this process and a failure raises)."""
    child_args = [*child_args, "--device", args.device]
    if getattr(args, "graph_cache", None) is not None:
        child_args += ["--graph-cache", str(args.graph_cache)]
    if args.smoke:
        return _run_child_in_process(args, [*child_args, "--smoke"])
    cmd = [sys.executable, str(Path(__file__).resolve()), *child_args]
    res = subprocess.run(cmd, capture_output=True, text=True, env=_child_env(args))
    if res.returncode:
        last = [ln for ln in res.stderr.strip().splitlines() if ln.strip()][-1:] or ["no output"]
        return {"skipped": f"failed: {last[0]}"}
    return json.loads(res.stdout.strip().splitlines()[-1])


def inference_speed(args) -> list[dict]:
    """One row per (teacher, batch, backend); each row timed in ``--rounds`` fresh processes, the configurations
    interleaved within a round (torch b1, onnxruntime b1, openvino b1, torch b16, ...) so that they share the
    machine's load; best and median images/s per row."""
    configs = [(bb, batch, be) for bb in args.infer_backbones for batch in args.infer_batches for be in args.backends]
    runs: dict[tuple, list[dict]] = {c: [] for c in configs}
    for rnd in range(args.rounds):
        for bb, batch, be in configs:
            images = max(args.infer_images, batch) // batch * batch
            r = _run_child(args, ["--child-infer", bb, str(args.infer_size), str(batch), str(images), be])
            r.update(round=rnd + 1, backbone=bb, batch=batch, backend=be)
            runs[(bb, batch, be)].append(r)
            if "skipped" in r:
                print(f"  inference {bb} batch {batch} {be} round {rnd + 1}: skipped ({r['skipped'][:200]})", flush=True)
                continue
            used = "" if r["backend_used"] == r["backend_resolved"] else f" (FELL BACK to {r['backend_used']})"
            print(f"  inference {bb} {args.infer_size}px batch {batch} {be}{used} round {rnd + 1}: "
                  f"{r['images_per_s']:.2f} images/s, peak RSS {r['peak_rss_mib']:.0f} MiB, compile {r['compile_s']:.1f} s "
                  f"(load {r['loadavg']})", flush=True)
    out = []
    for bb, batch, be in configs:
        ok = [r for r in runs[(bb, batch, be)] if "skipped" not in r]
        if not ok:
            out.append({"backbone": bb, "size": args.infer_size, "batch": batch, "backend": be,
                        "skipped": runs[(bb, batch, be)][0]["skipped"], "runs": runs[(bb, batch, be)]})
            continue
        ips = [r["images_per_s"] for r in ok]
        best = ok[int(np.argmax(ips))]
        used = sorted({r["backend_used"] for r in ok})
        out.append({
            "backbone": bb, "size": args.infer_size, "batch": batch, "images": best["images"], "backend": be,
            "backend_resolved": best["backend_resolved"], "backend_used": used[0] if len(used) == 1 else "/".join(used),
            "fell_back": any(r["backend_used"] != r["backend_resolved"] for r in ok),
            "images_per_s": max(ips), "images_per_s_best": max(ips), "images_per_s_median": float(np.median(ips)),
            "ms_per_image": 1e3 / max(ips), "rounds": len(ok),
            "compile_s": [r["compile_s"] for r in ok], "graph_exported": [r["graph_exported"] for r in ok],
            "probe_difference": best.get("probe_difference"),
            "peak_rss_mib": max(r["peak_rss_mib"] for r in ok),
            "rss_before_inference_mib": float(np.median([r["rss_before_inference_mib"] for r in ok])),
            "cuda_peak_mib": max(r["cuda_peak_mib"] for r in ok) if ok[0].get("cuda_peak_mib") is not None else None,
            "amp": best["amp"], "torch_threads": best["torch_threads"], "loadavg": best["loadavg"],
            "loadavg_rounds": [r["loadavg"] for r in ok], "runs": runs[(bb, batch, be)],
        })
    for row in out:  # best over best at the same teacher and batch
        ref = next((r for r in out if r["backend"] == "torch" and r["backbone"] == row["backbone"]
                    and r["batch"] == row["batch"] and "skipped" not in r), None)
        if row["backend"] != "torch" and ref is not None and "skipped" not in row:
            row["speedup_vs_torch"] = row["images_per_s_best"] / ref["images_per_s_best"]
            row["speedup_vs_torch_median"] = row["images_per_s_median"] / ref["images_per_s_median"]
            print(f"  inference {row['backbone']} batch {row['batch']} {row['backend']}: {row['speedup_vs_torch']:.2f}x "
                  f"PyTorch (best over best; medians {row['speedup_vs_torch_median']:.2f}x)", flush=True)
    return out


# ---------------------------------------------------------------------------------------------- entry points
def entry_files(args, folder: Path, count: int | None = None) -> list[str]:
    """``count`` (default ``--entry-images``) image files: the Brain Tumor test images when present (JPEG, ~512 px),
    else random PNGs."""
    count = args.entry_images if count is None else count
    folder.mkdir(parents=True, exist_ok=True)
    if not args.smoke and (args.data_root / C.SPLIT_JSON).exists():
        split = C.read_split(args.data_root)
        rel = [p for g in ("test/normal", "test/glioma", "test/meningioma") for p in split[g][:count]]
        return [str(args.data_root / p) for p in rel[:count]]
    from PIL import Image

    rng = np.random.default_rng(0)
    paths = []
    for i in range(count):
        paths.append(str(folder / f"img_{i:03d}.png"))
        Image.fromarray(rng.integers(0, 256, (300, 280), dtype=np.uint8)).save(paths[-1])
    return paths


def _entry_model(work: Path, size: int, pretrained: bool, graph_cache=None, bundle_graph: bool = False,
                 config: Path | None = None):
    """A trained-bundle stand-in: SCRD Lite0 weights (ImageNet teacher) + threshold, as a bundle and a model folder.

    With ``graph_cache`` (the run's shared folder of ONNX graphs), the network's graph is taken from there (exported
    into it when missing) and put beside the model folder's weights (``compiled/``, as a registered model carries it)
    and, with ``bundle_graph``, into the bundle's ``models/compiled``; without, the bundle has no graph (its first
    compiled run exports it). ``config``: the inference.json to copy (default the repository's)."""
    from monai_scrd.registry.spec import GRAPH_FOLDER, ModelSpec, write_model_dir

    work.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    net = SCRD("efficientnet_lite0", pretrained, contrastive=True, scale_adaptive=True).eval()
    ckpt = work / "model.pt"
    torch.save({"model": net.state_dict()}, ckpt)
    spec = ModelSpec(network={"backbone": "efficientnet_lite0", "contrastive": True, "scale_adaptive": True},
                     preprocessing={"image_size": size}, threshold={"threshold": 0.5, "method": "benchmark"})
    model_dir = Path(write_model_dir(work / "model", ckpt, spec, graph=False))
    bundle = work / "bundle"
    (bundle / "models").mkdir(parents=True, exist_ok=True)
    (bundle / "configs").mkdir(exist_ok=True)
    shutil.copy(ckpt, bundle / "models" / "model.pt")
    (bundle / "models" / "threshold.json").write_text(json.dumps(spec.threshold))
    cfg = json.loads((config or C.REPO / "bundles" / "scrd" / "configs" / "inference.json").read_text())
    cfg.update(image_size=size, bundle_root=str(bundle))
    (bundle / "configs" / "inference.json").write_text(json.dumps(cfg))
    if graph_cache is not None and len(installed_backends()) > 1:
        from monai_scrd.scoring import Scorer, resolve_score_reduction
        from monai_scrd.scoring.backends import cache_graph

        # the registered model scores with its spec's reduction, the bundle with inference.json's ("auto")
        targets = [(model_dir / GRAPH_FOLDER, spec.score_reduction)]
        if bundle_graph:
            targets.append((bundle / "models" / GRAPH_FOLDER, resolve_score_reduction(cfg["score_reduction"], spec.threshold)))
        for folder, reduction in targets:
            graph = Path(cache_graph(net, Scorer(net, image_size=size).input_shape, graph_cache, reduction))
            folder.mkdir(parents=True, exist_ok=True)
            shutil.copy(graph, folder / graph.name)
    return net, spec, model_dir, bundle


def child_entry(entry: str, size: int, batch: int, backend: str, files: list[str], device_name: str, smoke: bool,
                graph_cache=None) -> dict:
    """Score ``files`` through one entry point with ``backend``; the set-up (model loading, compiling, server start)
    is not timed."""
    from monai_scrd.scoring import Scorer

    work = Path(tempfile.mkdtemp(prefix="scrd_speed_"))
    compiled = resolve_backend(backend, device_name) != "torch"
    net, spec, model_dir, bundle = _entry_model(work, size, pretrained=not smoke,
                                                graph_cache=graph_cache if compiled else None, bundle_graph=True)
    device = torch.device(device_name)
    net = net.to(device)
    extra: dict = {"backend": backend}
    gc = None if graph_cache is None else str(graph_cache)
    if entry == "scorer":
        scorer = Scorer(net, image_size=size, batch_size=batch, threshold=0.5, device=device, backend=backend, graph_cache=gc)
        extra.update(_compile(scorer))

        def run(paths):
            return [r.score for r in scorer.score(paths)]
    elif entry == "evaluation":
        from monai.data import DataLoader
        from monai.engines import SupervisedEvaluator

        from monai_scrd.engines import ScoreCollector, SCRDEvalStep
        from monai_scrd.scoring import ScoringDataset, collate_prepared

        scorer = Scorer(net, image_size=size, batch_size=batch, threshold=0.5, device=device, backend=backend, graph_cache=gc)
        extra.update(_compile(scorer))

        def run(paths):
            items = [{"image": f, "label": i % 2} for i, f in enumerate(paths)]
            loader = DataLoader(ScoringDataset(items, scorer), batch_size=batch, collate_fn=collate_prepared, num_workers=0)
            collector = ScoreCollector("test", str(work / "eval"), 0.5)
            SupervisedEvaluator(device=device, val_data_loader=loader, network=net, iteration_update=SCRDEvalStep(scorer),
                                val_handlers=[collector], decollate=False).run()
        extra["note"] = "metrics.json, scores.csv, ROC curve and histogram included"
    elif entry == "inference":
        from monai_scrd.engines import AnomalyInference

        scorer = Scorer(net, image_size=size, batch_size=batch, threshold=0.5, device=device, backend=backend, graph_cache=gc)
        extra.update(_compile(scorer))

        def run(paths):
            AnomalyInference(scorer, str(work / "out"), save_heatmaps=False, save_nifti=False)(paths)
        extra["note"] = "scores.csv and errors.csv; no heatmap figures"
    elif entry == "pyfunc":
        import mlflow.pyfunc
        import pandas as pd

        from monai_scrd.registry.pyfunc import model_code_path

        from monai_scrd.registry.spec import GRAPH_FOLDER

        os.environ["SCRD_DEVICE"], os.environ["SCRD_BATCH_SIZE"] = device_name, str(batch)
        os.environ["SCRD_BACKEND"] = backend
        os.environ["SCRD_INPUT_ROOTS"] = os.pathsep.join(sorted({os.path.dirname(os.path.realpath(f)) for f in files}))
        # saved as the registry logs it: a model from code with the safetensors weights, the spec JSON and the graph
        artifacts = {"weights": str(model_dir / "model.safetensors"), "spec": str(model_dir / "scrd_model.json")}
        if (model_dir / GRAPH_FOLDER).is_dir():
            artifacts["graphs"] = str(model_dir / GRAPH_FOLDER)
        mlflow.pyfunc.save_model(str(work / "pyfunc"), python_model=model_code_path(), artifacts=artifacts)
        t0 = time.perf_counter()
        model = mlflow.pyfunc.load_model(str(work / "pyfunc"))  # compiles the backend ($SCRD_BACKEND)
        extra["load_s"] = time.perf_counter() - t0
        inner = model.unwrap_python_model()
        extra["backend_resolved"] = resolve_backend(backend, device_name)
        extra["backend_used"] = getattr(getattr(inner, "scorer", None), "backend", None)

        def run(paths):
            model.predict(pd.DataFrame({"image": paths}))
    elif entry == "monai_label":
        return _label_entry(bundle, work, files, device_name, backend)
    else:
        raise ValueError(entry)
    run(files[: min(len(files), batch)])  # warm-up: first-call allocations, lazy imports
    rss0 = C.current_rss_mib()
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    run(files)
    if device.type == "cuda":
        torch.cuda.synchronize()
    dt = time.perf_counter() - t0
    return {"entry": entry, "size": size, "batch": batch, "images": len(files), "images_per_s": len(files) / dt,
            "ms_per_image": 1e3 * dt / len(files), "peak_rss_mib": C.peak_rss_mib(), "rss_before_mib": rss0,
            "cuda_peak_mib": torch.cuda.max_memory_allocated() / 2**20 if device.type == "cuda" else None,
            "loadavg": load(), **extra}


def _label_entry(bundle: Path, work: Path, files: list[str], device_name: str, backend: str = "auto") -> dict:
    """MONAI Label server (its own venv) on loopback: one POST /infer per image; the server's peak RSS from /proc.
    The backend is the app's ``--conf backend``; a fall-back to PyTorch is read from the server's log."""
    import signal
    import socket
    import urllib.request

    from monai_scrd.label import default_label_venv

    venv = default_label_venv()
    python = Path(venv) / "bin" / "python"
    if not python.exists():
        return {"entry": "monai_label", "backend": backend, "skipped": f"no MONAI Label venv at {venv}"}
    studies = work / "studies"
    studies.mkdir()
    ids = []
    for i, f in enumerate(files):
        name = f"img_{i:03d}{Path(f).suffix}"
        shutil.copy(f, studies / name)
        ids.append(Path(name).stem)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {k: v for k, v in os.environ.items() if k not in ("MLFLOW_TRACKING_URI",)}
    env.update(PYTHONPATH=str(C.REPO), MONAI_LABEL_SESSION_PATH=str(work / "sessions"))
    log = open(work / "server.log", "w")
    proc = subprocess.Popen([str(python), "-m", "monai_scrd.label", "serve", "--studies", str(studies), "--bundle", str(bundle),
                             "--app-dir", str(work / "app"), "--port", str(port), "--device", device_name,
                             "--conf", "train", "false", "--conf", "backend", backend],
                            cwd=work, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + 300
        while True:
            if proc.poll() is not None or time.time() > deadline:
                return {"entry": "monai_label", "backend": backend,
                        "skipped": "server did not start: " + (work / "server.log").read_text()[-500:]}
            try:
                urllib.request.urlopen(base + "/info/", timeout=5)
                break
            except OSError:
                time.sleep(1)

        def post(image_id: str) -> None:
            req = urllib.request.Request(f"{base}/infer/scrd?image={image_id}&output=json", data=b"", method="POST")
            urllib.request.urlopen(req, timeout=300).read()

        post(ids[0])  # warm-up
        t0 = time.perf_counter()
        for image_id in ids:
            post(image_id)
        dt = time.perf_counter() - t0
        with open(f"/proc/{proc.pid}/status") as f:  # `serve` execs monailabel in the same process
            hwm = next(float(ln.split()[1]) / 1024 for ln in f if ln.startswith("VmHWM:"))
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=30)
        log.close()
    server_log = (work / "server.log").read_text(errors="replace")
    resolved = resolve_backend(backend, device_name)
    fell_back = resolved != "torch" and "scoring with PyTorch" in server_log
    return {"entry": "monai_label", "size": None, "batch": 1, "images": len(ids), "images_per_s": len(ids) / dt,
            "ms_per_image": 1e3 * dt / len(ids), "peak_rss_mib": hwm, "cuda_peak_mib": None, "loadavg": load(),
            "backend": backend, "backend_resolved": resolved, "backend_used": "torch" if fell_back else resolved,
            "note": "one HTTP request per image (the server's peak RSS; JSON answer; backend used read from its log)"}


def _files_listing(args) -> Path:
    """The entry-point files (made once per run) as a JSON list file for the children."""
    listing = args.work / "entry_files.json"
    if not listing.exists():
        listing.write_text(json.dumps(entry_files(args, args.work / "entry_files")))
    return listing


def entry_point_speed(args) -> list[dict]:
    listing = _files_listing(args)
    size = 64 if args.smoke else args.infer_size
    out = []
    # smoke: the entry points with set-up code of their own here (the scorer's is one line; MONAI Label needs its venv)
    for entry in ENTRY_POINTS if not args.smoke else ("evaluation", "pyfunc"):
        for backend in args.entry_backends:
            r = _run_child(args, ["--child-entry", entry, str(size), str(args.entry_batch), backend, "--files", str(listing)])
            r.setdefault("entry", entry)
            r.setdefault("backend", backend)
            out.append(r)
            if "skipped" in r:
                print(f"  entry point {entry} ({backend}): skipped ({r['skipped'][:200]})", flush=True)
            else:
                used = r.get("backend_used")
                print(f"  entry point {entry} ({backend} -> {used}): {r['images_per_s']:.2f} images/s, peak RSS "
                      f"{r['peak_rss_mib']:.0f} MiB (load {r['loadavg']})", flush=True)
    for r in out:
        ref = next((t for t in out if t["entry"] == r["entry"] and t["backend"] == "torch" and "skipped" not in t), None)
        if r["backend"] != "torch" and ref is not None and "skipped" not in r:
            r["speedup_vs_torch"] = r["images_per_s"] / ref["images_per_s"]
    return out


# ---------------------------------------------------------------------------------------------- stages
def child_stages(size: int, batch: int, backend: str, files: list[str], device_name: str, smoke: bool, graph_cache) -> dict:
    """ms per image of each stage of scoring files, in this one process: decode (``read_medical_image``), preprocess
    (the scorer's transform on the decoded array), model (``Scorer.forward``, ``batch`` images per pass) and write
    (``ScoreWriter``: maps for NIfTI inputs, heatmap overlays, scores.csv; the maps resampled to each file's size)."""
    from monai_scrd.data.color import check_color_mode
    from monai_scrd.data.readers import read_medical_image
    from monai_scrd.data.volume import check_not_constant
    from monai_scrd.scoring import Prepared, Scorer, ScoreWriter

    work = Path(tempfile.mkdtemp(prefix="scrd_stages_"))
    compiled = resolve_backend(backend, device_name) != "torch"
    net, _, _, _ = _entry_model(work, size, pretrained=not smoke, graph_cache=graph_cache if compiled else None)
    device = torch.device(device_name)
    scorer = Scorer(net.to(device), image_size=size, batch_size=batch, threshold=0.5, device=device, backend=backend,
                    graph_cache=None if graph_cache is None else str(graph_cache))
    comp = _compile(scorer)
    pre = scorer.preprocessor

    def decode(paths):
        return [read_medical_image(f, allow_volume=True, apply_voi=pre.settings["apply_voi"]) for f in paths]

    def preprocess(paths, imgs):
        out = []
        for f, img in zip(paths, imgs):
            if img.is_volume:  # not among these files; the scorer's own path (it reads the file again)
                out.append(pre(f, keep_source=True))
                continue
            check_not_constant(f, img.array)
            if pre.refuse_color_mismatch:
                check_color_mode(img.array, pre.settings["color_mode"], f)
            out.append(Prepared(f, {"image": f}, pre._tensor(img.array)[None], "image", source=img))
        return out

    def write(results, folder):
        with ScoreWriter(folder, maps="nifti", overlays=True, threshold=scorer.threshold) as writer:
            for r in results:
                writer.add(r)

    warm = files[: min(len(files), batch)]  # warm-up of every stage: lazy imports, first-call allocations
    prepared = preprocess(warm, decode(warm))
    scorer.forward(torch.cat([q.images for q in prepared]), keep_maps=True)
    write(scorer.score_prepared(prepared, return_maps=True), work / "warm")

    t = {}
    t0 = time.perf_counter()
    imgs = decode(files)
    t["decode"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    prepared = preprocess(files, imgs)
    t["preprocess"] = time.perf_counter() - t0
    x = torch.cat([q.images for q in prepared if not q.error])
    if device.type == "cuda":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    scorer.forward(x, keep_maps=True)
    if device.type == "cuda":
        torch.cuda.synchronize()
    t["model"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    results = scorer.score_prepared(prepared, return_maps=True)  # the model again, + scores and decisions (untimed)
    t_score_prepared = time.perf_counter() - t0
    t0 = time.perf_counter()
    write(results, work / "out")
    t["write"] = time.perf_counter() - t0
    n = len(files)
    ms = {k: 1e3 * v / n for k, v in t.items()}
    heatmaps = len(list((work / "out" / "heatmaps").glob("*.png"))) if (work / "out" / "heatmaps").is_dir() else 0
    return {"backend": backend, **comp, "size": size, "batch": batch, "images": n, "ms_per_image": ms,
            "total_ms_per_image": sum(ms.values()), "images_per_s_sum_of_stages": 1e3 / sum(ms.values()),
            "score_prepared_ms_per_image": 1e3 * t_score_prepared / n, "heatmaps_written": heatmaps,
            "errors": sum(1 for r in results if r.error), "peak_rss_mib": C.peak_rss_mib(), "loadavg": load()}


def stages_speed(args) -> list[dict]:
    listing = _files_listing(args)
    size = 64 if args.smoke else args.infer_size
    out = []
    for backend in ([default_backend(args.device)] if args.smoke else args.backends):
        r = _run_child(args, ["--child-stages", str(size), str(args.entry_batch), backend, "--files", str(listing)])
        r.setdefault("backend", backend)
        out.append(r)
        if "skipped" in r:
            print(f"  stages {backend}: skipped ({r['skipped'][:200]})", flush=True)
        else:
            ms = r["ms_per_image"]
            print(f"  stages {backend} -> {r['backend_used']}: " + ", ".join(f"{k} {v:.1f}" for k, v in ms.items())
                  + f" ms/image (load {r['loadavg']})", flush=True)
    return out


# ---------------------------------------------------------------------------------------------- pipeline
_RSS_WRAPPER = """import atexit, os, runpy, sys
def _hwm():
    with open("/proc/self/status") as f:
        kib = next((float(l.split()[1]) for l in f if l.startswith("VmHWM:")), None)
    with open(os.environ["SPEED_RSS_OUT"], "w") as f:
        f.write(str(kib))
atexit.register(_hwm)
sys.argv = ["monai.bundle", *sys.argv[1:]]
runpy.run_module("monai.bundle", run_name="__main__", alter_sys=True)
"""


def _timed_process(cmd: list[str], env: dict, cwd: Path, log: Path) -> dict:
    """Run ``python -c <wrapper> ARGS`` (``python -m monai.bundle ARGS`` that records its own peak RSS, ``VmHWM``, at
    exit: getrusage's ``ru_maxrss`` of a child would start from this big parent's RSS): wall seconds, exit code and
    peak RSS (MiB)."""
    rss_file = log.with_suffix(".rss")
    env = {**env, "SPEED_RSS_OUT": str(rss_file)}
    with open(log, "w") as f:
        t0 = time.perf_counter()
        proc = subprocess.run([sys.executable, "-c", _RSS_WRAPPER, *cmd], cwd=cwd, env=env, stdout=f, stderr=subprocess.STDOUT)
        wall = time.perf_counter() - t0
    kib = rss_file.read_text().strip() if rss_file.exists() else "None"
    return {"wall_s": wall, "returncode": proc.returncode, "peak_rss_mib": None if kib == "None" else float(kib) / 1024}


def _module_file(env: dict, cwd: Path) -> str:
    """Where ``monai_scrd`` is imported from with this environment (the preflight of a revision's run)."""
    res = subprocess.run([sys.executable, "-c", "import monai_scrd; print(monai_scrd.__file__)"], cwd=cwd, env=env,
                         capture_output=True, text=True)
    if res.returncode:
        raise RuntimeError(f"cannot import monai_scrd: {res.stderr[-1000:]}")
    return res.stdout.strip().splitlines()[-1]


def _pipeline_run(args, code: str, bundle: Path, inputs: Path, pythonpath: Path, n: int) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("MLFLOW_TRACKING_URI",)}
    env["PYTHONPATH"] = str(pythonpath) + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    cwd = args.work / "pipeline"  # not the repository root: `python -m` puts the working folder first on sys.path
    module = _module_file(env, cwd)
    if not Path(module).resolve().is_relative_to(pythonpath.resolve()):
        raise RuntimeError(f"pipeline {code}: monai_scrd is imported from {module}, not from {pythonpath}")
    compiled_dir = bundle / "models" / "compiled"
    cold = not any(compiled_dir.glob("*.onnx")) if compiled_dir.is_dir() else True
    out_dir = args.work / "pipeline" / f"out_{len(list((args.work / 'pipeline').glob('out_*.log')))}_{code}"
    cmd = ["run", "--config_file", str(bundle / "configs" / "inference.json"), "--bundle_root", str(bundle),
           "--inputs", str(inputs), "--output_dir", str(out_dir), "--image_size", str(args.pipeline_size)]
    log = args.work / "pipeline" / f"{out_dir.name}.log"
    la0 = load()
    r = _timed_process(cmd, env, cwd, log)
    text = log.read_text(errors="replace")
    if r["returncode"]:
        if args.smoke:
            raise RuntimeError(f"pipeline {code} failed:\n{text[-3000:]}")
        return {"code": code, "skipped": f"exit code {r['returncode']}: {text.strip().splitlines()[-1] if text.strip() else ''}"}
    rows = 0
    if (out_dir / "scores.csv").exists():
        rows = max(0, len((out_dir / "scores.csv").read_text().strip().splitlines()) - 1)
    heatmaps = len(list((out_dir / "heatmaps").glob("*.png"))) if (out_dir / "heatmaps").is_dir() else 0
    # the first run of a bundle exports its ONNX graph into models/compiled (once per set of weights): timed as is
    exported = "exporting the model to ONNX" in text or (cold and compiled_dir.is_dir() and any(compiled_dir.glob("*.onnx")))
    return {"code": code, "monai_scrd_file": module, "images": n, "wall_s": r["wall_s"], "images_per_s": n / r["wall_s"],
            "ms_per_image": 1e3 * r["wall_s"] / n, "peak_rss_mib": r["peak_rss_mib"], "scores_rows": rows,
            "heatmaps_written": heatmaps, "graph_cache_was_empty": cold,
            "includes_graph_export": exported, "fell_back_to_torch": "scoring with PyTorch" in text,
            "wall_includes": "python start-up, imports, model loading" + (", the ONNX export" if exported else ""),
            "command": "python -m monai.bundle " + " ".join(cmd), "loadavg_before": la0, "loadavg_after": load()}


def pipeline_speed(args) -> dict:
    """Bundle inference as a user runs it (default settings: heatmaps and NIfTI maps on, backend auto, batch 16) on the
    same files, for this code and for ``--compare-ref``'s revision."""
    work = args.work / "pipeline"
    work.mkdir(parents=True, exist_ok=True)
    n = args.pipeline_images
    files = entry_files(args, work / "generated", n)
    images = work / "inputs" / "images"
    images.mkdir(parents=True, exist_ok=True)
    names = []
    for i, f in enumerate(files):  # copies inside the datalist's folder (relative paths, as a user's datalist)
        name = f"{i:05d}_{Path(f).name}"
        shutil.copy(f, images / name)
        names.append(f"images/{name}")
    datalist = work / "inputs" / "datalist.json"
    datalist.write_text(json.dumps({"test": [{"image": nm} for nm in names]}))
    for f in images.iterdir():  # read once: both runs find the files in the page cache
        f.read_bytes()
    size = args.pipeline_size
    pretrained = not args.smoke
    _, _, _, bundle = _entry_model(work / "current", size, pretrained,
                                   graph_cache=args.graph_cache if args.smoke else None, bundle_graph=args.smoke)
    out = {"images": n, "image_size": size, "datalist": str(datalist),
           "files": "Brain Tumor test images" if (not args.smoke and (args.data_root / C.SPLIT_JSON).exists())
           else "generated PNGs (300x280)",
           "settings": "the bundle's inference.json defaults (backend auto, batch_size 16, num_workers 0, save_heatmaps "
                       "and save_nifti true) with --image_size %d; stand-in trained bundle (Lite0, ImageNet teacher)" % size,
           "peak_rss": "VmHWM of the bundle process, recorded by itself at exit", "runs": []}
    if args.smoke:
        out["note"] = "smoke: the ONNX graph was put into models/compiled beforehand (warm)"
    runs = []
    r = _pipeline_run(args, "current", bundle, datalist, C.REPO, n)
    runs.append(r)
    if args.pipeline_warm and "skipped" not in r:
        r2 = _pipeline_run(args, "current", bundle, datalist, C.REPO, n)
        r2["code"] = "current (graph cached)"
        runs.append(r2)
    if args.compare_ref:
        ref_tree = work / "ref"
        ref_tree.mkdir()
        rev = subprocess.run(["git", "-C", str(C.REPO), "rev-parse", args.compare_ref], capture_output=True, text=True,
                             check=True).stdout.strip()
        archive = subprocess.run(["git", "-C", str(C.REPO), "archive", rev], capture_output=True, check=True).stdout
        subprocess.run(["tar", "-x", "-C", str(ref_tree)], input=archive, check=True)
        _, _, _, ref_bundle = _entry_model(work / "ref_model", size, pretrained,
                                           config=ref_tree / "bundles" / "scrd" / "configs" / "inference.json")
        r = _pipeline_run(args, args.compare_ref, ref_bundle, datalist, ref_tree, n)
        r["revision"] = rev
        runs.append(r)
        out["ref"] = {"rev": args.compare_ref, "commit": rev}
    out["runs"] = runs
    for r in runs:
        if "skipped" in r:
            print(f"  pipeline {r['code']}: skipped ({r['skipped'][:200]})", flush=True)
        else:
            print(f"  pipeline {r['code']}: {n} files in {r['wall_s']:.1f} s = {r['images_per_s']:.2f} images/s, peak RSS "
                  f"{r['peak_rss_mib']:.0f} MiB" + (" (includes the ONNX export)" if r["includes_graph_export"] else "")
                  + f" (load {r['loadavg_before']} -> {r['loadavg_after']})", flush=True)
    cur, ref = runs[0], (runs[-1] if args.compare_ref else None)
    if ref is not None and "skipped" not in cur and "skipped" not in ref:
        out["speedup_vs_ref"] = cur["images_per_s"] / ref["images_per_s"]
        print(f"  pipeline: current / {args.compare_ref} = {out['speedup_vs_ref']:.2f}x", flush=True)
        if args.pipeline_warm and "skipped" not in runs[1]:
            out["speedup_vs_ref_graph_cached"] = runs[1]["images_per_s"] / ref["images_per_s"]
    return out


# ---------------------------------------------------------------------------------------------- large file
def make_large_png(path: Path, side: int) -> float:
    """A ``side`` x ``side`` grayscale PNG with texture (smooth pattern + noise), made in row blocks; seconds."""
    from PIL import Image

    t0 = time.perf_counter()
    rng = np.random.default_rng(0)
    img = np.empty((side, side), np.uint8)
    x = np.arange(side, dtype=np.float32)
    cx = np.cos(x / 53.0)
    for r0 in range(0, side, 1000):
        y = x[r0 : r0 + 1000, None]
        pattern = 96 + 80 * np.sin(y / 37.0) * cx[None, :]
        img[r0 : r0 + 1000] = np.clip(pattern + rng.integers(-40, 41, (len(y), side)), 0, 255).astype(np.uint8)
    Image.fromarray(img).save(path, compress_level=1)
    return time.perf_counter() - t0


def _clear_peak_rss() -> bool:
    """Reset this process's ``VmHWM`` to its current RSS (Linux ``clear_refs`` 5)."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def child_large(image: str, size: int, backend: str, device_name: str, smoke: bool, graph_cache) -> dict:
    """Score one large image through ``AnomalyInference`` (heatmaps and NIfTI maps on), twice: the first call pays
    lazy imports (the overlay's plotting); seconds of each, RSS before scoring and peak RSS while scoring."""
    from monai_scrd.engines import AnomalyInference
    from monai_scrd.scoring import Scorer

    work = Path(tempfile.mkdtemp(prefix="scrd_large_"))
    compiled = resolve_backend(backend, device_name) != "torch"
    net, _, _, _ = _entry_model(work, size, pretrained=not smoke, graph_cache=graph_cache if compiled else None)
    device = torch.device(device_name)
    scorer = Scorer(net.to(device), image_size=size, batch_size=16, threshold=0.5, device=device, backend=backend,
                    graph_cache=None if graph_cache is None else str(graph_cache))
    comp = _compile(scorer)
    peak_setup = C.peak_rss_mib()
    rss0 = C.current_rss_mib()
    reset = _clear_peak_rss()
    times = []
    for k in range(2):
        out = work / f"out{k}"
        t0 = time.perf_counter()
        rows = AnomalyInference(scorer, str(out), save_heatmaps=True, save_nifti=True)([image])
        times.append(time.perf_counter() - t0)
    heat = sorted((work / "out0" / "heatmaps").glob("*.png")) if (work / "out0" / "heatmaps").is_dir() else []
    from PIL import Image

    heat_size = list(Image.open(heat[0]).size) if heat else None
    return {"backend": backend, **comp, "size": size, "seconds_first": times[0], "seconds": times[1],
            "rss_before_scoring_mib": rss0, "peak_rss_mib": C.peak_rss_mib(), "peak_rss_is_scoring_only": reset,
            "peak_rss_setup_mib": peak_setup, "heatmap_exists": bool(heat), "heatmap_size": heat_size,
            "score": rows[0].get("score") if rows else None, "loadavg": load()}


def large_speed(args) -> dict:
    side = args.large_size
    folder = args.work / "large"
    folder.mkdir(parents=True, exist_ok=True)
    image = folder / f"large_{side}x{side}.png"
    gen_s = make_large_png(image, side)
    backend = "auto"
    size = 64 if args.smoke else 256
    r = _run_child(args, ["--child-large", str(image), str(size), backend])
    r.update(image=f"{side}x{side} grayscale PNG (pattern + noise)", file_mib=image.stat().st_size / 2**20,
             generation_s=gen_s, heatmaps=True, nifti_maps=True,
             note="seconds: the second of two AnomalyInference calls on the file (the first pays lazy imports: "
                  "seconds_first); model loading and compiling before, not timed; peak RSS while scoring (VmHWM reset "
                  "after compiling; peak_rss_setup_mib before)")
    if "skipped" in r:
        print(f"  large {side}x{side}: skipped ({r['skipped'][:200]})", flush=True)
    else:
        print(f"  large {side}x{side} ({r['backend_used']}): {r['seconds']:.2f} s (first call {r['seconds_first']:.2f} s), "
              f"peak RSS {r['peak_rss_mib']:.0f} MiB (before scoring {r['rss_before_scoring_mib']:.0f}), heatmap "
              f"{'written' if r['heatmap_exists'] else 'MISSING'} (load {r['loadavg']})", flush=True)
    return r


# ---------------------------------------------------------------------------------------------- engine overhead
def engine_overhead(args, device) -> dict:
    from ignite.engine import Events
    from monai.engines import SupervisedTrainer

    backbone = "efficientnet_lite0" if not args.smoke else "resnet18"
    size = 128 if not args.smoke else 64
    try:
        from monai_scrd.engines import SCRDTrainStep

        step_source = "monai_scrd.engines.SCRDTrainStep (bundle's iteration_update)"
    except Exception:  # pragma: no cover - fallback while the bundle is being written
        SCRDTrainStep = None
        step_source = "fallback: benchmarks' own iteration_update"
    results = {"plain": [], "engine": [], "step_source": step_source, "backbone": backbone, "size": size,
               "batch": args.batch_size, "iterations_per_block": args.engine_iters}

    def setup():
        torch.manual_seed(0)
        model = SCRD(backbone, pretrained_for(backbone, args.smoke), contrastive=True, scale_adaptive=True).to(device)
        loss_fn = build_loss(True, ratio_of_sums=True)
        opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=1e-3, betas=(0.5, 0.999))
        loader = make_loader(args.engine_iters * args.batch_size, size, args.batch_size, True)
        return model, loss_fn, opt, loader

    def per_iter(stamps: list[float]) -> float:
        d = np.diff(stamps)[1:]  # drop the first iteration (warm-up)
        return float(np.median(d)) if len(d) else float(np.diff(stamps)[0])

    for _ in range(args.engine_rounds):
        model, loss_fn, opt, loader = setup()
        model.train()
        stamps = [time.perf_counter()]
        for batch in loader:
            train_step(model, opt, loss_fn, batch, device)
            stamps.append(time.perf_counter())
        iters = np.diff(stamps)
        results["plain"].append({"median_s_per_it": per_iter(stamps), "mean_s_per_it": float(np.mean(iters[1:] if len(iters) > 1 else iters)),
                                 "min_s_per_it": float(np.min(iters[1:] if len(iters) > 1 else iters)), "loadavg": load()})

        model, loss_fn, opt, loader = setup()
        step_times: list[float] = []
        if SCRDTrainStep is not None:
            inner = SCRDTrainStep()

            def update(engine, batch, inner=inner):
                t = time.perf_counter()
                out = inner(engine, batch)
                step_times.append(time.perf_counter() - t)
                return out
        else:  # pragma: no cover
            def update(engine, batch):
                return [{"loss": train_step(engine.network, engine.optimizer, engine.loss_function, batch, device).detach()}]
        trainer = SupervisedTrainer(device=device, max_epochs=1, train_data_loader=loader, network=model, optimizer=opt,
                                    loss_function=loss_fn, iteration_update=update, decollate=False, amp=False)
        stamps = []
        trainer.add_event_handler(Events.EPOCH_STARTED, lambda e: stamps.append(time.perf_counter()))
        trainer.add_event_handler(Events.ITERATION_COMPLETED, lambda e: stamps.append(time.perf_counter()))
        trainer.run()
        iters = np.diff(stamps)
        # engine's own share: wall time of its iterations (incl. fetching the batch) outside the step function,
        # minus what the plain loop also spends fetching batches is not separated here; paired with the same loader
        outside = float(np.sum(iters[1:]) - np.sum(step_times[1:])) if len(iters) > 1 else float(iters.sum() - sum(step_times))
        results["engine"].append({"median_s_per_it": per_iter(stamps), "mean_s_per_it": float(np.mean(iters[1:] if len(iters) > 1 else iters)),
                                  "min_s_per_it": float(np.min(iters[1:] if len(iters) > 1 else iters)),
                                  "outside_step_share": outside / float(np.sum(iters[1:] if len(iters) > 1 else iters)), "loadavg": load()})
    # load spikes from other users only ever add time, so the fastest block medians / iterations are the
    # least disturbed estimates; all raw numbers are kept in the JSON
    plain = min(r["median_s_per_it"] for r in results["plain"])
    eng = min(r["median_s_per_it"] for r in results["engine"])
    results["engine_over_plain"] = float(eng / plain)
    results["engine_over_plain_min_iteration"] = float(min(r["min_s_per_it"] for r in results["engine"]) / min(r["min_s_per_it"] for r in results["plain"]))
    results["engine_outside_step_share"] = float(np.median([r["outside_step_share"] for r in results["engine"]]))
    return results


def preprocessing_cost(args) -> dict | None:
    if args.smoke or not (args.data_root / C.SPLIT_JSON).exists():
        return None
    from monai_scrd.data.transforms import preprocessing_transforms

    split = C.read_split(args.data_root)
    files = [split[g][i] for g in C.GROUPS for i in range(3 if args.smoke else 5)]
    tf = preprocessing_transforms(keys="image", image_size=256)
    t0 = time.perf_counter()
    for f in files:
        tf({"image": str(args.data_root / f)})
    return {"files": len(files), "ms_per_file": 1e3 * (time.perf_counter() - t0) / len(files), "image_size": 256, "loadavg": load()}


# ---------------------------------------------------------------------------------------------- report
def _load_note(res: dict) -> str:
    m = res["machine"]
    note = (f"load average at start {m['loadavg'][0]:.2f} on {m['cpu_count']} cores"
            + (" (other jobs were using the cores: wall-clock numbers are pessimistic)" if m["loadavg"][0] > 0.5 * m["cpu_count"] else ""))
    return note


def _skipped_row(first_cells: list, columns: int, reason: str, limit: int = 100) -> str:
    """A report table row of a measurement that did not run: its first cells, dashes, and why (``limit`` characters)."""
    cells = [*map(str, first_cells), *["-"] * (columns - len(first_cells) - 1), f"skipped: {reason[:limit]}"]
    return "| " + " | ".join(cells) + " |"


def report_markdown(res: dict, where) -> str:
    """Markdown tables of one speed JSON (every section it holds); ``benchmarks/quality.py --report`` embeds the
    latest CPU run in RESULTS.md, ``write_speed_md`` writes SPEED.md."""
    m = res["machine"]
    lines = [f"From `{where}` ({m['date_utc']}, {m['cpu_count']} CPU cores ({m.get('cpu_model')}), torch threads {m['torch_threads']}, "
             f"GPU: {m['cuda'] or 'none'}; {_load_note(res)}).\n", f"Command: `{res['command']}`\n"]
    if res.get("noise"):
        lines += ["**Noise synthesis** (per sample, median over calls)\n", "| method | ms / sample (median) | p90 | load |", "|---|---|---|---|"]
        for k, v in res["noise"].items():
            lines.append(f"| {k} | {v['median_ms']:.3f} | {v['p90_ms']:.3f} | {v['loadavg']} |")
    pp = res.get("preprocessing")
    if pp:
        lines.append(f"\nOne-off JPEG decode + grayscale + resize to {pp['image_size']} px (`preprocessing_transforms`): "
                     f"{pp['ms_per_file']:.0f} ms per file ({pp['files']} files, load {pp['loadavg']}); the benchmarks cache this once.\n")
    if res.get("training"):
        lines += ["\n**Training** (batch %d, in-memory data + noise in the loader, %d timed iterations after %d warm-up)\n"
                  % (res["training"][0]["batch"], res["training"][0]["iterations_timed"], res["args"]["warmup"]),
                  "| teacher | px | method | it/s | images/s | data-loading share | load before/after |", "|---|---|---|---|---|---|---|"]
        for r in res["training"]:
            t = r["backbone"] + ("" if r["pretrained"] else " (random init)")
            lines.append(f"| {t} | {r['size']} | {r['method']} | {r['it_per_s']:.3f} | {r['images_per_s']:.2f} | {100 * r['load_share']:.1f}% | "
                         f"{r['loadavg_before']} / {r['loadavg_after']} |")
    if res.get("inference"):
        rows = res["inference"]
        if any("backend" in r for r in rows):
            dflt = res.get("default_cpu_backend")
            lines += [f"\n**Inference, model, per backend** (`Scorer.forward` on preprocessed images: anomaly map + image "
                      f"score; channels-last inputs and AMP on CUDA for PyTorch; the ONNX export is done before timing; fresh "
                      f"process per run, the rows interleaved over {max(r.get('rounds', 1) for r in rows)} round(s); default "
                      f"CPU backend (`auto`): **{dflt}**; installed: {', '.join(res.get('installed_backends') or [])})\n",
                      "| teacher | px | batch | backend (used) | images/s best | images/s median | speed-up vs torch (best; median) | "
                      "ms / image | peak RSS MiB | CUDA peak MiB | compile s | load |", "|---|---|---|---|---|---|---|---|---|---|---|---|"]
            for r in rows:
                if "skipped" in r:
                    lines.append(_skipped_row([r["backbone"], r["size"], r["batch"], r["backend"]], 12, r["skipped"]))
                    continue
                used = r["backend"] if r.get("backend_used") in (None, r["backend"]) else f"{r['backend']} ({r['backend_used']})"
                if r.get("fell_back"):
                    used += " **fell back**"
                if r["backend"] == dflt or (r["backend"] == "auto" and r.get("backend_used") == dflt):
                    used += " (default)"
                sp = (f"**{r['speedup_vs_torch']:.2f}x**; {r['speedup_vs_torch_median']:.2f}x" if r.get("speedup_vs_torch")
                      else "-")
                cuda = f"{r['cuda_peak_mib']:.0f}" if r.get("cuda_peak_mib") is not None else "-"
                comp = max(r.get("compile_s") or [0.0])
                loads = r.get("loadavg_rounds") or [r["loadavg"]]
                lines.append(f"| {r['backbone']} | {r['size']} | {r['batch']} | {used} | {r['images_per_s_best']:.2f} | "
                             f"{r['images_per_s_median']:.2f} | {sp} | {r['ms_per_image']:.1f} | {r['peak_rss_mib']:.0f} | {cuda} | "
                             f"{comp:.1f} | {min(loads)}-{max(loads)} |")
        else:  # JSON of runs before the backends
            lines += ["\n**Inference, model** (`Scorer.forward` on preprocessed images: anomaly map + image score, channels-last"
                      " inputs, AMP on CUDA; fresh process per row)\n",
                      "| teacher | px | batch | images/s | ms / image | peak RSS MiB (VmHWM) | RSS before inference MiB | CUDA peak MiB | load |", "|---|---|---|---|---|---|---|---|---|"]
            for r in rows:
                cuda = f"{r['cuda_peak_mib']:.0f}" if r.get("cuda_peak_mib") is not None else "-"
                lines.append(f"| {r['backbone']} | {r['size']} | {r['batch']} | {r['images_per_s']:.2f} | {r['ms_per_image']:.1f} | "
                             f"{r['peak_rss_mib']:.0f} | {r.get('rss_before_inference_mib', float('nan')):.0f} | {cuda} | {r['loadavg']} |")
    if res.get("entry_points"):
        ok = [r for r in res["entry_points"] if "skipped" not in r]
        lines += [f"\n**Inference, entry points** (EfficientNet-Lite0 with ImageNet teacher, {ok[0]['size'] if ok else '?'} px, "
                  f"{ok[0]['images'] if ok else '?'} image files decoded, preprocessed and scored, the same files for every row; "
                  f"batch {ok[0]['batch'] if ok else '?'} where the entry point batches; fresh process per row)\n",
                  "| entry point | backend (used) | images/s | vs torch | ms / image | peak RSS MiB | CUDA peak MiB | load | note |",
                  "|---|---|---|---|---|---|---|---|---|"]
        for r in res["entry_points"]:
            be = r.get("backend", "torch")
            if r.get("backend_used") not in (None, be):
                be += f" ({r['backend_used']})"
            if r.get("backend_resolved") and r.get("backend_used") and r["backend_used"] != r["backend_resolved"]:
                be += " **fell back**"
            if "skipped" in r:
                lines.append(_skipped_row([r["entry"], be], 9, r["skipped"], limit=120))
                continue
            cuda = f"{r['cuda_peak_mib']:.0f}" if r.get("cuda_peak_mib") is not None else "-"
            sp = f"{r['speedup_vs_torch']:.2f}x" if r.get("speedup_vs_torch") else "-"
            lines.append(f"| {r['entry']} | {be} | {r['images_per_s']:.2f} | {sp} | {r['ms_per_image']:.1f} | {r['peak_rss_mib']:.0f} | "
                         f"{cuda} | {r['loadavg']} | {r.get('note', '')} |")
    if res.get("stages"):
        ok = [r for r in res["stages"] if "skipped" not in r]
        lines += [f"\n**Time per stage** (ms per image, {ok[0]['images'] if ok else '?'} entry-point files, one process per "
                  f"backend, {ok[0]['size'] if ok else '?'} px: decode = `read_medical_image`; preprocess = the scorer's "
                  f"transform on the decoded array; model = `Scorer.forward`, batch {ok[0]['batch'] if ok else '?'}; write = "
                  f"`ScoreWriter` with heatmap overlays and NIfTI maps, the maps resampled to each file's size)\n",
                  "| backend (used) | decode | preprocess | model | write | total | images/s (sum of stages) | peak RSS MiB | load |",
                  "|---|---|---|---|---|---|---|---|---|"]
        for r in res["stages"]:
            if "skipped" in r:
                lines.append(_skipped_row([r["backend"]], 9, r["skipped"]))
                continue
            be = r["backend"] if r["backend_used"] == r["backend"] else f"{r['backend']} ({r['backend_used']})"
            ms = r["ms_per_image"]
            lines.append(f"| {be} | {ms['decode']:.1f} | {ms['preprocess']:.1f} | {ms['model']:.1f} | {ms['write']:.1f} | "
                         f"{r['total_ms_per_image']:.1f} | {r['images_per_s_sum_of_stages']:.2f} | {r['peak_rss_mib']:.0f} | {r['loadavg']} |")
    pl = res.get("pipeline")
    if pl:
        lines += [f"\n**Bundle inference as a user runs it** (`python -m monai.bundle run` of `configs/inference.json`, "
                  f"{pl['images']} files ({pl['files']}), {pl['settings']}; wall clock of the whole process, start-up "
                  f"included; {pl['peak_rss']})\n",
                  "| code | files | wall s | images/s | ms / image | peak RSS MiB | ONNX export included | heatmaps | load before/after |",
                  "|---|---|---|---|---|---|---|---|---|"]
        for r in pl["runs"]:
            if "skipped" in r:
                lines.append(_skipped_row([r["code"]], 9, r["skipped"]))
                continue
            code = r["code"] + (f" (`{r['revision'][:10]}`)" if r.get("revision") else "")
            if r.get("fell_back_to_torch"):
                code += " **fell back to PyTorch**"
            rss = f"{r['peak_rss_mib']:.0f}" if r.get("peak_rss_mib") is not None else "-"
            lines.append(f"| {code} | {r['images']} | {r['wall_s']:.1f} | {r['images_per_s']:.2f} | {r['ms_per_image']:.1f} | {rss} | "
                         f"{'yes' if r['includes_graph_export'] else 'no'} | {r['heatmaps_written']} | "
                         f"{r['loadavg_before']} / {r['loadavg_after']} |")
        if pl.get("speedup_vs_ref") is not None:
            lines.append(f"\nCurrent code / `{pl['ref']['rev']}` = **{pl['speedup_vs_ref']:.2f}x** images/s"
                         + (f" ({pl['speedup_vs_ref_graph_cached']:.2f}x with the graph already cached)"
                            if pl.get("speedup_vs_ref_graph_cached") is not None else "") + ".\n")
        if pl.get("note"):
            lines.append(f"\n{pl['note']}\n")
    lg = res.get("large")
    if lg:
        if "skipped" in lg:
            lines.append(f"\n**Large image**: skipped ({lg['skipped'][:200]})\n")
        else:
            be = lg["backend"] + (f" -> {lg['backend_used']}" if lg.get("backend_used") else "")
            lines += [f"\n**Large image** ({lg['image']}, {lg['file_mib']:.0f} MiB file; `AnomalyInference` with heatmaps and "
                      f"NIfTI maps on, backend {be}, {lg['size']} px; {lg['note']})\n",
                      "| seconds | first call s | RSS before scoring MiB | peak RSS while scoring MiB | heatmap written | load |",
                      "|---|---|---|---|---|---|",
                      f"| **{lg['seconds']:.2f}** | {lg['seconds_first']:.2f} | {lg['rss_before_scoring_mib']:.0f} | "
                      f"**{lg['peak_rss_mib']:.0f}**{'' if lg.get('peak_rss_is_scoring_only') else ' (whole process)'} | "
                      f"{'yes' if lg['heatmap_exists'] else 'NO'} {lg.get('heatmap_size') or ''} | {lg['loadavg']} |"]
    e = res.get("engine")
    if e:
        lines += [f"\n**Engine overhead** ({e['backbone']}, {e['size']} px, batch {e['batch']}, SCRD; {e['step_source']}; "
                  f"{e['iterations_per_block']} iterations per block, blocks interleaved plain/engine)\n",
                  "| block | plain loop s/it (median) | engine s/it (median) | load |", "|---|---|---|---|"]
        for k, (p, g) in enumerate(zip(e["plain"], e["engine"])):
            lines.append(f"| {k + 1} | {p['median_s_per_it']:.3f} | {g['median_s_per_it']:.3f} | {p['loadavg']} / {g['loadavg']} |")
        lines.append(f"\nEngine / plain = **{e['engine_over_plain']:.3f}** (fastest block median of each; target <= 1.05); "
                     f"fastest single iteration engine / plain = {e.get('engine_over_plain_min_iteration', float('nan')):.3f}; "
                     f"share of the engine's iteration wall time spent outside the bundle's step function (Ignite events + "
                     f"fetching the batch, which the plain loop also pays) = {100 * e.get('engine_outside_step_share', float('nan')):.1f}% "
                     f"(median over blocks). Engine built without the bundle's handlers (logging, checkpoints).\n")
    return "\n".join(lines)


def write_speed_md(results_dir: Path = C.RESULTS_DIR) -> Path:
    """``results/speed/SPEED.md``: the latest CPU run and the latest CUDA run (generated; do not edit)."""
    speed_dir = results_dir / "speed"
    parts = ["# Speed (generated by `python benchmarks/speed.py`; do not edit)\n"]
    for title, folder in (("CPU", speed_dir), ("GPU", speed_dir / "cuda")):
        files = sorted(folder.glob("speed_*.json"))
        parts.append(f"## {title}\n")
        if not files:
            parts.append("(not run yet)\n")
            continue
        parts.append(report_markdown(json.loads(files[-1].read_text()), files[-1].relative_to(results_dir.parent)) + "\n")
    out = speed_dir / "SPEED.md"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("\n".join(parts))
    return out


def main(argv=None) -> dict:
    args = parse_args(argv)
    if args.child_infer:
        b, s, bs, n, be = args.child_infer
        print(json.dumps(child_infer(b, int(s), int(bs), int(n), be, args.device, args.graph_cache, args.smoke)))
        return {}
    if args.child_entry:
        entry, size, batch, be = args.child_entry
        files = json.loads(args.files.read_text())
        print(json.dumps(child_entry(entry, int(size), int(batch), be, files, args.device, args.smoke, args.graph_cache)))
        return {}
    if args.child_stages:
        size, batch, be = args.child_stages
        files = json.loads(args.files.read_text())
        print(json.dumps(child_stages(int(size), int(batch), be, files, args.device, args.smoke, args.graph_cache)))
        return {}
    if args.child_large:
        image, size, be = args.child_large
        print(json.dumps(child_large(image, int(size), be, args.device, args.smoke, args.graph_cache)))
        return {}
    if args.report:
        print(f"wrote {write_speed_md()}")
        return {}
    device = torch.device(args.device)
    command = "python benchmarks/speed.py " + " ".join(argv if argv is not None else sys.argv[1:])
    print("command:", command, flush=True)
    res = {"command": command.strip(), "args": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
           "machine": C.machine_info()}
    print("machine:", json.dumps(res["machine"]), flush=True)
    res["installed_backends"] = installed_backends()
    res["default_cpu_backend"] = default_backend("cpu")  # what backend "auto" runs on the CPU
    print(f"backends installed: {res['installed_backends']}; default on the CPU: {res['default_cpu_backend']}; "
          f"measured: {args.backends} (entry points: {args.entry_backends})", flush=True)
    # one folder per run: the children's temporary files and the ONNX graphs they share (removed at the end)
    args.work = Path(tempfile.mkdtemp(prefix="scrd_speed_run_"))
    args.graph_cache = args.work / "graphs"
    try:
        _run_sections(args, res, device)
    finally:
        shutil.rmtree(args.work, ignore_errors=True)
    folder = C.RESULTS_DIR / "speed" / ("cuda" if device.type == "cuda" else "")
    out = args.out or folder / f"speed_{res['machine']['date_utc'][:19].replace(':', '')}.json"
    res["args"] = {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items() if k not in ("work", "graph_cache")}
    C.write_json(out, res)
    print(report_markdown(res, out))
    if args.out is None:
        print(f"wrote {write_speed_md()}")
    print(f"wrote {out} ({res['total_seconds']:.0f} s)")
    return res


def _run_sections(args, res: dict, device) -> None:
    t0 = time.perf_counter()
    res["section_seconds"] = {}
    mark = [time.perf_counter()]

    def done(section: str) -> None:
        res["section_seconds"][section] = round(time.perf_counter() - mark[0], 1)
        mark[0] = time.perf_counter()

    if "noise" in args.sections:
        res["noise"] = noise_speed(args)
        for k, v in res["noise"].items():
            print(f"  noise {k}: {v['median_ms']:.3f} ms (load {v['loadavg']})", flush=True)
        done("noise")
    if "preprocessing" in args.sections:
        res["preprocessing"] = preprocessing_cost(args)
        done("preprocessing")
    if "training" in args.sections:
        res["training"] = []
        for backbone in args.backbones:
            for size in args.sizes:
                for method in METHODS:
                    r = training_speed(args, backbone, size, method, device)
                    res["training"].append(r)
                    print(f"  train {backbone} {size}px {method}: {r['it_per_s']:.3f} it/s, {r['images_per_s']:.2f} images/s, "
                          f"loading {100 * r['load_share']:.1f}% (load {r['loadavg_after']})", flush=True)
        done("training")
    for section, run in (("inference", inference_speed), ("entry_points", entry_point_speed), ("stages", stages_speed),
                         ("pipeline", pipeline_speed), ("large", large_speed)):
        if section in args.sections:
            res[section] = run(args)
            done(section)
    if "engine" in args.sections:
        res["engine"] = engine_overhead(args, device)
        print(f"  engine/plain = {res['engine']['engine_over_plain']:.3f}", flush=True)
        done("engine")
    res["total_seconds"] = time.perf_counter() - t0
    res["machine_end"] = {"loadavg": list(os.getloadavg())}


if __name__ == "__main__":
    main()
