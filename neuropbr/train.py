"""Train NeuroPBR: three rendered views of a material -> albedo, roughness, metallic and normal maps.

Built-in data (procedural materials rendered with a GGX BRDF into OUT/data on first use), CPU preset:
    python neuropbr/train.py --out runs/neuropbr
Your data in NeuroPBR's layout (input/{clean,dirty}/sample_XXXX/{0,1,2}.png, input/render_metadata.json,
output/<material>/{albedo,roughness,metallic,normal}.png), a preset of the reference:
    python neuropbr/train.py --input-dir DATA/input --output-dir DATA/output --config quick_test --out runs/pbr
    python neuropbr/train.py --data DATA --preset lightweight --render-curriculum 1 --out runs/pbr
Two processes (DDP; gloo on CPU, rank 0 logs and saves):
    torchrun --nproc_per_node=2 neuropbr/train.py --out runs/neuropbr
Resume (bit-exact) / evaluate a checkpoint (default: the shipped weights) on held-out materials:
    python neuropbr/train.py --out runs/pbr --resume
    python neuropbr/train.py --out runs/pbr --evaluate [--model-path runs/pbr/ckpt/best] [--eval-data DIR]
int8 for Arm GPUs: quantization-aware fine-tuning (neuropbr/quantize.py; the report and --evaluate score the
int8 graph), then neuropbr/export.py --export-type qat_int8:
    python neuropbr/train.py --preset long --qat --finetune neuropbr/weights/neuropbr --out runs/pbr_qat
"""

import argparse
import math
import sys
import time
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path
from typing import Literal

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch
import torch.nn.functional as F
from torch.nn.parallel import DistributedDataParallel as DDP
from torch.optim.lr_scheduler import ReduceLROnPlateau

from common import ckpt, log, runtime
from common.metrics import ssim
from neuropbr.dataset import DataError, PBRDataset
from neuropbr.evaluate import evaluate, evaluate_checkpoint, table
from neuropbr.infer import SHIPPED, load_generator
from neuropbr.model import Generator, ModelConfig, PatchGAN, stack_maps
from neuropbr.quantize import Int8Generator, QATGenerator


@dataclass
class Config:
    # model (ModelConfig fields)
    encoder: Literal["resnet18", "resnet34", "resnet50", "resnet101"] = "resnet18"  # the ResNet view encoder
    encoder_stride: int = 2  # conv1 stride: 1 = latent at H/16 (the reference), 2 = H/32, cheaper
    photometric: bool = False  # stacked: also feed each view's log-luma minus the views' mean (albedo cancels)
    views_in: Literal["stacked", "shared"] = (
        "stacked"  # stacked: one encoder pass over the registered views as 9 channels | shared (reference)
    )
    use_transformer: bool = True  # fuse the views with attention (False: concat + 1x1 conv)
    transformer_dim: int = 128  # attention width
    transformer_depth: int = 2  # attention layers
    transformer_heads: int = 4  # attention heads
    mlp_ratio: float = 2.0  # attention MLP width / transformer_dim
    dropout: float = 0.0  # attention dropout
    decoder_min_ch: int = 32  # fewest channels of a decoder stage
    attention: Literal["local", "global"] = (
        "local"  # local: each location's three view tokens (tiles exactly) | global (reference)
    )
    skip_fusion: Literal["concat", "mean"] = (
        "concat"  # concat: the views' skips merged by a 1x1 conv | mean (reference)
    )
    normal_head: Literal["slope", "vector"] = (
        "slope"  # slope: n = normalize(sx, sy, 1) | vector: 3 outputs normalised (reference)
    )
    input_skip: int = 32  # width of a full-resolution branch on the views (0: none, the reference)
    # data
    image_size: int = 128  # views and maps resized on the fly to this square size (multiple of 32)
    render_curriculum: Literal[0, 1, 2] = 1  # 0 clean renders, 1 clean + dirty, 2 dirty only (reference: 0)
    val_fraction: float = 0.1  # share of the materials held out for validation
    val_seed: int = 42  # seed of that split
    # optimisation
    batch_size: int = 4  # samples (each three views) per optimizer step
    epochs: int = 20  # epochs to train (--max-steps caps the steps)
    qat_steps: int = 300  # --qat: steps of int8 fake-quant fine-tuning (instead of epochs)
    qat_lr: float = 1e-4  # --qat: generator lr, cosine to qat_lr / 100, no warm-up and no GAN (instead of g_lr)
    g_lr: float = 1e-3  # generator AdamW learning rate
    d_lr: float = 2e-4  # PatchGAN Adam learning rate
    weight_decay: float = 1e-4  # generator AdamW weight decay
    scheduler: Literal["cosine", "step", "plateau"] = "cosine"  # lr schedule after the warm-up
    warmup_epochs: float = 1.0  # linear warm-up from warmup_start * lr
    warmup_start: float = 0.1  # the warm-up starts at this fraction of the lr
    min_lr: float = 1e-6  # cosine floor
    step_size_epochs: int = 30  # scheduler "step": lr *= 0.5 every N epochs
    grad_clip: float = 1.0  # generator gradient-norm clip
    # HybridLoss
    w_l1: float = 1.0  # HybridLoss: L1 weight
    w_albedo: float = 1.0  # weight of the albedo map
    w_roughness: float = 1.0  # weight of the roughness map
    w_metallic: float = 1.0  # weight of the metallic map
    w_normal_map: float = 3.0  # normals are the slowest map to learn (reference: 1.0)
    w_ssim: float = 0.3  # SSIM term weight
    w_normal: float = 0.5  # normal-angle (cosine) term weight
    w_gan: float = 0.05  # adversarial term weight
    use_gan: bool = False  # the reference's presets (but lightweight) train with the PatchGAN; the CPU ones not
    gan_loss: Literal["hinge", "bce"] = "hinge"  # adversarial loss
    gan_start_epoch: int = 5  # epoch from which the adversarial loss is on
    d_steps: int = 1  # discriminator steps per generator step
    d_layers: int = 3  # PatchGAN layers
    ndf: int = 32  # PatchGAN base width
    # bookkeeping
    save_every_epochs: int = 0  # keep ckpt/step_X at these epochs (0 = only latest/best)
    eval_every_epochs: int = 1  # validate (and update ckpt/best) every N epochs
    log_every: int = 10  # a train log line (loss, samples/s) every N steps
    synth: tuple = (480, 128)  # built-in data: (materials, size)
    heldout: tuple = (64, 128)  # built-in held-out set (materials, size), rendered from seed + 1: never trained on


_REF = dict(
    views_in="shared",
    attention="global",
    skip_fusion="mean",
    normal_head="vector",
    input_skip=0,
    use_gan=True,
    w_normal_map=1.0,
    render_curriculum=0,
    encoder="resnet50",
    encoder_stride=1,
    transformer_dim=2048,
    transformer_heads=32,
    transformer_depth=4,
    mlp_ratio=4.0,
    dropout=0.1,
    decoder_min_ch=64,
    image_size=512,
    batch_size=1,
    epochs=100,
    g_lr=2e-4,
    warmup_epochs=5,
    d_layers=6,
    ndf=64,
    save_every_epochs=10,
    synth=(2000, 512),
)
PRESETS = {
    "tiny": Config(
        use_gan=True,
        transformer_dim=32,
        transformer_depth=1,
        transformer_heads=2,
        decoder_min_ch=16,
        image_size=64,
        batch_size=2,
        epochs=2,
        warmup_epochs=0.5,
        gan_start_epoch=1,
        d_layers=2,
        ndf=8,
        log_every=2,
        synth=(10, 64),
        qat_steps=4,
        qat_lr=3e-4,
    ),
    "cpu": Config(),
    "long": Config(synth=(1200, 128), epochs=20, eval_every_epochs=2, log_every=50),  # the shipped weights
    "default": Config(**_REF),
    "quick_test": Config(
        **dict(_REF, encoder="resnet18", transformer_depth=2, transformer_heads=16, transformer_dim=512, epochs=20)
    ),
    "lightweight": Config(**dict(_REF, use_gan=False, w_ssim=0.5, w_normal=0.7)),
    "high_quality": Config(
        **dict(
            _REF,
            encoder="resnet101",
            encoder_stride=2,
            transformer_depth=6,
            w_ssim=0.5,
            w_normal=0.8,
            w_gan=0.1,
            w_albedo=1.2,
            epochs=200,
            gan_start_epoch=10,
            g_lr=1e-4,
            warmup_epochs=10,
        )
    ),
    "fast_iteration": Config(
        **dict(
            _REF,
            encoder="resnet18",
            encoder_stride=2,
            transformer_depth=2,
            transformer_heads=16,
            transformer_dim=512,
            epochs=50,
        )
    ),
    "normal_focused": Config(
        **dict(
            _REF,
            w_normal=1.5,
            w_normal_map=2.0,
            w_albedo=0.8,
            w_roughness=0.8,
            w_metallic=0.8,
            w_ssim=0.2,
            w_gan=0.08,
            epochs=150,
            g_lr=1.5e-4,
        )
    ),
}


def build_parser():
    p = argparse.ArgumentParser(
        description=__doc__.split("\n")[0],
        epilog=__doc__.split("\n", 1)[1],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    runtime.add_common_args(p, PRESETS)
    p.add_argument("--config", dest="preset", choices=sorted(PRESETS), help="the reference's name for --preset")
    p.add_argument(
        "--input-dir", help="DATA/input (clean/, dirty/, render_metadata.json); with --output-dir instead of --data"
    )
    p.add_argument("--output-dir", help="DATA/output (<material>/{albedo,roughness,metallic,normal}.png)")
    p.add_argument("--checkpoint-dir", help="where checkpoints go (default OUT/ckpt)")
    p.add_argument("--no-gan", dest="use_gan", action="store_false", default=None, help="train without the PatchGAN")
    p.add_argument("--gan", dest="use_gan", action="store_true", default=None, help="train with the PatchGAN")
    p.add_argument(
        "--init",
        metavar="FILE",
        help="local .safetensors/.pth state dict for the ResNet encoder (nothing is downloaded)",
    )
    p.add_argument("--evaluate", action="store_true", help="only evaluate --model-path on the validation materials")
    qat = "quantization-aware training: fine-tune --finetune's generator (BatchNorms folded) under int8 fake-quant"
    p.add_argument("--qat", action="store_true", help=qat + " for qat_steps at qat_lr; resumable")
    p.add_argument("--finetune", metavar="CKPT", help="start from this fp32 checkpoint's generator (e.g. the shipped)")
    p.add_argument(
        "--model-path",
        metavar="CKPT",
        default=str(SHIPPED),
        help="checkpoint directory for --evaluate (default: the shipped weights, neuropbr/weights/neuropbr)",
    )
    p.add_argument(
        "--stop-after",
        type=int,
        metavar="N",
        help="save and exit after N steps in this session (continue with --resume)",
    )
    p.add_argument(
        "--eval-data",
        metavar="DIR",
        help="held-out dataset root for the final evaluation and --evaluate "
        "(default: with built-in data, OUT/heldout, rendered from --seed + 1; else the validation split)",
    )
    runtime.add_config_flags(p, PRESETS["cpu"])
    return p


def render_once(root, count, size, seed, rt, logger):
    """Render `count` built-in materials of `size`² from `seed` into root (once; rank 0 renders, all wait)."""
    if rt.master and not (root / "done").exists():
        from neuropbr.synth import make_dataset

        logger.info(f"rendering built-in materials into {root} ({count} materials, {size}², seed {seed}) ...")
        t0 = time.time()
        make_dataset(root, count, size=size, seed=seed)
        (root / "done").write_text("ok\n")
        logger.info(f"data ready in {time.time() - t0:.0f}s")
    if rt.ddp:
        torch.distributed.barrier()


def resolve_data(args, cfg, rt, logger):
    """-> (input dir, output dir, held-out root or None); without --data/--input-dir, render the built-in set into
    OUT/data and its held-out materials (seed + 1) into OUT/heldout, once."""
    heldout = Path(args.eval_data) if args.eval_data else None
    if args.input_dir or args.output_dir:
        if not (args.input_dir and args.output_dir):
            raise DataError("--input-dir and --output-dir go together")
        return Path(args.input_dir), Path(args.output_dir), heldout
    if args.data:
        return Path(args.data) / "input", Path(args.data) / "output", heldout
    root = Path(args.out) / "data"
    render_once(root, *cfg.synth, args.seed, rt, logger)
    if heldout is None:
        heldout = Path(args.out) / "heldout"
        render_once(heldout, *cfg.heldout, args.seed + 1, rt, logger)
    return root / "input", root / "output", heldout


def lr_factor(step, cfg, steps_per_epoch, total):
    """Warm-up from warmup_start to 1, then cosine to min_lr or halving every step_size_epochs (plateau: 1)."""
    warm = int(cfg.warmup_epochs * steps_per_epoch)
    if step < warm:
        return cfg.warmup_start + (1 - cfg.warmup_start) * step / warm
    if cfg.scheduler == "cosine":
        t = (step - warm) / max(1, total - warm)
        floor = cfg.min_lr / cfg.g_lr
        return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * t))
    if cfg.scheduler == "step":
        return 0.5 ** ((step // steps_per_epoch) // cfg.step_size_epochs)
    return 1.0


def hybrid_loss(pred, gt, cfg):
    """HybridLoss without the adversarial term: per-map L1 + SSIM on albedo + normal cosine. -> (loss, parts);
    parts are detached tensors, read (a device sync) only when a step is logged."""
    l1 = sum(
        getattr(cfg, f"w_{'normal_map' if k == 'normal' else k}") * F.l1_loss(pred[k], gt[k])
        for k in ("albedo", "roughness", "metallic", "normal")
    )
    s = 1 - ssim(pred["albedo"], gt["albedo"])
    cos = (1 - F.cosine_similarity(pred["normal"], gt["normal"], dim=1)).mean()
    loss = cfg.w_l1 * l1 + cfg.w_ssim * s + cfg.w_normal * cos
    return loss, {"l1": l1.detach(), "ssim": s.detach(), "normal_cos": cos.detach()}


def gan_losses(d_real, d_fake, kind):
    """-> (discriminator loss, generator adversarial loss) for hinge or bce."""
    if kind == "hinge":
        return F.relu(1 - d_real).mean() + F.relu(1 + d_fake.detach()).mean(), -d_fake.mean()
    bce = F.binary_cross_entropy_with_logits
    return (
        bce(d_real, torch.ones_like(d_real)) + bce(d_fake.detach(), torch.zeros_like(d_fake)),
        bce(d_fake, torch.ones_like(d_fake)),
    )


def batch_at(dataset, step, cfg, seed, rank=0, world=1):
    """The batch of a step: a seeded permutation per epoch, so a resumed run sees exactly the same data."""
    n = len(dataset)
    per_epoch = max(1, n // (cfg.batch_size * world))
    epoch, i = divmod(step, per_epoch)
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed * 1000 + epoch))
    idx = perm[(i * world + rank) * cfg.batch_size :][: cfg.batch_size]
    dataset.set_epoch(epoch)  # flips depend on (dataset seed, epoch, index)
    items = [dataset[int(j)] for j in idx]
    return {k: torch.stack([it[k] for it in items]) for k in ("views", "albedo", "roughness", "metallic", "normal")}


def model_config(cfg):
    return ModelConfig(**{f.name: getattr(cfg, f.name) for f in fields(ModelConfig)})


def configure(args):
    """-> (config, generator or None, qat): the preset (the QAT schedule under --qat or a resumed QAT run) and the
    flags given; under --evaluate the checkpoint's generator (a QAT one as int8) and its own config, then the flags."""
    if args.evaluate:
        gen, meta = load_generator(args.model_path)
        cfg = Config(**{k: tuple(v) if isinstance(v, list) else v for k, v in meta["config"].items()})
        return runtime.override(cfg, args), gen, False
    resumed = ckpt.peek_meta(Path(args.checkpoint_dir or Path(args.out) / "ckpt") / "latest") if args.resume else {}
    qat, base = args.qat or resumed.get("model_type") == "qat_int8", replace(PRESETS[args.preset])
    if qat:
        base = replace(base, g_lr=base.qat_lr, min_lr=base.qat_lr / 100, warmup_epochs=0.0, scheduler="cosine")
        base.use_gan = False
    return runtime.override(base, args), None, qat


def load_data(args, cfg, rt, logger):
    """-> (train, val, test) datasets: --data (or the built-in renders), split by val_fraction; test is the
    held-out set rendered from other seeds when there is one, else val."""
    inp, outp, heldout = resolve_data(args, cfg, rt, logger)
    data = PBRDataset(inp, outp, render_curriculum=cfg.render_curriculum, image_size=cfg.image_size, seed=args.seed)
    train_set, val_set = data.split(cfg.val_fraction, cfg.val_seed)
    train_set.augment = True
    if not heldout:
        return train_set, val_set, val_set
    test_set = PBRDataset.from_root(heldout, render_curriculum=cfg.render_curriculum, image_size=cfg.image_size)
    return train_set, val_set, test_set


def build_model(args, cfg, qat, rt, logger):
    """-> (generator, PatchGAN or None) on the device; --init loads ImageNet-style encoder weights, --finetune a
    checkpoint's generator; --qat wraps it in int8 fake-quant (a graph of batch_size x image_size²)."""
    gen = Generator(model_config(cfg))
    if args.finetune:
        weights, _, meta = ckpt.load(args.finetune, with_state=False)
        if meta.get("model_type", "fp32") != "fp32":
            runtime.fail(f"{args.finetune}: --finetune takes an fp32 checkpoint (this one is {meta['model_type']})")
        try:
            ckpt.load_into(gen, {k: v.float() for k, v in weights.items()}, prefix="gen")
        except RuntimeError as e:
            runtime.fail(f"{args.finetune}: not a generator of this --preset ({str(e).splitlines()[0]})")
        logger.info(f"fine-tuning from {args.finetune}")
    elif qat and not args.resume:
        runtime.fail("--qat fine-tunes a trained fp32 generator: give it with --finetune CKPT")
    if args.init:
        try:
            state = ckpt.read_state_dict(args.init)  # a CheckpointError is one line, exit 2
            encoder = {k: v for k, v in state.items() if not k.startswith("fc.")}
            missing = gen.encoder.load_state_dict(encoder, strict=False).missing_keys
        except (OSError, RuntimeError) as e:
            runtime.fail(f"{args.init}: {str(e).splitlines()[0]}")
        logger.info(f"encoder initialised from {args.init} ({len(missing)} keys left at random init)")
    if qat:
        gen = QATGenerator(gen, (cfg.batch_size, cfg.image_size))
        logger.info(f"QAT: BatchNorms folded, Arm's int8 fake-quant on a graph of {cfg.batch_size} x {cfg.image_size}²")
    disc = PatchGAN(cfg.d_layers, cfg.ndf).to(rt.device) if cfg.use_gan else None
    return gen.to(rt.device), disc


def optimizers(cfg, gen, disc, rt):
    """AdamW for the generator, Adam for the PatchGAN, the plateau scheduler, the AMP scaler (None where unused)."""
    opt_g = torch.optim.AdamW(gen.parameters(), lr=cfg.g_lr, betas=(0.5, 0.999), weight_decay=cfg.weight_decay)
    return {
        "optimizer": opt_g,
        "optimizer_d": torch.optim.Adam(disc.parameters(), lr=cfg.d_lr, betas=(0.5, 0.999)) if disc else None,
        "plateau": ReduceLROnPlateau(opt_g, factor=0.5, patience=2) if cfg.scheduler == "plateau" else None,
        "scaler": torch.amp.GradScaler(enabled=rt.amp_dtype == torch.float16),
    }


OLD_KEYS = {"optimizer": "opt_g", "optimizer_d": "opt_d"}  # state.pt keys of runs written before 2026-12


def resume(ck, gen, disc, opts, metrics, rt, logger):
    """--resume: weights, optimizers, scheduler, scaler and RNG from OUT/ckpt/latest -> (step, best); (0, -inf) if
    there is none yet. Metrics rows the interrupted run logged after that step are dropped (they are redone)."""
    step, best = 0, -math.inf
    with ckpt.resuming(ck, "a NeuroPBR checkpoint of this preset", rt.device, logger.info) as latest:
        if latest:
            weights, state, meta = latest
            if isinstance(gen, QATGenerator):
                gen.load(weights)  # the graph's state and the folded fp32 generator around it
            else:
                ckpt.load_into(gen, weights, prefix="gen")
            if disc:
                ckpt.load_into(disc, weights, prefix="disc")
            for key, obj in opts.items():  # optimizer, optimizer_d, plateau, scaler (older runs: opt_g, opt_d)
                if obj is not None:
                    obj.load_state_dict(state[key] if key in state else state[OLD_KEYS[key]])
            ckpt.set_rng_state(state["rng"])
            step, best = meta["step"], meta.get("best", meta.get("best_score", -math.inf))
    metrics.resume(step)
    return step, best


def kind_meta(gen):
    """meta["model_type"] (and meta["qat"], the QAT graph's batch shape) of a checkpoint of `gen`."""
    qat = isinstance(gen, QATGenerator)
    return {"model_type": "qat_int8", "qat": {"shape": list(gen.batch_shape)}} if qat else {"model_type": "fp32"}


def save(ck, step, gen, disc, opts, meta, keep_every, is_best):
    """Rank 0's checkpoint: gen.* and disc.* weights, every optimizer/scheduler/scaler state and the RNG."""
    qat = isinstance(gen, QATGenerator)  # its checkpoint: model.* (fp32 view) and qat.* (the graph)
    weights = gen.checkpoint_weights() if qat else {f"gen.{k}": v for k, v in gen.state_dict().items()}
    weights.update({f"disc.{k}": v for k, v in disc.state_dict().items()} if disc else {})
    state = {k: obj.state_dict() for k, obj in opts.items() if obj is not None}
    state["rng"] = ckpt.rng_state()
    return ckpt.save_step(ck, step, weights, state, meta, best=is_best, keep_every=keep_every)


def gan_step(disc, opt_d, scaler, pred, batch, cfg, rt):
    """The discriminator's d_steps (real and fake through D as one batch, so its BatchNorm sees both), then the
    generator's adversarial term -> (g_adv, d_loss)."""
    real = stack_maps(batch)
    for _ in range(cfg.d_steps):
        with rt.autocast():
            d_loss, _ = gan_losses(*disc(torch.cat([real, stack_maps(pred).detach()])).chunk(2), cfg.gan_loss)
        opt_d.zero_grad(set_to_none=True)
        scaler.scale(d_loss).backward()
        if rt.ddp:  # D is not DDP-wrapped (two forwards per step): average its gradients by hand
            for p in disc.parameters():
                torch.distributed.all_reduce(p.grad)
                p.grad /= rt.world
        scaler.step(opt_d)
    with rt.autocast():
        _, g_adv = gan_losses(*disc(torch.cat([real, stack_maps(pred)])).chunk(2), cfg.gan_loss)
    return g_adv, d_loss


def summary(gen, disc, train_set, val_set, steps_per_epoch, total, rt):
    """The run's first log line: parameters, samples, steps, device."""
    d = f", PatchGAN {sum(p.numel() for p in disc.parameters()):,}" if disc else ""
    return (
        f"NeuroPBR: generator {sum(p.numel() for p in gen.parameters()):,} params{d} | {len(train_set)} train / "
        f"{len(val_set)} val samples | {steps_per_epoch} steps/epoch, {total} steps | device {rt.device}"
    )


def log_train(logger, metrics, step, steps_per_epoch, loss, parts, opt, samples_per_s):
    """A training log line and metrics row: the loss, each of its parts, the lr, the speed."""
    parts, lr = {k: v.item() for k, v in parts.items()}, opt.param_groups[0]["lr"]
    logger.info(
        f"step {step:6d} | epoch {step / steps_per_epoch:5.2f} | loss {loss.item():.4f} | "
        f"{' | '.join(f'{k} {v:.3f}' for k, v in parts.items())} | lr {lr:.2e} | {samples_per_s:.1f} samples/s"
    )
    metrics.write(step, "train", loss=loss.item(), lr=lr, samples_per_s=samples_per_s, **parts)


def validate(gen, val_set, rt, out, metrics, step, logger):
    """The score on 16 validation samples (picks ckpt/best), logged per map."""
    res = evaluate(gen, val_set, None, rt.device, out / "val", max_samples=16, progress=False)
    gen.train()
    metrics.write(step, "val", **{k: v for k, v in res["flat"].items()})
    m = res["model"]
    logger.info(
        f"step {step:6d} | val albedo PSNR {m['albedo']['psnr']:.2f} dB | normal {m['normal']['angle_mean']:.2f}° | "
        f"rough MAE {m['roughness']['mae']:.4f} | metal MAE {m['metallic']['mae']:.4f}"
    )
    return res["score"]


@runtime.user_errors(DataError, ckpt.CheckpointError)
def main():
    # --- setup: preset + flags (or the checkpoint's under --evaluate), device / DDP, logs -------------------------
    args = build_parser().parse_args()
    cfg, evaluated, qat = configure(args)
    rt = runtime.setup(args)
    out, ck = Path(args.out), Path(args.checkpoint_dir) if args.checkpoint_dir else Path(args.out) / "ckpt"
    logger, metrics = log.setup(out, args.log_level, rt.master), log.Metrics(out, enabled=rt.master)

    # --- data: three registered views -> four maps, at image_size ----------------------------------------------
    train_set, val_set, test_set = load_data(args, cfg, rt, logger)
    if args.evaluate:  # evaluation only: neuropbr/evaluate.py
        return evaluate_checkpoint(evaluated, test_set, train_set, rt, out, logger)
    steps_per_epoch = max(1, len(train_set) // (cfg.batch_size * rt.world))
    total = min(args.max_steps or 10**12, cfg.qat_steps if qat else cfg.epochs * steps_per_epoch)

    # --- model, optimizers, resume -------------------------------------------------------------------------------
    gen, disc = build_model(args, cfg, qat, rt, logger)
    if rt.master:
        ckpt.check_room(ck, gen, disc)
    net = DDP(gen) if rt.ddp else gen
    opts = optimizers(cfg, gen, disc, rt)  # what a checkpoint keeps besides the weights
    opt_g, plateau, scaler = opts["optimizer"], opts["plateau"], opts["scaler"]
    step, best = resume(ck, gen, disc, opts, metrics, rt, logger) if args.resume else (0, -math.inf)
    logger.info(summary(gen, disc, train_set, val_set, steps_per_epoch, total, rt))
    stop, guard = runtime.StopSignal(args.stop_after), runtime.NanGuard(args.nan_policy)
    run = dict(preset=args.preset, config=asdict(cfg), model=asdict(model_config(cfg)), **kind_meta(gen))
    keep_every = args.save_every or cfg.save_every_epochs * steps_per_epoch

    def checkpoint(score=None):  # rank 0: OUT/ckpt/latest, best when score is the best so far
        if rt.master:
            meta = dict(run, step=step, epoch=step / steps_per_epoch, best=best, val=score, nan_skipped=guard.skipped)
            path = save(ck, step, gen, disc, opts, meta, keep_every, score is not None and score >= best)
            logger.debug(f"saved {path.name} (epoch {step // steps_per_epoch})")

    # --- loop: the hybrid loss (+ the GAN's after gan_start_epoch), AdamW; validate per epoch, leave on request --
    gen.train()
    start_step, t_last, s_last = step, time.time(), step
    with runtime.profiler(args.profile if rt.master else None, out) as prof_step:
        while step < total:
            batch = {
                k: v.to(rt.device) for k, v in batch_at(train_set, step, cfg, args.seed, rt.rank, rt.world).items()
            }
            if not plateau or step <= cfg.warmup_epochs * steps_per_epoch:  # plateau: the scheduler owns the lr
                for group in opt_g.param_groups:
                    group["lr"] = cfg.g_lr * lr_factor(step, cfg, steps_per_epoch, total)
            with rt.autocast():
                pred = net(batch["views"])
                loss, parts = hybrid_loss(pred, batch, cfg)
            if disc is not None and step >= cfg.gan_start_epoch * steps_per_epoch:
                g_adv, d_loss = gan_step(disc, opts["optimizer_d"], scaler, pred, batch, cfg, rt)
                loss = loss + cfg.w_gan * g_adv
                parts.update(d_loss=d_loss.detach(), g_adv=g_adv.detach())
            if guard.skip_step(loss, step, rt, logger):  # non-finite: no update, the step counts (D's steps stand)
                if guard.must_stop:  # --nan-policy stop, or too many in a row: exit 2, last good state kept
                    checkpoint()
                    runtime.fail(guard.reason(ck / "latest"))
            else:
                opt_g.zero_grad(set_to_none=True)
                scaler.scale(loss).backward()
                scaler.unscale_(opt_g)
                torch.nn.utils.clip_grad_norm_(gen.parameters(), cfg.grad_clip)
                scaler.step(opt_g)
                scaler.update()
            step += 1
            prof_step()
            if step % cfg.log_every == 0 or step == total:
                dt, t_last = time.time() - t_last, time.time()
                samples_per_s, s_last = (step - s_last) * cfg.batch_size * rt.world / dt, step  # all processes
                log_train(logger, metrics, step, steps_per_epoch, loss, parts, opt_g, samples_per_s)
            epoch_end, score = step % steps_per_epoch == 0, None
            if rt.master and ((epoch_end and (step // steps_per_epoch) % cfg.eval_every_epochs == 0) or step == total):
                score = validate(gen, val_set, rt, out, metrics, step, logger)
                best = max(best, score)
                if plateau:
                    plateau.step(-score)
            due = (cfg.save_every_epochs and epoch_end) or (args.save_every and step % args.save_every == 0)
            if score is not None or step == total or due:
                checkpoint(score)
            if stop.requested(step - start_step):  # SIGINT/SIGTERM or --stop-after: save, leave the loop
                checkpoint()
                break
    if stop.asked:  # saved above: say where, exit 130/0 on a signal
        return stop.leave(step, ck / "latest", logger, rt)
    runtime.same_weights([gen, disc], rt, logger)  # DDP: one model on every rank, or an error

    # --- report: the four maps vs the mean material and the view average on the held-out set --------------------
    if rt.master:
        res = evaluate(Int8Generator(gen) if qat else gen, test_set, train_set, rt.device, out / "eval")
        logger.info(table(res) + f"\n\nimages: {out / 'eval'}")
    runtime.teardown(rt)


if __name__ == "__main__":
    main()
