"""Prism training data from real video: the real frame is the photoreal target, a "game-style" degraded,
downscaled copy is the input, with RAFT motion vectors and monocular depth at input resolution.

    python prism/make_dataset.py --videos clips/ --out data/prism_real --raft-weights raft_small.pth \\
        --depth-model depth_anything_v2.pt2 --depth-is-disparity --scale 2
    python prism/make_dataset.py --videos clips/ --out data/prism_real3 --raft-weights raft_large.safetensors \\
        --raft large --depth-model none --scale 3 --size 256 448 --frames-per-seq 16 --stride 2

clips/ holds video files (.mp4 .mkv .avi .mov .webm; decoded with PyAV: `pip install -r prism/requirements.txt`,
which bash run.sh does; torchcodec when it is installed; torchvision 0.29 no longer decodes video) and/or frame
folders (subfolders of .png/.jpg frames, sorted by name; no extra package). Output: OUT/seq_XXXX.safetensors +
OUT/index.json in the layout of prism/dataset.py, is_real = 1. Each clip is cut into sequences of --frames-per-seq
frames (left-over frames are dropped); motion and depth restart with every sequence.

Nothing is downloaded. The weights are local files, saved once on a machine with network, e.g.
    torch.save(raft_small(weights=Raft_Small_Weights.DEFAULT).state_dict(), "raft_small.pth")
    torch.export.save(torch.export.export(depth_net.eval(), (torch.rand(1, 3, 518, 518),)), "depth.pt2")
The depth program takes (1, 3, H, W) RGB in [0, 1] (ImageNet-normalised here unless --depth-normalize none)
and returns (1, 1, H, W) or (1, H, W) relative depth (or disparity: --depth-is-disparity, e.g. Depth
Anything V2). A program exported with a static size gets frames resized to that size.
Depth is normalised to [0, 1] per sequence (near small). Training code can reuse the input degradation:
`from prism.make_dataset import game_style`. Any problem a user can fix prints one line and exits 2;
nothing half-written is left behind.
"""

import argparse
import itertools
import logging
import sys
from pathlib import Path
from unittest import mock

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from common import ckpt
from common.log import progress as progress_bar
from common.runtime import fail
from prism.dataset import DataError, write_index, write_sequence

VIDEO_EXT = (".mp4", ".mkv", ".avi", ".mov", ".webm")
IMAGE_EXT = (".png", ".jpg", ".jpeg")
LUMA = torch.tensor([0.2126, 0.7152, 0.0722])  # Rec. 709 luminance weights
IMAGENET_MEAN, IMAGENET_STD = torch.tensor([0.485, 0.456, 0.406]), torch.tensor([0.229, 0.224, 0.225])


def first_line(e):
    return str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__


def game_style(frame, strength=1.0):
    """Make a real frame look rendered: float (..., 3, H, W) in [0, 1] -> same shape, in [0, 1].

    Deterministic; strength 0 returns the frame unchanged, 1 is the default look:
      flat lighting   local luminance (a blur at 1/8 of the frame) pulled halfway towards the frame mean
      less colour     saturation reduced by 30%
      over-sharpened  unsharp mask (3x3 box, amount 1)
      banding         quantised to 8 - 3*strength bits per channel (5 bits = 32 levels at strength 1)"""
    if strength <= 0:
        return frame.clone()
    s = float(strength)
    shape, (H, W) = frame.shape, frame.shape[-2:]
    x = frame.float().reshape(-1, 3, H, W)  # (N, 3, H, W)
    luma = lambda im: (im * LUMA.to(im).view(1, 3, 1, 1)).sum(1, keepdim=True)  # noqa: E731  (N, 1, H, W)
    y = luma(x)
    cell = max(1, min(H, W) // 8)  # blur: 8 cells on the short side
    local = F.adaptive_avg_pool2d(y, (max(1, H // cell), max(1, W // cell)))
    local = F.interpolate(local, (H, W), mode="bilinear", align_corners=False)  # (N, 1, H, W) local lighting
    x = x * ((y.mean((2, 3), keepdim=True) + 0.02) / (local + 0.02)) ** (0.5 * min(s, 1.5))
    y = luma(x)
    x = y + (x - y) * max(0.0, 1 - 0.3 * s)
    blur = F.avg_pool2d(F.pad(x, (1, 1, 1, 1), mode="replicate"), 3, stride=1)
    x = (x + s * (x - blur)).clamp(0, 1)
    levels = round(2 ** max(2.0, 8 - 3 * s)) - 1
    x = torch.round(x * levels) / levels
    return x.reshape(shape).to(frame.dtype)


def to_target(frames, size):
    """(T, 3, H, W) uint8 -> (T, 3, th, tw) float in [0, 1]: centre crop to the target aspect, then resize."""
    H, W = frames.shape[-2:]
    th, tw = size
    ch, cw = (round(W * th / tw), W) if H * tw > W * th else (H, round(H * tw / th))
    y0, x0 = (H - ch) // 2, (W - cw) // 2
    x = frames[..., y0 : y0 + ch, x0 : x0 + cw].float() / 255
    if (ch, cw) != (th, tw):
        x = F.interpolate(x, size, mode="bicubic", antialias=True, align_corners=False).clamp(0, 1)
    return x


def load_raft(kind, path, device):
    """RAFT small/large from torchvision, weights=None, then the local state dict (.safetensors / .pth / .pt)."""
    from torchvision.models.optical_flow import raft_large, raft_small

    net = (raft_small if kind == "small" else raft_large)(weights=None)
    try:
        sd = ckpt.read_state_dict(path)
    except ckpt.CheckpointError as e:
        fail(f"{e}; expected RAFT weights")
    for key in ("state_dict", "model"):
        sd = sd[key] if isinstance(sd.get(key), dict) else sd
    own = net.state_dict()
    bad = [k for k in own if k not in sd or getattr(sd[k], "shape", None) != own[k].shape]
    bad += [k for k in sd if k not in own]
    if bad:
        other = "large" if kind == "small" else "small"
        fail(
            f"{path}: weights do not fit RAFT-{kind} ({len(bad)} missing, unexpected or mis-shaped keys, "
            f"e.g. '{bad[0]}'); torchvision raft_{kind} weights are needed (or --raft {other})"
        )
    net.load_state_dict(sd)
    return net.eval().to(device)


def load_depth(path, device):
    """-> (callable, static input (H, W) or None) from a torch.export.save'd program."""
    logging.getLogger("torch.export").setLevel(logging.ERROR)  # it logs a traceback before raising on bad files
    # torch.export.load unpickles (weights_only=False) whatever weights_only refuses, so a stranger's .pt2 could
    # run code: keep weights_only on for the whole load.
    torch_load = torch.load
    try:
        with mock.patch.object(torch, "load", lambda *a, **kw: torch_load(*a, **dict(kw, weights_only=True))):
            ep = torch.export.load(str(path))
        if device.type != "cpu":
            ep = torch.export.passes.move_to_device_pass(ep, device)
        name = ep.graph_signature.user_inputs[0]
        shape = next(n for n in ep.graph.nodes if n.name == name).meta["val"].shape
    except Exception as e:
        fail(f"{path}: not a readable torch.export program ({first_line(e)}); save one with torch.export.save")
    static = tuple(int(s) for s in shape[-2:]) if all(isinstance(s, int) for s in shape[-2:]) else None
    return ep.module(), static


@torch.no_grad()
def motion_vectors(raft, frames, size, iters=12, batch=8):
    """Clean frames (T, 3, H, W) in [0, 1] -> (T, 2, h, w) motion in input pixels: this pixel was at (x+dx, y+dy)
    in frame t-1 (RAFT flow from frame t to frame t-1); zeros on frame 0."""
    h, w = size
    rh, rw = max(128, -(-h // 8) * 8), max(128, -(-w // 8) * 8)  # RAFT: multiples of 8, at least 128
    img = F.interpolate(frames, (rh, rw), mode="bilinear", antialias=True, align_corners=False) * 2 - 1
    flows = [torch.zeros(1, 2, h, w, device=frames.device)]
    for i in range(1, len(frames), batch):
        j = min(len(frames), i + batch)
        flow = raft(img[i:j], img[i - 1 : j - 1], num_flow_updates=iters)[-1]  # (B, 2, rh, rw) RAFT pixels
        flow = F.interpolate(flow, (h, w), mode="bilinear", align_corners=False)
        flows.append(flow * torch.tensor([w / rw, h / rh], device=flow.device).view(1, 2, 1, 1))
    return torch.cat(flows)


@torch.no_grad()
def depth_maps(net, frames, size, net_size, normalize, disparity):
    """Clean frames (T, 3, H, W) -> (T, 1, h, w) depth in [0, 1] over the sequence, near small."""
    x = F.interpolate(frames, net_size, mode="bilinear", antialias=True, align_corners=False)
    if normalize == "imagenet":
        x = (x - IMAGENET_MEAN.to(x).view(1, 3, 1, 1)) / IMAGENET_STD.to(x).view(1, 3, 1, 1)
    out = []
    for t in range(len(x)):
        try:
            d = net(x[t : t + 1])
        except Exception as e:
            fail(f"depth model rejected a {list(x[t : t + 1].shape)} input ({first_line(e)}); try --depth-size")
        d = next(iter(d.values())) if isinstance(d, dict) else d[0] if isinstance(d, (tuple, list)) else d
        if d.dim() == 3:
            d = d[:, None]
        if d.dim() != 4 or d.shape[:2] != (1, 1):
            fail(f"depth model returned shape {list(d.shape)}, expected (1, 1, H, W) or (1, H, W)")
        out.append(F.interpolate(d.float(), size, mode="bilinear", align_corners=False))
    d = torch.cat(out)
    d = (d - d.min()) / (d.max() - d.min()).clamp_min(1e-8)
    if disparity:  # relative disparity -> depth (far/near ratio capped at 11)
        d = 1 / (d + 0.1)
        d = (d - d.min()) / (d.max() - d.min()).clamp_min(1e-8)
    return d


def video_backend():
    """'torchcodec', 'av' or None: torchvision 0.29 has no video decoding (read_video / VideoReader are gone)."""
    for name in ("torchcodec", "av"):
        try:
            __import__("torchcodec.decoders" if name == "torchcodec" else name)
            return name
        except Exception:  # torchcodec raises RuntimeError when its FFmpeg libraries are missing
            pass
    return None


def read_frames(clip):
    """Yield (3, H, W) uint8 frames of a frame folder or a video file, in order."""
    if clip.is_dir():  # PIL: torchvision 0.29 deprecates its image decoders too
        for f in image_files(clip):
            with Image.open(f) as im:
                yield torch.from_numpy(np.asarray(im.convert("RGB")).copy()).permute(2, 0, 1)
    elif video_backend() == "torchcodec":
        from torchcodec.decoders import VideoDecoder

        dec = VideoDecoder(str(clip), dimension_order="NCHW")
        for i in range(len(dec)):
            yield dec[i]
    else:
        import av

        with av.open(str(clip)) as container:
            for fr in container.decode(video=0):
                yield torch.from_numpy(fr.to_ndarray(format="rgb24")).permute(2, 0, 1)


def image_files(folder):
    return sorted(f for f in folder.iterdir() if f.suffix.lower() in IMAGE_EXT)


def image_size(f):
    with Image.open(f) as im:  # reads the header only
        return im.size


def check_folder(folder, args):
    """Frame folder: all frames one size, enough of them. -> number of frames used."""
    files = image_files(folder)
    try:
        sizes = [image_size(f) for f in files]
    except Exception as e:
        fail(f"{folder}: unreadable frame ({first_line(e)})")
    for f, (w, h) in zip(files, sizes):
        if (w, h) != sizes[0]:
            fail(
                f"{f}: frame size {w}x{h} differs from {files[0].name} ({sizes[0][0]}x{sizes[0][1]}); one size "
                "per folder"
            )
    n = len(files[:: args.stride][: args.max_frames])
    if n < args.frames_per_seq:
        fail(f"{folder}: {n} frames (after --stride/--max-frames), fewer than --frames-per-seq {args.frames_per_seq}")
    return n


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument(
        "--videos",
        type=Path,
        required=True,
        metavar="DIR",
        help="folder of video files and/or frame folders (subfolders of .png/.jpg)",
    )
    p.add_argument(
        "--out",
        type=Path,
        required=True,
        metavar="OUT",
        help="output dataset folder: seq_XXXX.safetensors + index.json",
    )
    p.add_argument(
        "--raft-weights",
        type=Path,
        required=True,
        metavar="FILE",
        help="local torchvision RAFT state dict (.safetensors, .pth or .pt)",
    )
    p.add_argument("--raft", default="small", choices=["small", "large"], help="RAFT variant the weights are for")
    p.add_argument(
        "--raft-iters",
        type=int,
        default=12,
        metavar="N",
        help="RAFT refinement iterations (fewer: faster, coarser flow)",
    )
    p.add_argument(
        "--depth-model",
        required=True,
        metavar="FILE",
        help="torch.export.save'd depth program (.pt2), or 'none': constant depth 0.5",
    )
    p.add_argument(
        "--depth-normalize",
        default="imagenet",
        choices=["imagenet", "none"],
        help="input the depth program expects: ImageNet mean/std normalised RGB, or RGB in [0, 1]",
    )
    p.add_argument(
        "--depth-is-disparity", action="store_true", help="the depth program outputs disparity (near large): invert it"
    )
    p.add_argument(
        "--depth-size",
        type=int,
        nargs=2,
        metavar=("H", "W"),
        help="frame size fed to the depth program (default: its static export size, else the input size)",
    )
    p.add_argument("--scale", type=int, default=2, choices=[2, 3], help="ground truth = scale x input resolution")
    p.add_argument(
        "--size",
        type=int,
        nargs=2,
        metavar=("H", "W"),
        help="input (game) size; default frame size / scale rounded down to a multiple of 8",
    )
    p.add_argument("--frames-per-seq", type=int, default=16, metavar="N", help="frames per written sequence (shard)")
    p.add_argument("--stride", type=int, default=1, metavar="N", help="use every N-th frame of a clip")
    p.add_argument(
        "--max-frames", type=int, default=None, metavar="N", help="use at most N frames per clip (after --stride)"
    )
    p.add_argument("--seed", type=int, default=0, help="seed of the per-sequence game_style strength (0.75..1.25)")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"], help="auto = cuda if available")
    p.add_argument("--overwrite", action="store_true", help="replace an existing dataset in OUT")
    args = p.parse_args(argv)
    if min(args.frames_per_seq, args.stride, args.raft_iters, args.max_frames or 1) < 1:
        fail("--frames-per-seq, --stride, --max-frames and --raft-iters must be >= 1")
    if args.size and min(args.size) < 8:
        fail(f"--size {args.size[0]} {args.size[1]}: the input must be at least 8x8")
    return args


def main(argv=None):
    args = parse_args(argv)
    if not args.videos.is_dir():
        fail(f"{args.videos}: videos folder not found (--videos)")
    clips = [
        c
        for c in sorted(args.videos.iterdir())
        if (c.is_file() and c.suffix.lower() in VIDEO_EXT) or (c.is_dir() and image_files(c))
    ]
    if not clips:
        fail(f"{args.videos}: no video files ({' '.join(VIDEO_EXT)}) or frame folders (subfolders of .png/.jpg)")
    if not args.raft_weights.is_file():
        fail(f"{args.raft_weights}: RAFT weights file not found (--raft-weights)")
    if args.depth_model != "none" and not Path(args.depth_model).is_file():
        fail(f"{args.depth_model}: depth model file not found (--depth-model; 'none' for constant depth)")
    videos = [c for c in clips if c.is_file()]
    if videos and video_backend() is None:
        fail(
            f"{videos[0]}: no video decoder installed: pip install -r prism/requirements.txt (PyAV) "
            f"(frame folders work without one)"
        )
    frame_count = sum(check_folder(c, args) for c in clips if c.is_dir())
    if args.device == "cuda" and not torch.cuda.is_available():
        fail("--device cuda: no CUDA device is available (use --device auto or cpu)")
    if args.device == "auto":
        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(args.device)
    raft = load_raft(args.raft, args.raft_weights, device)
    depth_net = (None, None) if args.depth_model == "none" else load_depth(args.depth_model, device)
    if args.depth_model == "none":
        print("warning: --depth-model none: depth is a constant 0.5", file=sys.stderr)
    old = list(args.out.glob("*.safetensors")) + list(args.out.glob("index.json"))
    if old and not args.overwrite:
        fail(f"{args.out}: already holds a dataset ({old[0].name}); use --overwrite or another --out")
    created = not args.out.exists()
    args.out.mkdir(parents=True, exist_ok=True)
    for f in old:
        f.unlink()
    written = []
    try:
        with progress_bar(total=None if videos else frame_count, unit="frame", desc="make_dataset") as bar:
            for clip in clips:
                make_clip(clip, args, raft, depth_net, device, written, bar)
        write_index(args.out)
    except BaseException as e:  # any failure (fail() too): leave no shards that look like a dataset
        for f in written:
            f.unlink(missing_ok=True)
        if created and not any(args.out.iterdir()):
            args.out.rmdir()
        if isinstance(e, DataError):
            fail(first_line(e))
        raise
    print(f"wrote {len(written)} sequences to {args.out}")


def make_clip(clip, args, raft, depth_net, device, written, bar):
    """One video / frame folder -> sequences of --frames-per-seq frames, appended to `written`."""
    stop = None if args.max_frames is None else args.max_frames * args.stride
    frames, n_seq = itertools.islice(read_frames(clip), 0, stop, args.stride), 0
    while True:
        try:
            chunk = list(itertools.islice(frames, args.frames_per_seq))  # T x (3, H, W) uint8
        except Exception as e:
            fail(f"{clip}: cannot decode ({first_line(e)})")
        if len(chunk) < args.frames_per_seq:
            break
        if any(c.shape != chunk[0].shape for c in chunk):
            fail(f"{clip}: frames of differing sizes ({list(chunk[0].shape)} and others)")
        H, W = chunk[0].shape[-2:]
        h, w = args.size or ((H // args.scale) // 8 * 8, (W // args.scale) // 8 * 8)
        if min(h, w) < 8:
            fail(f"{clip}: frames {H}x{W} are too small for --scale {args.scale} (input would be {h}x{w})")
        if n_seq == 0 and (args.scale * h > H or args.scale * w > W):
            print(
                f"warning: {clip}: frames {H}x{W} are upsampled to the {args.scale * h}x{args.scale * w} target",
                file=sys.stderr,
            )
        gen = torch.Generator().manual_seed(args.seed * 100_003 + len(written))
        strength = 0.75 + 0.5 * float(torch.rand((), generator=gen))  # per sequence
        gt = to_target(torch.stack(chunk).to(device), (args.scale * h, args.scale * w))  # (T, 3, sh, sw) target
        low = F.interpolate(gt, (h, w), mode="bilinear", antialias=True, align_corners=False).clamp(0, 1)
        color = game_style(low, strength)  # (T, 3, h, w) input
        motion = motion_vectors(raft, gt, (h, w), args.raft_iters)  # (T, 2, h, w)
        net, static = depth_net
        depth = (
            depth_maps(
                net,
                gt,
                (h, w),
                tuple(args.depth_size or static or (h, w)),
                args.depth_normalize,
                args.depth_is_disparity,
            )
            if net
            else torch.full((len(gt), 1, h, w), 0.5)
        )  # (T, 1, h, w)
        path = args.out / f"seq_{len(written):04d}.safetensors"
        write_sequence(path, color=color, depth=depth, motion_vectors=motion, ground_truth=gt, is_real=1)
        written.append(path)
        n_seq += 1
        bar.update(len(chunk))
    if n_seq == 0:
        fail(
            f"{clip}: too few frames for one sequence of --frames-per-seq {args.frames_per_seq} (after --stride "
            f"{args.stride}{'' if args.max_frames is None else f', --max-frames {args.max_frames}'})"
        )


if __name__ == "__main__":
    main()
