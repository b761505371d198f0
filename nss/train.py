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
from typing import Literal

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch
import torch.nn.functional as F
from torch.nn.parallel import DistributedDataParallel as DDP

from common import ckpt, log, runtime
from nss.checkpoints import for_quality
from nss.checkpoints import load as load_weights
from nss.dataset import DataError, NSSWindows
from nss.evaluate import evaluate, evaluate_checkpoint, table, tonemap
from nss.loss import LossConfig, backward_warp, load_lpips, loss_v1
from nss.model import NSS, NSSConfig
from nss.quantize import MODEL_TYPES, qat_net


@dataclass
class Config:
    max_steps: int = 1200  # optimizer steps
    batch_size: int = 4  # windows per optimizer step, per process
    recurrent_samples: int = 6  # frames per training window (>= 2; BPTT length); windows never cross a camera cut
    crop: int = 48  # low-res crop of training windows (high res = crop * scale; 0 = whole frames)
    lr: float = 2e-3  # AdamW peak learning rate (linear warm-up, then cosine to min_lr)
    min_lr: float = 1e-5  # cosine floor
    warmup: float = 0.05  # fraction of steps of linear warm-up
    weight_decay: float = 0.01  # AdamW weight decay
    grad_clip: float = 1.0  # gradient-norm clip
    gt_history_chance: float = 0.3  # GT-history augmentation probability per window
    # v1: Arm's loss_v1 (temporal/spatial blend, regularisers, flicker and change-prediction terms; nss/loss.py);
    # l1: per-frame L1 + 0.1 L1 of the KPN result + 0.5 L1 of the temporal change
    loss: Literal["l1", "v1"] = "l1"  # training loss: l1 (PSNR-oriented) or v1 (Arm's loss_v1)
    tonemapper: Literal["reinhard", "karis", "log_norm", "aces"] = "reinhard"  # tonemapper of loss and metrics
    exposure: float = None  # log-exposure override for every frame (default: the file's per-frame value)
    eval_every: int = 200  # validate and update ckpt/best every N steps
    save_every: int = 0  # keep ckpt/step_XXXXXXX every N steps (0 = only latest/best)
    log_every: int = 20  # a log line (and a metrics row) every N steps
    qat_steps: int = 300  # --qat: steps of fake-quant fine-tuning (Arm: 2 epochs)
    qat_lr: float = 1e-4  # --qat: AdamW lr, cosine to qat_lr / 100 (Arm: 1e-4 -> 1e-6)
    synth_train: tuple = (16, 24, 192)  # built-in training data (no --data): sequences, frames, high-res size
    synth_test: tuple = (4, 32, 256)  # built-in held-out data: sequences, frames, high-res size (unseen seeds)


PRESETS = {
    "tiny": Config(
        max_steps=30,
        batch_size=2,
        recurrent_samples=3,
        crop=16,
        lr=3e-3,
        eval_every=15,
        log_every=5,
        qat_steps=20,
        qat_lr=3e-4,
        synth_train=(2, 8, 64),
        synth_test=(1, 6, 64),
    ),
    "cpu": Config(),
    # the shipped weights (nss/weights/): the cpu recipe for longer, on 4x the built-in training scenes
    "long": Config(max_steps=3000, eval_every=250, save_every=1000, synth_train=(64, 24, 192)),
    "paper": Config(
        max_steps=60000,
        batch_size=8,
        recurrent_samples=16,
        crop=128,
        lr=1e-3,
        min_lr=1e-6,
        loss="v1",
        qat_steps=8000,
        eval_every=2000,
        save_every=5000,
        synth_train=(300, 100, 256),
        synth_test=(20, 100, 512),
    ),
}


def build_parser():
    p = argparse.ArgumentParser(
        description=__doc__.split("\n")[0],
        epilog=__doc__.split("\n", 1)[1],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    runtime.add_common_args(p, PRESETS)
    p.add_argument("--eval-data", help="held-out captures for evaluation (default: DATA/test)")
    p.add_argument("--eval-frames", type=int, default=None, help="evaluate at most N frames per capture (default: all)")
    p.add_argument(
        "--finetune",
        metavar="CKPT",
        help="start from these weights (fresh optimizer and step count): a "
        "checkpoint directory or an Arm Model Gym .pt (e.g. nss_v1_high_fp32.pt)",
    )
    p.add_argument("--no-evaluate", action="store_true", help="skip the final evaluation against the baselines")
    p.add_argument(
        "--evaluate", action="store_true", help="only evaluate --model-path on the held-out data, no training"
    )
    p.add_argument(
        "--model-path",
        metavar="CKPT",
        help="checkpoint for --evaluate: a directory or an Arm Model Gym "
        ".pt (default: the shipped weights, nss/weights/nss_v1_high)",
    )
    p.add_argument(
        "--model-type",
        choices=MODEL_TYPES,
        help="--evaluate as: fp32, ptq_int8 (int8 calibrated on "
        "training frames) or qat_int8 (a --qat checkpoint converted to int8); default: the checkpoint's",
    )
    p.add_argument(
        "--qat",
        action="store_true",
        help="quantization-aware training (int8 fake-quant, Arm's scheme) "
        "from the fp32 weights of --finetune CKPT; preset's qat_steps and qat_lr; resumable",
    )
    p.add_argument("--calibration-frames", type=int, default=16, help="ptq_int8: real frames to calibrate on")
    p.add_argument(
        "--quality",
        choices=["high", "mid", "low"],
        help="Arm's quality mode: high (network at low "
        "res, 36-channel KPN, 9 taps), mid/low (network at half low res, 16-channel KPN, 4 taps; low reads "
        "history bilinearly). Default: high for training, the checkpoint's own for --evaluate and --resume; "
        "a high checkpoint prunes into mid/low (--finetune, --evaluate)",
    )
    p.add_argument(
        "--lpips-weights",
        metavar="FILE",
        help="LPIPS (AlexNet) weights for the spatial terms of Arm's "
        "loss (nss/loss.py load_lpips says how to make the file); default: LPIPS off, nothing is downloaded",
    )
    p.add_argument(
        "--stop-after",
        type=int,
        metavar="N",
        help="save and exit after N steps in this session (time-boxed jobs; continue with --resume)",
    )
    runtime.add_config_flags(p, PRESETS["cpu"])
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
        test = (
            Path(args.eval_data)
            if args.eval_data
            else next((root / d for d in ("test", "val", "validation") if (root / d).is_dir()), None)
        )
        return train, test
    root = Path(args.out) / "data"
    if rt.master and not (root / "done").exists():
        from nss.synth import make_dataset

        logger.info(f"generating built-in data into {root} (train {cfg.synth_train}, held-out {cfg.synth_test}) ...")
        t0 = time.time()
        n, f, s = cfg.synth_train
        make_dataset(root / "train", n, f, (s, s), seed=args.seed)
        n, f, s = cfg.synth_test
        make_dataset(root / "test", n, f, (s, s), seed=args.seed + 10_000)  # unseen seeds => unseen scenes
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
    if cfg.loss == "l1":  # per-frame L1 of output and KPN result + L1 of the temporal change (PSNR-oriented)
        warp = lambda img: backward_warp(img.flatten(0, 1), batch["motion"][:, 1:].flatten(0, 1))
        change = lambda v: v[:, 1:].flatten(0, 1) - warp(v[:, :-1])
        return (
            F.l1_loss(outs["output"], y)
            + 0.1 * F.l1_loss(outs["out_filtered"], y)
            + 0.5 * F.l1_loss(change(outs["output"]), change(y)) * (T - 1) / T
        )
    total, _ = loss_v1(outs, y, batch["motion"], LossConfig(), lpips)
    return total


def configure(args):
    """-> (config, qat, quality): the preset (Arm's QAT schedule under --qat or a resumed QAT run), then every flag
    given; the quality mode from --quality, else the resumed run's own, else high."""
    resumed = ckpt.peek_meta(Path(args.out) / "ckpt" / "latest") if args.resume else {}  # {} for Arm .pt
    qat = args.qat or resumed.get("model_type") == "qat_int8"
    base = replace(PRESETS[args.preset])
    if qat:  # Arm's QAT schedule: a short fine-tune at a low lr, cosine to lr/100, no warm-up
        base = replace(base, max_steps=base.qat_steps, lr=base.qat_lr, min_lr=base.qat_lr / 100, warmup=0.0)
    cfg = runtime.override(base, args)
    if cfg.crop == 0:
        cfg.crop = None
    return cfg, qat, args.quality or resumed.get("model", {}).get("quality") or "high"


def build_model(args, quality, qat, logger):
    """NSS at `quality`: fresh, or --finetune's fp32 weights (an Arm .pt too; a high checkpoint prunes into mid/low
    as Arm does), wrapped in int8 fake-quant for --qat."""
    model = NSS(NSSConfig(quality=quality))
    if args.finetune:
        try:
            weights, meta = load_weights(args.finetune)  # a checkpoint directory or an Arm .pt
            if meta.get("model_type", "fp32") != "fp32":
                runtime.fail(f"{args.finetune}: --finetune takes an fp32 checkpoint (this one is {meta['model_type']})")
            weights, _ = for_quality(weights, meta, model.cfg.quality)
            model.net.load_state_dict(weights)
        except (RuntimeError, KeyError) as e:
            runtime.fail(f"{args.finetune}: not an NSS checkpoint ({str(e).splitlines()[0]})")
        logger.info(f"fine-tuning from {args.finetune} ({model.cfg.quality} quality)")
    elif qat and not args.resume:
        runtime.fail("--qat fine-tunes trained fp32 weights: give them with --finetune CKPT")
    if qat:
        model.net = qat_net(model.net)
        logger.info(
            "QAT: int8 fake-quant on weights (per-channel symmetric) and activations (per-tensor affine); "
            "sigmoid outputs fixed at scale 1/254, zero point -127"
        )
    return model


def lpips_network(path, device):
    """--lpips-weights FILE -> the LPIPS network of Arm's loss, or None (LPIPS off: nothing is downloaded)."""
    try:
        return load_lpips(path, device) if path else None
    except (OSError, ValueError) as e:
        runtime.fail(f"--lpips-weights: {str(e).splitlines()[0]}")


def resume(ck, model, opt, scaler, metrics, rt, logger):
    """--resume: weights, optimizer, scaler and RNG from OUT/ckpt/latest -> (step, best); (0, -inf) if none yet.
    Metrics rows the interrupted run logged after that step are dropped (they are redone)."""
    step, best = 0, -math.inf
    with ckpt.resuming(ck, "an NSS checkpoint", rt.device, logger.info) as latest:
        if latest:
            weights, state, meta = latest
            ckpt.load_into(model.net, weights)
            opt.load_state_dict(state["optimizer"])
            scaler.load_state_dict(state["scaler"])
            ckpt.set_rng_state(state["rng"])
            step, best = meta["step"], meta.get("best", meta.get("best_psnr", -math.inf))  # best_psnr: older runs
    metrics.resume(step)
    return step, best


def validate(model, test_dir, cfg, rt):
    """NSS PSNR on the first 16 frames of the first held-out capture (picks ckpt/best); None without one."""
    files = sorted(Path(test_dir).rglob("*.safetensors"))[:1] if test_dir is not None and rt.master else []
    if not files:
        return None
    res = evaluate(
        model, files[0], rt.device, cfg.tonemapper, cfg.exposure, methods=["nss"], max_frames=16, progress=False
    )
    model.train()
    return res["nss"]["psnr"]


def report(model, test_dir, cfg, args, qat, rt, out, metrics, step, logger):
    """The trained model (QAT: converted to real int8, what ships) vs the baselines on the held-out set."""
    if qat:
        from common.quant import convert

        model.net = convert(model.net).to(rt.device)
    res = evaluate(model, test_dir, rt.device, cfg.tonemapper, cfg.exposure, out / "eval", args.eval_frames)
    res["model_type"] = "qat_int8" if qat else "fp32"
    (out / "eval" / "results.json").write_text(json.dumps(res, indent=2))
    metrics.write(step, "eval", **{f"{m}_{k}": v for m, r in res.items() if isinstance(r, dict) for k, v in r.items()})
    logger.info(
        table(res, f"NSS ({res['model_type']}) vs baselines (held-out, tonemapped)")
        + f"\n\ncomparison grid: {out / 'eval' / 'comparison.png'}"
    )


@runtime.user_errors(DataError, ckpt.CheckpointError)
def main():
    # --- setup: preset + flags, device / DDP, logs -------------------------------------------------------------------
    args = build_parser().parse_args()
    cfg, qat, quality = configure(args)
    rt = runtime.setup(args)
    out, ck = Path(args.out), Path(args.out) / "ckpt"
    logger, metrics = log.setup(out, args.log_level, rt.master), log.Metrics(out, enabled=rt.master)
    if args.evaluate:  # evaluation only: nss/evaluate.py
        return evaluate_checkpoint(args, cfg, rt, out, logger, resolve_data)

    # --- data: Arm-format captures (built-in ones generated on first use) -> windows of recurrent_samples frames -
    train_dir, test_dir = resolve_data(args, cfg, rt, logger)
    train_set = NSSWindows(train_dir, cfg.recurrent_samples, cfg.crop, augment=True, exposure=cfg.exposure)

    # --- model, optimizer, resume --------------------------------------------------------------------------------
    model = build_model(args, quality, qat, logger).to(rt.device)
    if rt.master:
        ckpt.check_room(ck, model.net)
    logger.info(
        f"NSS{' QAT' if qat else ''}: {sum(p.numel() for p in model.net.parameters()):,} params | "
        f"{len(train_set)} windows of {cfg.recurrent_samples} frames from {len(train_set.files)} captures | "
        f"device {rt.device} x{rt.world}"
    )
    lpips = lpips_network(args.lpips_weights, rt.device)
    opt = torch.optim.AdamW(model.net.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    scaler = torch.amp.GradScaler(enabled=rt.amp_dtype == torch.float16)
    step, best = resume(ck, model, opt, scaler, metrics, rt, logger) if args.resume else (0, -math.inf)
    net = DDP(model.net) if rt.ddp else model.net
    stop, guard = runtime.StopSignal(args.stop_after), runtime.NanGuard(args.nan_policy)
    run = dict(model_type=["fp32", "qat_int8"][qat], preset=args.preset, config=asdict(cfg), model=asdict(model.cfg))

    def save(val=None):  # rank 0: OUT/ckpt/latest, best when val is the best so far, step_N every cfg.save_every
        if rt.master:
            meta = dict(run, step=step, best=best, val=val, nan_skipped=guard.skipped)
            state = {"optimizer": opt.state_dict(), "scaler": scaler.state_dict(), "rng": ckpt.rng_state()}
            is_best = val is not None and val >= best
            ckpt.save_step(ck, step, model.net.state_dict(), state, meta, best=is_best, keep_every=cfg.save_every)

    # --- loop: a window batch, BPTT through the recurrent model, AdamW; validate, checkpoint, leave on request ---
    model.train()
    start_step, t_last, frames = step, time.time(), 0
    with runtime.profiler(args.profile if rt.master else None, out) as prof_step:
        while step < cfg.max_steps:
            g = torch.Generator().manual_seed(args.seed * 1_000_003 + step * 7919 + rt.rank)
            t_data = time.time()
            batch = {k: v.to(rt.device) for k, v in train_set.batch(cfg.batch_size, g).items()}
            t_data = time.time() - t_data
            for group in opt.param_groups:
                group["lr"] = lr_at(step, cfg)
            loss = window_loss(model, net, batch, cfg, g, rt, lpips)
            opt.zero_grad(set_to_none=True)
            if guard.skip_step(loss, step, rt, logger):  # non-finite: no update, the step counts
                if guard.must_stop:  # --nan-policy stop, or too many in a row: exit 2, last good state kept
                    save()
                    runtime.fail(guard.reason(ck / "latest"))
            else:
                scaler.scale(loss).backward()
                scaler.unscale_(opt)
                torch.nn.utils.clip_grad_norm_(model.net.parameters(), cfg.grad_clip)
                scaler.step(opt)
                scaler.update()
            step += 1
            prof_step()
            frames += cfg.batch_size * cfg.recurrent_samples * rt.world
            if step % cfg.log_every == 0 or step == cfg.max_steps:
                fps, lr = frames / (time.time() - t_last), lr_at(step - 1, cfg)
                logger.info(
                    f"step {step:6d} | loss {loss.item():.4f} | lr {lr:.2e} | {fps:.1f} frames/s | "
                    f"data {t_data * 1000:.0f} ms"
                )
                metrics.write(step, "train", loss=loss.item(), lr=lr, frames_per_s=fps)
                t_last, frames = time.time(), 0
            val = validate(model, test_dir, cfg, rt) if step % cfg.eval_every == 0 or step == cfg.max_steps else None
            if val is not None:
                metrics.write(step, "val", psnr=val)
                logger.info(f"step {step:6d} | val PSNR {val:.2f} dB")
                best = max(best, val)
            if val is not None or step == cfg.max_steps or (cfg.save_every and step % cfg.save_every == 0):
                save(val)
            if stop.requested(step - start_step):  # SIGINT/SIGTERM or --stop-after: save, leave the loop
                save()
                break
    if stop.asked:  # saved above: say where, exit 130/0 on a signal
        return stop.leave(step, ck / "latest", logger, rt)
    runtime.same_weights([model], rt, logger)  # DDP: one model on every rank, or an error

    # --- report: the trained model vs bilinear, bicubic and TAA on the held-out captures ---------------------------
    if rt.master and not args.no_evaluate and test_dir is not None:
        report(model, test_dir, cfg, args, qat, rt, out, metrics, step, logger)
    runtime.teardown(rt)


if __name__ == "__main__":
    main()
