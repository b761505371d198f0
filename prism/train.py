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
int8 for Arm GPUs: quantization-aware fine-tuning of one scale (prism/quantize.py), then export.py --export-type
qat_int8; --evaluate of the QAT checkpoint scores it as real int8:
    python prism/train.py --qat --finetune runs/prism/ckpt/best --out runs/prism_qat

Loss per frame: L1 to the target + w_temporal * temporal consistency (the frame-to-frame change, after
warping the previous frame with the motion vectors, must match the target's) + w_gan * adversarial, from a
multi-scale PatchGAN for which only real video frames (is_real) count as "real": synthetic targets are never
shown to it as real, so the GAN pulls towards the look of real footage. When the data has both real and
synthetic clips, each batch is half of each.
"""

import argparse
import functools
import math
import sys
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Literal

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch
import torch.nn.functional as F
from torch.nn.parallel import DistributedDataParallel as DDP

from common import ckpt, log, runtime
from prism.dataset import DataError, PrismDataset, batches, collate
from prism.evaluate import evaluate, evaluate_checkpoint, table
from prism.model import MODELS, MultiScaleDiscriminator, Prism
from prism.quantize import Int8Prism, QATPrism, one_scale

SHIPPED = Path(__file__).resolve().parent / "weights" / "prism_fast"  # trained by this project, see its README

ModelName = Literal[tuple(MODELS)]  # an architecture of prism/model.py: fast, balanced, quality, tiny


@dataclass
class Config:
    model: ModelName = "fast"  # network size: fast ~590K params, balanced ~2.5M, quality ~6.4M (tiny: tests)
    clip_len: int = 4  # frames per clip; the GRU state streams through them (detached every frame)
    crop: int = 64  # training crop in input pixels (multiple of 8; 0 = whole frames)
    batch_size: int = 8  # clips per optimizer step (all of one scale)
    max_steps: int = 1000  # optimizer steps to train
    lr: float = 2e-3  # AdamW peak learning rate (linear warm-up, then cosine to min_lr)
    min_lr: float = 1e-5  # learning rate at the end of the cosine
    warmup_steps: int = 50  # steps of linear learning-rate warm-up
    weight_decay: float = 1e-4  # AdamW weight decay of the network
    grad_clip: float = 1.0  # clip the network's gradient norm to this
    w_l1: float = 1.0  # L1 loss weight
    w_temporal: float = 0.5  # temporal consistency loss weight
    w_gan: float = 0.01  # adversarial loss weight (0 = no discriminator)
    gan_start_step: int = 200  # step from which the adversarial loss is on
    d_lr: float = 2e-4  # discriminator Adam learning rate
    d_scales: int = 3  # image scales of the multi-scale PatchGAN discriminator
    ndf: int = 32  # discriminator base width (channels of its first layer)
    val_sequences: int = 4  # held-out sequences (half 2x, half 3x on the built-in data)
    eval_every: int = 250  # steps between held-out evaluations (each one checkpoints)
    log_every: int = 25  # steps between train log lines and metrics.jsonl rows
    save_every: int = 0  # also keep ckpt/step_N every N steps (0: only latest and best)
    synth: tuple = (24, 16, 128)  # built-in data: sequences, frames, input size
    qat_scale: int = 2  # --qat: the scale to fine-tune and export (a QAT graph holds one)
    qat_steps: int = 300  # --qat: steps of int8 fake-quant fine-tuning (replaces max_steps)
    qat_lr: float = 1e-4  # --qat: AdamW lr, cosine to qat_lr / 100, no warm-up (replaces lr)


PRESETS = {  # --preset: the training budget (tiny: tests); the architecture is --model
    "tiny": Config(
        model="tiny",
        clip_len=2,
        crop=32,
        batch_size=2,
        max_steps=8,
        lr=1e-3,
        warmup_steps=2,
        gan_start_step=2,
        val_sequences=2,
        eval_every=4,
        log_every=2,
        d_scales=2,
        ndf=8,
        synth=(6, 4, 32),
        qat_steps=4,
        qat_lr=3e-4,
    ),
    "cpu": Config(),
    "gpu": Config(
        batch_size=16,
        crop=128,
        clip_len=6,
        max_steps=20000,
        lr=1e-3,
        gan_start_step=2000,
        eval_every=1000,
        log_every=100,
        save_every=5000,
        synth=(200, 32, 256),
    ),
}


def build_parser():
    """The command line: the common flags, this script's own, then one flag per Config field."""
    p = argparse.ArgumentParser(
        description=__doc__.split("\n")[0],
        epilog=__doc__.split("\n", 1)[1],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    runtime.add_common_args(p, PRESETS)
    p.add_argument(
        "--as-real",
        action="store_true",
        help="built-in data: mark the synthetic sequences real (exercises the GAN path)",
    )
    p.add_argument("--evaluate", action="store_true", help="only evaluate --model-path on the held-out sequences")
    shipped = f"--evaluate's checkpoint (default: the shipped weights, {SHIPPED.relative_to(SHIPPED.parents[2])})"
    p.add_argument("--model-path", metavar="CKPT", default=str(SHIPPED), help=shipped)
    qat = "quantization-aware training: fine-tune --finetune's fp32 weights at qat_scale under Arm's int8 fake-quant"
    p.add_argument("--qat", action="store_true", help=qat + " for qat_steps at qat_lr (no GAN); resumable")
    p.add_argument("--finetune", metavar="CKPT", help="start from this checkpoint's network weights (fp32)")
    p.add_argument(
        "--stop-after",
        type=int,
        metavar="N",
        help="save and exit after N steps in this session (continue with --resume)",
    )
    runtime.add_config_flags(p, PRESETS["cpu"])
    return p


def configure(args):
    """-> (config, qat): the --preset's Config (the QAT schedule under --qat or a resumed QAT run: qat_steps at
    qat_lr, cosine to qat_lr / 100, no warm-up, no GAN), then the flags given on top."""
    resumed = ckpt.peek_meta(Path(args.out) / "ckpt" / "latest") if args.resume else {}
    qat = args.qat or resumed.get("model_type") == "qat_int8"
    base = replace(PRESETS[args.preset])
    if qat:
        base = replace(base, max_steps=base.qat_steps, lr=base.qat_lr, min_lr=base.qat_lr / 100, warmup_steps=0)
        base.w_gan = 0.0
    return runtime.override(base, args), qat


def resolve_data(args, cfg, rt, logger):
    """--data, or the built-in sequences rendered into OUT/data on first use (rank 0 renders, all wait); under
    --evaluate from seed + 10000, rooms that no run of the default --seed trains on (the shipped weights' too)."""
    if args.data:
        return Path(args.data)
    root = Path(args.out) / "data"
    if rt.master and not (root / "index.json").exists():
        from prism.synth import make_dataset

        n, frames, size = cfg.synth
        logger.info(f"rendering built-in sequences into {root} ({n} x {frames} frames, {size}² input) ...")
        t0 = time.time()
        seed = args.seed + 10000 if args.evaluate else args.seed
        make_dataset(root, sequences=n, frames=frames, size=size, seed=seed, as_real=args.as_real)
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


def build_model(cfg, rt, args, qat, frame, logger):
    """Prism of cfg.model (--finetune's weights when given; under --qat its QATPrism at qat_scale, in the shape
    of a training batch: batch_size clips of crop x crop, or of whole `frame`s) on the device, and its PatchGAN
    discriminator when w_gan > 0 (else None)."""
    model = Prism(MODELS[cfg.model])
    if args.finetune:
        weights, _, meta = ckpt.load(args.finetune, with_state=False)
        if meta.get("model_type", "fp32") != "fp32" or meta.get("config", {}).get("model") != cfg.model:
            runtime.fail(f"{args.finetune}: --finetune takes an fp32 Prism-{cfg.model} checkpoint (see --model)")
        ckpt.load_into(model, weights, prefix="model")
        logger.info(f"fine-tuning from {args.finetune}")
    elif qat and not args.resume:
        runtime.fail("--qat fine-tunes trained fp32 weights: give them with --finetune CKPT")
    if qat:
        h, w = (cfg.crop, cfg.crop) if cfg.crop else frame
        model = QATPrism(model, cfg.qat_scale, (cfg.batch_size, h, w))
        logger.info(f"QAT at {cfg.qat_scale}x: Arm's int8 fake-quant, a graph of {cfg.batch_size} clips of {h}x{w}")
    disc = MultiScaleDiscriminator(cfg.d_scales, ndf=cfg.ndf).to(rt.device) if cfg.w_gan > 0 else None
    return model.to(rt.device), disc


def resume(ck, model, disc, opt, opt_d, scaler, rt, logger):
    """--resume: load OUT/ckpt/latest (when there is one) into the models and optimizers -> (step, best)."""
    with ckpt.resuming(ck, "a Prism checkpoint of this preset", rt.device, logger.info) as latest:
        if not latest:
            return 0, -math.inf
        weights, state, meta = latest
        if isinstance(model, QATPrism):
            model.load(weights)  # the graph's state and the fp32 Prism around it
        else:
            ckpt.load_into(model, weights, prefix="model")
        opt.load_state_dict(state.get("optimizer", state.get("opt")))  # "opt": checkpoints written before
        if disc:
            ckpt.load_into(disc, weights, prefix="disc")
            opt_d.load_state_dict(state.get("optimizer_d", state.get("opt_d")))
        scaler.load_state_dict(state["scaler"])
        ckpt.set_rng_state(state["rng"])
        return meta["step"], meta.get("best", meta.get("best_score", -math.inf))


def save(ck, args, cfg, guard, rt, model, disc, opt, opt_d, scaler, step, best, score=None):
    """Write OUT/ckpt/step_N (and latest; best too when this validation score is the best so far), rank 0 only."""
    if not rt.master:
        return
    qat = isinstance(model, QATPrism)
    weights = model.checkpoint_weights() if qat else {f"model.{k}": v for k, v in model.state_dict().items()}
    weights.update({f"disc.{k}": v for k, v in disc.state_dict().items()} if disc else {})
    state = {"optimizer": opt.state_dict(), "scaler": scaler.state_dict(), "rng": ckpt.rng_state()}
    state.update({"optimizer_d": opt_d.state_dict()} if disc else {})
    meta = {
        "step": step,
        "preset": args.preset,
        "config": asdict(cfg),
        "model": asdict(MODELS[cfg.model]),
        "model_type": "qat_int8" if qat else "fp32",
        **({"qat": {"scale": model.scale, "shape": list(model.batch_shape)}} if qat else {}),
        "best": best,  # best validation score so far: mean PSNR gain over bilinear (dB), higher is better
        "val": score,
        "nan_skipped": guard.skipped,
    }
    is_best = score is not None and score >= best
    ckpt.save_step(ck, step, weights, state, meta, best=is_best, keep_every=cfg.save_every)


def step_discriminator(d_loss, disc, opt_d, scaler, rt):
    """The discriminator's optimizer step (its gradients averaged by hand under DDP) -> its loss, detached."""
    opt_d.zero_grad(set_to_none=True)
    scaler.scale(d_loss).backward()
    if rt.ddp:  # not DDP-wrapped (it runs twice per frame): average its gradients by hand
        for p in disc.parameters():
            torch.distributed.all_reduce(p.grad)
            p.grad /= rt.world
    scaler.step(opt_d)
    return d_loss.detach()


def get_batch(train_set, step, cfg, seed, rt):
    """This rank's share of the step's clips (all of one scale), on the device."""
    idx, epoch = batches(train_set, cfg.batch_size * rt.world, step, seed)
    train_set.set_epoch(epoch)
    clip = collate([train_set[i] for i in idx[rt.rank :: rt.world]])
    return {k: v.to(rt.device) if torch.is_tensor(v) else v for k, v in clip.items()}


def get_lr(step, cfg):
    """Linear warm-up to cfg.lr, then cosine decay to cfg.min_lr at max_steps."""
    lr = cfg.lr * min(1, (step + 1) / max(1, cfg.warmup_steps))
    return cfg.min_lr + (lr - cfg.min_lr) * 0.5 * (1 + math.cos(math.pi * step / cfg.max_steps))


def log_train(step, clip, loss, parts, lr, seen, dt, cfg, metrics, logger):
    """The train log line and metrics.jsonl row of the last log_every steps (`seen` clips in `dt` seconds)."""
    parts = {k: float(v) for k, v in parts.items()}
    logger.info(
        f"step {step:6d} | {clip['scale']}x | loss {loss.item():.4f} | "
        f"{' | '.join(f'{k} {v:.4f}' for k, v in parts.items())} | lr {lr:.2e} | {seen / dt:.1f} clips/s"
    )
    metrics.write(
        step, "train", loss=loss.item(), lr=lr, clips_per_s=seen / dt, frames_per_s=seen * cfg.clip_len / dt, **parts
    )


def validate(model, val_set, step, rt, metrics, logger):
    """Stream the held-out sequences, log PSNR per scale and method -> score (mean PSNR gain over bilinear)."""
    res = evaluate(model, val_set, rt.device)
    model.train()
    psnrs = {f"{k}_{m}_psnr": res[k][m]["psnr"] for k in res if k.endswith("x") for m in res[k] if m != "frames"}
    metrics.write(step, "val", **psnrs)
    logger.info(
        f"step {step:6d} | val "
        + " | ".join(
            f"{k} PSNR {res[k]['prism']['psnr']:.2f} dB (bilinear {res[k]['bilinear']['psnr']:.2f})"
            for k in sorted(res)
            if k.endswith("x")
        )
    )
    return res["score"]


def describe(cfg, model, disc, train_set, val_set, rt):
    """The run's one-line summary: parameters, data, steps, device."""
    real = sum(s["is_real"] for s in train_set.sequences)
    return (
        f"Prism-{cfg.model}: {sum(p.numel() for p in model.parameters()):,} params"
        f"{f', discriminator {sum(p.numel() for p in disc.parameters()):,}' if disc else ''} | {len(train_set)} "
        "train clips "
        f"({real} of {len(train_set.sequences)} sequences real), {len(val_set.sequences)} held-out sequences | "
        f"{cfg.max_steps} steps | device {rt.device}"
    )


@runtime.user_errors(DataError, ckpt.CheckpointError)
def main():
    # --- setup: flags -> Config, device / DDP / seed / AMP, OUT/output.log and OUT/metrics.jsonl
    args = build_parser().parse_args()
    cfg, qat = configure(args)
    rt = runtime.setup(args)
    out, ck = Path(args.out), Path(args.out) / "ckpt"
    logger = log.setup(out, args.log_level, rt.master)
    metrics = log.Metrics(out, enabled=rt.master)

    # --- data: clips of the training sequences; whole held-out sequences for validation
    root = resolve_data(args, cfg, rt, logger)
    data = PrismDataset(root, clip_len=cfg.clip_len, crop=cfg.crop or None, seed=args.seed)
    train_set, val_set = data.split(cfg.val_sequences, seed=42)
    if qat:  # a QAT graph is one scale
        train_set, val_set = one_scale(train_set, cfg.qat_scale), one_scale(val_set, cfg.qat_scale)
    if args.evaluate:  # evaluation only: prism/evaluate.py
        return logger.info(table(evaluate_checkpoint(args.model_path, val_set, rt.device, out / "eval")))

    # --- model: Prism (+ PatchGAN), AdamW (+ Adam), fp16 loss scaling; --resume continues bit-exactly
    model, disc = build_model(cfg, rt, args, qat, train_set.sequences[0]["size"], logger)
    net = DDP(model, find_unused_parameters=True) if rt.ddp else model  # a batch is one scale: the other head idles
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    opt_d = torch.optim.Adam(disc.parameters(), lr=cfg.d_lr, betas=(0.5, 0.999)) if disc else None
    scaler = torch.amp.GradScaler(enabled=rt.amp_dtype == torch.float16)
    if rt.master:
        ckpt.check_room(ck, model, disc)
    step, best = 0, -math.inf
    if args.resume:
        step, best = resume(ck, model, disc, opt, opt_d, scaler, rt, logger)
        metrics.resume(step)
    logger.info(describe(cfg, model, disc, train_set, val_set, rt))

    # --- loop: stream each clip frame by frame, step; log, validate and checkpoint on schedule
    stop, guard = runtime.StopSignal(args.stop_after), runtime.NanGuard(args.nan_policy)
    checkpoint = functools.partial(save, ck, args, cfg, guard, rt, model, disc, opt, opt_d, scaler)
    model.train()
    start_step, t_last, seen = step, time.time(), 0
    with runtime.profiler(args.profile if rt.master else None, out) as prof_step:
        while step < cfg.max_steps:
            clip = get_batch(train_set, step, cfg, args.seed, rt)
            lr = get_lr(step, cfg)
            for g in opt.param_groups:
                g["lr"] = lr
            use_gan = disc is not None and step >= cfg.gan_start_step
            loss, parts, d_loss = stream_clip(net, model, clip, rt, cfg, disc, use_gan)
            if guard.skip_step(loss, step, rt, logger):  # non-finite loss: no update, the step still counts
                if guard.must_stop:  # --nan-policy stop, or too many in a row: keep the last good state, exit 2
                    checkpoint(step, best)
                    runtime.fail(guard.reason(ck / "latest"))
            else:
                opt.zero_grad(set_to_none=True)
                scaler.scale(loss).backward()
                scaler.unscale_(opt)
                torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
                scaler.step(opt)
                if d_loss is not None:  # the discriminator's own step, on the frames it judged (generator detached)
                    parts["d_loss"] = step_discriminator(d_loss, disc, opt_d, scaler, rt)
                scaler.update()
            step += 1
            seen += cfg.batch_size * rt.world
            prof_step()
            if step % cfg.log_every == 0 or step == cfg.max_steps:
                dt, t_last = time.time() - t_last, time.time()
                log_train(step, clip, loss, parts, lr, seen, dt, cfg, metrics, logger)
                seen = 0
            score = None
            if rt.master and (step % cfg.eval_every == 0 or step == cfg.max_steps):
                score = validate(model, val_set, step, rt, metrics, logger)
                best = max(best, score)
            if score is not None or step == cfg.max_steps or (cfg.save_every and step % cfg.save_every == 0):
                checkpoint(step, best, score)
            if stop.requested(step - start_step):  # SIGINT/SIGTERM or --stop-after: save, leave the loop
                checkpoint(step, best)
                break
    if stop.asked:  # saved above: say where, exit 130/0 on a signal
        return stop.leave(step, ck / "latest", logger, rt)
    runtime.same_weights([model], rt, logger)  # DDP: one model on every rank, or an error

    # --- report: the held-out table and comparison grids in OUT/eval
    if rt.master:
        res = evaluate(Int8Prism(model) if qat else model, val_set, rt.device, out / "eval")
        kind = f"int8 (the QAT graph converted), {cfg.qat_scale}x" if qat else "fp32"
        logger.info(f"held-out, {kind}:\n" + table(res) + f"\n\nimages: {out / 'eval'}")
    runtime.teardown(rt)


if __name__ == "__main__":
    main()
