"""NeuroPBR inference: three views of a material -> albedo.png, roughness.png, metallic.png, normal.png at the
views' resolution (2048x2048 and beyond on a CPU: the network runs in tiles that carry their full receptive field,
so the maps equal one whole-image pass), plus the inputs as fed to the network.

    python neuropbr/infer.py --input-dir my_material/ --out maps/                 # 0.png 1.png 2.png, shipped weights
    python neuropbr/infer.py --checkpoint runs/pbr/ckpt/best --data runs/pbr/data --sample-idx 3 --out out/
    python neuropbr/infer.py --input-dir big/ --out maps/ --work-size 256          # run at 256 px, maps upsampled

Views are rectified photos or renders of a flat sample (pixel (i, j) of each view shows the same texel), RGB in
[0, 1]; any size (padded to a multiple of 32 at the edges). Without --checkpoint the shipped weights
(neuropbr/weights/neuropbr) are used. The network learned materials at the scale of its training renders (the
checkpoint's image size for a whole sample): much larger inputs can do better with --work-size near that size.
"""

import argparse
import resource
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch
import torch.nn.functional as F
from torchvision.io import ImageReadMode

from common import ckpt
from common.images import save_png
from common.runtime import fail
from neuropbr.dataset import DataError, PBRDataset, read_png, resize
from neuropbr.model import Generator, ModelConfig, receptive_radius, stride

SHIPPED = Path(__file__).resolve().parent / "weights" / "neuropbr"


def load_views(folder):
    """folder/{0,1,2}.png -> (3, 3, H, W) in [0, 1]; the three views must have one size."""
    views = []
    for v in range(3):
        path = Path(folder) / f"{v}.png"
        if not path.exists():
            raise DataError(f"{path}: missing view (the input folder needs 0.png, 1.png and 2.png)")
        views.append(read_png(path, ImageReadMode.RGB))
    if len({tuple(v.shape) for v in views}) > 1:
        raise DataError(f"{folder}: views of different sizes {[tuple(v.shape[1:]) for v in views]} (H, W)")
    return torch.stack(views)


def load_generator(path):
    """A NeuroPBR checkpoint directory (a training checkpoint or the shipped fp16 weights) -> (generator, meta);
    a train.py --qat checkpoint gives its int8 graph (neuropbr/quantize.py), which runs at any size, slowly."""
    weights, _, meta = ckpt.load(path, with_state=False)
    if meta.get("model_type") == "qat_int8":
        from neuropbr.quantize import Int8Generator, load_qat

        return Int8Generator(load_qat(weights, meta)).eval(), meta
    return generator_from(weights, meta), meta


def generator_from(weights, meta):
    """An fp32 checkpoint's loaded (weights, meta) -> its generator, in eval mode."""
    gen = Generator(ModelConfig(**meta["model"]))
    ckpt.load_into(gen, {k: v.float() for k, v in weights.items()}, prefix="gen")
    return gen.eval()


@torch.no_grad()
def predict(gen, views, tile=1024):
    """views (3, 3, H, W) -> dict of maps (C, H, W). Inputs are edge-padded to a multiple of the encoder's stride;
    larger than `tile`, they run in tiles of `tile` px that read receptive_radius(gen) px of context around them
    (rounded up to the stride, so every tile sees the same pixel grid as the whole image): the result equals one
    whole-image pass. Global attention sees the whole image: such a model always runs whole."""
    s = stride(gen)
    H, W = views.shape[-2:]
    x = F.pad(views, (0, -W % s, 0, -H % s), mode="replicate")[None]
    Hp, Wp = x.shape[-2:]
    tile = max(s, tile // s * s)
    if gen.cfg.attention == "global" or (Hp <= tile and Wp <= tile):
        return {k: v[0, :, :H, :W] for k, v in gen(x).items()}
    m = -(-receptive_radius(gen) // s) * s
    out = {}
    for y0 in range(0, Hp, tile):
        for x0 in range(0, Wp, tile):
            y1, x1 = min(Hp, y0 + tile), min(Wp, x0 + tile)
            a, c = max(0, y0 - m), max(0, x0 - m)
            part = gen(x[..., a : min(Hp, y1 + m), c : min(Wp, x1 + m)])
            for k, v in part.items():
                out.setdefault(k, v.new_empty(v.shape[1], Hp, Wp))[:, y0:y1, x0:x1] = v[
                    0, :, y0 - a : y1 - a, x0 - c : x1 - c
                ]
    return {k: v[:, :H, :W] for k, v in out.items()}


def main():
    p = argparse.ArgumentParser(
        description=__doc__.split("\n")[0],
        epilog=__doc__.split("\n", 1)[1],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--checkpoint", default=str(SHIPPED), help="checkpoint directory (default: the shipped weights)")
    p.add_argument("--input-dir", help="a folder with the three views 0.png, 1.png, 2.png")
    p.add_argument("--data", help="a dataset root (input/, output/) to take --sample-idx from")
    p.add_argument("--sample-idx", type=int, help="index of a sample of --data (clean renders, sorted)")
    p.add_argument("--out", required=True, help="output folder for the four maps and the inputs")
    p.add_argument(
        "--work-size",
        type=int,
        default=0,
        help="run the network at this square size and resize the maps "
        "back to the input's size (default 0: at the input's own resolution)",
    )
    p.add_argument(
        "--tile",
        type=int,
        default=1024,
        help="largest tile side, in pixels, the network runs on (memory "
        "grows with its square; the result does not depend on it)",
    )
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"], help="auto = cuda if available")
    args = p.parse_args()
    device = torch.device(
        "cuda"
        if args.device == "auto" and torch.cuda.is_available()
        else "cpu"
        if args.device == "auto"
        else args.device
    )
    if args.work_size < 0 or args.tile < 32:
        fail("--work-size >= 0 and --tile >= 32")
    try:
        gen, meta = load_generator(args.checkpoint)
        if args.input_dir:
            views, name = load_views(args.input_dir), Path(args.input_dir).name
        elif args.data and args.sample_idx is not None:
            ds = PBRDataset(Path(args.data) / "input", Path(args.data) / "output")
            if not 0 <= args.sample_idx < len(ds):
                raise DataError(f"--sample-idx {args.sample_idx}: the dataset has {len(ds)} samples")
            item = ds[args.sample_idx]
            views, name = item["views"], item["name"]
        else:
            fail("give --input-dir FOLDER, or --data ROOT with --sample-idx N")
    except (DataError, ckpt.CheckpointError) as e:
        fail(str(e))
    except KeyError as e:
        fail(f"{args.checkpoint}: not a NeuroPBR checkpoint (no {e} in meta.json)")
    size = tuple(views.shape[-2:])
    work = resize(views, (args.work_size, args.work_size)) if args.work_size else views
    t0 = time.time()
    maps = {k: v.cpu() for k, v in predict(gen.to(device), work.to(device), args.tile).items()}
    dt = time.time() - t0
    if args.work_size:
        maps = {k: resize(v, size) for k, v in maps.items()}
        maps["normal"] = F.normalize(maps["normal"], dim=0)
    out = Path(args.out)
    for k, v in maps.items():
        save_png(v * 0.5 + 0.5 if k == "normal" else v, out / f"{k}.png")
    for i, v in enumerate(work):
        save_png(v, out / f"input_{i}.png")
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # Linux: KiB
    print(
        f"{name}: albedo, roughness, metallic, normal ({size[1]}x{size[0]}, + input_0..2) written to {out} | "
        f"network {dt:.1f} s at {work.shape[-1]}x{work.shape[-2]} | peak RSS {rss:.2f} GiB"
    )


if __name__ == "__main__":
    main()
