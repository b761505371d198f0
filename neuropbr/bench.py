"""NeuroPBR benchmark: train on built-in data for a fixed number of steps, then measure, all in this one run:
  quality  albedo PSNR, roughness / metallic MAE and normal angle error on held-out materials (rendered with
           seed + 10000: materials, cameras and lights the training never saw) against the mean-material and
           view-average baselines (neuropbr/evaluate.py) and the goals below
  speed    ms per material (one sample: three views at the model's image size -> four maps) in eager fp32 and
           bf16 and as XNNPACK .pte fp32 and int8 (median of >= 10 runs after warm-up), FLOPs per material and
           the share of this machine's matmul peak
  cost     training samples/s, step-time breakdown (data / forward / backward / optimizer) of the generator
           step, peak RSS and wall time of train.py, and 1 process vs torchrun --nproc_per_node=2
Rows go to bench/results.json and bench/results.md (bench/harness.py).

    python neuropbr/bench.py             # cpu preset, 450 steps (bash run.sh bench neuropbr)
    python neuropbr/bench.py --quick     # tiny preset, a few minutes: the same rows, for tests
"""

import itertools
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch

from bench import harness
from common import ckpt, quant
from common.export import lower_xnnpack, max_abs_error
from common.runtime import median_ms, run_script
from common.runtimes import load_pte
from neuropbr.dataset import PBRDataset
from neuropbr.evaluate import evaluate
from neuropbr.model import ExportGenerator, Generator, ModelConfig
from neuropbr.synth import make_dataset
from neuropbr.train import PRESETS, batch_at, hybrid_loss, model_config


@dataclass
class Budget:
    preset: str
    steps: int  # training steps (batch of the preset)
    scaling_steps: int  # steps of each 1-vs-2-process run: under an epoch of the 2-process run (no evaluation inside)
    log_every: int  # train.py logs samples/s every N steps (the scaling runs' rows)
    materials: int  # built-in training materials (train.py keeps 10% of them as its validation set)
    heldout: int  # held-out materials for the quality rows
    repeats: int = 10
    calibration: int = 8  # int8: training samples to calibrate on


BUDGETS = {"full": Budget("cpu", 450, 24, 4, 240, 64), "quick": Budget("tiny", 24, 8, 2, 40, 8)}
# goals (README, Goals: albedo and MAE at the shipped-weights bar; the normal goal is a fraction of the flat
# normal's error, goal None here and set from the mean-material baseline below): (map, evaluate.py metric, row
# name, unit, higher is better, goal)
QUALITY = (
    ("albedo", "psnr", "albedo_psnr", "dB", True, 26),
    ("roughness", "mae", "roughness_mae", "", False, 0.06),
    ("metallic", "mae", "metallic_mae", "", False, 0.06),
    ("normal", "angle_mean", "normal_angle_error", "deg", False, None),
)
NORMAL_GOAL = 0.35  # x the flat normal's angle error (the mean_material baseline's normal is flat)


def synth(root, count, size, seed):
    """Built-in materials rendered once into root (kept between bench runs: same arguments, same PNGs)."""
    if not (root / "done").exists():
        print(f"[bench] rendering {count} materials ({size}², seed {seed}) into {root}", flush=True)
        make_dataset(root, count, size=size, seed=seed, progress=False)
        (root / "done").write_text("ok\n")
    return root


def main():
    args, work, res = harness.cli("neuropbr", __doc__)
    b = BUDGETS["quick" if args.quick else "full"]
    cfg = PRESETS[b.preset]
    print(
        f"[bench] neuropbr budget: preset {b.preset}, {b.steps} steps of batch {cfg.batch_size} at {cfg.image_size}², "
        f"{b.materials} training / {b.heldout} held-out materials, scaling {b.scaling_steps} steps, speed "
        f"x{b.repeats}; "
        f"work dir {work}",
        flush=True,
    )
    for d in ("train", "eval", "pte", "scaling"):  # a rerun starts from scratch; only the rendered data is reused
        shutil.rmtree(work / d, ignore_errors=True)
    torch.manual_seed(args.seed)
    data = synth(
        work / "data" / f"train_{b.materials}x{cfg.synth[1]}_seed{args.seed}", b.materials, cfg.synth[1], args.seed
    )
    held = synth(
        work / "data" / f"heldout_{b.heldout}x{cfg.synth[1]}_seed{args.seed + 10000}",
        b.heldout,
        cfg.synth[1],
        args.seed + 10000,
    )

    # --- training (fixed budget) and quality on held-out materials ------------------------------------------------
    common = ["--data", str(data), "--preset", b.preset, "--seed", str(args.seed), "--log-level", "quiet"]
    train_s, train_rss = run_script(
        ["neuropbr/train.py", "--out", str(work / "train"), "--max-steps", str(b.steps), *common]
    )
    weights, _, meta = ckpt.load(work / "train" / "ckpt" / "latest", with_state=False)
    gen = Generator(ModelConfig(**meta["model"]))
    ckpt.load_into(gen, weights, prefix="gen")
    kw = dict(render_curriculum=cfg.render_curriculum, image_size=cfg.image_size)
    train_set, _ = PBRDataset(data / "input", data / "output", **kw).split(
        cfg.val_fraction, cfg.val_seed
    )  # as train.py
    test_set = PBRDataset(held / "input", held / "output", **kw)
    r = evaluate(gen, test_set, train_set, "cpu", work / "eval", progress=False)
    for k, metric, name, unit, higher, goal in QUALITY:
        goal = NORMAL_GOAL * r["mean_material"]["normal"]["angle_mean"] if goal is None else goal
        res.add(
            name,
            "fp32",
            r["model"][k][metric],
            unit,
            higher,
            {b_: r[b_][k][metric] for b_ in ("mean_material", "view_average")} | {"goal": goal},
        )

    # --- speed of one material at the model's image size ----------------------------------------------------------
    net, notes = ExportGenerator(gen).eval(), []
    x = test_set[0]["views"][None]  # (1, 3 views, 3, S, S)
    peak = harness.peak_gflops()
    res.add("matmul_peak", "fp32", peak, "GFLOP/s", True)
    flops = harness.count_flops(lambda: net(x))
    res.add("flops_per_material", "fp32", flops / 1e9, "GFLOP", False)

    def lowered(name, graph):
        """XNNPACK .pte of graph() loaded in ExecuTorch's runtime, or None (the error goes to the notes)."""
        try:
            lower_xnnpack(torch.export.export(graph(), (x,)), work / "pte" / f"{name}.pte")
            return load_pte(work / "pte" / f"{name}.pte")
        except Exception as e:  # report, never fake a number
            notes.append(f"{name} failed: {type(e).__name__}: {(str(e).strip().splitlines() or [''])[0]}")

    calib = [(train_set[i]["views"][None],) for i in range(min(b.calibration, len(train_set)))]
    pte32 = lowered("pte_xnnpack_fp32", lambda: net)
    pte8 = lowered("pte_xnnpack_int8", lambda: quant.ptq(net, (x,), calib, backend="xnnpack"))
    if pte32:
        with torch.no_grad():
            res.add("pte_max_abs_error", "pte_xnnpack_fp32", max_abs_error(pte32([x]), list(net(x))), "", False)

    def bf16():
        with torch.autocast("cpu", dtype=torch.bfloat16):
            return net(x)

    variants = {"eager_fp32": lambda: net(x), "eager_bf16": bf16}
    variants.update({"pte_xnnpack_fp32": lambda: pte32([x])} if pte32 else {})
    variants.update({"pte_xnnpack_int8": lambda: pte8([x])} if pte8 else {})
    for variant, fn in variants.items():
        ms = median_ms(fn, b.repeats)
        res.add("ms_per_material", variant, ms, "ms", False)
        res.add("share_of_peak", variant, 100 * flops / (ms * 1e-3) / 1e9 / peak, "%", True)

    # --- training cost ---
    train_set.augment = True
    model = Generator(model_config(cfg)).train()
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.g_lr, betas=(0.5, 0.999), weight_decay=cfg.weight_decay)
    step = itertools.count()
    cost = harness.step_breakdown(
        lambda: batch_at(train_set, next(step), cfg, args.seed),
        lambda batch: hybrid_loss(model(batch["views"]), batch, cfg)[0],
        opt,
        steps=b.repeats,
        samples=cfg.batch_size,
    )
    res.add("train_samples_per_s", "1 process", cost["samples_per_s"], "samples/s", True)
    for part in ("data", "forward", "backward", "optimizer"):
        res.add("step_ms", part, cost[part], "ms", False)
    res.add("data_loading_share", "fp32", 100 * cost["data_share"], "%", False, {"goal": 5})
    res.add("peak_rss", "train.py", train_rss, "MiB", False)
    res.add("train_wall_time", f"{b.steps} steps", train_s / 60, "min", False)
    one, two, speedup = harness.scaling(
        "neuropbr/train.py",
        [*common, "--log-every", str(b.log_every)],
        work / "scaling",
        b.scaling_steps,
        "samples_per_s",
    )
    res.add("train_samples_per_s", "torchrun x2", two, "samples/s", True, {"1 process": one})
    res.add("ddp_speedup", "2 vs 1 process", speedup, "x", True)
    per_epoch = len(train_set) // cfg.batch_size
    res.write(
        notes=[
            f"budget: preset {b.preset}, {b.steps} steps of batch {cfg.batch_size} ({b.steps / per_epoch:.1f} epochs; "
            f"PatchGAN on from step {cfg.gan_start_epoch * per_epoch}); quality of the last checkpoint",
            f"data: built-in procedural materials (neuropbr/synth.py) at {cfg.image_size}², clean + dirty renders: "
            f"{len(train_set)} training materials (seed {args.seed}; train.py keeps 10% for validation), quality on "
            f"{len(test_set)} held-out materials (seed {args.seed + 10000}); goals from the README (Goals)",
            f"variants: speed of one material (a 1x3x3x{cfg.image_size}x{cfg.image_size} input), {b.repeats} runs "
            f"after 3 warm-up; int8 = PT2E PTQ with the XNNPACK quantizer calibrated on {len(calib)} training samples; "
            "share_of_peak = FLOPs per material / time / the fp32 matmul peak measured in this run",
            "step_ms and train_samples_per_s (1 process): the generator step (HybridLoss, no PatchGAN and no grad "
            f"clipping) timed in this process; torchrun x2 vs 1 process: train.py's samples/s over {b.scaling_steps} "
            "steps (before the PatchGAN starts)",
            *notes,
        ]
    )


if __name__ == "__main__":
    main()
