"""The bundle's main command and its evaluation on the embedded sample, run exactly as the README says, per seed.

For every seed this runs, in fresh temporary output folders (nothing is written into the repository)::

    python -m monai.bundle run training --config_file bundles/scrd/configs/train.json --seed S [overrides]
    python -m monai.bundle run evaluating --config_file "['.../train.json','.../evaluate.json']" --seed S [overrides]

and writes ``benchmarks/results/bundle_sample/<name>/seed<S>.json`` with the wall time of the training command, the
evaluation's ``metrics.json`` (AUROC on the sample's test list, F1 at the stored label-free threshold, ...), the
stored ``threshold.json`` and the last training log lines. The bundle docs quote these files.

    python benchmarks/bundle_sample.py                                   # defaults, seeds 0 1 2
    python benchmarks/bundle_sample.py --name paper --config paper       # the paper-literal configuration
    python benchmarks/bundle_sample.py --name rd4ad -- --contrastive false --scale_adaptive false
    python benchmarks/bundle_sample.py --report                          # the markdown table the bundle docs quote

``--extra-eval NAME=DATALIST`` runs ``run evaluating`` once more per seed on another datalist with the same trained
model (for example the de-duplicated test list of the same split) and stores its metrics under ``extra_evals``;
``--keep-models DIR`` copies each seed's model folder to ``DIR/<name>/seed<S>`` for later inspection.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as C  # noqa: E402

CONFIGS = C.REPO / "bundles" / "scrd" / "configs"


def config_files(*names: str) -> str:
    files = [str(CONFIGS / f"{n}.json") for n in names]
    return files[0] if len(files) == 1 else "[" + ",".join(repr(f) for f in files) + "]"


def run(cmd: list[str]) -> tuple[float, str]:
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=C.REPO)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    return wall, proc.stdout + proc.stderr


def with_override(cmd: list[str], flag: str, value: str) -> list[str]:
    """``cmd`` with ``flag``'s value replaced by ``value`` (appended when ``cmd`` has no ``flag``)."""
    if flag in cmd:
        i = cmd.index(flag)
        return [*cmd[: i + 1], value, *cmd[i + 2:]]
    return [*cmd, flag, value]


def report(out_dir: Path) -> str:
    """Markdown table of every recorded run (one row per configuration and seed)."""
    lines = ["| configuration | seed | test AUROC | F1 at the stored threshold | training wall time | load at the end | command |",
             "|---|---|---|---|---|---|---|"]
    for f in sorted(out_dir.glob("*/seed*.json")):
        d = json.loads(f.read_text())
        stored = d["metrics"].get("stored_threshold", {})
        f1 = f"{stored['f1']:.3f}" if "f1" in stored else "-"
        lines.append(f"| {d['name']} | {d['seed']} | {d['metrics']['auroc']:.3f} | {f1} | {d['train_wall_s']:.0f} s | "
                     f"{d['machine']['loadavg'][0]:.1f} | `{d['train_command']}` |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> list[dict]:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    p.add_argument("--name", default="default", help="results sub-folder")
    p.add_argument("--config", nargs="*", default=[], help="extra config files after train.json (e.g. paper)")
    p.add_argument("--out-dir", type=Path, default=C.RESULTS_DIR / "bundle_sample")
    p.add_argument("--report", action="store_true", help="print the markdown table of the recorded runs")
    p.add_argument("--extra-eval", action="append", default=[], metavar="NAME=DATALIST",
                   help="also run `run evaluating` with --datalist DATALIST (same model); repeatable")
    p.add_argument("--keep-models", type=Path, default=None, metavar="DIR", help="copy each seed's model folder here")
    p.add_argument("overrides", nargs="*", help="bundle overrides after --, e.g. --max_iterations 50")
    args = p.parse_args(argv)
    extra = dict(item.split("=", 1) for item in args.extra_eval)
    if args.report:
        print(report(args.out_dir))
        return []
    results = []
    for seed in args.seeds:
        with tempfile.TemporaryDirectory(prefix="scrd_sample_") as tmp:
            common = ["--seed", str(seed), "--output_dir", f"{tmp}/runs", "--model_dir", f"{tmp}/models", *args.overrides]
            train_cmd = [sys.executable, "-m", "monai.bundle", "run", "training",
                         "--config_file", config_files("train", *args.config), *common]
            wall, log = run(train_cmd)
            eval_cmd = [sys.executable, "-m", "monai.bundle", "run", "evaluating",
                        "--config_file", config_files("train", *args.config, "evaluate"), *common, "--eval_dir", f"{tmp}/eval"]
            eval_wall, eval_log = run(eval_cmd)
            metrics = json.loads(Path(tmp, "eval", "metrics.json").read_text())
            threshold = json.loads(Path(tmp, "models", "threshold.json").read_text())
            extra_evals = {}
            for extra_name, datalist in extra.items():
                extra_cmd = with_override([*eval_cmd[:-1], f"{tmp}/eval_{extra_name}"], "--datalist", datalist)
                extra_wall, _ = run(extra_cmd)
                extra_evals[extra_name] = {
                    "command": " ".join(["python", *extra_cmd[1:]]).replace(tmp, "$TMP").replace(str(C.REPO) + "/", ""),
                    "eval_wall_s": round(extra_wall, 1),
                    "metrics": json.loads(Path(tmp, f"eval_{extra_name}", "metrics.json").read_text()),
                }
            if args.keep_models is not None:
                shutil.copytree(Path(tmp, "models"), args.keep_models / args.name / f"seed{seed}", dirs_exist_ok=True)
        res = {
            "name": args.name,
            "seed": seed,
            "train_command": " ".join(["python", *train_cmd[1:]]).replace(tmp, "$TMP").replace(str(C.REPO) + "/", ""),
            "train_wall_s": round(wall, 1),
            "eval_wall_s": round(eval_wall, 1),
            "metrics": metrics,
            "threshold": threshold,
            **({"extra_evals": extra_evals} if extra_evals else {}),
            "train_log_tail": [ln.replace(tmp, "$TMP") for ln in log.strip().splitlines()[-12:]],
            "machine": C.machine_info(),
        }
        C.write_json(args.out_dir / args.name / f"seed{seed}.json", res)
        print(f"[{args.name} seed {seed}] AUROC {metrics.get('auroc', float('nan')):.3f} train {wall:.0f} s "
              f"(load {res['machine']['loadavg'][0]:.1f})", flush=True)
        results.append(res)
    return results


if __name__ == "__main__":
    main()
