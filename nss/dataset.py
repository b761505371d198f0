"""Readers for Arm's NSS safetensors layout (one file per capture, tensors stacked over frames).

Layout (Arm's, written by Model Gym's `safetensors_writer.py`):
`colour_linear` f16 (F,3,h,w) jittered low-res linear HDR,
`ground_truth_linear` f16 (F,3,H,W), `depth` f32 (F,1,h,w) forward-Z, `motion_lr` f16 (F,2,h,w) and
`motion` f16 (F,2,H,W) in pixels, (y, x) order, pointing previous -> current, `jitter` f32 (F,2,1,1)
low-res pixels (y, x), `exposure` f32 (F,1) = ln(multiplier), `depth_params` f32 (F,4), `render_size`
i32 (F,2), `zNear`/`zFar` f32 (F,1), `camera_cut` bool (F,1), and more that we don't need to train.

Training samples are windows of `recurrent_samples` consecutive frames that never cross a camera cut,
randomly cropped and flipped/rotated with the motion and jitter signs fixed up. Evaluation streams whole
captures frame by frame. Any problem with a file is a DataError naming the file and the key.
"""

import json
import math
import struct
from pathlib import Path

import torch
from safetensors import safe_open

# key: (kind, shape after the frame dim; 'h','w' = low res, 'H','W' = high res), required?
SPEC = {
    "colour_linear": ("float", (3, "h", "w"), True),
    "ground_truth_linear": ("float", (3, "H", "W"), True),
    "depth": ("float", (1, "h", "w"), True),
    "motion": ("float", (2, "H", "W"), True),
    "motion_lr": ("float", (2, "h", "w"), False),  # absent: nearest-downsampled `motion` * 0.5
    "jitter": ("float", (2, 1, 1), True),
    "exposure": ("float", (1,), False),  # absent: ln(1) = 0
    "depth_params": ("float", (4,), True),
    "render_size": ("int", (2,), True),
    "zNear": ("float", (1,), True),
    "zFar": ("float", (1,), True),
    "camera_cut": ("bool", (1,), False),  # absent: no cuts
}
KINDS = {
    "float": (torch.float16, torch.float32, torch.bfloat16, torch.float64),
    "int": (torch.int32, torch.int64, torch.int16),
    "bool": (torch.bool,),
}
ST_DTYPES = {
    "F16": torch.float16,
    "F32": torch.float32,
    "BF16": torch.bfloat16,
    "F64": torch.float64,
    "I32": torch.int32,
    "I64": torch.int64,
    "I16": torch.int16,
    "BOOL": torch.bool,
}


class DataError(ValueError):
    """Bad input data: the message is one line naming the file and the key."""


def _check_header(path):
    """Parse the safetensors header ourselves so a truncated or lying file names the key it breaks."""
    size = path.stat().st_size
    with open(path, "rb") as f:
        raw = f.read(8)
        if len(raw) < 8:
            raise DataError(f"{path}: truncated safetensors file ({size} bytes, no header)")
        n = struct.unpack("<Q", raw)[0]
        if n > size - 8 or n > 100_000_000:
            raise DataError(f"{path}: truncated or corrupt safetensors header (claims {n} bytes, file has {size})")
        try:
            header = json.loads(f.read(n))
        except (json.JSONDecodeError, UnicodeDecodeError):
            raise DataError(f"{path}: corrupt safetensors header (not JSON)") from None
    if not isinstance(header, dict):
        raise DataError(f"{path}: corrupt safetensors header (not a JSON object)")
    data_size = size - 8 - n
    for key, info in header.items():
        if key == "__metadata__":
            continue
        try:
            begin, end = info["data_offsets"]
            numel = math.prod(info["shape"])
            itemsize = torch.empty(0, dtype=ST_DTYPES[info["dtype"]]).element_size()
        except (KeyError, TypeError, ValueError):
            raise DataError(f"{path}: key '{key}': corrupt header entry {info!r:.80}") from None
        if end > data_size:
            raise DataError(f"{path}: key '{key}': truncated file (data ends at byte {end}, file holds {data_size})")
        if end - begin != numel * itemsize:
            raise DataError(f"{path}: key '{key}': header shape {info['shape']} does not match its {end - begin} bytes")
    return header


def capture_header(path, keys=None):
    """The checked safetensors header of an NSS capture, without reading its tensors: DataError for a corrupt file
    or one that lacks a required key of `keys` (default: all of SPEC). Frames: header["colour_linear"]["shape"][0]."""
    path = Path(path)
    header = _check_header(path)
    names = [k for k in header if k != "__metadata__"]
    missing = [k for k in keys or SPEC if SPEC[k][2] and k not in names]
    if missing:
        raise DataError(
            f"{path}: missing key '{missing[0]}' (NSS safetensors spec) — found {', '.join(sorted(names)) or 'none'}"
        )
    return header


def read_capture(path, keys=None):
    """Read and validate one NSS safetensors file -> dict of tensors (F, ...) in their stored dtypes.
    Missing optional keys are filled in as Arm's loader does."""
    path = Path(path)
    names = [k for k in capture_header(path, keys) if k != "__metadata__"]
    keys = keys or list(SPEC)
    out = {}
    try:
        with safe_open(str(path), "pt") as f:
            for k in keys:
                if k in names:
                    out[k] = f.get_tensor(k)
    except Exception as e:  # safetensors raises its own error types for corrupt payloads
        raise DataError(
            f"{path}: unreadable safetensors data ({str(e).splitlines()[0] if str(e) else type(e).__name__})"
        ) from None
    for k in ("colour_linear", "ground_truth_linear"):
        if out[k].dim() != 4:
            raise DataError(f"{path}: key '{k}': shape {tuple(out[k].shape)}, expected (frames, 3, height, width)")
    F = out["colour_linear"].shape[0]
    h, w = out["colour_linear"].shape[-2:]
    H, W = out["ground_truth_linear"].shape[-2:]
    dims = {"h": h, "w": w, "H": H, "W": W}
    for k, t in out.items():
        kind, shape, _ = SPEC[k]
        if t.dtype not in KINDS[kind]:
            raise DataError(f"{path}: key '{k}': dtype {str(t.dtype).replace('torch.', '')}, expected {kind}")
        want = (F,) + tuple(dims.get(s, s) for s in shape)
        if tuple(t.shape) != want:
            raise DataError(f"{path}: key '{k}': shape {tuple(t.shape)}, expected {want}")
        if kind == "float" and not torch.isfinite(t).all():
            raise DataError(f"{path}: key '{k}': contains NaN or inf")
    if F < 1 or H < h or W < w or h < 1:
        raise DataError(f"{path}: key 'ground_truth_linear': high-res {H}x{W} is not larger than low-res {h}x{w}")
    if "motion_lr" in keys and "motion_lr" not in out:
        sy, sx = H // h, W // w
        out["motion_lr"] = out["motion"][:, :, ::sy, ::sx][..., :h, :w] / torch.tensor([sy, sx]).view(1, 2, 1, 1)
    if "exposure" in keys and "exposure" not in out:
        out["exposure"] = torch.zeros(F, 1)
    if "camera_cut" in keys and "camera_cut" not in out:
        out["camera_cut"] = torch.zeros(F, 1, dtype=torch.bool)
    return out


def list_captures(root):
    root = Path(root)
    if root.is_file():
        return [root]
    files = sorted(root.rglob("*.safetensors"))
    if not files:
        raise DataError(f"{root}: no *.safetensors files found (expected Arm's NSS layout; see nss/convert.py)")
    return files


def sequences(camera_cut):
    """Split frame indices 0..F-1 into [start, end) runs that contain no camera cut after their start."""
    cut = camera_cut.view(-1).tolist()
    starts = [0] + [t for t in range(1, len(cut)) if cut[t]]
    return list(zip(starts, starts[1:] + [len(cut)]))


def to_float(cap, t0, t1, exposure_override=None):
    """Frames [t0, t1) of a capture as float32 model inputs (T, C, ...) with exposure handling:
    the multiplier is exp(override) when set (Arm's `dataset.exposure`), else exp(file exposure);
    colour and GT are clamped to [0, 65504 / exposure] as Arm's loader does."""
    ln_e = cap["exposure"][t0:t1].float().view(-1, 1, 1, 1)
    if exposure_override is not None:
        ln_e = torch.full_like(ln_e, float(exposure_override))
    exposure = ln_e.exp()
    hi = 65504.0 / exposure
    s = {
        "colour": torch.minimum(cap["colour_linear"][t0:t1].float().clamp_min(0), hi),
        "ground_truth": torch.minimum(cap["ground_truth_linear"][t0:t1].float().clamp_min(0), hi),
        "depth": cap["depth"][t0:t1].float(),
        "motion_lr": cap["motion_lr"][t0:t1].float(),
        "motion": cap["motion"][t0:t1].float(),
        "jitter": cap["jitter"][t0:t1].float(),
        "exposure": exposure,
        "depth_params": cap["depth_params"][t0:t1].float().view(-1, 4, 1, 1),
        # the full frame's low-res size, also for crops: the motion detector normalises by it
        "render_size": cap["render_size"][t0:t1].float().view(-1, 2, 1, 1),
    }
    return s


def augment(s, g):
    """Random hflip / vflip / rot90 (each p=0.5) of every image in the window, with motion (ch0 = y,
    ch1 = x) and jitter signs fixed up so that `prev = pos - mv` and `sample = centre + jitter` still hold."""
    images = ("colour", "ground_truth", "depth", "motion_lr", "motion")
    flip_x, flip_y, rot = (torch.rand(3, generator=g) < 0.5).tolist()
    sign = torch.tensor([1.0, 1.0]).view(1, 2, 1, 1)
    if flip_x:
        for k in images:
            s[k] = s[k].flip(-1)
        sign = sign * torch.tensor([1.0, -1.0]).view(1, 2, 1, 1)
    if flip_y:
        for k in images:
            s[k] = s[k].flip(-2)
        sign = sign * torch.tensor([-1.0, 1.0]).view(1, 2, 1, 1)
    for k in ("motion_lr", "motion", "jitter"):
        s[k] = s[k] * sign
    if rot:  # out[y', x'] = in[x', W-1-y']: a vector (dy, dx) becomes (-dx, dy)
        for k in images:
            s[k] = torch.rot90(s[k], 1, dims=(-2, -1))
        for k in ("motion_lr", "motion", "jitter"):
            s[k] = torch.stack([-s[k][:, 1], s[k][:, 0]], 1)
        s["depth_params"] = s["depth_params"][:, [0, 1, 3, 2]]
        s["render_size"] = s["render_size"][:, [1, 0]]
    return s


class NSSWindows:
    """All training windows of `frames` consecutive cut-free frames over a set of captures, held in memory
    (in their stored dtypes), sampled with an explicit generator so runs resume bit-exactly."""

    def __init__(self, root, frames, crop=None, augment=True, exposure=None):
        self.frames, self.crop, self.do_augment, self.exposure = frames, crop, augment, exposure
        self.files = list_captures(root)
        self.captures = [read_capture(p) for p in self.files]
        self.windows = []  # (capture index, first frame)
        for ci, cap in enumerate(self.captures):
            for a, b in sequences(cap["camera_cut"]):
                self.windows += [(ci, t) for t in range(a, b - frames + 1)]
        if not self.windows:
            raise DataError(
                f"{root}: no camera-cut-free run of {frames} frames in {len(self.files)} file(s); "
                f"lower --recurrent-samples"
            )
        cap = self.captures[0]
        self.lr_size = tuple(cap["colour_linear"].shape[-2:])
        self.scale = cap["ground_truth_linear"].shape[-1] // self.lr_size[1]

    def __len__(self):
        return len(self.windows)

    def sample(self, i, g):
        ci, t0 = self.windows[i]
        cap = self.captures[ci]
        h, w = cap["colour_linear"].shape[-2:]
        if self.crop and (self.crop < h or self.crop < w):
            c, r = min(self.crop, h), min(self.crop, w)
            y = int(torch.randint(0, h - c + 1, (1,), generator=g))
            x = int(torch.randint(0, w - r + 1, (1,), generator=g))
            sc = self.scale
            crop_lr = (slice(y, y + c), slice(x, x + r))
            crop_hr = (slice(y * sc, (y + c) * sc), slice(x * sc, (x + r) * sc))
            cap = {
                k: (
                    v[t0 : t0 + self.frames, :, crop_lr[0], crop_lr[1]]
                    if k in ("colour_linear", "depth", "motion_lr")
                    else v[t0 : t0 + self.frames, :, crop_hr[0], crop_hr[1]]
                    if k in ("ground_truth_linear", "motion")
                    else v[t0 : t0 + self.frames]
                )
                for k, v in cap.items()
            }
            s = to_float(cap, 0, self.frames, self.exposure)
        else:
            s = to_float(cap, t0, t0 + self.frames, self.exposure)
        return augment(s, g) if self.do_augment else s

    def batch(self, n, g):
        """n random windows stacked -> dict of (N, T, C, H, W)."""
        idx = torch.randint(0, len(self.windows), (n,), generator=g).tolist()
        samples = [self.sample(i, g) for i in idx]
        return {k: torch.stack([s[k] for s in samples]) for k in samples[0]}


def stream(path, exposure=None):
    """Yield (frame dict of (1, C, H, W) tensors, is_new_sequence) for every frame of a capture."""
    cap = read_capture(path)
    cut = cap["camera_cut"].view(-1)
    for t in range(cap["colour_linear"].shape[0]):
        yield to_float(cap, t, t + 1, exposure), bool(t == 0 or cut[t])
