"""Export what play.py runs per frame: one guided denoiser step and the decoder, as XNNPACK .pte files for CPUs
and .vgf/.tosa for Arm's ML extensions for Vulkan; check them against PyTorch and report the cost of a frame.

    python gamengen/export.py --model-path runs/gg/diffusion/ckpt/best --data runs/gg/latents --out runs/gg/export
    python gamengen/export.py --model-path runs/gg/diffusion/ckpt/best --data runs/gg/latents \\
                              --decoder runs/gg/decoder/ckpt/best --no-vgf --out runs/gg/export_ft
    python gamengen/export.py --preset cpu --no-vgf --out runs/gg/cost_cpu      # untrained: cost and lowering only
    python gamengen/export.py --model-path runs/gg/diffusion/ckpt/best --data runs/gg/latents \\
                              --export-type ptq_int8 --out runs/gg/export_int8      # Arm's int8 scheme, both parts
    python gamengen/export.py --model-path runs/gg_qat/ckpt/latest --data runs/gg/latents \\
                              --export-type qat_int8 --out runs/gg/export_qat       # a train.py --qat checkpoint

OUT/denoise_step/  DenoiseStep(model, guidance) of gamengen/model.py at batch 1: forward(x (1,4,16,20),
                   t (1,), s (1,), context (1,N,4,16,20), actions (1,N) int64, bucket (1,) int64) -> x at s; the
                   conditional and unconditional (context zeroed) branches run inside as one batch of 2.
                   An engine calls it --steps times per frame, t = 1 -> 0 in equal steps, x starting as noise.
OUT/decoder/       forward(z (1,4,16,20), in the diffusion model's scaled latent space) -> frame (1,3,128,160)
                   in [0, 1]: the 1 / scale of the latents' index (1 without data) and the clamp are inside.
Each holds model.pte (XNNPACK), model.vgf + model.tosa + model_vgf.pte (VGF delegate; not with --no-vgf) and
export_report.json (delegated fractions, non-delegated ops, max-abs-error of each against eager PyTorch).

What lowers (VGF): all of the decoder. In the denoiser step the two embedding lookups of int64 indices
(actions + positions into the action table, the noise bucket into its table) and the int64 add and cat that
feed them stay on the CPU: model_vgf.pte runs them before its delegated graph, and the standalone model.vgf
takes the looked-up vectors ((2, N, action_dim) and (2, cond_dim)) as inputs instead of actions and bucket, so
its TOSA/VGF check against eager is skipped (said in the report). t and s as float tensors lower (cos, sin, exp).
XNNPACK has no group norm, embedding or nearest upsampling: those run as portable CPU ops between its graphs.
--export-type ptq_int8 quantizes both parts with Arm's int8 scheme (common/quant.py: int8 activations per
tensor, int8 weights per channel, int32 bias), calibrated on the inputs they see when a frame is played: the
DDIM chain of --calibration-windows held-out windows (each of its steps), and those windows' latents and
results for the decoder. --export-type qat_int8 takes a checkpoint of `train.py diffusion --qat` instead: the
step's VGF graph is its QAT graph converted to int8 (the guidance it was trained with baked in), its .pte is
XNNPACK's quantizer calibrated on the QAT-trained weights, and the decoder is quantized as ptq_int8. In int8 the
lookups lower too: only the int64 -> int32 casts of actions and bucket stay on the CPU, so the standalone step
model.vgf takes x, t, s and context as int8 and actions and bucket as int32, and is checked so. Each part's report
holds its int8 checks (TOSA reference, .vgf, .pte in output int8 steps against PyTorch's int8 graph), and with
--data export_summary.json holds `heldout`: PSNR against the true next frame (decoded from its latent) of the
fp32 and the int8 pipeline, played from the same noise.
Cost: parameters of the denoiser and decoder, FLOPs (torch.utils.flop_counter: convolutions and matmuls) of a
played frame = steps x denoise step + decode, and the eager and .pte milliseconds of a frame measured so.
"""

import argparse
import json
import sys
from dataclasses import asdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np
import torch
import torch.nn as nn
from safetensors.torch import save_file
from torch.utils.flop_counter import FlopCounterMode

from common import ckpt, quant
from common.export import export_fp32, export_int8, lower_vgf, max_abs_error, run_tosa_and_vgf, verdict
from common.metrics import psnr
from common.runtime import fail
from gamengen import autoencoder
from gamengen.model import MODELS, Denoiser, DenoiseStep, bucket_of, sample
from gamengen.quantize import Int8Step, load_qat
from gamengen.train import denoiser_from

AE_FOR = {"tiny": "tiny", "cpu": "cpu", "paper": "gpu"}  # untrained autoencoder beside an untrained --preset


class DecodeFrame(nn.Module):
    """Scaled latent (what the denoiser makes) -> frame in [0, 1]."""

    def __init__(self, ae, scale=1.0):
        super().__init__()
        self.ae, self.inv_scale = ae, 1.0 / float(scale)

    def forward(self, z):
        return self.ae.decode(z * self.inv_scale).clamp(0, 1)


def eager_ms(checks):
    return checks.get("eager_ms", checks.get("eager_int8_ms"))


def flops_of(net, inputs):
    with FlopCounterMode(display=False) as f, torch.no_grad():
        net(*inputs)
    return f.get_total_flops()


def export_part(net, inputs, out, vgf, repeats, xnnpack=True):
    """export_fp32 for the .pte (and the VGF when the whole graph lowers, checked in the TOSA reference model and
    on the emulation layer); when ops stay on the CPU, the VGF files are written and the report says which ops
    and that the standalone .vgf's inputs differ, so its numeric check is skipped. -> report."""
    report = export_fp32(net, inputs, out, vgf=False, xnnpack=xnnpack, repeats=repeats)
    if vgf:
        try:
            v = lower_vgf(torch.export.export(net, inputs), out, "TOSA-1.0+FP")
        except RuntimeError as e:  # more than one delegated graph: no standalone .vgf
            v = {"error": str(e).splitlines()[0]}
        report["vgf"] = v
        if v.get("non_delegated_ops"):
            v["note"] = (
                f"not delegated, run on the CPU by model_vgf.pte: {', '.join(v['non_delegated_ops'])}; the standalone "
                "model.vgf takes their results as inputs, so its TOSA/VGF check is skipped"
            )
        elif "error" not in v:
            with torch.no_grad():
                ref = net(*inputs)
            ref = list(ref) if isinstance(ref, (tuple, list)) else [ref]
            run_tosa_and_vgf(
                Path(out),
                inputs,
                report["checks"],
                lambda name, outputs: report["checks"].update({f"{name}_max_abs_error": max_abs_error(outputs, ref)}),
            )
    (Path(out) / "export_report.json").write_text(json.dumps(report, indent=2))
    return report


def export_int8_part(part, net, inputs, calibration, out, args, qat=None):
    """Int8 of one part for the VGF and XNNPACK backends, its export and checks -> (report, the VGF graph). PTQ
    calibrates both backends' graphs; with `qat` (the denoise step of a QAT checkpoint) the VGF graph is its int8
    conversion instead, and XNNPACK's quantizer calibrates the QAT-trained fp32 weights (`net`)."""
    vgf_graph = Int8Step(qat).graph_at(inputs) if qat is not None else quant.ptq(net, inputs, calibration, "vgf")
    pte_graph = quant.ptq(net, inputs, calibration, backend="xnnpack")
    kw = dict(export_type=args.export_type, fp32_model=net, vgf=not args.no_vgf, repeats=args.repeats)
    return export_int8(vgf_graph, pte_graph, inputs, out, **kw), vgf_graph


def check_inputs(model, data, steps, seed=0):
    """Denoiser step inputs (the first DDIM step of a held-out window when data, else random) and a latent."""
    cfg, g = model.cfg, torch.Generator().manual_seed(seed)
    N, C, (H, W) = cfg.context, cfg.latent_channels, cfg.latent_size
    if data:
        from gamengen.play import Episodes

        ep = Episodes(data, N)
        context, actions = ep.window(ep.ids[0])
        context, actions, scale = context[None], actions[None], ep.ds.scale
    else:
        context, actions, scale = (
            torch.randn(1, N, C, H, W, generator=g),
            torch.randint(0, cfg.n_actions, (1, N), generator=g),
            1.0,
        )
    x = torch.randn(1, C, H, W, generator=g)
    t, s = torch.ones(1), torch.full((1,), 1 - 1 / steps)
    bucket = bucket_of(torch.zeros(1), cfg)
    return (x, t, s, context, actions, bucket), (context[:, -1],), scale


def windows(data, n, count):
    """Up to `count` held-out windows of a latents folder -> [(context (1,N,C,H,W), actions (1,N), target)]."""
    from gamengen.play import Episodes

    ep = Episodes(data, n)
    items = [ep.ds[ep.item[e]] for e in ep.ids[:count]]
    return [(it["context"][None], it["actions"][None], it["target"][None]) for it in items]


def play_frame(step, context, actions, steps, seed, model):
    """model.sample() of one frame from seeded noise through `step` -> (the inputs of each step, the next latent)."""
    cfg, seen = model.cfg, []
    noise = torch.randn(1, cfg.latent_channels, *cfg.latent_size, generator=torch.Generator().manual_seed(seed))

    def recorded(*inputs):
        seen.append(inputs)
        return step(*inputs)

    return seen, sample(model, context, actions, steps, noise=noise, step=recorded)


def calibration(model, step_net, data, count, steps):
    """What each part sees when frames are played: every denoise-step input of the DDIM chains of `count` held-out
    windows (random windows without data), and the windows' latents and results for the decoder."""
    cfg = model.cfg
    if data:
        wins = [(c, a) for c, a, _ in windows(data, cfg.context, count)]
    else:
        wins = [check_inputs(model, None, steps, seed=i)[0][3:5] for i in range(count)]
    step_calib, dec_calib = [], []
    for i, (context, actions) in enumerate(wins):
        seen, x = play_frame(step_net, context, actions, steps, i, model)
        step_calib += seen
        dec_calib += [(context[:, j],) for j in range(context.shape[1])] + [(x,)]
    return {"denoise_step": step_calib, "decoder": dec_calib}


@torch.no_grad()
def heldout_quality(model, data, parts, steps, count=16):
    """PSNR against the true next frame (its latent decoded by the fp32 decoder) of each pipeline in `parts`
    ({name: (step, decoder)}), all played from the same noise, and copy-last-frame's."""
    cfg, (_, fp32_dec) = model.cfg, parts["fp32"]
    scores = {name: [] for name in [*parts, "copy_last_frame"]}
    for i, (context, actions, target) in enumerate(windows(data, cfg.context, count)):
        truth = fp32_dec(target)
        scores["copy_last_frame"].append(psnr(fp32_dec(context[:, -1]), truth).item())
        for name, (step, dec) in parts.items():
            scores[name].append(psnr(dec(play_frame(step, context, actions, steps, 1000 + i, model)[1]), truth).item())
    return {name: round(sum(v) / len(v), 3) for name, v in scores.items()} | {"windows": len(scores["fp32"])}


def write_weights(out, model_path, data, decoder=None, episodes=8, guidance=None):
    """What ships (and what play.py starts from without data): OUT/denoiser (the EMA weights), OUT/autoencoder
    (the decoder's checkpoint), both fp16 with their run's meta and no optimizer state, and OUT/start, a latents
    folder holding the first N + 1 steps of `episodes` held-out episodes (the windows a game starts from).
    `guidance` replaces the model's default guidance weight (what play.py and evaluate.py use without --guidance)."""
    from gamengen.play import Episodes, decoder_path

    out = Path(out)
    weights, _, meta = ckpt.load(model_path, with_state=False)
    ae_path = decoder_path(argparse.Namespace(decoder=decoder, data=data))
    ae_weights, _, ae_meta = ckpt.load(ae_path, with_state=False)
    if guidance is not None:
        meta["model"]["guidance"] = guidance
    ckpt.save_fp16(
        out / "denoiser",
        {k: v for k, v in weights.items() if k.startswith("ema.")},
        {**meta, "source": str(model_path)},
    )
    ckpt.save_fp16(out / "autoencoder", ae_weights, {**ae_meta, "source": str(ae_path)})
    n = meta["model"]["context"]
    ep = Episodes(data, n)
    ds, rows = ep.ds, []
    for e in ep.ids[:episodes]:  # sorted positions of the episode's steps 0..N
        first = int(ds.targets[ep.item[e]]) - n
        rows += [int(ds.order[q]) for q in range(first, first + n + 1)]
    take = lambda key: torch.from_numpy(np.stack([ds.shards[ds.shard_of[r]][key][ds.row_of[r]] for r in rows]))  # noqa: E731
    tensors = {"latents": take("latents").half(), **{k: take(k) for k in ("actions", "rewards", "episode", "step")}}
    start = out / "start"
    start.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(start / "latents_00000.safetensors"))
    ids = [int(e) for e in ep.ids[:episodes]]
    index = {k: v for k, v in ds.index.items() if k not in ("shards", "episodes", "source")}
    index.update(
        ckpt="../autoencoder",
        shards=[{"file": "latents_00000.safetensors", "steps": len(rows), "segments": [[e, 0, n + 1] for e in ids]}],
        episodes={str(e): {"split": "heldout", "length": n + 1, "done": False} for e in ids},
    )
    (start / "index.json").write_text(json.dumps(index, indent=1))
    size = sum(f.stat().st_size for f in out.rglob("*") if f.is_file())
    print(
        f"wrote {out}/denoiser, autoencoder (fp16) and start ({len(ids)} held-out windows of {n} steps): "
        f"{size / 2**20:.1f} MB"
    )


def main():
    p = argparse.ArgumentParser(
        description=__doc__.split("\n")[0],
        epilog=__doc__.split("\n", 1)[1],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--model-path", help="diffusion checkpoint directory (gamengen/train.py diffusion: OUT/ckpt/best)")
    p.add_argument(
        "--preset",
        choices=sorted(MODELS),
        help="without --model-path: an untrained denoiser of this architecture "
        "(gamengen/model.py MODELS; for cost and lowering only, its output is meaningless)",
    )
    p.add_argument(
        "--data",
        help="latents folder: a held-out window for the check, the latent scale and the default decoder "
        "(default with --model-path: the checkpoint's training data when it is still there)",
    )
    p.add_argument(
        "--decoder",
        help="autoencoder checkpoint (default: the one named in the latents' index; with --preset and "
        "no data, an untrained autoencoder of the matching size)",
    )
    p.add_argument("--steps", type=int, help="DDIM steps per played frame, for the cost (default: the model's, 4)")
    p.add_argument(
        "--guidance", type=float, help="context guidance weight baked into the step (default: the model's, 1.5)"
    )
    p.add_argument(
        "--export-type",
        default="fp32",
        choices=["fp32", "ptq_int8", "qat_int8"],
        help="fp32 (TOSA-1.0+FP); ptq_int8: both parts in Arm's int8 scheme (TOSA-1.0+INT), calibrated on "
        "played frames of held-out windows; qat_int8 (a --qat checkpoint): its trained int8 step, the decoder as "
        "ptq_int8",
    )
    p.add_argument(
        "--calibration-windows",
        type=int,
        default=8,
        help="ptq_int8: held-out windows whose played frames (every DDIM step) calibrate the quantizer",
    )
    p.add_argument("--out", help="output folder (denoise_step/ and decoder/ inside)")
    p.add_argument("--no-vgf", action="store_true", help="only the XNNPACK .pte files")
    p.add_argument("--repeats", type=int, default=5, help="timed runs of eager and .pte (median reported)")
    p.add_argument("--tolerance", type=float, default=None, help=".pte vs eager max-abs-error (default 1e-4)")
    p.add_argument(
        "--weights-out",
        metavar="DIR",
        help="only write what ships: DIR/denoiser and DIR/autoencoder (fp16) and "
        "DIR/start (the first steps of 8 held-out episodes of --data), what play.py runs without arguments; "
        "with --guidance, that weight becomes the shipped model's default",
    )
    args = p.parse_args()
    if args.weights_out:
        if not (args.model_path and args.data):
            fail("--weights-out needs --model-path (a trained denoiser) and --data (its latents folder)")
        try:
            return write_weights(args.weights_out, args.model_path, args.data, args.decoder, guidance=args.guidance)
        except (ckpt.CheckpointError, OSError, ValueError, KeyError) as e:
            fail(f"--weights-out: {e}")
    if not args.out:
        fail("--out DIR is required (or --weights-out DIR)")
    if args.export_type == "qat_int8" and not args.model_path:
        fail("--export-type qat_int8 needs --model-path, a checkpoint of `train.py diffusion --qat`")
    if not (args.model_path or args.preset):
        fail("give --model-path CKPT_DIR (a trained denoiser) or --preset tiny|cpu|paper (untrained, for cost only)")
    try:
        qat = None
        if args.model_path:
            weights, _, meta = ckpt.load(args.model_path, with_state=False)
            model = denoiser_from(weights, meta)
            if (meta.get("model_type") == "qat_int8") != (args.export_type == "qat_int8"):
                fail(
                    f"--export-type qat_int8 takes a --qat checkpoint and only that ({args.model_path} is "
                    f"{meta.get('model_type', 'fp32')})"
                )
            if args.export_type == "qat_int8":
                qat = load_qat(weights, meta, model.cfg)
                if args.guidance not in (None, qat.guidance):
                    fail(f"--guidance {args.guidance}: the QAT step was trained with {qat.guidance} baked in")
                args.guidance = qat.guidance
            if not args.data and meta.get("data") and (Path(meta["data"]) / "index.json").exists():
                args.data = meta["data"]
        else:
            torch.manual_seed(0)
            model = Denoiser(MODELS[args.preset]).eval()
        cfg = model.cfg
        steps, guidance = args.steps or cfg.sample_steps, cfg.guidance if args.guidance is None else args.guidance
        step_in, dec_in, scale = check_inputs(model, args.data, steps)
        if args.decoder or args.data:
            from gamengen.play import decoder_path

            ae, ae_cfg = autoencoder.load_model(decoder_path(argparse.Namespace(decoder=args.decoder, data=args.data)))
        elif args.preset:
            torch.manual_seed(0)
            ae_cfg = autoencoder.PRESETS[AE_FOR[args.preset]]
            ae = autoencoder.AE(ae_cfg).eval()
        else:
            fail(
                f"no decoder: give --decoder AE_CKPT or --data LATENTS ({args.model_path}'s training data is not there)"
            )
    except ckpt.CheckpointError as e:
        fail(str(e))
    except (OSError, ValueError) as e:
        fail(str(e))
    except KeyError as e:
        fail(f"{args.model_path}: not a GameNGen diffusion checkpoint (no {e} in meta.json)")
    out, int8_export = Path(args.out), args.export_type != "fp32"
    step_net, dec_net = DenoiseStep(model, guidance).eval(), DecodeFrame(ae, scale).eval()
    step_flops, dec_flops = flops_of(step_net, step_in), flops_of(dec_net, dec_in)
    name = args.preset or meta["config"]["model"]
    params = {
        "denoiser": sum(p.numel() for p in model.parameters()),
        "decoder": sum(p.numel() for p in ae.decoder.parameters()),
    }
    common = dict(
        usecase="gamengen",
        preset=name,
        trained=bool(args.model_path),
        context=cfg.context,
        guidance=guidance,
        steps_per_frame=steps,
    )
    ok, reports, int8 = True, {}, {}
    calib = calibration(model, step_net, args.data, args.calibration_windows, steps) if int8_export else None
    for part, net, inputs, flops, n in (
        ("denoise_step", step_net, step_in, step_flops, params["denoiser"]),
        ("decoder", dec_net, dec_in, dec_flops, params["decoder"]),
    ):
        print(f"--- {part}")
        if int8_export:
            q = qat if part == "denoise_step" else None
            report, int8[part] = export_int8_part(part, net, inputs, calib[part], out / part, args, q)
        else:
            report = export_part(net, inputs, out / part, not args.no_vgf, args.repeats)
        ok &= verdict(report, out / part, args.tolerance, part=part, params=n, gflops=round(flops / 1e9, 4), **common)
        if "note" in report.get("vgf", {}) or "error" in report.get("vgf", {}):
            print(f"VGF {part}: {report['vgf'].get('note') or report['vgf']['error']}")
        reports[part] = report
    c1, c2 = reports["denoise_step"]["checks"], reports["decoder"]["checks"]
    summary = dict(
        common,
        export_type=args.export_type,
        latent_scale=scale,
        decoder_config=asdict(ae_cfg),
        model_config=asdict(cfg),
        params=params,
        params_total=sum(params.values()),
        gflops_per_frame=round((steps * step_flops + dec_flops) / 1e9, 3),
        eager_ms_per_frame=round(steps * eager_ms(c1) + eager_ms(c2), 2),
        pte_ms_per_frame=round(steps * c1["pte_ms"] + c2["pte_ms"], 2),
        delegated={
            p: {k: r[k]["delegated_fraction"] for k in ("xnnpack", "vgf") if "delegated_fraction" in r.get(k, {})}
            for p, r in reports.items()
        },
        pte_matches_eager=ok,
    )
    if args.data:
        pipelines = {"fp32": (step_net, dec_net)}
        if int8_export:
            pipelines[args.export_type] = (int8["denoise_step"], int8["decoder"])
        summary["heldout"] = heldout_quality(model, args.data, pipelines, steps)
        print(f"held-out next-frame PSNR (dB, vs the decoded true latent): {json.dumps(summary['heldout'])}")
    (out / "export_summary.json").write_text(json.dumps(summary, indent=2))
    print(
        f"cost of a played frame ({name}, context {cfg.context}, {steps} steps x guided denoise step (batch 2) + "
        "decode): "
        f"{summary['params_total']:,} params ({params['denoiser']:,} denoiser + {params['decoder']:,} decoder), "
        f"{summary['gflops_per_frame']} GFLOPs, eager {summary['eager_ms_per_frame']:.1f} ms, .pte "
        f"{summary['pte_ms_per_frame']:.1f} ms "
        f"(threads {torch.get_num_threads()}); delegated {json.dumps(summary['delegated'])}"
    )
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
