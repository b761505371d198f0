"""Arm's NSS v1 post-process (`post_process.slang`) in plain, differentiable PyTorch.

A port of arm/neural-graphics-model-gym at ef328bf (https://github.com/arm/neural-graphics-model-gym), written
anew from its shaders. File references below are relative to that repository's src/ng_model_gym/:
    ps = usecases/nss/model/shaders/nss_v1/post_process.slang     nc = .../nss_v1/nss_common.slang
    ts = usecases/common/model/shaders/tensor.slang               tm = usecases/common/model/shaders/tonemap.slang
    im = usecases/common/model/shaders/image.slang                mv1 = usecases/nss/model/model_v1.py
    gu = core/model/graphics_utils.py                             qm = usecases/nss/model/quality_modes.py
Arm's float2s put the row first (.x = tensor dim 2), so all its 2-vectors are (y, x) like ours.

For each high-res pixel p = (row, col) of the (H, W) = round((h, w) * scale) output, uv = (p + 0.5) / (H, W)
(ps:497), `post_process` computes:
 1. Offset LUT, per frame from the jitter (mv1:1026-1071, 1103-1223; gu:175-209, 240-288): the LR:HR ratio of
    each axis is reduced by its gcd (x2: 1:2, x1.5: 2:3) into a repeating HR tile. LR pixel a of the tile lands
    in HR pixel floor((a + jitter + 0.5) * s); each tile pixel gets (LR offset, valid). For every tile position
    the 6x6 window of HR offsets -2..+3 is ranked by Gaussian weight exp(-d^2 / (2 * 2^2)) (ties: the lower KPN
    channel) and the best `taps` valid ones are kept: (LR off y, LR off x, valid, dy, dx, channel) * valid.
    KPN channel of offset (dy, dx) is column-major: (dx + 2) * 6 + (dy + 2).
 2. KPN filter (ps:293-369): for each LUT tap, LR tap = clamp(floor((p + d + 0.5) / s + 1e-3) + LR off);
    colour = min(colour * exposure, 65504) (ps:233-240, im:43-48); weight = max(kpn, 1e-7) * valid (ps:243-248)
    read at KPN texel floor((LR tap + 0.5 + 1e-3) * kpn_dims / temporal_dims) (ps:347); m1, m2 = weighted
    means of c and c^2 (/ max(sum w, 1e-7)); the centre sample is the last tap with d = (0, 0), alpha 1.
 3. Temporal params (ps:372-406): bilinear, edge-clamped (ts:151-180), read at uv * (h, w) / (Hp, Wp), i.e.
    at LR-pixel coordinates of the UNPADDED frame inside the padded tensor; theta = sharpen(p0) = p0^2 /
    max(p0^2 + (1 - p0)^2, 1e-6) (ps:373-379), alpha = 0.05 + 0.35 p1, gamma = 2 p2.
 4. Motion (ps:180-214, SHADER_ACCURATE, which Arm always uses, mv1:797): LR pixel i = int(p / s) (truncated,
    no +0.5); the nearest-depth code at i (nc:64-72: dy = (code & 7) - 2, dx = ((code >> 3) & 7) - 2) moves it
    to the dilated pixel clamp(i + (dy, dx)); mv = motion_lr there * s; zeroed unless |mv| > 0.1 HR px.
 5. History (ps:260-268, 410-425): reprojected uv' = uv - mv / (H, W); onscreen = uv' in [0, 1]^2; 5-tap
    Catmull-Rom with deringing (ts:248-320, 496-523) for high/mid, bilinear with zero outside for low (ts:151-180);
    warped = min(history * exposure, 65504).
 6. Rectify (ps:429-449): sigma = sqrt(max(|m2 - m1^2|, 1e-7)) * gamma; clipped = clamp(warped, m1 -+ sigma);
    rectified = lerp(lerp(m1, clipped, valid), warped, theta * onscreen * valid).
 7. Accumulate in the Karis domain (ps:521-525, tm:14-30): lerp(K(rectified), K(centre), alpha * centre_a * valid)
    with K(c) = clamp(max(c, 0) / (1 + max_rgb), 0, 1).
 8. Output (ps:453-458, 528-534): K^-1(clamp(acc, 0, 1 - 1e-7)) with K^-1 capping its input at K(65504), so the
    output is at most 65504 (exactly; 65535 after float32 rounding of K(65504), as Arm) (tm:33-58), times
    1 / exposure; filtered = m1 / exposure.
A reset frame (valid = 0) therefore returns the KPN-filtered colour. mid/low quality (qm:73-97) use 4 taps and
the 16-channel sparse KPN (ps:271-289, 337-355), a half-res pre-process (temporal and KPN tensors for (h//2, w//2),
ps:146-164, 337-345) and, when `nearest_depth_offset` has 2 channels, Arm's packed-quad offsets (ps:190-198).

Example (x2, high quality, 540p -> 1080p shapes scaled down):
    >>> import torch
    >>> from nss.post_process import post_process
    >>> n, h, w = 1, 12, 20                                    # padded to (16, 24) for the network
    >>> out, filtered = post_process(
    ...     torch.rand(n, 3, h, w), torch.ones(n, 1, 1, 1), torch.zeros(n, 2, 1, 1),
    ...     torch.rand(n, 36, 4, 6), torch.rand(n, 4, 16, 24), torch.full((n, 1, h, w), 18 / 255),
    ...     torch.zeros(n, 2, h, w), torch.rand(n, 3, 2 * h, 2 * w), torch.ones(n, 1, 1, 1))
    >>> out.shape, filtered.shape
    (torch.Size([1, 3, 24, 40]), torch.Size([1, 3, 24, 40]))
"""

import math
from fractions import Fraction

import torch
import torch.nn.functional as F

HALF_MAX = 65504.0  # fp16 max: Arm clamps colour, history and the output to it (im:43-48, tm:5)
EPS = 1e-7  # ps:40
MV_ZERO = 0.1  # |mv| in HR px at or below this counts as no motion (ps:212)
F32 = torch.float32

# qm:73-111 with the nss_v1.slang defines: taps = FILTER_COLOR_KERNEL_SZ, sparse = NSS_USE_SPARSE_2X2_FILTER,
# catmull = NSS_USE_HISTORY_CATMULL, half_res = NSS_PREPROCESS_HALF_RES_INPUT
QUALITY = {
    "high": dict(taps=9, kpn_channels=36, sparse=False, catmull=True, half_res=False),
    "mid": dict(taps=4, kpn_channels=16, sparse=True, catmull=True, half_res=True),
    "low": dict(taps=4, kpn_channels=16, sparse=True, catmull=False, half_res=True),
}


def output_size(lr_hw, scale):
    """HR size of an LR frame: round(h * scale), round(w * scale) (mv1:866-869)."""
    return tuple(int(round(n * scale)) for n in lr_hw)


def _f32(x):
    return torch.tensor(float(x), dtype=F32)


def _rcp(x):
    """1 / x in float32, as the shader's rcp() (keeps the floor()s below bit-compatible)."""
    return 1.0 / x if isinstance(x, torch.Tensor) else 1.0 / _f32(x)


def nearest_offset_code(dy, dx):
    """Arm's 5-bit nearest-depth offset texel (nc:37-43) for offsets in -2..2: ((dx + 2) << 3 | (dy + 2)) / 255.
    The row offset is in the LOW bits (Arm's .x is the row)."""
    return (((dx + 2) << 3) | (dy + 2)) / 255.0


# ----------------------------------------------------------------------------------------------------------
# 1. offset LUT


def _axis_tile(jitter, s, t_lr, t_hr):
    """One axis of the LR->HR tile (gu:240-288). jitter (N,) LR px, s float32 scale.
    -> valid (N, t_hr) bool: an LR sample lands in this tile pixel; off (N, t_hr): that LR pixel minus the LR
    pixel containing the tile pixel's centre."""
    a = torch.arange(t_lr, dtype=F32, device=jitter.device)
    land = torch.floor((a + jitter[:, None] + 0.5) * s)  # (N, t_lr)
    off = a - torch.floor((land + 0.5) / s)  # (N, t_lr)
    hit = land[:, :, None] == torch.arange(t_hr, dtype=F32, device=jitter.device)  # (N, t_lr, t_hr)
    return hit.any(1), (hit * off[:, :, None]).sum(1)


def offset_lut(jitter, scale, kpn_size=6, taps=9, lr_hw=None):
    """Arm's per-frame offset LUT (mv1:1026-1071, 1103-1223). jitter (N, 2, 1, 1) LR px (y, x); scale a float or
    (sy, sx). With lr_hw = (h, w) the tile comes from the gcd of (h, round(h * scale)) like Arm; without, from
    the scale as a fraction (2 -> 1:2, 1.5 -> 2:3).
    -> lut (N, 6, Ty * Tx, taps) float (LR off y, LR off x, valid, dy, dx, KPN channel), all * valid, ranked
       best first; tile index of HR pixel p is (p_y % Ty) * Tx + p_x % Tx. And the tile (Ty, Tx)."""
    n = jitter.shape[0]
    scales = tuple(scale) if isinstance(scale, (tuple, list)) else (scale, scale)
    ratios, s = [], []
    for axis in range(2):
        if lr_hw is not None:
            lr = int(lr_hw[axis])
            hr = int(round(lr * scales[axis]))
            g = math.gcd(lr, hr)
            ratios.append((lr // g, hr // g))
            s.append(_f32(hr) / _f32(lr))  # out / in, as the shader and mv1:1059-1062
        else:
            fr = Fraction(float(scales[axis])).limit_denominator(64)
            ratios.append((fr.denominator, fr.numerator))
            s.append(_f32(scales[axis]))
    j = jitter.reshape(n, 2).to(F32)
    (vy, oy), (vx, ox) = (_axis_tile(j[:, i], s[i].to(j.device), *ratios[i]) for i in range(2))
    ty, tx = ratios[0][1], ratios[1][1]

    dev = jitter.device
    k = kpn_size
    d = torch.arange(1 - k // 2, 1 - k // 2 + k, device=dev)  # -2..3 for k = 6
    dy = d.repeat(k)  # channel t: dy = d[t % k], dx = d[t // k]
    dx = d.repeat_interleave(k)
    t = torch.arange(k * k, device=dev)
    # Arm's score exp(-d^2 / (2 (k/3)^2)) + (k^2 - t) * 16 eps orders by distance, then by lower t: same as this
    rank = (dy**2 + dx**2) * (k * k) + t  # (k*k,)
    rows = (torch.arange(ty, device=dev)[:, None] + dy) % ty  # (Ty, kk) tile row of each window offset
    cols = (torch.arange(tx, device=dev)[:, None] + dx) % tx  # (Tx, kk)
    valid = vy[:, rows][:, :, None] & vx[:, cols][:, None]  # (N, Ty, Tx, kk)
    key = torch.where(valid, rank, rank + 2 * rank.max() + 1)
    order = key.argsort(-1)[..., :taps]  # (N, Ty, Tx, taps)
    full = (n, ty, tx, k * k)
    fields = [
        oy[:, rows][:, :, None].expand(full),
        ox[:, cols][:, None].expand(full),
        valid.to(F32),
        dy.to(F32).expand(full),
        dx.to(F32).expand(full),
        t.to(F32).expand(full),
    ]
    m = valid.gather(-1, order).to(F32)
    lut = torch.stack([f.gather(-1, order) * m for f in fields], 1)  # (N, 6, Ty, Tx, taps)
    return lut.reshape(n, 6, ty * tx, taps), (ty, tx)


def to_phases(x, tile):
    """(N, C, H, W) -> (N, Ty, Tx, H/Ty, W/Tx, C): HR pixels grouped by tile position, within which every LUT
    entry is constant. H is a multiple of Ty: Ty = H / gcd(h, H)."""
    n, c, H, W = x.shape
    ty, tx = tile
    return x.reshape(n, c, H // ty, ty, W // tx, tx).permute(0, 3, 5, 2, 4, 1)


def from_phases(x):
    """Inverse of to_phases: (N, Ty, Tx, Hq, Wq, C) -> (N, C, Hq * Ty, Wq * Tx)."""
    n, ty, tx, hq, wq, c = x.shape
    return x.permute(0, 5, 3, 1, 4, 2).reshape(n, c, hq * ty, wq * tx)


def phase_taps(lut, tile, lr_hw, out_hw):
    """Per LUT tap, FilterColor's per-pixel quantities (ps:318-333) in the phase layout of to_phases: the LR tap
    row ly (N, Ty, Tx, Hq, 1) and column lx (N, Ty, Tx, 1, Wq), both clamped, and valid, HR offset (dy, dx), KPN
    channel (N, Ty, Tx, 1, 1). Separable because p = tile position + tile * k. Yields one dict per tap."""
    h, w = lr_hw
    H, W = out_hw
    ty, tx = tile
    n, dev = lut.shape[0], lut.device
    inv_y, inv_x = (_rcp(_f32(o) / _f32(i)).to(dev) for o, i in ((H, h), (W, w)))
    # HR row of (tile row by, block k) is by + Ty k
    py = (torch.arange(ty, device=dev)[:, None] + ty * torch.arange(H // ty, device=dev)).to(F32)  # (Ty, Hq)
    px = (torch.arange(tx, device=dev)[:, None] + tx * torch.arange(W // tx, device=dev)).to(F32)  # (Tx, Wq)
    for i in range(lut.shape[-1]):
        off_y, off_x, valid, dy, dx, ch = lut[..., i].reshape(n, 6, ty, tx, 1, 1).unbind(1)  # (N,Ty,Tx,1,1)
        ly = torch.floor((py[:, None, :, None] + dy + 0.5) * inv_y + 1e-3) + off_y  # (N,Ty,Tx,Hq,1)
        lx = torch.floor((px[None, :, None, :] + dx + 0.5) * inv_x + 1e-3) + off_x  # (N,Ty,Tx,1,Wq)
        yield {
            "ly": ly.clamp(0, h - 1).long(),
            "lx": lx.clamp(0, w - 1).long(),
            "valid": valid,
            "dy": dy,
            "dx": dx,
            "channel": ch.long(),
        }


def lut_taps(lut, tile, lr_hw, out_hw):
    """phase_taps as (N, H, W) maps per tap (for inspection and tests)."""
    n, (H, W) = lut.shape[0], out_hw
    for tap in phase_taps(lut, tile, lr_hw, out_hw):
        shape = (n, *tile, H // tile[0], W // tile[1])
        yield {k: from_phases(v.expand(shape).unsqueeze(-1))[:, 0] for k, v in tap.items()}


# ----------------------------------------------------------------------------------------------------------
# 2. KPN filter


def _kpn_axis(lr_size, kpn_size, temporal_size, half_res, device):
    """KPN texel of each LR coordinate on one axis: ps:338-347 (and ps:251-256 for the half-res variant)."""
    lr = torch.arange(lr_size, device=device)
    if half_res:
        return (lr * kpn_size // max(lr_size, 1)).clamp(max=kpn_size - 1)
    ks = (_f32(kpn_size) / _f32(temporal_size)).to(device)
    return torch.floor((lr.to(F32) + 0.5 + 1e-3) * ks).long().clamp(0, kpn_size - 1)


def _sparse_channel(t):
    """ps:271-289: the 6x6 channel t -> the 4x4 sparse channel (dx + 1) * 4 + (dy + 1), or -1 outside -1..2."""
    dy, dx = t % 6 - 2, t // 6 - 2
    inside = (dy >= -1) & (dy <= 2) & (dx >= -1) & (dx <= 2)
    return torch.where(inside, (dx + 1) * 4 + (dy + 1), torch.full_like(t, -1))


def kpn_filter(colour_e, kpn, lut, tile, out_hw, temporal_hw, sparse=False, half_res=False):
    """FilterColor (ps:293-369). colour_e (N, 3, h, w) colour * exposure; kpn (N, C, kh, kw).
    -> m1, m2 (N, 3, H, W), centre (N, 3, H, W), centre_a (N, 1, H, W)."""
    n, _, h, w = colour_e.shape
    c, kh, kw = kpn.shape[1:]
    dev = colour_e.device
    colour = colour_e.clamp(max=HALF_MAX).permute(0, 2, 3, 1)  # (N, h, w, 3): one gather per tap
    ky_of = _kpn_axis(h, kh, temporal_hw[0], half_res, dev)
    kx_of = _kpn_axis(w, kw, temporal_hw[1], half_res, dev)
    b = torch.arange(n, device=dev).view(n, 1, 1, 1, 1)
    ty, tx = tile
    hq, wq = out_hw[0] // ty, out_hw[1] // tx
    m1 = m2 = wsum = 0
    centre = torch.zeros(n, ty, tx, hq, wq, 3, device=dev)
    centre_a = torch.zeros(n, ty, tx, 1, 1, 1, device=dev)
    for tap in phase_taps(lut, tile, (h, w), out_hw):
        ly, lx = tap["ly"], tap["lx"]
        col = colour[b, ly, lx]  # (N, Ty, Tx, Hq, Wq, 3)
        ch = tap["channel"]
        if sparse:
            ch = _sparse_channel(ch)
            present = (ch >= 0).to(F32)  # pruned channels weigh 0, not EPS
            ch = ch.clamp(min=0)
        else:
            present = 1.0
            ch = ch.clamp(0, c - 1)
        wt = kpn[b, ch, ky_of[ly], kx_of[lx]].clamp_min(EPS)  # (N, Ty, Tx, Hq, Wq)
        wt = (wt * (present * tap["valid"])).unsqueeze(-1)
        cw = col * wt
        m1, m2, wsum = m1 + cw, m2 + cw * col, wsum + wt
        # masked (invalid) LUT rows have d = (0, 0) too, so they also count as the centre, as in ps:333-335
        is_centre = ((tap["dy"] == 0) & (tap["dx"] == 0)).unsqueeze(-1)  # (N, Ty, Tx, 1, 1, 1)
        centre = torch.where(is_centre, col, centre)
        centre_a = torch.where(is_centre, 1.0, centre_a)
    wsum = wsum.clamp_min(EPS)
    return (
        from_phases(m1 / wsum),
        from_phases(m2 / wsum),
        from_phases(centre),
        from_phases(centre_a.expand(n, ty, tx, hq, wq, 1)),
    )


# ----------------------------------------------------------------------------------------------------------
# 3. temporal params


def _bilinear_axis(pos, size):
    """Clamped-edge bilinear taps along one axis (ts:151-180): pos in pixels (centres at i + 0.5)."""
    g0 = torch.floor(pos - 0.5)
    w0 = (1 - (g0 + 0.5 - pos).abs()).clamp_min(0)
    w1 = (1 - (g0 + 1.5 - pos).abs()).clamp_min(0)
    return g0.long().clamp(0, size - 1), (g0.long() + 1).clamp(0, size - 1), w0, w1


def upsample_temporal(tp, out_hw, pre_hw):
    """SampleTemporalParams' texture read (ps:392-397): tp (N, C, Tp, Tp') at padded res, sampled bilinearly
    (edge clamp) at uv * pre_hw / tp_hw, i.e. at LR coordinates of the unpadded (h, w) = pre_hw frame.
    Separable, so two 1-D lerps. -> (N, C, H, W)."""
    dev = tp.device
    for axis, (out, pre) in enumerate(zip(out_hw, pre_hw)):
        size = tp.shape[2 + axis]
        uv = (torch.arange(out, device=dev, dtype=F32) + 0.5) * _rcp(out).to(dev)
        pos = uv * (_f32(pre) * _rcp(size)).to(dev) * float(size)
        i0, i1, w0, w1 = _bilinear_axis(pos, size)
        shape = (-1, 1) if axis == 0 else (1, -1)
        tp = tp.index_select(2 + axis, i0) * w0.view(shape) + tp.index_select(2 + axis, i1) * w1.view(shape)
    return tp


def sharpen_theta(theta, g=2.0):
    """ps:373-379."""
    theta = theta.clamp(0, 1)
    a, b = theta**g, (1 - theta) ** g
    return a / (a + b).clamp_min(1e-6)


# ----------------------------------------------------------------------------------------------------------
# 4. motion


def _decode_offsets(code, lr_hw, pre_hw, half_res):
    """The dilation offset (dy, dx) (N, h, w) of every LR pixel (ps:184-205): 1 channel = the 5-bit code
    (nc:64-72), 2 channels = Arm's packed quad of 2-bit nibbles (nc:55-60, ps:190-198). With half_res the
    texel is floor((i + 0.5) * pre / lr) of the half-res tensor, else i."""
    h, w = lr_hw
    dev = code.device
    iy, ix = torch.arange(h, device=dev), torch.arange(w, device=dev)
    if half_res:
        ty = torch.floor((iy.to(F32) + 0.5) * float(pre_hw[0]) * _rcp(h).to(dev)).long().clamp(0, pre_hw[0] - 1)
        tx = torch.floor((ix.to(F32) + 0.5) * float(pre_hw[1]) * _rcp(w).to(dev)).long().clamp(0, pre_hw[1] - 1)
    else:
        ty, tx = iy.clamp(max=code.shape[2] - 1), ix.clamp(max=code.shape[3] - 1)
    texel = code[:, :, ty][:, :, :, tx]  # (N, C, h, w)
    byte = torch.floor(texel * 255.0 + 0.5).long()
    if code.shape[1] == 1:
        c = byte[:, 0]
        return (c & 7) - 2, ((c >> 3) & 7) - 2
    lane = (iy % 2)[:, None] * 2 + (ix % 2)[None]  # (h, w)
    b = torch.where(lane < 2, byte[:, 0], byte[:, 1])
    nib = torch.where(lane % 2 == 0, b & 15, (b >> 4) & 15)
    return (nib & 3) - 1, ((nib >> 2) & 3) - 1


def hr_motion(motion_lr, nearest_depth_offset, out_hw, half_res=False):
    """LoadMotion (ps:180-214): (N, 2, H, W) motion in HR px (y, x), depth-dilated and zeroed unless > 0.1."""
    n, _, h, w = motion_lr.shape
    H, W = out_hw
    dev = motion_lr.device
    oy, ox = _decode_offsets(nearest_depth_offset, (h, w), (h // 2, w // 2), half_res)
    ly = (torch.arange(h, device=dev)[:, None] + oy).clamp(0, h - 1)  # (N, h, w) dilated LR pixel
    lx = (torch.arange(w, device=dev)[None] + ox).clamp(0, w - 1)
    mv = motion_lr.to(F32).flatten(2).gather(2, (ly * w + lx).view(n, 1, -1).expand(n, 2, -1)).view(n, 2, h, w)
    s = [(_f32(o) / _f32(i)).to(dev) for o, i in ((H, h), (W, w))]
    mv = mv * torch.stack(s).view(1, 2, 1, 1)
    # HR motion is the LR motion replicated, so the threshold can be tested at LR
    mv = mv * (torch.sqrt(mv[:, :1] ** 2 + mv[:, 1:] ** 2) > MV_ZERO)
    # the LR pixel of HR pixel p is int(p / s): truncation without the +0.5 of a pixel centre (ps:182)
    iy = torch.floor(torch.arange(H, device=dev, dtype=F32) * _rcp(s[0])).long().clamp(max=h - 1)
    ix = torch.floor(torch.arange(W, device=dev, dtype=F32) * _rcp(s[1])).long().clamp(max=w - 1)
    return mv.index_select(2, iy).index_select(3, ix)


# ----------------------------------------------------------------------------------------------------------
# 5. history sampling


def bilinear(img, pos_px, clamp_to_edge=True):
    """Arm's sample_tensor (ts:85-114, 151-180): bilinear between pixel centres at pos_px (N, 2, H', W') (y, x)
    in img's pixels. Outside: the edge texel (clamp_to_edge), or each missing texel weighs 0 (no renormalising);
    grid_sample's border / zeros padding are exactly these."""
    H, W = img.shape[-2:]
    grid = torch.stack([pos_px[:, 1] * (2.0 / W) - 1, pos_px[:, 0] * (2.0 / H) - 1], -1)
    return F.grid_sample(
        img, grid, mode="bilinear", padding_mode="border" if clamp_to_edge else "zeros", align_corners=False
    )


def catmull_rom(img, pos_px):
    """Arm's 5-tap Catmull-Rom with deringing (ts:248-320, 496-523). img (N, C, H, W); pos_px (N, 2, H', W')
    (y, x) in img's pixels (centres at i + 0.5). Per axis the 4 cubic taps collapse to 3 (the middle two become
    one bilinear tap), the 4 corners of the 3x3 are dropped and the rest renormalised; each tap is an
    edge-clamped bilinear read. Deringing: only if some channel comes out negative, clamp to the 5 taps' range.
    -> (N, C, H', W')."""
    n, c, H, W = img.shape
    hh, ww = pos_px.shape[-2:]
    tc = torch.floor(pos_px - 0.5) + 0.5  # centre of the texel at or before pos
    f = pos_px - tc  # [0, 1)
    f2, f3 = f * f, f * f * f
    w0 = f2 - 0.5 * (f3 + f)
    w1 = 1.5 * f3 - 2.5 * f2 + 1
    w3 = 0.5 * (f3 - f2)
    w2 = 1 - w0 - w1 - w3
    W0, W1, W2 = w0, w1 + w2, w3  # (N, 2, H', W') each
    # tap positions tc - 1, tc + w2 / W1, tc + 2 in grid_sample's [-1, 1] units
    norm = torch.tensor([2.0 / H, 2.0 / W], device=img.device).view(1, 2, 1, 1)
    s0, s1, s2 = (tc - 1) * norm - 1, (tc + w2 / W1) * norm - 1, (tc + 2) * norm - 1
    # the cross of the 3x3 (row tap, col tap): (1, 0), (0, 1), (1, 1), (2, 1), (1, 2)
    rows, cols = (s1, s0, s1, s2, s1), (s0, s1, s1, s1, s2)
    grid = torch.empty(n, 5, hh, ww, 2, device=img.device)
    for i in range(5):
        grid[:, i, ..., 0] = cols[i][:, 1]  # grid_sample wants (x, y)
        grid[:, i, ..., 1] = rows[i][:, 0]
    samples = F.grid_sample(
        img, grid.view(n, 5 * hh, ww, 2), mode="bilinear", padding_mode="border", align_corners=False
    ).view(n, c, 5, hh, ww)
    wy, wx = (W0[:, 0:1], W1[:, 0:1], W2[:, 0:1]), (W0[:, 1:2], W1[:, 1:2], W2[:, 1:2])
    wts = (wy[1] * wx[0], wy[0] * wx[1], wy[1] * wx[1], wy[2] * wx[1], wy[1] * wx[2])  # (N, 1, H', W') each
    colour, lo, hi = samples[:, :, 0] * wts[0], samples[:, :, 0], samples[:, :, 0]
    for i in range(1, 5):
        colour = colour + samples[:, :, i] * wts[i]
        lo, hi = torch.minimum(lo, samples[:, :, i]), torch.maximum(hi, samples[:, :, i])
    colour = colour / sum(wts)
    negative = (colour < 0).any(1, keepdim=True)
    return torch.where(negative, torch.minimum(torch.maximum(colour, lo), hi), colour)


# ----------------------------------------------------------------------------------------------------------
# 7-8. Karis tonemap as Arm has it (also the tonemap of the TAA baseline and of --tonemapper karis)


def karis(x):
    """tm:14-30: clamp(max(x, 0) / (1 + max_rgb), 0, 1) over dim 1."""
    x = x.clamp_min(0)
    return (x / (1 + x.amax(1, keepdim=True))).clamp(0, 1)


# K(65504) in float32 as tm:48-52 computes it: 1 - 1/65505 rounds to 1 - 2^-16, so the inverse's output cap is
# (1 - 2^-16) / 2^-16 = 65535 rather than 65504
KARIS_HALF_MAX = _f32(HALF_MAX) * _rcp(1 + HALF_MAX)


def inverse_karis(x):
    """tm:33-58: x clamped to [0, K(65504)], then x / (1 - max_rgb)."""
    x = torch.minimum(x.clamp_min(0), KARIS_HALF_MAX.to(x.device))
    return x / (1 - x.amax(1, keepdim=True))


# ----------------------------------------------------------------------------------------------------------


def post_process(
    colour,
    exposure,
    jitter,
    kpn_params,
    temporal_params,
    nearest_depth_offset,
    motion_lr,
    history,
    valid,
    scale=2.0,
    quality="high",
    sharp_theta=True,
):
    """Arm's post_process kernel (ps:484-535) for a batch.
    colour (N, 3, h, w) jittered LR linear colour (not exposed); exposure (N, 1, 1, 1); jitter (N, 2, 1, 1) LR px
    (y, x); kpn_params (N, 36, Hp/4, Wp/4) sigmoid outputs on the input padded to multiples of 8 (mid/low:
    (N, 16, ...) of the half-res pre-process); temporal_params (N, 4, Hp, Wp); nearest_depth_offset (N, 1, h, w)
    5-bit codes (see nearest_offset_code) or (N, 2, ...) Arm's packed quads (mid/low); motion_lr (N, 2, h, w)
    LR px (y, x), undilated; history (N, 3, H, W) previous output, linear; valid (N, 1, 1, 1) 0 on a reset frame.
    -> (output_linear, filtered_linear), each (N, 3, H, W) with (H, W) = round((h, w) * scale)."""
    q = QUALITY[quality]
    n, _, h, w = colour.shape
    H, W = output_size((h, w), scale)
    if history.shape[-2:] != (H, W):
        raise ValueError(f"history is {tuple(history.shape[-2:])}, expected {(H, W)} = round({(h, w)} * {scale})")
    if kpn_params.shape[1] != q["kpn_channels"]:
        raise ValueError(f"quality {quality!r} takes {q['kpn_channels']} KPN channels, got {kpn_params.shape[1]}")
    dev = colour.device
    e = exposure.reshape(n, 1, 1, 1).to(F32)
    inv_e = 1.0 / e
    reset = valid.reshape(n, 1, 1, 1).to(F32)  # Arm's in_reset: 1 = history usable
    kpn_params, temporal_params, history = kpn_params.float(), temporal_params.float(), history.float()
    pre_hw = (h // 2, w // 2) if q["half_res"] else (h, w)  # ps:151-164: the pre-process's logical size

    # 1-2. jitter-aware KPN filter of the current LR samples
    lut, tile = offset_lut(jitter, scale, kpn_size=6, taps=q["taps"], lr_hw=(h, w))
    m1, m2, centre, centre_a = kpn_filter(
        colour.to(F32) * e, kpn_params, lut, tile, (H, W), temporal_params.shape[-2:], q["sparse"], q["half_res"]
    )

    # 3. temporal params, upsampled
    p = upsample_temporal(temporal_params[:, :3], (H, W), pre_hw)
    theta = sharpen_theta(p[:, 0:1]) if sharp_theta else p[:, 0:1]
    alpha = p[:, 1:2] * 0.35 + 0.05
    gamma = p[:, 2:3] * 2.0

    # 4-5. reproject the history with the dilated motion
    mv = hr_motion(motion_lr, nearest_depth_offset, (H, W), q["half_res"])  # (N, 2, H, W) HR px
    uv_y = (torch.arange(H, device=dev, dtype=F32) + 0.5).view(1, H, 1) * _rcp(H).to(dev)
    uv_x = (torch.arange(W, device=dev, dtype=F32) + 0.5).view(1, 1, W) * _rcp(W).to(dev)
    ruv_y = uv_y - mv[:, 0] * _rcp(H).to(dev)  # (N, H, W)
    ruv_x = uv_x - mv[:, 1] * _rcp(W).to(dev)
    onscreen = ((ruv_y >= 0) & (ruv_y <= 1) & (ruv_x >= 0) & (ruv_x <= 1)).to(F32).unsqueeze(1)
    pos = torch.stack([ruv_y * H, ruv_x * W], 1)  # (N, 2, H, W)
    warped = catmull_rom(history, pos) if q["catmull"] else bilinear(history, pos, clamp_to_edge=False)
    warped = (warped * e).clamp(max=HALF_MAX)

    # 6. rectify the history to the neighbourhood's statistics
    sigma = torch.sqrt((m2 - m1 * m1).abs().clamp_min(EPS)) * gamma
    clipped = torch.minimum(torch.maximum(warped, m1 - sigma), m1 + sigma)
    rectified = torch.lerp(torch.lerp(m1, clipped, reset), warped, theta * onscreen * reset)

    # 7-8. accumulate in the Karis domain, back to linear, un-expose
    acc = torch.lerp(karis(rectified), karis(centre), alpha * centre_a * reset)
    output_linear = inverse_karis(acc.clamp(0, 1 - EPS)) * inv_e
    return output_linear, m1 * inv_e
