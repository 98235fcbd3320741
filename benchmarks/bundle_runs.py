"""A data set through the bundle's own commands, per seed, keeping every run folder: train, (re)fit the scoring at the
end of training, evaluate, and check the label-free scoring choice (``benchmarks/scoring_choice.py``).

Per seed, in ``<runs-dir>/<name>/seed<S>/``:

1. ``python -m monai.bundle run training ... --output_dir RUN/runs --model_dir RUN/trained`` (skipped when
   ``RUN/runs/checkpoints/scrd_final.pt`` exists: a run trained earlier, possibly by an older commit);
2. ``python -m monai.bundle run training ... --resume_from RUN/runs/checkpoints/scrd_final.pt --model_dir RUN/models``:
   nothing left to train, so only the end of training runs with this checkout's code (model selection, the scoring
   fit, ``model.pt`` and ``threshold.json``), exactly as at the end of a fresh run;
3. ``python -m monai.bundle run evaluating ... --model_dir RUN/models --eval_dir RUN/eval``;
4. ``scoring_choice.evaluate_model`` on ``RUN/models`` (every candidate scoring's synthetic and test AUROC; skipped
   with ``--no-choice``).

Writes ``<out-dir>/<name>/seed<S>.json`` (commands, wall times, metrics.json, threshold.json without its score list,
the scoring-choice record). ``--report`` prints the markdown table of RESULTS.md. Test labels are only reported.

    python benchmarks/bundle_runs.py --name chest_default --datalist /tmp/exp/cx.json --seeds 0 1 2 \
        --runs-dir /tmp/exp/runs -- --allow_absolute_paths true --max_iterations 1500
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path


sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as C  # noqa: E402
from quality_report import ms  # noqa: E402
import scoring_choice  # noqa: E402

CONFIGS = C.REPO / "bundles" / "scrd" / "configs"


def run(cmd: list[str], log: Path) -> float:
    t0 = time.perf_counter()
    with open(log, "w") as f:
        proc = subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT, cwd=C.REPO)
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed ({proc.returncode}); see {log}")
    return round(time.perf_counter() - t0, 1)


def one_seed(args, seed: int) -> dict:
    run_dir = args.runs_dir / args.name / f"seed{seed}"
    run_dir.mkdir(parents=True, exist_ok=True)
    train = str(CONFIGS / "train.json")
    evaluate = "[" + ",".join(repr(str(CONFIGS / f)) for f in ("train.json", "evaluate.json")) + "]"
    common = ["--seed", str(seed), "--datalist", args.datalist, "--output_dir", str(run_dir / "runs"), *args.overrides]
    bundle = [sys.executable, "-m", "monai.bundle", "run"]
    final = run_dir / "runs" / "checkpoints" / "scrd_final.pt"
    record: dict = {"name": args.name, "seed": seed, "datalist": args.datalist, "commands": {}}
    if not final.is_file():
        cmd = [*bundle, "training", "--config_file", train, *common, "--model_dir", str(run_dir / "trained")]
        record["train_wall_s"] = run(cmd, run_dir / "train.log")
        record["commands"]["train"] = cmd
    elif (run_dir / "done").is_file():  # trained earlier (e.g. by an older commit's checkout)
        record["train_wall_s"] = json.loads((run_dir / "done").read_text()).get("wall_s")
        record["trained_earlier"] = json.loads((run_dir / "done").read_text())
    fit = [*bundle, "training", "--config_file", train, *common, "--model_dir", str(run_dir / "models"), "--resume_from", str(final)]
    evaluation = [*bundle, "evaluating", "--config_file", evaluate, *common, "--model_dir", str(run_dir / "models"),
                  "--eval_dir", str(run_dir / "eval"), "--overwrite", "true"]  # a rerun replaces the earlier evaluation
    record["commands"].update(fit=fit, evaluate=evaluation)
    if args.reuse and (run_dir / "eval" / "metrics.json").is_file():  # steps 2-3 done by an earlier call
        record["reused"] = "fit and evaluation outputs of an earlier call (the same commands)"
    else:
        record["fit_wall_s"] = run(fit, run_dir / "fit.log")
        record["eval_wall_s"] = run(evaluation, run_dir / "eval.log")
    record["metrics"] = json.loads((run_dir / "eval" / "metrics.json").read_text())
    threshold = json.loads((run_dir / "models" / "threshold.json").read_text())
    threshold.pop("validation_scores", None)
    record["threshold"] = threshold
    if args.choice:
        lists = scoring_choice.load_lists(args.datalist, allow_absolute=True)
        record["scoring_choice"] = scoring_choice.evaluate_model(run_dir / "models", lists)
    record["commands"] = {k: " ".join(["python", *v[1:]]).replace(str(C.REPO) + "/", "") for k, v in record["commands"].items()}
    record["machine"] = C.machine_info()
    C.write_json(args.out_dir / args.name / f"seed{seed}.json", record)
    m, s = record["metrics"], record["metrics"].get("stored_threshold", {})
    print(f"[{args.name} seed {seed}] AUROC {m.get('auroc', float('nan')):.4f}, F1 {s.get('f1', float('nan')):.4f} and "
          f"test-normal FPR {s.get('false_positive_rate', float('nan')):.4f} at the stored threshold; scoring "
          f"{threshold.get('scales')} / {threshold.get('score_reduction')}", flush=True)
    return record


def report(out_dir: Path) -> str:
    lines = ["| run | seeds | scoring chosen (per seed) | AUROC | F1 (stored thr.) | FPR on test normals (nominal 5) | "
             "previous default: AUROC | previous default: FPR | fixed default, new fit: AUROC | fixed default: FPR |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for folder in sorted(p for p in out_dir.iterdir() if p.is_dir()):
        runs = [json.loads(f.read_text()) for f in sorted(folder.glob("seed*.json"))]
        if not runs:
            continue
        stored = [r["metrics"].get("stored_threshold", {}) for r in runs]
        sc = [r["scoring_choice"] for r in runs if "scoring_choice" in r]
        lines.append(
            f"| {folder.name} | {', '.join(str(r['seed']) for r in runs)} | "
            f"{'; '.join(r['threshold'].get('scales', '-') + ' / ' + r['threshold'].get('score_reduction', '-') for r in runs)} | "
            f"{ms([r['metrics']['auroc'] for r in runs])} | {ms([s.get('f1') for s in stored])} | "
            f"{ms([s.get('false_positive_rate') for s in stored])} | {ms([c['previous_default']['auroc'] for c in sc])} | "
            f"{ms([c['previous_default']['false_positive_rate'] for c in sc])} | "
            f"{ms([c['default_stored_threshold']['auroc'] for c in sc])} | "
            f"{ms([c['default_stored_threshold']['false_positive_rate'] for c in sc])} |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--name", default="runs")
    p.add_argument("--datalist")
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    p.add_argument("--runs-dir", type=Path, default=Path("/tmp/scrd_bundle_runs"))
    p.add_argument("--out-dir", type=Path, default=C.RESULTS_DIR / "bundle_auto")
    p.add_argument("--report", action="store_true")
    p.add_argument("--reuse", action="store_true", help="keep the fit and evaluation outputs an earlier call left")
    p.add_argument("--no-choice", dest="choice", action="store_false", help="skip step 4 (scoring_choice)")
    p.add_argument("overrides", nargs="*", help="bundle overrides after --, e.g. --max_iterations 1000")
    args = p.parse_args(argv)
    if args.report:
        print(report(args.out_dir))
        return
    for seed in args.seeds:
        one_seed(args, seed)


if __name__ == "__main__":
    main()
