"""Evaluate a GameNGen diffusion checkpoint on held-out episodes, in pixels against the recorded frames.

    python gamengen/evaluate.py --model-path runs/gg/diffusion/ckpt/best --data runs/gg/latents [--decoder DEC_CKPT]

- teacher forcing: each target frame is predicted from the N real context latents and actions before it
  (4 DDIM steps, guidance 1.5, EMA weights) and decoded; PSNR/SSIM against the recorded frame, beside
  copy-last-frame (the real previous frame) and the autoencoder's own ceiling (the target's latent, decoded).
- autoregressive: from a held-out episode's first N real frames, the model feeds on its own predictions for
  32 steps while the recorded actions drive it; PSNR per step against the recording, beside copy-last-frame
  (the last real frame held). A GIF shows recording | model side by side.
- speed: frames per second of one played frame (the guided denoising steps + decode, batch 1) on this machine.

Metrics are on the 160x120 visible rows (the black padding rows are left out). Writes OUT/results.json,
OUT/rollout.gif and OUT/teacher_forced.png (previous | model | recorded) with OUT = the checkpoint's run/eval.
"""

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np
import torch

from common import ckpt
from common.images import grid, save_gif
from common.metrics import psnr, ssim
from common.runtime import fail
from gamengen.autoencoder import load_model as load_ae
from gamengen.dataset import LatentSequences, mmap_safetensors, recorded_path
from gamengen.doom import visible
from gamengen.model import sample
from gamengen.play import decoder_path
from gamengen.train import load_denoiser


class Frames:
    """The recorded frames behind a latents folder (its index names the episodes folder it was encoded from)."""

    def __init__(self, ds, source):
        self.ds = ds
        self.shards = [
            mmap_safetensors(Path(source) / sh["file"].replace("latents_", "shard_")) for sh in ds.index["shards"]
        ]

    def at(self, positions):
        """Sorted dataset positions -> float frames (B, 3, H, W) in [0, 1]."""
        rows = [(self.ds.shard_of[self.ds.order[p]], self.ds.row_of[self.ds.order[p]]) for p in positions]
        return torch.from_numpy(np.stack([self.shards[s]["frames"][r] for s, r in rows])).float() / 255


@torch.no_grad()
def teacher_forced(model, ae, ds, frames, n, steps, guidance, ctx_noise, seed=0, batch=32):
    """-> ({model, copy_last, autoencoder}: {psnr, ssim}, example rows for a grid)."""
    N = model.cfg.context
    full = [i for i in range(len(ds)) if ds.n_valid[ds.targets[i]] == N]  # windows with N real context frames
    pick = [full[k] for k in np.linspace(0, len(full) - 1, min(n, len(full))).astype(int)]
    g = torch.Generator().manual_seed(seed)
    sums, count, examples = {}, 0, []
    for k in range(0, len(pick), batch):
        items = [ds[i] for i in pick[k : k + batch]]
        ctx, act = torch.stack([it["context"] for it in items]), torch.stack([it["actions"] for it in items])
        target = torch.stack([it["target"] for it in items])
        pos = [int(ds.targets[i]) for i in pick[k : k + batch]]
        real, prev = frames.at(pos), frames.at([p - 1 for p in pos])
        pred = ae.decode(sample(model, ctx, act, steps, guidance, ctx_noise, generator=g) / ds.scale).clamp(0, 1)
        ceiling = ae.decode(target / ds.scale).clamp(0, 1)
        for name, x in (("model", pred), ("copy_last", prev), ("autoencoder", ceiling)):
            s = sums.setdefault(name, {"psnr": 0.0, "ssim": 0.0})
            s["psnr"] += psnr(visible(x), visible(real)).item() * len(pos)
            s["ssim"] += ssim(visible(x), visible(real)).item() * len(pos)
        count += len(pos)
        if len(examples) < 4:
            examples += [[prev[j], pred[j], real[j]] for j in range(min(4 - len(examples), len(pos)))]
    return {m: {k: v / count for k, v in s.items()} for m, s in sums.items()} | {"windows": count}, examples


@torch.no_grad()
def autoregressive(model, ae, ds, frames, horizon, episodes, steps, guidance, ctx_noise, seed=0):
    """Roll out `horizon` steps from the first N real frames of up to `episodes` held-out episodes, driven by
    their recorded actions. -> (per-step PSNR of model and copy-last-frame, GIF frames of the first episode)."""
    N = model.cfg.context
    starts = []  # dataset index of the window whose target is step N, in episodes long enough
    for i in range(len(ds)):
        p = int(ds.targets[i])
        if (
            ds.st_sorted[p] == N
            and p + horizon - 1 < len(ds.ep_sorted)
            and ds.ep_sorted[p + horizon - 1] == ds.ep_sorted[p]
        ):
            starts.append(i)
    starts = starts[:episodes]
    if not starts:
        return None, []
    g = torch.Generator().manual_seed(seed)
    items = [ds[i] for i in starts]
    ctx, act = torch.stack([it["context"] for it in items]), torch.stack([it["actions"] for it in items])
    pos = np.array([int(ds.targets[i]) for i in starts])
    last_real = frames.at(pos - 1)
    curve = {"model": [], "copy_last": []}
    gif = []
    for k in range(horizon):
        if k:  # the recorded action after frame N + k - 1 (dataset rows of the same episodes)
            act = torch.cat(
                [act[:, 1:], torch.from_numpy(np.stack([ds._rows("actions", p + k - 1, p + k) for p in pos]))], 1
            )
        z = sample(model, ctx, act, steps, guidance, ctx_noise, generator=g)
        pred, real = ae.decode(z / ds.scale).clamp(0, 1), frames.at(pos + k)
        curve["model"].append(psnr(visible(pred), visible(real)).item())
        curve["copy_last"].append(psnr(visible(last_real), visible(real)).item())
        ctx = torch.cat([ctx[:, 1:], z[:, None]], 1)
        gif.append(torch.cat([real[0], torch.ones(3, real.shape[-2], 4), pred[0]], -1))
    return curve | {"episodes": len(starts)}, gif


@torch.no_grad()
def frames_per_second(model, ae, context, actions, steps, guidance, repeats=20):
    """Median seconds of one played frame (guided denoising + decode, batch 1) -> (fps, denoise ms, decode ms)."""
    dn, dc = [], []
    for r in range(repeats + 3):
        t0 = time.perf_counter()
        z = sample(model, context, actions, steps, guidance)
        t1 = time.perf_counter()
        ae.decode(z).clamp(0, 1)
        t2 = time.perf_counter()
        if r >= 3:
            dn.append(t1 - t0)
            dc.append(t2 - t1)
    tot = np.median(np.array(dn) + np.array(dc))
    return 1 / tot, 1e3 * float(np.median(dn)), 1e3 * float(np.median(dc))


def evaluate(
    model_path,
    data,
    decoder=None,
    out=None,
    windows=256,
    horizon=32,
    episodes=8,
    steps=None,
    guidance=None,
    ctx_noise=0.0,
    log=print,
):
    model, meta = load_denoiser(model_path)
    ds = LatentSequences(data, "heldout", model.cfg.context)
    ae = load_ae(decoder_path(argparse.Namespace(decoder=decoder, data=data)))[0].eval()
    source = recorded_path(data, ds.index.get("source", "?"), "index.json")  # the recorded frames
    frames = Frames(ds, source)
    out = Path(out) if out else Path(model_path).resolve().parent.parent / "eval"
    steps, guidance = steps or model.cfg.sample_steps, model.cfg.guidance if guidance is None else guidance
    t0 = time.time()
    tf, examples = teacher_forced(model, ae, ds, frames, windows, steps, guidance, ctx_noise)
    ar, gif = autoregressive(model, ae, ds, frames, horizon, episodes, steps, guidance, ctx_noise)
    it = ds[0]
    fps, dn, dc = frames_per_second(model, ae, it["context"][None], it["actions"][None], steps, guidance)
    res = {
        "checkpoint": str(model_path),
        "step": meta["step"],
        "context": model.cfg.context,
        "steps": steps,
        "guidance": guidance,
        "ctx_noise": ctx_noise,
        "teacher_forced": tf,
        "autoregressive": ar,
        "speed": {"fps": fps, "denoise_ms": dn, "decode_ms": dc, "threads": torch.get_num_threads()},
    }
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(res, indent=1))
    if gif:
        save_gif(gif, out / "rollout.gif", fps=10)
    if examples:
        grid(examples, ["previous (copy-last)", "model", "recorded"], out / "teacher_forced.png", zoom=2)
    log(table(res) + f"\n({time.time() - t0:.0f}s; files in {out})")
    return res


def table(res):
    tf = res["teacher_forced"]
    lines = [
        f"teacher-forced next frame, {tf['windows']} held-out windows ({res['steps']} DDIM steps, "
        f"w={res['guidance']}):",
        "| method | PSNR | SSIM |",
        "|---|---|---|",
    ]
    lines += [f"| {m} | {tf[m]['psnr']:.2f} | {tf[m]['ssim']:.4f} |" for m in ("copy_last", "model", "autoencoder")]
    ar = res["autoregressive"]
    if ar:
        ks = [k for k in (1, 2, 4, 8, 16, 32) if k <= len(ar["model"])]
        lines += [
            "",
            f"autoregressive PSNR per step ({ar['episodes']} held-out episodes):",
            "| step | " + " | ".join(map(str, ks)) + " |",
            "|---" * (len(ks) + 1) + "|",
        ]
        lines += [f"| {m} | " + " | ".join(f"{ar[m][k - 1]:.2f}" for k in ks) + " |" for m in ("model", "copy_last")]
    s = res["speed"]
    lines += [
        "",
        f"speed: {s['fps']:.1f} frames/s ({s['denoise_ms']:.1f} ms denoise + {s['decode_ms']:.1f} ms decode, "
        f"{s['threads']} threads)",
    ]
    return "\n".join(lines)


def main():
    p = argparse.ArgumentParser(
        description=__doc__.split("\n")[0],
        epilog=__doc__.split("\n", 1)[1],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "--model-path", required=True, help="diffusion checkpoint directory (e.g. runs/gg/diffusion/ckpt/best)"
    )
    p.add_argument("--data", required=True, help="latents folder (its index names the frames and the autoencoder)")
    p.add_argument(
        "--decoder",
        help="autoencoder checkpoint whose decoder to use (default: the one in the latents index; "
        "give the decoder-finetune run's ckpt/best to use the fine-tuned decoder)",
    )
    p.add_argument("--out", help="output folder (default: the run's eval/)")
    p.add_argument("--windows", type=int, default=256, help="held-out windows for teacher forcing")
    p.add_argument("--horizon", type=int, default=32, help="autoregressive steps")
    p.add_argument("--episodes", type=int, default=8, help="held-out episodes rolled out")
    p.add_argument("--steps", type=int, help="DDIM steps (default: the model's, 4)")
    p.add_argument("--guidance", type=float, help="context guidance weight (default: the model's, 1.5)")
    p.add_argument("--ctx-noise", type=float, default=0.0, help="noise added to the context at inference (0..0.7)")
    p.add_argument("--threads", type=int, help="torch threads (default: all cores)")
    a = p.parse_args()
    if a.threads:
        torch.set_num_threads(a.threads)
    try:
        evaluate(
            a.model_path, a.data, a.decoder, a.out, a.windows, a.horizon, a.episodes, a.steps, a.guidance, a.ctx_noise
        )
    except (ckpt.CheckpointError, OSError, ValueError, KeyError) as e:
        fail(str(e))


if __name__ == "__main__":
    main()
