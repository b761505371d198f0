"""The small 2D renderer of nss/scenes.py: stacks of fronto-parallel layers -> a capture in Arm's NSS layout.

A Layer is content(qy, qx) -> (premultiplied rgb, alpha) at rest coordinates, at a view depth, with its own drift
and Sway waves; a Shot is layers (front to back, the last opaque) and a camera path from its start frame, each
later Shot starting with a camera cut. render_scene() renders a list of Shots with every key, and every
convention, of nss/synth.py: composite() at the jittered low-res samples and at 16 samples per high-res pixel (the
ground truth), and the exact motion of the visible layer (layer_motion()). The model (shifts, the alpha-test rule,
the fixed-point motion solve) is explained in nss/scenes.py's docstring. A library module, no CLI:

    shots = [Shot(0, [Layer("wall", 4.0, lambda qy, qx: (torch.ones(3, qy.numel()), torch.ones_like(qy)))])]
    tensors = render_scene(shots, frames=4, size=(64, 64), seq_name="white wall")
"""

import contextlib
import math
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import torch

from nss.raycast import Camera, depth_params, device_depth, karis_mean
from nss.synth import SCALE, check_depth_params, jitter_px, pack_capture

FOV_Y = math.radians(60.0)
SPP = 16  # ground truth: 4 x 4 samples per high-res pixel, as synth's default
FIXED_POINT_ITERS = 12  # previous-position solve: the sway gradients keep the contraction <= ~0.41


# ----------------------------------------------------------------------------------------------------------
# Layers and shots.


@dataclass
class Sway:
    """One travelling wave of the shift: amp * sin(omega t + wave . p + phase), amp (y, x) in px."""

    amp: tuple
    wave: tuple  # (ky, kx) rad / px
    omega: float  # rad / frame
    phase: float = 0.0


@dataclass
class Layer:
    """A fronto-parallel layer at view depth z. content(qy, qx) -> (premultiplied rgb (3, N), alpha (N,)) at
    rest coordinates (high-res px); clip(y, x) -> coverage of a static screen-space window (None = all)."""

    name: str
    z: float
    content: Callable
    drift: tuple = (0.0, 0.0)  # the layer's own motion, px / frame (y, x)
    sway: list = field(default_factory=list)
    clip: Callable = None


@dataclass
class Shot:
    """Frames from `start` until the next shot's start; layers front to back, the last one opaque."""

    start: int
    layers: list
    eye: Callable = lambda t: np.zeros(3)  # camera position at frame t (world units, x right, y up)


def focal_px(H):
    """Focal length in high-res pixels (square pixels, so the same for x and y)."""
    return H / (2 * math.tan(FOV_Y / 2))


def shift(layer, eye, f, t, y, x):
    """S_t at screen points (y, x) (high-res px): where the layer's rest point q = p - S_t(p) has moved to.
    A camera translated by e moves a plane at depth z by (e_y, -e_x) f / z px (image y points down)."""
    sy = float(eye[1] * f / layer.z + layer.drift[0] * t)
    sx = float(-eye[0] * f / layer.z + layer.drift[1] * t)
    for s in layer.sway:
        wave = torch.sin(s.omega * t + s.wave[0] * y + s.wave[1] * x + s.phase)
        sy, sx = sy + s.amp[0] * wave, sx + s.amp[1] * wave
    return sy + torch.zeros_like(y), sx + torch.zeros_like(x)


def sample_layer(layer, eye, f, t, y, x):
    sy, sx = shift(layer, eye, f, t, y, x)
    rgb, alpha = layer.content(y - sy, x - sx)
    if layer.clip is not None:
        m = layer.clip(y, x)
        rgb, alpha = rgb * m, alpha * m
    return rgb, alpha


def composite(shot, f, t, y, x):
    """Front-to-back 'over' of all layers at points (N,) -> rgb (3, N), index of the visible layer (N,)."""
    eye = shot.eye(t)
    rgb = torch.zeros(3, y.numel())
    trans = torch.ones(y.numel())
    visible = torch.full((y.numel(),), len(shot.layers) - 1, dtype=torch.long)
    found = torch.zeros(y.numel(), dtype=torch.bool)
    for k, layer in enumerate(shot.layers):
        c, a = sample_layer(layer, eye, f, t, y, x)
        rgb += trans * c
        trans = trans * (1 - a)
        hit = ~found & (a >= 0.5)
        visible[hit] = k
        found |= hit
    return rgb, visible


def layer_motion(layer, shot, f, t, y, x):
    """Exact motion (2, N) of the layer's points now at (y, x): p - p', where p' - S_{t-1}(p') = q = p - S_t(p)."""
    sy, sx = shift(layer, shot.eye(t), f, t, y, x)
    qy, qx = y - sy, x - sx
    eye = shot.eye(t - 1)
    py, px = y, x
    for _ in range(FIXED_POINT_ITERS):
        sy, sx = shift(layer, eye, f, t - 1, py, px)
        py, px = qy + sy, qx + sx
    sy, sx = shift(layer, eye, f, t - 1, py, px)
    err = torch.maximum((py - sy - qy).abs(), (px - sx - qx).abs()).max() if y.numel() else 0.0
    assert err < 1e-3, f"layer {layer.name}: previous-position solve did not converge ({err:.2e} px)"
    return torch.stack([y - py, x - px])


def motion_at(shot, f, t, y, x, visible):
    mv = torch.zeros(2, y.numel())
    for k, layer in enumerate(shot.layers):
        idx = (visible == k).nonzero()[:, 0]
        if idx.numel():
            mv[:, idx] = layer_motion(layer, shot, f, t, y[idx], x[idx])
    return mv


def pixel_grid(rows, cols, y0, x0, step):
    """Flattened sample positions (y0 + r step, x0 + c step) -> (y, x), each (rows * cols,)."""
    ys = y0 + step * torch.arange(rows, dtype=torch.float32)
    xs = x0 + step * torch.arange(cols, dtype=torch.float32)
    return ys[:, None].expand(rows, cols).reshape(-1), xs[None, :].expand(rows, cols).reshape(-1)


# ----------------------------------------------------------------------------------------------------------
# Rendering a capture.


@contextlib.contextmanager
def one_thread():
    """Run torch single-threaded, restoring the setting after. Every op here is a few ms of memory-bound work:
    on a 2-core machine that is also busy with anything else, OpenMP's per-op thread hand-offs made rendering
    10x slower with 2 threads than with 1 (measured: 0.8 s vs 14 s for 3 foliage frames at 256x256)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def render_scene(shots, frames, size, seq_name, on_frame=None):
    """Render a list of Shots for `frames` frames at high res `size` = (H, W) -> dict of tensors with every key
    nss/synth.py writes (Arm's NSS layout)."""
    with one_thread():
        return _render(shots, frames, size, seq_name, on_frame)


def _render(shots, frames, size, seq_name, on_frame):
    H, W = size
    h, w = H // SCALE, W // SCALE
    s = math.isqrt(SPP)
    f = focal_px(H)
    params = depth_params(FOV_Y, h, w)
    starts = [sh.start for sh in shots]
    gt_y, gt_x = pixel_grid(s * H, s * W, 0.5 / s, 0.5 / s, 1.0 / s)
    hr_y, hr_x = pixel_grid(H, W, 0.5, 0.5, 1.0)
    lr_y, lr_x = pixel_grid(h, w, SCALE * 0.5, SCALE * 0.5, float(SCALE))  # LR pixel centres in high-res px
    keys = ("colour_linear", "ground_truth_linear", "depth", "motion_lr", "motion", "jitter", "viewProj")
    out = {k: [] for k in keys}
    for t in range(frames):
        shot = [sh for sh in shots if sh.start <= t][-1]
        jy, jx = jitter_px(t)
        gt, _ = composite(shot, f, t, gt_y, gt_x)
        gt = karis_mean(gt.view(3, s * H, s * W), s)
        colour, vis = composite(shot, f, t, lr_y + SCALE * jy, lr_x + SCALE * jx)
        view_depth = torch.tensor([layer.z for layer in shot.layers])[vis].view(h, w)
        depth = device_depth(view_depth)
        check_depth_params(depth, view_depth, params)
        if t in starts:  # first frame or a cut: no previous frame to point at
            mv_hr, mv_lr = torch.zeros(2, H, W), torch.zeros(2, h, w)
        else:
            _, vis_hr = composite(shot, f, t, hr_y, hr_x)
            _, vis_lr = composite(shot, f, t, lr_y, lr_x)
            mv_hr = motion_at(shot, f, t, hr_y, hr_x, vis_hr).view(2, H, W)
            mv_lr = motion_at(shot, f, t, lr_y, lr_x, vis_lr).view(2, h, w) / SCALE
            # Arm clamps UV motion to [-1, 1], i.e. to the image size in pixels
            lim = torch.tensor([H, W], dtype=torch.float32).view(2, 1, 1)
            mv_hr = torch.maximum(torch.minimum(mv_hr, lim), -lim)
            mv_lr = torch.maximum(torch.minimum(mv_lr, lim / SCALE), -lim / SCALE)
        out["ground_truth_linear"].append(gt.half())
        out["colour_linear"].append(colour.view(3, h, w).half())
        out["depth"].append(depth[None])
        out["motion"].append(mv_hr.half())
        out["motion_lr"].append(mv_lr.half())
        out["jitter"].append(torch.tensor([jy, jx]).view(2, 1, 1))
        out["viewProj"].append(torch.from_numpy(Camera(shot.eye(t), 0.0, 0.0, FOV_Y, W / H).view_proj()).float()[None])
        if on_frame:
            on_frame()

    return pack_capture(out, starts, (h, w), (H, W), FOV_Y, params, seq_name)
