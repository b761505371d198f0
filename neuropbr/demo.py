"""The NeuroPBR demo that `bash run.sh demo neuropbr` runs: render built-in materials -> train (cpu preset) ->
evaluate on held-out materials (another seed) against the mean-material (flat normal) and view-average baselines
-> the shipped weights on the same held-out set -> export (.vgf, .pte) and check the .pte against eager -> infer
on one sample folder.

    python neuropbr/demo.py --out runs/demo/neuropbr [--max-steps N]

Each step is the real command line (printed), so you can rerun any of them by hand.
"""

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from common.runtime import run_step
from neuropbr.evaluate import table
from neuropbr.infer import SHIPPED

ROOT = Path(__file__).resolve().parents[1]


def main():
    p = argparse.ArgumentParser(
        description="NeuroPBR demo: render materials, train, evaluate vs baselines, export, infer."
    )
    p.add_argument("--out", default="runs/demo/neuropbr", help="run directory (data, checkpoints, images, exports)")
    p.add_argument("--max-steps", type=int, default=None, help="training steps (default: the cpu preset's epochs)")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda")
    args = p.parse_args()
    out = Path(args.out)
    train = ["neuropbr/train.py", "--out", str(out), "--device", args.device, "--preset", "cpu"]
    if args.max_steps:
        train += ["--max-steps", str(args.max_steps)]
    if (out / "ckpt" / "latest").exists():
        train.append("--resume")
    t_train = run_step(train)
    shipped = None
    if SHIPPED.is_dir():
        run_step(
            [
                "neuropbr/train.py",
                "--evaluate",
                "--model-path",
                str(SHIPPED),
                "--eval-data",
                str(out / "heldout"),
                "--data",
                str(out / "data"),
                "--out",
                str(out / "shipped"),
                "--device",
                args.device,
            ]
        )
        shipped = json.loads((out / "shipped" / "eval" / "results.json").read_text())
    t_export = run_step(
        ["neuropbr/export.py", "--model-path", str(out / "ckpt" / "best"), "--out", str(out / "export")]
    )
    views = sorted((out / "data" / "input").glob("*/sample_*"))[-1]
    run_step(
        [
            "neuropbr/infer.py",
            "--checkpoint",
            str(out / "ckpt" / "best"),
            "--input-dir",
            str(views),
            "--out",
            str(out / "infer"),
        ]
    )
    res = json.loads((out / "eval" / "results.json").read_text())
    rep = json.loads((out / "export" / "export_report.json").read_text())
    print("\n" + table(res))
    if shipped:
        m, s = res["model"], shipped["model"]
        print(
            f"\nthis run vs the shipped weights ({SHIPPED.relative_to(ROOT)}), same held-out materials: albedo "
            f"{m['albedo']['psnr']:.2f} vs {s['albedo']['psnr']:.2f} dB | roughness MAE {m['roughness']['mae']:.4f} vs "
            f"{s['roughness']['mae']:.4f} | metallic MAE {m['metallic']['mae']:.4f} vs {s['metallic']['mae']:.4f} | "
            f"normal {m['normal']['angle_mean']:.2f} vs {s['normal']['angle_mean']:.2f} deg (flat "
            f"{res['mean_material']['normal']['angle_mean']:.2f})"
        )
    print(
        f"\nexport: .pte vs eager max-abs-error {rep['checks']['pte_max_abs_error']:.2e} "
        f"({'PASS' if rep['pte_matches_eager'] else 'FAIL'}), VGF delegated fraction "
        f"{rep.get('vgf', {}).get('delegated_fraction', 'n/a')}"
    )
    print(f"time: train+eval {t_train / 60:.1f} min, export {t_export / 60:.1f} min")
    print(f"images: {out / 'eval'} (input views; pred | GT | error per map), {out / 'infer'} (maps of {views})")
    print(f"logs: {out / 'output.log'}, {out / 'metrics.jsonl'}")


if __name__ == "__main__":
    main()
