"""NSS benchmark: train on built-in data for a fixed number of steps, then measure, all in this one run:
  quality  PSNR / SSIM / tPSNR of fp32, ptq_int8 and qat_int8 on held-out sequences (seeds the training never
           saw) against bilinear, bicubic and TAA upsampling
  speed    ms per frame of the network at its deployment size (540p -> 1080p: a 1x12x544x960 input) in eager
           fp32 and bf16 and as XNNPACK .pte fp32 and int8 (median of >= 10 runs after warm-up), FLOPs per frame
           and the share of this machine's matmul peak; the pre- and post-process of that frame
           (--quick: a 136x240 frame and 3 runs, so that the test checks every row in minutes, not the speed)
  cost     training samples/s, step-time breakdown (data / forward / backward / optimizer), peak RSS, and
           1 process vs torchrun --nproc_per_node=2
Rows go to bench/results.json and bench/results.md (bench/harness.py).

    python nss/bench.py                  # cpu preset, 1200 steps + 300 QAT steps (bash run.sh bench nss)
    python nss/bench.py --quick          # tiny preset, speed at 136x240, ~3 min: what run.sh stress tests
"""

import copy
import json
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch

from bench import harness
from common import ckpt, quant
from common.export import lower_xnnpack, max_abs_error
from common.runtime import Runtime, median_ms, run_script
from common.runtimes import load_pte
from nss.dataset import NSSWindows
from nss.model import NSS, NSSConfig, SubpixelNet
from nss.post_process import post_process
from nss.pre_process import pre_process
from nss.quantize import calibration_inputs, example_input, fp32_net, image_dims
from nss.train import PRESETS, window_loss

DEPLOYMENT_FRAME = (540, 960)  # low-res frame at deployment (540p -> 1080p output); the speed goal is set for it


@dataclass
class Budget:
    preset: str
    steps: int  # fp32 training steps
    qat_steps: int  # QAT fine-tuning steps from the fp32 checkpoint
    scaling_steps: int  # steps of each 1-vs-2-process run
    frame: tuple = DEPLOYMENT_FRAME
    repeats: int = 10

    @property
    def size(self):  # the network input: the frame padded to a multiple of 8 (three stride-2 levels)
        return tuple(n + (-n) % 8 for n in self.frame)


# --quick checks every row, not the speed: a 136x240 frame (1/16 of 540p) and 3 runs (eager bf16 alone takes
# 15 s a frame at 540p on a CPU without bf16 instructions)
BUDGETS = {"full": Budget("cpu", 1200, 300, 60), "quick": Budget("tiny", 30, 20, 15, (136, 240), 3)}


def frame_and_state(frame, size):
    """A random but well-formed low-res frame and state (the pre/post-process cost does not depend on content)."""
    g = torch.Generator().manual_seed(0)
    h, w = frame
    f = {
        "colour": torch.rand(1, 3, h, w, generator=g),
        "depth": torch.rand(1, 1, h, w, generator=g),
        "motion_lr": 3 * torch.randn(1, 2, h, w, generator=g),
        "jitter": torch.tensor([0.2, -0.3]).view(1, 2, 1, 1),
        "exposure": torch.ones(1, 1, 1, 1),
        "depth_params": torch.tensor([1.001, -0.1, 1.0, 1.0]).view(1, 4, 1, 1),
        "render_size": torch.tensor([float(h), float(w)]).view(1, 2, 1, 1),
    }
    state = {
        "history": torch.rand(1, 3, 2 * h, 2 * w, generator=g),
        "feedback": torch.rand(1, 4, *size, generator=g),
        "derivative": torch.zeros(1, 4, h, w),
        "valid": torch.ones(1, 1, 1, 1),
    }
    return f, state


def main():
    args, work, res = harness.cli("nss", __doc__, device=True)
    b = BUDGETS["quick" if args.quick else "full"]
    print(
        f"[bench] nss budget: preset {b.preset}, {b.steps} steps + {b.qat_steps} QAT steps, "
        f"scaling {b.scaling_steps} steps, speed at {b.size[0]}x{b.size[1]} x{b.repeats}; work dir {work}",
        flush=True,
    )
    torch.manual_seed(args.seed)
    for d in ("fp32/ckpt", "ptq", "qat", "pte", "scaling"):  # a rerun trains from scratch (the rendered data is kept)
        shutil.rmtree(work / d, ignore_errors=True)

    # --- training (fixed budget) and quality on held-out sequences -------------------------------------------------
    fp32_dir, data = work / "fp32", work / "fp32" / "data"
    dev = torch.device(
        "cuda" if args.device == "cuda" or args.device == "auto" and torch.cuda.is_available() else "cpu"
    )
    common = ["--preset", b.preset, "--seed", str(args.seed), "--log-level", "quiet", "--device", dev.type]
    train_s, train_rss = run_script(["nss/train.py", "--out", str(fp32_dir), "--max-steps", str(b.steps), *common])
    best = fp32_dir / "ckpt" / "latest"
    run_script(
        [
            "nss/train.py",
            "--evaluate",
            "--model-path",
            str(best),
            "--model-type",
            "ptq_int8",
            "--data",
            str(data),
            "--out",
            str(work / "ptq"),
            *common,
        ]
    )
    run_script(
        [
            "nss/train.py",
            "--qat",
            "--finetune",
            str(best),
            "--data",
            str(data),
            "--out",
            str(work / "qat"),
            "--max-steps",
            str(b.qat_steps),
            *common,
        ]
    )
    psnr = {}
    for variant, d in (("fp32", fp32_dir), ("ptq_int8", work / "ptq"), ("qat_int8", work / "qat")):
        r = json.loads((d / "eval" / "results.json").read_text())
        psnr[variant] = r["nss"]["psnr"]
        goal = max(r["bicubic"]["psnr"] + 3, r["taa"]["psnr"] + 1.5)  # README, Goals: TAA + 1.5 dB and bicubic + 3
        for metric, unit in (("psnr", "dB"), ("ssim", ""), ("tpsnr", "dB")):
            res.add(
                metric,
                variant,
                r["nss"][metric],
                unit,
                True,
                {m: r[m][metric] for m in ("bilinear", "bicubic", "taa")}
                | ({"goal": goal} if metric == "psnr" else {}),
            )
    for variant, goal in (("ptq_int8", 0.5), ("qat_int8", 0.05)):  # int8 within 0.5 dB (PTQ) / 0.05 dB (QAT) of fp32
        res.add("psnr_drop_vs_fp32", variant, psnr["fp32"] - psnr[variant], "dB", False, {"goal": goal})

    # --- speed at the deployment size ---
    weights, _, _ = ckpt.load(best, with_state=False)
    net = fp32_net(weights)
    x = torch.rand(1, 12, *b.size)
    peak = {"cpu": harness.peak_gflops()} | ({"cuda": harness.peak_gflops(dev)} if dev.type == "cuda" else {})
    for d, v in peak.items():
        res.add("matmul_peak", f"fp32 {d}", v, "GFLOP/s", True)
    flops = harness.count_flops(lambda: net(x))
    res.add("flops_per_frame", "fp32", flops / 1e9, "GFLOP", False)
    model = NSS(NSSConfig()).eval()
    model.net = net
    calib = calibration_inputs(model, data / "train", 16)  # real pre-processed frames, as export.py calibrates
    ex = example_input()
    # the CPU programs export.py writes (SubpixelNet: every upsample folded into the next conv, so XNNPACK takes the
    # whole graph) and, for comparison, the AutoEncoder as it is (XNNPACK lacks nearest upsampling: four partitions)
    forms = {"subpixel": SubpixelNet(net).eval(), "upsample form": net}
    pte = lambda kind, form: work / "pte" / f"{kind}_{form.replace(' ', '_')}.pte"
    for form, module in forms.items():
        int8 = quant.ptq(module, ex, [(c,) for c in calib], backend="xnnpack", dynamic_shapes=image_dims(ex))
        lower_xnnpack(torch.export.export(module, (x,)), pte("fp32", form))
        lower_xnnpack(torch.export.export(int8, (x,)), pte("int8", form))
    pte32, pte8 = load_pte(pte("fp32", "subpixel")), load_pte(pte("int8", "subpixel"))
    with torch.no_grad():
        res.add("pte_max_abs_error", "pte_xnnpack_fp32", max_abs_error(pte32([x]), list(net(x))), "", False)

    net_d, x_d = copy.deepcopy(net).to(dev), x.to(dev)

    def bf16():
        with torch.autocast(dev.type, dtype=torch.bfloat16):
            return net_d(x_d)

    on = "" if dev.type == "cpu" else f" {dev.type}"
    for variant, fn, d in (
        (f"eager_fp32{on}", lambda: net_d(x_d), dev),
        (f"eager_bf16{on}", bf16, dev),
        ("pte_xnnpack_fp32", lambda: pte32([x]), "cpu"),
        ("pte_xnnpack_int8", lambda: pte8([x]), "cpu"),
    ):
        ms = median_ms(fn, b.repeats, device=d)
        goal = {"goal": 30} if variant == "pte_xnnpack_int8" and b.frame == DEPLOYMENT_FRAME else {}
        res.add("ms_per_frame", variant, ms, "ms", False, goal)
        res.add("share_of_peak", variant, 100 * flops / (ms * 1e-3) / 1e9 / peak[torch.device(d).type], "%", True)
    # where the .pte time goes (ETDump), before (upsample form) and after (SubpixelNet), from this run
    for kind in ("fp32", "int8"):
        for form in reversed(forms):
            parts = harness.pte_profile(pte(kind, form), [x], runs=b.repeats)
            total = parts.pop("total")
            res.add("pte_ms_etdump", f"{kind} {form}: total", total, "ms", False)
            for part, ms in parts.items():  # medians of each op: shares of their sum
                res.add("pte_time_share", f"{kind} {form}: {part}", 100 * ms / sum(parts.values()), "%", False)

    # the non-learned pre- and post-process an engine runs as shaders, here in PyTorch on the CPU (low-res -> 2x)
    f, state = frame_and_state(b.frame, b.size)
    pre_ms = median_ms(lambda: pre_process(f, state), 3, warmup=1)
    x, aux = pre_process(f, state)
    kpn, tp = model.run_net(x)
    post_ms = median_ms(
        lambda: post_process(
            f["colour"],
            f["exposure"],
            f["jitter"],
            kpn,
            tp,
            aux["nearest_depth_offset"],
            f["motion_lr"],
            state["history"],
            state["valid"],
        ),
        3,
        warmup=1,
    )
    res.add("ms_per_frame", "pre_process (PyTorch, CPU)", pre_ms, "ms", False)
    res.add("ms_per_frame", "post_process (PyTorch, CPU)", post_ms, "ms", False)

    # --- training cost ---
    cfg = PRESETS[b.preset]
    train_set = NSSWindows(data / "train", cfg.recurrent_samples, cfg.crop, augment=True, exposure=cfg.exposure)
    model = NSS(NSSConfig()).to(dev).train()
    opt = torch.optim.AdamW(model.net.parameters(), lr=cfg.lr)
    rt = Runtime(device=dev, rank=0, world=1, ddp=False, amp_dtype=None)
    g = torch.Generator().manual_seed(args.seed)
    cost = harness.step_breakdown(
        lambda: {k: v.to(dev) for k, v in train_set.batch(cfg.batch_size, g).items()},
        lambda batch: window_loss(model, model.net, batch, cfg, g, rt),
        opt,
        steps=b.repeats,
        device=dev,
        samples=cfg.batch_size * cfg.recurrent_samples,
    )
    res.add("train_frames_per_s", "1 process", cost["samples_per_s"], "frames/s", True)
    for part in ("data", "forward", "backward", "optimizer"):
        res.add("step_ms", part, cost[part], "ms", False)
    res.add("data_loading_share", "fp32", 100 * cost["data_share"], "%", False, {"goal": 5})
    res.add("peak_rss", "train.py", train_rss, "MiB", False)
    if "cuda_max_allocated_mib" in cost:
        res.add("cuda_max_allocated", "train step", cost["cuda_max_allocated_mib"], "MiB", False)
    res.add("train_wall_time", f"{b.steps} steps", train_s / 60, "min", False)
    if torch.cuda.device_count() < 2:  # two processes need two GPUs; otherwise compare on the CPU
        common[-1] = "cpu"
    one, two, speedup = harness.scaling(
        "nss/train.py",
        ["--data", str(data), "--no-evaluate", *common],
        work / "scaling",
        b.scaling_steps,
        "frames_per_s",
    )
    res.add("train_frames_per_s", "torchrun x2", two, "frames/s", True, {"1 process": one})
    res.add("ddp_speedup", "2 vs 1 process", speedup, "x", True)
    res.write(
        notes=[
            f"budget: preset {b.preset}, {b.steps} fp32 steps; qat_int8 = {b.qat_steps} more QAT steps from "
            f"the fp32 checkpoint; ptq_int8 calibrated on 16 training frames",
            "quality on the held-out sequences (seed + 10000), Reinhard-tonemapped; speed on a "
            f"1x12x{b.size[0]}x{b.size[1]} network input ({b.frame[0]}x{b.frame[1]} -> 2x), {b.repeats} runs "
            "after 3 warm-up",
            "share_of_peak = FLOPs per frame / time / the fp32 matmul peak measured in this run",
            "the .pte rows are export.py's CPU programs (model.SubpixelNet); pte_ms_etdump and pte_time_share "
            "(ETDump, ExecuTorch's devtools): where their time goes, and the same for the AutoEncoder lowered "
            "as it is (upsample form: XNNPACK has no nearest upsample, so three ops run outside it)",
        ]
    )


if __name__ == "__main__":
    main()
