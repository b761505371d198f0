"""Evaluation of NSS on whole held-out captures, frame by frame with persistent history (reset at camera
cuts), against the non-learned baselines: bilinear, bicubic and TAA upsampling. Metrics in tonemapped
space (exposure, then the dataset tonemapper): PSNR, SSIM, tPSNR. Writes a comparison grid PNG
(Bilinear | TAA | NSS | GT with zoomed crops).

    python nss/evaluate.py [--model-path CKPT] [--eval-data DIR] --out OUT   # = python nss/train.py --evaluate ...

takes train.py's flags (default: the shipped weights on the built-in held-out set); `evaluate_checkpoint` is that
evaluation-only entry point, `evaluate` the loop over captures that training's validation and report use too.
"""

import json
import math
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch
import torch.nn.functional as F

from common.images import grid, srgb
from common.log import progress as progress_bar
from common.metrics import psnr, ssim, temporal_psnr
from nss.dataset import list_captures, stream
from nss.model import taa_upsample
from nss.post_process import karis

METHODS = ["bilinear", "bicubic", "taa", "nss"]


def reinhard(x):
    return x / (1 + x)


def tonemap(x, name="reinhard"):
    """Arm's dataset tonemappers on exposure-scaled linear colour, clamped to [0, 1]."""
    if name == "reinhard":
        y = reinhard(x)
    elif name == "karis":
        y = karis(x)
    elif name == "log_norm":
        y = torch.log(x + 1) / math.log(65505)
    elif name == "aces":
        y = (x * (2.51 * x + 0.03)) / (x * (2.43 * x + 0.59) + 0.14)
    else:
        raise ValueError(f"unknown tonemapper {name}")
    return y.clamp(0, 1)


def mean_finite(values):
    """Mean of the finite entries (identical frames give PSNR = inf)."""
    v = [float(x) for x in values if math.isfinite(float(x))]
    return sum(v) / len(v) if v else float("nan")


@torch.no_grad()
def evaluate(
    model,
    data,
    device,
    tonemapper="reinhard",
    exposure=None,
    out_dir=None,
    max_frames=None,
    methods=METHODS,
    progress=True,
):
    """Stream every capture under `data`; returns {method: {psnr, ssim, tpsnr}} (means over frames;
    tPSNR over consecutive frames of the same sequence)."""
    model.eval()
    files = list_captures(data)
    scores = {m: {"psnr": [], "ssim": [], "tpsnr": []} for m in methods}
    shown = None
    bar = progress_bar(total=None, desc="eval", unit="frame", disable=not progress, leave=False)
    for path in files:
        prev = {}
        for t, (f, new_seq) in enumerate(stream(path, exposure)):
            if max_frames and t >= max_frames:
                break
            f = {k: v.to(device) for k, v in f.items()}
            e = f["exposure"]
            if new_seq:
                nss_state = model.init_state(f)
                taa_state = {"history": nss_state["history"], "valid": nss_state["valid"]}
                prev = {}
            H, W = f["ground_truth"].shape[-2:]
            preds = {}
            if "bilinear" in methods:
                preds["bilinear"] = F.interpolate(f["colour"], size=(H, W), mode="bilinear", align_corners=False)
            if "bicubic" in methods:
                preds["bicubic"] = F.interpolate(
                    f["colour"], size=(H, W), mode="bicubic", align_corners=False
                ).clamp_min(0)
            if "taa" in methods:
                preds["taa"], taa_state = taa_upsample(f, taa_state, model.cfg.scale)
            if "nss" in methods:
                out, nss_state = model(f, nss_state)
                preds["nss"] = out["output_linear"]
            y = tonemap(f["ground_truth"] * e, tonemapper)
            for m, p in preds.items():
                p = tonemap(p * e, tonemapper)
                scores[m]["psnr"].append(float(psnr(p, y)))
                scores[m]["ssim"].append(float(ssim(p, y)))
                if m in prev:
                    scores[m]["tpsnr"].append(float(temporal_psnr(p, prev[m][0], y, prev[m][1])))
                prev[m] = (p, y)
            if shown is None or (path == files[0] and not new_seq):
                shown = {m: prev[m][0][0].cpu() for m in preds} | {"gt": y[0].cpu()}
            bar.update(1)
    bar.close()
    results = {m: {k: mean_finite(v) for k, v in s.items()} for m, s in scores.items()}
    results["frames"] = len(scores[methods[0]]["psnr"])
    if out_dir is not None:
        out_dir = Path(out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        (out_dir / "results.json").write_text(json.dumps(results, indent=2))
        if shown is not None:
            cols = [c for c in ("bilinear", "taa", "nss") if c in shown] + ["gt"]
            H, W = shown["gt"].shape[-2:]
            s = max(16, min(H, W) // 4)
            grid(
                [[srgb(shown[c]) for c in cols]],
                [c.upper() if c != "nss" else "NSS" for c in cols],
                out_dir / "comparison.png",
                crop=(H // 2 - s // 2, W // 2 - s // 2, s),
                zoom=max(1, W // (2 * s)),
            )
    return results


def table(results, title="NSS vs baselines (held-out, tonemapped)"):
    """A Markdown table of the results (also fine in a terminal)."""
    lines = [
        f"{title}: {results.get('frames', '?')} frames",
        "",
        "| method | PSNR (dB) | SSIM | tPSNR (dB) |",
        "|---|---|---|---|",
    ]
    for m in METHODS:
        if m in results:
            r = results[m]
            lines.append(f"| {m} | {r['psnr']:.2f} | {r['ssim']:.4f} | {r['tpsnr']:.2f} |")
    return "\n".join(lines)


def evaluate_checkpoint(args, cfg, rt, out, logger, resolve_data):
    """train.py --evaluate: --model-path (default: the shipped weights; an Arm .pt too) as --model-type (fp32,
    ptq_int8 calibrated on training frames, qat_int8) on --eval-data (default: the held-out part of --data or of the
    built-in set, which resolve_data generates) vs the baselines -> OUT/eval/results.json, comparison.png, a table."""
    from common import runtime
    from nss.checkpoints import SHIPPED
    from nss.checkpoints import load as load_weights
    from nss.quantize import inference_model

    args.model_path = args.model_path or str(SHIPPED)
    if args.eval_data and args.model_type != "ptq_int8":  # no training frames needed: generate nothing
        train_dir, test_dir = None, Path(args.eval_data)
    else:
        train_dir, test_dir = resolve_data(args, cfg, rt, logger)
    try:
        weights, meta = load_weights(args.model_path)  # a checkpoint directory or an Arm .pt
        model, model_type = inference_model(
            weights, meta, args.model_type, train_dir, args.calibration_frames, args.model_path, args.quality
        )
    except (RuntimeError, KeyError) as e:
        runtime.fail(f"{args.model_path}: not an NSS checkpoint ({str(e).splitlines()[0]})")
    res = evaluate(
        model.to(rt.device), test_dir, rt.device, cfg.tonemapper, cfg.exposure, out / "eval", args.eval_frames
    )
    res["model_type"] = model_type
    (out / "eval" / "results.json").write_text(json.dumps(res, indent=2))
    logger.info(
        table(res, f"NSS ({model_type}) vs baselines (held-out, tonemapped)")
        + f"\n\ncomparison grid: {out / 'eval' / 'comparison.png'}"
    )


if __name__ == "__main__":  # the same flags as train.py, evaluation only
    from nss import train

    sys.argv.insert(1, "--evaluate")
    train.main()
