"""Convert Arm NSS EXR captures (dataset spec 1.0.1) to NSS safetensors, then optionally cut them into crops.

Input (Arm's spec: docs/nss/nss_dataset_specification.md in arm/neural-graphics-model-gym): <SRC>/<seq>.json
plus, per capture <seq>, the folders ground_truth/<seq>, motion_gt/<seq>, x2/color/<seq>, x2/depth/<seq>,
x2/motion/<seq> of <frame>.exr.
Output (the layout of Arm's safetensors_writer.py, summarised in nss/dataset.py): one
<DST>/<basename(SRC)>/<seq>.safetensors per capture, every tensor stacked over frames.
Flags follow Arm's safetensors_writer.py (single dash), so its commands work here unchanged:

    pip install -r nss/requirements.txt                  # OpenEXR, the optional NSS extra
    python nss/convert.py -src data/exr_captures -dst output/safetensors -threads 4
    python nss/convert.py -src output/safetensors/exr_captures -dst output/crops -reader cropper -crop_size 256

The second command cuts every capture into crop_size x crop_size high-res tiles (crop_size/2 low-res),
written as <DST>/<basename(SRC)>/<seq>/<crop_id:04d>/<seq>.safetensors, the layout of Arm's public
training set. Existing outputs are skipped unless -overwrite. Frames without an `Exposure` field get
exposure 0 (= ln 1); the key is always written. Errors a user can fix print one line and exit 2.
"""

import argparse
import datetime
import hashlib
import json
import math
import os
import sys
from multiprocessing import Pool
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from common import log
from common.log import progress as progress_bar

try:
    import OpenEXR
except ImportError:
    OpenEXR = None

SCALE = 2.0  # Arm's reader is fixed at the x2 ratio folder
READER_CLASS = "NSSEXRDatasetReader"  # file metadata "Version", as in Arm's files
# image -> (folder under SRC, EXR channels, stored dtype)
IMAGES = {
    "ground_truth": ("ground_truth", "RGB", np.float16),
    "motion_gt": ("motion_gt", "RG", np.float16),
    "color": ("x2/color", "RGB", np.float16),
    "depth": ("x2/depth", "R", np.float32),
    "motion": ("x2/motion", "RG", np.float16),
}


class ConvertError(Exception):
    """A problem the user can fix; the message is one line '<path>: <problem>'."""


def stable_id(text):
    """Nonzero positive int64 from a string, identical across runs and machines (unlike hash())."""
    return int.from_bytes(hashlib.blake2b(text.encode(), digest_size=8).digest(), "little") & (2**63 - 1) or 1


def read_exr(path, channels, dtype):
    """One EXR -> (C, H, W) numpy array of the named channels."""
    try:
        parts = OpenEXR.File(str(path), separate_channels=True).channels()
    except (RuntimeError, OSError, ValueError):
        raise ConvertError(f"{path}: unreadable EXR file") from None
    for c in channels:
        if c not in parts:
            raise ConvertError(f"{path}: missing EXR channel '{c}' (has {', '.join(sorted(parts)) or 'none'})")
    return np.stack([parts[c].pixels.astype(dtype) for c in channels])


def need(d, key, where):
    if key not in d:
        raise ConvertError(f"{where}: missing JSON field '{key}' (NSS capture spec 1.0.1)")
    return d[key]


def load_meta(src, seq):
    path = src / f"{seq}.json"
    if not path.is_file():
        raise ConvertError(f"{path}: missing capture JSON (one <capture>.json per capture folder)")
    try:
        meta = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ConvertError(f"{path}: invalid JSON ({e})") from None
    for key in ("UpscalingRatiosIndices", "Frames", "TargetResolution", "EmulatedFramerate", "Samples"):
        need(meta, key, path)
    need(meta["UpscalingRatiosIndices"], "x2_index", f"{path}: UpscalingRatiosIndices")
    return path, meta


def frame_files(src, seq):
    """The sorted EXRs of each image folder of a capture, cut to the shortest folder."""
    files = {}
    for name, (folder, _, _) in IMAGES.items():
        d = src / folder / seq
        files[name] = sorted(d.glob("*.exr")) if d.is_dir() else []
        if not files[name]:
            raise ConvertError(
                f"{d}: missing or empty folder (a capture needs ground_truth, motion_gt, "
                f"x2/color, x2/depth and x2/motion)"
            )
    n = min(len(f) for f in files.values())
    return {k: v[:n] for k, v in files.items()}, n


def motion_px(uv, h, w):
    """(2, h, w) UV-space motion (fraction of screen, u then v) -> pixels in (y, x) order."""
    uv = np.clip(uv.astype(np.float32), -1.0, 1.0)
    return np.stack([uv[1] * h, uv[0] * w]).astype(np.float16)


def depth_params(z_near, z_far, infinite, fov_y, h, w):
    """FSR2 deviceToViewDepth for forward-Z depth d: view z = p1 / (d - p0), x = p2 ndc.x z, y = p3 ndc.y z."""
    n, f = min(z_near, z_far), max(z_near, z_far)
    q = f / (n - f)
    c, e = (-1.0 - 1e-7, -n - 1e-7) if infinite else (q, q * n)
    b = 1.0 / math.tan(fov_y / 2)
    a = b / (w / h)
    return [-c, e, 1.0 / a, 1.0 / b]


def atomic_save(tensors, path, metadata):
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    save_file(tensors, str(tmp), metadata=metadata)
    os.replace(tmp, path)  # a killed run never leaves a half file that later runs would skip


def frame_fields(fr, meta, h, w, where):
    """One JSON frame -> that frame's row of each per-frame key (nested lists, float unless noted)."""
    jitters = fr.get("NormalizedPerRatioJitter", fr.get("QuantisedPerRatioJitter"))  # older name
    if jitters is None:
        raise ConvertError(f"{where}: missing JSON field 'NormalizedPerRatioJitter' (NSS capture spec 1.0.1)")
    ratio = meta["UpscalingRatiosIndices"]["x2_index"]
    if not 0 <= ratio < len(jitters):
        raise ConvertError(f"{where}: NormalizedPerRatioJitter has no entry x2_index={ratio}")
    jx, jy = need(jitters[ratio], "X", where), need(jitters[ratio], "Y", where)
    z_near = fr.get("CameraNearPlane", meta.get("NearPlane"))  # NearPlane/FarPlane: legacy global fields
    z_far = fr.get("CameraFarPlane", meta.get("FarPlane"))
    if z_near is None or z_far is None:
        missing = "CameraNearPlane" if z_near is None else "CameraFarPlane"
        raise ConvertError(f"{where}: missing JSON field '{missing}' (NSS capture spec 1.0.1)")
    infinite = z_far == -1
    z_far = 5000.0 if infinite else z_far
    fov_y, view_proj = need(fr, "FovY", where), need(fr, "ViewProjection", where)
    if len(view_proj) != 16:
        raise ConvertError(f"{where}: ViewProjection has {len(view_proj)} values, expected 16")
    exposure = fr.get("Exposure")
    if exposure is not None and exposure <= 0:
        raise ConvertError(f"{where}: Exposure {exposure} is not a positive multiplier")
    return {
        "jitter": [[[jy * h]], [[jx * w]]],  # (2, 1, 1) low-res pixels, (y, x)
        "X": [jx],
        "Y": [-jy],  # -y: Arm's historic Y-orientation correction
        "exposure": [math.log(exposure) if exposure is not None else 0.0],  # absent: ln 1
        "zNear": [z_near],
        "zFar": [z_far],
        "infinite_zFar": [infinite],  # bool
        "FovX": [need(fr, "FovX", where)],
        "FovY": [fov_y],
        "viewProj": [[view_proj[r * 4 : r * 4 + 4] for r in range(4)]],  # (1, 4, 4) row-major, no transpose
        "camera_cut": [bool(fr.get("CameraCut", False))],  # bool
        "depth_params": depth_params(z_near, z_far, infinite, fov_y, h, w),
    }


def convert_capture(job):
    """EXR capture `seq` -> one safetensors file. Returns 'wrote' or 'skipped'."""
    src, seq, out, overwrite, linear_truth, progress = job
    if out.exists() and not overwrite:
        return "skipped"
    json_path, meta = load_meta(src, seq)
    files, n = frame_files(src, seq)
    if len(meta["Frames"]) < n:
        raise ConvertError(f"{json_path}: 'Frames' lists {len(meta['Frames'])} frames, the EXR folders hold {n}")
    images, rows = {k: [] for k in IMAGES}, []
    for i in progress_bar(range(n), desc=seq, leave=False, disable=None if progress else True):
        for name, (_, channels, dtype) in IMAGES.items():
            img = read_exr(files[name][i], channels, dtype)
            if images[name] and img.shape != images[name][0].shape:
                first = images[name][0].shape[1:]
                raise ConvertError(f"{files[name][i]}: size {img.shape[1:]} differs from frame 0's {first}")
            images[name].append(img)
        where = f"{json_path}: Frames[{i}]"
        try:
            rows.append(frame_fields(meta["Frames"][i], meta, *images["color"][0].shape[1:], where))
        except (TypeError, ValueError, AttributeError) as e:  # a field of the wrong JSON type
            raise ConvertError(f"{where}: malformed field ({e})") from None

    colour, gt = np.stack(images["color"]), np.stack(images["ground_truth"])  # (F, 3, h, w), (F, 3, H, W)
    (h, w), (H, W) = colour.shape[-2:], gt.shape[-2:]
    if (H, W) != (2 * h, 2 * w):
        raise ConvertError(f"{files['ground_truth'][0]}: ground truth {H}x{W} is not 2x the low-res colour {h}x{w}")
    for name, size in (("depth", (h, w)), ("motion", (h, w)), ("motion_gt", (H, W))):
        if images[name][0].shape[1:] != size:
            raise ConvertError(f"{files[name][0]}: size {images[name][0].shape[1:]}, expected {size}")
    if not linear_truth:  # GT was stored Karis-tonemapped c/(1+max): invert with c/(1-max)
        g = gt.astype(np.float32)
        gt = np.minimum(g / (1 - np.minimum(g.max(1, keepdims=True), 1 - 2**-11)), 65504).astype(np.float16)
    reverse_z = bool(meta.get("ReverseZ", False))
    depth = np.stack(images["depth"])  # (F, 1, h, w)
    if reverse_z:
        depth = 1.0 - depth  # the model wants forward-Z: 0 near, 1 far

    def per_frame(value, dtype):  # one value repeated for every frame -> (F, len(value))
        return torch.tensor([value] * n, dtype=dtype)

    tensors = {
        "colour_linear": torch.from_numpy(colour),
        "ground_truth_linear": torch.from_numpy(gt),
        "depth": torch.from_numpy(depth),  # (F, 1, h, w) forward-Z
        "motion_lr": torch.from_numpy(np.stack([motion_px(m, h, w) for m in images["motion"]])),
        "motion": torch.from_numpy(np.stack([motion_px(m, H, W) for m in images["motion_gt"]])),
        "render_size": per_frame([h, w], torch.int32),
        "outDims": per_frame([H, W], torch.int32),
        "TargetResolution": per_frame([need(meta["TargetResolution"], k, json_path) for k in ("X", "Y")], torch.int32),
        "EmulatedFramerate": per_frame([meta["EmulatedFramerate"]], torch.float32),
        "Samples": per_frame([need(meta["Samples"], "Count", json_path)], torch.int32),
        "ReverseZ": per_frame([reverse_z], torch.bool),
        "scale": per_frame([SCALE], torch.float32),
        "seq": per_frame([stable_id(f"{src.resolve().name}_{seq}_{n}")], torch.int64),
        "img": torch.arange(n, dtype=torch.int64).view(n, 1),
    }
    for key in rows[0]:
        dtype = torch.bool if key in ("infinite_zFar", "camera_cut") else torch.float32
        tensors[key] = torch.tensor([row[key] for row in rows], dtype=dtype)
    created = datetime.date.today().strftime("%d-%m-%Y")
    atomic_save(tensors, out, {"Length": str(n), "Created": created, "Version": READER_CLASS})
    return "wrote"


def crop_starts(size, crop):
    """Non-overlapping tiles, plus one flush with the far edge when `crop` does not divide `size`."""
    starts = list(range(0, size - crop + 1, crop))
    return starts + [size - crop] if size % crop else starts


def crop_capture(job):
    """One safetensors capture -> a file per crop_size x crop_size high-res crop."""
    path, dst, first_id, crop, overwrite, progress = job
    with safe_open(str(path), "pt") as f:
        metadata = f.metadata()
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    (h, w), (H, W) = tensors["colour_linear"].shape[-2:], tensors["ground_truth_linear"].shape[-2:]
    scale = W // w
    tiles = [(iy, y, ix, x) for iy, y in enumerate(crop_starts(H, crop)) for ix, x in enumerate(crop_starts(W, crop))]
    outs = [dst / path.stem / f"{first_id + k:04d}" / path.name for k in range(len(tiles))]
    if not overwrite and all(o.exists() for o in outs):
        return "skipped"
    n = tensors["colour_linear"].shape[0]
    for k, (iy, y, ix, x) in enumerate(
        progress_bar(tiles, desc=path.stem, leave=False, disable=None if progress else True)
    ):
        out = {}
        for key, t in tensors.items():
            if t.dim() >= 2 and tuple(t.shape[-2:]) == (H, W):
                t = t[..., y : y + crop, x : x + crop]
            elif t.dim() >= 2 and tuple(t.shape[-2:]) == (h, w):
                t = t[..., y // scale : (y + crop) // scale, x // scale : (x + crop) // scale]
            out[key] = t.contiguous()
        crop_id = first_id + k
        out["seq_id"] = torch.full((n, 1), stable_id(f"{path.stem}/{crop_id:04d}"), dtype=torch.int64)
        out["crop_id_y"] = torch.full((n, 1), iy, dtype=torch.int64)
        out["crop_id_x"] = torch.full((n, 1), ix, dtype=torch.int64)
        out["crop_sz"] = torch.full((n, 1), float(crop), dtype=torch.float32)
        atomic_save(out, outs[k], metadata)
    return "wrote"


def crop_jobs(src, dst, args):
    """Crop ids count on across captures (Arm: seq_index * crops_per_capture + k)."""
    files = sorted(src.glob("*.safetensors"))
    if not files:
        raise ConvertError(f"{src}: no *.safetensors files (run the NSSv1_0_1 reader first)")
    jobs, next_id = [], 0
    for path in files:
        try:
            with safe_open(str(path), "pt") as f:
                shapes = {k: f.get_slice(k).get_shape() for k in f.keys()}
        except Exception as e:  # safetensors raises its own error types for corrupt files
            reason = str(e).splitlines()[0] if str(e) else type(e).__name__
            raise ConvertError(f"{path}: unreadable safetensors file ({reason})") from None
        for key in ("colour_linear", "ground_truth_linear"):
            if key not in shapes:
                raise ConvertError(f"{path}: missing key '{key}' (NSS safetensors spec)")
        (H, W), w = shapes["ground_truth_linear"][-2:], shapes["colour_linear"][-1]
        if H < args.crop_size or W < args.crop_size:
            raise ConvertError(f"{path}: high-res {H}x{W} is smaller than -crop_size {args.crop_size}")
        if args.crop_size % (W // w):
            raise ConvertError(f"{path}: -crop_size {args.crop_size} is not a multiple of the upscale factor {W // w}")
        jobs.append((path, dst, next_id, args.crop_size, args.overwrite, args.threads == 1))
        next_id += len(crop_starts(H, args.crop_size)) * len(crop_starts(W, args.crop_size))
    return jobs


def exr_jobs(src, dst, args):
    seqs = sorted({p.parent.name for p in src.rglob("*.exr")})
    if not seqs:
        raise ConvertError(f"{src}: no *.exr files (expected the NSS capture layout, spec 1.0.1)")
    for seq in seqs:  # check layout and metadata up front, before hours of conversion
        frame_files(src, seq)
        load_meta(src, seq)
    return [
        (src, seq, dst / f"{seq}.safetensors", args.overwrite, args.linear_truth, args.threads == 1) for seq in seqs
    ]


def run_all(work, jobs, threads):
    """Run work(job) for every job, in a process pool when threads > 1; returns the statuses."""
    bar = dict(total=len(jobs), desc="captures", disable=None)
    if threads == 1:
        return list(progress_bar(map(work, jobs), **bar))
    with Pool(min(threads, len(jobs))) as pool:
        return list(progress_bar(pool.imap_unordered(work, jobs), **bar))


def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument(
        "-src", required=True, help="capture root (EXR layout), or a folder of converter output for -reader cropper"
    )
    p.add_argument(
        "-dst",
        default="./output/safetensors",
        help="output root; files go into DST/<basename(SRC)>/ (default ./output/safetensors)",
    )
    p.add_argument("-threads", type=int, default=1, help="worker processes, one capture at a time each (default 1)")
    p.add_argument(
        "-extension",
        choices=["exr", "safetensors"],
        default=None,
        help="input file type; default: exr for NSSv1_0_1, safetensors for cropper",
    )
    p.add_argument("-overwrite", action="store_true", help="rewrite existing outputs instead of skipping them")
    p.add_argument(
        "-linear-truth",
        dest="linear_truth",
        action="store_true",
        default=True,
        help="ground truth EXRs are linear HDR, as spec 1.0.1 requires (the default)",
    )
    p.add_argument(
        "-no-linear-truth",
        dest="linear_truth",
        action="store_false",
        help="ground truth EXRs are Karis-tonemapped c/(1+max(rgb)); invert with c/(1-max(rgb))",
    )
    p.add_argument("-logging_output_dir", default="./output", help="folder for output.log (default ./output)")
    p.add_argument(
        "-reader",
        choices=["NSSv1_0_1", "EXRv101", "cropper"],
        default="NSSv1_0_1",
        help="NSSv1_0_1 (default; old name EXRv101): EXR captures -> safetensors; cropper: safetensors -> crops",
    )
    p.add_argument("-crop_size", type=int, default=256, help="cropper: crop side in high-res pixels (default 256)")
    args = p.parse_args(argv)
    want = "safetensors" if args.reader == "cropper" else "exr"
    if args.extension not in (None, want):
        p.error(f"-reader {args.reader} reads .{want} files, not -extension {args.extension}")
    if args.threads < 1 or args.crop_size < 1:
        p.error("-threads and -crop_size must be at least 1")
    return args


def main(argv=None):
    args = parse_args(argv)
    src = Path(args.src)
    dst = Path(args.dst) / src.resolve().name
    cropper = args.reader == "cropper"
    if not cropper and OpenEXR is None:
        print(
            "error: OpenEXR is not installed; pip install -r nss/requirements.txt (the optional NSS extra)",
            file=sys.stderr,
        )
        return 2
    logger = log.setup(args.logging_output_dir, name="nss.convert")
    try:
        if not src.is_dir():
            raise ConvertError(f"{src}: missing folder")
        jobs = crop_jobs(src, dst, args) if cropper else exr_jobs(src, dst, args)
        done = run_all(crop_capture if cropper else convert_capture, jobs, args.threads)
    except ConvertError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    logger.info(
        f"{dst}: wrote {done.count('wrote')} capture(s), skipped {done.count('skipped')} existing"
        f"{'' if args.overwrite else ' (-overwrite rewrites them)'}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
