"""The published comparison table of the SCRD paper (Table 1: AUC, F1, ACC on RSNA, Brain Tumor and ISIC), parsed from
the paper's text into ``results/paper_table1.json`` so that RESULTS.md quotes the anchors from a file, not by hand.

    python benchmarks/paper_anchors.py --paper ../shared/paper/000_c029a1784072f3f2.txt
"""

from __future__ import annotations

import argparse
import re
from pathlib import Path

import _common as C

DATASETS = ("RSNA", "Brain Tumor", "ISIC")
METRICS = ("auc", "f1", "acc")
ROW = re.compile(r"^([A-Za-z][\w+\- ]*?)\t((?:\s*(?:<u>)?\d+\.\d+(?:</u>)?){9})\s*$")


def parse_table1(text: str) -> dict:
    """Rows of the table whose header line is ``\\tRSNA\\t\\t\\tBrain Tumor...``: method -> data set -> metric -> %."""
    lines = text.splitlines()
    start = next(i for i, line in enumerate(lines) if line.split() == ["RSNA", "Brain", "Tumor", "ISIC"])
    table = {}
    for line in lines[start + 2:]:
        m = ROW.match(line)
        if not m:
            break
        values = [float(v) for v in re.findall(r"\d+\.\d+", m.group(2))]
        table[m.group(1).strip()] = {d: dict(zip(METRICS, values[3 * i:3 * i + 3])) for i, d in enumerate(DATASETS)}
    if not table:
        raise SystemExit("Table 1 not found in the paper text")
    return table


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--paper", type=Path, default=C.REPO.parent / "shared" / "paper" / "000_c029a1784072f3f2.txt")
    p.add_argument("--out", type=Path, default=C.RESULTS_DIR / "paper_table1.json")
    args = p.parse_args(argv)
    table = parse_table1(args.paper.read_text())
    C.write_json(args.out, {"source": f"{args.paper.name}, Table 1 (the competitors' rows are the authors' re-runs "
                                      "on the paper's splits; 'Ours' is SCRD's own, its checkpoint picked on test AUROC)", "table": table})
    print(f"wrote {args.out}: {len(table)} methods")


if __name__ == "__main__":
    main()
