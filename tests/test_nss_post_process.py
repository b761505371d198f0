"""Golden tests for nss/post_process.py (Arm's NSS v1 post_process.slang). Expected numbers are derived by hand
(in the comments) or by small pure-Python brute forces below, written from the maths of each step (which LR
sample lands in which HR pixel, Catmull-Rom weights, ...) rather than from Arm's code paths."""

import math
import random

import pytest
import torch

from nss.post_process import (
    HALF_MAX,
    bilinear,
    catmull_rom,
    hr_motion,
    lut_taps,
    nearest_offset_code,
    offset_lut,
    post_process,
    upsample_temporal,
)

# ----------------------------------------------------------------------------------------------------------
# pure-Python brute forces (plain floats, nested lists, loops over pixels)


def land(a, j, s):
    """HR pixel that the jittered sample of (virtual) LR pixel a lands in: its position is a + 0.5 + j LR px."""
    return math.floor((a + 0.5 + j) * s)


def lr_landing_in(q, j, s):
    """The (virtual, unclamped) LR pixel whose sample lands in HR pixel q, or None."""
    hits = [a for a in range(math.floor(q / s) - 3, math.floor(q / s) + 4) if land(a, j, s) == q]
    assert len(hits) <= 1
    return hits[0] if hits else None


def bf_taps(P, jit, s, taps):
    """The taps the KPN filter of HR pixel P = (y, x) uses: HR offsets d in the 6x6 window -2..3 that hold an LR
    sample, nearest first (Gaussian rank), ties to the lower KPN channel t = (dx + 2) * 6 + (dy + 2).
    -> [(dy, dx, ay, ax, t)] with the virtual LR pixel (ay, ax)."""
    cands = []
    for dy in range(-2, 4):
        ay = lr_landing_in(P[0] + dy, jit[0], s[0])
        for dx in range(-2, 4):
            ax = lr_landing_in(P[1] + dx, jit[1], s[1])
            if ay is not None and ax is not None:
                cands.append((dy * dy + dx * dx, (dx + 2) * 6 + (dy + 2), dy, dx, ay, ax))
    cands.sort()
    return [(dy, dx, ay, ax, t) for _, t, dy, dx, ay, ax in cands[:taps]]


def clampi(v, n):
    return min(max(v, 0), n - 1)


def bf_filter(colour, e, kpn, jit, s, out_hw, quality="high"):
    """m1, m2, centre, centre_a per HR pixel, colour[c][y][x] and kpn[ch][ky][kx] nested lists.
    high: channel t, KPN texel = LR // 4 (the KPN map is 1/4 of the padded frame, top-left aligned).
    mid/low: 4 taps, channel (dx + 1) * 4 + (dy + 1) (weight 0 outside -1..2), texel = LR * kh // h."""
    h, w = len(colour[0]), len(colour[0][0])
    kh, kw = len(kpn[0]), len(kpn[0][0])
    taps = 9 if quality == "high" else 4
    res = {}
    for Y in range(out_hw[0]):
        for X in range(out_hw[1]):
            wsum, m1, m2, centre, ca = 0.0, [0.0] * 3, [0.0] * 3, [0.0] * 3, 0.0
            for dy, dx, ay, ax, t in bf_taps((Y, X), jit, s, taps):
                cy, cx = clampi(ay, h), clampi(ax, w)  # taps beyond the frame read its edge
                c = [min(colour[k][cy][cx] * e, HALF_MAX) for k in range(3)]
                if quality == "high":
                    wt = max(kpn[t][cy // 4][cx // 4], 1e-7)
                elif -1 <= dy <= 2 and -1 <= dx <= 2:
                    wt = max(kpn[(dx + 1) * 4 + (dy + 1)][min(cy * kh // h, kh - 1)][min(cx * kw // w, kw - 1)], 1e-7)
                else:
                    wt = 0.0
                wsum += wt
                for k in range(3):
                    m1[k] += wt * c[k]
                    m2[k] += wt * c[k] ** 2
                if dy == 0 and dx == 0:
                    centre, ca = c, 1.0
            wsum = max(wsum, 1e-7)
            res[Y, X] = ([v / wsum for v in m1], [v / wsum for v in m2], centre, ca)
    return res


def bf_bilerp(img, y, x, clamp_edge=True):
    """Bilinear read of img[y][x] (pixel centres at i + 0.5) at (y, x) px; outside: edge texel or weight 0."""
    h, w = len(img), len(img[0])
    y0, x0 = math.floor(y - 0.5), math.floor(x - 0.5)
    fy, fx = y - 0.5 - y0, x - 0.5 - x0
    out = 0.0
    for yy, wy in ((y0, 1 - fy), (y0 + 1, fy)):
        for xx, wx in ((x0, 1 - fx), (x0 + 1, fx)):
            if 0 <= yy < h and 0 <= xx < w:
                out += wy * wx * img[yy][xx]
            elif clamp_edge:
                out += wy * wx * img[clampi(yy, h)][clampi(xx, w)]
    return out


def cr_axis(f):
    """Catmull-Rom weights of the 4 texels around a point at fraction f past the centre of texel 1."""
    return [
        (-(f**3) + 2 * f**2 - f) / 2,
        (3 * f**3 - 5 * f**2 + 2) / 2,
        (-3 * f**3 + 4 * f**2 + f) / 2,
        (f**3 - f**2) / 2,
    ]


def bf_catmull(imgs, y, x, dering=True):
    """The 5-tap Catmull-Rom of Arm's tensor.slang from the maths: per axis the 4 cubic weights (w0..w3) at texel
    centres c-1, c, c+1, c+2; the middle pair becomes one bilinear read at c + w2 / (w1 + w2) with weight w1 + w2.
    Of the resulting 3x3 reads only the centre and its 4 neighbours are kept, weights renormalised. If any
    channel is negative, each is clamped to the min/max of its 5 reads. imgs: list of channels."""
    per_axis = []
    for p in (y, x):
        c = math.floor(p - 0.5) + 0.5
        w0, w1, w2, w3 = cr_axis(p - c)
        per_axis.append(([c - 1, c + w2 / (w1 + w2), c + 2], [w0, w1 + w2, w3]))
    (sy, wy), (sx, wx) = per_axis
    picks = [(1, 0), (0, 1), (1, 1), (2, 1), (1, 2)]  # (row tap, col tap): the cross of the 3x3
    out = []
    reads = [[bf_bilerp(img, sy[a], sx[b]) for a, b in picks] for img in imgs]
    wts = [wy[a] * wx[b] for a, b in picks]
    for r in reads:
        out.append(sum(v * wt for v, wt in zip(r, wts)) / sum(wts))
    if dering and any(v < 0 for v in out):
        out = [min(max(v, min(r)), max(r)) for v, r in zip(out, reads)]
    return out


def to_list(t):
    return t.tolist()


def rand_inputs(n, h, w, scale, kch=36, half=False, seed=0):
    g = torch.Generator().manual_seed(seed)
    H, W = round(h * scale), round(w * scale)
    ph, pw = (h // 2, w // 2) if half else (h, w)
    hp, wp = -(-ph // 8) * 8, -(-pw // 8) * 8
    return dict(
        colour=torch.rand(n, 3, h, w, generator=g) * 2,
        exposure=torch.full((n, 1, 1, 1), 0.7),
        jitter=(torch.randint(0, 1024, (n, 2, 1, 1), generator=g) / 1024.0 - 0.5),
        kpn_params=torch.rand(n, kch, hp // 4, wp // 4, generator=g),
        temporal_params=torch.rand(n, 4, hp, wp, generator=g),
        nearest_depth_offset=torch.full((n, 1, h, w), nearest_offset_code(0, 0)),
        motion_lr=torch.zeros(n, 2, h, w),
        history=torch.rand(n, 3, H, W, generator=g),
        valid=torch.ones(n, 1, 1, 1),
    )


def run(inp, **kw):
    return post_process(
        inp["colour"],
        inp["exposure"],
        inp["jitter"],
        inp["kpn_params"],
        inp["temporal_params"],
        inp["nearest_depth_offset"],
        inp["motion_lr"],
        inp["history"],
        inp["valid"],
        **kw,
    )


# ----------------------------------------------------------------------------------------------------------
# 1. offset LUT


def lut_rows(lut, tile_index):
    """(dy list, dx list, channel list, LR-offset-y list, LR-offset-x list, valid list) of one tile position."""
    r = lut[0, :, tile_index].long().tolist()
    return r[3], r[4], r[5], r[0], r[1], r[2]


def test_lut_x2_by_hand():
    # x2, jitter (y, x) = (0.25, -0.25): the LR sample sits at 0.75 LR px = 1.5 HR px down (HR row 1 of the 2x2
    # tile) and 0.25 LR px = 0.5 HR px across (HR col 0); its LR offset is 0 (it is the LR pixel containing it).
    lut, tile = offset_lut(torch.tensor([0.25, -0.25]).view(1, 2, 1, 1), 2.0)
    assert tile == (2, 2) and lut.shape == (1, 6, 4, 9)
    # tile (0, 0): rows holding samples are odd offsets dy in {-1, 1, 3}, cols even dx in {-2, 0, 2}: all 9 used.
    # ranked by d^2 then t = (dx+2)*6 + (dy+2): (-1,0) d2=1 t13, (1,0) 1/15, (-1,-2) 5/1, (1,-2) 5/3, (-1,2) 5/25,
    # (1,2) 5/27, (3,0) 9/17, (3,-2) 13/5, (3,2) 13/29
    dy, dx, t, oy, ox, v = lut_rows(lut, 0)
    assert dy == [-1, 1, -1, 1, -1, 1, 3, 3, 3]
    assert dx == [0, 0, -2, -2, 2, 2, 0, -2, 2]
    assert t == [13, 15, 1, 3, 25, 27, 17, 5, 29]
    assert oy == [0] * 9 and ox == [0] * 9 and v == [1] * 9
    # tile (0, 1) = index 1: dy odd, dx odd. d2=2: t 7 (-1,-1), 9 (1,-1), 19 (-1,1), 21 (1,1);
    # d2=10: t 11 (3,-1), 23 (3,1), 31 (-1,3), 33 (1,3); d2=18: t 35 (3,3)
    dy, dx, t, *_ = lut_rows(lut, 1)
    assert (dy, dx, t) == (
        [-1, 1, -1, 1, 3, 3, -1, 1, 3],
        [-1, -1, 1, 1, -1, 1, 3, 3, 3],
        [7, 9, 19, 21, 11, 23, 31, 33, 35],
    )
    # tile (1, 1) = index 3: dy even, dx odd: (0,-1) t8, (0,1) t20, (-2,-1) t6, (2,-1) t10, (-2,1) t18, (2,1) t22,
    # (0,3) t32, (-2,3) t30, (2,3) t34
    dy, dx, t, *_ = lut_rows(lut, 3)
    assert (dy, dx, t) == (
        [0, 0, -2, 2, -2, 2, 0, -2, 2],
        [-1, 1, -1, -1, 1, 1, 3, 3, 3],
        [8, 20, 6, 10, 18, 22, 32, 30, 34],
    )


def test_lut_x1_5_by_hand():
    # x1.5: 2 LR px -> 3 HR px. Jitter 0: LR 0 at 0.5 * 1.5 = 0.75 -> HR 0, LR 1 at 1.5 * 1.5 = 2.25 -> HR 2;
    # both are the LR pixel containing that HR pixel's centre (offset 0). HR 1 of each tile gets no sample.
    lut, tile = offset_lut(torch.zeros(1, 2, 1, 1), 1.5)
    assert tile == (3, 3) and lut.shape == (1, 6, 9, 9)
    # tile (0, 0): dy, dx in {-1, 0, 2, 3} (the ones with (0 + d) % 3 in {0, 2}); 16 candidates, 9 kept:
    # (0,0) t14 | (0,-1) t8, (-1,0) t13 | (-1,-1) t7 | (2,0) t16, (0,2) t26 | (2,-1) t10, (-1,2) t25 | (2,2) t28
    dy, dx, t, oy, ox, v = lut_rows(lut, 0)
    assert (dy, dx, t) == (
        [0, 0, -1, -1, 2, 0, 2, -1, 2],
        [0, -1, 0, -1, 0, 2, -1, 2, 2],
        [14, 8, 13, 7, 16, 26, 10, 25, 28],
    )
    assert v == [1] * 9 and oy == [0] * 9 and ox == [0] * 9
    # tile (1, 1) = index 4: d in {-2, -1, 1, 2}. d2=2: t 7, 9, 19, 21; then 5 of the eight d2=5 by lowest t:
    # (-1,-2) t1, (1,-2) t3, (-2,-1) t6, (2,-1) t10, (-2,1) t18  (not (2,1) t22, (-1,2) t25, (1,2) t27)
    dy, dx, t, *_ = lut_rows(lut, 4)
    assert (dy, dx, t) == (
        [-1, 1, -1, 1, -1, 1, -2, 2, -2],
        [-1, -1, 1, 1, -2, -2, -1, -1, 1],
        [7, 9, 19, 21, 1, 3, 6, 10, 18],
    )
    # jitter (-0.4, 0.3): rows: LR 0 at 0.1 * 1.5 = 0.15 -> HR 0, LR 1 at 1.1 * 1.5 = 1.65 -> HR 1 (offsets 0).
    # cols: LR 0 at 0.8 * 1.5 = 1.2 -> HR 1, whose centre (1.5 HR = 1.0 LR) is in LR 1: offset -1; LR 1 at
    # 1.8 * 1.5 = 2.7 -> HR 2 (offset 0). Tile (0, 0): dy in {-2, 0, 1, 3}, dx in {-2, -1, 1, 2}:
    # (0,-1) t8, (0,1) t20 | (1,-1) t9, (1,1) t21 | (0,-2) t2, (0,2) t26 | (1,-2) t3, (-2,-1) t6, (-2,1) t18
    lut, _ = offset_lut(torch.tensor([-0.4, 0.3]).view(1, 2, 1, 1), 1.5)
    dy, dx, t, oy, ox, v = lut_rows(lut, 0)
    assert (dy, dx, t) == (
        [0, 0, 1, 1, 0, 0, 1, -2, -2],
        [-1, 1, -1, 1, -2, 2, -2, -1, 1],
        [8, 20, 9, 21, 2, 26, 3, 6, 18],
    )
    # LR col offset of each tap: HR col (0 + dx) % 3 == 1 -> -1, == 2 -> 0
    assert ox == [0, -1, 0, -1, -1, 0, -1, 0, -1] and oy == [0] * 9 and v == [1] * 9


def test_lut_batched_and_shape_aware():
    jit = torch.tensor([[0.25, -0.25], [0.0, 0.0]]).view(2, 2, 1, 1)
    lut, tile = offset_lut(jit, 2.0)
    assert torch.equal(lut[0], offset_lut(jit[:1], 2.0)[0][0]) and torch.equal(lut[1], offset_lut(jit[1:], 2.0)[0][0])
    # from the frame size: 540 -> 810 reduces to the same 2:3 tile; 5 -> round(7.5) = 8 is a 5:8 tile (rows),
    # 6 -> 9 is 2:3 (cols)
    assert offset_lut(jit, 1.5, lr_hw=(540, 960))[1] == (3, 3)
    assert offset_lut(jit, 1.5, lr_hw=(5, 6))[1] == (8, 3)


@pytest.mark.parametrize("scale", [2.0, 1.5])
def test_nine_valid_taps_everywhere(scale):
    """Every HR pixel gets 9 valid taps for any jitter in [-0.5, 0.5) (the old port lost up to 5 taps for
    negative jitter), and each tap reads the LR pixel whose jittered sample lands at the tap's HR offset."""
    rng = random.Random(1)
    h, w = 6, 6
    H, W = round(h * scale), round(w * scale)
    for _ in range(25):
        jit = [rng.randrange(1024) / 1024 - 0.5 for _ in range(2)]  # exact in float32 and in Python
        lut, tile = offset_lut(torch.tensor(jit).view(1, 2, 1, 1), scale, lr_hw=(h, w))
        taps = list(lut_taps(lut, tile, (h, w), (H, W)))
        assert len(taps) == 9
        assert torch.stack([t["valid"] for t in taps]).sum(0).eq(9).all(), jit
        for t in taps:
            tdy, tdx, tly, tlx = (t[k][0].long().tolist() for k in ("dy", "dx", "ly", "lx"))
            for Y in range(H):
                for X in range(W):
                    ay = lr_landing_in(Y + tdy[Y][X], jit[0], scale)
                    ax = lr_landing_in(X + tdx[Y][X], jit[1], scale)
                    assert (clampi(ay, h), clampi(ax, w)) == (tly[Y][X], tlx[Y][X])
        # and they are the same taps as the brute-force ranking, in the same order
        for Y, X in ((0, 0), (H // 2, W // 3), (H - 1, W - 1)):
            got = [(int(t["dy"][0, Y, X]), int(t["dx"][0, Y, X]), int(t["channel"][0, Y, X])) for t in taps]
            assert got == [(dy, dx, c) for dy, dx, _, _, c in bf_taps((Y, X), jit, (scale, scale), 9)]


# ----------------------------------------------------------------------------------------------------------
# 2. Catmull-Rom history sampling


def pos_tensor(points):
    return torch.tensor(points, dtype=torch.float32).T.reshape(1, 2, 1, len(points))


def test_catmull_rom_linear_ramp():
    h, w = 10, 12
    yy, xx = torch.meshgrid(torch.arange(h, dtype=torch.float32), torch.arange(w, dtype=torch.float32), indexing="ij")
    img = (0.3 * xx + 0.2 * yy + 1.0).view(1, 1, h, w)  # texel i holds the ramp at its centre i + 0.5

    def ramp(y, x):
        return 0.3 * (x - 0.5) + 0.2 * (y - 0.5) + 1.0

    rng = random.Random(2)
    # one coordinate on a texel centre: the 1-D Catmull-Rom reproduces a linear ramp exactly
    pts = [(rng.randint(2, h - 3) + 0.5, rng.uniform(2.5, w - 2.5)) for _ in range(20)]
    pts += [(rng.uniform(2.5, h - 2.5), rng.randint(2, w - 3) + 0.5) for _ in range(20)]
    got = catmull_rom(img, pos_tensor(pts))[0, 0, 0].tolist()
    assert got == pytest.approx([ramp(*p) for p in pts], abs=1e-5)
    # general points: Arm drops the 4 corner taps, so it is only near-exact: at fraction (0.25, 0.25) per axis
    # w = (-0.0703, 0.8672, 0.2266, -0.0234), the 3 taps weigh (-0.0703, 1.0938, -0.0234) and the middle one
    # sits at c + 0.2071 instead of c + 0.25; the renormalised cross gives ramp + 0.0044 * slope-sum
    pts = [(rng.uniform(2.5, h - 2.5), rng.uniform(2.5, w - 2.5)) for _ in range(40)]
    got = catmull_rom(img, pos_tensor(pts))[0, 0, 0].tolist()
    assert got == pytest.approx([ramp(*p) for p in pts], abs=0.01 * 0.5)
    assert catmull_rom(img, pos_tensor([(4.75, 6.75)]))[0, 0, 0, 0].item() == pytest.approx(
        ramp(4.75, 6.75) + 0.0044 * 0.5, abs=2e-4
    )


def test_catmull_rom_matches_brute_force_incl_edges():
    g = torch.Generator().manual_seed(3)
    img = torch.rand(1, 3, 7, 9, generator=g) - 0.2  # some negatives, so deringing kicks in too
    rng = random.Random(3)
    pts = [(rng.uniform(-1.0, 8.0), rng.uniform(-1.0, 10.0)) for _ in range(60)]
    got = catmull_rom(img, pos_tensor(pts))[0, :, 0].T.tolist()
    chans = to_list(img[0])
    for p, v in zip(pts, got):
        assert v == pytest.approx(bf_catmull(chans, *p), abs=1e-5)


def test_catmull_rom_deringing():
    # a step 0 | 1 between columns 3 and 4. At x = 3.0 (fraction 0.5 past col 2's centre) the cubic weights of
    # cols 1..4 are (-1/16, 9/16, 9/16, -1/16): 0 * ... - 1/16 * 1 = -0.0625 < 0, so it is clamped into the
    # range of its 5 reads, [0, 1] -> 0. Channel 1 (2 - step) would give (-2 + 18 + 18 - 1) / 16 = 2.0625; it is
    # clamped to its reads' max 2 because ANOTHER channel went negative. Channel 2 (constant 5) stays 5.
    step = (torch.arange(8) >= 4).float().expand(6, 8)
    img = torch.stack([step, 2 - step, torch.full((6, 8), 5.0)]).unsqueeze(0)
    assert bf_catmull(to_list(img[0]), 2.5, 3.0, dering=False) == pytest.approx([-0.0625, 2.0625, 5.0])
    assert catmull_rom(img, pos_tensor([(2.5, 3.0)]))[0, :, 0, 0].tolist() == pytest.approx([0.0, 2.0, 5.0])
    # on the bright side (x = 5.0: cols 3..6 = 0, 1, 1, 1) it overshoots to 17/16 and, nothing being negative,
    # Arm keeps the overshoot
    assert catmull_rom(img[:, :1], pos_tensor([(2.5, 5.0)]))[0, 0, 0, 0].item() == pytest.approx(1.0625)
    # whatever the point, the dark side never goes negative (the bright side may overshoot, more so off-axis
    # where the dropped corners are renormalised away)
    rng = random.Random(4)
    pts = [(rng.uniform(0.5, 5.5), rng.uniform(1.0, 7.0)) for _ in range(50)]
    out = catmull_rom(img[:, :1], pos_tensor(pts))[0, 0, 0]
    assert (out >= 0).all() and out.max() > 1.0625


def test_bilinear_zero_outside_for_low_quality():
    ones = torch.ones(1, 1, 4, 4)
    # 0.25 px from the top edge: the lower texel (centre 0.5, weight 0.75) is in, the upper (weight 0.25) is not
    p = pos_tensor([(0.25, 2.0)])
    assert bilinear(ones, p, clamp_to_edge=False).item() == pytest.approx(0.75)
    assert bilinear(ones, p, clamp_to_edge=True).item() == pytest.approx(1.0)


# ----------------------------------------------------------------------------------------------------------
# 3. temporal params, 4. motion


def test_temporal_params_read_at_unpadded_lr_coordinates():
    # h = 5 padded to 8: HR row Y (of 10) reads LR position (Y + 0.5) / 2 of the top-left 5 rows of the padded
    # tensor, e.g. Y = 9 -> 4.75 -> lerp(row 4, row 5 (padding), 0.25)
    g = torch.Generator().manual_seed(5)
    tp = torch.rand(1, 1, 8, 8, generator=g)
    up = upsample_temporal(tp, (10, 10), (5, 5))
    img = to_list(tp[0, 0])
    for Y in range(10):
        for X in range(10):
            assert up[0, 0, Y, X].item() == pytest.approx(bf_bilerp(img, (Y + 0.5) / 2, (X + 0.5) / 2), abs=1e-6)
    assert up[0, 0, 9, 0].item() == pytest.approx(0.75 * img[4][0] + 0.25 * img[5][0], abs=1e-6)


def test_motion_threshold_in_hr_pixels():
    n, h, w = 1, 4, 4
    code = torch.full((n, 1, h, w), nearest_offset_code(0, 0))

    def mv(vy, vx, scale):
        m = torch.zeros(n, 2, h, w)
        m[:, 0], m[:, 1] = vy, vx
        return hr_motion(m, code, (round(h * scale), round(w * scale)))

    # LR 0.07 px is 0.14 HR px at x2: above the 0.1 threshold, so kept (a threshold on LR px would zero it)
    assert mv(0.07, 0.0, 2.0)[0, :, 3, 5].tolist() == pytest.approx([0.14, 0.0])
    # LR (0.03, 0.03) = 0.085 HR px: zeroed
    assert mv(0.03, 0.03, 2.0).abs().max() == 0
    # x1.5: 0.07 -> 0.105 kept, 0.06 -> 0.09 zeroed
    assert mv(0.07, 0.0, 1.5)[0, 0].min().item() == pytest.approx(0.105)
    assert mv(0.06, 0.0, 1.5).abs().max() == 0


def test_motion_threshold_end_to_end():
    inp = rand_inputs(1, 4, 4, 2.0)
    yy = torch.arange(8.0).view(1, 1, 8, 1).expand(1, 3, 8, 8)
    inp["history"] = 0.2 + 0.1 * yy  # history varies along y
    base = run(inp)[0]
    for v, moved in ((0.07, True), (0.03, False)):
        inp["motion_lr"] = torch.zeros(1, 2, 4, 4)
        inp["motion_lr"][:, 0] = v
        out = run(inp)[0]
        assert (not torch.allclose(out, base, atol=1e-6)) == moved, v


def test_motion_dilation_reads_nearest_depth_offset():
    n, h, w = 1, 8, 8
    m = torch.zeros(n, 2, h, w)
    m[0, :, 2, 3] = torch.tensor([0.5, -0.25])  # motion only at LR (2, 3)
    # 5-bit code: offset (dy, dx) = (+1, +2) from LR (1, 1): row offset in the low bits (Arm's .x is the row):
    # ((2 + 2) << 3) | (1 + 2) = 35; the neutral code is (2 << 3) | 2 = 18
    assert nearest_offset_code(1, 2) == 35 / 255 and nearest_offset_code(0, 0) == 18 / 255
    code = torch.full((n, 1, h, w), 18 / 255)
    code[0, 0, 1, 1] = 35 / 255
    out = hr_motion(m, code, (16, 16))
    # HR pixels whose LR pixel int(p / 2) is (1, 1) are rows/cols 2..3; they get motion * 2, and so does LR (2, 3)
    # itself (HR rows 4..5, cols 6..7) with its neutral code
    expect = torch.zeros(n, 2, 16, 16)
    expect[0, :, 2:4, 2:4] = expect[0, :, 4:6, 6:8] = torch.tensor([1.0, -0.5]).view(2, 1, 1)
    assert torch.equal(out, expect)
    # Arm's packed quads (mid/low): half-res texel (i + 0.5) * 4 // 8 = 0 for LR (1, 1), lane (row odd, col odd)
    # = channel 1's high nibble; nibble ((dx + 1) << 2) | (dy + 1) = (3 << 2) | 2 = 14; neutral nibble 5
    packed = torch.full((n, 2, 8, 8), (5 << 4 | 5) / 255)
    packed[0, 1, 0, 0] = (14 << 4 | 5) / 255
    assert torch.equal(hr_motion(m, packed, (16, 16), half_res=True), expect)


# ----------------------------------------------------------------------------------------------------------
# post_process end to end


@pytest.mark.parametrize("scale,h,w", [(2.0, 5, 6), (1.5, 6, 4)])
def test_reset_frame_is_the_kpn_filtered_colour(scale, h, w):
    inp = rand_inputs(2, h, w, scale, seed=6)
    inp["valid"] = torch.tensor([0.0, 0.0]).view(2, 1, 1, 1)
    out, filtered = run(inp, scale=scale)
    assert torch.allclose(out, filtered, rtol=1e-5, atol=1e-6)
    H, W = out.shape[-2:]
    for b in range(2):
        ref = bf_filter(
            to_list(inp["colour"][b]),
            0.7,
            to_list(inp["kpn_params"][b]),
            inp["jitter"][b, :, 0, 0].tolist(),
            (scale, scale),
            (H, W),
        )
        for (Y, X), (m1, *_) in ref.items():
            assert filtered[b, :, Y, X].tolist() == pytest.approx([v / 0.7 for v in m1], rel=1e-5)


@pytest.mark.parametrize("quality", ["mid", "low"])
def test_mid_low_sparse_filter(quality):
    # mid/low: 4 taps, 16 sparse KPN channels for offsets -1..2; the pre-process (so the KPN and temporal maps)
    # is at half LR res: h = 8 -> 4 -> padded 8 -> KPN 2x2
    inp = rand_inputs(1, 8, 8, 2.0, kch=16, half=True, seed=7)
    inp["nearest_depth_offset"] = torch.full((1, 2, 8, 8), 85 / 255)
    inp["valid"] = torch.zeros(1, 1, 1, 1)
    out, filtered = run(inp, quality=quality)
    assert torch.allclose(out, filtered, rtol=1e-5, atol=1e-6)
    ref = bf_filter(
        to_list(inp["colour"][0]),
        0.7,
        to_list(inp["kpn_params"][0]),
        inp["jitter"][0, :, 0, 0].tolist(),
        (2.0, 2.0),
        (16, 16),
        quality=quality,
    )
    for (Y, X), (m1, *_) in ref.items():
        assert filtered[0, :, Y, X].tolist() == pytest.approx([v / 0.7 for v in m1], rel=1e-5)
    inp["valid"] = torch.ones(1, 1, 1, 1)
    assert torch.isfinite(run(inp, quality=quality)[0]).all()
    with pytest.raises(ValueError, match="16 KPN channels"):
        run({**inp, "kpn_params": torch.rand(1, 36, 2, 2)}, quality=quality)


def test_static_scene_returns_the_colour():
    inp = rand_inputs(1, 4, 6, 2.0, seed=8)
    c = torch.tensor([0.2, 0.5, 1.5]).view(1, 3, 1, 1)
    inp["colour"] = c.expand(1, 3, 4, 6).clone()
    inp["history"] = c.expand(1, 3, 8, 12).clone()
    out, filtered = run(inp)
    assert torch.allclose(out, c.expand_as(out), rtol=1e-5)
    assert torch.allclose(filtered, c.expand_as(out), rtol=1e-5)


def test_output_clamps_at_half_max():
    inp = rand_inputs(1, 4, 4, 2.0, seed=9)
    inp["colour"] = torch.full((1, 3, 4, 4), 1e6)
    inp["history"] = torch.full((1, 3, 8, 8), 1e6)
    for e in (1.0, 2.0):
        inp["exposure"] = torch.full((1, 1, 1, 1), e)
        out, filtered = run(inp)
        # colour * e clamps to 65504 before filtering. The output's cap is the inverse tonemap's input cap
        # K(65504) = 65504 / 65505 = 1 - 1/65505, which in float32 (spacing 2^-24 below 1) rounds to 1 - 2^-16
        # (1/65505 = 256.1 * 2^-24): it inverts to (1 - 2^-16) / 2^-16 = 65535, not 65504, as in Arm's float32
        assert torch.allclose(filtered, torch.full_like(filtered, HALF_MAX / e))
        assert torch.equal(out, torch.full_like(out, 65535.0 / e))


def bf_post_process(inp, b, scale):
    """The whole kernel for batch element b from the brute-force pieces, per HR pixel with plain floats."""
    col = to_list(inp["colour"][b])
    e = inp["exposure"][b].item()
    v = inp["valid"][b].item()
    hist = to_list(inp["history"][b])
    tp = to_list(inp["temporal_params"][b])
    mot = to_list(inp["motion_lr"][b])
    code = to_list(inp["nearest_depth_offset"][b, 0])
    h, w = len(col[0]), len(col[0][0])
    H, W = len(hist[0]), len(hist[0][0])
    filt = bf_filter(col, e, to_list(inp["kpn_params"][b]), inp["jitter"][b, :, 0, 0].tolist(), (scale, scale), (H, W))

    def karis(c):
        c = [max(x, 0.0) for x in c]
        return [min(x / (1 + max(c)), 1.0) for x in c]

    out = {}
    for (Y, X), (m1, m2, centre, ca) in filt.items():
        # temporal params at the unpadded LR position of the pixel centre
        p0, p1, p2 = (bf_bilerp(tp[k], (Y + 0.5) * h / H, (X + 0.5) * w / W) for k in range(3))
        theta = min(max(p0, 0), 1) ** 2 / max(min(max(p0, 0), 1) ** 2 + (1 - min(max(p0, 0), 1)) ** 2, 1e-6)
        alpha, gamma = 0.05 + 0.35 * p1, 2 * p2
        # motion of the LR pixel int(p / s), dilated by its nearest-depth code (low 3 bits: row offset)
        iy, ix = int(Y / scale), int(X / scale)
        c = int(code[iy][ix] * 255 + 0.5)
        dy, dx = (c & 7) - 2, ((c >> 3) & 7) - 2
        ly, lx = clampi(iy + dy, h), clampi(ix + dx, w)
        mvy, mvx = mot[0][ly][lx] * scale, mot[1][ly][lx] * scale
        if math.hypot(mvy, mvx) <= 0.1:
            mvy = mvx = 0.0
        py, px = Y + 0.5 - mvy, X + 0.5 - mvx
        onscreen = float(0 <= py <= H and 0 <= px <= W)
        warped = [min(x * e, HALF_MAX) for x in bf_catmull(hist, py, px)]
        rect = []
        for k in range(3):
            sig = math.sqrt(max(abs(m2[k] - m1[k] ** 2), 1e-7)) * gamma
            clipped = min(max(warped[k], m1[k] - sig), m1[k] + sig)
            hc = m1[k] + (clipped - m1[k]) * v
            rect.append(hc + (warped[k] - hc) * theta * onscreen * v)
        a = alpha * ca * v
        acc = [r + (cc - r) * a for r, cc in zip(karis(rect), karis(centre))]
        acc = [min(max(x, 0.0), 1 - 1e-7, HALF_MAX / (1 + HALF_MAX)) for x in acc]
        out[Y, X] = [x / (1 - max(acc)) / e for x in acc]
    return out


@pytest.mark.parametrize("scale,h,w", [(2.0, 4, 5), (1.5, 4, 6)])
def test_post_process_matches_brute_force_with_motion_and_history(scale, h, w):
    inp = rand_inputs(2, h, w, scale, seed=10)
    g = torch.Generator().manual_seed(11)
    inp["motion_lr"] = (torch.rand(2, 2, h, w, generator=g) - 0.5) * 3  # up to 1.5 LR px: some go off screen
    codes = torch.randint(0, 4, (2, 2, h, w), generator=g) - 1  # offsets -1..2 as the pre-process
    inp["nearest_depth_offset"] = nearest_offset_code(codes[:, :1], codes[:, 1:])
    inp["valid"] = torch.tensor([1.0, 0.0]).view(2, 1, 1, 1)
    out = run(inp, scale=scale)[0]
    for b in range(2):
        for (Y, X), ref in bf_post_process(inp, b, scale).items():
            assert out[b, :, Y, X].tolist() == pytest.approx(ref, rel=1e-4, abs=1e-5), (b, Y, X)


def test_gradients_reach_kpn_and_temporal_params():
    inp = rand_inputs(1, 4, 4, 2.0, seed=12)
    inp["motion_lr"] = torch.full((1, 2, 4, 4), 0.3)
    kpn = inp["kpn_params"].clone().requires_grad_()
    tp = inp["temporal_params"].clone().requires_grad_()
    hist = inp["history"].clone().requires_grad_()

    def loss(k, t, hh):
        out, filt = run({**inp, "kpn_params": k, "temporal_params": t, "history": hh})
        return (out * torch.linspace(0, 1, out.numel()).view_as(out)).sum() + filt.square().sum()

    loss(kpn, tp, hist).backward()
    for x in (kpn, tp, hist):
        assert torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0
    # the gradient is the right one: a finite difference along a random direction
    g = torch.Generator().manual_seed(13)
    for x, grad in ((kpn, kpn.grad), (tp, tp.grad)):
        d = torch.randn(x.shape, generator=g)
        eps = 1e-3
        args = [a.detach() for a in (kpn, tp, hist)]
        i = 0 if x is kpn else 1
        plus, minus = list(args), list(args)
        plus[i], minus[i] = args[i] + eps * d, args[i] - eps * d
        fd = (loss(*plus) - loss(*minus)).item() / (2 * eps)
        assert fd == pytest.approx((grad * d).sum().item(), rel=2e-2, abs=1e-3)
