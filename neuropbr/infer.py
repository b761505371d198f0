"""NeuroPBR inference: three views of a material -> albedo.png, roughness.png, metallic.png, normal.png
(plus the inputs, as fed to the network), with the same preprocessing as training (resize to the
checkpoint's image size, [0, 1] RGB; the model normalises).

    python neuropbr/infer.py --checkpoint runs/pbr/ckpt/best --input-dir my_material/ --out out/   # 0.png 1.png 2.png
    python neuropbr/infer.py --checkpoint runs/pbr/ckpt/best --data runs/pbr/data --sample-idx 3 --out out/
"""
import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch
import torch.nn.functional as F
from torchvision.io import ImageReadMode

from common import ckpt
from common.images import save_png
from common.runtime import fail
from neuropbr.dataset import DataError, PBRDataset, read_png
from neuropbr.model import Generator, ModelConfig


def load_views(folder, size):
    """folder/{0,1,2}.png -> (3, 3, size, size) in [0, 1]."""
    views = []
    for v in range(3):
        path = Path(folder) / f"{v}.png"
        if not path.exists():
            raise DataError(f"{path}: missing view (the input folder needs 0.png, 1.png and 2.png)")
        img = read_png(path, ImageReadMode.RGB)
        views.append(F.interpolate(img[None], size=(size, size), mode="bilinear", antialias=True, align_corners=False)[0])
    return torch.stack(views)


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0], epilog=__doc__.split("\n", 1)[1],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", required=True, help="checkpoint directory (e.g. runs/pbr/ckpt/best)")
    p.add_argument("--input-dir", help="a folder with the three views 0.png, 1.png, 2.png")
    p.add_argument("--data", help="a dataset root (input/, output/) to take --sample-idx from")
    p.add_argument("--sample-idx", type=int, help="index of a sample of --data (clean renders, sorted)")
    p.add_argument("--out", required=True, help="output folder for the four maps and the inputs")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"], help="auto = cuda if available")
    args = p.parse_args()
    device = torch.device("cuda" if args.device == "auto" and torch.cuda.is_available() else
                          "cpu" if args.device == "auto" else args.device)
    try:
        weights, _, meta = ckpt.load(args.checkpoint, with_state=False)
        gen = Generator(ModelConfig(**meta["model"]))
        ckpt.load_into(gen, weights, prefix="gen")
        size = meta["config"]["image_size"]
        if args.input_dir:
            views, name = load_views(args.input_dir, size), Path(args.input_dir).name
        elif args.data and args.sample_idx is not None:
            ds = PBRDataset(Path(args.data) / "input", Path(args.data) / "output", image_size=size)
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
    gen.to(device).eval()
    with torch.no_grad():
        maps = {k: v[0].cpu() for k, v in gen(views[None].to(device)).items()}
    out = Path(args.out)
    for k, v in maps.items():
        save_png(v * 0.5 + 0.5 if k == "normal" else v, out / f"{k}.png")
    for i, v in enumerate(views):
        save_png(v, out / f"input_{i}.png")
    print(f"{name}: albedo, roughness, metallic, normal (+ input_0..2) written to {out}")


if __name__ == "__main__":
    main()
