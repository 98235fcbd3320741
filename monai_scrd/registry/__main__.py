"""Command line of the SCRD model registry: ``python -m monai_scrd.registry {register,alias,predict} ...``."""

from __future__ import annotations

import argparse
import json
import logging
import sys


def _threshold(value: str | None):
    if value is None:
        return None
    try:
        return float(value)
    except ValueError:
        return value  # a threshold JSON file


def _overrides(pairs: list[str] | None) -> dict:
    out = {}
    for pair in pairs or []:
        if "=" not in pair:
            raise SystemExit(f"--override expects KEY=VALUE, got {pair!r}")
        k, v = pair.split("=", 1)
        try:
            out[k] = json.loads(v)
        except json.JSONDecodeError:
            out[k] = v
    return out


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m monai_scrd.registry",
        description="Register trained SCRD models in the MLflow model registry, set aliases, and score images with them.",
    )
    sub = p.add_subparsers(dest="command", required=True)

    r = sub.add_parser(
        "register",
        help="log a trained model as an MLflow pyfunc and register a new version",
        description="Sources: --run-id (the run's model.pt and threshold.json artifacts; add --bundle-dir to rebuild the "
        "network from the bundle's config), or --bundle-dir (its models/model.pt, models/threshold.json and configs), "
        "or --checkpoint with --bundle-dir or --backbone.",
    )
    src = r.add_argument_group("source")
    src.add_argument("--run-id", help="finished training run whose model.pt/threshold.json artifacts to register")
    src.add_argument("--bundle-dir", help="the SCRD bundle folder (configs/, models/model.pt, models/threshold.json)")
    src.add_argument("--config-file", help="bundle config to read the network from (default: inference.json, else train.json)")
    src.add_argument("--checkpoint", help="weights file {'model': state_dict} (default: <bundle>/models/model.pt)")
    src.add_argument("--override", action="append", metavar="KEY=VALUE", help="bundle config override, e.g. image_size=128")
    src.add_argument("--backbone", help="without a bundle: the SCRD backbone (e.g. efficientnet_lite0)")
    src.add_argument("--image-size", type=int, help="without a bundle: preprocessing image size")
    src.add_argument("--threshold", help="decision threshold: a number or a threshold JSON file (default: the stored one)")
    src.add_argument("--no-threshold", action="store_true", help="register without a threshold (is_anomaly will be empty)")
    src.add_argument("--metadata", help="metadata JSON file (default: <bundle>/configs/metadata.json)")
    dst = r.add_argument_group("registry")
    dst.add_argument("--name", required=True, help="registered model name, e.g. scrd")
    dst.add_argument("--alias", help="alias to point at the new version, e.g. champion")
    dst.add_argument("--tracking-uri", help="MLflow tracking/registry URI (default: $MLFLOW_TRACKING_URI, else sqlite:///mlflow.db)")
    dst.add_argument("--experiment", default="scrd-registry", help="experiment of the registration run (without --run-id)")
    dst.add_argument("--description", help="description of the new version")
    dst.add_argument("--no-code", action="store_true", help="do not ship monai_scrd's code with the model (require the package)")

    a = sub.add_parser("alias", help="point an alias at a registered version")
    a.add_argument("--name", required=True)
    a.add_argument("--version", required=True)
    a.add_argument("--alias", required=True)
    a.add_argument("--tracking-uri")

    s = sub.add_parser(
        "predict",
        help="score image files with a registered model (prints CSV)",
        description="Score image files with a registered SCRD model and print CSV rows (image, score, is_anomaly, error, "
        "map_path). Images are read only inside the folders of $SCRD_INPUT_ROOTS (separated by ':'; default: the "
        "working directory): a file elsewhere gets the row error 'no such image file in the folders this model may "
        "read (SCRD_INPUT_ROOTS ...)'. The model is checked to be SCRD's model from code and loaded without unpickling.",
    )
    s.add_argument("--model-uri", required=True, help="e.g. models:/scrd@champion")
    s.add_argument("--tracking-uri", help="MLflow tracking/registry URI (default: $MLFLOW_TRACKING_URI, else sqlite:///mlflow.db)")
    s.add_argument("--map-dir", help="write anomaly maps into this folder (and print their paths)")
    s.add_argument("--map-format", default="nii.gz", choices=["nii.gz", "npy", "png"])
    s.add_argument("images", nargs="+",
                   help="image files (PNG/JPEG/DICOM/NIfTI) inside the folders of $SCRD_INPUT_ROOTS (default: the working directory)")
    for sub_parser in (r, s):
        sub_parser.add_argument("--progress", action="store_true", help="show MLflow's artifact progress bars")
    return p


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    args = build_parser().parse_args(argv)
    from monai_scrd.registry.tracking import quiet_progress

    with quiet_progress(not getattr(args, "progress", False)):
        return _command(args)


def _command(args) -> int:
    from monai_scrd.registry.errors import RegistryError
    from monai_scrd.registry.registering import register_model, register_run, set_alias
    from monai_scrd.registry.tracking import resolve_tracking_uri

    try:
        if args.command == "register":
            threshold = _threshold(args.threshold)
            common = dict(alias=args.alias, tracking_uri=args.tracking_uri, include_code=not args.no_code,
                          require_threshold=not args.no_threshold, description=args.description)
            if args.run_id:
                version = register_run(args.run_id, args.name, bundle_dir=args.bundle_dir, config_file=args.config_file,
                                       threshold=threshold, **common)
            else:
                network = {"backbone": args.backbone} if args.backbone else None
                preprocessing = {"image_size": args.image_size} if args.image_size else None
                if args.bundle_dir is None and network is None:
                    raise RegistryError("give --run-id, --bundle-dir, or --checkpoint with --backbone")
                if args.bundle_dir is None and not args.checkpoint:
                    raise RegistryError("without --bundle-dir, --checkpoint is required")
                if args.bundle_dir is not None and network is not None:
                    network = None  # a bundle describes the network; use --override backbone=... to change it
                version = register_model(
                    args.name, args.checkpoint, bundle_dir=args.bundle_dir, config_file=args.config_file,
                    overrides=_overrides(args.override), network=network, preprocessing=preprocessing,
                    threshold=threshold, metadata=args.metadata, experiment_name=args.experiment, **common,
                )
            uri = f"models:/{args.name}@{args.alias}" if args.alias else f"models:/{args.name}/{version.version}"
            print(json.dumps({"name": args.name, "version": int(version.version), "alias": args.alias, "model_uri": uri,
                              "run_id": version.run_id, "tracking_uri": resolve_tracking_uri(args.tracking_uri)}))
        elif args.command == "alias":
            set_alias(args.name, args.version, args.alias, args.tracking_uri)
            print(json.dumps({"name": args.name, "version": int(args.version), "alias": args.alias}))
        elif args.command == "predict":
            import pandas as pd

            from monai_scrd.registry.loading import load_model

            # the map folder named on this command line is allowed for outputs (a REST client's map_dir is not)
            model = load_model(args.model_uri, args.tracking_uri, output_roots=[args.map_dir] if args.map_dir else None)
            params = {"return_map": bool(args.map_dir), "map_dir": args.map_dir or "", "map_format": args.map_format}
            # an object column: file names that are not UTF-8 do not fit pandas' Arrow-backed strings
            out = model.predict(pd.DataFrame({"image": pd.Series(args.images, dtype=object)}), params=params)
            if hasattr(sys.stdout, "reconfigure"):  # file names that are not UTF-8: their own bytes, as in scores.csv
                sys.stdout.reconfigure(errors="surrogateescape")
            out.to_csv(sys.stdout, index=False)
            return 1 if (out["error"] != "").any() else 0
    except (RegistryError, FileNotFoundError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except Exception as e:  # MLflow's own errors (unknown model, refused parameter...): its first line
        from mlflow.exceptions import MlflowException

        if not isinstance(e, MlflowException):
            raise
        print(f"error: {str(e).splitlines()[0] if str(e) else type(e).__name__}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
