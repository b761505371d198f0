"""Neural Super Sampling (Arm NSS v1 structure, "high", "mid" or "low" quality), in differentiable PyTorch.

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
The pre- and post-process follow Arm's Slang shaders step by step (arm/neural-graphics-model-gym at ef328bf,
`src/ng_model_gym/usecases/nss/model/shaders/nss_v1/`); nss/pre_process.py and nss/post_process.py document
each step with its file:line. The helpers below serve the project's TAA baseline.

Quality (Arm's `nss/model/quality_modes.py:73-111`, NSSConfig.quality): "mid" and "low" run the pre-process and
the network at half the LR size (input (N, 12, padded(h // 2), padded(w // 2))), a quarter-res depth scatter
and LQ disocclusion, and a 16-channel (4x4) KPN; low also swaps the history Catmull-Rom for bilinear.
`prune_kpn` turns a high checkpoint (36 KPN channels) into a mid/low one as Arm does.
"""

from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from nss.luma_derivative import pixel_centres
from nss.post_process import QUALITY, inverse_karis, karis, post_process
from nss.pre_process import pre_process, state_sizes


@dataclass
class NSSConfig:
    scale: int = 2  # upscale factor (the reference datasets are 2x)
    kpn_size: int = 6  # KPN window in high-res pixels (6x6, offsets -2..+3) -> 36 kernel channels
    mv_zero: float = 0.1  # |mv| <= this many pixels counts as no motion (as in Arm's shaders)
    sharp_theta: bool = True  # theta = p0^2 / (p0^2 + (1-p0)^2)
    quality: str = "high"  # Arm's quality mode: "high", "mid" or "low" (mid/low: 16 KPN channels, half-res)


# Arm's get_kpn_prune_indices((6, 6), (4, 4)) (model_blocks_v1.py:206-244): the centred 4x4 of the 6x6 window,
# column-major like the KPN channels (channel = row + col * 6, row = dy + 2, col = dx + 2; post_process.py's
# convention), rows and cols 1..4, i.e. offsets -1..2; mid/low channel k = (col - 1) * 4 + (row - 1), which is
# post_process's sparse channel (dx + 1) * 4 + (dy + 1) (post_process.slang:271-289)
KPN_PRUNE_INDICES = tuple(row + col * 6 for col in range(1, 5) for row in range(1, 5))


def prune_kpn(state_dict):
    """A high-quality checkpoint -> mid/low: the 36-channel KPN head's weight and bias (keys ending in
    `kpn_head.weight` / `kpn_head.bias`) and, as Arm, any 36-channel QAT observer tensor
    (`activation_post_process_*`) keep the 16 channels KPN_PRUNE_INDICES, in that order (Arm's
    prepare_checkpoint_state_dict_for_weights_load, model_v1.py:591-657). Already 16 channels: unchanged.
    Returns a new dict; the input is not modified."""
    src, dst = 36, len(KPN_PRUNE_INDICES)
    heads = [k for k in state_dict if k.endswith(("kpn_head.weight", "kpn_head.bias"))]
    if not heads:
        raise ValueError("no 'kpn_head.weight' / 'kpn_head.bias' in the state dict")
    channels = {int(state_dict[k].shape[0]) for k in heads}
    if channels == {dst}:
        return dict(state_dict)
    if channels != {src}:
        raise ValueError(f"KPN prune needs a {src}-channel (6x6) head, got {sorted(channels)} channels")
    out = dict(state_dict)
    for k, v in state_dict.items():
        if (k in heads or "activation_post_process_" in k) and torch.is_tensor(v) and v.ndim >= 1 and v.shape[0] == src:
            out[k] = v.index_select(0, torch.tensor(KPN_PRUNE_INDICES, device=v.device))
    return out


def conv(cin, cout, stride=1):
    return nn.Conv2d(cin, cout, 3, stride=stride, padding=1)


class AutoEncoder(nn.Module):
    """Arm's AutoEncoderV1 layer list: 3x3 convs + ReLU, three stride-2 levels, skips, two sigmoid heads."""

    def __init__(self, in_ch=12, kpn_ch=36):
        super().__init__()
        self.e0 = nn.Sequential(conv(in_ch, 32, 2), nn.ReLU(), conv(32, 32), nn.ReLU())  # 1/2 (skip1)
        self.e1 = nn.Sequential(conv(32, 32, 2), nn.ReLU(), conv(32, 32), nn.ReLU())  # 1/4 (skip2)
        self.e2 = nn.Sequential(conv(32, 64, 2), nn.ReLU(), conv(64, 64), nn.ReLU())  # 1/8
        self.bottleneck = nn.Sequential(conv(64, 32), nn.ReLU())
        self.up2 = nn.Sequential(conv(32, 16), nn.ReLU())
        self.d2 = nn.Sequential(conv(48, 32), nn.ReLU())
        self.kpn_head = conv(32, kpn_ch)
        self.up1 = nn.Sequential(conv(32, 16), nn.ReLU())
        self.d1 = nn.Sequential(conv(48, 16), nn.ReLU(), conv(16, 16), nn.ReLU())
        self.temporal_head = conv(16, 4)

    def forward(self, x, up_conv=None):
        # (N, 12, H, W), H and W multiples of 8. up_conv(conv, t, act) computes act(conv(nearest_x2(t))) (default:
        # just so); SubpixelNet passes another way of computing the same
        up = up_conv or upsample_conv
        skip1 = self.e0(x)  # (N, 32, H/2, W/2)
        skip2 = self.e1(skip1)  # (N, 32, H/4, W/4)
        b = self.bottleneck(self.e2(skip2))  # (N, 32, H/8, W/8)
        d2 = up(self.up2[0], b, self.up2[1])  # (N, 16, H/4, W/4)
        d2 = self.d2(torch.cat([d2, skip2], 1))  # (N, 32, H/4, W/4)
        kpn_params = torch.sigmoid(self.kpn_head(d2))  # (N, 36, H/4, W/4)
        d1 = up(self.up1[0], d2, self.up1[1])  # (N, 16, H/2, W/2)
        d1 = self.d1(torch.cat([d1, skip1], 1))  # (N, 16, H/2, W/2)
        temporal_params = up(self.temporal_head, d1, torch.sigmoid)  # (N, 4, H, W)
        return kpn_params, temporal_params


def upsample_conv(conv, t, act):
    """act(conv(nearest_x2(t))): each of the AutoEncoder's three upsamples and the conv after it."""
    return act(conv(F.interpolate(t, scale_factor=2.0, mode="nearest")))


# the two sub-pixel phases of one axis: a 3x3 conv of a nearest-x2-upsampled image reads, for an output at even
# position 2i, input pixels (i-1, i, i) with its taps (0, 1, 2), and at odd position 2i+1 pixels (i, i, i+1)
_PHASE_TAPS = torch.tensor(
    [
        [[1.0, 0, 0], [0, 1, 1], [0, 0, 0]],  # [phase, low-res tap -1/0/+1, original tap]
        [[0.0, 0, 0], [1, 1, 0], [0, 0, 1]],
    ]
)


def subpixel_conv(conv):
    """conv(nearest_x2(x)) == pixel_shuffle(subpixel_conv(conv)(x), 2) for a 3x3, padding-1 conv: the four output
    phases become 4x the output channels of a 3x3 conv at the low resolution (channel o * 4 + row phase * 2 +
    column phase, pixel_shuffle's order). Same multiply-adds, and the upsampled image is never made."""
    w = conv.weight.detach()
    cout, cin = w.shape[:2]
    new = nn.Conv2d(cin, 4 * cout, 3, padding=1)
    with torch.no_grad():
        new.weight.copy_(torch.einsum("pak,qbl,oikl->opqiab", _PHASE_TAPS, _PHASE_TAPS, w).reshape(4 * cout, cin, 3, 3))
        new.bias.copy_(conv.bias.detach().repeat_interleave(4))
    return new


class SubpixelNet(nn.Module):
    """The AutoEncoder's function with each nearest upsample folded into the conv after it (subpixel_conv), for
    CPU programs: XNNPACK has no nearest resize, so the upsamples would split its graph into four partitions with
    layout conversions between them; this form is delegated whole. Outputs equal the AutoEncoder's (fp32 rounding)."""

    def __init__(self, net):
        super().__init__()
        self.net = net
        self.folded = nn.ModuleList(subpixel_conv(c) for c in self.upsampled_convs())

    def upsampled_convs(self):
        return self.net.up2[0], self.net.up1[0], self.net.temporal_head

    def forward(self, x):
        # the activation before the pixel shuffle (they commute), so that XNNPACK fuses it into its conv
        convs = self.upsampled_convs()  # looked up per call: a deep copy (PT2E quantization) holds new modules
        fold = lambda conv, t, act: F.pixel_shuffle(act(self.folded[convs.index(conv)](t)), 2)
        return self.net(x, up_conv=fold)


# ----------------------------------------------------------------------------------------------------------
# helpers shared by the pre/post-process and the TAA baseline


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
    return p[..., max(dy, 0) : max(dy, 0) + h, max(dx, 0) : max(dx, 0) + w]


def dilate_motion(depth, motion, mv_zero):
    """The TAA baseline's depth-dilated motion: each pixel takes the motion of the nearest (min depth) pixel of
    its 4x4 neighbourhood (offsets -1..+2; ties go to the first in row order, not Arm's visiting order, which
    nss/pre_process.nearest_depth follows), zeroed when |mv| <= mv_zero."""
    offsets = [(dy, dx) for dy in range(-1, 3) for dx in range(-1, 3)]
    depths = torch.cat([shift(depth, dy, dx) for dy, dx in offsets], 1)  # (N, 16, h, w)
    best = depths.argmin(1, keepdim=True)  # (N, 1, h, w)
    motions = torch.stack([shift(motion, dy, dx) for dy, dx in offsets], 1)  # (N, 16, 2, h, w)
    mv = motions.gather(1, best[:, :, None].expand(-1, 1, 2, -1, -1))[:, 0]  # (N, 2, h, w)
    return mv * (mv.norm(dim=1, keepdim=True) > mv_zero)


def jittered_taps(colour, jitter, scale, radius=1):
    """The low-res samples around each high-res pixel. For every LR tap (a, b) in a (2r+1)^2 neighbourhood of
    the LR pixel containing the HR pixel, yields (tap colour at HR res (N, C, H, W), dy, dx) where (dy, dx)
    (N, 1, H, W) is the HR-pixel offset at which that tap's jittered sample landed, relative to this pixel."""
    n, _, h, w = colour.shape
    H, W = h * scale, w * scale
    dev = colour.device
    par_y = (torch.arange(H, device=dev) % scale).view(1, 1, H, 1).float()
    par_x = (torch.arange(W, device=dev) % scale).view(1, 1, 1, W).float()
    land_y = torch.floor((0.5 + jitter[:, 0:1]) * scale)  # HR pixel (within its LR tile) the sample landed in
    land_x = torch.floor((0.5 + jitter[:, 1:2]) * scale)
    for a in range(-radius, radius + 1):
        for b in range(-radius, radius + 1):
            tap = F.interpolate(shift(colour, a, b), scale_factor=scale, mode="nearest")
            yield tap, a * scale + land_y - par_y, b * scale + land_x - par_x, (a, b)


# ----------------------------------------------------------------------------------------------------------


class NSS(nn.Module):
    """The recurrent super sampler: Arm's pre-process -> net -> Arm's post-process, state carried between
    frames (nss/pre_process.py and nss/post_process.py say what each step computes)."""

    def __init__(self, cfg=NSSConfig()):
        super().__init__()
        if cfg.quality not in QUALITY:
            raise ValueError(f"quality must be one of {tuple(QUALITY)}, got {cfg.quality!r}")
        self.cfg = cfg
        self.net = AutoEncoder(12, cfg.kpn_size**2 if cfg.quality == "high" else QUALITY[cfg.quality]["kpn_channels"])

    def init_state(self, frame):
        """Reset history buffers (Arm's `_create_zero_history_buffers`, model_v1.py:807-848) for a batch shaped
        like `frame`: history at high res; feedback at the padded process size; derivative at LR (high) or at
        the padded half-res size (mid/low). `valid` = 0 marks a reset frame (the post-process ignores history);
        `fresh` = 1 zeroes its motion."""
        n, _, h, w = frame["colour"].shape
        sizes = state_sizes(h, w, self.cfg.quality)
        H, W = round(h * self.cfg.scale), round(w * self.cfg.scale)
        dev = frame["colour"].device
        return {
            "history": torch.zeros(n, 3, H, W, device=dev),
            "feedback": torch.zeros(n, 4, *sizes["padded"], device=dev),
            "derivative": torch.zeros(n, 4, *sizes["derivative"], device=dev),
            "valid": torch.zeros(n, 1, 1, 1, device=dev),
            "fresh": torch.ones(n, 1, 1, 1, device=dev),
        }

    def seed_state(self, state, target, keep):
        """Arm's GT-history augmentation (model_v1.py:443-501): on the first frame of a window, for batch
        elements where `keep` (N,) is true, the history becomes `target` (Arm passes its tonemapped loss target)
        and the frame stops counting as a reset. Its motion stays zeroed, feedback and derivative stay zero."""
        m = keep.view(-1, 1, 1, 1).float()
        return {**state, "history": torch.lerp(state["history"], target, m), "valid": torch.maximum(state["valid"], m)}

    def run_net(self, x, net=None):
        """The autoencoder on the padded input -> (kpn_params (N, K, Hp/4, Wp/4), temporal_params (N, 4, Hp, Wp))."""
        kpn_params, temporal_params = (net or self.net)(x)
        return kpn_params.float(), temporal_params.float()

    def forward(self, f, state, net=None, autocast=None):
        """One frame. f: dict of (N, C, h, w) tensors (colour, depth, motion_lr, jitter, exposure,
        depth_params, render_size); state from init_state/previous call. Returns (outputs dict, new state)."""
        f = {**f, "motion_lr": f["motion_lr"] * (1 - state["fresh"])}  # Arm zeroes motion on reset frames
        quality = self.cfg.quality
        x, aux = pre_process(f, state, quality=quality)
        if autocast is not None:
            with autocast:
                kpn_params, temporal_params = self.run_net(x, net)
        else:
            kpn_params, temporal_params = self.run_net(x, net)
        output_linear, filtered_linear = post_process(
            f["colour"],
            f["exposure"],
            f["jitter"],
            kpn_params,
            temporal_params,
            aux["nearest_depth_offset"],
            f["motion_lr"],
            state["history"],
            state["valid"],
            scale=float(self.cfg.scale),
            quality=quality,
            sharp_theta=self.cfg.sharp_theta,
        )
        h, w = state_sizes(*f["colour"].shape[-2:], quality)["process"]  # temporal params of the real pixels
        new_state = {
            "history": output_linear,
            "feedback": temporal_params,
            "derivative": aux["derivative"],
            "valid": torch.ones_like(state["valid"]),
            "fresh": torch.zeros_like(state["fresh"]),
        }
        out = {
            "output_linear": output_linear,
            "out_filtered_linear": filtered_linear,
            "temporal_params": temporal_params[..., :h, :w],
            "kpn_params": kpn_params,
            "net_input": x,
            "reset": 1 - state["valid"],
            **aux,
        }
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
    mv = dilate_motion(f["depth"], f["motion_lr"], mv_zero)
    mv_hr = F.interpolate(mv, scale_factor=scale, mode="nearest") * scale
    warped, onscreen = sample(
        state["history"],
        pixel_centres(n, h * scale, w * scale, colour.device) - mv_hr,
        (h * scale, w * scale),
        mode="bilinear",
    )
    warped = torch.minimum(torch.maximum(warped * e, lo), hi)
    alpha = torch.lerp(torch.ones_like(wmax), 0.04 + 0.3 * wmax, onscreen * state["valid"])
    out = inverse_karis(torch.lerp(karis(warped), karis(current), alpha).clamp(0, 1 - 1e-7)) / e
    return out, {"history": out, "valid": torch.ones_like(state["valid"])}
