"""Arm's NSS v1 pre-process ("high" quality) in differentiable PyTorch: one frame's inputs -> the 12-channel
network input, exactly as Arm's Slang shaders compute it.

Reference: arm/neural-graphics-model-gym at ef328bf, `src/ng_model_gym/usecases/nss/model/shaders/`
(`nss_v1/depth_scatter.slang`, `nss_v1/nss_common.slang`, `nss_v1/pre_process.slang`; below "ds", "nc", "pp").

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

    from nss.pre_process import pre_process
    x, aux = pre_process(frame, state)   # x: (N, 12, H8, W8); aux: disocclusion_mask, nearest_depth_offset, ...
"""
import torch
import torch.nn.functional as F

from nss.luma_derivative import luma_derivative

INT_MAX = 2**31 - 1
DEPTH_SCALE = 2147483648.0   # float(0x7FFFFFFF) in fp32: the scatter's fixed-point scale
MV_ZERO = 0.1                # |mv| <= 0.1 px counts as no motion, everywhere in Arm's shaders
HDR_MAX = 65504.0            # fp16 max: colour and outputs are clamped to it


def karis(x):
    """Arm's Karis tonemap: max(c, 0) / (1 + max(rgb)), clamped to [0, 1] (tonemap.slang:8-24)."""
    x = x.clamp_min(0)
    return (x / (1 + x.amax(dim=-3, keepdim=True))).clamp(0, 1)


def pixel_centres(n, h, w, device):
    """(N, 2, h, w) pixel centres in pixels, (y, x)."""
    ys = torch.arange(h, device=device, dtype=torch.float32) + 0.5
    xs = torch.arange(w, device=device, dtype=torch.float32) + 0.5
    return torch.stack(torch.meshgrid(ys, xs, indexing="ij")).expand(n, 2, h, w)


def bilinear(img, pos, zero_outside):
    """Arm's sample_tensor: img (N, C, H, W) bilinear at pos (N, 2, h, w), (y, x) in img's pixels. Outside
    the image a tap reads the clamped edge texel, or, with zero_outside, weighs 0 (no renormalisation)."""
    H, W = img.shape[-2:]
    grid = torch.stack([pos[:, 1] / W * 2 - 1, pos[:, 0] / H * 2 - 1], -1)
    return F.grid_sample(img, grid, mode="bilinear", padding_mode="zeros" if zero_outside else "border",
                         align_corners=False)


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
    return [(by, bx, (1 - fy) * (1 - fx)), (by + 1, bx, fy * (1 - fx)),
            (by, bx + 1, (1 - fy) * fx), (by + 1, bx + 1, fy * fx)]


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
    both = torch.cat([depth, motion], 1)                                    # (N, 3, h, w): depth, mv_y, mv_x
    best = gather_px(both, y0, x0)                                          # top-left first
    for dy, dx in ((0, 1), (1, 0), (1, 1)):                                 # then tr, bl, br; '<=' (later wins ties)
        cand = gather_px(both, y0 + dy, x0 + dx)
        best = torch.where(cand[:, :1] <= best[:, :1], cand, best)
    scale = torch.tensor([oh / h, ow / w], device=dev).view(1, 2, 1, 1)
    mv = zero_small(best[:, 1:] * scale)                                    # half-res px
    pos = pixel_centres(n, oh, ow, dev) - mv
    value = (best[:, 0] * DEPTH_SCALE).to(torch.int64).clamp(max=INT_MAX).view(n, -1)
    out = torch.full((n, oh * ow + 1), INT_MAX, dtype=torch.int64, device=dev)   # last slot: taps that store nothing
    for iy, ix, wt in bilinear_taps(pos):
        store = (wt > 0.1) & (iy >= 0) & (iy < oh) & (ix >= 0) & (ix < ow)
        idx = torch.where(store, iy * ow + ix, oh * ow).view(n, -1)
        out.scatter_reduce_(1, idx, value, "amin")
    return out[:, :-1].view(n, 1, oh, ow)


def nearest_depth(depth, motion):
    """Nearest (min) depth of the 4x4 window around each pixel (nc:198-254) -> (depth (N, 1, h, w), offset
    (dy, dx) (N, 2, h, w) long, the motion there (N, 2, h, w)). Centre first, strict '<', off-screen taps
    skipped (an off-screen tap reads +inf, which is never nearer)."""
    n, _, h, w = depth.shape
    offsets = ((0, 0), (1, 0), (0, 1), (0, -1), (-1, 0), (-1, 1), (1, 1), (-1, -1), (1, -1),
               (-1, 2), (0, 2), (1, 2), (2, 2), (2, 1), (2, 0), (2, -1))   # Arm's visiting order
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


def encode_offset(off):
    """Arm's nearest_depth_offset texel (nc:33-38): ((dx + 2) << 3 | (dy + 2)) / 255 (its .x is the row)."""
    dy, dx = off.clamp(-2, 2).unbind(1)
    return (((dx + 2) << 3) | (dy + 2)).unsqueeze(1).float() / 255.0


def view_depth(d, p):
    return p[:, 1:2] / (d - p[:, 0:1])


def depth_clip(depth_tm1, pos, depth, depth_params, render_size):
    """FSR2's depth clip (nc:258-335): disocclusion in [0, 1] of surfaces of view depth `depth` whose
    previous position `pos` (N, 2, h, w), in depth_tm1 pixels, is covered by a clearly nearer scattered depth."""
    n, _, H, W = depth_tm1.shape
    p = depth_params.view(n, 4, 1, 1)
    rs = render_size.view(n, 2, 1, 1).float()
    z = view_depth(depth, p)[:, 0]                                           # (N, h, w)
    # k_fov = |view position of the viewport corner| / |of its centre| (the depth cancels)
    centre = torch.floor(rs * 0.5) / rs * 2 - 1
    ndc_c = torch.cat([centre[:, :1], -centre[:, 1:]], 1)                   # ndc = pos / size * (2, -2) + (-1, 1)
    fov = lambda ndc: torch.sqrt((p[:, 2:3] * ndc[:, :1]) ** 2 + (p[:, 3:4] * ndc[:, 1:]) ** 2 + 1)
    k_fov = fov(torch.ones_like(ndc_c)) / fov(ndc_c)                         # corner: ndc (-1, 1)
    diag = rs.norm(dim=1, keepdim=True)
    power = 1 + 2 * (diag / (1080.0**2 + 1920.0**2) ** 0.5).clamp(0, 1)
    taps = bilinear_taps(pos)                                               # all four taps at once: (N, 4, h, w)
    iy, ix, wt = (torch.stack([t[i] for t in taps], 1) for i in range(3))
    onscreen = (iy >= 0) & (iy < H) & (ix >= 0) & (ix < W)
    flat = (iy.clamp(0, H - 1) * W + ix.clamp(0, W - 1)).view(n, -1)
    prev = depth_tm1.reshape(n, -1).gather(1, flat).view_as(wt).float() * 2.0**-31
    z = z.unsqueeze(1)
    z_prev = p[:, 1:2] / (prev - p[:, 0:1])
    diff = z - z_prev
    use = onscreen & (wt > 0.1) & (diff > 0)
    required = 1.37e-5 * k_fov * diag * torch.maximum(z, z_prev)
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


def pre_process(f, state):
    """One frame -> (network input (N, 12, Hp, Wp), aux). f: colour (N, 3, h, w) linear jittered, depth,
    motion_lr (N, 2, h, w) (already zeroed on reset frames), jitter (N, 2, 1, 1), exposure (N, 1, 1, 1),
    depth_params (N, 4, 1, 1), render_size (N, 2, 1, 1). state: history (N, 3, H, W) linear, feedback
    (N, 4, Hp, Wp), derivative (N, 4, h, w), all zero after a reset."""
    colour, e = f["colour"], f["exposure"]
    n, _, h, w = colour.shape
    hp, wp = padded_size(h, w)
    dev = colour.device
    centres = pixel_centres(n, h, w, dev)
    depth_tm1 = depth_scatter(f["depth"], f["motion_lr"])                  # (N, 1, h/2, w/2) int
    depth_dilated, offset, mv = nearest_depth(f["depth"], f["motion_lr"])
    mv = zero_small(mv)                                                     # (N, 2, h, w) LR px, depth-dilated
    prev_pos = centres - mv
    # the disocclusion test reads the scatter at the half-res texel of the pixel, minus the motion
    half = (torch.div(centres - 0.5, 2, rounding_mode="floor") + 0.5)
    scale_tm1 = torch.tensor([depth_tm1.shape[-2] / h, depth_tm1.shape[-1] / w], device=dev).view(1, 2, 1, 1)
    disocclusion = depth_clip(depth_tm1, half - mv * scale_tm1, depth_dilated, f["depth_params"], f["render_size"])
    H, W = state["history"].shape[-2:]
    history = karis(bilinear(state["history"], prev_pos * torch.tensor([H / h, W / w], device=dev).view(1, 2, 1, 1),
                             zero_outside=True) * e)                        # ch 0-2
    unjittered = bilinear(colour, centres - f["jitter"], zero_outside=False)
    colour_tm = karis(unjittered * e)                                       # ch 3-5
    detector = motion_detector(mv, f["render_size"])                        # ch 6
    instability, derivative = luma_derivative(colour, e, state["derivative"], prev_pos, disocclusion)   # ch 11
    low = mirror_pad(torch.cat([history, colour_tm, detector, instability], 1), hp, wp)
    # ch 7-10: the feedback lives at padded res and is read in padded coordinates, with the mirrored
    # pixel's motion and disocclusion
    mv_p, dis_p = mirror_pad(mv, hp, wp), mirror_pad(disocclusion, hp, wp)
    feedback = bilinear(state["feedback"], pixel_centres(n, hp, wp, dev) - mv_p, zero_outside=True)
    feedback = feedback * (dis_p <= 0.01)
    x = torch.cat([low[:, :7], feedback, low[:, 7:]], 1)
    aux = {"mv": mv, "nearest_depth_offset": encode_offset(offset), "disocclusion_mask": disocclusion,
           "derivative": derivative, "depth_tm1": depth_tm1, "input_color": colour_tm}
    return x, aux
