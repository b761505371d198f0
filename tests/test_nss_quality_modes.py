"""Golden tests of Arm's NSS v1 "mid" / "low" quality (nss/pre_process.py's half-res path, nss/model.py).
Expected values are derived by hand in the comments, or by the scalar pure-Python re-derivations bf_* below,
written from the shaders' formulas (ds = depth_scatter.slang, dl = disocclusion_lq.slang, pp = pre_process.slang,
nc = nss_common.slang); nothing here comes from running Arm's code."""

import math

import torch

from nss.luma_derivative import luma_derivative
from nss.model import KPN_PRUNE_INDICES, NSS, NSSConfig, prune_kpn
from nss.post_process import _decode_offsets, _sparse_channel
from nss.pre_process import (
    DEPTH_SCALE,
    INT_MAX,
    depth_scatter_quarter,
    lq_disocclusion,
    nearest_depth_lq,
    packed_offset_quads,
    pre_process,
    state_sizes,
)

# near 0.1 m, far 100 m (as test_nss_pre_process): view depth z = p1 / (d - p0), so device depth d = p0 + p1 / z
P = torch.tensor([1.001001, -0.1001001, 1.0, 1.0]).view(1, 4, 1, 1)
P0, P1 = 1.001001, -0.1001001


def device_depth(z):
    return P0 + P1 / z


def frame(h, w, depth, motion, colour=None, rs=None, jitter=(0.0, 0.0), exposure=1.0):
    return {
        "colour": colour if colour is not None else torch.full((1, 3, h, w), 0.25),
        "depth": depth,
        "motion_lr": motion,
        "jitter": torch.tensor(jitter).view(1, 2, 1, 1),
        "exposure": torch.full((1, 1, 1, 1), exposure),
        "depth_params": P,
        "render_size": torch.tensor(rs or [h, w], dtype=torch.float32).view(1, 2, 1, 1),
    }


# ----------------------------------------------------------------------------------------------------------
# scalar re-derivations (nested lists, Python floats). Index maths is exact integer arithmetic: at the sizes
# used here the shaders' float32 index maths is exact too.


def clampi(v, lo, hi):
    return max(lo, min(hi, v))


def vz(d):
    return P1 / (d - P0)


def bilinear_taps(py, px):
    """Bilinear data of a position in pixels (centres at i + 0.5): [(row, col, weight)] (nc:175-194)."""
    y0, x0 = math.floor(py - 0.5), math.floor(px - 0.5)
    fy, fx = py - 0.5 - y0, px - 0.5 - x0
    return [
        (y0, x0, (1 - fy) * (1 - fx)),
        (y0 + 1, x0, fy * (1 - fx)),
        (y0, x0 + 1, (1 - fy) * fx),
        (y0 + 1, x0 + 1, fy * fx),
    ]


def sample(img, py, px, clamp_to_edge):
    """sample_tensor (tensor.slang:85-114) of img [H][W] at (py, px) pixels."""
    H, W = len(img), len(img[0])
    total = 0.0
    for y, x, wt in bilinear_taps(py, px):
        if not clamp_to_edge and not (0 <= y < H and 0 <= x < W):
            continue
        total += img[clampi(y, 0, H - 1)][clampi(x, 0, W - 1)] * wt
    return total


def karis(rgb):
    rgb = [max(c, 0.0) for c in rgb]
    m = max(rgb)
    return [min(max(c / (1 + m), 0.0), 1.0) for c in rgb]


def bf_quarter_scatter(depth, mv):
    """ds:95-166 for one image: depth [h][w], mv [2][h][w] -> [h/4][w/4] ints."""
    h, w = len(depth), len(depth[0])
    oh, ow = h // 4, w // 4
    out = [[INT_MAX] * ow for _ in range(oh)]
    quads, lanes = ((0, 0), (0, 2), (2, 0), (2, 2)), ((0, 0), (0, 1), (1, 0), (1, 1))  # tl, tr, bl, br
    order = [(qy + a, qx + b) for qy, qx in quads for a, b in lanes]
    for i in range(oh):
        for j in range(ow):
            by, bx = i * h // oh, j * w // ow  # int(i * Scale)
            best = None
            for k, (r, c) in enumerate(order):
                y, x = clampi(by + r, 0, h - 1), clampi(bx + c, 0, w - 1)
                cand = (depth[y][x], mv[0][y][x], mv[1][y][x])
                if k == 0 or (by + r < h and bx + c < w and cand[0] <= best[0]):
                    best = cand
            d, my, mx = best
            if math.hypot(my, mx) <= 0.1:  # the LR motion
                my = mx = 0.0
            for y, x, wt in bilinear_taps(i + 0.5 - my * oh / h, j + 0.5 - mx * ow / w):
                if wt > 0.1 and 0 <= y < oh and 0 <= x < ow:
                    out[y][x] = min(out[y][x], min(int(d * 2**31), INT_MAX))
    return out


def bf_depth_clip(tm1, py, px, d_cur, rs, tolerance):
    """dl:95-160 (= nc:258-335 with tolerance 0) at (py, px) pixels of tm1 [qh][qw] (ints)."""
    qh, qw = len(tm1), len(tm1[0])
    zc = vz(d_cur)
    diag = math.hypot(*rs)
    # k_fov = |view pos of pixel (0, 0)| / |of int(rs / 2)|, ndc = pos / rs * (2, -2) + (-1, 1); z cancels
    cy, cx = int(rs[0] * 0.5) / rs[0] * 2 - 1, -(int(rs[1] * 0.5) / rs[1] * 2) + 1
    k_fov = math.sqrt(1 + 1 + 1) / math.sqrt(cy * cy + cx * cx + 1)
    power = 1 + 2 * min(diag / math.hypot(1080, 1920), 1.0)
    acc = wsum = 0.0
    for y, x, wt in bilinear_taps(py, px):
        if not (0 <= y < qh and 0 <= x < qw):
            wsum += wt
        elif wt > 0.1:
            zp = vz(tm1[y][x] * 2.0**-31)
            diff = zc - zp
            if diff > 0:
                required = 1.37e-5 * k_fov * diag * max(zc, zp) + tolerance
                acc += min(max(required / diff, 0.0), 1.0) ** power * wt
                wsum += wt
    return min(max(1 - acc / wsum, 0.0), 1.0) if wsum > 0 else 0.0


def bf_lq_disocclusion(depth, mv, tm1, rs):
    """dl:39-219 for one image -> [qh][qw]."""
    h, w = len(depth), len(depth[0])
    qh, qw = len(tm1), len(tm1[0])
    out = [[0.0] * qw for _ in range(qh)]
    for i in range(qh):
        for j in range(qw):
            by, bx = i * h // qh, j * w // qw
            y, x = clampi(by, 0, h - 1), clampi(bx, 0, w - 1)
            d, my, mx = depth[y][x], mv[0][y][x], mv[1][y][x]
            zmin = zmax = vz(d)
            for c in range(4):  # int2(x, y) with x the row: rows run inner
                for r in range(4):
                    y, x = by + r, bx + c
                    if y < h and x < w:
                        zmin, zmax = min(zmin, vz(depth[y][x])), max(zmax, vz(depth[y][x]))
                        if depth[y][x] < d:
                            d, my, mx = depth[y][x], mv[0][y][x], mv[1][y][x]
            keep = math.hypot(my, mx) > 0.1
            sy, sx = (my * qh / h, mx * qw / w) if keep else (0.0, 0.0)
            out[i][j] = bf_depth_clip(tm1, i + 0.5 - sy, j + 0.5 - sx, d, rs, zmax - zmin)
    return out


LQ_ORDER = (
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


def bf_nearest_lq(depth, y, x):
    """FindNearestDepth_4x4_FromPixel (pp:210-267): offset of the nearest depth, '<=' in its order."""
    h, w = len(depth), len(depth[0])
    best, off = depth[y][x], (0, 0)
    for dy, dx in LQ_ORDER:
        yy, xx = y + dy, x + dx
        if 0 <= yy < h and 0 <= xx < w and depth[yy][xx] <= best:
            best, off = depth[yy][xx], (dy, dx)
    return off


def bf_motion_at_nearest(depth, mv, y, x):
    h, w = len(depth), len(depth[0])
    dy, dx = bf_nearest_lq(depth, y, x)
    ny, nx = clampi(y + dy, 0, h - 1), clampi(x + dx, 0, w - 1)
    m = (mv[0][ny][nx], mv[1][ny][nx])
    return m if math.hypot(*m) > 0.1 else (0.0, 0.0)


def bf_half_res(f, state, dis_lq):
    """pp:898-1011 per padded pixel for one image: channels 0-10, the previous position used for the feedback
    and derivative state (padded px) and the disocclusion, each [Hp][Wp]."""
    col, depth, mv = f["colour"][0].tolist(), f["depth"][0, 0].tolist(), f["motion_lr"][0].tolist()
    hist, fb = state["history"][0].tolist(), state["feedback"][0].tolist()
    e, (jy, jx) = f["exposure"].item(), f["jitter"].view(2).tolist()
    rs = f["render_size"].view(2).tolist()
    h, w = len(depth), len(depth[0])
    p, q = h // 2, w // 2
    H, W = len(hist[0]), len(hist[0][0])
    hp, wp = len(fb[0]), len(fb[0][0])
    out = [[[0.0] * wp for _ in range(hp)] for _ in range(11)]
    prev = [[[0.0] * wp for _ in range(hp)] for _ in range(2)]
    dis = [[0.0] * wp for _ in range(hp)]
    refl = lambda v, n: v if v < n else 2 * n - v - 1
    for Y in range(hp):
        for X in range(wp):
            cy, cx = refl(Y, p), refl(X, q)
            ry, rx = clampi((2 * cy + 1) * h // (2 * p), 0, h - 1), clampi((2 * cx + 1) * w // (2 * q), 0, w - 1)
            my, mx = bf_motion_at_nearest(depth, mv, ry, rx)
            acc = [0.0, 0.0, 0.0]
            for a, b in ((0, 0), (1, 0), (0, 1), (1, 1)):  # AverageWarpedHistory2x2
                ly = min(clampi(2 * cy, 0, h - 1) + a, h - 1)
                lx = min(clampi(2 * cx, 0, w - 1) + b, w - 1)
                lmy, lmx = bf_motion_at_nearest(depth, mv, ly, lx)
                py, px = (ly + 0.5 - lmy) * H / h, (lx + 0.5 - lmx) * W / w
                k = karis([sample(hist[c], py, px, False) * e for c in range(3)])
                acc = [s + v for s, v in zip(acc, k)]
            cur = karis([sample(col[c], ry + 0.5 - jy, rx + 0.5 - jx, True) * e for c in range(3)])
            lo, hi = math.hypot(1 / rs[0], 1 / rs[1]), math.hypot(200 / rs[0], 200 / rs[1])
            det = math.sqrt((min(max(math.hypot(my / rs[0], mx / rs[1]), lo), hi) - lo) / (hi - lo))
            d = sample(dis_lq, (cy + 0.5) / p * len(dis_lq), (cx + 0.5) / q * len(dis_lq[0]), True)
            py, px = Y + 0.5 - my * p / h, X + 0.5 - mx * q / w
            feed = [sample(fb[c], py, px, False) * (d <= 0.01) for c in range(4)]
            for c, v in enumerate([s / 4 for s in acc] + cur + [det] + feed):
                out[c][Y][X] = v
            prev[0][Y][X], prev[1][Y][X], dis[Y][X] = py, px, d
    return out, prev, dis


def rand_case(h, w, seed):
    g = torch.Generator().manual_seed(seed)
    depth = torch.rand(1, 1, h, w, generator=g) * 0.09 + 0.9  # view depth ~1..10 m, distinct
    motion = torch.round(torch.randn(1, 2, h, w, generator=g) * 24) / 16  # +-1.5 LR px in 1/16 px steps
    motion[:, :, :3, :3] = 0.05  # some |mv| <= 0.1 px: zeroed
    colour = torch.rand(1, 3, h, w, generator=g) * 2
    return depth, motion, colour, g


# ----------------------------------------------------------------------------------------------------------


def test_quarter_res_depth_scatter_by_hand():
    # LR 8x8 -> 2x2. Block (0, 0) = LR rows 0-3, cols 0-3; its nearest depth 0.25 at (3, 2) moves 4 LR px to
    # the left: mv = (0, -4) LR = (0, -1) quarter px, so it came from texel (0, 1): (0.5, 0.5) - (0, -1) = (0.5,
    # 1.5), bilinear weight 1 there. Texel (0, 1)'s own block (cols 4-7) is static 0.5: min -> 0.25 * 2^31.
    d = torch.full((1, 1, 8, 8), 0.5)
    mv = torch.zeros(1, 2, 8, 8)
    d[0, 0, 3, 2], mv[0, 1, 3, 2] = 0.25, -4.0
    # block (1, 1) (rows 4-7, cols 4-7): (4, 4) and (7, 7) tie at 0.2; '<=' keeps the later-visited (7, 7) (quad
    # rows 2-3 x cols 2-3, last), whose motion (4, 0) LR = 1 quarter px down sends it to texel (0, 1) too
    d[0, 0, 4, 4] = d[0, 0, 7, 7] = 0.2
    mv[0, 0, 7, 7] = 4.0
    out = depth_scatter_quarter(d, mv)
    assert out.shape == (1, 1, 2, 2) and out.dtype == torch.int64
    # (0, 0): its surface left, nothing lands -> INT_MAX; (0, 1): min(0.5, 0.25, 0.2) = 0.2 -> int(0.2 * 2^31);
    # (1, 0): static 0.5 = 2^30; (1, 1): its surface (the 0.2 at (7, 7)) left -> INT_MAX
    assert out[0, 0].tolist() == [[INT_MAX, int(torch.tensor(0.2) * DEPTH_SCALE)], [2**30, INT_MAX]]
    assert int(torch.tensor(0.2) * DEPTH_SCALE) == 429496736  # float32(0.2) * 2^31, truncated
    # swap the motions: the later (7, 7) is now static, the earlier (4, 4) moves; '<=' still picks (7, 7), so
    # texel (1, 1) keeps 0.2 (a strict '<' would pick (4, 4) and leave it empty), and (0, 1) = min(0.5, 0.25)
    mv[0, 0, 7, 7], mv[0, 0, 4, 4] = 0.0, 4.0
    out = depth_scatter_quarter(d, mv)
    assert out[0, 0, 1, 1].item() == 429496736 and out[0, 0, 0, 1].item() == 2**29
    # quad by quad: in block (1, 0), 0.2 at (4, 2) (quad cols 2-3, visited 5th) ties (5, 0) (quad 00's bl, 3rd),
    # so '<=' keeps the static (4, 2): texel (1, 0) = 0.2, and (5, 0)'s 1 quarter px down motion (it came from
    # texel (0, 0)) is unused. A row-major 4x4 would visit (5, 0) last: (1, 0) empty, (0, 0) = 0.2.
    # In block (1, 1), 0.375 at (6, 4) (rows 2-3 quad, 9th) ties (4, 6) (cols 2-3 quad, 5th): the static (6, 4)
    # wins -> (1, 1) = 0.375 * 2^31; (4, 6) would have moved 1 quarter px right, from texel (1, 0).
    d = torch.full((1, 1, 8, 8), 0.5)
    mv = torch.zeros(1, 2, 8, 8)
    d[0, 0, 4, 2] = d[0, 0, 5, 0] = 0.2
    mv[0, 0, 5, 0] = 4.0
    d[0, 0, 6, 4] = d[0, 0, 4, 6] = 0.375
    mv[0, 1, 4, 6] = 4.0
    assert depth_scatter_quarter(d, mv)[0, 0].tolist() == [[2**30, 2**30], [429496736, 805306368]]


def test_quarter_res_depth_scatter_matches_scalar_rederivation():
    for h, w, seed in ((16, 20, 0), (19, 20, 1), (36, 52, 2)):
        depth, motion, _, _ = rand_case(h, w, seed)
        want = bf_quarter_scatter(depth[0, 0].tolist(), motion[0].tolist())
        assert depth_scatter_quarter(depth, motion)[0, 0].tolist() == want, (h, w)


def test_lq_disocclusion_on_a_depth_step():
    # LR 16x16 -> 4x4; render size 16x16. A foreground at z = 1 m on LR cols 0-7 moves 4 LR px (1 quarter px)
    # to the LEFT, the background z = 10 m on cols 8-15 is static. depth_tm1 (quarter-res scatter): fg texel
    # col 0 -> col 1, fg col 1 -> col 2, bg cols 2, 3 stay: row = [INT_MAX, fg, min(fg, bg) = fg, bg].
    h = w = 16
    zf, zb = 1.0, 10.0
    d = torch.full((1, 1, h, w), device_depth(zb))
    d[..., :8] = device_depth(zf)
    mv = torch.zeros(1, 2, h, w)
    mv[:, 1, :, :8] = -4.0
    tm1 = depth_scatter_quarter(d, mv)
    fg, bg = int(torch.tensor(device_depth(zf)) * DEPTH_SCALE), int(torch.tensor(device_depth(zb)) * DEPTH_SCALE)
    assert tm1[0, 0, 0].tolist() == [INT_MAX, fg, fg, bg]
    rs = torch.tensor([16.0, 16.0]).view(1, 2, 1, 1)
    mask = lq_disocclusion(d, mv, tm1, P, rs)[0, 0]
    # col 0, 1 (fg): came from cols 1, 2 which hold fg: depth_diff 0 -> no weight -> 0. col 3: bg on bg -> 0.
    # col 2 (bg, static): depth_tm1 there is the fg 9 m nearer: required = 1.37e-5 * k_fov * |rs| * 10 m with
    # k_fov = sqrt(3) (corner ndc (-1, 1), centre 0), |rs| = 16 sqrt 2 -> 5.3694e-3; power = 1 + 2 |rs| /
    # |(1080, 1920)| = 1.020543; mask = 1 - (5.9659e-4)^1.020543 = 1 - exp(-7.4243 * 1.020543) = 1 - 5.1220e-4
    # (the block holds one depth, so the tolerance is 0)
    required = 1.37e-5 * math.sqrt(3) * 16 * math.sqrt(2) * zb
    want = 1 - (required / (zb - zf)) ** (1 + 2 * 16 * math.sqrt(2) / math.hypot(1080, 1920))
    assert abs(want - 0.99948780) < 1e-7
    for row in mask.tolist():
        assert row[:2] == [0.0, 0.0] and row[3] == 0.0 and abs(row[2] - want) < 1e-5
    # the tolerance: one farther pixel (z = 20 m) in block col 2 keeps the nearest (bg) but widens the view-depth
    # range to 10 m: required = 5.37e-3 + 10 > diff = 9 -> saturates to 1 -> mask 0 in that block row only
    d[0, 0, 0, 9] = device_depth(20.0)
    mask = lq_disocclusion(d, mv, tm1, P, rs)[0, 0]
    assert mask[0, 2].item() == 0.0 and abs(mask[1, 2].item() - want) < 1e-5
    # and the pre-process reads it bilinearly (edge-clamped) at the process pixel centre: process col c is at
    # quarter position (c + 0.5) / 2: col 3 -> 1.75 = 0.75 m1 + 0.25 m2, cols 4, 5 -> 0.75 m2, col 6 -> 0.25 m2
    d[0, 0, 0, 9] = device_depth(zb)
    x, aux = pre_process(frame(h, w, d, mv), zero_state(h, w), quality="mid")
    dm = aux["disocclusion_mask"][0, 0]
    assert dm.shape == (8, 8)
    for c, k in ((2, 0.0), (3, 0.25), (4, 0.75), (5, 0.75), (6, 0.25), (7, 0.0)):
        assert abs(dm[4, c].item() - k * want) < 1e-5, c


def test_lq_disocclusion_nearest_is_column_major_strict():
    # LR 8x8 -> 2x2. Block (0, 0) (LR rows 0-3, cols 0-3) at z = 2 m with two equally near pixels z = 1 m: (1, 0)
    # static, (0, 1) moving 8 LR px = 2 quarter px right, i.e. from off-screen. dl:64-80 runs the rows inner
    # (int2(x, y), x the row) with a strict '<', so (1, 0) (visited 2nd) beats (0, 1) (visited 5th): it reads its
    # own texel, whose previous depth is its own -> depth_diff 0, no weight -> 0. Row-major order or '<=' would
    # take (0, 1): its tap is off-screen -> 1.
    d = torch.full((1, 1, 8, 8), device_depth(2.0))
    d[0, 0, 1, 0] = d[0, 0, 0, 1] = device_depth(1.0)
    mv = torch.zeros(1, 2, 8, 8)
    mv[0, 1, 0, 1] = 8.0
    tm1 = torch.full((1, 1, 2, 2), int(torch.tensor(device_depth(1.0)) * DEPTH_SCALE))
    mask = lq_disocclusion(d, mv, tm1, P, torch.tensor([8.0, 8.0]).view(1, 2, 1, 1))
    assert mask[0, 0, 0, 0].item() == 0.0
    d[0, 0, 1, 0] = device_depth(1.5)  # now (0, 1) is the unique nearest
    mask = lq_disocclusion(d, mv, tm1, P, torch.tensor([8.0, 8.0]).view(1, 2, 1, 1))
    assert mask[0, 0, 0, 0].item() == 1.0


def test_lq_disocclusion_matches_scalar_rederivation():
    for h, w, seed in ((16, 20, 3), (19, 20, 4)):
        depth, motion, _, g = rand_case(h, w, seed)
        tm1 = depth_scatter_quarter(depth, motion)
        # a scrambled previous depth, so that plenty of texels see a nearer surface
        tm1 = torch.where(torch.rand(tm1.shape, generator=g) < 0.5, (tm1.float() * 0.99).long(), tm1)
        rs = [h * 2.0, w * 2.0]
        got = lq_disocclusion(depth, motion, tm1, P, torch.tensor(rs).view(1, 2, 1, 1))[0, 0]
        want = torch.tensor(bf_lq_disocclusion(depth[0, 0].tolist(), motion[0].tolist(), tm1[0, 0].tolist(), rs))
        assert (want > 0.5).any() and torch.allclose(got, want, atol=2e-5), (h, w)


def test_nearest_depth_lq_ties_go_to_the_later_tap():
    # flat depth: every tap ties and step(sample, nearest) takes it, so the last on-screen tap of pp:243-259 wins:
    # (2, 2) inside; at the bottom-right pixel (nothing below or right on screen) (-1, -1); at the bottom-left
    # one (0, 2), visited after (-1, 2)
    off, _ = nearest_depth_lq(torch.full((1, 1, 6, 6), 0.5), torch.zeros(1, 2, 6, 6))
    assert off[0, :, 2, 2].tolist() == [2, 2] and off[0, :, 5, 5].tolist() == [-1, -1]
    assert off[0, :, 5, 0].tolist() == [0, 2]
    depth, motion, _, _ = rand_case(9, 11, 5)
    off, mv = nearest_depth_lq(depth, motion)
    d, m = depth[0, 0].tolist(), motion[0].tolist()
    for y in range(9):
        for x in range(11):
            assert tuple(off[0, :, y, x].tolist()) == bf_nearest_lq(d, y, x)
            assert tuple(mv[0, :, y, x].tolist()) == bf_motion_at_nearest(d, m, y, x)


def test_packed_nibble_codes_by_hand_and_post_process_decodes_them():
    # LR 8x8 flat 0.5 with one near pixel 0.1 at (3, 4). Process pixel (1, 2) packs LR (2, 4), (2, 5) | (3, 4),
    # (3, 5). Their nearest offsets: (1, 0), (1, -1), (0, 0), (0, -1); nibble = (dx + 1) << 2 | (dy + 1) (nc:46-51)
    # -> 6, 2, 5, 1; byte0 = 6 | 2 << 4 = 38, byte1 = 5 | 1 << 4 = 21
    d = torch.full((1, 1, 8, 8), 0.5)
    d[0, 0, 3, 4] = 0.1
    off, _ = nearest_depth_lq(d, torch.zeros(1, 2, 8, 8))
    codes = packed_offset_quads(off, (8, 8))
    assert codes.shape == (1, 2, 8, 8)
    assert torch.round(codes[0, :, 1, 2] * 255).tolist() == [38.0, 21.0]
    # process pixel (0, 0) sees only flat depth: every lane's offset is (2, 2) -> nibble 15 -> bytes 255, 255;
    # outside the 4x4 process size nothing is written (0)
    assert torch.round(codes[0, :, 0, 0] * 255).tolist() == [255.0, 255.0]
    assert (codes[..., 4:, :] == 0).all() and (codes[..., :, 4:] == 0).all()
    # post_process's decoder (ps:184-205) recovers every LR pixel's offset (even sizes: texel = pixel // 2)
    for h, w, seed in ((8, 8, None), (16, 20, 6)):
        if seed is not None:
            d, motion, _, _ = rand_case(h, w, seed)
            off, _ = nearest_depth_lq(d, motion)
        hp, wp = state_sizes(h, w, "mid")["padded"]
        dy, dx = _decode_offsets(packed_offset_quads(off, (hp, wp)), (h, w), (h // 2, w // 2), half_res=True)
        assert torch.equal(dy, off[:, 0]) and torch.equal(dx, off[:, 1])


def zero_state(h, w, quality="mid", scale=2, history=None, feedback=None):
    model = NSS(NSSConfig(quality=quality))
    s = model.init_state({"colour": torch.zeros(1, 3, h, w)})
    if history is not None:
        s["history"] = history
    if feedback is not None:
        s["feedback"] = feedback
    return s


def test_half_res_pre_process_matches_scalar_rederivation():
    # LR 19x20 (odd rows: the last LR row is never a reference pixel, ProcessCoordToInputCoord = floor((c + 0.5)
    # * 19 / 9) = 2c + 1 <= 17) -> process 9x10, padded 16x16 (7 mirrored rows), quarter 4x5, HR 38x40
    h, w = 19, 20
    depth, motion, colour, g = rand_case(h, w, 7)
    f = frame(h, w, depth, motion, colour, rs=[h * 3, w * 3], jitter=(0.3, -0.2), exposure=1.5)
    st = zero_state(
        h, w, history=torch.rand(1, 3, 2 * h, 2 * w, generator=g) * 3, feedback=torch.rand(1, 4, 16, 16, generator=g)
    )
    st["derivative"] = torch.rand(1, 4, 16, 16, generator=g)
    x, aux = pre_process(f, st, quality="mid")
    assert x.shape == (1, 12, 16, 16)
    want, prev, dis = bf_half_res(f, st, aux["disocclusion_lq"][0, 0].tolist())
    assert torch.allclose(x[0, :11], torch.tensor(want), atol=2e-5)
    assert torch.allclose(aux["disocclusion_mask"][0, 0], torch.tensor(dis)[:9, :10], atol=1e-6)
    assert (torch.tensor(dis) > 0.01).any() and (torch.tensor(dis) <= 0.01).any()
    # ch 11 and the state: luma_derivative's half-res layout at the padded previous positions
    inst, deriv = luma_derivative(
        colour,
        f["exposure"],
        st["derivative"],
        torch.tensor(prev)[None],
        torch.tensor(dis)[None, None],
        "mid",
        process_size=(9, 10),
    )
    assert torch.allclose(x[0, 11], inst[0, 0], atol=1e-6) and torch.allclose(aux["derivative"], deriv, atol=1e-6)
    assert (aux["derivative"][..., 9:, :] == 0).all() and (aux["derivative"][..., 10:] == 0).all()


def test_buffer_and_network_shapes_for_mid_and_low():
    # LR 36x52: process 18x26, padded 24x32 (multiples of 8), KPN at padded / 4 = 6x8, quarter-res 9x13, HR 72x104
    h, w = 36, 52
    depth, motion, colour, _ = rand_case(h, w, 8)
    for quality in ("mid", "low"):
        model = NSS(NSSConfig(quality=quality))
        assert model.net.kpn_head.out_channels == 16
        f = frame(h, w, depth, motion, colour)
        st = model.init_state(f)
        assert {k: tuple(v.shape) for k, v in st.items()} == {
            "history": (1, 3, 72, 104),
            "feedback": (1, 4, 24, 32),
            "derivative": (1, 4, 24, 32),
            "valid": (1, 1, 1, 1),
            "fresh": (1, 1, 1, 1),
        }
        with torch.no_grad():
            out, new = model(f, st)
            out, new = model(f, new)
        assert {k: tuple(v.shape) for k, v in new.items()} == {k: tuple(v.shape) for k, v in st.items()}
        shapes = {
            k: tuple(out[k].shape)
            for k in (
                "net_input",
                "kpn_params",
                "temporal_params",
                "output_linear",
                "out_filtered_linear",
                "nearest_depth_offset",
                "disocclusion_mask",
                "derivative",
                "depth_tm1",
            )
        }
        assert shapes == {
            "net_input": (1, 12, 24, 32),
            "kpn_params": (1, 16, 6, 8),
            "temporal_params": (1, 4, 18, 26),
            "output_linear": (1, 3, 72, 104),
            "out_filtered_linear": (1, 3, 72, 104),
            "nearest_depth_offset": (1, 2, 24, 32),
            "disocclusion_mask": (1, 1, 18, 26),
            "derivative": (1, 4, 24, 32),
            "depth_tm1": (1, 1, 9, 13),
        }
        assert torch.isfinite(out["output_linear"]).all()
    assert state_sizes(h, w, "high") == {
        "process": (36, 52),
        "padded": (40, 56),
        "derivative": (36, 52),
        "depth_tm1": (18, 26),
    }


def test_prune_kpn_keeps_the_centred_4x4_column_major():
    head = torch.arange(36.0).view(36, 1, 1, 1).expand(36, 32, 3, 3).clone()
    sd = {"kpn_head.weight": head, "kpn_head.bias": torch.arange(36.0), "e0.0.weight": torch.zeros(32, 12, 3, 3)}
    pruned = prune_kpn(sd)
    # rows and cols 1..4 of the 6x6, channel row + col * 6, col outer: col 1 -> 7..10, col 2 -> 13..16, ...
    want = [7, 8, 9, 10, 13, 14, 15, 16, 19, 20, 21, 22, 25, 26, 27, 28]
    assert list(KPN_PRUNE_INDICES) == want
    assert pruned["kpn_head.weight"].shape == (16, 32, 3, 3)
    assert pruned["kpn_head.weight"][:, 0, 0, 0].tolist() == want and pruned["kpn_head.bias"].tolist() == want
    assert (pruned["kpn_head.weight"] == torch.tensor(want, dtype=torch.float32).view(16, 1, 1, 1)).all()
    assert pruned["e0.0.weight"] is sd["e0.0.weight"] and sd["kpn_head.weight"].shape[0] == 36
    # post_process's sparse channel of 6x6 channel t ((dy, dx) = (t % 6 - 2, t // 6 - 2)) is
    # (dx + 1) * 4 + (dy + 1): the pruned channel k must be the one post_process reads as sparse channel k
    assert _sparse_channel(torch.tensor(want)).tolist() == list(range(16))
    assert prune_kpn(pruned)["kpn_head.weight"].shape[0] == 16  # already mid/low: unchanged
    # a NSS checkpoint's keys (net.*) work too
    assert prune_kpn({"net.kpn_head.bias": torch.arange(36.0)})["net.kpn_head.bias"].tolist() == want


def test_mid_forward_with_a_pruned_high_checkpoint_and_gradients():
    torch.manual_seed(0)
    h, w = 16, 20
    high = NSS(NSSConfig())
    mid = NSS(NSSConfig(quality="mid"))
    mid.net.load_state_dict(prune_kpn(high.net.state_dict()))  # strict: every key and shape fits
    assert torch.equal(mid.net.kpn_head.weight, high.net.kpn_head.weight[list(KPN_PRUNE_INDICES)])
    for quality in ("mid", "low"):
        model = NSS(NSSConfig(quality=quality))
        model.net.load_state_dict(mid.net.state_dict())
        frames = [frame(h, w, *rand_case(h, w, 10 + t)[:3]) for t in range(2)]
        st, loss = model.init_state(frames[0]), 0
        for f in frames:
            out, st = model(f, st)
            assert torch.isfinite(out["output_linear"]).all() and torch.isfinite(out["out_filtered_linear"]).all()
            loss = loss + out["output_linear"].mean() + out["out_filtered_linear"].mean()
        loss.backward()
        grads = {k: p.grad for k, p in model.net.named_parameters()}
        assert all(g is not None and torch.isfinite(g).all() for g in grads.values())
        assert grads["kpn_head.weight"].abs().sum() > 0 and grads["temporal_head.weight"].abs().sum() > 0
        assert grads["e0.0.weight"].abs().sum() > 0
