"""``python -m monai_scrd.label {app,serve}``: write a MONAI Label app folder for SCRD, or write it and start the server.

Run it in the environment where monai-scrd is installed: ``python -m monai_scrd.label serve --studies ./studies
--bundle bundles/scrd`` (a trained bundle) or ``... serve --studies ./studies --model-uri models:/scrd@champion`` (a
registered model); the server serves exactly that model and says which at start and in ``/info/``. MONAI Label itself lives in a venv of its own (``scripts/install_label.sh``); when this
Python has no monailabel, ``serve`` re-runs itself with that venv's Python (:func:`monai_scrd.label.default_label_venv`).
"""

from __future__ import annotations

import argparse
import json
import os
import sys

from monai_scrd.label import default_label_venv, write_app


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m monai_scrd.label", description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="command", required=True)
    a = sub.add_parser("app", help="write the app folder (main.py) and print its path")
    a.add_argument("app_dir")
    s = sub.add_parser("serve", help="write the app folder and run `monailabel start_server` on it")
    s.add_argument("--studies", required=True, help="folder of images to serve (PNG/JPEG/DICOM/NIfTI)")
    src = s.add_mutually_exclusive_group()
    src.add_argument("--bundle", help="serve this trained SCRD bundle folder (default: $SCRD_BUNDLE, else bundles/scrd); "
                     "a bundle without trained weights: serve what the app's train task publishes")
    src.add_argument("--model-uri", help="or serve this registered MLflow model, e.g. models:/scrd@champion (not with --bundle)")
    s.add_argument("--tracking-uri", help="MLflow tracking/registry URI for --model-uri (default: $MLFLOW_TRACKING_URI)")
    s.add_argument("--checkpoint", help="with --bundle: weights file (default: <bundle>/models/model.pt)")
    s.add_argument("--threshold", help="with --bundle: decision threshold or threshold JSON (default: the bundle's stored one)")
    s.add_argument("--image-size", type=int, help="with --bundle: override the bundle's image_size")
    s.add_argument("--device", help="cpu or cuda (default: CUDA when available)")
    s.add_argument("--name", default="scrd", help="infer task name (URL /infer/<name>)")
    s.add_argument("--app-dir", default=os.path.join("runs", "label_app"), help="where to write the app folder")
    s.add_argument("--host", default="127.0.0.1")
    s.add_argument("--port", type=int, default=8000)
    s.add_argument("--conf", nargs=2, action="append", default=[], metavar=("KEY", "VALUE"), help="extra app --conf")
    s.add_argument("--cors-origin", action="append", default=[], metavar="URL",
                   help="allow browser pages of this origin (e.g. https://viewer.example.org); default: none")
    return p


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The command line, with what argparse alone cannot check: ``--model-uri`` serves the registered model as it was
    registered (no ``--checkpoint``/``--threshold``/``--image-size``), ``--tracking-uri`` only goes with it."""
    p = build_parser()
    args = p.parse_args(argv)
    if args.command != "serve":
        return args
    serve = next(a for a in p._actions if a.dest == "command").choices["serve"]
    if args.model_uri:
        given = [f"--{k.replace('_', '-')}" for k in ("checkpoint", "threshold", "image_size") if getattr(args, k) is not None]
        if given:
            serve.error(f"{', '.join(given)}: only with --bundle; --model-uri serves the registered model as it was registered")
    elif args.tracking_uri:
        serve.error("--tracking-uri: only with --model-uri")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)

    if args.command == "app":
        print(write_app(args.app_dir))
        return 0

    app_dir = write_app(args.app_dir)
    conf = [("models", args.name)]
    for key in ("bundle", "model_uri", "tracking_uri", "checkpoint", "threshold", "image_size", "device"):
        value = getattr(args, key)
        if value is not None:
            conf.append((key, os.path.abspath(value) if key in ("bundle", "checkpoint") else str(value)))
    conf.extend(tuple(c) for c in args.conf)
    import importlib.util

    if importlib.util.find_spec("monailabel") is None:
        venv = default_label_venv()
        label_python = os.path.join(venv, "bin", "python")
        if not os.path.isfile(label_python) or os.path.realpath(venv) == os.path.realpath(sys.prefix):
            print(f"error: monailabel is not installed for {sys.executable}, and there is no working MONAI Label venv "
                  f"at {venv}; run: bash scripts/install_label.sh", file=sys.stderr)
            return 2
        argv = sys.argv[1:] if argv is None else argv
        os.execv(label_python, [label_python, "-m", "monai_scrd.label", *argv])
    # `monailabel start_server` with this interpreter for certain, and CORS off unless --cors-origin (label/server.py)
    cmd = [sys.executable, "-m", "monai_scrd.label.server", "start_server", "--app", app_dir, "--studies",
           os.path.abspath(args.studies), "--host", args.host, "--port", str(args.port)]
    for k, v in conf:
        cmd += ["--conf", k, v]
    os.environ["SCRD_LABEL_CORS_ORIGINS"] = json.dumps(args.cors_origin)
    print(" ".join(cmd), flush=True)
    os.execv(sys.executable, cmd)
    return 0  # pragma: no cover


if __name__ == "__main__":
    sys.exit(main())
