"""Adaptive refinement against the full grid: a study started from a coarse grid with
`task.refine=K`, and the same study over the full grid, both from empty folders. Printed: the
runs each trained, the time each spent (the sum of its stages' seconds, from its study.json),
and on the grid points both have, how many the refined
study's phase map places in the same phase as the full grid's (and how many have a phase).

Defaults: the digits zoo, full grid widths {2,3,4,6,8} x batch sizes {16,...,512} x seeds {0,1}
(60 runs), coarse grid widths {2,4,8} x batch sizes {16,64,256} (18 runs), whose geometric
midpoints are full-grid points (sqrt(2x4) rounds to 3, sqrt(4x8) to 6), 4 epochs, 2 rounds.

    python benchmarks/refine.py
    python benchmarks/refine.py --epochs 8 --rounds 3 --out /tmp/refine
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
MEASURE = [  # test-sized measurements: the benchmark compares maps, not metric precision
    "+task.settings.hessian.samples=512",
    "+task.settings.curve.epochs=3",
]


def run_study(out: Path, widths: list[int], batch_sizes: list[int], extra: list[str]) -> float:
    """`python launch.py task=study` over the grid into the empty folder `out`; the seconds its
    stages took."""
    grid = [
        f"width=[{','.join(map(str, widths))}]",
        f"batch_size=[{','.join(map(str, batch_sizes))}]",
    ]
    subprocess.run(
        [sys.executable, str(ROOT / "launch.py"), "task=study", *grid, f"out_dir={out}", *extra],
        cwd=ROOT,
        check=True,
        stdout=subprocess.DEVNULL,
    )
    record = json.loads((out / "digits_resnet18" / "study.json").read_text())
    return sum(stage["seconds"] for stage in record["stages"])


def phase_map(zoo: Path) -> pd.Series:
    """(batch_size, width) -> phase (None: not told) at the table's last epoch."""
    table = pd.read_csv(zoo / "results.csv")
    last = table[table["epoch"] == table["epoch"].max()]
    return last.groupby(["batch_size", "width"])["phase"].first()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("/tmp/ptmz_refine"))
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--widths", type=int, nargs="+", default=[2, 3, 4, 6, 8])
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[16, 32, 64, 128, 256, 512])
    parser.add_argument("--coarse-widths", type=int, nargs="+", default=[2, 4, 8])
    parser.add_argument("--coarse-batch-sizes", type=int, nargs="+", default=[16, 64, 256])
    args = parser.parse_args()
    if args.out.exists() and any(args.out.iterdir()):
        sys.exit(f"{args.out} is not empty: both studies must start from nothing")
    common = [f"epochs={args.epochs}", "progress=false", "seed=[0,1]", *MEASURE]
    full_out, refined_out = args.out / "full", args.out / "refined"
    seconds = {
        "full grid": run_study(full_out, args.widths, args.batch_sizes, common),
        f"coarse + refine={args.rounds}": run_study(
            refined_out,
            args.coarse_widths,
            args.coarse_batch_sizes,
            [*common, f"task.refine={args.rounds}"],
        ),
    }
    outs = dict(zip(seconds, (full_out, refined_out), strict=True))
    maps = {name: phase_map(out / "digits_resnet18") for name, out in outs.items()}
    full, refined = maps.values()
    shared = full.index.intersection(refined.index)
    told = [p for p in shared if isinstance(full[p], str) and isinstance(refined[p], str)]
    same = sum(full[p] == refined[p] for p in told)
    print("| study | runs | grid points | wall time |\n| --- | --- | --- | --- |")
    for name, out in outs.items():
        runs = len(list((out / "digits_resnet18").glob("*/status.json")))
        print(f"| {name} | {runs} | {len(maps[name])} | {seconds[name] / 60:.1f} min |")
    print(
        f"\non the {len(shared)} grid points both have: {len(told)} have a phase in both maps, "
        f"{same} of them the same phase ({same / max(len(told), 1):.0%})"
    )
    added = sorted(set(refined.index) - set(full.index))
    print(f"refined points off the full grid: {added}")
    for point in shared:
        print(
            f"  batch size {point[0]:>4}, width {point[1]:>2}: full {full[point]!s:5} "
            f"refined {refined[point]!s:5}"
        )


if __name__ == "__main__":
    main()
