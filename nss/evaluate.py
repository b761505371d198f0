"""Evaluation of NSS on whole held-out captures, frame by frame with persistent history (reset at camera
cuts), against the non-learned baselines: bilinear, bicubic and TAA upsampling. Metrics in tonemapped
space (exposure, then the dataset tonemapper): PSNR, SSIM, tPSNR. Writes a comparison grid PNG
(Bilinear | TAA | NSS | GT with zoomed crops). Called by `python nss/train.py --evaluate --model-path CKPT`.
"""
import json
import math
from pathlib import Path

import torch
import torch.nn.functional as F
from common.log import progress as progress_bar

from common.images import grid, karis, reinhard, srgb
from common.metrics import mean_finite, psnr, ssim, temporal_psnr
from nss.dataset import list_captures, stream
from nss.model import taa_upsample

METHODS = ["bilinear", "bicubic", "taa", "nss"]


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


@torch.no_grad()
def evaluate(model, data, device, tonemapper="reinhard", exposure=None, out_dir=None, max_frames=None,
             methods=METHODS, progress=True):
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
                preds["bicubic"] = F.interpolate(f["colour"], size=(H, W), mode="bicubic", align_corners=False).clamp_min(0)
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
            grid([[srgb(shown[c]) for c in cols]], [c.upper() if c != "nss" else "NSS" for c in cols],
                 out_dir / "comparison.png", crop=(H // 2 - s // 2, W // 2 - s // 2, s), zoom=max(1, W // (2 * s)))
    return results


def table(results, title="NSS vs baselines (held-out, tonemapped)"):
    """A Markdown table of the results (also fine in a terminal)."""
    lines = [f"{title}: {results.get('frames', '?')} frames", "",
             "| method | PSNR (dB) | SSIM | tPSNR (dB) |", "|---|---|---|---|"]
    for m in METHODS:
        if m in results:
            r = results[m]
            lines.append(f"| {m} | {r['psnr']:.2f} | {r['ssim']:.4f} | {r['tpsnr']:.2f} |")
    return "\n".join(lines)
