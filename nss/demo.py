"""The NSS demo that `bash run.sh demo` runs: built-in data -> train (cpu preset) -> evaluate against
bilinear, bicubic and TAA on held-out sequences -> export (.vgf, .pte) and check the .pte against eager.

    python nss/demo.py --out runs/demo/nss [--max-steps N]

Each step is the real command line (printed), so you can rerun any of them by hand.
"""

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from common.runtime import run_step
from nss.evaluate import table


def main():
    p = argparse.ArgumentParser(description="NSS demo: generate data, train, evaluate vs baselines, export.")
    p.add_argument("--out", default="runs/demo/nss", help="run directory (data, checkpoints, images, exports)")
    p.add_argument("--max-steps", type=int, default=None, help="training steps (default: the cpu preset's)")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda")
    args = p.parse_args()
    out = Path(args.out)
    train = ["nss/train.py", "--out", str(out), "--device", args.device, "--preset", "cpu"]
    if args.max_steps:
        train += ["--max-steps", str(args.max_steps)]
    if (out / "ckpt" / "latest").exists():
        train.append("--resume")
    t_train = run_step(train)
    t_export = run_step(["nss/export.py", "--model-path", str(out / "ckpt" / "latest"), "--out", str(out / "export")])
    res = json.loads((out / "eval" / "results.json").read_text())
    rep = json.loads((out / "export" / "export_report.json").read_text())
    print("\n" + table(res))
    gain = res["nss"]["psnr"] - res["bicubic"]["psnr"]
    print(f"\nNSS - bicubic: {gain:+.2f} dB PSNR   ({'beats' if gain > 0 else 'does NOT beat'} bicubic)")
    print(
        f"export: .pte vs eager max-abs-error {rep['checks']['pte_max_abs_error']:.2e} "
        f"({'PASS' if rep['pte_matches_eager'] else 'FAIL'}), VGF delegated fraction "
        f"{rep.get('vgf', {}).get('delegated_fraction', 'n/a')}"
    )
    print(f"time: train+eval {t_train / 60:.1f} min, export {t_export / 60:.1f} min")
    print(f"images: {out / 'eval' / 'comparison.png'}  (Bilinear | TAA | NSS | GT, zoomed crops below)")
    print(f"exports: {out / 'export'} (model.vgf, model.tosa, model_vgf.pte, model.pte, export_report.json)")
    print(f"logs: {out / 'output.log'}, {out / 'metrics.jsonl'}")


if __name__ == "__main__":
    main()
