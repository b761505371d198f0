"""Train GameNGen, stage by stage: autoencoder, encode, diffusion (the game engine), decoder fine-tune.

    python gamengen/collect.py --policy random --steps 20000 --out runs/gg/doom              # (or agent.py --record)
    python gamengen/train.py ae --data runs/gg/doom --out runs/gg/ae                            # gamengen/autoencoder.py train
    python gamengen/train.py encode --data runs/gg/doom --ckpt runs/gg/ae/ckpt/best --out runs/gg/latents
    python gamengen/train.py diffusion --data runs/gg/latents --out runs/gg/diffusion        # this file: the denoiser
    python gamengen/train.py decoder-finetune --data runs/gg/doom --latents runs/gg/latents \\
                                        --ckpt runs/gg/ae/ckpt/best --out runs/gg/decoder
    python gamengen/evaluate.py --model-path runs/gg/diffusion/ckpt/best --data runs/gg/latents
    python gamengen/play.py --model-path runs/gg/diffusion/ckpt/best --data runs/gg/latents

The ae, encode and decoder-finetune stages are gamengen/autoencoder.py's commands (same flags). The diffusion
stage takes the common flags (--preset tiny|cpu|paper, --resume, --amp, --device, torchrun) and trains the
denoiser of gamengen/model.py on (target, N context latents, N actions) windows of the train episodes, with an
exponential moving average (EMA) of the weights that is what evaluation, play and export use. Batches and noise
are drawn from generators seeded by (seed, step), so --resume continues bit-exactly. Every eval_every steps
the EMA model samples (4 DDIM steps, guidance 1.5) next latents of a fixed set of held-out windows; the score
is their latent MSE against the truth (copy-last-frame's is logged beside it) and picks OUT/ckpt/best.
"""
import argparse
import copy
import math
import sys
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch
import torch.nn.functional as F
from torch.nn.parallel import DistributedDataParallel as DDP

from common import ckpt, log, runtime
from gamengen.dataset import DataError, LatentSequences
from gamengen.model import PRESETS as MODELS
from gamengen.model import Denoiser, sample, training_loss

AE_STAGES = {"ae": "train", "encode": "encode", "decoder-finetune": "decoder-finetune"}


@dataclass
class Config:
    model: str = "cpu"              # tiny | cpu | paper (gamengen/model.py); sets the context length N
    batch_size: int = 32            # windows per optimizer step (over all processes)
    max_steps: int = 5000            # 34.5 min on one busy CPU thread (see README)
    lr: float = 5e-4
    min_lr: float = 1e-5
    warmup_steps: int = 200
    weight_decay: float = 0.0
    grad_clip: float = 1.0
    ema: float = 0.999              # EMA decay of the weights used for sampling
    eval_every: int = 500
    eval_windows: int = 64          # held-out windows sampled at each evaluation
    log_every: int = 50
    save_every: int = 0


PRESETS = {
    "tiny": Config(model="tiny", batch_size=4, max_steps=6, lr=1e-3, warmup_steps=1, ema=0.5, eval_every=3, eval_windows=4,
                   log_every=2),
    "cpu": Config(),
    "paper": Config(model="paper", batch_size=128, max_steps=700_000, lr=5e-5, warmup_steps=500, ema=0.9999, eval_every=5000,
                    eval_windows=512, log_every=100, save_every=50_000),
}


def build_parser():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0], epilog=__doc__.split("\n", 1)[1],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("stage", choices=["diffusion", *AE_STAGES], help="what to train (ae, encode, decoder-finetune: see autoencoder.py)")
    runtime.add_common_args(p, PRESETS)
    p.add_argument("--model", choices=sorted(MODELS), help="denoiser size and context length (default: the preset's)")
    p.add_argument("--batch-size", type=int, help="windows per optimizer step")
    p.add_argument("--lr", type=float, help="AdamW learning rate (cosine to min_lr after warm-up)")
    p.add_argument("--ema", type=float, help="EMA decay of the sampling weights")
    p.add_argument("--eval-every", type=int, help="steps between held-out evaluations (and checkpoints)")
    p.add_argument("--log-every", type=int, help="steps between train log lines and metrics.jsonl rows")
    p.add_argument("--stop-after", type=int, metavar="N", help="save and exit after N steps in this session (continue with --resume)")
    return p


def batch_of(ds, idx, device):
    items = [ds[int(i)] for i in idx]
    b = {k: torch.stack([it[k] for it in items]).to(device) for k in ("target", "context", "actions", "valid")}
    return b


@torch.no_grad()
def quick_eval(model, ds, n, device, seed=0):
    """Latent MSE of 4-step guided samples for n fixed held-out windows, and copy-last-frame's (last context
    latent, or zeros at an episode start) on the same windows."""
    idx = torch.linspace(0, len(ds) - 1, min(n, len(ds))).long()
    g = torch.Generator().manual_seed(seed)
    mse = base = 0.0
    for k in range(0, len(idx), 32):
        b = batch_of(ds, idx[k:k + 32], device)
        z = sample(model, b["context"], b["actions"], generator=g)
        mse += F.mse_loss(z, b["target"], reduction="sum").item()
        base += F.mse_loss(b["context"][:, -1], b["target"], reduction="sum").item()
    n = len(idx) * b["target"][0].numel()
    return mse / n, base / n


def load_denoiser(path, ema=True, map_location="cpu"):
    """A diffusion checkpoint directory -> (Denoiser with the EMA (or raw) weights, meta)."""
    weights, _, meta = ckpt.load(path, map_location=map_location, with_state=False)
    cfg = MODELS[meta["config"]["model"]]
    cfg = replace(cfg, **{k: tuple(v) if isinstance(v, list) else v for k, v in meta["model"].items()})
    model = Denoiser(cfg)
    prefix = "ema." if ema else "model."
    ckpt.load_into(model, {k[len(prefix):]: v for k, v in weights.items() if k.startswith(prefix)})
    return model.eval(), meta


@runtime.user_errors(DataError, ckpt.CheckpointError)
def main():
    if len(sys.argv) > 1 and sys.argv[1] in AE_STAGES:          # the autoencoder stages: autoencoder.py's CLI
        from gamengen import autoencoder
        sys.argv = [sys.argv[0], AE_STAGES[sys.argv[1]], *sys.argv[2:]]
        return autoencoder.main()
    args = build_parser().parse_args()
    cfg = runtime.override(replace(PRESETS[args.preset]), args)
    rt = runtime.setup(args)
    out, mcfg = Path(args.out), MODELS[cfg.model]
    ck = out / "ckpt"
    logger = log.setup(out, args.log_level, rt.master)
    metrics = log.Metrics(out, enabled=rt.master)
    if not args.data:
        runtime.fail("diffusion needs --data LATENTS (from `gamengen/train.py encode`); `bash run.sh demo gamengen` builds it all")
    try:
        train_set = LatentSequences(args.data, "train", mcfg.context)
        val_set = LatentSequences(args.data, "heldout", mcfg.context)
    except (OSError, ValueError, KeyError) as e:
        runtime.fail(f"--data {args.data}: {e}")
    C, h, w = train_set.shards[0]["latents"].shape[1:]           # the autoencoder's latent shape (kept in meta["model"])
    mcfg = replace(mcfg, latent_channels=int(C), latent_size=(int(h), int(w)), patch=max(1, int(h) // 16))
    model = Denoiser(mcfg).to(rt.device)
    ema = copy.deepcopy(model).requires_grad_(False)
    net = DDP(model) if rt.ddp else model
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    scaler = torch.amp.GradScaler(enabled=rt.amp_dtype == torch.float16)
    step, best = 0, math.inf
    if rt.master:
        ckpt.check_room(ck, model, ema)
    if args.resume:
        with ckpt.resuming(ck, "a GameNGen diffusion checkpoint of this preset", rt.device, logger.info) as latest:
            if latest:
                weights, state, meta = latest
                ckpt.load_into(model, weights, prefix="model")
                ckpt.load_into(ema, weights, prefix="ema")
                opt.load_state_dict(state["opt"])
                scaler.load_state_dict(state["scaler"])
                step, best = meta["step"], meta.get("best_score", math.inf)
        metrics.resume(step)
    total = cfg.max_steps
    logger.info(f"GameNGen denoiser ({cfg.model}, context {mcfg.context}): {sum(p.numel() for p in model.parameters()):,} params | "
                f"{len(train_set)} train windows ({len(set(train_set.ep_sorted[train_set.targets].tolist()))} episodes), {len(val_set)} held-out | "
                f"{total} steps, batch {cfg.batch_size} | device {rt.device}")
    stop, guard = runtime.StopSignal(), runtime.NanGuard(args.nan_policy)
    save_every = args.save_every or cfg.save_every

    def save(score=None):
        if not rt.master:
            return
        weights = {f"model.{k}": v for k, v in model.state_dict().items()}
        weights.update({f"ema.{k}": v for k, v in ema.state_dict().items()})
        state = {"opt": opt.state_dict(), "scaler": scaler.state_dict()}
        meta = {"step": step, "preset": args.preset, "config": asdict(cfg), "model": asdict(mcfg), "data": str(args.data),
                "best_score": best, "val_score": score, "nan_skipped": guard.skipped}
        ckpt.save_step(ck, step, weights, state, meta, best=score is not None and score <= best,
                       keep_every=save_every)

    start_step, t_last, t_data, t_step, seen = step, time.time(), 0.0, 0.0, 0
    model.train()
    while step < total:
        t0 = time.perf_counter()
        g = torch.Generator().manual_seed(args.seed * 1_000_003 + step)          # batch and noise depend on (seed, step) only
        idx = torch.randint(len(train_set), (cfg.batch_size,), generator=g)[rt.rank::rt.world]
        b = batch_of(train_set, idx, rt.device)
        t1 = time.perf_counter()
        lr = cfg.lr * min(1, (step + 1) / max(1, cfg.warmup_steps))
        lr = cfg.min_lr + (lr - cfg.min_lr) * 0.5 * (1 + math.cos(math.pi * step / total))
        for group in opt.param_groups:
            group["lr"] = lr
        with rt.autocast():
            loss = training_loss(net, b["target"], b["context"], b["actions"], b["valid"], generator=g)
        if not guard.skip_step(loss, step, rt, save, ck / "latest", logger):   # non-finite: no update, the step counts
            opt.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.unscale_(opt)
            torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
            scaler.step(opt)
            scaler.update()
            with torch.no_grad():
                decay = min(cfg.ema, (1 + step) / (10 + step))        # warm-up of the average, as in common EMA practice
                for pe, pm in zip(ema.parameters(), model.parameters()):
                    pe.lerp_(pm, 1 - decay)
        step += 1
        seen += len(idx) * rt.world
        t_data, t_step = t_data + t1 - t0, t_step + time.perf_counter() - t1
        if step % cfg.log_every == 0 or step == total:
            dt, t_last = time.time() - t_last, time.time()
            logger.info(f"step {step:6d} | loss {loss.item():.4f} | lr {lr:.2e} | {seen / dt:.0f} windows/s | "
                        f"data {100 * t_data / (t_data + t_step):.1f}% of step time")
            metrics.write(step, "train", loss=loss.item(), lr=lr, data_share=t_data / (t_data + t_step), windows_per_s=seen / dt)
            seen, t_data, t_step = 0, 0.0, 0.0
        score = None
        if rt.master and (step % cfg.eval_every == 0 or step == total):
            mse, base = quick_eval(ema, val_set, cfg.eval_windows, rt.device)
            score, best = mse, min(best, mse)
            metrics.write(step, "val", latent_mse=mse, copy_last_mse=base)
            logger.info(f"step {step:6d} | val latent MSE {mse:.4f} (copy-last-frame {base:.4f}) | EMA, 4 DDIM steps, w=1.5")
        if score is not None or step == total or (save_every and step % save_every == 0):
            save(score)
        if stop.checkpoint_and_leave(step, step - start_step, args.stop_after, save, ck / "latest", logger, rt):
            return
    if rt.master:
        logger.info(f"done: {ck / 'best'} (val latent MSE {best:.4f}); evaluate with gamengen/evaluate.py --model-path {ck / 'best'} "
                    f"--data {args.data}")
    runtime.teardown(rt)


if __name__ == "__main__":
    main()
