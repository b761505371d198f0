"""The NeuroPBR demo that `bash run.sh demo neuropbr` runs: render built-in materials -> train (cpu preset) ->
evaluate on unseen materials against the mean-material and view-average baselines -> export (.vgf, .pte)
and check the .pte against eager -> infer on one sample folder.

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


def main():
    p = argparse.ArgumentParser(description="NeuroPBR demo: render materials, train, evaluate vs baselines, export, infer.")
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
    t_export = run_step(["neuropbr/export.py", "--model-path", str(out / "ckpt" / "best"), "--out", str(out / "export")])
    views = sorted((out / "data" / "input").glob("*/sample_*"))[-1]
    run_step(["neuropbr/infer.py", "--checkpoint", str(out / "ckpt" / "best"), "--input-dir", str(views), "--out", str(out / "infer")])
    res = json.loads((out / "eval" / "results.json").read_text())
    rep = json.loads((out / "export" / "export_report.json").read_text())
    print("\n" + table(res))
    print(f"\nexport: .pte vs eager max-abs-error {rep['checks']['pte_max_abs_error']:.2e} "
          f"({'PASS' if rep['pte_matches_eager'] else 'FAIL'}), VGF delegated fraction {rep.get('vgf', {}).get('delegated_fraction', 'n/a')}")
    print(f"time: train+eval {t_train / 60:.1f} min, export {t_export / 60:.1f} min")
    print(f"images: {out / 'eval'} (input views; pred | GT | error per map), {out / 'infer'} (maps of {views})")
    print(f"logs: {out / 'output.log'}, {out / 'metrics.jsonl'}")


if __name__ == "__main__":
    main()
