"""The GameNGen demo that `bash run.sh demo gamengen` runs, CPU-sized: record ViZDoom play -> train the frame
autoencoder -> encode every frame once -> train the action-conditioned denoiser -> evaluate on held-out
episodes against copy-last-frame (teacher forced and autoregressive, rollout GIF, frames per second) -> export
one denoising step and the decoder (.pte, .vgf) -> play the model headless from an action script (GIF) -> the
shipped weights (gamengen/weights) evaluated on the same held-out episodes, beside the demo's own model.

    python gamengen/demo.py --out runs/demo/gamengen [--steps 20000] [--ae-steps 1000] [--max-steps 2000]
    python gamengen/play.py --model-path runs/demo/gamengen/diffusion/ckpt/best --data runs/demo/gamengen/latents

Each step is the real command line (printed), so you can rerun any of them by hand. The data is random play
(`--policy random`); train gamengen/agent.py and pass `--policy runs/doom_agent/ckpt/latest` for agent play,
which the paper found gives a better model.
"""

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from common.runtime import run_step
from gamengen.evaluate import table

SCRIPT = """# a short walk: look around, step forward, shoot (one action per line, optional repeat count)
turn_left 6
forward 8
attack 3
turn_right 10
forward 6
strafe_left 4
attack 3
"""


def main():
    p = argparse.ArgumentParser(
        description=__doc__.split("\n")[0],
        epilog=__doc__.split("\n", 1)[1],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "--out", default="runs/demo/gamengen", help="run directory (episodes, latents, checkpoints, GIFs, exports)"
    )
    p.add_argument("--policy", default="random", help="random, or a gamengen/agent.py checkpoint that plays")
    p.add_argument("--steps", type=int, default=20000, help="recorded game steps")
    p.add_argument("--ae-steps", type=int, default=1000, help="autoencoder training steps")
    p.add_argument("--max-steps", type=int, default=2000, help="denoiser training steps")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda")
    args = p.parse_args()
    out = Path(args.out)
    t = {}
    t["collect"] = run_step(
        ["gamengen/collect.py", "--policy", args.policy, "--steps", str(args.steps), "--out", str(out / "doom")]
    )
    ae = [
        "gamengen/train.py",
        "ae",
        "--data",
        str(out / "doom"),
        "--out",
        str(out / "ae"),
        "--steps",
        str(args.ae_steps),
    ]
    t["autoencoder"] = run_step(ae + (["--resume"] if (out / "ae" / "ckpt" / "latest").exists() else []))
    if not (out / "latents" / "index.json").exists():
        t["encode"] = run_step(
            [
                "gamengen/train.py",
                "encode",
                "--data",
                str(out / "doom"),
                "--ckpt",
                str(out / "ae" / "ckpt" / "best"),
                "--out",
                str(out / "latents"),
            ]
        )
    diffusion = [
        "gamengen/train.py",
        "diffusion",
        "--data",
        str(out / "latents"),
        "--out",
        str(out / "diffusion"),
        "--max-steps",
        str(args.max_steps),
        "--device",
        args.device,
    ]
    t["diffusion"] = run_step(diffusion + (["--resume"] if (out / "diffusion" / "ckpt" / "latest").exists() else []))
    best = str(out / "diffusion" / "ckpt" / "best")
    t["evaluate"] = run_step(
        ["gamengen/evaluate.py", "--model-path", best, "--data", str(out / "latents"), "--out", str(out / "eval")]
    )
    t["export"] = run_step(
        ["gamengen/export.py", "--model-path", best, "--data", str(out / "latents"), "--out", str(out / "export")]
    )
    (out / "walk.txt").write_text(SCRIPT)
    t["play"] = run_step(
        [
            "gamengen/play.py",
            "--model-path",
            best,
            "--data",
            str(out / "latents"),
            "--headless",
            "--actions",
            str(out / "walk.txt"),
            "--out",
            str(out / "play.gif"),
        ]
    )
    shipped = Path(__file__).resolve().parent / "weights"
    if (shipped / "denoiser").is_dir():  # the shipped model on the same held-out frames: its own autoencoder and scale
        scale = json.loads((shipped / "start" / "index.json").read_text())["scale"]
        t["encode for shipped"] = run_step(
            [
                "gamengen/train.py",
                "encode",
                "--data",
                str(out / "doom"),
                "--ckpt",
                str(shipped / "autoencoder"),
                "--scale",
                str(scale),
                "--out",
                str(out / "latents_shipped"),
            ]
        )
        t["evaluate shipped"] = run_step(
            [
                "gamengen/evaluate.py",
                "--model-path",
                str(shipped / "denoiser"),
                "--data",
                str(out / "latents_shipped"),
                "--out",
                str(out / "eval_shipped"),
            ]
        )
    res = json.loads((out / "eval" / "results.json").read_text())
    print("\nthis demo's model, trained from scratch:\n" + table(res))
    if (out / "eval_shipped" / "results.json").exists():
        print(
            f"\nthe shipped weights ({shipped}, model card: README.md there) on the same held-out episodes:\n"
            + table(json.loads((out / "eval_shipped" / "results.json").read_text()))
        )
    print("\ntime: " + ", ".join(f"{k} {v / 60:.1f} min" for k, v in t.items()))
    print(
        f"GIFs: {out / 'eval' / 'rollout.gif'} (recorded | model, 32 steps), {out / 'play.gif'} (played from walk.txt)"
    )
    print(
        f"play it: python gamengen/play.py --model-path {best} --data {out / 'latents'}   (pip install -r "
        "gamengen/requirements-play.txt)"
    )


if __name__ == "__main__":
    main()
