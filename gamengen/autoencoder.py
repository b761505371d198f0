"""GameNGen's autoencoder: a Doom frame (3, 128, 160) in [0, 1] <-> a latent (4, 32, 40), 4x smaller per side.

    python gamengen/autoencoder.py train  --data runs/ae/doom --out runs/ae/train [--preset tiny|cpu|gpu] [--resume]
    python gamengen/autoencoder.py encode --data runs/ae/doom --ckpt runs/ae/train/ckpt/latest --out runs/ae/latents
    python gamengen/autoencoder.py decoder-finetune --data runs/ae/doom --latents runs/ae/latents \
                                          --ckpt runs/ae/train/ckpt/latest --out runs/ae/dec [--steps N]

The factor is 2 ** len(channels): the cpu preset's (32, 64) gives 4x32x40 (the denoiser pixel-unshuffles it to
16x16x20, gamengen/model.py), tiny's and gpu's three levels 4x16x20 (the paper's SD VAE factor, 8). At the same
number of latent values the finer grid of fewer channels reconstructs better, and its decoder is the cheapest (the
sweep: gamengen/weights/README.md). A plain deterministic autoencoder, not a VAE: the diffusion model only needs a
compact, smooth latent and a decoder, and Stable Diffusion's KL weight (1e-6) is so small that its VAE behaves as an
AE anyway. A small L2 penalty on the latent keeps its scale bounded; `encode` then stores scale = 1 / std of the
train latents in the index (SD's 0.18215), which gamengen/dataset.py applies. Loss: L1 + MSE on pixels, AdamW,
cosine schedule. `encode` writes every shard's latents once (latents float16 (N, C, h, w) + actions, rewards,
episode, step, same rows as the frames shard), so diffusion training never touches pixels. `decoder-finetune` trains
only the decoder to map the stored (frozen, float16) latents back to the frames with MSE, as GameNGen does, and
reports held-out PSNR before and after. Checkpoints: OUT/ckpt/{latest,best} (common/ckpt.py); --resume continues.
"""

import argparse
import json
import math
import sys
import time
from dataclasses import asdict, dataclass
from functools import partial
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from safetensors.torch import save_file

from common import ckpt, runtime
from common.metrics import psnr
from common.runtime import NanGuard, fail
from gamengen.dataset import DataError, read_shards
from gamengen.doom import visible

CL = torch.channels_last


@dataclass
class AEConfig:
    channels: tuple = (
        64,
        128,
        256,
    )  # at 1/2, 1/4, 1/8 resolution; the latent is 2**len(channels) times smaller per side
    latent_channels: int = 4
    batch_size: int = 16
    crop: tuple = (64, 80)  # train on random crops at multiples of 8 (fully convolutional); () = whole
    lr: float = 1e-3
    weight_decay: float = 1e-4
    latent_reg: float = 1e-4  # weight of mean(z^2)
    steps: int = 4000
    warmup: int = 100
    grad_clip: float = 1.0  # max gradient norm (0 = off)
    eval_every: int = 250
    eval_frames: int = 256


PRESETS = {
    "tiny": AEConfig(
        channels=(8, 16, 16), batch_size=8, crop=(32, 40), lr=3e-3, warmup=1, steps=20, eval_every=20, eval_frames=8
    ),
    "cpu": AEConfig(channels=(32, 64)),
    "gpu": AEConfig(channels=(128, 256, 256), batch_size=64, steps=40000, eval_every=1000, eval_frames=1024),
}


class Res(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.a, self.b = nn.Conv2d(c, c, 3, padding=1), nn.Conv2d(c, c, 3, padding=1)

    def forward(self, x):
        return x + self.b(F.silu(self.a(F.silu(x))))


class AE(nn.Module):
    """Pixel-unshuffle 2x (no full-resolution convs: 4x cheaper), then len(channels) - 1 stride-2 stages with
    residual blocks (64x80 -> 32x40 [-> 16x20]); the decoder mirrors it with nearest upsampling and a final pixel
    shuffle."""

    def __init__(self, cfg):
        super().__init__()
        c = cfg.channels
        enc = [nn.PixelUnshuffle(2), nn.Conv2d(12, c[0], 3, padding=1)]
        for i in range(len(c) - 1):
            enc += [Res(c[i]), nn.Conv2d(c[i], c[i + 1], 3, stride=2, padding=1)]
        self.encoder = nn.Sequential(
            *enc, Res(c[-1]), Res(c[-1]), nn.SiLU(), nn.Conv2d(c[-1], cfg.latent_channels, 3, padding=1)
        )
        dec = [nn.Conv2d(cfg.latent_channels, c[-1], 3, padding=1), Res(c[-1]), Res(c[-1])]
        for i in reversed(range(len(c) - 1)):
            dec += [nn.Upsample(scale_factor=2, mode="nearest"), nn.Conv2d(c[i + 1], c[i], 3, padding=1), Res(c[i])]
        self.decoder = nn.Sequential(*dec, nn.SiLU(), nn.Conv2d(c[0], 12, 3, padding=1), nn.PixelShuffle(2))

    def encode(self, x):  # [0, 1] (N, 3, 128, 160) -> (N, latent_channels, 128 / f, 160 / f)
        return self.encoder(x * 2 - 1)

    def decode(self, z):  # -> [0, 1] (unclamped while training)
        return self.decoder(z) * 0.5 + 0.5

    def forward(self, x):
        z = self.encode(x)
        return self.decode(z), z


def load_shards(data):
    """Recorded episodes (collect.py) or latents (encode) -> (index, [{key: memmap}]). Raises DataError."""
    index, shards = read_shards(data, ("actions", "episode", "step"))
    want = index.get("frame_shape")
    for sh, s in zip(index["shards"], shards):
        f = s.get("frames")
        if f is None and "latents" not in s:
            raise DataError(f"{Path(data) / sh['file']}: neither 'frames' (recorded episodes) nor 'latents' (encoded)")
        if f is not None and (
            f.dtype != np.uint8
            or f.ndim != 4
            or (want is not None and list(f.shape[1:]) != want)
            or f.shape[1] != 3
            or f.shape[2] % 8
            or f.shape[3] % 8
            or not f.shape[2]
        ):
            raise DataError(
                f"{Path(data) / sh['file']}: 'frames' {f.dtype} {list(f.shape)}, expected uint8 (N, "
                f"{want or '3, H, W'}) "
                f"with H and W multiples of 8"
            )
    return index, shards


def frame_rows(index, shards, split):
    """(shard, row) of every frame of the split's episodes."""
    keep = {int(e) for e, v in index["episodes"].items() if v["split"] == split}
    return [(i, r) for i, s in enumerate(shards) for r in np.nonzero(np.isin(s["episode"], list(keep)))[0]]


def frames(shards, rows):
    """uint8 recorded frames -> float (B, 3, H, W) in [0, 1], channels-last (2-3x faster convs on CPUs)."""
    return (torch.from_numpy(np.stack([shards[i]["frames"][r] for i, r in rows])).float() / 255).contiguous(
        memory_format=CL
    )


def evaluate(recon, shards, rows, batch=32):
    """Mean PSNR (dB) of recon(frames) clamped to [0, 1] over rows, on the rows the game drew (not the padding)."""
    vals = []
    with torch.no_grad():
        for k in range(0, len(rows), batch):
            x = frames(shards, rows[k : k + batch])
            vals.append(psnr(visible(recon(x, k).clamp(0, 1)), visible(x)).item() * len(x))
    return sum(vals) / len(rows)


def eval_rows(index, shards, n):
    rows = frame_rows(index, shards, "heldout") or frame_rows(index, shards, "train")
    return [rows[i] for i in np.linspace(0, len(rows) - 1, min(n, len(rows))).astype(int)]


def fit(model, params, cfg, out, batch_fn, eval_fn, loss_fn, resume, batch_rng, log=partial(print, flush=True)):
    """The shared loop: AdamW + warmup/cosine, checkpoints in OUT/ckpt (latest, best), resume (bit-exact: the
    state of batch_rng, the generator batch_fn draws from, is checkpointed too). A non-finite loss skips its step;
    20 in a row stop the run (ValueError), the last good state in OUT/ckpt/latest."""
    params = list(params)
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1, (s + 1) / cfg.warmup) * 0.5 * (1 + math.cos(math.pi * min(1, s / cfg.steps)))
    )
    root, step, best, guard = Path(out) / "ckpt", 0, -1.0, NanGuard("skip")
    ckpt.check_room(root, model)
    if resume and (root / "latest").exists():
        weights, state, meta = ckpt.load(root / "latest")
        try:
            ckpt.load_into(model, weights)
            opt.load_state_dict(state["optimizer"])
            sched.load_state_dict(state.get("scheduler", state.get("sched")))  # "sched": runs before 2026-12
            ckpt.set_rng_state(state["rng"])
            if "batch_rng" in state:  # (older checkpoints did not keep it)
                batch_rng.set_state(state["batch_rng"])
            step, best = meta["step"], meta.get("best", meta.get("best_psnr"))
        except (RuntimeError, KeyError, ValueError, TypeError, IndexError) as e:
            raise ckpt.CheckpointError(
                f"{root / 'latest'}: not a checkpoint of this stage ({(str(e).splitlines() or [type(e).__name__])[0]})"
            ) from None
        log(f"resumed from step {step}")

    def save(val):
        meta = {
            "step": step,
            "best": max(best, val),
            "val": val,
            "config": asdict(cfg),
            "nan_skipped": guard.skipped,
        }
        state = {
            "optimizer": opt.state_dict(),
            "scheduler": sched.state_dict(),
            "rng": ckpt.rng_state(),
            "batch_rng": batch_rng.get_state(),
        }
        ckpt.save_step(root, step, model.state_dict(), state, meta, best=val > best)

    t0, losses = time.time(), []
    while step < cfg.steps:
        model.train()
        loss = loss_fn(*batch_fn())
        if guard.ok(loss.detach()):
            opt.zero_grad(set_to_none=True)
            loss.backward()
            if cfg.grad_clip:
                torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip)
            opt.step()
            losses.append(loss.item())
        else:  # no update, the step counts
            log(f"step {step}: non-finite loss, skipped ({guard.skipped} so far)")
            if guard.must_stop:
                save(best)
                raise ValueError(
                    f"stopping: {guard.consecutive} non-finite losses in a row; last good state in {root / 'latest'}"
                )
        sched.step()
        step += 1
        if step % cfg.eval_every == 0 or step == cfg.steps:
            model.eval()
            val = eval_fn()
            log(
                f"step {step} loss {np.mean(losses or [np.nan]):.4f} heldout_psnr {val:.2f} dB "
                f"({time.time() - t0:.0f}s)"
            )
            losses = []
            save(val)
            best = max(best, val)
    return best


def load_model(path):
    weights, _, meta = ckpt.load(path, with_state=False)
    cfg = AEConfig(
        **dict(meta["config"], channels=tuple(meta["config"]["channels"]), crop=tuple(meta["config"]["crop"]))
    )
    model = AE(cfg)
    ckpt.load_into(model, weights)
    return model.eval(), cfg


def train(args, cfg):
    index, shards = load_shards(args.data)
    rows, ev = frame_rows(index, shards, "train"), eval_rows(index, shards, cfg.eval_frames)
    if not rows:
        raise ValueError(f"{args.data}: no train episodes in the index")
    torch.manual_seed(args.seed)
    model = AE(cfg).to(memory_format=CL)
    g = torch.Generator().manual_seed(args.seed)
    if cfg.crop and any(n < c for n, c in zip(shards[0]["frames"].shape[2:], cfg.crop)):
        raise DataError(
            f"{args.data}: frames {list(shards[0]['frames'].shape[2:])} are smaller than the training crop "
            f"{list(cfg.crop)}"
        )

    def loss_fn(x):
        y, z = model(x)
        return F.l1_loss(y, x) + F.mse_loss(y, x) + cfg.latent_reg * z.pow(2).mean()

    def batch():
        x = frames(shards, [rows[i] for i in torch.randint(len(rows), (cfg.batch_size,), generator=g)])
        if not cfg.crop:
            return (x.contiguous(memory_format=CL),)
        h, w = cfg.crop
        y0, x0 = (8 * int(torch.randint((n - c) // 8 + 1, (), generator=g)) for n, c in zip(x.shape[2:], cfg.crop))
        return (x[:, :, y0 : y0 + h, x0 : x0 + w].contiguous(memory_format=CL),)

    best = fit(
        model,
        model.parameters(),
        cfg,
        args.out,
        batch,
        lambda: evaluate(lambda x, k: model(x)[0], shards, ev),
        loss_fn,
        args.resume,
        g,
    )
    print(f"best held-out PSNR {best:.2f} dB over {len(ev)} frames")


@torch.no_grad()
def encode(args):
    model, cfg = load_model(args.ckpt)
    model = model.to(memory_format=CL)
    index, shards = load_shards(args.data)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    train_eps = {int(e) for e, v in index["episodes"].items() if v["split"] == "train"}
    sq, n, lat_index = (
        0.0,
        0,
        dict(index, format="gamengen-latents-v1", source=str(args.data), ckpt=str(args.ckpt), shards=[]),
    )
    for sh, s in zip(index["shards"], shards):
        z = (
            torch.cat(
                [
                    model.encode(frames([s], [(0, r) for r in range(k, min(k + 64, len(s["frames"])))]))
                    for k in range(0, len(s["frames"]), 64)
                ]
            )
            .half()
            .contiguous()
        )
        tr = torch.from_numpy(np.isin(s["episode"], list(train_eps)))
        sq, n = sq + z[tr].float().pow(2).sum().item(), n + z[tr].numel()
        name = sh["file"].replace("shard_", "latents_")
        t = {
            "latents": z.contiguous(),
            **{k: torch.from_numpy(np.array(s[k])) for k in ("actions", "rewards", "episode", "step")},
        }
        save_file(t, str(out / (name + ".tmp")))
        (out / (name + ".tmp")).replace(out / name)
        lat_index["shards"].append(dict(sh, file=name))
    lat_index.update(
        latent_shape=list(z.shape[1:]), scale=getattr(args, "scale", None) or 1 / math.sqrt(sq / max(n, 1))
    )
    (out / "index.json.tmp").write_text(json.dumps(lat_index, indent=1))
    (out / "index.json.tmp").replace(out / "index.json")
    print(
        f"{sum(sh['steps'] for sh in index['shards'])} latents {tuple(z.shape[1:])} in {len(shards)} files in {out}, "
        f"scale {lat_index['scale']:.4f}"
    )


def decoder_finetune(args, cfg):
    model, mcfg = load_model(args.ckpt)
    model = model.to(memory_format=CL)
    index, shards = load_shards(args.data)
    lindex, lat = load_shards(args.latents)
    if [sh["steps"] for sh in lindex["shards"]] != [sh["steps"] for sh in index["shards"]]:
        fail(f"{args.latents} was not encoded from {args.data} (shard sizes differ)")
    rows, ev = frame_rows(index, shards, "train"), eval_rows(index, shards, cfg.eval_frames)
    zs = lambda rr: (
        torch.from_numpy(np.stack([lat[i]["latents"][r] for i, r in rr])).float().contiguous(memory_format=CL)
    )  # noqa: E731
    recon = lambda x, k: model.decode(zs(ev[k : k + 32]))  # noqa: E731
    before = evaluate(recon, shards, ev)
    model.encoder.requires_grad_(False)
    g = torch.Generator().manual_seed(args.seed)

    def batch():
        rr = [rows[i] for i in torch.randint(len(rows), (cfg.batch_size,), generator=g)]
        return zs(rr), frames(shards, rr)

    cfg.channels = mcfg.channels  # meta records the model's shape
    after = fit(
        model,
        model.decoder.parameters(),
        cfg,
        args.out,
        batch,
        lambda: evaluate(recon, shards, ev),
        lambda z, x: F.mse_loss(model.decode(z), x),
        args.resume,
        g,
    )
    print(f"decoder fine-tune: held-out PSNR from stored latents {before:.2f} -> {after:.2f} dB (best)")


def main():
    p = argparse.ArgumentParser(
        description=__doc__.split("\n")[0],
        epilog=__doc__.split("\n", 1)[1],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = p.add_subparsers(dest="cmd", required=True)
    for name in ("train", "encode", "decoder-finetune"):
        s = sub.add_parser(name)
        s.add_argument("--data", required=True, help="episodes folder from gamengen/collect.py")
        s.add_argument("--out", required=True, help="run folder (train, decoder-finetune) or latents folder (encode)")
        if name != "train":
            s.add_argument("--ckpt", required=True, help="autoencoder checkpoint directory, e.g. OUT/ckpt/latest")
        if name != "encode":
            s.add_argument(
                "--preset",
                default="cpu",
                choices=sorted(PRESETS),
                help="AEConfig preset; the flags below override its fields",
            )
            runtime.add_config_flags(s, PRESETS["cpu"])
            s.add_argument("--seed", type=int, default=0)
            s.add_argument("--resume", action="store_true", help="continue from OUT/ckpt/latest")
        if name == "encode":
            s.add_argument(
                "--scale",
                type=float,
                help="latent scale to record (default: 1 / std of the train latents); give a "
                "trained denoiser's (its latents' index 'scale') to encode new frames for it",
            )
        if name == "decoder-finetune":
            s.add_argument("--latents", required=True, help="folder written by encode")
    args = p.parse_args()
    try:
        if args.cmd == "encode":
            return encode(args)
        cfg = AEConfig(**asdict(PRESETS[args.preset]))
        if args.cmd == "decoder-finetune":  # a shorter, gentler schedule by default
            cfg.steps, cfg.lr = cfg.steps // 4, cfg.lr * 0.1
        runtime.override(cfg, args)
        cfg.warmup = min(cfg.warmup, cfg.steps)
        (train if args.cmd == "train" else decoder_finetune)(args, cfg)
    except (ckpt.CheckpointError, OSError, ValueError) as e:
        fail(str(e))


if __name__ == "__main__":
    main()
