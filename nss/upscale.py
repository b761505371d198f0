"""Upscale NSS captures (Arm's format) to per-frame linear EXRs and tonemapped PNGs, and a comparison animation.

Every frame runs through NSS with its history carried frame to frame and reset at camera cuts, as evaluate.py
runs it; --compare adds a side-by-side animation per capture (bilinear | NSS | ground truth).

    python nss/upscale.py --data runs/scenes/text.safetensors --out runs/upscale              # the shipped weights
    python nss/upscale.py --data DIR/test --out runs/upscale --model-path runs/nss/ckpt/best --compare gif
    python nss/upscale.py --data CAPTURE --out OUT --model-type ptq_int8                      # int8, calibrated on it
    python nss/upscale.py --data CAPTURE --out OUT --pte runs/nss/export/model.pte            # --backend pte

--data is one .safetensors capture or a folder of them. Writes, per capture (its path under --data without the
suffix; for one file or a flat folder, its name):
    OUT/<capture>/exr/<frame:04d>.exr   NSS's linear HDR output (RGB, half), before exposure; needs OpenEXR
                                        (pip install -r nss/requirements.txt), skipped with a note without it
    OUT/<capture>/png/<frame:04d>.png   exposure, --tonemapper (Reinhard), sRGB
    OUT/<capture>/compare.gif|mp4       with --compare: bilinear | NSS | ground truth (mp4 needs `pip install av`)
and prints PSNR (tonemapped, vs the capture's ground truth) of NSS and bilinear per capture.

--backend pte runs the network of an ExecuTorch .pte from export.py in ExecuTorch's runtime (CPU); the pre- and
post-process stay in PyTorch. Its input size is fixed: the low-res frame padded to multiples of 8 (export.py
--size 544 960 for 540p frames). Bad input (a missing path, a file that is not a capture, a bad checkpoint or
.pte, a .pte of another size) prints one line and exits 2.
"""

import argparse
import importlib.util
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch
import torch.nn.functional as F
from PIL import Image, ImageDraw

from common.ckpt import CheckpointError
from common.images import save_png, srgb, to_uint8
from common.log import progress as progress_bar
from common.metrics import psnr
from common.runtime import fail, user_errors
from nss.checkpoints import SHIPPED, load
from nss.dataset import DataError, capture_header, list_captures, stream
from nss.evaluate import tonemap
from nss.quantize import MODEL_TYPES, inference_model

try:
    import OpenEXR
except ImportError:
    OpenEXR = None


def get_args(argv=None):
    p = argparse.ArgumentParser(
        description=__doc__.split("\n")[0],
        epilog=__doc__.split("\n", 1)[1],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--data", required=True, help="an NSS capture (.safetensors, Arm's layout) or a folder of them")
    p.add_argument("--out", default="runs/upscale", help="output folder: OUT/<capture>/{exr,png}/<frame>.{exr,png}")
    p.add_argument(
        "--model-path",
        default=str(SHIPPED),
        help="checkpoint directory or Arm .pt file (default: the shipped weights, nss/weights/nss_v1_high)",
    )
    p.add_argument(
        "--model-type",
        choices=MODEL_TYPES,
        help="eager backend: fp32, ptq_int8 (int8 calibrated on "
        "--data) or qat_int8 (a train.py --qat checkpoint); default: the checkpoint's",
    )
    p.add_argument("--calibration-frames", type=int, default=16, help="ptq_int8: frames of --data to calibrate on")
    p.add_argument(
        "--backend",
        choices=["eager", "pte"],
        help="eager: the network in PyTorch; pte: the network of "
        "--pte in ExecuTorch's runtime (CPU); default: pte when --pte is given, else eager",
    )
    p.add_argument("--pte", metavar="FILE", help="--backend pte: the .pte export.py wrote (OUT/model.pte)")
    p.add_argument(
        "--tonemapper",
        default="reinhard",
        choices=["reinhard", "karis", "log_norm", "aces"],
        help="tonemapper for the PNGs, the animation and PSNR",
    )
    p.add_argument(
        "--exposure", type=float, help="log-exposure override for every frame (default: the file's per-frame value)"
    )
    p.add_argument(
        "--exr",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="write the linear EXRs (default: when OpenEXR is installed; --exr makes it an error if not)",
    )
    p.add_argument("--compare", choices=["gif", "mp4"], help="also write a side-by-side animation per capture")
    p.add_argument("--fps", type=int, default=10, help="frame rate of the --compare animation")
    p.add_argument("--max-frames", type=int, default=None, help="upscale at most N frames per capture (default: all)")
    p.add_argument(
        "--device", default="auto", choices=["auto", "cpu", "cuda"], help="auto = cuda if available, else cpu"
    )
    args = p.parse_args(argv)
    args.backend = args.backend or ("pte" if args.pte else "eager")
    return args


def pte_net(path):
    """The network of an export.py .pte as NSS's `net`: x (1, 12, h8, w8) -> (kpn_params, temporal_params)."""
    from executorch.runtime import Runtime

    from common.runtimes import load_pte

    try:
        want = tuple(Runtime.get().load_program(str(path)).metadata("forward").input_tensor_meta(0).sizes())
        forward = load_pte(path)
    except (RuntimeError, ValueError) as e:
        raise CheckpointError(f"{path}: not an ExecuTorch program ({str(e).splitlines()[0]})") from None

    def net(x):
        if tuple(x.shape) != want:
            raise DataError(
                f"{path}: exported for a network input of {want}, this capture's is {tuple(x.shape)} "
                f"(export it again with export.py --size {x.shape[-2]} {x.shape[-1]})"
            )
        kpn_params, temporal_params = forward([x.float().cpu()])
        return kpn_params.to(x.device), temporal_params.to(x.device)

    return net


def write_exr(chw, path):
    rgb = chw.detach().float().cpu().clamp(-65504, 65504).half().numpy()
    header = {"compression": OpenEXR.ZIP_COMPRESSION, "type": OpenEXR.scanlineimage}
    OpenEXR.File(header, {"R": rgb[0], "G": rgb[1], "B": rgb[2]}).write(str(path))


def side_by_side(panels, labels):
    """(3, H, W) images in [0, 1] -> one labelled PIL image, left to right."""
    im = Image.fromarray(to_uint8(torch.cat(panels, -1)))
    draw = ImageDraw.Draw(im)
    for i, name in enumerate(labels):
        draw.text((i * panels[0].shape[-1] + 3, 2), name, fill=(255, 255, 255), stroke_width=1, stroke_fill=(0, 0, 0))
    return im


def save_animation(frames, path, fps):
    if path.suffix == ".gif":
        frames[0].save(path, save_all=True, append_images=frames[1:], duration=int(1000 / fps), loop=0)
        return
    import av

    with av.open(str(path), mode="w") as container:
        video = container.add_stream("h264", rate=fps)
        video.width, video.height, video.pix_fmt = frames[0].width, frames[0].height, "yuv420p"
        for im in frames:
            container.mux(video.encode(av.VideoFrame.from_image(im)))
        container.mux(video.encode())


@user_errors(DataError, CheckpointError)
@torch.no_grad()
def main(argv=None):
    args = get_args(argv)
    if args.exr and OpenEXR is None:
        fail("--exr: OpenEXR is not installed; pip install -r nss/requirements.txt (the optional NSS extra)")
    if args.exr is None and OpenEXR is None:
        print("note: OpenEXR is not installed (pip install -r nss/requirements.txt): writing PNGs only, no EXRs")
    exr = args.exr is not False and OpenEXR is not None
    if args.compare == "mp4" and importlib.util.find_spec("av") is None:
        fail("--compare mp4 needs PyAV: pip install av (or use --compare gif)")
    if (args.backend == "pte") != bool(args.pte):
        fail("--pte FILE (the model.pte export.py wrote) and --backend pte go together")
    if args.device == "cuda" and not torch.cuda.is_available():
        fail("--device cuda: no CUDA device is available (use --device auto or cpu)")
    device = torch.device(args.device if args.device != "auto" else "cuda" if torch.cuda.is_available() else "cpu")

    # data: every capture's header is checked before any work
    data, out = Path(args.data), Path(args.out)
    if not data.exists():
        fail(f"{data}: no such file or folder (give an NSS .safetensors capture or a folder of them)")
    files = list_captures(data)
    counts = [min(capture_header(p)["colour_linear"]["shape"][0], args.max_frames or float("inf")) for p in files]

    # model
    try:
        weights, meta = load(args.model_path)
        model, model_type = inference_model(
            weights,
            meta,
            args.model_type if args.backend == "eager" else None,
            data,
            args.calibration_frames,
            source=args.model_path,
        )  # its quality mode
    except (CheckpointError, DataError) as e:
        fail(str(e))
    except (RuntimeError, KeyError, TypeError) as e:  # weights of another network
        fail(f"{args.model_path}: not an NSS checkpoint ({str(e).splitlines()[0]})")
    net = pte_net(args.pte) if args.backend == "pte" else None  # the network in ExecuTorch, the rest in PyTorch
    model.to(device).eval()
    name = f"pte {Path(args.pte).name}" if net else f"eager {model_type}"
    print(f"upscaling {sum(counts)} frames of {len(files)} capture(s) with NSS ({name}, {device}) into {out}")

    # loop: one capture at a time, history carried frame to frame, reset at camera cuts
    reports, last_line = [], time.time()
    for path, n in zip(files, counts):
        dest = out / (path.relative_to(data).with_suffix("") if data.is_dir() else path.stem)
        for d in ["png"] + ["exr"] * exr:
            (dest / d).mkdir(parents=True, exist_ok=True)
        scores, frames = {"nss": [], "bilinear": []}, []
        bar = progress_bar(total=n, desc=path.stem, unit="frame", disable=not sys.stderr.isatty(), leave=False)
        for t, (f, new_seq) in zip(range(n), stream(path, args.exposure)):
            f = {k: v.to(device) for k, v in f.items()}
            if new_seq:
                state = model.init_state(f)
            o, state = model(f, state, net=net)
            y = o["output_linear"]
            e = f["exposure"]
            bilinear = F.interpolate(f["colour"], size=y.shape[-2:], mode="bilinear", align_corners=False)
            show = {"bilinear": tonemap(bilinear * e, args.tonemapper), "NSS": tonemap(y * e, args.tonemapper)}
            if f["ground_truth"].shape[-2:] == y.shape[-2:]:
                show["ground truth"] = gt = tonemap(f["ground_truth"] * e, args.tonemapper)
                scores["nss"].append(float(psnr(show["NSS"], gt)))
                scores["bilinear"].append(float(psnr(show["bilinear"], gt)))
            save_png(srgb(show["NSS"][0]), dest / "png" / f"{t:04d}.png")
            if exr:
                write_exr(y[0], dest / "exr" / f"{t:04d}.exr")
            if args.compare:
                frames.append(side_by_side([srgb(v[0]) for v in show.values()], list(show)))
            bar.update(1)
            if bar.disable and time.time() - last_line > 5:
                print(f"{path.stem}: frame {t + 1}/{n}", flush=True)
                last_line = time.time()
        bar.close()
        if frames:
            save_animation(frames, dest / f"compare.{args.compare}", args.fps)
        reports.append((path, dest, n, scores))

    # report
    mean = lambda v: sum(v) / len(v)
    for path, dest, n, scores in reports:
        quality = (
            f"PSNR NSS {mean(scores['nss']):.2f} dB, bilinear {mean(scores['bilinear']):.2f} dB"
            if scores["nss"]
            else "no ground truth at the output size"
        )
        print(
            f"{path.name}: {n} frames, {quality} -> {dest}/png{'+exr' * exr}"
            f"{f' + compare.{args.compare}' if args.compare else ''}"
        )


if __name__ == "__main__":
    main()
