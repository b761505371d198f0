"""Train, resume, fine-tune and evaluate Neural Super Sampling (NSS) on Arm's safetensors layout.

Built-in data (generated into OUT/data on first use), CPU preset, then evaluate vs baselines:
    python nss/train.py --out runs/nss
Your own data (Arm layout; DIR/train and DIR/test, or one folder of captures plus --eval-data):
    python nss/train.py --data DIR --out runs/nss --preset paper
The shipped weights (nss/weights/nss_v1_high, how they were trained is in its README), on the built-in
held-out set, on Arm-format scenes unlike it (python nss/scenes.py --out runs/scenes), or fine-tuned on your data:
    python nss/train.py --evaluate --out runs/shipped
    python nss/train.py --evaluate --eval-data runs/scenes/text.safetensors --out runs/shipped_text
    python nss/train.py --out runs/ft --finetune nss/weights/nss_v1_high --data DIR
Arm's Model Gym checkpoints (.pt, e.g. nss_v1_high_fp32.pt) work wherever a checkpoint does (nss/checkpoints.py):
    python nss/train.py --evaluate --model-path nss_v1_high_fp32.pt --out runs/arm
Resume / evaluate a run of your own:
    python nss/train.py --out runs/nss --resume
    python nss/train.py --evaluate --model-path runs/nss/ckpt/best --out runs/nss
int8 (Arm's scheme, common/quant.py): quantization-aware fine-tuning of an fp32 checkpoint, then evaluate
    python nss/train.py --qat --finetune runs/nss/ckpt/best --out runs/nss_qat [--data DIR]
    python nss/train.py --evaluate --model-path runs/nss_qat/ckpt/latest --model-type qat_int8 --out runs/nss_qat
    python nss/train.py --evaluate --model-path runs/nss/ckpt/best --model-type ptq_int8 --out runs/nss_ptq
Two processes (DDP, gloo on CPU; rank 0 logs and saves):
    torchrun --standalone --nproc_per_node=2 nss/train.py --out runs/nss
"""
import argparse
import json
import math
import sys
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch
import torch.nn.functional as F
from torch.nn.parallel import DistributedDataParallel as DDP

from common import ckpt, log, quant, runtime
from nss.checkpoints import SHIPPED, for_quality, load as load_weights
from nss.dataset import DataError, NSSWindows
from nss.evaluate import evaluate, table, tonemap
from nss.loss import LossConfig, backward_warp, load_lpips, loss_v1
from nss.model import NSS, NSSConfig
from nss.quantize import MODEL_TYPES, checkpoint_meta, inference_model, qat_net


@dataclass
class Config:
    max_steps: int = 1200          # optimizer steps
    batch_size: int = 4            # windows per step (per process)
    recurrent_samples: int = 6     # frames per window (truncated BPTT length)
    crop: int = 48                 # low-res crop of each window (high-res = crop * scale)
    lr: float = 2e-3               # AdamW peak learning rate
    min_lr: float = 1e-5           # cosine floor
    warmup: float = 0.05           # fraction of steps of linear warm-up
    weight_decay: float = 0.01
    grad_clip: float = 1.0
    gt_history_chance: float = 0.3 # GT-history augmentation probability per window
    loss: str = "l1"               # l1: per-frame L1 + temporal-change L1; v1: Arm's loss_v1 (nss/loss.py)
    tonemapper: str = "reinhard"
    exposure: float = None         # log-exposure override (Arm's dataset.exposure); None = per-frame file value
    eval_every: int = 200          # validation (and best checkpoint) every N steps
    save_every: int = 0            # keep ckpt/step_XXXXXXX every N steps (0 = only latest/best)
    log_every: int = 20
    qat_steps: int = 300           # --qat: steps of fake-quant fine-tuning (Arm: 2 epochs)
    qat_lr: float = 1e-4           # --qat: AdamW lr, cosine to qat_lr / 100 (Arm: 1e-4 -> 1e-6)
    # built-in data (when --data is absent): (sequences, frames, high-res size) for train and held-out
    synth_train: tuple = (16, 24, 192)
    synth_test: tuple = (4, 32, 256)


PRESETS = {
    "tiny": Config(max_steps=30, batch_size=2, recurrent_samples=3, crop=16, lr=3e-3, eval_every=15, log_every=5,
                   qat_steps=20, qat_lr=3e-4, synth_train=(2, 8, 64), synth_test=(1, 6, 64)),
    "cpu": Config(),
    # the shipped weights (nss/weights/): the cpu recipe for longer, on 4x the built-in training scenes
    "long": Config(max_steps=3000, eval_every=250, save_every=1000, synth_train=(64, 24, 192)),
    "paper": Config(max_steps=60000, batch_size=8, recurrent_samples=16, crop=128, lr=1e-3, min_lr=1e-6, loss="v1",
                    qat_steps=8000, eval_every=2000, save_every=5000, synth_train=(300, 100, 256), synth_test=(20, 100, 512)),
}


def build_parser():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0], epilog=__doc__.split("\n", 1)[1],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    runtime.add_common_args(p, PRESETS)
    p.add_argument("--batch-size", type=int, help="windows per optimizer step, per process")
    p.add_argument("--recurrent-samples", type=int, help="frames per training window (>= 2); windows never cross a camera cut")
    p.add_argument("--crop", type=int, help="low-res crop size of training windows (0 = whole frames)")
    p.add_argument("--lr", type=float, help="peak learning rate (AdamW, linear warm-up then cosine)")
    p.add_argument("--exposure", type=float, help="log-exposure override for every frame (default: the file's per-frame value)")
    p.add_argument("--tonemapper", choices=["reinhard", "karis", "log_norm", "aces"], help="tonemapper for loss and metrics")
    p.add_argument("--eval-every", type=int, help="validate and update ckpt/best every N steps")
    p.add_argument("--eval-data", help="held-out captures for evaluation (default: DATA/test)")
    p.add_argument("--eval-frames", type=int, default=None, help="evaluate at most N frames per capture (default: all)")
    p.add_argument("--finetune", metavar="CKPT", help="start from these weights (fresh optimizer and step count): a "
                   "checkpoint directory or an Arm Model Gym .pt (e.g. nss_v1_high_fp32.pt)")
    p.add_argument("--no-evaluate", action="store_true", help="skip the final evaluation against the baselines")
    p.add_argument("--evaluate", action="store_true", help="only evaluate --model-path on the held-out data, no training")
    p.add_argument("--model-path", metavar="CKPT", help="checkpoint for --evaluate: a directory or an Arm Model Gym "
                   ".pt (default: the shipped weights, nss/weights/nss_v1_high)")
    p.add_argument("--model-type", choices=MODEL_TYPES, help="--evaluate as: fp32, ptq_int8 (int8 calibrated on "
                   "training frames) or qat_int8 (a --qat checkpoint converted to int8); default: the checkpoint's")
    p.add_argument("--qat", action="store_true", help="quantization-aware training (int8 fake-quant, Arm's scheme) "
                   "from the fp32 weights of --finetune CKPT; preset's qat_steps and qat_lr; resumable")
    p.add_argument("--calibration-frames", type=int, default=16, help="ptq_int8: real frames to calibrate on")
    p.add_argument("--quality", choices=["high", "mid", "low"], help="Arm's quality mode: high (network at low "
                   "res, 36-channel KPN, 9 taps), mid/low (network at half low res, 16-channel KPN, 4 taps; low reads "
                   "history bilinearly). Default: high for training, the checkpoint's own for --evaluate and --resume; "
                   "a high checkpoint prunes into mid/low (--finetune, --evaluate)")
    p.add_argument("--loss", choices=["v1", "l1"], help="v1: Arm's loss_v1 (temporal/spatial blend, regularisers, "
                   "flicker and change-prediction terms); l1: per-frame L1 + 0.1 L1 of the KPN result + 0.5 L1 of "
                   "the temporal change (what this project used before porting Arm's)")
    p.add_argument("--lpips-weights", metavar="FILE", help="LPIPS (AlexNet) weights for the spatial terms of Arm's "
                   "loss (nss/loss.py load_lpips says how to make the file); default: LPIPS off, nothing is downloaded")
    p.add_argument("--stop-after", type=int, metavar="N", help="save and exit after N steps in this session (time-boxed jobs; continue with --resume)")
    return p


def lr_at(step, cfg):
    warm = max(1, int(cfg.warmup * cfg.max_steps))
    if step < warm:
        return cfg.lr * (step + 1) / warm
    t = (step - warm) / max(1, cfg.max_steps - warm)
    return cfg.min_lr + 0.5 * (cfg.lr - cfg.min_lr) * (1 + math.cos(math.pi * t))


def resolve_data(args, cfg, rt, logger):
    """-> (train dir, eval dir or None). Without --data, generate the built-in set into OUT/data once."""
    if args.data:
        root = Path(args.data)
        if not root.exists():
            raise DataError(f"{root}: --data folder does not exist")
        train = root / "train" if (root / "train").is_dir() else root
        test = Path(args.eval_data) if args.eval_data else next((root / d for d in ("test", "val", "validation") if (root / d).is_dir()), None)
        return train, test
    root = Path(args.out) / "data"
    if rt.master and not (root / "done").exists():
        from nss.synth import make_dataset
        logger.info(f"generating built-in data into {root} (train {cfg.synth_train}, held-out {cfg.synth_test}) ...")
        t0 = time.time()
        n, f, s = cfg.synth_train
        make_dataset(root / "train", n, f, (s, s), seed=args.seed)
        n, f, s = cfg.synth_test
        make_dataset(root / "test", n, f, (s, s), seed=args.seed + 10_000)   # unseen seeds => unseen scenes
        (root / "done").write_text("ok\n")
        logger.info(f"data ready in {time.time() - t0:.0f}s")
    if rt.ddp:
        torch.distributed.barrier()
    return root / "train", Path(args.eval_data) if args.eval_data else root / "test"


def window_loss(model, net, batch, cfg, g, rt, lpips=None):
    """Run the recurrent model over (N, T, ...) windows with history carried frame to frame (BPTT over the
    whole window) and score it with Arm's loss_v1 (nss/loss.py). GT-history augmentation as Arm's: for some
    windows the first frame's tonemapped target becomes its history."""
    n, T = batch["colour"].shape[:2]
    keep = torch.rand(n, generator=g) < cfg.gt_history_chance
    frame = lambda t: {k: v[:, t] for k, v in batch.items()}
    state = model.init_state(frame(0))
    outs, ys = {k: [] for k in ("output", "out_filtered", "temporal_params", "disocclusion_mask", "reset")}, []
    for t in range(T):
        f = frame(t)
        e = f["exposure"]
        y = tonemap(f["ground_truth"] * e, cfg.tonemapper)
        if t == 0 and keep.any():
            state = model.seed_state(state, y, keep.to(rt.device))
        out, state = model(f, state, net=net, autocast=rt.autocast())
        outs["output"].append(tonemap(out["output_linear"] * e, cfg.tonemapper))
        outs["out_filtered"].append(tonemap(out["out_filtered_linear"] * e, cfg.tonemapper))
        outs["temporal_params"].append(out["temporal_params"])
        outs["disocclusion_mask"].append(out["disocclusion_mask"])
        outs["reset"].append(out["reset"].view(n) > 0.5)
        ys.append(y)
    outs = {k: torch.stack(v, 1) for k, v in outs.items()}
    y = torch.stack(ys, 1)
    if cfg.loss == "l1":   # per-frame L1 of output and KPN result + L1 of the temporal change (PSNR-oriented)
        warp = lambda img: backward_warp(img.flatten(0, 1), batch["motion"][:, 1:].flatten(0, 1))
        change = lambda v: v[:, 1:].flatten(0, 1) - warp(v[:, :-1])
        return (F.l1_loss(outs["output"], y) + 0.1 * F.l1_loss(outs["out_filtered"], y)
                + 0.5 * F.l1_loss(change(outs["output"]), change(y)) * (T - 1) / T)
    total, _ = loss_v1(outs, y, batch["motion"], LossConfig(), lpips)
    return total


@runtime.user_errors(DataError, ckpt.CheckpointError)
def main():
    args = build_parser().parse_args()
    ck = Path(args.out) / "ckpt"
    resumed = checkpoint_meta(ck / "latest") if args.resume else {}   # the run being resumed
    qat = args.qat or resumed.get("model_type") == "qat_int8"
    base = PRESETS[args.preset]
    if qat:   # Arm's QAT schedule: a short fine-tune at a low lr, cosine to lr/100, no warm-up
        base = replace(base, max_steps=base.qat_steps, lr=base.qat_lr, min_lr=base.qat_lr / 100, warmup=0.0)
    cfg = runtime.override(base, args)
    if args.crop == 0:
        cfg.crop = None
    rt = runtime.setup(args)
    out = Path(args.out)
    logger = log.setup(out, args.log_level, rt.master)
    metrics = log.Metrics(out, enabled=rt.master)
    quality = args.quality or resumed.get("model", {}).get("quality") or "high"   # resuming: the run's own mode
    model = NSS(NSSConfig(quality=quality))
    try:
        if args.evaluate:
            args.model_path = args.model_path or str(SHIPPED)   # default: the shipped weights
            if args.eval_data and args.model_type != "ptq_int8":   # no training frames needed: generate nothing
                train_dir, test = None, Path(args.eval_data)
            else:
                train_dir, test = resolve_data(args, cfg, rt, logger)
            weights, meta = load_weights(args.model_path)     # a checkpoint directory or an Arm .pt
            model, model_type = inference_model(weights, meta, args.model_type, train_dir, args.calibration_frames,
                                                source=args.model_path, quality=args.quality)
            model.to(rt.device)
            res = evaluate(model, test, rt.device, cfg.tonemapper, cfg.exposure, out / "eval", args.eval_frames)
            res["model_type"] = model_type
            (out / "eval" / "results.json").write_text(json.dumps(res, indent=2))
            logger.info(table(res, f"NSS ({model_type}) vs baselines (held-out, tonemapped)") +
                        f"\n\ncomparison grid: {out / 'eval' / 'comparison.png'}")
            return
        train_dir, test_dir = resolve_data(args, cfg, rt, logger)
        train_set = NSSWindows(train_dir, cfg.recurrent_samples, cfg.crop, augment=True, exposure=cfg.exposure)
        if args.finetune:
            weights, meta = load_weights(args.finetune)       # a checkpoint directory or an Arm .pt
            if meta.get("model_type", "fp32") != "fp32":
                runtime.fail(f"{args.finetune}: --finetune takes an fp32 checkpoint (this one is {meta['model_type']})")
            weights, _ = for_quality(weights, meta, model.cfg.quality)   # high -> mid/low prunes, as Arm does
            model.net.load_state_dict(weights)
            logger.info(f"fine-tuning from {args.finetune} ({model.cfg.quality} quality)")
        elif qat and not args.resume:
            runtime.fail("--qat fine-tunes trained fp32 weights: give them with --finetune CKPT")
    except (DataError, ckpt.CheckpointError) as e:
        runtime.fail(str(e))
    except (RuntimeError, KeyError) as e:
        runtime.fail(f"{args.finetune or args.model_path}: not an NSS checkpoint ({str(e).splitlines()[0]})")
    if qat:
        model.net = qat_net(model.net)
        logger.info("QAT: int8 fake-quant on weights (per-channel symmetric) and activations (per-tensor affine); "
                    "sigmoid outputs fixed at scale 1/254, zero point -127")
    model.to(rt.device)
    if rt.master:
        ckpt.check_room(ck, model.net)
    logger.info(f"NSS{' QAT' if qat else ''}: {sum(p.numel() for p in model.net.parameters()):,} params | "
                f"{len(train_set)} windows of {cfg.recurrent_samples} frames from {len(train_set.files)} captures | "
                f"device {rt.device} x{rt.world}")
    try:
        lpips = load_lpips(args.lpips_weights, rt.device) if args.lpips_weights else None
    except (OSError, ValueError) as e:
        runtime.fail(f"--lpips-weights: {str(e).splitlines()[0]}")
    opt = torch.optim.AdamW(model.net.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    scaler = torch.amp.GradScaler(enabled=rt.amp_dtype == torch.float16)
    step, best = 0, -math.inf
    if args.resume:
        with ckpt.resuming(ck, "an NSS checkpoint", rt.device, logger.info) as latest:
            if latest:
                weights, state, meta = latest
                ckpt.load_into(model.net, weights)
                opt.load_state_dict(state["optimizer"])
                scaler.load_state_dict(state["scaler"])
                ckpt.set_rng_state(state["rng"])
                step, best = meta["step"], meta.get("best_psnr", -math.inf)
        metrics.resume(step)
    net = DDP(model.net) if rt.ddp else model.net
    stop, guard = runtime.StopSignal(), runtime.NanGuard(args.nan_policy)
    save_every = args.save_every if args.save_every is not None else cfg.save_every

    def save(psnr_val=None):
        if not rt.master:
            return
        meta = {"step": step, "model_type": "qat_int8" if qat else "fp32", "preset": args.preset, "config": asdict(cfg), "model": asdict(model.cfg),
                "best_psnr": best, "val_psnr": psnr_val, "nan_skipped": guard.skipped}
        state = {"optimizer": opt.state_dict(), "scaler": scaler.state_dict(), "rng": ckpt.rng_state()}
        ckpt.save_step(ck, step, model.net.state_dict(), state, meta, best=psnr_val is not None and psnr_val >= best,
                       keep_every=save_every)

    model.train()
    start_step, t_last, tokens = step, time.time(), 0
    with runtime.profiler(args.profile and rt.master, out) as prof_step:
        while step < cfg.max_steps:
            g = torch.Generator().manual_seed(args.seed * 1_000_003 + step * 7919 + rt.rank)
            t_data = time.time()
            batch = {k: v.to(rt.device) for k, v in train_set.batch(cfg.batch_size, g).items()}
            t_data = time.time() - t_data
            for group in opt.param_groups:
                group["lr"] = lr_at(step, cfg)
            loss = window_loss(model, net, batch, cfg, g, rt, lpips)
            opt.zero_grad(set_to_none=True)
            if not guard.skip_step(loss, step, rt, save, ck / "latest", logger):   # non-finite: no update, the step counts
                scaler.scale(loss).backward()
                scaler.unscale_(opt)
                torch.nn.utils.clip_grad_norm_(model.net.parameters(), cfg.grad_clip)
                scaler.step(opt)
                scaler.update()
            step += 1
            prof_step()
            tokens += cfg.batch_size * cfg.recurrent_samples * rt.world
            if step % cfg.log_every == 0 or step == cfg.max_steps:
                dt = time.time() - t_last
                logger.info(f"step {step:6d} | loss {loss.item():.4f} | lr {lr_at(step - 1, cfg):.2e} | "
                            f"{tokens / dt:.1f} frames/s | data {t_data * 1000:.0f} ms")
                metrics.write(step, "train", loss=loss.item(), lr=lr_at(step - 1, cfg), frames_per_s=tokens / dt)
                t_last, tokens = time.time(), 0
            val = None
            if test_dir is not None and rt.master and (step % cfg.eval_every == 0 or step == cfg.max_steps):
                files = sorted(Path(test_dir).rglob("*.safetensors"))[:1]
                val = evaluate(model, files[0], rt.device, cfg.tonemapper, cfg.exposure, methods=["nss"],
                               max_frames=16, progress=False)["nss"]["psnr"] if files else None
                model.train()
                if val is not None:
                    metrics.write(step, "val", psnr=val)
                    logger.info(f"step {step:6d} | val PSNR {val:.2f} dB")
                    best = max(best, val)
            if val is not None or step == cfg.max_steps or (save_every and step % save_every == 0):
                save(psnr_val=val)
            if stop.checkpoint_and_leave(step, step - start_step, args.stop_after, save, ck / "latest", logger, rt):
                return
    if rt.master and not args.no_evaluate and test_dir is not None:
        if qat:   # what ships: the QAT graph converted to real int8
            model.net = quant.convert(model.net).to(rt.device)
        res = evaluate(model, test_dir, rt.device, cfg.tonemapper, cfg.exposure, out / "eval", args.eval_frames)
        res["model_type"] = "qat_int8" if qat else "fp32"
        (out / "eval" / "results.json").write_text(json.dumps(res, indent=2))
        metrics.write(step, "eval", **{f"{m}_{k}": v for m, r in res.items() if isinstance(r, dict) for k, v in r.items()})
        logger.info(table(res, f"NSS ({res['model_type']}) vs baselines (held-out, tonemapped)") +
                    f"\n\ncomparison grid: {out / 'eval' / 'comparison.png'}")
    runtime.teardown(rt)


if __name__ == "__main__":
    main()
