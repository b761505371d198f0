"""NSS v1 luma-derivative / instability detector: network input channel 11 and the recurrent `derivative` state.

A PyTorch port of `CalculateLumaDerivative` (NSS_V1_LUMA_DERIVATIVE path) of Arm's NSS v1 pre-process shader.
Source: arm/neural-graphics-model-gym at ef328bf (https://github.com/arm/neural-graphics-model-gym); paths below
are in that repository under src/ng_model_gym/usecases/, and "ps:LINE" means
nss/model/shaders/nss_v1/pre_process.slang. Whole-image tensor ops, branches as torch.where, no pixel loops.

Signal (ps:586-610, 641-653). Colours go to a "derivative domain": c' = sqrt(max(colour * exposure, 0)) of the
current JITTERED low-res colour read at the pixel itself (ps:317-327; no un-jittering, no tonemap), in lifting
YCoCg: Co = r - b, t = b + Co/2, Cg = g - t, Y = t + Cg/2 (ps:493-501; this module-local function shadows the
normalised RGBToYCoCg of common/model/shaders/image.slang:15). Colour distance |dY, 1.25 dCo, 1.25 dCg|
(ps:506-519), taken
  * in time, d_center: current pixel vs the reprojected previous colour (state.xyz);
  * in space, against the 4 axial neighbours: spatial_support = mean of the 3 smallest of the 4 distances (the
    strongest is dropped, so a straight edge gives 0). Neighbours outside the image reflect (ReflectIndex,
    ps:196-200: -1 -> 0, size -> size - 1), i.e. at +-1 the border pixel is its own neighbour (ps:320).
  * supported instability s = 0.75 * lerp(d_center, spatial_support, 0.3) (ps:652-653). Note that a static
    but fine, high-contrast texture gives s = 0.225 * spatial_support and can ignite on its own.
State machine on s and the previous filtered instability p = state.w (constants ps:541-567, logic ps:677-749),
with ramp(x, a, b) = clamp((x - a) / (b - a), 0, 1):
  * rise / entry (ps:677-691): raw_entry = sqrt(ramp(s, .065, .42)) * sqrt(ramp(max(s - p, 0), .025, .16))
    * ramp(s, .07, .23): only a large s, clearly above p, ignites.
  * sustain / carry (ps:696-718): heat = ramp(p, .11, .21); support = lerp(p, s, 0.3); sustain gate =
    ramp(support, lo, hi)^2 with (lo, hi) lerped by heat from cold (.177, .33) to hot (.157, .305); a hot-hold
    path ramp(p, .18, .28)^2 * 0.12 keeps a minimum carry; raw_sustain = p * max(gate, hot-hold) * 0.8.
  * target raw = max(raw_entry, raw_sustain) (ps:720-723).
  * filter (ps:725-737): raw > p rises with alpha = lerp(.08, .22, sqrt(ramp(s, .065, .42) * ramp(s, .07, .23)));
    otherwise falls with alpha = lerp(.24, .05, max(sustain gate, 0.5 heat^2)): fast when support collapses,
    a slow leaky fall for hot pixels. filtered = lerp(p, raw, alpha) is the new state.w.
  * output EMA (ps:739-749): channel 11 = lerp(p, filtered, 0.75 if filtered > p else 0.8); output only, the
    state keeps `filtered`.
  * resets (ps:756-776): where disocclusion > 0.01, or where the sampled previous state is "uninitialised"
    (|x|+|y|+|z|+|w| < 1e-4: the zero state of a sequence's first frame, a reprojection fully outside the
    image, a black pixel with zero instability), channel 11 = 0 and the state = (YCoCg(c'), 0).
Previous state sampling (LoadDerivativeTm1, ps:408-412; sample_tensor, common/model/shaders/tensor.slang:84-115,
with clamp_to_edge=false): bilinear at the reprojected position; taps outside the image weigh zero and the
weights are NOT renormalised (zero padding), so a half-outside reprojection halves the state. In the high quality
layout the state lives on the low-res grid and prev_pos = pixel centre - dilated motion (ps:943, 985-993).

quality="mid"/"low" (nss/model/quality_modes.py: low_mid_luma_derivative -> NSS_V1_LOW_MID_LUMA_DERIVATIVE) adds
two ignition terms, max-ed into raw_entry and into channel 11 (ps:568-585, 611-639, 654-676, 692-694, 747-749):
moire = ramp(max temporal distance over the centre and a wider cross, .1, .3) * ramp(max current distance
centre-to-cross, .99, .999) * 0.5, and flat flicker = ramp(min temporal distance, .015, .03) * flatness
(1 - ramp(range, .04, .12)) * blue / luma / B windows * 0.75. Those modes run Arm's pre-process at half
resolution (preprocess_half_res_input): pass the state on the half-res (optionally padded) grid and the low-res
colour; each state pixel then reads colour at floor((reflect(p, process) + 0.5) * in / process) (ps:913-916,
415-424), the wide cross steps round(in / process) colour pixels and one state pixel (ps:617-627), and state
pixels past the process size are not written (stay 0, ps:1013-1014). Any quality works on either layout; the
layout follows the shapes. The legacy detector (NSS_V1_LUMA_DERIVATIVE=0, ps:779-808) is luma_derivative_legacy.

Gradients: Arm's shader is [Differentiable] but every input of this block is no_diff or a non-differentiable
TensorView, so nothing flows back; detach=True (default) does the same. With detach=False the same maths keeps
an autograd path (sqrt and length made safe at 0, so gradients stay finite).

Example (a static grey image whose pixel (1, 1) flashes bright):
>>> import torch
>>> from nss.luma_derivative import luma_derivative, pixel_centres
>>> grey = torch.full((1, 3, 4, 4), 0.25)
>>> exposure, no_dis = torch.ones(1, 1, 1, 1), torch.zeros(1, 1, 4, 4)
>>> pos = pixel_centres(1, 4, 4)                        # static camera: previous position = pixel centre
>>> state = torch.zeros(1, 4, 4, 4)                      # first frame: uninitialised -> reset
>>> inst, state = luma_derivative(grey, exposure, state, pos, no_dis)
>>> flash = grey.clone(); flash[:, :, 1, 1] = 1.0
>>> inst, state = luma_derivative(flash, exposure, state, pos, no_dis)
>>> round(inst[0, 0, 1, 1].item(), 4), inst.sum().item() == inst[0, 0, 1, 1].item()
(0.1478, True)
"""

import math

import torch
import torch.nn.functional as F

from nss.post_process import bilinear  # Arm's sample_tensor (tensor.slang:85-114)

__all__ = [
    "luma_derivative",
    "luma_derivative_legacy",
    "sample_derivative_tm1",
    "rgb_to_ycocg",
    "derivative_colour",
    "pixel_centres",
]

QUALITIES = ("high", "mid", "low")
DIS_THRESH = 0.01  # ps:542, disocclusion above this resets
CHROMA_WEIGHT = 1.25  # ps:543
UNINIT_EPS = 1e-4  # ps:769


def pixel_centres(n, h, w, device=None):
    """Pixel centres (N, 2, h, w) in pixels, (y, x): the previous positions of a static camera."""
    ys = torch.arange(h, device=device, dtype=torch.float32) + 0.5
    xs = torch.arange(w, device=device, dtype=torch.float32) + 0.5
    return torch.stack(torch.meshgrid(ys, xs, indexing="ij")).expand(n, 2, h, w)


def rgb_to_ycocg(rgb):
    """Lifting YCoCg of Arm's pre-process (ps:493-501): RGB (N, 3, ...) -> (Y, Co, Cg).
    Y = (r + 2g + b) / 4, Co = r - b, Cg = g - (r + b) / 2."""
    r, g, b = rgb.unbind(1)
    co = r - b
    t = b + 0.5 * co
    cg = g - t
    return torch.stack([t + 0.5 * cg, co, cg], 1)


def _safe_sqrt(x):
    """sqrt(max(x, 0)) with a finite (zero) gradient at x <= 0."""
    pos = x > 0
    return torch.where(pos, torch.sqrt(torch.where(pos, x, torch.ones_like(x))), torch.zeros_like(x))


def derivative_colour(colour, exposure):
    """The detector's colour domain (ps:317-327 then ps:493-501): YCoCg(sqrt(max(colour * exposure, 0)))."""
    return rgb_to_ycocg(_safe_sqrt(colour * exposure))


def _delta(a, b):
    """ComputeDerivativeDelta (ps:506-519): |(dY, 1.25 dCo, 1.25 dCg)|, (N, 1, ...)."""
    d = a - b
    wts = torch.tensor([1.0, CHROMA_WEIGHT, CHROMA_WEIGHT], dtype=d.dtype, device=d.device)
    d = d * wts.view(1, 3, *([1] * (d.dim() - 2)))
    return _safe_sqrt((d * d).sum(1, keepdim=True))


def _ramp(x, lo, hi):
    return ((x - lo) * (1.0 / (hi - lo))).clamp(0.0, 1.0)


def _lerp(a, b, t):
    return a + (b - a) * t


def sample_derivative_tm1(derivative_tm1, pos):
    """LoadDerivativeTm1 (ps:408-412): bilinear sample of (N, C, H, W) at positions pos (N, 2, h, w) in its pixels,
    (y, x), centres at i + 0.5; taps outside the image count as zero, weights are not renormalised."""
    return bilinear(derivative_tm1, pos, clamp_to_edge=False)


def _reflect(i, size):
    """ReflectIndex (ps:196-200): -1 -> 0, size -> size - 1 (clamped for offsets beyond one image size)."""
    i = torch.where(i < 0, -i - 1, torch.where(i >= size, 2 * size - i - 1, i))
    return i.clamp(0, size - 1)


def _layout(n_state, n_in, n_proc, device):
    """Per state row (or column): the colour row read (ps:913-919, 415-424), the wide-cross step (ps:617) and
    whether the state is written there (ps:1013-1014)."""
    if n_proc is None:
        n_proc = n_in if n_state == n_in else n_in // 2
    inv_scale = n_in / n_proc
    p = torch.arange(n_state, device=device)
    pc = _reflect(p, n_proc)
    ref = torch.floor((pc.double() + 0.5) * inv_scale).long().clamp(0, n_in - 1)
    return ref, max(int(inv_scale + 0.5), 1), p < n_proc


def luma_derivative(
    colour, exposure, derivative_tm1, prev_pos, disocclusion, quality="high", *, process_size=None, detach=True
):
    """Arm NSS v1 instability detector for one frame.

    colour (N, 3, H, W): current jittered low-res linear colour as stored (exposure not applied).
    exposure: linear multiplier, (N, 1, 1, 1) or anything broadcasting to colour.
    derivative_tm1 (N, 4, h, w): previous state as returned here (zeros on a sequence's first frame).
    prev_pos (N, 2, h, w): previous-frame position of each state pixel centre, in state-grid pixels, (y, x).
    disocclusion (N, 1, h, w) in [0, 1]; > 0.01 resets.
    quality: "high" (Arm's default), or "mid"/"low" (identical here: adds the moire and flat-flicker terms).
    process_size: (rows, cols) of Arm's process grid when the state grid differs from the colour grid
        (half-res layout of mid/low; default colour size // 2); state pixels beyond it stay zero.
    detach: stop gradients like Arm's no_diff (default True).
    Returns instability (N, 1, h, w) = network input channel 11, and the new state (N, 4, h, w) =
    (YCoCg of sqrt(colour * exposure) at the pixel, filtered instability).
    """
    if quality not in QUALITIES:
        raise ValueError(f"quality must be one of {QUALITIES}, got {quality!r}")
    if detach:
        colour, derivative_tm1, prev_pos, disocclusion = (
            t.detach() for t in (colour, derivative_tm1, prev_pos, disocclusion)
        )
        exposure = exposure.detach() if torch.is_tensor(exposure) else exposure
    H, W = colour.shape[-2:]
    h, w = derivative_tm1.shape[-2:]
    dev = colour.device
    proc = process_size if process_size is not None else (None, None)
    ref_r, step_r, rows_written = _layout(h, H, proc[0], dev)
    ref_c, step_c, cols_written = _layout(w, W, proc[1], dev)
    ycc = derivative_colour(colour, exposure)  # (N, 3, H, W)
    if (
        (h, w) == (H, W)
        and step_r == step_c == 1
        and bool((ref_r == torch.arange(h, device=dev)).all() and (ref_c == torch.arange(w, device=dev)).all())
    ):
        padded = F.pad(ycc, (1, 1, 1, 1), mode="replicate")  # = ReflectIndex for offsets of one pixel

        def tap(dy, dx):
            return padded[..., 1 + dy : 1 + dy + H, 1 + dx : 1 + dx + W]
    else:

        def tap(dy, dx):  # colour at the reference pixel + (dy, dx) colour pixels, reflected at the edges
            return ycc.index_select(2, _reflect(ref_r + dy, H)).index_select(3, _reflect(ref_c + dx, W))

    c = tap(0, 0)
    prev = sample_derivative_tm1(derivative_tm1, prev_pos)  # (N, 4, h, w)
    p = prev[:, 3:4]
    d_center = _delta(c, prev[:, :3])
    d_nb = torch.cat([_delta(c, tap(dy, dx)) for dy, dx in ((-1, 0), (1, 0), (0, -1), (0, 1))], 1)
    spatial = (d_nb.sum(1, keepdim=True) - d_nb.amax(1, keepdim=True)).clamp_min(0.0) * (1.0 / 3.0)
    s = _lerp(d_center, spatial, 0.30) * 0.75  # supported instability

    # entry (ps:677-694)
    recall = _ramp(s, 0.065, 0.420)
    excursion = _ramp((s - p).clamp_min(0.0), 0.025, 0.160)
    mean_gate = _ramp(s, 0.070, 0.230)
    raw_entry = _safe_sqrt(recall) * _safe_sqrt(excursion) * mean_gate
    extra = None
    if quality != "high":
        extra = _low_mid_terms(c, d_center, tap, derivative_tm1, prev_pos, step_r, step_c)
        raw_entry = torch.maximum(raw_entry, extra)
    # sustain / carry (ps:696-718)
    heat = _ramp(p, 0.110, 0.210)
    support = _lerp(p, s, 0.30)
    floor, ceil = _lerp(0.177, 0.157, heat), _lerp(0.330, 0.305, heat)
    sustain_gate = ((support - floor) / (ceil - floor)).clamp(0.0, 1.0) ** 2
    hot_hold = _ramp(p, 0.180, 0.280) ** 2 * 0.12
    raw_sustain = p * torch.maximum(sustain_gate, hot_hold) * 0.80
    raw = torch.maximum(raw_entry, raw_sustain)
    # temporal filter (ps:725-737) and the output-only EMA (ps:739-749)
    fall_alpha = _lerp(0.24, 0.05, torch.maximum(sustain_gate, heat * heat * 0.50))
    rise_alpha = _lerp(0.08, 0.22, _safe_sqrt(recall * mean_gate))
    filtered = _lerp(p, raw, torch.where(raw > p, rise_alpha, fall_alpha))
    visible = _lerp(p, filtered, torch.where(filtered > p, 0.75, 0.80))
    if extra is not None:
        visible = torch.maximum(visible, extra)
    # resets (ps:756-776)
    reset = (disocclusion > DIS_THRESH) | (prev.abs().sum(1, keepdim=True) < UNINIT_EPS)
    zero = torch.zeros_like(p)
    instability = torch.where(reset, zero, visible)
    state = torch.cat([c, torch.where(reset, zero, filtered)], 1)
    written = (rows_written.view(-1, 1) & cols_written.view(1, -1)).view(1, 1, h, w)
    if not bool(written.all()):
        state = state * written
    return instability, state


def _low_mid_terms(c, d_center, tap, derivative_tm1, prev_pos, step_r, step_c):
    """NSS_V1_LOW_MID_LUMA_DERIVATIVE ignition terms (ps:611-639, 654-676): max(moire entry, flat flicker)."""
    temporal, ranges = [d_center], []
    for dy, dx in ((-1, 0), (1, 0), (0, -1), (0, 1)):
        t = tap(dy * step_r, dx * step_c)  # wide cross, colour pixels
        off = torch.tensor([dy, dx], dtype=prev_pos.dtype, device=prev_pos.device).view(1, 2, 1, 1)
        prev_t = sample_derivative_tm1(derivative_tm1, prev_pos + off)  # one state pixel away
        temporal.append(_delta(t, prev_t[:, :3]))
        ranges.append(_delta(c, t))
    temporal, ranges = torch.cat(temporal, 1), torch.cat(ranges, 1)
    t_max, t_min = temporal.amax(1, keepdim=True), temporal.amin(1, keepdim=True)
    c_range = ranges.amax(1, keepdim=True)
    moire = _ramp(c_range, 0.99, 0.999) * _ramp(t_max, 0.10, 0.30) * 0.50
    y, co, cg = c[:, 0:1], c[:, 1:2], c[:, 2:3]
    blue = _ramp(-0.75 * co - 0.5 * cg, 0.220, 0.300)
    luma = ((y - 0.450) / 0.10).clamp(0, 1) * (1 - ((y - 1.050) / 0.20).clamp(0, 1))
    b = y - 0.5 * (co + cg)  # = B of sqrt(colour)
    rgb_b = ((b - 0.800) / 0.10).clamp(0, 1) * (1 - ((b - 1.400) / 0.20).clamp(0, 1))
    surface = (1 - _ramp(c_range, 0.040, 0.120)) * blue * luma * rgb_b
    flat = _ramp(t_min, 0.015, 0.030) * surface * 0.75
    return torch.maximum(moire, flat)


def luma_derivative_legacy(colour_tm, derivative_tm1, prev_pos, disocclusion):
    """Arm's legacy detector (NSS_V1_LUMA_DERIVATIVE=0, ps:779-808), for completeness.

    colour_tm (N, 3, h, w): the un-jittered, exposed, Karis-tonemapped colour (network input channels 3-5).
    State (N, 4, h, w) = (filtered derivative, luma, 0, 0); returns (instability = state.x, state).
    luma = BT.709; d = |luma - luma_tm1|; curved = (min(d, 0.3) if d >= 0.05 else 0)^1.5 / 0.3^1.5;
    derivative = lerp(prev, curved, lerp(0.1, 0.01, clamp(prev, 0, 0.3) / 0.3)), zeroed where
    disocclusion > 0.01. No uninitialised-state test in this path."""
    prev = sample_derivative_tm1(derivative_tm1, prev_pos)
    wts = torch.tensor([0.2126, 0.7152, 0.0722], dtype=colour_tm.dtype, device=colour_tm.device)
    luma = (colour_tm * wts.view(1, 3, 1, 1)).sum(1, keepdim=True)
    d_prev, luma_prev = prev[:, 0:1], prev[:, 1:2]
    d = (luma - luma_prev).abs()
    clipped = torch.where(d >= 0.05, d.clamp_max(0.3), torch.zeros_like(d))
    curved = clipped * _safe_sqrt(clipped) * (1.0 / (0.3 * math.sqrt(0.3)))
    alpha = _lerp(0.1, 0.01, d_prev.clamp(0.0, 0.3) / 0.3)
    deriv = _lerp(d_prev, curved, alpha) * (disocclusion <= DIS_THRESH)
    return deriv, torch.cat([deriv, luma, torch.zeros_like(deriv), torch.zeros_like(deriv)], 1)
