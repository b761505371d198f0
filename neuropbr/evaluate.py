"""NeuroPBR evaluation on held-out materials: per-map PSNR, SSIM, MAE, RMSE and the normal-angle error
(mean / median / p95, degrees), for the model and two baselines:
  mean_material  the training set's mean albedo colour, roughness and metallic everywhere, and a flat normal
                 (0, 0, 1): its normal angle is how far the surface is from flat
  view_average   the average of the three views as albedo (the rest from mean_material)
plus image grids per sample: the input views, then per map pred | GT | error heat-map.

    from neuropbr.evaluate import evaluate, table
    res = evaluate(generator, val_set, train_set, "cpu", out_dir="runs/pbr/eval")

    python neuropbr/evaluate.py [--model-path CKPT] [--data DIR] --out OUT   # = python neuropbr/train.py --evaluate

takes train.py's flags (default: the shipped weights on the built-in held-out materials).
"""

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch

from common.images import grid
from common.log import progress as progress_bar
from common.metrics import normal_angle_deg, psnr, ssim

MAPS = ("albedo", "roughness", "metallic", "normal")


def mean_material(dataset, max_samples=64):
    """Per-map mean over (a subset of) a dataset: albedo (3,), roughness, metallic; and the flat normal."""
    n = min(len(dataset), max_samples)
    acc = {k: 0.0 for k in MAPS}
    for i in range(n):
        item = dataset[i]
        for k in MAPS:
            acc[k] = acc[k] + item[k].mean(dim=(-2, -1))
    acc = {k: v / n for k, v in acc.items()}
    acc["normal"] = torch.tensor([0.0, 0.0, 1.0])  # flat
    return acc


def baseline(kind, views, mean):
    h, w = views.shape[-2:]
    out = {k: mean[k].view(1, -1, 1, 1).expand(views.shape[0], -1, h, w).to(views.device) for k in MAPS}
    if kind == "view_average":
        out["albedo"] = views.mean(1)
    return out


def heat(err):
    """(1, H, W) error in [0, 1] -> RGB heat-map (black -> red -> yellow -> white)."""
    e = (err / 0.25).clamp(0, 1)
    return torch.cat([(3 * e).clamp(0, 1), (3 * e - 1).clamp(0, 1), (3 * e - 2).clamp(0, 1)], 0)


def show(k, x):
    """A map as an RGB image in [0, 1] for grids."""
    x = x * 0.5 + 0.5 if k == "normal" else x
    return x.expand(3, -1, -1) if x.shape[0] == 1 else x


def scores(pred, gt):
    """Per-map metrics of one batch -> {map: {metric: value}} (normal: also angle stats)."""
    res = {}
    for k in MAPS:
        p, g = (pred[k] * 0.5 + 0.5, gt[k] * 0.5 + 0.5) if k == "normal" else (pred[k], gt[k])
        d = p.float() - g.float()
        res[k] = {
            "psnr": float(psnr(p.clamp(0, 1), g)),
            "ssim": float(ssim(p.clamp(0, 1), g)),
            "mae": float(d.abs().mean()),
            "rmse": float(d.pow(2).mean().sqrt()),
        }
    ang = normal_angle_deg(pred["normal"], gt["normal"]).flatten()
    res["normal"].update(
        angle_mean=float(ang.mean()),
        angle_median=float(ang.median()),
        angle_p95=float(torch.quantile(ang, 0.95)) if ang.numel() < 16_000_000 else float("nan"),
    )
    return res


def average(rows):
    return {k: {m: sum(r[k][m] for r in rows) / len(rows) for m in rows[0][k]} for k in rows[0]}


@torch.no_grad()
def evaluate(gen, val_set, train_set, device, out_dir=None, max_samples=None, progress=True, grids=4):
    """Metrics over val_set (baselines too when train_set is given); writes grids and results.json to out_dir."""
    gen.eval()
    n = len(val_set) if max_samples is None else min(len(val_set), max_samples)
    mean = mean_material(train_set) if train_set is not None else None
    rows = {"model": []} | ({"mean_material": [], "view_average": []} if mean else {})
    out_dir = Path(out_dir) if out_dir else None
    for i in progress_bar(range(n), desc="eval", unit="sample", disable=not progress, leave=False):
        item = val_set[i]
        gt = {k: item[k][None].to(device) for k in MAPS}
        views = item["views"][None].to(device)
        preds = {"model": gen(views)}
        if mean:
            preds.update({b: baseline(b, views, mean) for b in ("mean_material", "view_average")})
        for name, p in preds.items():
            rows[name].append(scores(p, gt))
        if out_dir is not None and i < grids:
            p = preds["model"]
            views_row = [v.cpu() for v in item["views"]] + [torch.zeros(3, *views.shape[-2:])]
            map_rows = [
                [
                    show(k, p[k][0].cpu()),
                    show(k, gt[k][0].cpu()),
                    heat((show(k, p[k][0]) - show(k, gt[k][0])).abs().mean(0, keepdim=True).cpu()),
                    torch.zeros(3, *views.shape[-2:]),
                ]
                for k in MAPS
            ]
            grid(
                [views_row] + map_rows,
                ["view 0 | pred", "view 1 | GT", "view 2 | |error|", ""],
                out_dir / f"sample_{i:02d}_{item['material']}.png",
                zoom=1,
            )
    res = {name: average(r) for name, r in rows.items()}
    m = res["model"]
    # one number for "best": albedo PSNR minus the normal angle / 2, plus the roughness/metallic MAE terms
    res["score"] = (
        m["albedo"]["psnr"] - m["normal"]["angle_mean"] / 2 - 20 * (m["roughness"]["mae"] + m["metallic"]["mae"])
    )
    res["flat"] = {f"{k}_{mk}": v for k, d in m.items() for mk, v in d.items()}
    res["samples"] = n
    if out_dir is not None:
        out_dir.mkdir(parents=True, exist_ok=True)
        (out_dir / "results.json").write_text(json.dumps(res, indent=2))
    return res


def table(res):
    lines = [
        f"NeuroPBR on {res['samples']} held-out samples (unseen materials)",
        "",
        "| method | albedo PSNR | albedo SSIM | rough MAE | metal MAE | normal PSNR | normal angle mean / median "
        "/ p95 (°) |",
        "|---|---|---|---|---|---|---|",
    ]
    for name in ("mean_material", "view_average", "model"):
        if name in res:
            r = res[name]
            n = r["normal"]
            lines.append(
                f"| {name} | {r['albedo']['psnr']:.2f} | {r['albedo']['ssim']:.4f} | {r['roughness']['mae']:.4f} | "
                f"{r['metallic']['mae']:.4f} | {n['psnr']:.2f} | {n['angle_mean']:.2f} / {n['angle_median']:.2f} / "
                f"{n['angle_p95']:.2f} |"
            )
    return "\n".join(lines)


def evaluate_checkpoint(gen, test_set, train_set, rt, out, logger):
    """train.py --evaluate: a trained generator (default: the shipped weights) on the held-out set vs the mean
    material and the view average -> OUT/eval (results.json, picture grids) and the table in the log."""
    res = evaluate(gen.to(rt.device), test_set, train_set, rt.device, out / "eval")  # writes results.json
    logger.info(table(res))
    return res


if __name__ == "__main__":  # the same flags as train.py, evaluation only
    from neuropbr import train

    sys.argv.insert(1, "--evaluate")
    train.main()
