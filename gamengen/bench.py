"""GameNGen benchmark: record ViZDoom play and train the autoencoder and the denoiser for a fixed budget, then
measure, all in this one run:
  quality  teacher-forced PSNR / SSIM of the next frame and autoregressive PSNR at steps 1, 8, 16, 32 on
           held-out episodes (whole episodes the training never saw), against copy-last-frame and the
           autoencoder's ceiling (gamengen/evaluate.py, at play.py's 2 DDIM steps, guidance 1.5)
  speed    ms of one played frame (play.py's Engine.step: 2 guided denoising steps + decode, batch 1) in eager
           fp32 and bf16 and as XNNPACK .pte fp32 (gamengen/export.py) and int8 (median of >= 10 runs after
           warm-up), frames per second against the 20 FPS goal, FLOPs per frame and the share of this machine's
           matmul peak, .pte max-abs-error of a played frame against eager
  cost     denoiser training samples/s, step-time breakdown (data / forward / backward / optimizer), peak RSS
           and wall time of each stage, and 1 process vs torchrun --nproc_per_node=2
Rows go to bench/results.json and bench/results.md (bench/harness.py).

    python gamengen/bench.py             # cpu preset: 10k recorded steps, 500 AE + 1500 denoiser steps
    python gamengen/bench.py --quick     # tiny preset, 2-3 minutes: every kind of row, what a test can run
"""

import copy
import json
import os
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch

from bench import harness
from common import quant
from common.export import lower_xnnpack, max_abs_error
from common.runtime import median_ms, run_script
from common.runtimes import load_pte
from gamengen import train
from gamengen.autoencoder import load_model as load_ae
from gamengen.dataset import LatentSequences
from gamengen.export import AE_FOR, DecodeFrame
from gamengen.model import Denoiser, DenoiseStep, bucket_of, sample, training_loss
from gamengen.play import Engine, Episodes


@dataclass
class Budget:
    preset: str  # denoiser preset (train.py diffusion); the autoencoder's is export.py's AE_FOR[preset]
    record_steps: int  # recorded game steps (collect.py, random policy)
    heldout: float  # share of whole episodes held out
    ae_steps: int  # autoencoder steps
    steps: int  # denoiser steps
    scaling_steps: int  # denoiser steps of each 1-vs-2-process run
    windows: int  # held-out windows, teacher forced
    episodes: int  # held-out episodes rolled out for 32 steps
    play_steps: int = 2  # DDIM steps of a played frame (play.py's default)
    repeats: int = 10


BUDGETS = {
    "full": Budget("cpu", 10_000, 0.1, 500, 1500, 40, 256, 8),  # ~12 min on 2 idle cores
    "quick": Budget("tiny", 2000, 0.3, 30, 30, 10, 32, 2),
}
STAGES = ("doom", "ae", "latents", "diffusion", "eval", "export", "export_int8", "scaling")


def fresh(work, want):
    """Remove what an earlier run left in work (checkpoints, latents, exports) so that this one starts from
    scratch; keep its recorded episodes when they are complete and of this budget (same steps, seed, split)."""
    marker = work / "bench.json"
    if work.exists() and any(work.iterdir()) and not marker.exists():
        sys.exit(f"error: --work {work} is not a bench work folder (no bench.json): give a new or empty one")
    keep = marker.exists() and json.loads(marker.read_text()).get("recorded") == want
    for d in STAGES:
        if (work / d).exists() and not (keep and d == "doom"):
            shutil.rmtree(work / d)
    work.mkdir(parents=True, exist_ok=True)
    marker.write_text(json.dumps({"recorded": want if keep else None}))
    return marker


def int8_programs(model, ae, scale, latents, out, steps, n=8):
    """PTQ (common/quant.py, XNNPACK quantizer) of the denoise step and the decoder, calibrated on the DDIM
    trajectories and latents of n train windows, lowered to XNNPACK .pte -> (step, decoder) programs."""
    step_net, dec_net = DenoiseStep(model, model.cfg.guidance).eval(), DecodeFrame(ae, scale).eval()
    ds, g, ts = (
        LatentSequences(latents, "train", model.cfg.context),
        torch.Generator().manual_seed(0),
        torch.linspace(1, 0, steps + 1),
    )
    step_calib, dec_calib = [], []
    with torch.no_grad():
        for i in torch.linspace(0, len(ds) - 1, n).long().tolist():
            it = ds[i]
            x, bucket = torch.randn(1, *it["target"].shape, generator=g), bucket_of(torch.zeros(1), model.cfg)
            for k in range(steps):
                step_calib.append(
                    (x, ts[k : k + 1], ts[k + 1 : k + 2], it["context"][None], it["actions"][None], bucket)
                )
                x = step_net(*step_calib[-1])
            dec_calib += [(it["target"][None],), (x,)]
    programs = []
    for name, net, calib in (("denoise_step", step_net, step_calib), ("decoder", dec_net, dec_calib)):
        q = quant.ptq(net, calib[0], calib, backend="xnnpack")
        lower_xnnpack(torch.export.export(q, calib[0]), out / name / "model.pte")
        programs.append(load_pte(out / name / "model.pte"))
    return tuple(programs)


def main():
    args, work, res = harness.cli("gamengen", __doc__)
    b = BUDGETS["quick" if args.quick else "full"]
    tcfg = train.PRESETS[b.preset]
    print(
        f"[bench] gamengen budget: {b.record_steps} recorded steps (random policy, {b.heldout:.0%} of episodes "
        "held out), "
        f"autoencoder {AE_FOR[b.preset]} {b.ae_steps} steps, denoiser {b.preset} {b.steps} steps of batch "
        f"{tcfg.batch_size}, "
        f"scaling {b.scaling_steps} steps, speed at {b.play_steps} DDIM steps x{b.repeats}; work dir {work}",
        flush=True,
    )
    torch.manual_seed(args.seed)
    load = os.getloadavg()[0]  # other work on the cores inflates every time below (threads stall)
    recorded = {"steps": b.record_steps, "seed": args.seed, "heldout": b.heldout, "policy": "random"}
    marker = fresh(work, recorded)

    # --- data and training (fixed budget), quality on held-out episodes -------------------------------------------
    doom, lat, seed = work / "doom", work / "latents", str(args.seed)
    t = {}
    t["record"], _ = run_script(
        [
            "gamengen/collect.py",
            "--policy",
            "random",
            "--steps",
            str(b.record_steps),
            "--seed",
            seed,
            "--heldout",
            str(b.heldout),
            "--out",
            str(doom),
        ],
        env={"TQDM_DISABLE": "1"},
    )
    marker.write_text(json.dumps({"recorded": recorded}))
    t["autoencoder"], _ = run_script(
        [
            "gamengen/train.py",
            "ae",
            "--data",
            str(doom),
            "--out",
            str(work / "ae"),
            "--preset",
            AE_FOR[b.preset],
            "--steps",
            str(b.ae_steps),
            "--seed",
            seed,
        ],
        quiet=True,
    )
    t["encode"], _ = run_script(
        [
            "gamengen/train.py",
            "encode",
            "--data",
            str(doom),
            "--ckpt",
            str(work / "ae" / "ckpt" / "latest"),
            "--out",
            str(lat),
        ],
        quiet=True,
    )
    common = [
        "diffusion",
        "--data",
        str(lat),
        "--preset",
        b.preset,
        "--seed",
        seed,
        "--device",
        "cpu",
        "--log-level",
        "quiet",
    ]
    t["diffusion"], train_rss = run_script(
        ["gamengen/train.py", *common, "--out", str(work / "diffusion"), "--max-steps", str(b.steps)]
    )
    model_path = (
        work / "diffusion" / "ckpt" / "latest"
    )  # the model at the end of the budget: nothing picked on held-out data
    run_script(
        [
            "gamengen/evaluate.py",
            "--model-path",
            str(model_path),
            "--data",
            str(lat),
            "--out",
            str(work / "eval"),
            "--steps",
            str(b.play_steps),
            "--windows",
            str(b.windows),
            "--episodes",
            str(b.episodes),
        ]
    )
    r = json.loads((work / "eval" / "results.json").read_text())
    tf, ar = r["teacher_forced"], r["autoregressive"]
    if not ar:
        sys.exit(
            f"error: no held-out episode of {work / 'doom'} is long enough for the 32-step rollout: record more steps"
        )
    for metric, unit in (("psnr", "dB"), ("ssim", "")):
        base = {"copy_last_frame": tf["copy_last"][metric], "autoencoder_ceiling": tf["autoencoder"][metric]}
        res.add(
            f"teacher_forced_{metric}",
            "fp32",
            tf["model"][metric],
            unit,
            True,
            base | ({"goal": tf["copy_last"]["psnr"] + 4} if metric == "psnr" else {}),
        )
    for k in (1, 8, 16, 32):
        res.add(
            "autoregressive_psnr",
            f"step {k}",
            ar["model"][k - 1],
            "dB",
            True,
            {"copy_last_frame": ar["copy_last"][k - 1]},
        )

    # --- speed of a played frame ------------------------------------------------------------------------------------
    (model, _), (ae, _) = train.load_denoiser(model_path), load_ae(work / "ae" / "ckpt" / "latest")
    episodes = Episodes(lat, model.cfg.context)
    window, scale = episodes.window(episodes.ids[0]), episodes.ds.scale  # a held-out episode's first N steps
    run_script(
        [
            "gamengen/export.py",
            "--model-path",
            str(model_path),
            "--data",
            str(lat),
            "--out",
            str(work / "export"),
            "--no-vgf",
            "--steps",
            str(b.play_steps),
        ],
        quiet=True,
    )
    pte = {
        "pte_xnnpack_fp32": tuple(
            load_pte(work / "export" / part / "model.pte") for part in ("denoise_step", "decoder")
        )
    }
    notes = []
    try:
        pte["pte_xnnpack_int8"] = int8_programs(model, ae, scale, lat, work / "export_int8", b.play_steps)
    except Exception as e:  # recorded, never a made-up number
        notes.append(f"int8 (quant.ptq backend=xnnpack) failed: {type(e).__name__}: {(str(e).splitlines() or [''])[0]}")
        print(f"[bench] {notes[-1]}", flush=True)

    noise = torch.randn(
        1, model.cfg.latent_channels, *model.cfg.latent_size, generator=torch.Generator().manual_seed(args.seed)
    )

    def played(programs=None):  # one played frame from fixed noise, in [0, 1]
        step = (lambda *inputs: programs[0](list(inputs))[0]) if programs else None
        z = sample(model, window[0][None], window[1][None], b.play_steps, noise=noise, step=step)
        return programs[1]([z])[0] if programs else DecodeFrame(ae, scale)(z)

    with torch.no_grad():
        ref = played()
        for variant, programs in pte.items():
            res.add("pte_max_abs_error", variant, max_abs_error([played(programs)], [ref]), "", False)

    def engine(programs=None):
        e = Engine(model, ae, scale, steps=b.play_steps, pte=programs)
        e.reset(*window)
        return e

    def bf16(e):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            return e.step(2)

    peak = harness.peak_gflops()
    res.add("matmul_peak", "fp32", peak, "GFLOP/s", True)
    flops = harness.count_flops(lambda: engine().step(2))
    res.add("flops_per_frame", "fp32", flops / 1e9, "GFLOP", False)
    runs = {"eager_fp32": lambda e=engine(): e.step(2), "eager_bf16": lambda e=engine(): bf16(e)}
    runs |= {variant: lambda e=engine(programs): e.step(2) for variant, programs in pte.items()}
    for variant, fn in runs.items():
        ms = median_ms(fn, b.repeats)
        res.add("ms_per_frame", variant, ms, "ms", False)
        res.add("fps", variant, 1e3 / ms, "frames/s", True, {"goal": 20})
        res.add("share_of_peak", variant, 100 * flops / (ms * 1e-3) / 1e9 / peak, "%", True)

    # --- training cost of the denoiser -----------------------------------------------------------------------------
    train_set = LatentSequences(lat, "train", model.cfg.context)
    net = Denoiser(model.cfg).train()
    ema = copy.deepcopy(net).requires_grad_(False)
    opt = torch.optim.AdamW(net.parameters(), lr=tcfg.lr, weight_decay=tcfg.weight_decay)

    def opt_step():  # what train.py does after backward: clip, step, EMA
        torch.nn.utils.clip_grad_norm_(net.parameters(), tcfg.grad_clip)
        opt.step()
        with torch.no_grad():
            for pe, pm in zip(ema.parameters(), net.parameters()):
                pe.lerp_(pm, 1 - tcfg.ema)

    g = torch.Generator().manual_seed(args.seed)
    cost = harness.step_breakdown(
        lambda: train.batch_of(train_set, torch.randint(len(train_set), (tcfg.batch_size,), generator=g), "cpu"),
        lambda x: training_loss(net, x["target"], x["context"], x["actions"], x["valid"], generator=g),
        SimpleNamespace(zero_grad=opt.zero_grad, step=opt_step),
        steps=b.repeats,
        samples=tcfg.batch_size,
    )
    res.add("train_windows_per_s", "1 process", cost["samples_per_s"], "windows/s", True)
    for part in ("data", "forward", "backward", "optimizer"):
        res.add("step_ms", part, cost[part], "ms", False)
    res.add("data_loading_share", "fp32", 100 * cost["data_share"], "%", False, {"goal": 5})
    res.add("peak_rss", "train.py diffusion", train_rss, "MiB", False)
    for stage, n in (
        ("record", b.record_steps),
        ("autoencoder", b.ae_steps),
        ("encode", b.record_steps),
        ("diffusion", b.steps),
    ):
        res.add(
            "train_wall_time", f"{stage} {n} {'frames' if stage == 'encode' else 'steps'}", t[stage] / 60, "min", False
        )
    one, two, speedup = harness.scaling(
        "gamengen/train.py",
        [*common, "--log-every", str(max(1, b.scaling_steps // 5))],
        work / "scaling",
        b.scaling_steps,
        "windows_per_s",
    )
    res.add("train_windows_per_s", "torchrun x2", two, "windows/s", True, {"1 process": one})
    res.add("ddp_speedup", "2 vs 1 process", speedup, "x", True)

    index = json.loads((doom / "index.json").read_text())
    held = sum(e["split"] == "heldout" for e in index["episodes"].values())
    res.write(
        notes=[
            f"budget: {b.record_steps} recorded steps, autoencoder ({AE_FOR[b.preset]}) {b.ae_steps} steps, denoiser "
            f"({b.preset}, {sum(q.numel() for q in model.parameters()):,} params) {b.steps} steps of batch "
            f"{tcfg.batch_size}; "
            "both used as they are at their last step (ckpt/latest: no checkpoint picked on held-out data)",
            "data: ViZDoom deathmatch played by a uniformly random policy (collect.py --policy random, seed "
            f"{args.seed}): "
            f"{len(index['episodes'])} episodes, {held} held out whole; quality on {tf['windows']} held-out windows "
            f"(teacher forced) and {ar['episodes']} held-out episodes (autoregressive, recorded actions)",
            f"a played frame = play.py's Engine.step: {b.play_steps} DDIM steps, guidance {model.cfg.guidance} "
            "(conditional "
            f"+ unconditional as a batch of 2), + decode, batch 1, {torch.get_num_threads()} threads; eager_bf16 = "
            "torch.autocast('cpu', bfloat16); pte = gamengen/export.py's XNNPACK programs; int8 = quant.ptq(backend="
            "'xnnpack') of both, calibrated on 8 train windows; pte_max_abs_error: a played frame in [0, 1] vs "
            "eager fp32",
            "share_of_peak = FLOPs per frame / time / the fp32 matmul peak measured in this run; torchrun gives each "
            f"of its 2 processes 1 thread; load average at the start {load:.1f} on {os.cpu_count()} cores",
            *notes,
        ]
    )


if __name__ == "__main__":
    main()
