"""prism/synth.py on tiny data (32 px input): the Prism layout for both scales, value ranges, is_real, byte-exact
determinism, exact motion vectors, a target that is aligned with the input but not a plain upsample, the CLI."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from prism import synth
from prism.dataset import PrismDataset

ROOT = Path(__file__).resolve().parents[1]
SIZE, FRAMES = 32, 3


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("prism")
    index = synth.make_dataset(root, sequences=2, frames=FRAMES, size=SIZE, seed=0, progress=False)
    return root, index


def psnr(a, b):
    return (-10 * torch.log10(((a - b) ** 2).mean())).item()


def test_layout_and_ranges(data):
    root, index = data
    assert [(e["file"], e["scale"], e["size"], e["frames"], e["is_real"]) for e in index["sequences"]] == [
        ("seq_0000.safetensors", 2, [SIZE, SIZE], FRAMES, False),
        ("seq_0001.safetensors", 3, [SIZE, SIZE], FRAMES, False),
    ]
    ds = PrismDataset(root, clip_len=FRAMES)
    assert len(ds) == 2
    for i, s in enumerate((2, 3)):  # sequences alternate over the scales
        clip = ds[i]
        assert clip["scale"] == s
        assert clip["color"].shape == (FRAMES, 3, SIZE, SIZE) and clip["depth"].shape == (FRAMES, 1, SIZE, SIZE)
        assert clip["motion_vectors"].shape == (FRAMES, 2, SIZE, SIZE)
        assert clip["ground_truth"].shape == (FRAMES, 3, s * SIZE, s * SIZE)
        for k in ("color", "depth", "ground_truth"):
            assert clip[k].dtype == torch.float32 and 0 <= clip[k].min() and clip[k].max() <= 1, k
        assert clip["depth"].min() < 0.5
        assert not clip["is_real"].any()
        assert (clip["motion_vectors"][0] == 0).all() and clip["motion_vectors"][1:].abs().amax() > 0.05
        assert torch.allclose(clip["color"] * 31, torch.round(clip["color"] * 31), atol=0.02)  # 5-bit banding


def test_deterministic_and_as_real(data, tmp_path):
    root, _ = data
    again = synth.make_dataset(tmp_path / "again", sequences=2, frames=FRAMES, size=SIZE, seed=0, progress=False)
    assert again["sequences"] == json.loads((root / "index.json").read_text())["sequences"]
    for e in again["sequences"]:
        assert (tmp_path / "again" / e["file"]).read_bytes() == (root / e["file"]).read_bytes(), e["file"]
    other = synth.make_dataset(
        tmp_path / "other", sequences=1, frames=1, size=SIZE, seed=1, as_real=True, progress=False
    )
    assert other["sequences"][0]["is_real"] is True
    real = PrismDataset(tmp_path / "other", clip_len=1)[0]
    first = PrismDataset(root, clip_len=1)[0]
    assert real["is_real"].all() and not torch.equal(real["color"], first["color"])  # another seed: another room


def warp(img, mv):
    """Sample img (C, h, w) at (x + dx, y + dy) for every pixel -> warped image, mask of samples well inside."""
    _, h, w = img.shape
    y, x = torch.meshgrid(torch.arange(h) + 0.5, torch.arange(w) + 0.5, indexing="ij")
    gx, gy = (x + mv[0]) / w * 2 - 1, (y + mv[1]) / h * 2 - 1
    out = F.grid_sample(img[None], torch.stack([gx, gy], -1)[None], mode="bilinear", align_corners=False)[0]
    return out, (gx.abs() < 1 - 2 / w) & (gy.abs() < 1 - 2 / h)


def world_points(sc, t, depth, h, w):
    """World position (3, h, w) of every pixel's surface point from the game frame's depth (view z / FAR)."""
    cam = synth.camera(sc, t)
    d = synth.rays(cam, synth.sample_grid(h, w, 1), h, w)
    return cam[0][:, None, None] + depth * synth.FAR / synth.dot(d, cam[3][:, None, None]) * d


def reprojection(sc, h=48, w=48, t=2):
    """Warp frame t-1's surface points (from its depth) along frame t's motion vectors; compare them with frame t's
    points, each up to its object's own motion (the nearest of: static, object k's move). -> (pixels compared:
    in view, not sky, away from depth edges where bilinear warping mixes two surfaces; error (h, w) in world
    units; the same error with zero motion; the motion vectors)."""
    _, d1, _ = synth.render_game(sc, t - 1, h, w)
    _, d2, mv = synth.render_game(sc, t, h, w)
    p1, p2 = world_points(sc, t - 1, d1, h, w), world_points(sc, t, d2, h, w)
    moved = synth.geometry(sc, t)["centre"] - synth.geometry(sc, t - 1)["centre"]
    offsets = torch.cat([torch.zeros(3, 1), moved], 1).T  # static surfaces, then each object's motion

    def error(points):
        return torch.stack([(points + o[:, None, None] - p2).norm(dim=0) for o in offsets]).amin(0)

    edges = F.max_pool2d(d1, 3, 1, 1) + F.max_pool2d(-d1, 3, 1, 1)  # depth range around each pixel of t-1
    warped, inside = warp(p1, mv)
    return inside & (d2[0] < 1) & (warp(edges, mv)[0][0] < 0.01), error(warped), error(p1), mv


def test_motion_vectors_are_exact():
    """Camera and objects moving: nearly every pixel lands exactly on its surface point in the previous frame."""
    for seed in range(20):  # a room whose camera clearly moves at t = 2
        sc = synth.make_scene(torch.Generator().manual_seed(seed))
        valid, err, err_still, mv = reprojection(sc)
        if mv.abs().mean() > 0.5 and (sc["slide"].abs().sum(0) > 0).any():
            break
    else:
        pytest.fail("no room with a clearly moving camera and a moving object")
    exact, still = (err[valid] < 0.01).float().mean(), (err_still[valid] < 0.01).float().mean()
    assert exact > 0.9 and still < 0.5 and err[valid].median() < 1e-3, (seed, exact, still, err[valid].median())


def test_object_motion_vectors_are_exact():
    """Still camera: the pixels of moving objects follow their object (zero motion would not); the rest is still."""
    for seed in range(20):
        sc = synth.make_scene(torch.Generator().manual_seed(seed))
        sc["cam"] = (*sc["cam"][:3], 0.0, *sc["cam"][4:])  # camera path amplitude 0
        valid, err, err_still, mv = reprojection(sc)
        moving = valid & (mv.norm(dim=0) > 0.05)
        if moving.sum() > 60:
            break
    else:
        pytest.fail("no room with a visibly moving object")
    exact, still = (err[moving] < 0.01).float().mean(), (err_still[moving] < 0.01).float().mean()
    assert exact > 0.85 and still < 0.3, (seed, exact, still)
    assert (mv.norm(dim=0) < 1e-4).float().mean() > 0.5  # static surfaces and sky: exactly zero


def test_target_is_aligned_richer_render(data):
    """The target is the input's view (best match of a bilinear upsample at zero shift) but a different render:
    PSNR of bilinear(input) vs target ~18-20 dB measured at 32 and 128 px, for both scales."""
    ds = PrismDataset(data[0], clip_len=FRAMES)
    for i in range(2):
        clip = ds[i]
        s, gt = clip["scale"], clip["ground_truth"]
        up = F.interpolate(clip["color"], scale_factor=s, mode="bilinear", align_corners=False)
        assert 15 < psnr(up, gt) < 25, (s, psnr(up, gt))
        H, W = gt.shape[-2:]
        shifted = {
            (dy, dx): psnr(up[..., s + dy : H - s + dy, s + dx : W - s + dx], gt[..., s:-s, s:-s])
            for dy in range(-s, s + 1)
            for dx in range(-s, s + 1)
        }  # shifts of up to one input pixel
        assert max(shifted, key=shifted.get) == (0, 0), s
        detail = lambda x: (x - F.avg_pool2d(x, 3, 1, 1)).abs()[..., 1:-1, 1:-1].mean()  # noqa: E731
        assert detail(gt) > 0.8 * detail(up)  # measured 1.15x-1.8x; a blur of the target gives ~0.3x


def test_cli(tmp_path, capsys):
    out = tmp_path / "cli"
    r = subprocess.run(
        [
            sys.executable,
            "prism/synth.py",
            "--out",
            str(out),
            "--sequences",
            "2",
            "--frames",
            "2",
            "--size",
            "32",
            "40",
            "--preview",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert r.returncode == 0, r.stderr
    index = json.loads((out / "index.json").read_text())
    assert [(e["scale"], e["size"], e["frames"]) for e in index["sequences"]] == [(2, [32, 40], 2), (3, [32, 40], 2)]
    assert sorted(p.name for p in (out / "preview").iterdir()) == ["seq_0000.png", "seq_0001.png"]
    with pytest.raises(SystemExit):
        synth.main(["--help"])
    usage = capsys.readouterr().out
    assert all(
        f in usage for f in ("--sequences", "--frames", "--size", "--scales", "--seed", "--as-real", "--preview")
    )
    index = synth.make_dataset(out, sequences=1, frames=1, size=16, progress=False)  # a smaller rerun: no stale shard
    assert [e["file"] for e in index["sequences"]] == ["seq_0000.safetensors"]
    assert not (out / "seq_0001.safetensors").exists()
