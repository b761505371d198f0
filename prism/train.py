"""Train Prism: game colour + depth + motion -> photoreal frame at 2x and 3x (trained jointly), with a GRU state
that streams from frame to frame (detached every frame: no backpropagation through time).

Built-in data (synthetic sequences, rendered into OUT/data on first use), CPU preset, fast network:
    python prism/train.py --out runs/prism
Your data (prism/make_dataset.py from videos, or any folder in the layout of prism/dataset.py), other sizes:
    python prism/train.py --data DATA --model balanced --out runs/prism_bal
Two processes (DDP; gloo on CPU, rank 0 logs and saves), resume bit-exactly, evaluate a checkpoint:
    torchrun --nproc_per_node=2 prism/train.py --out runs/prism
    python prism/train.py --out runs/prism --resume
    python prism/train.py --out runs/prism --evaluate --model-path runs/prism/ckpt/best

Loss per frame: L1 to the target + w_temporal * temporal consistency (the frame-to-frame change, after
warping the previous frame with the motion vectors, must match the target's) + w_gan * adversarial, from a
multi-scale PatchGAN for which only real video frames (is_real) count as "real": synthetic targets are never
shown to it as real, so the GAN pulls towards the look of real footage. When the data has both real and
synthetic clips, each batch is half of each.
"""
import argparse
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
from prism.dataset import DataError, PrismDataset, batches, collate
from prism.evaluate import evaluate, table
from prism.model import PRESETS as MODELS
from prism.model import MultiScaleDiscriminator, Prism


@dataclass
class Config:
    model: str = "fast"             # fast | balanced | quality | tiny (prism/model.py)
    clip_len: int = 4               # frames the GRU state streams through per training clip
    crop: int = 64                  # training crop, input pixels (multiple of 8)
    batch_size: int = 8             # clips per step (all of one scale)
    max_steps: int = 1000
    lr: float = 2e-3
    min_lr: float = 1e-5
    warmup_steps: int = 50
    weight_decay: float = 1e-4
    grad_clip: float = 1.0
    w_l1: float = 1.0
    w_temporal: float = 0.5
    w_gan: float = 0.01
    gan_start_step: int = 200
    d_lr: float = 2e-4
    d_scales: int = 3
    ndf: int = 32
    val_sequences: int = 4          # held-out sequences (half 2x, half 3x on the built-in data)
    eval_every: int = 250
    log_every: int = 25
    save_every: int = 0
    synth: tuple = (24, 16, 128)    # built-in data: sequences, frames, input size


PRESETS = {
    "tiny": Config(model="tiny", clip_len=2, crop=32, batch_size=2, max_steps=8, lr=1e-3, warmup_steps=2, gan_start_step=2,
                   val_sequences=2, eval_every=4, log_every=2, d_scales=2, ndf=8, synth=(6, 4, 32)),
    "cpu": Config(),
    "gpu": Config(batch_size=16, crop=128, clip_len=6, max_steps=20000, lr=1e-3, gan_start_step=2000, eval_every=1000,
                  log_every=100, save_every=5000, synth=(200, 32, 256)),
}


def build_parser():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0], epilog=__doc__.split("\n", 1)[1],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    runtime.add_common_args(p, PRESETS)
    p.add_argument("--model", choices=sorted(MODELS), help="network size: fast (~590K params), balanced (~2.5M), quality (~6.4M)")
    p.add_argument("--batch-size", type=int, help="clips per optimizer step")
    p.add_argument("--clip-len", type=int, help="frames per clip; the GRU state streams through them (detached each frame)")
    p.add_argument("--crop", type=int, help="training crop in input pixels (multiple of 8; 0 = whole frames)")
    p.add_argument("--lr", type=float, help="AdamW learning rate (cosine to min_lr after warm-up)")
    p.add_argument("--w-gan", type=float, help="adversarial loss weight (0 = no discriminator)")
    p.add_argument("--w-temporal", type=float, help="temporal consistency loss weight")
    p.add_argument("--gan-start-step", type=int, help="step from which the adversarial loss is on")
    p.add_argument("--as-real", action="store_true", help="built-in data: mark the synthetic sequences real (exercises the GAN path)")
    p.add_argument("--evaluate", action="store_true", help="only evaluate --model-path on the held-out sequences")
    p.add_argument("--model-path", metavar="CKPT", help="checkpoint directory for --evaluate")
    p.add_argument("--stop-after", type=int, metavar="N", help="save and exit after N steps in this session (continue with --resume)")
    return p


def resolve_data(args, cfg, rt, logger):
    if args.data:
        return Path(args.data)
    root = Path(args.out) / "data"
    if rt.master and not (root / "index.json").exists():
        from prism.synth import make_dataset
        n, frames, size = cfg.synth
        logger.info(f"rendering built-in sequences into {root} ({n} x {frames} frames, {size}² input) ...")
        t0 = time.time()
        make_dataset(root, sequences=n, frames=frames, size=size, seed=args.seed, as_real=args.as_real)
        logger.info(f"data ready in {time.time() - t0:.0f}s")
    if rt.ddp:
        torch.distributed.barrier()
    return root


def warp(img, motion, scale):
    """Backward-warp the previous frame (N,C,s*h,s*w) to the current one with motion vectors (N,2,h,w) in input
    pixels (this pixel was at x + mv in the previous frame)."""
    n, _, H, W = img.shape
    mv = F.interpolate(motion, size=(H, W), mode="bilinear", align_corners=False) * scale
    ys, xs = torch.meshgrid(torch.arange(H, device=img.device), torch.arange(W, device=img.device), indexing="ij")
    gx = (xs + 0.5 + mv[:, 0]) / W * 2 - 1
    gy = (ys + 0.5 + mv[:, 1]) / H * 2 - 1
    return F.grid_sample(img, torch.stack([gx, gy], -1), mode="bilinear", padding_mode="border", align_corners=False)


def gan_losses(disc, gt, pred, is_real):
    """Multi-scale hinge losses. Only ground-truth frames of real video (is_real) are shown as "real"; every
    generated frame is "fake". -> (discriminator loss, generator loss), or (None, None) with no real frame."""
    if not bool(is_real.any()):
        return None, None
    real_logits = disc(gt[is_real])
    fake_logits = disc(pred.detach())
    d_loss = sum(F.relu(1 - r).mean() + F.relu(1 + f).mean() for r, f in zip(real_logits, fake_logits))
    g_loss = -sum(f.mean() for f in disc(pred))
    return d_loss, g_loss


def stream_clip(net, model, clip, rt, cfg, disc=None, use_gan=False):
    """Run a batch of clips (B, T, ...) through the network frame by frame, the GRU state detached between
    frames. -> (loss summed over frames, parts, discriminator loss or None)."""
    s = clip["scale"]
    B, T, _, h, w = clip["color"].shape
    state = model.initial_state(B, h, w, device=rt.device)
    loss, parts, d_loss, prev = 0.0, {"l1": 0.0, "temporal": 0.0}, None, None
    for t in range(T):
        with rt.autocast():
            pred, state = net(clip["color"][:, t], clip["depth"][:, t], clip["motion_vectors"][:, t], state.detach(), s)
        pred = pred.float()
        gt = clip["ground_truth"][:, t]
        l1 = F.l1_loss(pred, gt)
        frame_loss = cfg.w_l1 * l1
        if prev is not None and cfg.w_temporal:
            mv = clip["motion_vectors"][:, t]
            temporal = F.l1_loss(pred - warp(prev[0], mv, s), gt - warp(prev[1], mv, s))
            frame_loss = frame_loss + cfg.w_temporal * temporal
            parts["temporal"] += temporal.detach() / (T - 1)
        if use_gan:
            d_t, g_t = gan_losses(disc, gt, pred, clip["is_real"][:, t])
            if d_t is not None:
                frame_loss = frame_loss + cfg.w_gan * g_t
                d_loss = d_t if d_loss is None else d_loss + d_t
                parts["g_adv"] = parts.get("g_adv", 0.0) + g_t.detach() / T
        parts["l1"] += l1.detach() / T
        loss = loss + frame_loss / T
        prev = (pred.detach(), gt)
    return loss, parts, d_loss


@runtime.user_errors(DataError, ckpt.CheckpointError)
def main():
    args = build_parser().parse_args()
    cfg = runtime.override(replace(PRESETS[args.preset]), args)
    rt = runtime.setup(args)
    out = Path(args.out)
    ck = out / "ckpt"
    logger = log.setup(out, args.log_level, rt.master)
    metrics = log.Metrics(out, enabled=rt.master)
    model = Prism(MODELS[cfg.model])
    data = PrismDataset(resolve_data(args, cfg, rt, logger), clip_len=cfg.clip_len, crop=cfg.crop or None, seed=args.seed)
    train_set, val_set = data.split(cfg.val_sequences, seed=42)
    if args.evaluate:
        if not args.model_path:
            runtime.fail("--evaluate needs --model-path CKPT_DIR")
        weights, _, meta = ckpt.load(args.model_path, with_state=False)
        model = Prism(MODELS[meta["config"]["model"]])
        ckpt.load_into(model, weights, prefix="model")
        res = evaluate(model.to(rt.device), val_set, rt.device, out / "eval")
        logger.info(table(res))
        return
    model.to(rt.device)
    net = DDP(model, find_unused_parameters=True) if rt.ddp else model   # a batch is one scale: the other head idles
    disc = MultiScaleDiscriminator(cfg.d_scales, ndf=cfg.ndf).to(rt.device) if cfg.w_gan > 0 else None
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    opt_d = torch.optim.Adam(disc.parameters(), lr=cfg.d_lr, betas=(0.5, 0.999)) if disc else None
    scaler = torch.amp.GradScaler(enabled=rt.amp_dtype == torch.float16)
    step, best = 0, -math.inf
    if rt.master:
        ckpt.check_room(ck, model, disc)
    if args.resume:
        with ckpt.resuming(ck, "a Prism checkpoint of this preset", rt.device, logger.info) as latest:
            if latest:
                weights, state, meta = latest
                ckpt.load_into(model, weights, prefix="model")
                opt.load_state_dict(state["opt"])
                if disc:
                    ckpt.load_into(disc, weights, prefix="disc")
                    opt_d.load_state_dict(state["opt_d"])
                scaler.load_state_dict(state["scaler"])
                ckpt.set_rng_state(state["rng"])
                step, best = meta["step"], meta.get("best_score", -math.inf)
        metrics.resume(step)
    total = cfg.max_steps
    real = sum(s["is_real"] for s in train_set.sequences)
    logger.info(f"Prism-{cfg.model}: {sum(p.numel() for p in model.parameters()):,} params"
                f"{f', discriminator {sum(p.numel() for p in disc.parameters()):,}' if disc else ''} | {len(train_set)} train clips "
                f"({real} of {len(train_set.sequences)} sequences real), {len(val_set.sequences)} held-out sequences | "
                f"{total} steps | device {rt.device}")
    stop, guard = runtime.StopSignal(), runtime.NanGuard(args.nan_policy)
    save_every = args.save_every or cfg.save_every

    def save(score=None):
        if not rt.master:
            return
        weights = {f"model.{k}": v for k, v in model.state_dict().items()}
        weights.update({f"disc.{k}": v for k, v in disc.state_dict().items()} if disc else {})
        state = {"opt": opt.state_dict(), "scaler": scaler.state_dict(), "rng": ckpt.rng_state()}
        state.update({"opt_d": opt_d.state_dict()} if disc else {})
        meta = {"step": step, "preset": args.preset, "config": asdict(cfg), "model": asdict(MODELS[cfg.model]),
                "best_score": best, "val_score": score, "nan_skipped": guard.skipped}
        ckpt.save_step(ck, step, weights, state, meta, best=score is not None and score >= best,
                       keep_every=save_every)

    model.train()
    start_step, t_last, seen = step, time.time(), 0
    with runtime.profiler(args.profile and rt.master, out) as prof_step:
        while step < total:
            idx, epoch = batches(train_set, cfg.batch_size * rt.world, step, args.seed)
            train_set.set_epoch(epoch)
            clip = collate([train_set[i] for i in idx[rt.rank::rt.world]])
            clip = {k: v.to(rt.device) if torch.is_tensor(v) else v for k, v in clip.items()}
            lr = cfg.lr * min(1, (step + 1) / max(1, cfg.warmup_steps))
            lr = cfg.min_lr + (lr - cfg.min_lr) * 0.5 * (1 + math.cos(math.pi * step / total))
            for g in opt.param_groups:
                g["lr"] = lr
            use_gan = disc is not None and step >= cfg.gan_start_step
            loss, parts, d_loss = stream_clip(net, model, clip, rt, cfg, disc, use_gan)
            if not guard.skip_step(loss, step, rt, save, ck / "latest", logger):   # non-finite: no update, the step counts
                opt.zero_grad(set_to_none=True)
                scaler.scale(loss).backward()
                scaler.unscale_(opt)
                torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
                scaler.step(opt)
                if d_loss is not None:      # the discriminator's own step, on the frames it judged (generator detached)
                    opt_d.zero_grad(set_to_none=True)
                    scaler.scale(d_loss).backward()
                    if rt.ddp:              # not DDP-wrapped (it runs twice per frame): average its gradients by hand
                        for p in disc.parameters():
                            torch.distributed.all_reduce(p.grad)
                            p.grad /= rt.world
                    scaler.step(opt_d)
                    parts["d_loss"] = d_loss.detach()
                scaler.update()
            step += 1
            seen += len(idx)
            prof_step()
            if step % cfg.log_every == 0 or step == total:
                dt, t_last = time.time() - t_last, time.time()
                parts = {k: float(v) for k, v in parts.items()}
                logger.info(f"step {step:6d} | {clip['scale']}x | loss {loss.item():.4f} | "
                            f"{' | '.join(f'{k} {v:.4f}' for k, v in parts.items())} | lr {lr:.2e} | {seen / dt:.1f} clips/s")
                metrics.write(step, "train", loss=loss.item(), lr=lr, clips_per_s=seen / dt, frames_per_s=seen * cfg.clip_len / dt, **parts)
                seen = 0
            score = None
            if rt.master and (step % cfg.eval_every == 0 or step == total):
                res = evaluate(model, val_set, rt.device)
                model.train()
                score = res["score"]
                best = max(best, score)
                metrics.write(step, "val", **{f"{k}_{m}_psnr": res[k][m]["psnr"] for k in res if k.endswith("x") for m in res[k] if m != "frames"})
                logger.info(f"step {step:6d} | val " + " | ".join(f"{k} PSNR {res[k]['prism']['psnr']:.2f} dB (bilinear "
                                                                  f"{res[k]['bilinear']['psnr']:.2f})" for k in sorted(res) if k.endswith("x")))
            if score is not None or step == total or (save_every and step % save_every == 0):
                save(score)
            if stop.checkpoint_and_leave(step, step - start_step, args.stop_after, save, ck / "latest", logger, rt):
                return
    if rt.master:
        res = evaluate(model, val_set, rt.device, out / "eval")
        logger.info(table(res) + f"\n\nimages: {out / 'eval'}")
    runtime.teardown(rt)


if __name__ == "__main__":
    main()
