"""Rebuild ``bundles/scrd/sample_data`` from the staged Brain Tumor MRI data set (see sample_data/README.md).

Usage: python bundles/scrd/scripts/make_sample_data.py /path/to/brain_tumor [--size 128]

Deterministic: files are sorted by name and taken at even strides; images whose SHA-1 occurs more than once in the
source (exact duplicates, e.g. a test normal identical to a training normal) are skipped, so no test image is a copy
of a training image. Every image is converted to 8-bit grayscale and resized to ``size`` x ``size`` PNG.
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import json
import os

from PIL import Image

HERE = os.path.dirname(os.path.abspath(__file__))
OUT = os.path.join(os.path.dirname(HERE), "sample_data")


def _pick(files: list[str], n: int) -> list[str]:
    step = len(files) / n
    return [files[int(i * step)] for i in range(n)]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("source", help="folder holding train/normal, test/normal, test/glioma, test/meningioma")
    ap.add_argument("--size", type=int, default=128)
    ap.add_argument("--out", default=OUT)
    args = ap.parse_args()

    sha_count: dict[str, int] = {}
    with open(os.path.join(args.source, "files.csv")) as f:
        for row in csv.DictReader(f):
            sha_count[row["sha1"]] = sha_count.get(row["sha1"], 0) + 1

    def unique(folder: str) -> list[str]:
        names = sorted(os.listdir(os.path.join(args.source, folder)))
        out = []
        for name in names:
            with open(os.path.join(args.source, folder, name), "rb") as fh:
                if sha_count.get(hashlib.sha1(fh.read()).hexdigest(), 1) == 1:
                    out.append(f"{folder}/{name}")
        return out

    plan = {
        "train_normal": _pick(unique("train/normal"), 60),
        "test_normal": _pick(unique("test/normal"), 20),
        "test_glioma": _pick(unique("test/glioma"), 20),
        "test_meningioma": _pick(unique("test/meningioma"), 20),
    }
    rows = []
    for group, files in plan.items():
        os.makedirs(os.path.join(args.out, group), exist_ok=True)
        for rel in files:
            name = os.path.splitext(os.path.basename(rel))[0] + ".png"
            with Image.open(os.path.join(args.source, rel)) as im:
                im.convert("L").resize((args.size, args.size), Image.BILINEAR).save(os.path.join(args.out, group, name))
            rows.append({"file": f"{group}/{name}", "source": rel})
    with open(os.path.join(args.out, "sources.csv"), "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=["file", "source"])
        w.writeheader()
        w.writerows(rows)

    train = [{"image": r["file"]} for r in rows if r["file"].startswith("train_normal/")]
    datalist = {
        "training": train[:50],
        "validation": train[50:],
        "test": [
            {"image": r["file"], "label": 0 if r["file"].startswith("test_normal/") else 1}
            for r in rows
            if r["file"].startswith("test_")
        ],
    }
    with open(os.path.join(args.out, "datalist.json"), "w") as f:
        json.dump(datalist, f, indent=1)
    print(f"wrote {len(rows)} images to {args.out}")


if __name__ == "__main__":
    main()
