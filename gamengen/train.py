"""Train GameNGen, stage by stage: autoencoder, encode, diffusion (the game engine), decoder fine-tune.

    python gamengen/collect.py --policy random --steps 20000 --out runs/gg/doom              # (or agent.py --record)
    python gamengen/train.py ae --data runs/gg/doom --out runs/gg/ae    # = autoencoder.py train
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

--qat --finetune CKPT fine-tunes a trained denoiser for int8 (gamengen/quantize.py): the guided denoise step under
Arm's int8 fake-quant, distilled from CKPT's fp32 step for qat_steps at qat_lr; validation plays the fake-quant
step, and export.py --export-type qat_int8 lowers its int8 conversion:
    python gamengen/train.py diffusion --qat --finetune gamengen/weights/denoiser --data LATENTS --out runs/gg_qat
"""

import argparse
import copy
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
from gamengen.dataset import DataError, LatentSequences
from gamengen.model import MODELS, Denoiser, DenoiseStep, sample, training_loss
from gamengen.quantize import QATStep, distill_loss

AE_STAGES = {"ae": "train", "encode": "encode", "decoder-finetune": "decoder-finetune"}


ModelName = Literal[tuple(MODELS)]  # a denoiser architecture of gamengen/model.py: tiny, cpu, paper


@dataclass
class Config:
    model: ModelName = "cpu"  # denoiser size and context length N (gamengen/model.py MODELS)
    batch_size: int = 32  # windows per optimizer step (over all processes)
    max_steps: int = 5000  # optimizer steps to train
    lr: float = 5e-4  # AdamW peak learning rate (linear warm-up, then cosine to min_lr)
    min_lr: float = 1e-5  # learning rate at the end of the cosine
    warmup_steps: int = 200  # steps of linear learning-rate warm-up
    weight_decay: float = 0.0  # AdamW weight decay
    grad_clip: float = 1.0  # clip the gradient norm to this
    ema: float = 0.999  # EMA decay of the weights used for sampling (evaluation, play, export)
    eval_every: int = 500  # steps between held-out evaluations (each one checkpoints)
    eval_windows: int = 64  # held-out windows sampled at each evaluation
    log_every: int = 50  # steps between train log lines and metrics.jsonl rows
    save_every: int = 0  # also keep ckpt/step_N every N steps (0: only latest and best)
    qat_steps: int = 300  # --qat: steps of int8 fake-quant distillation (replaces max_steps)
    qat_lr: float = 5e-5  # --qat: AdamW lr, cosine to qat_lr / 100, no warm-up (replaces lr)
    qat_ddim_steps: int = 4  # --qat: the DDIM grid (steps per played frame) whose steps t -> s are trained
    qat_guidance: float = 1.0  # --qat: guidance weight baked into the step (play and export use the same)


PRESETS = {  # --preset: the training budget (tiny: tests); the architecture is --model
    "tiny": Config(
        model="tiny",
        batch_size=4,
        max_steps=6,
        lr=1e-3,
        warmup_steps=1,
        ema=0.5,
        eval_every=3,
        eval_windows=4,
        log_every=2,
        qat_steps=4,
        qat_lr=1e-4,
    ),
    "cpu": Config(),
    "paper": Config(
        model="paper",
        batch_size=128,
        max_steps=700_000,
        lr=5e-5,
        warmup_steps=500,
        ema=0.9999,
        eval_every=5000,
        eval_windows=512,
        log_every=100,
        save_every=50_000,
    ),
}


def build_parser():
    """The command line: the common flags, this script's own, then one flag per Config field."""
    p = argparse.ArgumentParser(
        description=__doc__.split("\n")[0],
        epilog=__doc__.split("\n", 1)[1],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "stage",
        choices=["diffusion", *AE_STAGES],
        help="what to train (ae, encode, decoder-finetune: see autoencoder.py)",
    )
    runtime.add_common_args(p, PRESETS)
    p.add_argument(
        "--stop-after",
        type=int,
        metavar="N",
        help="save and exit after N steps in this session (continue with --resume)",
    )
    qat = "quantization-aware training: distil --finetune's fp32 denoise step into Arm's int8 fake-quant step"
    p.add_argument("--qat", action="store_true", help=qat + " for qat_steps at qat_lr (no EMA); resumable")
    p.add_argument("--finetune", metavar="CKPT", help="start from this diffusion checkpoint's EMA weights")
    runtime.add_config_flags(p, PRESETS["cpu"])
    return p


def configure(args):
    """-> (config, qat, resumed): the --preset's Config (under --qat or a resumed QAT run the QAT schedule: qat_steps
    at qat_lr, cosine to qat_lr / 100, no warm-up), then the flags given on top; the meta of the checkpoint --resume
    continues ({} when none)."""
    base = replace(PRESETS[args.preset])
    resumed = ckpt.peek_meta(Path(args.out) / "ckpt" / "latest") if args.resume else {}
    qat = args.qat or resumed.get("model_type") == "qat_int8"
    if qat:
        base = replace(base, max_steps=base.qat_steps, lr=base.qat_lr, min_lr=base.qat_lr / 100, warmup_steps=0)
    return runtime.override(base, args), qat, resumed


def build_model(cfg, qat, resumed, args, train_set, rt, logger):
    """-> (model, ema, teacher, mcfg): a new denoiser and its EMA (teacher None), --finetune's weights in both;
    under --qat the QATStep of --finetune's weights (ema None) and the frozen fp32 step it distils. resumed: the
    meta of OUT/ckpt/latest under --resume ({} otherwise)."""
    mcfg = model_config(cfg, train_set)
    if resumed.get("model"):  # the architecture the run started with (a --finetune'd model's own, e.g. its guidance)
        mcfg = denoiser_config(mcfg, resumed["model"])
    if args.finetune:
        finetuned, meta = load_denoiser(args.finetune)
        if meta.get("model_type") == "qat_int8":
            runtime.fail(f"--finetune takes an fp32 diffusion checkpoint; {args.finetune} is a QAT one")
        shape = lambda c: (c.latent_channels, tuple(c.latent_size))  # noqa: E731
        if shape(finetuned.cfg) != shape(mcfg):
            runtime.fail(f"--finetune {args.finetune}: latents {shape(finetuned.cfg)}, --data has {shape(mcfg)}")
        mcfg = finetuned.cfg
    elif qat and not args.resume:
        runtime.fail("--qat fine-tunes a trained denoiser: give it with --finetune CKPT")
    if qat:
        source = finetuned if args.finetune else Denoiser(mcfg)  # resumed: load() puts the saved state in
        model = QATStep(source, cfg.qat_guidance, cfg.batch_size // rt.world)
        teacher = DenoiseStep(copy.deepcopy(source).requires_grad_(False), cfg.qat_guidance)
        logger.info(
            f"QAT: Arm's int8 fake-quant of the denoise step (w {cfg.qat_guidance}), a graph of batch "
            f"{model.batch}, distilled from the fp32 step on the {cfg.qat_ddim_steps}-step DDIM grid"
        )
        return model.to(rt.device), None, teacher.to(rt.device), mcfg
    model = (finetuned if args.finetune else Denoiser(mcfg)).to(rt.device)
    return model, copy.deepcopy(model).requires_grad_(False), None, mcfg


def load_latents(data, context):
    """The train and held-out windows of a latents folder (from `train.py encode`); one-line error if unusable."""
    if not data:
        runtime.fail(
            "diffusion needs --data LATENTS (from `gamengen/train.py encode`); `bash run.sh demo gamengen` "
            "builds it all"
        )
    try:
        return LatentSequences(data, "train", context), LatentSequences(data, "heldout", context)
    except (OSError, ValueError, KeyError) as e:
        runtime.fail(f"--data {data}: {e}")


def model_config(cfg, train_set):
    """The denoiser architecture of cfg.model, sized to the autoencoder's latents (kept in meta["model"])."""
    C, h, w = train_set.shards[0]["latents"].shape[1:]
    return replace(MODELS[cfg.model], latent_channels=int(C), latent_size=(int(h), int(w)), patch=max(1, int(h) // 16))


def batch_of(ds, idx, device):
    """The windows idx of ds, stacked and on the device."""
    items = [ds[int(i)] for i in idx]
    b = {k: torch.stack([it[k] for it in items]).to(device) for k in ("target", "context", "actions", "valid")}
    return b


@torch.no_grad()
def quick_eval(model, ds, n, device, seed=0):
    """Latent MSE of 4-step guided samples for n fixed held-out windows, and copy-last-frame's (last context
    latent, or zeros at an episode start) on the same windows."""
    idx = torch.linspace(0, len(ds) - 1, min(n, len(ds))).long()
    g, training = torch.Generator().manual_seed(seed), model.training
    model.eval()  # QAT: observers hold still while it plays
    mse = base = 0.0
    for k in range(0, len(idx), 32):
        b = batch_of(ds, idx[k : k + 32], device)
        z = sample(model, b["context"], b["actions"], generator=g, step=model if isinstance(model, QATStep) else None)
        mse += F.mse_loss(z, b["target"], reduction="sum").item()
        base += F.mse_loss(b["context"][:, -1], b["target"], reduction="sum").item()
    n = len(idx) * b["target"][0].numel()
    model.train(training)
    return mse / n, base / n


def denoiser_config(base, fields):
    """`base` with the fields of a checkpoint's meta["model"] (JSON lists back to tuples)."""
    return replace(base, **{k: tuple(v) if isinstance(v, list) else v for k, v in fields.items()})


def denoiser_from(weights, meta, ema=True):
    """A diffusion checkpoint's (weights, meta) -> Denoiser with the EMA (or raw) weights, in eval mode."""
    model = Denoiser(denoiser_config(MODELS[meta["config"]["model"]], meta["model"]))
    prefix = "ema." if ema and meta.get("model_type") != "qat_int8" else "model."  # QAT keeps no EMA: its fp32 view
    ckpt.load_into(model, {k[len(prefix) :]: v for k, v in weights.items() if k.startswith(prefix)})
    return model.eval()


def load_denoiser(path, ema=True, map_location="cpu"):
    """A diffusion checkpoint directory -> (Denoiser with the EMA (or raw) weights, meta)."""
    weights, _, meta = ckpt.load(path, map_location=map_location, with_state=False)
    return denoiser_from(weights, meta, ema), meta


def resume(ck, model, ema, teacher, opt, scaler, rt, logger):
    """--resume: load OUT/ckpt/latest (when there is one) into the models and optimizer -> (step, best)."""
    with ckpt.resuming(ck, "a GameNGen diffusion checkpoint of this preset", rt.device, logger.info) as latest:
        if not latest:
            return 0, math.inf
        weights, state, meta = latest
        if ema is None:  # QAT: the graph's state, the fp32 view and the teacher
            model.load(weights)
            ckpt.load_into(teacher.model, weights, prefix="teacher")
        else:
            ckpt.load_into(model, weights, prefix="model")
            ckpt.load_into(ema, weights, prefix="ema")
        opt.load_state_dict(state.get("optimizer", state.get("opt")))  # "opt": checkpoints written before
        scaler.load_state_dict(state["scaler"])
        return meta["step"], meta.get("best", meta.get("best_score", math.inf))


def save(ck, args, cfg, mcfg, guard, rt, model, ema, teacher, opt, scaler, step, best, score=None):
    """Write OUT/ckpt/step_N (and latest; best too when this validation score is the best so far), rank 0 only."""
    if not rt.master:
        return
    if ema is None:  # QAT: model.* (fp32 view) + qat.* (the graph) + teacher.*
        weights = model.checkpoint_weights() | {f"teacher.{k}": v for k, v in teacher.model.state_dict().items()}
    else:
        weights = {f"model.{k}": v for k, v in model.state_dict().items()}
        weights.update({f"ema.{k}": v for k, v in ema.state_dict().items()})
    state = {"optimizer": opt.state_dict(), "scaler": scaler.state_dict()}
    meta = {
        "step": step,
        "preset": args.preset,
        "config": asdict(cfg),
        "model": asdict(mcfg),
        "data": str(args.data),
        "best": best,  # best validation score so far: held-out latent MSE of the EMA model, LOWER is better
        "val": score,
        "nan_skipped": guard.skipped,
        "model_type": "fp32" if ema is not None else "qat_int8",
    }
    if ema is None:
        meta["qat"] = {"guidance": model.guidance, "steps": cfg.qat_ddim_steps, "batch": model.batch}
    is_best = score is not None and score <= best
    ckpt.save_step(ck, step, weights, state, meta, best=is_best, keep_every=cfg.save_every)


def batch_loss(net, teacher, b, cfg, g):
    """v-prediction training_loss; under QAT (a teacher) the int8 step's distance to the fp32 step's result."""
    if teacher is not None:
        return distill_loss(net, teacher, b, cfg.qat_ddim_steps, g)
    return training_loss(net, b["target"], b["context"], b["actions"], b["valid"], generator=g)


def get_lr(step, cfg):
    """Linear warm-up to cfg.lr, then cosine decay to cfg.min_lr at max_steps."""
    lr = cfg.lr * min(1, (step + 1) / max(1, cfg.warmup_steps))
    return cfg.min_lr + (lr - cfg.min_lr) * 0.5 * (1 + math.cos(math.pi * step / cfg.max_steps))


@torch.no_grad()
def update_ema(ema, model, step, decay):
    """Move the EMA weights towards the model's (the decay warms up, as in common EMA practice)."""
    decay = min(decay, (1 + step) / (10 + step))
    for pe, pm in zip(ema.parameters(), model.parameters()):
        pe.lerp_(pm, 1 - decay)


def log_train(step, loss, lr, seen, dt, t_data, t_step, metrics, logger):
    """The train log line and metrics.jsonl row of the last log_every steps (`seen` windows in `dt` seconds)."""
    logger.info(
        f"step {step:6d} | loss {loss.item():.4f} | lr {lr:.2e} | {seen / dt:.0f} windows/s | "
        f"data {100 * t_data / (t_data + t_step):.1f}% of step time"
    )
    metrics.write(
        step, "train", loss=loss.item(), lr=lr, data_share=t_data / (t_data + t_step), windows_per_s=seen / dt
    )


def validate(ema, val_set, step, cfg, rt, metrics, logger):
    """Sample next latents of the fixed held-out windows with the EMA model (QAT: the fake-quant step) -> score
    (latent MSE, lower is better)."""
    mse, base = quick_eval(ema, val_set, cfg.eval_windows, rt.device)
    metrics.write(step, "val", latent_mse=mse, copy_last_mse=base)
    how = f"int8 fake-quant step, w={ema.guidance}" if isinstance(ema, QATStep) else "EMA, w=1.5"
    logger.info(f"step {step:6d} | val latent MSE {mse:.4f} (copy-last-frame {base:.4f}) | {how}, 4 DDIM steps")
    return mse


def describe(cfg, mcfg, model, train_set, val_set, rt):
    """The run's one-line summary: parameters, data, steps, device."""
    return (
        f"GameNGen denoiser ({cfg.model}, context {mcfg.context}): {sum(p.numel() for p in model.parameters()):,} "
        "params | "
        f"{len(train_set)} train windows ({len(set(train_set.ep_sorted[train_set.targets].tolist()))} episodes), "
        f"{len(val_set)} held-out | "
        f"{cfg.max_steps} steps, batch {cfg.batch_size} | device {rt.device}"
    )


def autoencoder_stage():
    """`train.py ae|encode|decoder-finetune ...`: gamengen/autoencoder.py's train|encode|decoder-finetune."""
    from gamengen import autoencoder

    sys.argv = [sys.argv[0], AE_STAGES[sys.argv[1]], *sys.argv[2:]]
    return autoencoder.main()


@runtime.user_errors(DataError, ckpt.CheckpointError)
def main():
    if len(sys.argv) > 1 and sys.argv[1] in AE_STAGES:  # ae, encode, decoder-finetune: autoencoder.py's CLI
        return autoencoder_stage()

    # --- setup: flags -> Config, device / DDP / seed / AMP, OUT/output.log and OUT/metrics.jsonl
    args = build_parser().parse_args()
    cfg, qat, resumed = configure(args)
    rt = runtime.setup(args)
    out, ck = Path(args.out), Path(args.out) / "ckpt"
    logger = log.setup(out, args.log_level, rt.master)
    metrics = log.Metrics(out, enabled=rt.master)

    # --- data: (target, N context latents, N actions) windows of the train and held-out episodes
    train_set, val_set = load_latents(args.data, MODELS[cfg.model].context)

    # --- model: the denoiser and its EMA (QAT: the fake-quant step and its fp32 teacher), AdamW, fp16 loss
    # scaling; --resume continues bit-exactly
    model, ema, teacher, mcfg = build_model(cfg, qat, resumed, args, train_set, rt, logger)
    net = DDP(model) if rt.ddp else model
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    scaler = torch.amp.GradScaler(enabled=rt.amp_dtype == torch.float16)
    if rt.master:
        ckpt.check_room(ck, model, ema, factor=6 if qat else 4)
    step, best = 0, math.inf
    if args.resume:
        step, best = resume(ck, model, ema, teacher, opt, scaler, rt, logger)
        metrics.resume(step)
    logger.info(describe(cfg, mcfg, model, train_set, val_set, rt))

    # --- loop: batch and noise from (seed, step); step, EMA; log, validate and checkpoint on schedule
    stop, guard = runtime.StopSignal(args.stop_after), runtime.NanGuard(args.nan_policy)
    checkpoint = functools.partial(save, ck, args, cfg, mcfg, guard, rt, model, ema, teacher, opt, scaler)
    start_step, t_last, t_data, t_step, seen = step, time.time(), 0.0, 0.0, 0
    model.train()
    with runtime.profiler(args.profile if rt.master else None, out) as prof_step:
        while step < cfg.max_steps:
            t0 = time.perf_counter()
            # batch and noise depend on (seed, step) only
            g = torch.Generator().manual_seed(args.seed * 1_000_003 + step)
            idx = torch.randint(len(train_set), (cfg.batch_size,), generator=g)[rt.rank :: rt.world]
            b = batch_of(train_set, idx, rt.device)
            t1 = time.perf_counter()
            lr = get_lr(step, cfg)
            for group in opt.param_groups:
                group["lr"] = lr
            with rt.autocast():
                loss = batch_loss(net, teacher, b, cfg, g)
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
                scaler.update()
                if ema is not None:
                    update_ema(ema, model, step, cfg.ema)
            step += 1
            prof_step()
            seen += len(idx) * rt.world
            t_data, t_step = t_data + t1 - t0, t_step + time.perf_counter() - t1
            if step % cfg.log_every == 0 or step == cfg.max_steps:
                dt, t_last = time.time() - t_last, time.time()
                log_train(step, loss, lr, seen, dt, t_data, t_step, metrics, logger)
                seen, t_data, t_step = 0, 0.0, 0.0
            score = None
            if rt.master and (step % cfg.eval_every == 0 or step == cfg.max_steps):
                score = validate(ema or model, val_set, step, cfg, rt, metrics, logger)
                best = min(best, score)
            if score is not None or step == cfg.max_steps or (cfg.save_every and step % cfg.save_every == 0):
                checkpoint(step, best, score)
            if stop.requested(step - start_step):  # SIGINT/SIGTERM or --stop-after: save, leave the loop
                checkpoint(step, best)
                break
    if stop.asked:  # saved above: say where, exit 130/0 on a signal
        return stop.leave(step, ck / "latest", logger, rt)
    runtime.same_weights([model, ema], rt, logger)  # DDP: one model on every rank, or an error

    # --- report: where the best checkpoint is and how to evaluate it
    if rt.master:
        logger.info(
            f"done: {ck / 'best'} (val latent MSE {best:.4f}); evaluate with gamengen/evaluate.py --model-path "
            f"{ck / 'best'} --data {args.data}"
        )
    runtime.teardown(rt)


if __name__ == "__main__":
    main()
