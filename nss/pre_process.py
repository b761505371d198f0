"""Arm's NSS v1 pre-process (all three qualities) in differentiable PyTorch: one frame's inputs -> the 12-channel
network input, exactly as Arm's Slang shaders compute it.

Reference: arm/neural-graphics-model-gym at ef328bf, `src/ng_model_gym/usecases/nss/model/shaders/`
(`nss_v1/depth_scatter.slang`, `nss_v1/nss_common.slang`, `nss_v1/pre_process.slang`; below "ds", "nc", "pp").
"high" quality:

    depth_scatter   ds:88-166, nc:348-372   this frame's depth, pushed back to where each surface was last frame:
                    at half low-res, the nearest (min) depth of each 2x2 block (ties: the later tap of tl, tr,
                    bl, br) with its motion / 2, zeroed when |mv| <= 0.1 px, atomic-min scattered as
                    int(depth * 2^31) into every bilinear neighbour of uv - mv whose weight is > 0.1 (INT_MAX
                    where nothing lands)
    nearest depth   nc:198-254              4x4 window (offsets -1..+2), centre first, strict '<', off-screen
                    taps skipped; the motion there, zeroed when |mv| <= 0.1 px (pp:283-293)
    disocclusion    nc:258-335, pp:452-479  FSR2's depth clip of the dilated depth against the scattered depth
                    at the half-res texel of the pixel minus its motion: k_sep 1.37e-5, k_fov, the render-size
                    diagonal, power lerp(1, 3, |render| / |1080p|); off-screen taps count as disoccluded
    ch 0-2          pp:335-340              history (previous output, linear, high res) bilinear at uv - mv,
                                            zero outside the image, x exposure, Karis tonemap
    ch 3-5          pp:302-306              this frame's colour bilinear at uv - jitter (clamped at the edges),
                                            x exposure, Karis tonemap
    ch 6            pp:481-490              motion detector per axis with the capture's render_size (the full
                                            frame, also for crops): sqrt((clamp(|mv / rs|, |1 / rs|, |200 / rs|)
                                            - lo) / (hi - lo))
    ch 7-10         pp:425-432              last frame's temporal params, bilinear at the *padded* uv - mv,
                                            zero outside, zeroed where disocclusion > 0.01
    ch 11           pp:523-777              the luma-derivative flicker detector (nss/luma_derivative.py)
    padding         pp:197-200, 918         the input is padded to a multiple of 8 by mirroring the edge pixel
                                            (index size + k reads size - 1 - k); every channel but the feedback
                                            is the mirrored pixel's value

Conventions: NCHW; motion and jitter in pixels of their own resolution, (y, x) order; motion points previous ->
current (previous position = pos - mv); low-res pixel (i, j) was sampled at (i + 0.5 + jitter_y, j + 0.5 +
jitter_x); forward-Z device depth; view depth z = p1 / (d - p0) with p = depth_params (FSR2 deviceToViewDepth).

"mid" and "low" quality (Arm's quality_modes.py:73-97 -> nss_v1.slang:23-43 defines; below also "dl" =
`nss_v1/disocclusion_lq.slang`, "mv1" = `model_v1.py`; the two modes differ only in the post-process):
    sizes           mv1:223-282, 985-991, 1001-1018   process (p, q) = (h // 2, w // 2), padded to a multiple of
                    8: the network input, feedback, derivative state and packed offsets are (Hp, Wp) = padded
                    (p, q); disocclusion_mask (p, q); depth_tm1 and the LQ disocclusion (h // 4, w // 4)
    depth_scatter   ds:95-163               NSS_DEPTH_SCATTER_QUARTER_RES_INPUT: per quarter-res texel i,
                    src_base = int(i * h / (h // 4)); four texture_gathers at src_base + (0|2, 0|2) cover the
                    4x4 block, visited quad by quad (rows 0-1 cols 0-1, rows 0-1 cols 2-3, rows 2-3 cols 0-1,
                    rows 2-3 cols 2-3), each tl, tr, bl, br; '<=' (later wins ties), off-block taps skipped;
                    the motion is zeroed when the UN-scaled LR motion is <= 0.1 px, then scaled by 1/4
    LQ disocclusion dl:39-219               per quarter-res texel: the nearest (strict '<', column-major 4x4 from
                    src_base, off-screen skipped) depth and its motion, and the view-depth range over the 4x4;
                    the FSR2 depth clip at the texel minus the motion (quarter px; zeroed when the LR motion is
                    <= 0.1 px) with required separation + that range
    process coord   pp:913-920, 415-424     padded pixel P -> process pixel c = reflect(P, (p, q)) -> LR pixel
                    ref = floor((c + 0.5) / ((p, q) / (h, w))), which is 2c + 1 (odd sizes too)
    nearest depth   pp:210-281, 296-306     FindNearestDepthLQ: the 4x4 window of ref in its own order (.., -1
                    row/col first) with '<=' (later wins ties), off-screen skipped; motion = the LR motion at
                    the nearest pixel, zeroed when <= 0.1 px
    disocclusion    pp:454-477, 950, 957    the LQ mask bilinear (edge-clamped) at c's centre: no reprojection
    ch 0-2          pp:339-395, 427-431, 960-980   AverageWarpedHistory2x2: the mean of the 4 tonemapped
                    history reads of the LR pixels 2c + (0|1, 0|1) (clamped), each with its own nearest-depth
                    motion
    ch 3-5, 6       pp:920-944, 1009        as high, at ref; the motion detector of the (LR px) motion
    ch 7-10, 11     pp:443-451, 949, 985-1008   feedback and derivative state are read at the padded P + 0.5
                    - motion * (p, q) / (h, w) (zero outside); the derivative state is (Hp, Wp), written only
                    inside (p, q) (luma_derivative's half-res layout)
    packed offsets  pp:864-889, nc:46-60    NSS_PACKED_NEAREST_OFFSET_QUAD: at process pixel c, 2 channels,
                    byte0 = nib(2c) | nib(2c + (0, 1)) << 4, byte1 = nib(2c + (1, 0)) | nib(2c + (1, 1)) << 4
                    (pixels clamped), nib(dy, dx) = (dx + 1) << 2 | (dy + 1) of the pixel's own FindNearestDepth_4x4
                    _FromPixel offset; / 255; zero outside (p, q)

    from nss.pre_process import pre_process
    x, aux = pre_process(frame, state)   # x: (N, 12, H8, W8); aux: disocclusion_mask, nearest_depth_offset, ...
    x, aux = pre_process(frame, state, quality="mid")   # x: (N, 12, padded(h // 2), padded(w // 2))
"""

import torch
import torch.nn.functional as F

from nss.luma_derivative import luma_derivative, pixel_centres
from nss.post_process import bilinear, karis  # Arm's sample_tensor and Karis tonemap, shared by both passes

INT_MAX = 2**31 - 1
DEPTH_SCALE = 2147483648.0  # float(0x7FFFFFFF) in fp32: the scatter's fixed-point scale
MV_ZERO = 0.1  # |mv| <= 0.1 px counts as no motion, everywhere in Arm's shaders


def gather_px(img, iy, ix):
    """img (N, C, H, W) at integer pixels iy, ix (N, h, w), clamped to the image -> (N, C, h, w)."""
    n, c, H, W = img.shape
    flat = (iy.clamp(0, H - 1) * W + ix.clamp(0, W - 1)).view(n, 1, -1).expand(n, c, -1)
    return img.reshape(n, c, H * W).gather(2, flat).view(n, c, *iy.shape[-2:])


def bilinear_taps(pos):
    """FSR2's bilinear sampling data (nc:164-180): for pos (N, 2, h, w) in pixels, the four texels
    base + (0,0), (1,0), (0,1), (1,1) and their weights -> [(iy, ix, weight (N, h, w))]."""
    p = pos - 0.5
    base = torch.floor(p)
    fy, fx = (p - base).unbind(1)
    by, bx = base.long().unbind(1)
    return [
        (by, bx, (1 - fy) * (1 - fx)),
        (by + 1, bx, fy * (1 - fx)),
        (by, bx + 1, (1 - fy) * fx),
        (by + 1, bx + 1, fy * fx),
    ]


def length(v):
    """|v| over the 2 channels of (N, 2, h, w) (cheaper than torch.norm at 540p)."""
    return torch.sqrt(v[:, :1] * v[:, :1] + v[:, 1:2] * v[:, 1:2])


def zero_small(mv):
    return mv * (length(mv) > MV_ZERO)


def depth_scatter(depth, motion):
    """This frame's depth reprojected into the previous frame at half low-res (high quality), int64 fixed
    point (N, 1, h // 2, w // 2), INT_MAX where no surface landed (ds:88-166)."""
    n, _, h, w = depth.shape
    oh, ow = h // 2, w // 2
    dev = depth.device
    # texture_gather at the half-res texel's uv: the 2x2 low-res block at floor(uv * size - 0.5)
    y0 = torch.floor((torch.arange(oh, device=dev, dtype=torch.float32) + 0.5) * (1.0 / oh) * h - 0.5).long()
    x0 = torch.floor((torch.arange(ow, device=dev, dtype=torch.float32) + 0.5) * (1.0 / ow) * w - 0.5).long()
    y0, x0 = (t.expand(n, oh, ow) for t in torch.meshgrid(y0, x0, indexing="ij"))
    both = torch.cat([depth, motion], 1)  # (N, 3, h, w): depth, mv_y, mv_x
    best = gather_px(both, y0, x0)  # top-left first
    for dy, dx in ((0, 1), (1, 0), (1, 1)):  # then tr, bl, br; '<=' (later wins ties)
        cand = gather_px(both, y0 + dy, x0 + dx)
        best = torch.where(cand[:, :1] <= best[:, :1], cand, best)
    scale = torch.tensor([oh / h, ow / w], device=dev).view(1, 2, 1, 1)
    mv = zero_small(best[:, 1:] * scale)  # half-res px
    pos = pixel_centres(n, oh, ow, dev) - mv
    return reconstruct_prev_depth(best[:, 0], pos)


def reconstruct_prev_depth(depth, pos):
    """ReconstructPrevDepth (nc:338-372): depth (N, oh, ow) atomic-min scattered as int(depth * 2^31) into every
    bilinear neighbour of pos (N, 2, oh, ow) (pixels of the (oh, ow) output) whose weight is > 0.1."""
    n, oh, ow = depth.shape
    value = (depth * DEPTH_SCALE).to(torch.int64).clamp(max=INT_MAX).view(n, -1)
    out = torch.full((n, oh * ow + 1), INT_MAX, dtype=torch.int64, device=depth.device)  # last slot: no store
    for iy, ix, wt in bilinear_taps(pos):
        store = (wt > 0.1) & (iy >= 0) & (iy < oh) & (ix >= 0) & (ix < ow)
        idx = torch.where(store, iy * ow + ix, oh * ow).view(n, -1)
        out.scatter_reduce_(1, idx, value, "amin")
    return out[:, :-1].view(n, 1, oh, ow)


def _f32(x, device=None):
    return torch.tensor(float(x), dtype=torch.float32, device=device)


def _arange(n, device):
    return torch.arange(n, device=device, dtype=torch.float32)


def _gather2(img, rows, cols):
    """img (N, C, H, W) at rows (h,) x cols (w,) (long, in range) -> (N, C, h, w)."""
    return img.index_select(-2, rows).index_select(-1, cols)


# the 4x4 block of the quarter-res scatter in visiting order (ds:118-142): quad by quad, each tl, tr, bl, br
QUARTER_ORDER = tuple(
    (qy + a, qx + b) for qy, qx in ((0, 0), (0, 2), (2, 0), (2, 2)) for a, b in ((0, 0), (0, 1), (1, 0), (1, 1))
)


def depth_scatter_quarter(depth, motion):
    """The depth scatter of mid/low quality (NSS_DEPTH_SCATTER_QUARTER_RES_INPUT, ds:95-166) -> int64
    (N, 1, h // 4, w // 4), INT_MAX where nothing landed. The index maths is the shader's, in float32 op by op:
    where h / (h // 4) is inexact (h = 13, 22, 26, ...; not 540 or 960) a gather can start one texel early, as it
    would in the shader (up to the GPU's fused multiply-adds)."""
    n, _, h, w = depth.shape
    dev = depth.device
    both = torch.cat([depth, motion], 1)  # (N, 3, h, w): depth, mv_y, mv_x
    axes = []
    for size_in in (h, w):
        size_out = size_in // 4
        s = _f32(size_in, dev) / _f32(size_out, dev)  # _Scale (ds:64)
        inv_s, inv_out = 1.0 / s, 1.0 / _f32(size_out, dev)
        src_size = torch.round(_f32(size_out, dev) * s).long()
        src_base = torch.floor(_arange(size_out, dev) * s).long()  # int(): i >= 0
        inv_src = inv_out * inv_s
        # texture_gather (nc:94-134) at the uv of src_base + 0 | 2: its 2x2 starts at floor(uv * size - 0.5)
        g0 = [torch.floor(((src_base + k).float() + 0.5) * inv_src * float(size_in) - 0.5).long() for k in (0, 2)]
        axes.append(
            {
                "read": [(g0[m // 2] + m % 2).clamp(0, size_in - 1) for m in range(4)],  # row/col m
                "ok": [(src_base + m >= 0) & (src_base + m < src_size) for m in range(4)],
                "inv_s": inv_s,
                "inv_out": inv_out,
                "size": size_out,
            }
        )
    ay, ax = axes
    best = _gather2(both, ay["read"][0], ax["read"][0])  # quad 00's tl, not tested on-screen
    for my, mx in QUARTER_ORDER[1:]:
        cand = _gather2(both, ay["read"][my], ax["read"][mx])
        onscreen = ay["ok"][my].view(1, 1, -1, 1) & ax["ok"][mx].view(1, 1, 1, -1)
        best = torch.where(onscreen & (cand[:, :1] <= best[:, :1]), cand, best)  # step(d, nearest): '<='
    raw = best[:, 1:]
    inv_s = torch.stack([ay["inv_s"], ax["inv_s"]]).view(1, 2, 1, 1)
    inv_out = torch.stack([ay["inv_out"], ax["inv_out"]]).view(1, 2, 1, 1)
    mv_uv = raw * inv_s * (length(raw) > MV_ZERO) * inv_out  # threshold on the LR motion
    oh, ow = ay["size"], ax["size"]
    uv = torch.stack(
        torch.meshgrid(
            (_arange(oh, dev) + 0.5) * ay["inv_out"], (_arange(ow, dev) + 0.5) * ax["inv_out"], indexing="ij"
        )
    ).expand(n, 2, oh, ow)
    size = torch.tensor([float(oh), float(ow)], device=dev).view(1, 2, 1, 1)
    return reconstruct_prev_depth(best[:, 0], (uv - mv_uv) * size)


def nearest_depth(depth, motion):
    """Nearest (min) depth of the 4x4 window around each pixel (nc:198-254) -> (depth (N, 1, h, w), offset
    (dy, dx) (N, 2, h, w) long, the motion there (N, 2, h, w)). Centre first, strict '<', off-screen taps
    skipped (an off-screen tap reads +inf, which is never nearer)."""
    n, _, h, w = depth.shape
    offsets = (
        (0, 0),
        (1, 0),
        (0, 1),
        (0, -1),
        (-1, 0),
        (-1, 1),
        (1, 1),
        (-1, -1),
        (1, -1),
        (-1, 2),
        (0, 2),
        (1, 2),
        (2, 2),
        (2, 1),
        (2, 0),
        (2, -1),
    )  # Arm's visiting order
    dp = F.pad(depth, (1, 2, 1, 2), value=float("inf"))
    mp = F.pad(motion, (1, 2, 1, 2))
    best, best_mv = depth, motion
    best_off = torch.zeros(n, 2, h, w, dtype=torch.long, device=depth.device)
    for dy, dx in offsets[1:]:
        window = (..., slice(1 + dy, 1 + dy + h), slice(1 + dx, 1 + dx + w))
        closer = dp[window] < best
        best = torch.where(closer, dp[window], best)
        best_mv = torch.where(closer, mp[window], best_mv)
        best_off = torch.where(closer, torch.tensor([dy, dx], device=depth.device).view(1, 2, 1, 1), best_off)
    return best, best_off, best_mv


# FindNearestDepth_4x4_FromPixel's visiting order (pp:242-260), (dy, dx); the centre is the start
LQ_OFFSETS = (
    (0, -1),
    (-1, 0),
    (-1, -1),
    (0, 1),
    (-1, 1),
    (-1, 2),
    (0, 2),
    (1, 0),
    (1, -1),
    (2, 0),
    (2, -1),
    (1, 1),
    (1, 2),
    (2, 1),
    (2, 2),
)


def nearest_depth_lq(depth, motion):
    """The mid/low nearest depth of every LR pixel (pp:210-267, 296-306) -> (offset (dy, dx) (N, 2, h, w) long,
    the motion at the nearest pixel zeroed when <= 0.1 px (N, 2, h, w)). Same 4x4 window as nearest_depth, but
    its own order and '<=' (step(sample, nearest): later taps win ties); off-screen taps skipped."""
    n, _, h, w = depth.shape
    dev = depth.device
    dp = F.pad(depth, (1, 2, 1, 2), value=float("nan"))  # NaN <= x is false: off-screen skipped
    best = depth
    off = torch.zeros(n, 2, h, w, dtype=torch.long, device=dev)
    for dy, dx in LQ_OFFSETS:
        cand = dp[..., 1 + dy : 1 + dy + h, 1 + dx : 1 + dx + w]
        take = cand <= best
        best = torch.where(take, cand, best)
        off = torch.where(take, torch.tensor([dy, dx], device=dev).view(1, 2, 1, 1), off)
    iy = (torch.arange(h, device=dev).view(1, h, 1) + off[:, 0]).clamp(0, h - 1)
    ix = (torch.arange(w, device=dev).view(1, 1, w) + off[:, 1]).clamp(0, w - 1)
    return off, zero_small(gather_px(motion, iy, ix))


def encode_offset_nibble(off):
    """EncodeNearestDepthCoordNibble (nc:46-51): offsets in -1..2 -> (dx + 1) << 2 | (dy + 1) (.x is the row)."""
    dy, dx = off.clamp(-1, 2).unbind(1)
    return ((dx + 1) << 2) | (dy + 1)


def packed_offset_quads(off, padded_hw):
    """WriteNearestOffsetPackedQuad (pp:864-889): per process pixel c of (h // 2, w // 2) the nibbles of the LR
    pixels 2c + (0|1, 0|1) (clamped) as 2 bytes / 255 -> (N, 2, *padded_hw), zero outside the process size."""
    n, _, h, w = off.shape
    p, q = h // 2, w // 2
    dev = off.device
    nib = encode_offset_nibble(off).unsqueeze(1)  # (N, 1, h, w)
    r0 = (2 * torch.arange(p, device=dev)).clamp(max=h - 1)
    c0 = (2 * torch.arange(q, device=dev)).clamp(max=w - 1)
    r1, c1 = (r0 + 1).clamp(max=h - 1), (c0 + 1).clamp(max=w - 1)
    byte0 = _gather2(nib, r0, c0) | (_gather2(nib, r0, c1) << 4)  # lanes 00, 10 = (row, col + 1)
    byte1 = _gather2(nib, r1, c0) | (_gather2(nib, r1, c1) << 4)  # lanes 01, 11
    out = torch.zeros(n, 2, *padded_hw, device=dev)
    out[:, :, :p, :q] = torch.cat([byte0, byte1], 1).float() / 255.0
    return out


def lq_disocclusion(depth, motion, depth_tm1, depth_params, render_size):
    """Arm's lq_disocclusion_mask kernel (dl:39-219) -> (N, 1, qh, qw) at depth_tm1's size (h // 4, w // 4)."""
    n, _, h, w = depth.shape
    qh, qw = depth_tm1.shape[-2:]
    dev = depth.device
    p = depth_params.view(n, 4, 1, 1)
    base = [torch.floor(_arange(o, dev) * (_f32(i, dev) / _f32(o, dev))).long() for i, o in ((h, qh), (w, qw))]
    both = torch.cat([depth, motion], 1)
    best = _gather2(both, base[0].clamp(0, h - 1), base[1].clamp(0, w - 1))
    z_min = z_max = view_depth(best[:, :1], p)
    for c in range(4):  # int2(x, y): x (the row) runs inner
        for r in range(4):
            rows, cols = base[0] + r, base[1] + c
            ok = ((rows >= 0) & (rows < h)).view(1, 1, -1, 1) & ((cols >= 0) & (cols < w)).view(1, 1, 1, -1)
            cand = _gather2(both, rows.clamp(0, h - 1), cols.clamp(0, w - 1))
            z = view_depth(cand[:, :1], p)
            z_min = torch.where(ok, torch.minimum(z_min, z), z_min)
            z_max = torch.where(ok, torch.maximum(z_max, z), z_max)
            best = torch.where(ok & (cand[:, :1] < best[:, :1]), cand, best)
    mv = best[:, 1:]
    ratio = torch.stack([_f32(qh, dev) / _f32(h, dev), _f32(qw, dev) / _f32(w, dev)]).view(1, 2, 1, 1)
    mv_q = mv * ratio * (length(mv) > MV_ZERO)  # quarter px; threshold on LR px
    inv = torch.stack([1.0 / _f32(qh, dev), 1.0 / _f32(qw, dev)]).view(1, 2, 1, 1)
    uv = torch.stack(
        torch.meshgrid((_arange(qh, dev) + 0.5) * inv[0, 0, 0], (_arange(qw, dev) + 0.5) * inv[0, 1, 0], indexing="ij")
    ).expand(n, 2, qh, qw)
    size = torch.tensor([float(qh), float(qw)], device=dev).view(1, 2, 1, 1)
    pos = (uv - mv_q * inv) * size
    return depth_clip(depth_tm1, pos, best[:, :1], depth_params, render_size, tolerance=z_max - z_min)


def encode_offset(off):
    """Arm's nearest_depth_offset texel (nc:33-38): ((dx + 2) << 3 | (dy + 2)) / 255 (its .x is the row)."""
    dy, dx = off.clamp(-2, 2).unbind(1)
    return (((dx + 2) << 3) | (dy + 2)).unsqueeze(1).float() / 255.0


def view_depth(d, p):
    return p[:, 1:2] / (d - p[:, 0:1])


def depth_clip(depth_tm1, pos, depth, depth_params, render_size, tolerance=None):
    """FSR2's depth clip (nc:258-335): disocclusion in [0, 1] of surfaces of device depth `depth` whose
    previous position `pos` (N, 2, h, w), in depth_tm1 pixels, is covered by a clearly nearer scattered depth.
    tolerance (N, 1, h, w): view depth added to the required separation (the LQ variant, dl:112-148)."""
    n, _, H, W = depth_tm1.shape
    p = depth_params.view(n, 4, 1, 1)
    rs = render_size.view(n, 2, 1, 1).float()
    z = view_depth(depth, p)[:, 0]  # (N, h, w)
    # k_fov = |view position of the viewport corner| / |of its centre| (the depth cancels)
    centre = torch.floor(rs * 0.5) / rs * 2 - 1
    ndc_c = torch.cat([centre[:, :1], -centre[:, 1:]], 1)  # ndc = pos / size * (2, -2) + (-1, 1)
    fov = lambda ndc: torch.sqrt((p[:, 2:3] * ndc[:, :1]) ** 2 + (p[:, 3:4] * ndc[:, 1:]) ** 2 + 1)
    k_fov = fov(torch.ones_like(ndc_c)) / fov(ndc_c)  # corner: ndc (-1, 1)
    diag = rs.norm(dim=1, keepdim=True)
    power = 1 + 2 * (diag / (1080.0**2 + 1920.0**2) ** 0.5).clamp(0, 1)
    taps = bilinear_taps(pos)  # all four taps at once: (N, 4, h, w)
    iy, ix, wt = (torch.stack([t[i] for t in taps], 1) for i in range(3))
    onscreen = (iy >= 0) & (iy < H) & (ix >= 0) & (ix < W)
    flat = (iy.clamp(0, H - 1) * W + ix.clamp(0, W - 1)).view(n, -1)
    prev = depth_tm1.reshape(n, -1).gather(1, flat).view_as(wt).float() * 2.0**-31
    z = z.unsqueeze(1)
    z_prev = p[:, 1:2] / (prev - p[:, 0:1])
    diff = z - z_prev
    use = onscreen & (wt > 0.1) & (diff > 0)
    required = 1.37e-5 * k_fov * diag * torch.maximum(z, z_prev)
    if tolerance is not None:
        required = required + tolerance
    term = (required / torch.where(use, diff, torch.ones_like(diff))).clamp(0, 1) ** power
    acc = torch.where(use, term * wt, torch.zeros_like(wt)).sum(1)
    wsum = torch.where(use | ~onscreen, wt, torch.zeros_like(wt)).sum(1)
    mask = torch.where(wsum > 0, (1 - acc / wsum.clamp_min(1e-30)).clamp(0, 1), torch.zeros_like(wsum))
    return mask.unsqueeze(1)


def motion_detector(mv, render_size):
    """Channel 6 (pp:481-490): how far the pixel moved, per axis relative to the full render size."""
    rs = render_size.view(-1, 2, 1, 1).float()
    lo, hi = (1.0 / rs).norm(dim=1, keepdim=True), (200.0 / rs).norm(dim=1, keepdim=True)
    return torch.sqrt((length(mv / rs).clamp(lo, hi) - lo) / (hi - lo))


def mirror_index(n, size, device):
    """Arm's ReflectIndex for a pad on the far side: size + k -> size - 1 - k."""
    i = torch.arange(n, device=device)
    return torch.where(i >= size, 2 * size - i - 1, i)


def mirror_pad(x, hp, wp):
    h, w = x.shape[-2:]
    return x.index_select(-2, mirror_index(hp, h, x.device)).index_select(-1, mirror_index(wp, w, x.device))


def padded_size(h, w, multiple=8):
    return h + (-h) % multiple, w + (-w) % multiple


QUALITIES = ("high", "mid", "low")


def state_sizes(h, w, quality="high"):
    """Spatial sizes of Arm's buffers for an (h, w) LR frame (mv1:807-848, 962-1018): process, padded (network
    input, feedback; also the derivative state for mid/low), derivative state, depth_tm1."""
    if quality not in QUALITIES:
        raise ValueError(f"quality must be one of {QUALITIES}, got {quality!r}")
    if quality == "high":
        return {"process": (h, w), "padded": padded_size(h, w), "derivative": (h, w), "depth_tm1": (h // 2, w // 2)}
    hp, wp = padded_size(h // 2, w // 2)
    return {"process": (h // 2, w // 2), "padded": (hp, wp), "derivative": (hp, wp), "depth_tm1": (h // 4, w // 4)}


def pre_process(f, state, quality="high"):
    """One frame -> (network input (N, 12, Hp, Wp), aux). f: colour (N, 3, h, w) linear jittered, depth,
    motion_lr (N, 2, h, w) (already zeroed on reset frames), jitter (N, 2, 1, 1), exposure (N, 1, 1, 1),
    depth_params (N, 4, 1, 1), render_size (N, 2, 1, 1). state: history (N, 3, H, W) linear, feedback
    (N, 4, Hp, Wp), derivative (N, 4, h, w), all zero after a reset. quality "mid"/"low": see
    pre_process_half_res (sizes from state_sizes)."""
    if quality != "high":
        return pre_process_half_res(f, state, quality)
    colour, e = f["colour"], f["exposure"]
    n, _, h, w = colour.shape
    hp, wp = padded_size(h, w)
    dev = colour.device
    centres = pixel_centres(n, h, w, dev)
    depth_tm1 = depth_scatter(f["depth"], f["motion_lr"])  # (N, 1, h/2, w/2) int
    depth_dilated, offset, mv = nearest_depth(f["depth"], f["motion_lr"])
    mv = zero_small(mv)  # (N, 2, h, w) LR px, depth-dilated
    prev_pos = centres - mv
    # the disocclusion test reads the scatter at the half-res texel of the pixel, minus the motion
    half = torch.div(centres - 0.5, 2, rounding_mode="floor") + 0.5
    scale_tm1 = torch.tensor([depth_tm1.shape[-2] / h, depth_tm1.shape[-1] / w], device=dev).view(1, 2, 1, 1)
    disocclusion = depth_clip(depth_tm1, half - mv * scale_tm1, depth_dilated, f["depth_params"], f["render_size"])
    H, W = state["history"].shape[-2:]
    history = karis(
        bilinear(
            state["history"], prev_pos * torch.tensor([H / h, W / w], device=dev).view(1, 2, 1, 1), clamp_to_edge=False
        )
        * e
    )  # ch 0-2
    unjittered = bilinear(colour, centres - f["jitter"], clamp_to_edge=True)
    colour_tm = karis(unjittered * e)  # ch 3-5
    detector = motion_detector(mv, f["render_size"])  # ch 6
    instability, derivative = luma_derivative(colour, e, state["derivative"], prev_pos, disocclusion)  # ch 11
    low = mirror_pad(torch.cat([history, colour_tm, detector, instability], 1), hp, wp)
    # ch 7-10: the feedback lives at padded res and is read in padded coordinates, with the mirrored
    # pixel's motion and disocclusion
    mv_p, dis_p = mirror_pad(mv, hp, wp), mirror_pad(disocclusion, hp, wp)
    feedback = bilinear(state["feedback"], pixel_centres(n, hp, wp, dev) - mv_p, clamp_to_edge=False)
    feedback = feedback * (dis_p <= 0.01)
    x = torch.cat([low[:, :7], feedback, low[:, 7:]], 1)
    aux = {
        "mv": mv,
        "nearest_depth_offset": encode_offset(offset),
        "disocclusion_mask": disocclusion,
        "derivative": derivative,
        "depth_tm1": depth_tm1,
        "input_color": colour_tm,
    }
    return x, aux


def pre_process_half_res(f, state, quality="mid"):
    """The mid/low pre-process (NSS_PREPROCESS_HALF_RES_INPUT, NSS_DEPTH_SCATTER_QUARTER_RES_INPUT,
    NSS_PACKED_NEAREST_OFFSET_QUAD; pp:898-1021). f as pre_process; state: history (N, 3, H, W), feedback and
    derivative (N, 4, Hp, Wp) with (Hp, Wp) = padded (h // 2, w // 2). -> (x (N, 12, Hp, Wp), aux) with aux's
    nearest_depth_offset (N, 2, Hp, Wp) packed quads, disocclusion_mask (N, 1, h // 2, w // 2), derivative
    (N, 4, Hp, Wp), depth_tm1 and disocclusion_lq (N, 1, h // 4, w // 4)."""
    if quality not in QUALITIES[1:]:
        raise ValueError(f"half-res pre-process is for quality 'mid' or 'low', got {quality!r}")
    colour, e, depth, motion = f["colour"], f["exposure"], f["depth"], f["motion_lr"]
    n, _, h, w = colour.shape
    sizes = state_sizes(h, w, quality)
    (p, q), (hp, wp) = sizes["process"], sizes["padded"]
    for key in ("feedback", "derivative"):
        if tuple(state[key].shape[-2:]) != (hp, wp):
            raise ValueError(
                f"{quality} quality: state[{key!r}] is {tuple(state[key].shape[-2:])}, expected "
                f"{(hp, wp)} = padded (h // 2, w // 2) for LR {(h, w)}"
            )
    dev = colour.device
    depth_tm1 = depth_scatter_quarter(depth, motion)  # (N, 1, h // 4, w // 4) int
    dis_lq = lq_disocclusion(depth, motion, depth_tm1, f["depth_params"], f["render_size"])
    off, mv_near = nearest_depth_lq(depth, motion)  # every LR pixel's own 4x4 search
    axes = []
    for lr, proc in ((h, p), (w, q)):  # float32 as the shader (pp:160-172)
        scale = _f32(proc, dev) / _f32(lr, dev)
        c = _arange(proc, dev)
        ref = torch.floor((c + 0.5) * (1.0 / scale)).long().clamp(0, lr - 1)  # pp:415-424
        uv = (ref.float() + 0.5) * (1.0 / _f32(lr, dev))
        near_px = (uv * float(lr)).long().clamp(0, lr - 1)  # FindNearestDepthLQ, pp:279
        base = (2 * torch.arange(proc, device=dev)).clamp(max=lr - 1)  # pp:427-431, 962-966
        axes.append(dict(scale=scale, ref=ref, near=near_px, lanes=(base, (base + 1).clamp(max=lr - 1))))
    ay, ax = axes
    scale = torch.stack([ay["scale"], ax["scale"]]).view(1, 2, 1, 1)
    mv = _gather2(mv_near, ay["near"], ax["near"])  # (N, 2, p, q) LR px
    # ch 0-2: AverageWarpedHistory2x2 (pp:380-395, 960-980), lanes 00, 10 (= row + 1), 01, 11
    H, W = state["history"].shape[-2:]
    to_hr = torch.tensor([H / h, W / w], device=dev).view(1, 2, 1, 1)
    history = 0
    for ly, lx in ((0, 0), (1, 0), (0, 1), (1, 1)):
        rows, cols = ay["lanes"][ly], ax["lanes"][lx]
        centre = torch.stack(torch.meshgrid(rows.float() + 0.5, cols.float() + 0.5, indexing="ij")).expand(n, 2, p, q)
        pos = (centre - _gather2(mv_near, rows, cols)) * to_hr
        history = history + karis(bilinear(state["history"], pos, clamp_to_edge=False) * e)
    history = history * 0.25
    # ch 3-5 and 6 at the reference LR pixel
    ref_centre = torch.stack(torch.meshgrid(ay["ref"].float() + 0.5, ax["ref"].float() + 0.5, indexing="ij"))
    colour_tm = karis(bilinear(colour, ref_centre.expand(n, 2, p, q) - f["jitter"], clamp_to_edge=True) * e)
    detector = motion_detector(mv, f["render_size"])
    # disocclusion: the LQ mask, edge-clamped bilinear at the process pixel's centre (pp:454-477, 950)
    qh, qw = dis_lq.shape[-2:]
    at_q = [(_arange(m, dev) + 0.5) * (1.0 / _f32(m, dev)) * float(k) for m, k in ((p, qh), (q, qw))]
    disocclusion = bilinear(
        dis_lq, torch.stack(torch.meshgrid(*at_q, indexing="ij")).expand(n, 2, p, q), clamp_to_edge=True
    )
    # ch 7-10 and 11: feedback and derivative state read at the padded pixel minus the process-px motion
    mv_p, dis_p = mirror_pad(mv, hp, wp), mirror_pad(disocclusion, hp, wp)
    prev_pad = pixel_centres(n, hp, wp, dev) - mv_p * scale  # pp:443-451, 949
    feedback = bilinear(state["feedback"], prev_pad, clamp_to_edge=False) * (dis_p <= 0.01)
    instability, derivative = luma_derivative(
        colour, e, state["derivative"], prev_pad, dis_p, quality, process_size=(p, q)
    )
    low = mirror_pad(torch.cat([history, colour_tm, detector], 1), hp, wp)
    x = torch.cat([low, feedback, instability], 1)
    aux = {
        "mv": mv,
        "nearest_depth_offset": packed_offset_quads(off, (hp, wp)),
        "disocclusion_mask": disocclusion,
        "derivative": derivative,
        "depth_tm1": depth_tm1,
        "disocclusion_lq": dis_lq,
        "input_color": colour_tm,
    }
    return x, aux
