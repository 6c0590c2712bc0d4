"""Tables of `noiseprint eval-splices` JSON files for TRAINING.md: one row per weights file, per localiser.

    python bench/splice_table.py released=eval-released.json a0=eval-a0.json a1=eval-a1.json \
        a2=eval-a2.json --baseline released --retrained a0 a1 a2

Cells: pixel ROC AUC / MCC at the best threshold / F1 at the fixed threshold / image AUC (max);
then, per subset, the retrained files' mean pixel AUC, its spread and the gain over the baseline.
"""
from __future__ import annotations

import argparse
import json

import numpy as np

CELL = ("pixel_auc", "pixel_mcc_best", "pixel_f1_fixed", "image_auc_max")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("runs", nargs="+", help="NAME=eval.json")
    p.add_argument("--baseline", required=True)
    p.add_argument("--retrained", nargs="+", default=[])
    a = p.parse_args()
    runs = {}
    for item in a.runs:
        name, path = item.split("=", 1)
        with open(path) as f:
            runs[name] = json.load(f)
    subsets = list(runs[a.baseline]["subsets"])
    for loc in ("noise_anomaly", "em"):
        have = [n for n, r in runs.items() if loc in r["subsets"][subsets[0]]]
        if not have:
            continue
        print(f"{loc}: pixel AUC / MCC best / F1 fixed / image AUC (max) per subset")
        print("| weights | " + " | ".join(subsets) + " |")
        print("|---|" + "---|" * len(subsets))
        for n in have:
            cells = [" / ".join(f"{runs[n]['subsets'][s][loc][k]:.3f}" for k in CELL) for s in subsets]
            print(f"| {n} | " + " | ".join(cells) + " |")
        retr = [n for n in a.retrained if n in have]
        for s in subsets if retr and a.baseline in have else []:
            v = np.array([runs[n]["subsets"][s][loc]["pixel_auc"] for n in retr])
            base = runs[a.baseline]["subsets"][s][loc]["pixel_auc"]
            print(f"{s}: retrained mean {v.mean():.3f} (spread {v.min():.3f}-{v.max():.3f}, n={len(v)}) vs "
                  f"{a.baseline} {base:.3f}: gain {v.mean() - base:+.3f}; seeds above: {int((v > base).sum())}/{len(v)}")
        print()


if __name__ == "__main__":
    main()
