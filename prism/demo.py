"""The Prism demo that `bash run.sh demo prism` runs: render built-in sequences -> train the fast network
(cpu preset, 2x and 3x jointly) -> evaluate on held-out sequences against nearest and bilinear -> export the
trained network (.vgf, .pte, checked against eager) -> cost of every preset at 540p -> 1080p (parameters,
FLOPs, CPU ms eager and .pte).

    python prism/demo.py --out runs/demo/prism [--max-steps N] [--no-cost]

Each step is the real command line (printed), so you can rerun any of them by hand.
"""

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from common.runtime import run_step
from prism.evaluate import table


def main():
    p = argparse.ArgumentParser(
        description="Prism demo: render sequences, train, evaluate vs nearest/bilinear, export, cost."
    )
    p.add_argument("--out", default="runs/demo/prism", help="run directory (data, checkpoints, images, exports)")
    p.add_argument("--max-steps", type=int, default=None, help="training steps (default: the cpu preset's)")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda")
    p.add_argument("--no-cost", action="store_true", help="skip timing the three presets at 540p -> 1080p")
    args = p.parse_args()
    out = Path(args.out)
    train = ["prism/train.py", "--out", str(out), "--device", args.device, "--preset", "cpu"]
    if args.max_steps:
        train += ["--max-steps", str(args.max_steps)]
    if (out / "ckpt" / "latest").exists():
        train.append("--resume")
    t_train = run_step(train)
    t_export = run_step(["prism/export.py", "--model-path", str(out / "ckpt" / "best"), "--out", str(out / "export")])
    cost = {}
    if not args.no_cost:
        for preset in ("fast", "balanced", "quality"):
            run_step(
                [
                    "prism/export.py",
                    "--preset",
                    preset,
                    "--size",
                    "540",
                    "960",
                    "--no-vgf",
                    "--out",
                    str(out / f"cost_{preset}"),
                ]
            )
            cost[preset] = json.loads((out / f"cost_{preset}" / "export_report.json").read_text())
    res = json.loads((out / "eval" / "results.json").read_text())
    rep = json.loads((out / "export" / "export_report.json").read_text())
    print("\n" + table(res))
    print(
        f"\nexport (trained, 2x at {rep['input_size'][0]}x{rep['input_size'][1]}): .pte vs eager max-abs-error "
        f"{rep['checks']['pte_max_abs_error']:.2e} ({'PASS' if rep['pte_matches_eager'] else 'FAIL'}), "
        f"VGF delegated fraction {rep.get('vgf', {}).get('delegated_fraction', 'n/a')}"
    )
    if cost:
        print(
            "\n| preset | params | GFLOPs/frame | eager ms | .pte (XNNPACK) ms |   (540x960 -> 1080x1920, this "
            "CPU)\n|---|---|---|---|---|"
        )
        for name, r in cost.items():
            print(
                f"| {name} | {r['params']:,} | {r['gflops_per_frame']:.1f} | {r['checks']['eager_ms']:.0f} | "
                f"{r['checks']['pte_ms']:.0f} |"
            )
    print(f"\ntime: train+eval {t_train / 60:.1f} min, export {t_export / 60:.1f} min")
    print(f"images: {out / 'eval'} (grid_2x.png, grid_3x.png: Nearest | Bilinear | Prism | GT)")
    print(f"logs: {out / 'output.log'}, {out / 'metrics.jsonl'}")


if __name__ == "__main__":
    main()
