"""Evaluate Prism on held-out sequences against nearest and bilinear upsampling, for 2x and 3x.

Each sequence is streamed frame by frame from a zero GRU state, exactly as a game would run it; PSNR/SSIM
are averaged over frames, temporal PSNR (tPSNR) compares frame-to-frame changes with the ground truth's.
Writes comparison grids `Nearest | Bilinear | Prism | GT` (one per scale, with a zoomed crop) to out_dir.

    python prism/train.py --out runs/prism --evaluate --model-path runs/prism/ckpt/best
"""

import json
from pathlib import Path

import torch
import torch.nn.functional as F

from common import ckpt
from common.images import grid
from common.metrics import psnr, ssim, temporal_psnr
from prism.model import MODELS, Prism

METHODS = ("nearest", "bilinear", "prism")


def upsample(color, scale, mode):
    if mode == "nearest":
        return F.interpolate(color, scale_factor=scale, mode="nearest")
    return F.interpolate(color, scale_factor=scale, mode="bilinear", align_corners=False).clamp(0, 1)


@torch.no_grad()
def evaluate(model, dataset, device, out_dir=None, max_sequences=None):
    """-> {"2x": {method: {psnr, ssim, tpsnr}}, "3x": ..., "score": mean Prism PSNR gain over bilinear}."""
    model.eval()
    sums, counts, shown = {}, {}, {}
    seqs = dataset.sequences[:max_sequences] if max_sequences else dataset.sequences
    for seq in seqs:
        from safetensors.torch import load_file

        data = load_file(str(seq["path"]))
        s, key = seq["scale"], f"{seq['scale']}x"
        state = model.initial_state(1, *seq["size"], device=device)
        prev = {}
        for t in range(seq["frames"]):
            color, depth, motion = (data[k][t : t + 1].float().to(device) for k in ("color", "depth", "motion_vectors"))
            gt = data["ground_truth"][t : t + 1].float().to(device)
            pred, state = model(color, depth, motion, state, s)
            preds = {
                "nearest": upsample(color, s, "nearest"),
                "bilinear": upsample(color, s, "bilinear"),
                "prism": pred.clamp(0, 1),
            }
            for m, p in preds.items():
                acc = sums.setdefault(key, {}).setdefault(m, {"psnr": 0.0, "ssim": 0.0, "tpsnr": 0.0})
                acc["psnr"] += psnr(p, gt).item()
                acc["ssim"] += ssim(p, gt).item()
                if t:
                    acc["tpsnr"] += temporal_psnr(p, prev[m], gt, prev["gt"]).item()
            counts[key] = counts.get(key, 0) + 1
            counts[key + "_t"] = counts.get(key + "_t", 0) + (1 if t else 0)
            prev = dict(preds, gt=gt)
            if t == seq["frames"] - 1 and key not in shown:
                shown[key] = [preds["nearest"][0], preds["bilinear"][0], preds["prism"][0], gt[0]]
    res = {}
    for key, per_method in sums.items():
        res[key] = {
            m: {
                "psnr": v["psnr"] / counts[key],
                "ssim": v["ssim"] / counts[key],
                "tpsnr": v["tpsnr"] / max(1, counts[key + "_t"]),
            }
            for m, v in per_method.items()
        }
        res[key]["frames"] = counts[key]
    res["score"] = sum(res[k]["prism"]["psnr"] - res[k]["bilinear"]["psnr"] for k in sums) / max(1, len(sums))
    if out_dir is not None:
        out_dir = Path(out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        for key, imgs in shown.items():
            h, w = imgs[-1].shape[-2:]
            grid(
                [imgs],
                ["Nearest", "Bilinear", "Prism", "GT"],
                out_dir / f"grid_{key}.png",
                crop=(h // 3, w // 3, min(h, w) // 4),
                zoom=2,
            )
        (out_dir / "results.json").write_text(json.dumps(res, indent=2))
    return res


def evaluate_checkpoint(path, dataset, device, out_dir=None):
    """train.py --evaluate: the Prism of a checkpoint directory (its own architecture, from its meta) on dataset;
    a QAT checkpoint as its real int8 graph (what the .vgf computes), on the held-out sequences of its scale."""
    weights, _, meta = ckpt.load(path, with_state=False)
    if meta.get("model_type") == "qat_int8":
        from prism.quantize import Int8Prism, load_qat, one_scale

        model = Int8Prism(load_qat(weights, meta))
        dataset = one_scale(dataset, model.scale)
    else:
        model = Prism(MODELS[meta["config"]["model"]])
        ckpt.load_into(model, weights, prefix="model")
    return evaluate(model.to(device), dataset, device, out_dir)


def table(res):
    lines = ["| scale | method | PSNR (dB) | SSIM | tPSNR (dB) |", "|---|---|---|---|---|"]
    for key in sorted(k for k in res if k.endswith("x")):
        for m in METHODS:
            r = res[key][m]
            name = "**Prism**" if m == "prism" else m
            lines.append(f"| {key} | {name} | {r['psnr']:.2f} | {r['ssim']:.4f} | {r['tpsnr']:.2f} |")
        lines.append(
            f"| {key} | Prism − bilinear | {res[key]['prism']['psnr'] - res[key]['bilinear']['psnr']:+.2f} | | |"
        )
    return "\n".join(lines)
