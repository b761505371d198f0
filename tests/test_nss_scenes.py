"""nss/scenes.py: the three out-of-distribution test captures (text, foliage, fast pan with a cut) are in
synth.py's exact layout, and their motion, jitter, depth and viewProj follow synth's conventions."""

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from safetensors import safe_open

from nss import scenes
from nss.dataset import SPEC, read_capture
from nss.synth import jitter_px, render_sequence

H = W = 64
FRAMES = 6


@pytest.fixture(scope="module")
def captures(tmp_path_factory):
    out = tmp_path_factory.mktemp("nss_scenes")
    paths = scenes.make_scenes(out, (H, W), FRAMES, seed=0, progress=False)
    return {p.stem: p for p in paths}


def load(path):
    with safe_open(str(path), "pt") as f:
        return {k: f.get_tensor(k) for k in f.keys()}, f.metadata()


def warp(img, mv):
    """Backward warp: out[p] = img[p - mv] (bilinear, pixel centres at i + 0.5, (y, x) motion) -> out, and a
    mask of the pixels whose source lies inside the image."""
    h, w = img.shape[-2:]
    ys, xs = torch.meshgrid(torch.arange(h) + 0.5, torch.arange(w) + 0.5, indexing="ij")
    sy, sx = ys - mv[0], xs - mv[1]
    grid = torch.stack([sx / w * 2 - 1, sy / h * 2 - 1], -1)[None]
    out = F.grid_sample(img[None], grid, mode="bilinear", padding_mode="border", align_corners=False)[0]
    return out, (sy >= 0) & (sy <= h) & (sx >= 0) & (sx <= w)


def psnr(a, b, mask):
    return -10 * math.log10(((a - b) ** 2).mean(0)[mask].mean().item() + 1e-12)


def tonemap(x, exposure):
    x = x.float() * exposure.exp()
    return x / (1 + x)


def away_from_motion_edges(mv):
    """Pixels whose neighbourhood (as wide as the motion is long) moves as one: no disocclusion can reach them
    (e.g. text scrolling in from under a window's edge has no previous position to be found at)."""
    r = int(mv.abs().amax().ceil()) + 1
    spread = F.max_pool2d(mv[None], 2 * r + 1, 1, r) + F.max_pool2d(-mv[None], 2 * r + 1, 1, r)
    return (spread[0] < 1e-2).all(0)


def warp_gain(cap, t, lr=False, margin=4, interior=True):
    """PSNR (tonemapped) of frame t against frame t-1 warped by the motion, minus that against frame t-1 as is,
    on interior pixels (`margin` px off the border, and with interior=True away from motion edges)."""
    gt, e = cap["ground_truth_linear"], cap["exposure"][t]
    prev, cur, mv = tonemap(gt[t - 1], e), tonemap(gt[t], e), cap["motion"][t].float()
    if lr:  # the un-jittered low-res image is the ground truth's 2x box average
        prev, cur, mv = F.avg_pool2d(prev[None], 2)[0], F.avg_pool2d(cur[None], 2)[0], cap["motion_lr"][t].float()
    warped, mask = warp(prev, mv)
    if interior:
        mask &= away_from_motion_edges(mv)
    mask[:margin], mask[-margin:], mask[:, :margin], mask[:, -margin:] = False, False, False, False
    assert mask.float().mean() > 0.2
    return psnr(warped, cur, mask) - psnr(prev, cur, mask)


def test_every_file_has_synths_layout(captures):
    ref = render_sequence(1, 2, (16, 16))  # synth's own capture: the key set and dtypes to match
    assert set(captures) == {"text", "foliage", "pan_cut"}
    for name, path in captures.items():
        t, meta = load(path)
        assert set(t) == set(ref), name
        assert meta["Length"] == str(FRAMES)
        for k, v in t.items():
            assert v.dtype == ref[k].dtype and v.dim() == ref[k].dim() and v.shape[0] == FRAMES, (name, k)
        cap = read_capture(path, keys=list(SPEC))
        assert cap["colour_linear"].shape == (FRAMES, 3, H // 2, W // 2)
        assert cap["ground_truth_linear"].shape == (FRAMES, 3, H, W)
        assert cap["depth"].shape == (FRAMES, 1, H // 2, W // 2) and cap["motion"].shape == (FRAMES, 2, H, W)
        assert cap["motion_lr"].shape == (FRAMES, 2, H // 2, W // 2) and cap["jitter"].shape == (FRAMES, 2, 1, 1)
        assert t["render_size"][0].tolist() == [H // 2, W // 2] and t["outDims"][0].tolist() == [H, W]
        assert torch.equal(cap["jitter"].view(FRAMES, 2), torch.tensor([jitter_px(i) for i in range(FRAMES)]))
        assert (cap["depth"] > 0).all() and (cap["depth"] < 1).all()  # every sample hits a layer (no sky)
        cuts = [i for i in range(FRAMES) if cap["camera_cut"][i]]
        assert cuts == ([0, FRAMES // 2] if name == "pan_cut" else [0]), name
        for c in cuts:  # no previous frame to point at
            assert not cap["motion"][c].any() and not cap["motion_lr"][c].any()
        moving = [i for i in range(FRAMES) if i not in cuts]
        assert all(cap["motion"][i].abs().amax() > 1 for i in moving), name
    seqs = {load(p)[0]["seq"][0].item() for p in captures.values()}
    assert len(seqs) == 3 and 0 not in seqs


@pytest.mark.parametrize(
    "name, min_gain, interior", [("text", 5.0, True), ("pan_cut", 5.0, True), ("foliage", 2.5, False)]
)
def test_motion_warps_previous_frame_onto_current(captures, name, min_gain, interior):
    """Backward-warping frame t-1 to pos - mv must reproduce frame t much better than not warping, at both
    resolutions. Foliage is scored on every pixel off the border (its motion edges are everywhere) and gains
    less: disoccluded pixels, half-transparent leaf edges mixing two motions, sub-pixel noise."""
    cap = read_capture(captures[name])
    frames = [t for t in range(1, FRAMES) if not cap["camera_cut"][t]]
    for t in frames:
        for lr in (False, True):
            gain = warp_gain(cap, t, lr, interior=interior)
            assert gain > min_gain, (name, t, "motion_lr" if lr else "motion", gain)


def test_motion_lr_is_motion_at_lr_centres(captures):
    """Low-res motion = high-res motion of the same surface, halved: where the 2x2 block of high-res motion is
    uniform it equals the LR vector (motion is evaluated at unjittered centres, so the jitter plays no part).
    A few LR centres, between the high-res centres, see a thin glyph or leaf edge those miss."""
    for name, path in captures.items():
        cap = read_capture(path)
        hr = cap["motion"].float()
        mean, spread = F.avg_pool2d(hr, 2), F.max_pool2d(hr, 2) + F.max_pool2d(-hr, 2)
        uniform = (spread < 1e-2).all(1, keepdim=True).expand_as(mean)
        assert uniform.float().mean() > 0.4, name
        wrong = (cap["motion_lr"].float() - mean / 2).abs() > 5e-3
        assert wrong[uniform].float().mean() < 0.02, name


def test_jitter_shifts_the_low_res_samples():
    """A still copy of the text scene: frames differ only by their jitter, and the LR image is the scene at
    centre + jitter (closer to the ground truth sampled there than at centre - jitter)."""
    shots = scenes.build("text", (H, W), 2, seed=0)
    for shot in shots:
        for layer in shot.layers:
            layer.drift, layer.sway = (0.0, 0.0), []
    t = scenes.render_scene(shots, 2, (H, W), "still")
    lr, gt = t["colour_linear"].float(), t["ground_truth_linear"].float()
    assert torch.equal(gt[0], gt[1]) and not torch.equal(t["jitter"][0], t["jitter"][1])
    assert (lr[0] - lr[1]).abs().mean() > 1e-2
    ys, xs = torch.meshgrid(torch.arange(H // 2) + 0.5, torch.arange(W // 2) + 0.5, indexing="ij")
    for f in range(2):
        jy, jx = t["jitter"][f].view(2).tolist()

        def at(sign):  # the ground truth bilinearly sampled at LR centres + sign * jitter
            grid = torch.stack([(xs + sign * jx) / (W // 2) * 2 - 1, (ys + sign * jy) / (H // 2) * 2 - 1], -1)[None]
            return F.grid_sample(gt[f : f + 1], grid, mode="bilinear", align_corners=False)[0]

        assert (at(1) - lr[f]).abs().mean() < 0.8 * (at(-1) - lr[f]).abs().mean(), f


def test_foliage_has_depth_layers_and_disocclusions(captures):
    cap = read_capture(captures["foliage"])
    p = cap["depth_params"][0]
    z = p[1] / (cap["depth"].double() - p[0])  # positive view depth (FSR2 deviceToViewDepth)
    assert len(torch.unique(z.float().round(decimals=3))) >= 2
    assert z.min() > 1 and z.max() < 100
    disoccluded = 0
    h, w = z.shape[-2:]
    ys, xs = torch.meshgrid(torch.arange(h) + 0.5, torch.arange(w) + 0.5, indexing="ij")
    for t in range(1, FRAMES):
        mv = cap["motion_lr"][t].float()
        sy, sx = (ys - mv[0]).floor().long(), (xs - mv[1]).floor().long()
        inside = (sy >= 0) & (sy < h) & (sx >= 0) & (sx < w)
        z_prev = z[t - 1, 0][sy.clamp(0, h - 1), sx.clamp(0, w - 1)]
        # where this pixel's surface was one frame ago, something nearer covered it
        disoccluded += (inside & (z_prev < 0.8 * z[t, 0])).sum().item()
    assert disoccluded > 0.002 * (FRAMES - 1) * h * w


def test_pan_motion_matches_depth_and_view_proj(captures):
    """The pan is a camera translation: unprojecting a LR pixel centre with its depth through frame t's
    viewProj and projecting it with frame t-1's lands on pos - motion_lr (row-vector clip = [x y z 1] @ M)."""
    cap, _ = load(captures["pan_cut"])
    h, w = H // 2, W // 2
    ys, xs = torch.meshgrid(torch.arange(h) + 0.5, torch.arange(w) + 0.5, indexing="ij")
    for t in range(1, FRAMES):
        if cap["camera_cut"][t]:
            continue
        m, m_prev = cap["viewProj"][t, 0].double(), cap["viewProj"][t - 1, 0].double()
        ndc = torch.stack([xs / w * 2 - 1, 1 - ys / h * 2, cap["depth"][t, 0].double(), torch.ones(h, w)], -1)
        world = ndc @ torch.linalg.inv(m)
        clip = (world / world[..., 3:]) @ m_prev
        py, px = (1 - clip[..., 1] / clip[..., 3]) * h / 2, (clip[..., 0] / clip[..., 3] + 1) * w / 2
        mv = cap["motion_lr"][t].double()
        assert torch.allclose(py, ys - mv[0], atol=2e-2) and torch.allclose(px, xs - mv[1], atol=2e-2), t
        speed = cap["motion"][t].double().view(2, -1).norm(dim=0)
        assert (speed > 5.9).all() and (speed < 12.1).all(), t  # 6-12 high-res px / frame


def run_lengths(mask):
    """For every pixel of a boolean (H, W) array: the length of the horizontal run of True it lies in."""
    out = np.zeros(mask.shape, dtype=int)
    for r, row in enumerate(mask):
        edges = np.flatnonzero(np.diff(np.r_[0, row.astype(int), 0]))
        for a, b in zip(edges[::2], edges[1::2]):
            out[r, a:b] = b - a
    return out


def test_text_glyph_strokes_are_thin():
    """Pillow's default font at the scene's size: ink is 1-2 px thick (the shorter of its horizontal and
    vertical runs), a few 3 px at joins."""
    ink = scenes.text_mask(np.random.default_rng(0), 200, 6)[0].numpy() > 0.5
    thick = np.minimum(run_lengths(ink), run_lengths(ink.T).T)[ink]
    assert ink.sum() > 300 and (thick <= 2).mean() > 0.9


def test_cli_writes_captures_and_previews(tmp_path, capsys):
    scenes.main(["--out", str(tmp_path), "--size", "32", "48", "--frames", "3", "--seed", "2"])
    for name in ("text", "foliage", "pan_cut"):
        cap = read_capture(tmp_path / f"{name}.safetensors")
        assert cap["ground_truth_linear"].shape == (3, 3, 32, 48)
        assert (tmp_path / f"{name}.png").stat().st_size > 0
    with pytest.raises(SystemExit):
        scenes.main(["--help"])
    out = capsys.readouterr().out
    for flag in ("--out", "--size", "--frames", "--seed", "--no-preview"):
        assert flag in out
    assert "python nss/scenes.py --out" in out
    with pytest.raises(SystemExit):
        scenes.main(["--out", str(tmp_path), "--size", "33", "32"])
