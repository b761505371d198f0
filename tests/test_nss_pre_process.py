"""Golden tests of Arm's NSS v1 pre-process as nss/pre_process.py ports it. Every expected number is derived
by hand in the comments (from the formulas in Arm's shaders), not from running Arm's code."""

import math

import torch

from nss.pre_process import (
    DEPTH_SCALE,
    INT_MAX,
    depth_clip,
    depth_scatter,
    encode_offset,
    mirror_pad,
    motion_detector,
    nearest_depth,
    pre_process,
)

# near 0.1 m, far 100 m: fQ = f / (n - f) = -1.001001, p = [-fQ, fQ * n, 1/a, 1/b]
P = torch.tensor([1.001001, -0.1001001, 1.0, 1.0]).view(1, 4, 1, 1)


def frame(h=8, w=8, depth=0.5, motion=(0.0, 0.0), rs=None):
    depth = depth if torch.is_tensor(depth) else torch.full((1, 1, h, w), depth)
    motion = motion if torch.is_tensor(motion) else torch.tensor(motion).view(1, 2, 1, 1).expand(1, 2, h, w)
    return {
        "colour": torch.full((1, 3, h, w), 0.25),
        "depth": depth,
        "motion_lr": motion.clone(),
        "jitter": torch.zeros(1, 2, 1, 1),
        "exposure": torch.ones(1, 1, 1, 1),
        "depth_params": P,
        "render_size": torch.tensor(rs or [h, w], dtype=torch.float32).view(1, 2, 1, 1),
    }


def state(h=8, w=8, scale=2, history=0.5):
    return {
        "history": torch.full((1, 3, h * scale, w * scale), history),
        "feedback": torch.full((1, 4, h, w), 0.7),
        "derivative": torch.zeros(1, 4, h, w),
        "valid": torch.ones(1, 1, 1, 1),
    }


def test_nearest_depth_ties_keep_the_centre_and_off_screen_taps_are_skipped():
    d = torch.full((1, 1, 6, 6), 0.5)
    _, off, _ = nearest_depth(d, torch.zeros(1, 2, 6, 6))
    assert (off == 0).all()  # flat depth: strict '<' keeps the centre
    d[0, 0, 0, 0] = 0.1  # a near pixel in the corner
    _, off, _ = nearest_depth(d, torch.zeros(1, 2, 6, 6))
    assert off[0, :, 0, 0].tolist() == [0, 0] and off[0, :, 1, 1].tolist() == [-1, -1]
    assert off[0, :, 2, 2].tolist() == [0, 0]  # (0, 0) is 2 up-left: outside -1..+2
    # at the top-left pixel the taps at -1 read clamped texels (the pixel itself); they must not win
    d = torch.full((1, 1, 6, 6), 0.5)
    d[0, 0, 0, 1] = 0.2
    _, off, _ = nearest_depth(d, torch.zeros(1, 2, 6, 6))
    assert off[0, :, 0, 0].tolist() == [0, 1] and off[0, :, 1, 0].tolist() == [-1, 1]
    # two equally near taps: Arm visits (+1, 0) before (0, +1), and '<' keeps the first
    d = torch.full((1, 1, 6, 6), 0.5)
    d[0, 0, 3, 2] = d[0, 0, 2, 3] = 0.2
    assert nearest_depth(d, torch.zeros(1, 2, 6, 6))[1][0, :, 2, 2].tolist() == [1, 0]


def test_offset_code_is_arms_texel():
    # Arm's encode: ((offset.y + 2) << 3 | (offset.x + 2)) / 255 with .x = row: (dy, dx) = (-1, 2) -> (4 << 3 | 1) = 33
    assert math.isclose(float(encode_offset(torch.tensor([[[[-1]], [[2]]]]))), 33 / 255, rel_tol=1e-6)


def test_depth_scatter_static_moving_and_atomic_min():
    d = torch.full((1, 1, 8, 8), 0.5)
    out = depth_scatter(d, torch.zeros(1, 2, 8, 8))
    assert out.shape == (1, 1, 4, 4) and (out == int(0.5 * DEPTH_SCALE)).all()  # 0.5 * 2^31 = 1073741824
    # 2 LR px to the right = 1 half-res px: texel j receives texel j + 1's depth, the last column nothing
    out = depth_scatter(d, torch.tensor([0.0, 2.0]).view(1, 2, 1, 1).expand(1, 2, 8, 8))
    assert (out[..., :3] == 1073741824).all() and (out[..., 3] == INT_MAX).all()
    # 1 LR px = 0.5 half-res px: each depth lands half way between two texels, weights 0.5 > 0.1 -> both
    d[..., :, 4:6] = 0.25  # a nearer surface on half-res column 2
    out = depth_scatter(d, torch.tensor([0.0, 1.0]).view(1, 2, 1, 1).expand(1, 2, 8, 8))
    assert out[0, 0, 0].tolist() == [1073741824, 536870912, 536870912, 1073741824]  # min of both landings


def test_depth_scatter_picks_the_later_tap_on_equal_depth():
    # equal depths in a 2x2 block: '<=' lets the later tap (bottom-right) win, with its motion
    mv = torch.zeros(1, 2, 4, 4)
    mv[0, 1, 1, 1] = 2.0  # bottom-right of block (0, 0) moves 1 half-res px
    out = depth_scatter(torch.full((1, 1, 4, 4), 0.5), mv)
    assert out[0, 0, 0, 0] == INT_MAX and out[0, 0, 0, 1] == 1073741824


def test_motion_detector_per_axis_with_render_size():
    rs = torch.tensor([540.0, 960.0]).view(1, 2, 1, 1)
    # 10 px right: |mv/rs| = 10/960 = 0.0104167; lo = |1/rs| = 0.0021247, hi = 200 lo = 0.424950;
    # sqrt((0.0104167 - 0.0021247) / (0.424950 - 0.0021247)) = sqrt(0.019611) = 0.14004
    v = motion_detector(torch.tensor([0.0, 10.0]).view(1, 2, 1, 1), rs)
    assert abs(float(v) - 0.14004) < 1e-4
    assert float(motion_detector(torch.tensor([0.0, 1.5]).view(1, 2, 1, 1), rs)) == 0.0  # 1.5/960 < lo
    # a 16x16 crop of a 540x960 capture reads the capture's size, not the crop's
    x, _ = pre_process(frame(16, 16, motion=(0.0, 10.0), rs=[540, 960]), state(16, 16))
    assert torch.allclose(x[0, 6], torch.tensor(0.14004), atol=1e-4)


def test_disocclusion_on_a_depth_step():
    # background (depth 0.9, still) behind a foreground (depth 0.2, columns 8..15) that moved 4 px right:
    # columns 4, 5 show background that the foreground covered last frame
    h, w = 8, 32
    d = torch.full((1, 1, h, w), 0.9)
    d[..., 8:16] = 0.2
    mv = torch.zeros(1, 2, h, w)
    mv[0, 1, :, 8:16] = 4.0
    x, aux = pre_process(frame(h, w, depth=d, motion=mv), state(h, w))
    m = aux["disocclusion_mask"][0, 0]
    # pixel (., 4): its half-res texel 2 received the foreground (from columns 8, 9 moved 2 half-res px), view
    # depth 0.125 vs 0.991: required separation 1.37e-5 * sqrt(3) * |(8, 32)| * 0.991 = 7.75e-4 << 0.866 -> ~1
    assert (m[:, 4:6] > 0.99).all()
    assert (m[:, 24:] == 0).all() and (m[:, 10:16] == 0).all()  # static background, the foreground itself
    assert (x[0, 7:11, :, 4:6] == 0).all() and (x[0, 7:11, :, 24:] == 0.7).all()  # feedback cleared there


def test_depth_clip_counts_off_screen_taps_as_disoccluded():
    # a previous position half a texel off the left edge: taps at column -1 (weight 0.5) are off-screen and
    # count, the on-screen ones hold the same depth (no separation) and are skipped -> 1 - 0 / 0.5 = 1
    d = torch.full((1, 1, 4, 4), 0.5)
    tm1 = torch.full((1, 1, 4, 4), int(0.5 * DEPTH_SCALE), dtype=torch.int64)
    pos = torch.tensor([2.5, 0.0]).view(1, 2, 1, 1).expand(1, 2, 4, 4)
    m = depth_clip(tm1, pos, d, P, torch.tensor([8.0, 8.0]).view(1, 2, 1, 1))
    assert (m == 1).all()
    pos = torch.tensor([2.5, 2.5]).view(1, 2, 1, 1).expand(1, 2, 4, 4)
    assert (depth_clip(tm1, pos, d, P, torch.tensor([8.0, 8.0]).view(1, 2, 1, 1)) == 0).all()


def test_zero_motion_on_a_reset_frame():
    from nss.model import NSS

    model = NSS()
    f = frame(8, 8, motion=(1.0, 3.0))
    st = model.init_state(f)
    out, st = model(f, st)
    assert (out["mv"] == 0).all() and (out["net_input"][0, 6] == 0).all()  # fresh: motion zeroed
    out, _ = model(f, st)
    assert (out["mv"][0, 1] == 3).all()


def test_history_outside_the_image_reads_zero_and_padding_mirrors():
    # 12x12 frame -> padded to 16; moving 20 px right puts every previous position off-screen
    x, _ = pre_process(frame(12, 12, motion=(0.0, 20.0)), state(12, 12))
    assert x.shape == (1, 12, 16, 16) and (x[0, :3] == 0).all()
    x, _ = pre_process(frame(12, 12), state(12, 12))
    assert torch.allclose(x[0, 0], torch.tensor(0.5 / 1.5))  # Karis: 0.5 / (1 + 0.5)
    r = torch.arange(12.0).view(1, 1, 12, 1).expand(1, 1, 12, 12)
    padded = mirror_pad(r, 16, 16)
    assert padded[0, 0, 12:, 0].tolist() == [11, 10, 9, 8]  # index 12 + k reads 11 - k (edge repeated)
