"""Speed benchmark on the current machine (CPU unless ``--device cuda``).

Measures, in one run:
- noise synthesis, ms per sample: our ``RandSimplexNoised`` (simplex and Gaussian) on a 3xSxS image vs plain
  opensimplex (``noise2`` per pixel, 6 octaves, one 32x32 box) with numba's JIT disabled;
- training iterations/s and images/s of RD4AD vs SCRD (Algorithm 2 loss) at 128 and 256 px with the
  EfficientNet-Lite0 (ImageNet weights) and ResNet-18 (RANDOM init: no weights offline; speed only) teachers,
  with the share of wall time spent waiting for the data loader (in-memory preprocessed images + noise synthesis
  in the loader, ``num_workers=0``), plus the one-off JPEG decode + preprocessing cost per file;
- inference images/s and peak RSS (and CUDA peak memory on GPU) at batch 1 and 16 through the one scorer's forward
  (``monai_scrd.scoring.Scorer.forward``: channels-last inputs, AMP on CUDA; anomaly map + image score included), each
  configuration in a fresh subprocess so that RSS peaks do not mix;
- images/s and peak memory per entry point on image files (decode + preprocessing + scoring + outputs): the scorer
  itself, the bundle's evaluation (MONAI evaluator over a ScoringDataset loader), the bundle's inference (scores.csv,
  no figures), the MLflow pyfunc (saved and loaded with MLflow) and, when its venv exists, the MONAI Label server
  (one HTTP request per image), each in a fresh process;
- engine overhead: MONAI ``SupervisedTrainer`` + the bundle's ``SCRDTrainStep`` vs a plain PyTorch loop with the
  same model, data loader and batch, interleaved (plain, engine, plain, engine) to share the machine's load.

Timings on a shared machine fluctuate: every measurement records ``os.getloadavg()``.

    python benchmarks/speed.py                 # default run, < ~10 min on 2 CPU cores
    python benchmarks/speed.py --smoke         # seconds; used by tests/test_benchmarks.py
    python benchmarks/speed.py --device cuda --sections inference entry_points training   # GPU (results/speed/cuda/)

Each run writes its JSON (``results/speed/[cuda/]speed_<date>.json``) and regenerates ``results/speed/SPEED.md`` from
the latest CPU and the latest CUDA JSON (``--report`` only regenerates it).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as C  # noqa: E402
from noise_speed import plain_opensimplex_times  # noqa: E402

import torch  # noqa: E402

from monai_scrd.losses import build_loss  # noqa: E402
from monai_scrd.networks import SCRD  # noqa: E402

METHODS = {"rd4ad": dict(contrastive=False, scale_adaptive=False), "scrd": dict(contrastive=True, scale_adaptive=True)}
SECTIONS = ("noise", "preprocessing", "training", "inference", "entry_points", "engine")
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
    p.add_argument("--sections", nargs="+", default=list(SECTIONS), choices=list(SECTIONS))
    p.add_argument("--report", action="store_true", help="only regenerate results/speed/SPEED.md")
    p.add_argument("--child-infer", nargs=4, metavar=("BACKBONE", "SIZE", "BATCH", "IMAGES"), help=argparse.SUPPRESS)
    p.add_argument("--child-entry", nargs=3, metavar=("ENTRY", "SIZE", "BATCH"), help=argparse.SUPPRESS)
    p.add_argument("--files", type=Path, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.smoke:
        args.sizes, args.backbones, args.batch_size, args.train_iters, args.warmup = [64], ["resnet18"], 2, 1, 1
        args.infer_size, args.infer_batches, args.infer_images = 64, [2], 2
        args.engine_iters, args.engine_rounds, args.noise_calls = 3, 1, 5
        args.entry_images, args.entry_batch = 3, 2
    return args


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
def child_infer(backbone: str, size: int, batch: int, images: int, device_name: str) -> dict:
    from monai_scrd.scoring import Scorer

    device = torch.device(device_name)
    model = SCRD(backbone, backbone == "efficientnet_lite0", contrastive=True, scale_adaptive=True).to(device).eval()
    scorer = Scorer(model, image_size=size, batch_size=batch, device=device)
    x = torch.rand(images, 3, size, size)
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
        "backbone": backbone, "size": size, "batch": batch, "images": images, "images_per_s": images / dt,
        "ms_per_image": 1e3 * dt / images, "peak_rss_mib": C.peak_rss_mib(), "rss_before_inference_mib": rss_model,
        "cuda_peak_mib": torch.cuda.max_memory_allocated() / 2**20 if device.type == "cuda" else None,
        "amp": device.type == "cuda", "torch_threads": torch.get_num_threads(), "loadavg": load(),
    }


def inference_speed(args) -> list[dict]:
    out = []
    for backbone in args.backbones:
        for batch in args.infer_batches:
            images = max(args.infer_images, batch) // batch * batch
            cmd = [sys.executable, str(Path(__file__).resolve()), "--child-infer", backbone, str(args.infer_size), str(batch), str(images),
                   "--device", args.device]
            res = subprocess.run(cmd, capture_output=True, text=True)
            if res.returncode:
                raise RuntimeError(res.stderr[-2000:])
            out.append(json.loads(res.stdout.strip().splitlines()[-1]))
            print(f"  inference {backbone} {args.infer_size}px batch {batch}: {out[-1]['images_per_s']:.2f} images/s, "
                  f"peak RSS {out[-1]['peak_rss_mib']:.0f} MiB (load {out[-1]['loadavg']})", flush=True)
    return out


# ---------------------------------------------------------------------------------------------- entry points
def entry_files(args, folder: Path) -> list[str]:
    """``--entry-images`` image files: the Brain Tumor test images when present (JPEG, ~512 px), else random PNGs."""
    folder.mkdir(parents=True, exist_ok=True)
    if not args.smoke and (args.data_root / C.SPLIT_JSON).exists():
        split = C.read_split(args.data_root)
        rel = [p for g in ("test/normal", "test/glioma", "test/meningioma") for p in split[g][: args.entry_images]]
        return [str(args.data_root / p) for p in rel[: args.entry_images]]
    from PIL import Image

    rng = np.random.default_rng(0)
    paths = []
    for i in range(args.entry_images):
        paths.append(str(folder / f"img_{i:03d}.png"))
        Image.fromarray(rng.integers(0, 256, (300, 280), dtype=np.uint8)).save(paths[-1])
    return paths


def _entry_model(work: Path, size: int, pretrained: bool):
    """A trained-bundle stand-in: SCRD Lite0 weights (ImageNet teacher) + threshold, as a bundle and a model folder."""
    import shutil

    from monai_scrd.registry.spec import ModelSpec, write_model_dir

    torch.manual_seed(0)
    net = SCRD("efficientnet_lite0", pretrained, contrastive=True, scale_adaptive=True).eval()
    ckpt = work / "model.pt"
    torch.save({"model": net.state_dict()}, ckpt)
    spec = ModelSpec(network={"backbone": "efficientnet_lite0", "contrastive": True, "scale_adaptive": True},
                     preprocessing={"image_size": size}, threshold={"threshold": 0.5, "method": "benchmark"})
    model_dir = Path(write_model_dir(work / "model", ckpt, spec))
    bundle = work / "bundle"
    (bundle / "models").mkdir(parents=True, exist_ok=True)
    (bundle / "configs").mkdir(exist_ok=True)
    shutil.copy(ckpt, bundle / "models" / "model.pt")
    (bundle / "models" / "threshold.json").write_text(json.dumps(spec.threshold))
    cfg = json.loads((C.REPO / "bundles" / "scrd" / "configs" / "inference.json").read_text())
    cfg.update(image_size=size, bundle_root=str(bundle))
    (bundle / "configs" / "inference.json").write_text(json.dumps(cfg))
    return net, spec, model_dir, bundle


def child_entry(entry: str, size: int, batch: int, files: list[str], device_name: str, smoke: bool) -> dict:
    """Score ``files`` through one entry point; the set-up (model loading, server start) is not timed."""
    import tempfile

    from monai_scrd.scoring import Scorer

    work = Path(tempfile.mkdtemp(prefix="scrd_speed_"))
    net, spec, model_dir, bundle = _entry_model(work, size, pretrained=not smoke)
    device = torch.device(device_name)
    net = net.to(device)
    extra: dict = {}
    if entry == "scorer":
        scorer = Scorer(net, image_size=size, batch_size=batch, threshold=0.5, device=device)

        def run(paths):
            return [r.score for r in scorer.score(paths)]
    elif entry == "evaluation":
        from monai.data import DataLoader
        from monai.engines import SupervisedEvaluator

        from monai_scrd.engines import ScoreCollector, SCRDEvalStep
        from monai_scrd.scoring import ScoringDataset, collate_prepared

        scorer = Scorer(net, image_size=size, batch_size=batch, threshold=0.5, device=device)

        def run(paths):
            items = [{"image": f, "label": i % 2} for i, f in enumerate(paths)]
            loader = DataLoader(ScoringDataset(items, scorer), batch_size=batch, collate_fn=collate_prepared, num_workers=0)
            collector = ScoreCollector("test", str(work / "eval"), 0.5)
            SupervisedEvaluator(device=device, val_data_loader=loader, network=net, iteration_update=SCRDEvalStep(scorer),
                                val_handlers=[collector], decollate=False).run()
        extra["note"] = "metrics.json, scores.csv, ROC curve and histogram included"
    elif entry == "inference":
        from monai_scrd.engines import AnomalyInference

        scorer = Scorer(net, image_size=size, batch_size=batch, threshold=0.5, device=device)

        def run(paths):
            AnomalyInference(scorer, str(work / "out"), save_heatmaps=False, save_nifti=False)(paths)
        extra["note"] = "scores.csv and errors.csv; no heatmap figures"
    elif entry == "pyfunc":
        import mlflow.pyfunc
        import pandas as pd

        from monai_scrd.registry.pyfunc import model_code_path

        os.environ["SCRD_DEVICE"], os.environ["SCRD_BATCH_SIZE"] = device_name, str(batch)
        os.environ["SCRD_INPUT_ROOTS"] = os.pathsep.join(sorted({os.path.dirname(os.path.realpath(f)) for f in files}))
        # saved as the registry logs it: a model from code with the safetensors weights and the spec JSON
        mlflow.pyfunc.save_model(str(work / "pyfunc"), python_model=model_code_path(),
                                 artifacts={"weights": str(model_dir / "model.safetensors"), "spec": str(model_dir / "scrd_model.json")})
        model = mlflow.pyfunc.load_model(str(work / "pyfunc"))

        def run(paths):
            model.predict(pd.DataFrame({"image": paths}))
    elif entry == "monai_label":
        return _label_entry(bundle, work, files, device_name)
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


def _label_entry(bundle: Path, work: Path, files: list[str], device_name: str) -> dict:
    """MONAI Label server (its own venv) on loopback: one POST /infer per image; the server's peak RSS from /proc."""
    import shutil
    import signal
    import socket
    import urllib.request

    venv = os.environ.get("SCRD_LABEL_VENV") or str(Path.home() / ".cache" / "monai-scrd" / "label-venv")
    python = Path(venv) / "bin" / "python"
    if not python.exists():
        return {"entry": "monai_label", "skipped": f"no MONAI Label venv at {venv}"}
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
                             "--conf", "train", "false"],
                            cwd=work, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + 300
        while True:
            if proc.poll() is not None or time.time() > deadline:
                return {"entry": "monai_label", "skipped": "server did not start: " + (work / "server.log").read_text()[-500:]}
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
    return {"entry": "monai_label", "size": None, "batch": 1, "images": len(ids), "images_per_s": len(ids) / dt,
            "ms_per_image": 1e3 * dt / len(ids), "peak_rss_mib": hwm, "cuda_peak_mib": None, "loadavg": load(),
            "note": "one HTTP request per image (the server's peak RSS; JSON answer)"}


def entry_point_speed(args) -> list[dict]:
    import tempfile

    files = entry_files(args, Path(tempfile.mkdtemp(prefix="scrd_speed_files_")))
    listing = Path(tempfile.mkdtemp(prefix="scrd_speed_list_")) / "files.json"
    listing.write_text(json.dumps(files))
    size = 64 if args.smoke else args.infer_size
    out = []
    # smoke: the entry points with set-up code of their own here (the scorer's is one line; MONAI Label needs its venv)
    for entry in ENTRY_POINTS if not args.smoke else ("evaluation", "pyfunc"):
        cmd = [sys.executable, str(Path(__file__).resolve()), "--child-entry", entry, str(size), str(args.entry_batch),
               "--files", str(listing), "--device", args.device] + (["--smoke"] if args.smoke else [])
        res = subprocess.run(cmd, capture_output=True, text=True)
        if res.returncode:  # e.g. MLflow not installed on this machine: recorded, the other entry points still run
            if args.smoke:
                raise RuntimeError(res.stderr[-3000:])
            last = [ln for ln in res.stderr.strip().splitlines() if ln.strip()][-1:] or ["no output"]
            out.append({"entry": entry, "skipped": f"failed: {last[0]}"})
        else:
            out.append(json.loads(res.stdout.strip().splitlines()[-1]))
        r = out[-1]
        if "skipped" in r:
            print(f"  entry point {entry}: skipped ({r['skipped'][:200]})", flush=True)
        else:
            print(f"  entry point {entry}: {r['images_per_s']:.2f} images/s, peak RSS {r['peak_rss_mib']:.0f} MiB "
                  f"(load {r['loadavg']})", flush=True)
    return out


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
    from monai_scrd.data import preprocessing_transforms

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
        lines += ["\n**Inference, model** (`Scorer.forward` on preprocessed images: anomaly map + image score, channels-last"
                  " inputs, AMP on CUDA; fresh process per row)\n",
                  "| teacher | px | batch | images/s | ms / image | peak RSS MiB (VmHWM) | RSS before inference MiB | CUDA peak MiB | load |", "|---|---|---|---|---|---|---|---|---|"]
        for r in res["inference"]:
            cuda = f"{r['cuda_peak_mib']:.0f}" if r.get("cuda_peak_mib") is not None else "-"
            lines.append(f"| {r['backbone']} | {r['size']} | {r['batch']} | {r['images_per_s']:.2f} | {r['ms_per_image']:.1f} | "
                         f"{r['peak_rss_mib']:.0f} | {r.get('rss_before_inference_mib', float('nan')):.0f} | {cuda} | {r['loadavg']} |")
    if res.get("entry_points"):
        ok = [r for r in res["entry_points"] if "skipped" not in r]
        lines += [f"\n**Inference, entry points** (EfficientNet-Lite0 with ImageNet teacher, {ok[0]['size'] if ok else '?'} px, "
                  f"{ok[0]['images'] if ok else '?'} image files decoded, preprocessed and scored; batch "
                  f"{ok[0]['batch'] if ok else '?'} where the entry point batches; fresh process per row)\n",
                  "| entry point | images/s | ms / image | peak RSS MiB | CUDA peak MiB | load | note |", "|---|---|---|---|---|---|---|"]
        for r in res["entry_points"]:
            if "skipped" in r:
                lines.append(f"| {r['entry']} | - | - | - | - | - | skipped: {r['skipped'][:120]} |")
                continue
            cuda = f"{r['cuda_peak_mib']:.0f}" if r.get("cuda_peak_mib") is not None else "-"
            lines.append(f"| {r['entry']} | {r['images_per_s']:.2f} | {r['ms_per_image']:.1f} | {r['peak_rss_mib']:.0f} | {cuda} | "
                         f"{r['loadavg']} | {r.get('note', '')} |")
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
        b, s, bs, n = args.child_infer
        print(json.dumps(child_infer(b, int(s), int(bs), int(n), args.device)))
        return {}
    if args.child_entry:
        entry, size, batch = args.child_entry
        files = json.loads(args.files.read_text())
        print(json.dumps(child_entry(entry, int(size), int(batch), files, args.device, args.smoke)))
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
    t0 = time.perf_counter()
    if "noise" in args.sections:
        res["noise"] = noise_speed(args)
        for k, v in res["noise"].items():
            print(f"  noise {k}: {v['median_ms']:.3f} ms (load {v['loadavg']})", flush=True)
    if "preprocessing" in args.sections:
        res["preprocessing"] = preprocessing_cost(args)
    if "training" in args.sections:
        res["training"] = []
        for backbone in args.backbones:
            for size in args.sizes:
                for method in METHODS:
                    r = training_speed(args, backbone, size, method, device)
                    res["training"].append(r)
                    print(f"  train {backbone} {size}px {method}: {r['it_per_s']:.3f} it/s, {r['images_per_s']:.2f} images/s, "
                          f"loading {100 * r['load_share']:.1f}% (load {r['loadavg_after']})", flush=True)
    if "inference" in args.sections:
        res["inference"] = inference_speed(args)
    if "entry_points" in args.sections:
        res["entry_points"] = entry_point_speed(args)
    if "engine" in args.sections:
        res["engine"] = engine_overhead(args, device)
        print(f"  engine/plain = {res['engine']['engine_over_plain']:.3f}", flush=True)
    res["total_seconds"] = time.perf_counter() - t0
    res["machine_end"] = {"loadavg": list(os.getloadavg())}
    folder = C.RESULTS_DIR / "speed" / ("cuda" if device.type == "cuda" else "")
    out = args.out or folder / f"speed_{res['machine']['date_utc'][:19].replace(':', '')}.json"
    C.write_json(out, res)
    print(report_markdown(res, out))
    if args.out is None:
        print(f"wrote {write_speed_md()}")
    print(f"wrote {out} ({res['total_seconds']:.0f} s)")
    return res


if __name__ == "__main__":
    main()
