"""Build the bundle's datalist JSON from class folders, a MedIAnomaly/DDAD split file or a CSV
(``python -m monai_scrd.prepare --help``). Standard library only, so it starts fast.
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import json
import os
import random
import sys
from collections import defaultdict
from collections.abc import Callable, Sequence

from monai_scrd.data.datalist import read_json_file
from monai_scrd.data.errors import DataError
from monai_scrd.data.formats import IMAGE_EXTENSIONS, is_image_file

__all__ = [
    "list_images",
    "build_from_folders",
    "build_from_split_json",
    "build_from_csv",
    "check_validation_fraction",
    "hold_out_validation",
    "sha1_file",
    "byte_identical",
    "find_test_duplicates",
    "to_datalist",
    "main",
]

Item = dict  # {"image": absolute path, "label": 0 | 1}


def list_images(folder: str | os.PathLike) -> list[str]:
    """All image files (by extension) under ``folder``, recursively, sorted; absolute paths.

    Raises:
        DataError: ``folder`` is missing, not a folder, or holds no image files.
    """
    folder = os.fspath(folder)
    if not os.path.exists(folder):
        raise DataError(f"{folder}: folder not found")
    if not os.path.isdir(folder):
        raise DataError(f"{folder}: not a folder")
    found = []
    for root, dirs, files in os.walk(folder):
        dirs.sort()
        found.extend(os.path.abspath(os.path.join(root, f)) for f in sorted(files) if is_image_file(f) and not f.startswith("."))
    if not found:
        raise DataError(f"{folder}: no image files found (looked for {', '.join(IMAGE_EXTENSIONS)}, recursively)")
    return sorted(found)


def build_from_folders(
    train_normal: Sequence[str], test_normal: Sequence[str] = (), test_abnormal: Sequence[str] = ()
) -> dict[str, list[Item]]:
    """``{"training": [...], "test": [...]}`` from class folders (normal training images; normal / abnormal test
    images). Every folder must hold at least one image."""
    training = [{"image": p, "label": 0} for d in train_normal for p in list_images(d)]
    test = [{"image": p, "label": 0} for d in test_normal for p in list_images(d)]
    test += [{"image": p, "label": 1} for d in test_abnormal for p in list_images(d)]
    return {"training": _dedupe_paths(training, "training"), "test": _dedupe_paths(test, "test")}


def _dedupe_paths(items: list[Item], what: str) -> list[Item]:
    seen: dict[str, int] = {}
    for it in items:
        if it["image"] in seen:
            raise DataError(f"{it['image']}: listed twice in {what} (overlapping folders?)")
        seen[it["image"]] = it["label"]
    return items


def _index_by_name(root: str) -> dict[str, list[str]]:
    index: dict[str, list[str]] = defaultdict(list)
    for dirpath, dirs, files in os.walk(root):
        dirs.sort()
        for f in files:
            index[f].append(os.path.abspath(os.path.join(dirpath, f)))
    return index


def build_from_split_json(split_json: str | os.PathLike, images_root: str | os.PathLike) -> dict[str, list[Item]]:
    """Datalist entries from a MedIAnomaly / DDAD split file
    ``{"train": {"0": [names]}, "test": {"0": [names], "1": [names]}}``.

    Each listed name is found under ``images_root``: as a relative path if it exists there, else by its file name
    (searched recursively; names must be unique). Other lists (e.g. ``train/unlabeled``) are ignored.

    Raises:
        DataError: malformed split file, or listed files missing / ambiguous under ``images_root`` (all listed at once).
    """
    split_json, images_root = os.fspath(split_json), os.fspath(images_root)
    if not os.path.isfile(split_json):
        raise DataError(f"{split_json}: split file not found")
    if not os.path.isdir(images_root):
        raise DataError(f"{images_root}: images root folder not found")
    split = read_json_file(split_json, "split")
    if not isinstance(split, dict):
        raise DataError(f"{split_json}: expected an object with 'train' and 'test'")
    wanted = [("train", "0"), ("test", "0"), ("test", "1")]
    for part, label in wanted:
        if not isinstance(split.get(part), dict):
            raise DataError(f"{split_json}: missing '{part}' object (expected {{\"train\": {{\"0\": [...]}}, \"test\": {{\"0\": [...], \"1\": [...]}}}})")
        names = split[part].get(label)
        if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
            raise DataError(f"{split_json}: {part}[\"{label}\"] must be a list of file names")
    ignored = [f"{p}/{k}" for p in split for k in (split[p] if isinstance(split[p], dict) else {}) if (p, k) not in wanted]
    if ignored:
        print(f"note: ignoring {', '.join(ignored)} in {split_json} (not used)")
    index = _index_by_name(images_root)
    problems = []
    out: dict[str, list[Item]] = {"training": [], "test": []}
    for part, label in wanted:
        for n in split[part][label]:
            direct = os.path.join(images_root, n)
            if os.path.isfile(direct):
                hits = [os.path.abspath(direct)]
            else:
                hits = index.get(os.path.basename(n), [])
            if not hits:
                problems.append(f"{part}/{label}: {n} not found")
                continue
            if len(hits) > 1:
                problems.append(f"{part}/{label}: {n} is ambiguous ({len(hits)} files: {', '.join(hits[:3])})")
                continue
            out["training" if part == "train" else "test"].append({"image": hits[0], "label": int(label)})
    if problems:
        raise DataError(
            f"{split_json}: {len(problems)} listed files not found or ambiguous under {images_root}:\n" + "\n".join(problems)
        )
    _dedupe_paths(out["training"] + out["test"], "the split (a file is in more than one list)")
    return out


_SPLITS = {"train": "training", "training": "training", "val": "validation", "valid": "validation",
           "validation": "validation", "test": "test", "testing": "test"}  # fmt: skip


def build_from_csv(csv_path: str | os.PathLike, images_root: str | os.PathLike | None = None) -> dict[str, list[Item]]:
    """Datalist entries from a CSV with columns ``path,label`` and optional ``split`` (train / val / test).

    Paths are relative to ``images_root`` (default: the CSV's folder) or absolute. Without a ``split`` column every
    row goes to ``test``. Training rows must have label 0.

    Raises:
        DataError: missing columns, bad labels/splits (naming the row), or missing files (all listed at once).
    """
    csv_path = os.fspath(csv_path)
    if not os.path.isfile(csv_path):
        raise DataError(f"{csv_path}: CSV file not found")
    root = os.fspath(images_root) if images_root is not None else os.path.dirname(os.path.abspath(csv_path))
    with open(csv_path, newline="", encoding="utf-8-sig") as f:
        reader = csv.DictReader(f)
        try:
            fields = {(c or "").strip().lower(): c for c in (reader.fieldnames or [])}
            rows = list(reader)
        except (UnicodeDecodeError, csv.Error) as e:
            raise DataError(f"{csv_path}: not a UTF-8 text CSV file ({type(e).__name__}: {e})") from e
        if "path" not in fields or "label" not in fields:
            raise DataError(f"{csv_path}: needs columns 'path' and 'label' (found: {', '.join(fields) or 'none'})")
        has_split = "split" in fields
        out: dict[str, list[Item]] = {"training": [], "validation": [], "test": []}
        missing = []
        for row_no, row in enumerate(rows, start=2):
            where = f"{csv_path}: row {row_no}"
            path = (row.get(fields["path"]) or "").strip()
            label_text = (row.get(fields["label"]) or "").strip()
            if not path:
                raise DataError(f"{where}: empty path")
            if label_text not in ("0", "1"):
                raise DataError(f"{where}: label is {label_text!r}; expected 0 or 1")
            label = int(label_text)
            split = "test"
            if has_split:
                split_text = (row.get(fields["split"]) or "").strip().lower()
                if split_text not in _SPLITS:
                    raise DataError(f"{where}: split is {split_text!r}; expected train, val or test")
                split = _SPLITS[split_text]
            if split == "training" and label != 0:
                raise DataError(f"{where}: training image {path} has label {label}; training images must be normal (0)")
            full = os.path.abspath(path if os.path.isabs(path) else os.path.join(root, path))
            if not os.path.isfile(full):
                missing.append(f"row {row_no}: {full}")
                continue
            out[split].append({"image": full, "label": label})
    if missing:
        raise DataError(f"{csv_path}: {len(missing)} files not found:\n" + "\n".join(missing))
    if not has_split:
        print(f"note: {csv_path} has no 'split' column; all {len(out['test'])} rows go to 'test'")
    if not any(out.values()):
        raise DataError(f"{csv_path}: no rows")
    return {k: _dedupe_paths(v, k) for k, v in out.items() if v}


def check_validation_fraction(fraction: float, setting: str = "--val-fraction") -> float:
    """``fraction`` as a float in [0, 1); ``setting`` names it in the error (the command-line flag, or the bundle
    setting)."""
    try:
        fraction = float(fraction or 0.0)
    except (TypeError, ValueError):
        raise DataError(f"{setting} {fraction!r} is not a number") from None
    if not 0.0 <= fraction < 1.0:
        raise DataError(f"{setting} {fraction} must be in [0, 1)")
    return fraction


def hold_out_validation(
    training: list[Item], fraction: float, seed: int = 0, setting: str = "--val-fraction"
) -> tuple[list[Item], list[Item]]:
    """Move a random ``fraction`` of the training items (rounded, at least 1 when fraction > 0) to validation;
    both lists keep their original order. Deterministic for a given ``seed``. ``setting`` names the fraction in
    errors (:func:`check_validation_fraction`)."""
    fraction = check_validation_fraction(fraction, setting)
    if fraction == 0.0 or not training:
        return list(training), []
    n_val = max(1, int(round(len(training) * fraction)))
    if n_val >= len(training):
        raise DataError(f"{setting} {fraction} leaves no training images ({len(training)} in total)")
    picked = set(random.Random(seed).sample(range(len(training)), n_val))
    return [t for i, t in enumerate(training) if i not in picked], [t for i, t in enumerate(training) if i in picked]


def check_no_overlap(training: Sequence[Item], test: Sequence[Item], hint: str = "") -> None:
    """Refuse test images that are also training/validation images (the same file, after resolving links and
    relative parts): the datalist loader and training refuse such a datalist, so it is never written. ``hint`` (e.g.
    the folders given) is appended to the one-line error."""
    train_real = {os.path.realpath(it["image"]) for it in training}
    both = [it["image"] for it in test if os.path.realpath(it["image"]) in train_real]
    if both:
        raise DataError(
            f"{both[0]}: is both a training and a test image ({len(both)} of the {len(test)} test images are also "
            f"training/validation images); give test images apart from the training ones{hint}"
        )


def sha1_file(path: str, chunk: int = 1 << 20) -> str:
    """SHA-1 hex digest of a file's bytes."""
    h = hashlib.sha1()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(chunk), b""):
            h.update(block)
    return h.hexdigest()


def byte_identical(reference: Sequence[Item], items: Sequence[Item],
                   digest: Callable[[str], str | None] = sha1_file) -> list[tuple[Item, str, list[str]]]:
    """``items`` whose file has the same ``digest`` (SHA-1 of the bytes) as a ``reference`` file: ``(item, digest,
    [reference paths])`` in ``items`` order. A ``digest`` that returns None leaves that file out."""
    by_hash: dict[str, list[str]] = defaultdict(list)
    for it in reference:
        h = digest(it["image"])
        if h is not None:
            by_hash[h].append(it["image"])
    found = []
    for it in items:
        h = digest(it["image"])
        if h is not None and h in by_hash:
            found.append((it, h, by_hash[h]))
    return found


def find_test_duplicates(training: Sequence[Item], test: Sequence[Item]) -> list[dict]:
    """Test images byte-identical (same SHA-1) to a training image.

    Returns:
        ``[{"test_image", "label", "sha1", "training_images": [paths]}, ...]`` in test order.
    """
    return [{"test_image": it["image"], "label": it["label"], "sha1": h, "training_images": paths}
            for it, h, paths in byte_identical(training, test)]


def _rel(path: str, base: str | None) -> str:
    if base is None:
        return path
    return os.path.relpath(path, base).replace(os.sep, "/")


def to_datalist(entries: dict[str, list[Item]], base: str | None, description: str = "") -> dict:
    """The datalist JSON object: image paths relative to ``base`` (absolute when ``base`` is None)."""
    out: dict = {"description": description} if description else {}
    for key in ("training", "validation", "test"):
        if key in entries and entries[key]:
            out[key] = [{"image": _rel(it["image"], base), "label": int(it["label"])} for it in entries[key]]
    return out


def _dumps(datalist: dict) -> str:
    """JSON text with one datalist item per line (readable diffs, small files)."""
    parts = []
    for key, value in datalist.items():
        if isinstance(value, list):
            body = ",\n".join("    " + json.dumps(it) for it in value)
            parts.append(f"  {json.dumps(key)}: [\n{body}\n  ]")
        else:
            parts.append(f"  {json.dumps(key)}: {json.dumps(value)}")
    return "{\n" + ",\n".join(parts) + "\n}\n"


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m monai_scrd.prepare",
        description=(
            "Build the SCRD bundle's datalist JSON ({'training': [...], 'validation': [...], 'test': [...]}, items "
            "{'image': path, 'label': 0|1}) from ONE of: class folders, a MedIAnomaly/DDAD split file, or a CSV. "
            "Reports test images byte-identical to a training image (SHA-1) and can drop them."
        ),
        epilog=(
            "examples:\n"
            "  python -m monai_scrd.prepare --train-normal data/train/normal --test-normal data/test/normal \\\n"
            "      --test-abnormal data/test/glioma data/test/meningioma --val-fraction 0.1 --output data/datalist.json\n"
            "  python -m monai_scrd.prepare --split-json data/splits/MedIAnomaly_BrainTumor_data.json \\\n"
            "      --images-root data --output data/datalist.json\n"
            "  python -m monai_scrd.prepare --csv data/labels.csv --output data/datalist.json\n"
            "\nRelative paths in the output are relative to the output file's folder (or --base-dir); the bundle's\n"
            "loader refuses paths that leave that folder unless absolute paths are allowed."
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    src = p.add_argument_group("source (choose one)")
    src.add_argument("--train-normal", nargs="+", metavar="DIR", help="folder(s) of normal training images (recursive)")
    src.add_argument("--test-normal", nargs="+", metavar="DIR", default=[], help="folder(s) of normal test images")
    src.add_argument("--test-abnormal", nargs="+", metavar="DIR", default=[], help="folder(s) of abnormal test images")
    src.add_argument("--split-json", metavar="FILE", help='MedIAnomaly/DDAD split: {"train": {"0": [...]}, "test": {"0": [...], "1": [...]}}')
    src.add_argument("--csv", metavar="FILE", help="CSV with columns path,label (0/1) and optional split (train/val/test)")
    src.add_argument("--images-root", metavar="DIR", help="where --split-json names are searched (recursively, by file name) / "
                     "--csv paths are relative to (default for --csv: the CSV's folder)")
    opt = p.add_argument_group("options")
    opt.add_argument("--output", "-o", required=True, metavar="FILE", help="datalist JSON to write")
    opt.add_argument("--val-fraction", type=float, default=0.0, help="fraction of training normals held out as 'validation' (default 0)")
    opt.add_argument("--seed", type=int, default=0, help="random seed for --val-fraction (default 0)")
    opt.add_argument("--drop-test-duplicates", action="store_true", help="remove test images byte-identical to a training image")
    opt.add_argument("--no-duplicate-check", action="store_true", help="skip hashing (no duplicate report)")
    opt.add_argument("--duplicates-csv", metavar="FILE", help="duplicate report CSV (default: <output>_duplicates.csv)")
    where = opt.add_mutually_exclusive_group()
    where.add_argument("--base-dir", metavar="DIR", help="write paths relative to DIR (load with dataset_dir=DIR) instead of the output's folder")
    where.add_argument("--absolute-paths", action="store_true", help="write absolute paths (load with allow_absolute=True)")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry point; returns the exit status (0 ok, 2 bad input)."""
    for stream in (sys.stdout, sys.stderr):  # file names of any bytes print (escaped) instead of crashing
        if hasattr(stream, "reconfigure"):
            stream.reconfigure(errors="backslashreplace")
    parser = _parser()
    args = parser.parse_args(argv)
    sources = [bool(args.train_normal or args.test_normal or args.test_abnormal), bool(args.split_json), bool(args.csv)]
    if sum(sources) != 1:
        parser.error("give exactly one source: --train-normal/--test-normal/--test-abnormal, --split-json, or --csv")
    if args.split_json and not args.images_root:
        parser.error("--split-json needs --images-root")
    if sources[0] and not args.train_normal:
        parser.error("class folders need --train-normal")
    try:
        if args.split_json:
            entries = build_from_split_json(args.split_json, args.images_root)
            desc = f"built from {os.path.basename(args.split_json)}"
        elif args.csv:
            entries = build_from_csv(args.csv, args.images_root)
            desc = f"built from {os.path.basename(args.csv)}"
        else:
            entries = build_from_folders(args.train_normal, args.test_normal, args.test_abnormal)
            desc = "built from class folders"
        training, test = entries.get("training", []), entries.get("test", [])
        validation = list(entries.get("validation", []))
        hint = ""
        if not (args.split_json or args.csv):
            train_dirs = {os.path.realpath(d) for d in args.train_normal}
            same = [d for d in list(args.test_normal) + list(args.test_abnormal) if os.path.realpath(d) in train_dirs]
            hint = f" (folder {same[0]} is given as training and as test folder)" if same else " (overlapping folders?)"
        check_no_overlap(training + validation, test, hint)

        dups: list[dict] = []
        if not args.no_duplicate_check and test and (training or validation):
            dups = find_test_duplicates(training + validation, test)
            n_norm = sum(1 for d in dups if d["label"] == 0)
            n_abn = len(dups) - n_norm
            tot_norm = sum(1 for t in test if t["label"] == 0)
            print(
                f"exact duplicates (sha1): {n_norm} of {tot_norm} test normal and {n_abn} of {len(test) - tot_norm} "
                f"test abnormal images are byte-identical to a training image "
                f"({len({d['sha1'] for d in dups})} distinct contents)"
            )
            if args.drop_test_duplicates and dups:
                drop = {d["test_image"] for d in dups}
                test = [t for t in test if t["image"] not in drop]
                print(f"dropped {len(drop)} duplicate test images (--drop-test-duplicates)")
            elif dups:
                print("  (kept; use --drop-test-duplicates to remove them from 'test')")

        if args.val_fraction:
            if validation:
                raise DataError("--val-fraction cannot be used when the source already has validation images")
            training, validation = hold_out_validation(training, args.val_fraction, args.seed)

        output = os.path.abspath(args.output)
        base = None if args.absolute_paths else os.path.abspath(args.base_dir or os.path.dirname(output))
        final = {"training": training, "validation": validation, "test": test}
        datalist = to_datalist(final, base, desc)
        if base is not None:
            outside = [it["image"] for k in ("training", "validation", "test") for it in datalist.get(k, []) if it["image"].startswith("../")]
            if outside:
                print(
                    f"warning: {len(outside)} paths leave {base} (e.g. {outside[0]}); the loader refuses them unless absolute "
                    "paths are allowed. Put the output next to/above the images, or use --base-dir / --absolute-paths."
                )
        os.makedirs(os.path.dirname(output), exist_ok=True)
        with open(output, "w", encoding="utf-8") as f:
            f.write(_dumps(datalist))
        if dups:
            dup_csv = args.duplicates_csv or os.path.splitext(output)[0] + "_duplicates.csv"
            with open(dup_csv, "w", newline="", encoding="utf-8", errors="surrogateescape") as f:  # any file name
                w = csv.writer(f)
                w.writerow(["test_image", "label", "sha1", "training_images", "dropped"])
                for d in dups:
                    w.writerow([_rel(d["test_image"], base), d["label"], d["sha1"],
                                ";".join(_rel(p, base) for p in d["training_images"]), int(args.drop_test_duplicates)])
            print(f"wrote duplicate report {dup_csv}")
        n_tn = sum(1 for t in test if t["label"] == 0)
        print(
            f"wrote {output}: training {len(training)}, validation {len(validation)}, "
            f"test {len(test)} ({n_tn} normal, {len(test) - n_tn} abnormal)"
        )
        if training and not validation:
            print("  no validation list: the bundle's training holds out its validation_fraction (default 0.1) of the "
                  "training normals for the threshold and the scale calibration; --val-fraction makes the split here")
        return 0
    except DataError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
