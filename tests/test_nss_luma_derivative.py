"""Golden tests for nss/luma_derivative.py (Arm NSS v1 luma-derivative / instability detector).

Expected numbers are hand-computed from Arm's constants (comments) or come from `ref_pixel`, a scalar pure-Python
re-derivation of the state machine for one pixel written here; nothing is copied from Arm's outputs.
"""

import doctest
import math

import pytest
import torch

import nss.luma_derivative as ld
from nss.luma_derivative import (
    luma_derivative,
    luma_derivative_legacy,
    pixel_centres,
    rgb_to_ycocg,
    sample_derivative_tm1,
)

TOL = 2e-5


# ---------------------------------------------------------------- scalar reference (one pixel, plain floats)


def clamp01(x):
    return min(max(x, 0.0), 1.0)


def ramp(x, lo, hi):
    return clamp01((x - lo) / (hi - lo))


def lerp(a, b, t):
    return a + (b - a) * t


def ref_ycocg(r, g, b):
    co = r - b
    t = b + co / 2
    cg = g - t
    return (t + cg / 2, co, cg)


def ref_colour(rgb, e=1.0):
    return ref_ycocg(*(math.sqrt(max(v * e, 0.0)) for v in rgb))


def ref_delta(a, b):
    return math.sqrt((a[0] - b[0]) ** 2 + (1.25 * (a[1] - b[1])) ** 2 + (1.25 * (a[2] - b[2])) ** 2)


def ref_extra(c, d_center, wide, wide_prev):
    """mid/low ignition: moire over the wide cross and coherent flat blue flicker."""
    temporal = [d_center] + [ref_delta(t, q[:3]) for t, q in zip(wide, wide_prev)]
    rng = max(ref_delta(c, t) for t in wide)
    moire = ramp(rng, 0.99, 0.999) * ramp(max(temporal), 0.1, 0.3) * 0.5
    y, co, cg = c
    b = y - 0.5 * (co + cg)
    surface = (
        (1 - ramp(rng, 0.04, 0.12))
        * ramp(-0.75 * co - 0.5 * cg, 0.22, 0.3)
        * clamp01((y - 0.45) / 0.1)
        * (1 - clamp01((y - 1.05) / 0.2))
        * clamp01((b - 0.8) / 0.1)
        * (1 - clamp01((b - 1.4) / 0.2))
    )
    return max(moire, ramp(min(temporal), 0.015, 0.03) * surface * 0.75)


def ref_pixel(c, nbrs, prev, dis, extra=None):
    """One pixel: current YCoCg c, its 4 axial neighbours, the sampled previous state (4), disocclusion.
    Returns (channel 11, new state)."""
    p = prev[3]
    d_center = ref_delta(c, prev[:3])
    ds = [ref_delta(c, q) for q in nbrs]
    support = max(sum(ds) - max(ds), 0.0) / 3  # mean of the 3 weakest neighbour deltas
    s = lerp(d_center, support, 0.3) * 0.75
    recall, mean_gate = ramp(s, 0.065, 0.42), ramp(s, 0.07, 0.23)
    entry = math.sqrt(recall) * math.sqrt(ramp(max(s - p, 0.0), 0.025, 0.16)) * mean_gate
    if extra is not None:
        entry = max(entry, extra)
    heat = ramp(p, 0.11, 0.21)
    lo, hi = lerp(0.177, 0.157, heat), lerp(0.33, 0.305, heat)
    gate = clamp01((lerp(p, s, 0.3) - lo) / (hi - lo)) ** 2
    raw = max(entry, p * max(gate, ramp(p, 0.18, 0.28) ** 2 * 0.12) * 0.8)
    if raw > p:
        alpha = lerp(0.08, 0.22, math.sqrt(recall * mean_gate))
    else:
        alpha = lerp(0.24, 0.05, max(gate, heat * heat * 0.5))
    f = lerp(p, raw, alpha)
    vis = lerp(p, f, 0.75 if f > p else 0.8)
    if extra is not None:
        vis = max(vis, extra)
    if dis > 0.01 or sum(abs(v) for v in prev) < 1e-4:
        return 0.0, (*c, 0.0)
    return vis, (*c, f)


def ref_reflect(i, n):
    i = -i - 1 if i < 0 else (2 * n - i - 1 if i >= n else i)
    return min(max(i, 0), n - 1)


def ref_sample(img, y, x):
    """img[y][x] -> tuple; bilinear at (y, x) pixels, centres at i + 0.5, zero outside, not renormalised."""
    H, W = len(img), len(img[0])
    y, x = y - 0.5, x - 0.5
    y0, x0 = math.floor(y), math.floor(x)
    fy, fx = y - y0, x - x0
    out = [0.0] * len(img[0][0])
    for yi, wy in ((y0, 1 - fy), (y0 + 1, fy)):
        for xi, wx in ((x0, 1 - fx), (x0 + 1, fx)):
            if 0 <= yi < H and 0 <= xi < W:
                out = [o + v * wy * wx for o, v in zip(out, img[yi][xi])]
    return tuple(out)


def ref_frame(colour, e, state, pos, dis, quality="high", process=None):
    """Whole image, pixel by pixel, batch 0. colour (1,3,H,W), state (1,4,h,w), ... as tensors."""
    H, W = colour.shape[-2:]
    h, w = state.shape[-2:]
    ph, pw = process or ((H, W) if (h, w) == (H, W) else (H // 2, W // 2))
    col = colour[0].permute(1, 2, 0).tolist()
    ycc = [[ref_colour(col[y][x], e) for x in range(W)] for y in range(H)]
    st = state[0].permute(1, 2, 0).tolist()
    pos, dis = pos[0].tolist(), dis[0, 0].tolist()
    sy, sx = max(int(H / ph + 0.5), 1), max(int(W / pw + 0.5), 1)
    inst, new = [[0.0] * w for _ in range(h)], [[(0.0,) * 4] * w for _ in range(h)]
    for i in range(h):
        for j in range(w):
            ry = min(max(math.floor((ref_reflect(i, ph) + 0.5) * H / ph), 0), H - 1)
            rx = min(max(math.floor((ref_reflect(j, pw) + 0.5) * W / pw), 0), W - 1)

            def at(dy, dx):
                return ycc[ref_reflect(ry + dy, H)][ref_reflect(rx + dx, W)]

            c = at(0, 0)
            nbrs = [at(-1, 0), at(1, 0), at(0, -1), at(0, 1)]
            py, px = pos[0][i][j], pos[1][i][j]
            prev = ref_sample(st, py, px)
            extra = None
            if quality != "high":
                offs = ((-1, 0), (1, 0), (0, -1), (0, 1))
                wide = [at(dy * sy, dx * sx) for dy, dx in offs]
                wide_prev = [ref_sample(st, py + dy, px + dx) for dy, dx in offs]
                extra = ref_extra(c, ref_delta(c, prev[:3]), wide, wide_prev)
            v, s = ref_pixel(c, nbrs, prev, dis[i][j], extra)
            if i < ph and j < pw:
                new[i][j] = s
            inst[i][j] = v
    return torch.tensor(inst)[None, None], torch.tensor(new).permute(2, 0, 1)[None]


# ---------------------------------------------------------------- helpers


def grey(h, w, v=0.25):
    return torch.full((1, 3, h, w), v)


ONE = torch.ones(1, 1, 1, 1)


def run(frames, quality="high", dis=None, pos=None, state=None):
    """Run a sequence of colour frames (static camera); returns [(instability, state)] per frame."""
    n, _, h, w = frames[0].shape
    state = torch.zeros(n, 4, h, w) if state is None else state
    pos = pixel_centres(n, h, w) if pos is None else pos
    dis = torch.zeros(n, 1, h, w) if dis is None else dis
    out = []
    for f in frames:
        inst, state = luma_derivative(f, ONE, state, pos, dis, quality)
        out.append((inst, state))
    return out


# ---------------------------------------------------------------- tests


def test_ycocg_pinned():
    # lifting YCoCg: Co = r - b = 0.6, t = b + Co/2 = 0.5, Cg = g - t = -0.1, Y = t + Cg/2 = 0.45
    out = rgb_to_ycocg(torch.tensor([0.8, 0.4, 0.2]).view(1, 3, 1, 1)).flatten()
    assert torch.allclose(out, torch.tensor([0.45, 0.6, -0.1]), atol=1e-6)
    # detector domain: sqrt(max(c * exposure, 0)). (0.04, 0.01, 0.0225) * 4 -> sqrt (0.4, 0.2, 0.3)
    # -> Co = 0.1, t = 0.35, Cg = -0.15, Y = 0.275. Negative red clamps: (-1, .25, 0) * 4 -> sqrt (0, 1, 0)
    # -> Co = 0, t = 0, Cg = 1, Y = 0.5
    col = torch.tensor([[0.04, 0.01, 0.0225], [-1.0, 0.25, 0.0]]).T.reshape(1, 3, 1, 2)
    out = ld.derivative_colour(col, 4.0 * ONE)[0, :, 0].T
    assert torch.allclose(out, torch.tensor([[0.275, 0.1, -0.15], [0.5, 0.0, 1.0]]), atol=1e-6)


def test_first_frame_resets_to_colour():
    # zero state = uninitialised: channel 11 = 0 and state = (YCoCg(sqrt(c * e)), 0) everywhere
    col = torch.rand(1, 3, 3, 4)
    e = torch.full((1, 1, 1, 1), 2.0)
    inst, st = luma_derivative(col, e, torch.zeros(1, 4, 3, 4), pixel_centres(1, 3, 4), torch.zeros(1, 1, 3, 4))
    assert inst.abs().max() == 0
    assert torch.allclose(st[:, :3], rgb_to_ycocg(torch.sqrt(col * 2.0)), atol=1e-6)
    assert st[:, 3].abs().max() == 0


def test_static_image_stays_zero():
    # uniform grey, a smooth ramp and a hard vertical edge (contrast 0.9 in sqrt domain): static -> exactly 0
    ramp_img = torch.linspace(0.1, 0.3, 6).view(1, 1, 1, 6).expand(1, 3, 5, 6).clone()
    edge = grey(5, 6, 0.01)
    edge[..., 3:] = 1.0
    for img in (grey(5, 6), ramp_img, edge):
        for inst, st in run([img] * 5):
            assert inst.abs().max() == 0 and st[:, 3].abs().max() == 0


def test_static_fine_checkerboard_ignites_on_spatial_support_alone():
    # Arm's detector is not purely temporal: with d_center = 0, s = 0.75 * 0.3 * spatial_support.
    # checkerboard 0.04 / 0.64 -> sqrt 0.2 / 0.8: all 4 neighbour deltas 0.6 -> support 0.6 -> s = 0.135.
    # frame 1 (p = 0): recall = (0.135-0.065)/0.355 = 0.197183, excursion = (0.135-0.025)/0.135 = 0.814815,
    # mean_gate = (0.135-0.07)/0.16 = 0.40625 -> raw = sqrt(.197183)*sqrt(.814815)*.40625 = 0.162838;
    # rise alpha = 0.08 + 0.14*sqrt(0.197183*0.40625) = 0.119624 -> state 0.019479, channel 11 = 0.014610
    yy, xx = torch.meshgrid(torch.arange(4), torch.arange(4), indexing="ij")
    board = torch.where((yy + xx) % 2 == 0, 0.04, 0.64).float().view(1, 1, 4, 4).expand(1, 3, 4, 4)
    (i0, _), (i1, s1) = run([board, board])
    assert i0.abs().max() == 0
    assert i1[0, 0, 1, 1].item() == pytest.approx(0.014610, abs=TOL)
    assert s1[0, 3, 1, 1].item() == pytest.approx(0.019479, abs=TOL)


def flashing_pixel_frames(pattern, h=5, w=5, at=(2, 2)):
    frames = []
    for bright in pattern:
        f = grey(h, w)
        if bright:
            f[:, :, at[0], at[1]] = 1.0
        frames.append(f)
    return frames


def test_flicker_rises_sustains_falls():
    # grey 0.25 (sqrt 0.5) with pixel (2, 2) flickering to 1.0 (sqrt 1): D = 0.5 in the derivative domain.
    # frame 0 resets (zero state). frame 1 (bright): d_center = 0.5, all 4 neighbours differ by 0.5 -> support
    #   0.5, s = 0.75 * 0.5 = 0.375; p = 0: recall = (0.375-0.065)/0.355 = 0.873239, excursion = 1, mean = 1
    #   -> raw = 0.934472; alpha = 0.08 + 0.14 * 0.934472 = 0.210826 -> state 0.197012, out 0.75 x = 0.147759
    # frame 2 (grey): d_center = 0.5, support 0 -> s = 0.2625; recall 0.556338, excursion
    #   (0.2625-0.197012-0.025)/0.135 = 0.299911 -> raw = 0.408488 > p; alpha = 0.08 + 0.14*sqrt(.556338)
    #   = 0.184423 -> state 0.236011, out = 0.197012 + 0.75 * 0.038999 = 0.226261
    k = 10
    pattern = [False] + [i % 2 == 0 for i in range(k)] + [False] * 8
    out = run(flashing_pixel_frames(pattern))
    vis = [o[0][0, 0, 2, 2].item() for o in out]
    sw = [o[1][0, 3, 2, 2].item() for o in out]
    assert vis[0] == 0
    assert vis[1] == pytest.approx(0.147759, abs=TOL) and sw[1] == pytest.approx(0.197012, abs=TOL)
    assert vis[2] == pytest.approx(0.226261, abs=TOL) and sw[2] == pytest.approx(0.236011, abs=TOL)
    # every frame against the scalar re-derivation
    g, b = ref_colour((0.25,) * 3), ref_colour((1.0,) * 3)
    st = (*g, 0.0)
    for t, bright in enumerate(pattern[1:], 1):
        v, st = ref_pixel(b if bright else g, [g] * 4, st, 0.0)
        assert vis[t] == pytest.approx(v, abs=TOL) and sw[t] == pytest.approx(st[3], abs=TOL)
    rise, sustain, fall = vis[1:5], vis[4 : k + 1], vis[k + 1 :]
    assert all(a < b for a, b in zip(rise, rise[1:]))  # rises over 3 frames ...
    assert min(sustain) > 0.34 and max(sustain) < 0.37  # ... holds ~0.35 while flickering
    assert all(a > b for a, b in zip(fall, fall[1:])) and fall[-1] < 0.09  # ... and decays once it stops
    # only the flickering pixel lights up (its neighbours see one strong neighbour: support 0)
    others = torch.stack([o[0] for o in out]).clone()
    others[..., 2, 2] = 0
    assert others.abs().max() == 0


def test_steady_flash_onset_then_decay():
    # a flash held for 3 frames: ignition on the first frame only (then d_center = 0, s = 0.225 * 0.5 = 0.1125
    # does not sustain), the return to grey re-ignites (d_center = 0.5, support 0, s = 0.2625), then it falls.
    # frame 2: p = 0.197012, heat = 0.870117, support = 0.171658, gate = ((0.171658-0.159598)/0.148645)^2
    #   = 0.006583; raw = 0.197012*0.006583*0.8 = 0.001037 < p: fall alpha = 0.24 - 0.19*max(.006583,
    #   .5*.870117^2 = .378552) = 0.168075 -> state 0.164075, out = 0.197012 - 0.8*0.032937 = 0.170662
    pattern = [False, True, True, True] + [False] * 5
    out = run(flashing_pixel_frames(pattern))
    vis = [o[0][0, 0, 2, 2].item() for o in out]
    assert vis[1] == pytest.approx(0.147759, abs=TOL)
    assert vis[2] == pytest.approx(0.170662, abs=TOL) and out[2][1][0, 3, 2, 2].item() == pytest.approx(
        0.164075, abs=TOL
    )
    assert vis[3] < vis[2] and vis[4] > vis[3] and all(a > b for a, b in zip(vis[5:], vis[6:]))
    g, b = ref_colour((0.25,) * 3), ref_colour((1.0,) * 3)
    st = (*g, 0.0)
    for t, bright in enumerate(pattern[1:], 1):
        v, st = ref_pixel(b if bright else g, [g] * 4, st, 0.0)
        assert vis[t] == pytest.approx(v, abs=TOL)


def test_border_neighbours_reflect_to_the_pixel_itself():
    # corner flash: N and W neighbours reflect to (0, 0) itself (delta 0), S and E are grey (0.5):
    # support = (0+0.5+0+0.5 - 0.5)/3 = 1/6, s = 0.75*(0.7*0.5 + 0.3/6) = 0.3 (interior: 0.375).
    # recall = 0.235/0.355 = 0.661972, excursion 1, mean 1 -> raw 0.813617; alpha = 0.08+0.14*0.813617
    # = 0.193906 -> state 0.157765, out 0.118324. (Zero padding outside would see black: much larger.)
    out = run(flashing_pixel_frames([False, True], at=(0, 0)))
    assert out[1][0][0, 0, 0, 0].item() == pytest.approx(0.118324, abs=TOL)
    assert out[1][1][0, 3, 0, 0].item() == pytest.approx(0.157765, abs=TOL)


def test_reset_on_disocclusion():
    frames = flashing_pixel_frames([False, True, False, True])
    (_, _), (_, _), (_, _), (i3, s3) = run(frames)
    assert i3[0, 0, 2, 2] > 0.3
    _, _, (_, s2), _ = run(frames)
    for dval, reset in ((0.0100, False), (0.0101, True)):  # strict "> 0.01"
        dis = torch.full((1, 1, 5, 5), dval)
        inst, st = luma_derivative(frames[3], ONE, s2, pixel_centres(1, 5, 5), dis)
        if reset:
            assert inst.abs().max() == 0 and st[:, 3].abs().max() == 0
            assert torch.allclose(st[:, :3], rgb_to_ycocg(torch.sqrt(frames[3])), atol=1e-6)
        else:
            assert torch.allclose(inst, i3) and torch.allclose(st, s3)


def test_uninitialised_threshold_and_black_pixels():
    # sampled |x|+|y|+|z|+|w| < 1e-4 counts as uninitialised (reset), 2e-4 does not
    col = grey(1, 1, 1.0)
    pos, dis = pixel_centres(1, 1, 1), torch.zeros(1, 1, 1, 1)
    for total, reset in ((0.9e-4, True), (2e-4, False)):
        prev = torch.tensor([0.0, 0.0, 0.0, total]).view(1, 4, 1, 1)
        inst, st = luma_derivative(col, ONE, prev, pos, dis)
        want_i, want_s = ref_pixel(ref_colour((1.0,) * 3), [ref_colour((1.0,) * 3)] * 4, (0, 0, 0, total), 0.0)
        assert (inst.item() == 0) == reset and inst.item() == pytest.approx(want_i, abs=TOL)
        assert st.flatten().tolist() == pytest.approx(list(want_s), abs=TOL)
    assert want_i > 0.1  # a white pixel after a black, valid state does ignite
    # a black pixel's state (0, 0, 0, 0) looks uninitialised every frame: it never reports instability
    black = run([grey(3, 3, 0.0)] * 3)
    assert all(i.abs().max() == 0 and s.abs().max() == 0 for i, s in black)


def test_sampler_is_bilinear_with_zero_outside():
    img = torch.tensor([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]]).view(1, 1, 2, 3)
    pts = [
        (0.5, 0.5, 1.0),
        (0.5, 1.0, 1.5),
        (1.0, 1.5, 3.5),
        (1.25, 2.25, 0.25 * 2.75 + 0.75 * 5.75),
        (0.5, 0.0, 0.5),
        (0.0, 0.5, 0.5),
        (2.0, 2.5, 3.0),
        (0.5, 3.0, 1.5),
        (0.0, 0.0, 0.25),
        (-0.5, 1.5, 0.0),
        (0.5, 3.5, 0.0),
        (5.0, -3.0, 0.0),
    ]
    pos = torch.tensor([[p[0] for p in pts], [p[1] for p in pts]]).view(1, 2, 1, len(pts))
    got = sample_derivative_tm1(img, pos).flatten().tolist()
    assert got == pytest.approx([p[2] for p in pts], abs=1e-6)


def test_reprojection_outside_the_image():
    # a hot state reprojected fully outside: samples are zero -> uninitialised -> reset (channel 11 = 0)
    frames = flashing_pixel_frames([False, True, False, True])
    _, _, (_, s2), _ = run(frames)
    pos = pixel_centres(1, 5, 5) + torch.tensor([-10.0, 0.0]).view(1, 2, 1, 1)
    inst, st = luma_derivative(frames[3], ONE, s2, pos, torch.zeros(1, 1, 5, 5))
    assert inst.abs().max() == 0 and st[:, 3].abs().max() == 0
    # half a pixel outside on the left: column 0 reads 0.5 * state (no renormalisation), a fake temporal
    # change on a static grey image: d_center = 0.5 - 0.25 = 0.25, support 0 -> s = 0.13125;
    # recall 0.186620, excursion 0.787037, mean 0.382813 -> raw 0.146710; alpha = 0.08 + 0.14 *
    # sqrt(0.186620 * 0.382813) = 0.117419 -> state 0.017227, out 0.012920. Columns 1.. see a 50/50 mix of
    # two equal states: exact, 0.
    g = grey(5, 5)
    ((_, s0),) = run([g])
    pos = pixel_centres(1, 5, 5) - torch.tensor([0.0, 0.5]).view(1, 2, 1, 1)
    inst, st = luma_derivative(g, ONE, s0, pos, torch.zeros(1, 1, 5, 5))
    assert inst[0, 0, :, 0].tolist() == pytest.approx([0.012920] * 5, abs=TOL)
    assert st[0, 3, :, 0].tolist() == pytest.approx([0.017227] * 5, abs=TOL)
    assert inst[..., 1:].abs().max() < 1e-6


@pytest.mark.parametrize("quality", ["high", "mid"])
def test_random_frame_matches_scalar_reference(quality):
    torch.manual_seed(0)
    h, w = 5, 6
    col = torch.rand(1, 3, h, w) * 1.5 - 0.1
    e = torch.full((1, 1, 1, 1), 0.8)
    state = torch.cat([ld.derivative_colour(torch.rand(1, 3, h, w), 1.0), torch.rand(1, 1, h, w) * 0.4], 1)
    pos = pixel_centres(1, h, w) + torch.randn(1, 2, h, w) * 1.5
    dis = torch.rand(1, 1, h, w) * 0.03
    inst, st = luma_derivative(col, e, state, pos, dis, quality)
    want_i, want_s = ref_frame(col, 0.8, state, pos, dis, quality)
    assert torch.allclose(inst, want_i, atol=TOL) and torch.allclose(st, want_s, atol=TOL)
    assert (inst > 0).sum() >= 5 and (st[:, 3] > 0).sum() >= 5  # not a trivially reset frame


def test_half_res_layout_matches_scalar_reference():
    # mid/low: colour 8x10, process grid 4x5, state padded to 6x8 -> reflect + ref = floor((p'+0.5)*2), step 2
    torch.manual_seed(1)
    col = torch.rand(1, 3, 8, 10)
    state = torch.cat([ld.derivative_colour(torch.rand(1, 3, 6, 8), 1.0), torch.rand(1, 1, 6, 8) * 0.4], 1)
    pos = pixel_centres(1, 6, 8) + torch.randn(1, 2, 6, 8)
    dis = torch.zeros(1, 1, 6, 8)
    inst, st = luma_derivative(col, ONE, state, pos, dis, "low", process_size=(4, 5))
    want_i, want_s = ref_frame(col, 1.0, state, pos, dis, "low", process=(4, 5))
    assert torch.allclose(inst, want_i, atol=TOL) and torch.allclose(st, want_s, atol=TOL)
    assert st[..., 4:, :].abs().max() == 0 and st[..., 5:].abs().max() == 0  # padding is not written


def test_mid_flat_blue_flicker_term():
    # flat blue (0.25, 0.25, 1) -> sqrt (0.5, 0.5, 1): Y = 0.625, Co = -0.5, Cg = -0.25, blue bias = 0.5,
    # B = 1. Previous frame b' = 0.96: temporal delta sqrt(0.01^2 + (1.25*0.04)^2 + (1.25*0.02)^2) = 0.0568
    # >= 0.03 everywhere, range 0 -> flat term 0.75. Normal path: s = 0.75*0.7*0.0568 = 0.0298 -> no entry.
    # mid: raw = 0.75 > p = 0, alpha 0.08 -> state 0.06; channel 11 = max(0.75 * 0.06, 0.75) = 0.75.
    col = torch.tensor([0.25, 0.25, 1.0]).view(1, 3, 1, 1).expand(1, 3, 8, 8)
    prev = torch.cat(
        [ld.derivative_colour(torch.tensor([0.25, 0.25, 0.9216]).view(1, 3, 1, 1), 1.0), torch.zeros(1, 1, 1, 1)], 1
    ).expand(1, 4, 4, 4)
    args = (col, ONE, prev, pixel_centres(1, 4, 4), torch.zeros(1, 1, 4, 4))
    i_mid, s_mid = luma_derivative(*args, quality="mid")
    i_high, s_high = luma_derivative(*args, quality="high")
    # (at the border the wide-cross state taps fall outside and read 0: a large delta, which the min ignores)
    assert torch.allclose(i_mid, torch.tensor(0.75), atol=TOL)
    assert torch.allclose(s_mid[:, 3], torch.tensor(0.06), atol=TOL)
    assert i_high.abs().max() == 0 and s_high[:, 3].abs().max() == 0


def test_mid_moire_term():
    # a white pixel (sqrt 1) on black whose previous colour was 1e-4 (sqrt 0.01): d_center = 0.99, range 1
    # -> moire = 1 * 1 * 0.5. High: s = 0.75*(0.7*0.99 + 0.3*1) = 0.74475 -> raw 1, state 0.22, out 0.165.
    # mid: channel 11 = max(0.165, 0.5) = 0.5 (state still 0.22).
    col = torch.zeros(1, 3, 3, 3)
    col[..., 1, 1] = 1.0
    prev = torch.zeros(1, 4, 3, 3)
    prev[:, 0, 1, 1] = 0.01
    args = (col, ONE, prev, pixel_centres(1, 3, 3), torch.zeros(1, 1, 3, 3))
    (i_h, s_h), (i_m, s_m) = luma_derivative(*args, "high"), luma_derivative(*args, "mid")
    assert i_h[0, 0, 1, 1].item() == pytest.approx(0.165, abs=TOL) and i_m[0, 0, 1, 1].item() == pytest.approx(0.5)
    assert s_h[0, 3, 1, 1].item() == pytest.approx(0.22, abs=TOL) and s_m[0, 3, 1, 1].item() == pytest.approx(0.22)


def test_gradients_and_quality_flag():
    col = torch.rand(1, 3, 4, 4, requires_grad=True)
    state = torch.cat([ld.derivative_colour(torch.rand(1, 3, 4, 4), 1.0), torch.rand(1, 1, 4, 4) * 0.3], 1)
    state[..., 0, 0] = 0  # include a reset pixel
    args = (ONE, state, pixel_centres(1, 4, 4), torch.zeros(1, 1, 4, 4))
    inst, st = luma_derivative(col, *args)
    assert not inst.requires_grad and not st.requires_grad  # Arm: no_diff inputs
    inst, st = luma_derivative(col * torch.tensor([1.0, 1.0, 0.0]).view(1, 3, 1, 1), *args, detach=False)
    (inst.sum() + st.sum()).backward()
    assert torch.isfinite(col.grad).all() and col.grad.abs().sum() > 0
    with pytest.raises(ValueError):
        luma_derivative(col, *args, quality="ultra")


def test_legacy_path():
    # luma 0.5, previous (derivative 0.1, luma 0.3): d = 0.2 -> curved = (0.2/0.3)^1.5 = 0.544331;
    # alpha = 0.1 - 0.09 * (0.1/0.3) = 0.07 -> 0.1 + 0.444331 * 0.07 = 0.131103. d < 0.05 -> curved 0:
    # 0.1 * (1 - 0.07) = 0.093. Disocclusion > 0.01 -> 0.
    col = torch.full((1, 3, 1, 3), 0.5)
    col[..., 1] = 0.32
    prev = torch.tensor([0.1, 0.3, 0.0, 0.0]).view(1, 4, 1, 1).expand(1, 4, 1, 3)
    dis = torch.tensor([0.0, 0.0, 0.02]).view(1, 1, 1, 3)
    inst, st = luma_derivative_legacy(col, prev, pixel_centres(1, 1, 3), dis)
    assert inst.flatten().tolist() == pytest.approx([0.131103, 0.093, 0.0], abs=1e-5)
    assert st[0, 1, 0].tolist() == pytest.approx([0.5, 0.32, 0.5], abs=1e-6)


def test_module_example_runs():
    assert doctest.testmod(ld).failed == 0
