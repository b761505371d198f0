"""Neural Super Sampling (Arm NSS v1 structure, "high" quality), in differentiable PyTorch.

    frame t (low res, jittered)          history (high res, linear)      feedback / derivative / depth (state)
            \\__________________ pre_process (non-learned) ___________________/
                                        | (N, 12, h, w) network input
                                  AutoEncoder (~148k params, the only learned and exported part)
                                        | kpn_params (N, 36, h/4, w/4), temporal_params (N, 4, h, w)
            post_process (non-learned): jitter-aware KPN filter -> variance clipping -> Karis-domain accumulation
                                        | output (N, 3, 2h, 2w) linear HDR = next frame's history

Conventions (Arm's dataset): motion and jitter in pixels, (y, x) order; motion points previous -> current
(`prev = pos - mv`); low-res pixel (i, j) was sampled at (i + 0.5 + jitter_y, j + 0.5 + jitter_x); depth is
forward-Z device depth; view depth z = p1 / (d - p0) with p = depth_params.
Shader-specific details (atomic depth scatter, packed offsets, the hand-tuned flicker state machine) are
simplified; every input and output of the reference pipeline is kept. See ../shared/ref/nss.md §2.1.
"""
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from common.images import inverse_karis, karis


@dataclass
class NSSConfig:
    scale: int = 2            # upscale factor (the reference datasets are 2x)
    kpn_size: int = 6         # KPN window in high-res pixels (6x6, offsets -2..+3) -> 36 kernel channels
    mv_zero: float = 0.1      # |mv| <= this many pixels counts as no motion (as in Arm's shaders)
    sharp_theta: bool = True  # theta = p0^2 / (p0^2 + (1-p0)^2)


def conv(cin, cout, stride=1):
    return nn.Conv2d(cin, cout, 3, stride=stride, padding=1)


class AutoEncoder(nn.Module):
    """Arm's AutoEncoderV1 layer list: 3x3 convs + ReLU, three stride-2 levels, skips, two sigmoid heads."""

    def __init__(self, in_ch=12, kpn_ch=36):
        super().__init__()
        self.e0 = nn.Sequential(conv(in_ch, 32, 2), nn.ReLU(), conv(32, 32), nn.ReLU())   # 1/2 (skip1)
        self.e1 = nn.Sequential(conv(32, 32, 2), nn.ReLU(), conv(32, 32), nn.ReLU())      # 1/4 (skip2)
        self.e2 = nn.Sequential(conv(32, 64, 2), nn.ReLU(), conv(64, 64), nn.ReLU())      # 1/8
        self.bottleneck = nn.Sequential(conv(64, 32), nn.ReLU())
        self.up2 = nn.Sequential(conv(32, 16), nn.ReLU())
        self.d2 = nn.Sequential(conv(48, 32), nn.ReLU())
        self.kpn_head = conv(32, kpn_ch)
        self.up1 = nn.Sequential(conv(32, 16), nn.ReLU())
        self.d1 = nn.Sequential(conv(48, 16), nn.ReLU(), conv(16, 16), nn.ReLU())
        self.temporal_head = conv(16, 4)

    def forward(self, x):
        # (N, 12, H, W), H and W multiples of 8
        skip1 = self.e0(x)                                                  # (N, 32, H/2, W/2)
        skip2 = self.e1(skip1)                                              # (N, 32, H/4, W/4)
        b = self.bottleneck(self.e2(skip2))                                 # (N, 32, H/8, W/8)
        d2 = self.up2(F.interpolate(b, scale_factor=2.0, mode="nearest"))   # (N, 16, H/4, W/4)
        d2 = self.d2(torch.cat([d2, skip2], 1))                             # (N, 32, H/4, W/4)
        kpn_params = torch.sigmoid(self.kpn_head(d2))                       # (N, 36, H/4, W/4)
        d1 = self.up1(F.interpolate(d2, scale_factor=2.0, mode="nearest"))  # (N, 16, H/2, W/2)
        d1 = self.d1(torch.cat([d1, skip1], 1))                             # (N, 16, H/2, W/2)
        d1 = F.interpolate(d1, scale_factor=2.0, mode="nearest")            # (N, 16, H, W)
        temporal_params = torch.sigmoid(self.temporal_head(d1))             # (N, 4, H, W)
        return kpn_params, temporal_params


# ----------------------------------------------------------------------------------------------------------
# helpers shared by the pre/post-process and the TAA baseline

def pixel_grid(n, h, w, device):
    """Pixel centres (N, 2, h, w) in pixel units, (y, x)."""
    ys = torch.arange(h, device=device, dtype=torch.float32) + 0.5
    xs = torch.arange(w, device=device, dtype=torch.float32) + 0.5
    return torch.stack(torch.meshgrid(ys, xs, indexing="ij")).expand(n, 2, h, w)


def sample(img, pos_px, size, mode="bilinear"):
    """Sample img at positions pos_px (N, 2, h, w), (y, x) in pixels of an image of `size` = (H, W) covering
    the same screen; returns (values, onscreen mask (N, 1, h, w))."""
    H, W = size
    gx = pos_px[:, 1] / W * 2 - 1
    gy = pos_px[:, 0] / H * 2 - 1
    grid = torch.stack([gx, gy], -1)
    onscreen = ((gx.abs() <= 1) & (gy.abs() <= 1)).unsqueeze(1).float()
    return F.grid_sample(img, grid, mode=mode, padding_mode="border", align_corners=False), onscreen


def shift(x, dy, dx):
    """out[y, x] = x[y + dy, x + dx] with edge replication."""
    if dy == 0 and dx == 0:
        return x
    h, w = x.shape[-2:]
    p = F.pad(x, (max(-dx, 0), max(dx, 0), max(-dy, 0), max(dy, 0)), mode="replicate")
    return p[..., max(dy, 0):max(dy, 0) + h, max(dx, 0):max(dx, 0) + w]


def view_depth(depth, depth_params):
    """Forward-Z device depth -> positive view-space depth (FSR2 deviceToViewDepth)."""
    p0, p1 = depth_params[:, 0:1], depth_params[:, 1:2]
    return p1 / (depth - p0).clamp_max(-1e-7)


def dilate_motion(depth, motion, mv_zero):
    """Depth-dilated motion: each pixel takes the motion of the nearest (min depth) pixel of its 4x4
    neighbourhood (offsets -1..+2), zeroed when |mv| <= mv_zero. Also returns the chosen offset code
    ((dy+2) << 3 | (dx+2)) / 255 (Arm's `nearest_depth_offset`)."""
    offsets = [(dy, dx) for dy in range(-1, 3) for dx in range(-1, 3)]
    depths = torch.cat([shift(depth, dy, dx) for dy, dx in offsets], 1)          # (N, 16, h, w)
    best = depths.argmin(1, keepdim=True)                                         # (N, 1, h, w)
    motions = torch.stack([shift(motion, dy, dx) for dy, dx in offsets], 1)      # (N, 16, 2, h, w)
    mv = motions.gather(1, best[:, :, None].expand(-1, 1, 2, -1, -1))[:, 0]       # (N, 2, h, w)
    mv = mv * (mv.norm(dim=1, keepdim=True) > mv_zero)
    codes = torch.tensor([((dy + 2) << 3) | (dx + 2) for dy, dx in offsets], device=depth.device, dtype=torch.float32)
    return mv, codes[best] / 255.0


def ycocg(rgb):
    r, g, b = rgb.unbind(1)
    co = r - b
    t = b + co / 2
    cg = g - t
    return torch.stack([t + cg / 2, co, cg], 1)


def jittered_taps(colour, jitter, scale, radius=1):
    """The low-res samples around each high-res pixel. For every LR tap (a, b) in a (2r+1)^2 neighbourhood of
    the LR pixel containing the HR pixel, yields (tap colour at HR res (N, C, H, W), dy, dx) where (dy, dx)
    (N, 1, H, W) is the HR-pixel offset at which that tap's jittered sample landed, relative to this pixel."""
    n, _, h, w = colour.shape
    H, W = h * scale, w * scale
    dev = colour.device
    par_y = (torch.arange(H, device=dev) % scale).view(1, 1, H, 1).float()
    par_x = (torch.arange(W, device=dev) % scale).view(1, 1, 1, W).float()
    land_y = torch.floor((0.5 + jitter[:, 0:1]) * scale)   # HR pixel (within its LR tile) the sample landed in
    land_x = torch.floor((0.5 + jitter[:, 1:2]) * scale)
    for a in range(-radius, radius + 1):
        for b in range(-radius, radius + 1):
            tap = F.interpolate(shift(colour, a, b), scale_factor=scale, mode="nearest")
            yield tap, a * scale + land_y - par_y, b * scale + land_x - par_x, (a, b)


# ----------------------------------------------------------------------------------------------------------

class NSS(nn.Module):
    """The recurrent super sampler: pre_process -> net -> post_process, state carried between frames."""

    def __init__(self, cfg=NSSConfig()):
        super().__init__()
        self.cfg = cfg
        self.net = AutoEncoder(12, cfg.kpn_size**2)

    def init_state(self, frame):
        """Zero history buffers for a batch shaped like `frame` (a dict of (N, C, h, w))."""
        n, _, h, w = frame["colour"].shape
        s, dev = self.cfg.scale, frame["colour"].device
        return {"history": torch.zeros(n, 3, h * s, w * s, device=dev),
                "feedback": torch.zeros(n, 4, h, w, device=dev),
                "derivative": torch.zeros(n, 4, h, w, device=dev),
                "view_depth": torch.zeros(n, 1, h, w, device=dev),
                "valid": torch.zeros(n, 1, 1, 1, device=dev)}

    def seed_state(self, state, prev_frame, keep):
        """GT-history augmentation: for batch elements where `keep` (N,) is true, make the previous frame's
        ground truth the history, so the model learns to trust good history."""
        m = keep.view(-1, 1, 1, 1).float()
        e = prev_frame["exposure"]
        rgb = F.grid_sample(prev_frame["colour"], self._unjitter_grid(prev_frame), align_corners=False)
        derivative = torch.cat([ycocg(torch.sqrt((rgb * e).clamp_min(0))), torch.zeros_like(rgb[:, :1])], 1)
        new = {"history": prev_frame["ground_truth"],
               "feedback": state["feedback"],
               "derivative": derivative,
               "view_depth": view_depth(prev_frame["depth"], prev_frame["depth_params"]),
               "valid": torch.ones_like(state["valid"])}
        return {k: torch.lerp(state[k], new[k], m) for k in state}

    def _unjitter_grid(self, f):
        n, _, h, w = f["colour"].shape
        pos = pixel_grid(n, h, w, f["colour"].device) - f["jitter"]
        return torch.stack([pos[:, 1] / w * 2 - 1, pos[:, 0] / h * 2 - 1], -1)

    def pre_process(self, f, state):
        """-> network input (N, 12, h, w) and the per-frame quantities the post-process needs."""
        cfg = self.cfg
        n, _, h, w = f["colour"].shape
        e = f["exposure"]
        valid = state["valid"]
        mv, nearest_offset = dilate_motion(f["depth"], f["motion_lr"], cfg.mv_zero)   # (N, 2, h, w) LR px
        prev_pos = pixel_grid(n, h, w, f["colour"].device) - mv
        warped_history, onscreen = sample(state["history"], prev_pos, (h, w))
        warped_history = karis(warped_history * e)                                      # ch 0-2
        unjittered = F.grid_sample(f["colour"], self._unjitter_grid(f), align_corners=False)
        colour_tm = karis(unjittered * e)                                                # ch 3-5
        size = torch.tensor([h, w], device=mv.device, dtype=torch.float32).norm()
        lo, hi = 1.0 / size, 200.0 / size
        motion_detect = torch.sqrt((mv.norm(dim=1, keepdim=True) / size).clamp(lo, hi).sub(lo) / (hi - lo))  # ch 6
        # Disocclusion: the surface seen now was hidden last frame if the reprojected previous depth is
        # clearly nearer (a depth clip like FSR2's, with backward warping instead of a depth scatter).
        z = view_depth(f["depth"], f["depth_params"])
        z_prev, _ = sample(state["view_depth"], prev_pos, (h, w), mode="nearest")
        rel = (z - z_prev) / z.clamp_min(1e-6)
        disocclusion = 1 - (1 - ((rel - 0.02) / 0.08).clamp(0, 1)) * onscreen * valid
        keep = (disocclusion <= 0.01).float()
        warped_feedback = sample(state["feedback"], prev_pos, (h, w))[0] * keep          # ch 7-10
        # Flicker detector ("luma derivative"): temporal change of YCoCg(sqrt(colour)) that spatial
        # contrast doesn't explain, filtered over time; reset where history is not trusted.
        cur = ycocg(torch.sqrt((unjittered * e).clamp_min(0)))
        prev_deriv = sample(state["derivative"], prev_pos, (h, w))[0]
        wts = torch.tensor([1.0, 1.25, 1.25], device=cur.device).view(1, 3, 1, 1)
        d_time = ((cur - prev_deriv[:, :3]) * wts).norm(dim=1, keepdim=True)
        d_space = torch.stack([((cur - shift(cur, dy, dx)) * wts).norm(dim=1)
                               for dy, dx in ((-1, 0), (1, 0), (0, -1), (0, 1))], 1)
        d_space = d_space.sort(1).values[:, :3].mean(1, keepdim=True)                   # mean of 3 weakest
        raw = ((d_time - d_space - 0.02) / 0.2).clamp(0, 1)
        old = prev_deriv[:, 3:4]
        inst = torch.where(raw > old, old + 0.2 * (raw - old), old + 0.05 * (raw - old)) * keep
        derivative = torch.cat([cur, inst], 1)                                           # ch 11 = inst
        x = torch.cat([warped_history, colour_tm, motion_detect, warped_feedback, inst], 1)
        aux = {"mv": mv, "nearest_depth_offset": nearest_offset, "disocclusion_mask": disocclusion,
               "derivative": derivative, "view_depth": z, "input_color": colour_tm}
        return x, aux

    def run_net(self, x, net=None):
        """Pad (replicate) to multiples of 8, run the autoencoder, crop the heads back."""
        h, w = x.shape[-2:]
        ph, pw = (-h) % 8, (-w) % 8
        xp = F.pad(x, (0, pw, 0, ph), mode="replicate") if ph or pw else x
        kpn_params, temporal_params = (net or self.net)(xp)
        kpn_lr = F.interpolate(kpn_params, scale_factor=4.0, mode="nearest")[..., :h, :w]  # KPN-res texel per LR px
        return kpn_lr.float(), temporal_params[..., :h, :w].float()

    def post_process(self, f, state, aux, kpn_lr, temporal_params):
        cfg = self.cfg
        s, k = cfg.scale, cfg.kpn_size
        e = f["exposure"]
        colour = f["colour"] * e
        n, _, h, w = colour.shape
        # Jitter-aware KPN filter: every LR sample near the HR pixel is weighted by the kernel channel of the
        # HR offset it landed at (k x k window, offsets -(k/2-1)..k/2, column-major), predicted per LR tap.
        wsum = m1 = m2 = centre = has_centre = 0
        kpn_hr = {}
        for tap, dy, dx, (a, b) in jittered_taps(colour, f["jitter"], s):
            if (a, b) not in kpn_hr:
                kpn_hr[a, b] = F.interpolate(shift(kpn_lr, a, b), scale_factor=s, mode="nearest")
            valid = ((dy >= 1 - k // 2) & (dy <= k // 2) & (dx >= 1 - k // 2) & (dx <= k // 2)).float()
            index = ((dy + k // 2 - 1) + (dx + k // 2 - 1) * k).clamp(0, k * k - 1).long().expand(n, 1, h * s, w * s)
            wt = kpn_hr[a, b].gather(1, index).clamp_min(1e-7) * valid
            wsum = wsum + wt
            m1 = m1 + wt * tap
            m2 = m2 + wt * tap * tap
            hit = ((dy == 0) & (dx == 0)).float()
            centre = centre + hit * tap
            has_centre = has_centre + hit
        m1, m2 = m1 / wsum, m2 / wsum
        p = F.interpolate(temporal_params, scale_factor=s, mode="bilinear", align_corners=False)
        p0 = p[:, 0:1]
        theta = p0**2 / (p0**2 + (1 - p0) ** 2) if cfg.sharp_theta else p0
        alpha = 0.05 + 0.35 * p[:, 1:2]
        gamma = 2 * p[:, 2:3]
        mv_hr = F.interpolate(aux["mv"], scale_factor=s, mode="nearest") * s
        prev_pos = pixel_grid(n, h * s, w * s, colour.device) - mv_hr
        warped, onscreen = sample(state["history"], prev_pos, (h * s, w * s), mode="bicubic")
        warped = warped.clamp_min(0) * e
        valid = state["valid"]
        sigma = torch.sqrt((m2 - m1 * m1).abs() + 1e-12) * gamma
        clipped = torch.minimum(torch.maximum(warped, m1 - sigma), m1 + sigma)
        rectified = torch.lerp(clipped, warped, theta * onscreen * valid)
        rectified = torch.lerp(m1, rectified, valid)                   # reset: the spatial filter alone
        out_tm = torch.lerp(karis(rectified), karis(centre), alpha * has_centre.clamp(max=1) * valid)
        output_linear = inverse_karis(out_tm.clamp(0, 1 - 1e-7)) / e
        return output_linear, m1 / e

    def forward(self, f, state, net=None, autocast=None):
        """One frame. f: dict of (N, C, h, w) tensors (colour, depth, motion_lr, jitter, exposure,
        depth_params); state from init_state/previous call. Returns (outputs dict, new state)."""
        x, aux = self.pre_process(f, state)
        if autocast is not None:
            with autocast:
                kpn_lr, temporal_params = self.run_net(x, net)
        else:
            kpn_lr, temporal_params = self.run_net(x, net)
        output_linear, filtered_linear = self.post_process(f, state, aux, kpn_lr, temporal_params)
        new_state = {"history": output_linear, "feedback": temporal_params, "derivative": aux["derivative"],
                     "view_depth": aux["view_depth"], "valid": torch.ones_like(state["valid"])}
        out = {"output_linear": output_linear, "out_filtered_linear": filtered_linear,
               "temporal_params": temporal_params, "kpn_params": kpn_lr, "net_input": x, **aux}
        return out, new_state


def taa_upsample(f, state, scale=2, sigma=0.6, mv_zero=0.1):
    """Baseline: TAA upsampling without learning. Jittered samples splatted with a Gaussian (σ in HR px),
    history reprojected with depth-dilated motion, clamped to the samples' min/max, accumulated
    exponentially in the Karis domain. state = {'history', 'valid'} like NSS.init_state."""
    e = f["exposure"]
    colour = f["colour"] * e
    n, _, h, w = colour.shape
    wsum = acc = 0
    lo = hi = None
    wmax = torch.zeros(n, 1, h * scale, w * scale, device=colour.device)
    for tap, dy, dx, _ in jittered_taps(colour, f["jitter"], scale):
        # distance from this HR pixel's centre to the sample (within the landing HR pixel, exact sub-position)
        fy = (0.5 + f["jitter"][:, 0:1]) * scale % 1 - 0.5
        fx = (0.5 + f["jitter"][:, 1:2]) * scale % 1 - 0.5
        wt = torch.exp(-((dy + fy) ** 2 + (dx + fx) ** 2) / (2 * sigma**2))
        wsum, acc = wsum + wt, acc + wt * tap
        wmax = torch.maximum(wmax, wt)
        lo = tap if lo is None else torch.minimum(lo, tap)
        hi = tap if hi is None else torch.maximum(hi, tap)
    current = acc / wsum
    mv, _ = dilate_motion(f["depth"], f["motion_lr"], mv_zero)
    mv_hr = F.interpolate(mv, scale_factor=scale, mode="nearest") * scale
    warped, onscreen = sample(state["history"], pixel_grid(n, h * scale, w * scale, colour.device) - mv_hr,
                              (h * scale, w * scale), mode="bilinear")
    warped = torch.minimum(torch.maximum(warped * e, lo), hi)
    alpha = torch.lerp(torch.ones_like(wmax), 0.04 + 0.3 * wmax, onscreen * state["valid"])
    out = inverse_karis(torch.lerp(karis(warped), karis(current), alpha).clamp(0, 1 - 1e-7)) / e
    return out, {"history": out, "valid": torch.ones_like(state["valid"])}
