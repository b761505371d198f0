"""Built-in NSS data: a procedural ray-cast 3D world that writes Arm's NSS safetensors layout.

Every capture is a small analytic scene (textured ground, walls and boxes, glossy and textured spheres some
of which move, thin poles, wires and bright cables, slatted fences, sky with clouds and a sun) seen by a
pinhole camera that drifts, pans and orbits along a random smooth path, with occasional camera cuts. For
each frame it ray-casts, on the CPU in batched torch tensors:

  ground_truth_linear  high res (H, W), 4x4 = 16 samples per pixel averaged in Karis-tonemapped space
  colour_linear        low res (H/2, W/2), ONE aliased sample per pixel at the jittered position
  depth                low res forward-Z device depth of that jittered sample (sky = 1)
  motion, motion_lr    exact motion of the surface seen at each (unjittered) pixel centre, camera and object
                       motion both, in pixels of the image's own resolution, (y, x), previous -> current

and writes one <OUT>/seq_XXXX.safetensors per capture with every key of Arm's layout (the one
scripts/safetensors_generator/safetensors_writer.py of arm/neural-graphics-model-gym writes; see nss/dataset.py),
so nss/train.py, nss/evaluate.py and Arm's own loader read it like Arm's captures. Held-out data is the same
generator with other seeds, which gives other scenes, palettes, lights and camera paths.

This file is the capture writer (camera paths, jitter, the capture's keys, the dataset, the CLI); the world's
objects and materials are nss/world.py, the ray caster and the random scenes nss/raycast.py.

    python nss/synth.py --out data/synth/train --sequences 16 --frames 24 --size 192 192 --seed 0
    python nss/synth.py --out data/synth/test --sequences 4 --frames 32 --size 256 256 --seed 10000 \\
        --preview data/synth/test.png

Conventions a reader must know (all match Arm's files):
- Low-res pixel (i, j) is the scene sampled at low-res pixel coordinates (i + 0.5 + jitter_y, j + 0.5 +
  jitter_x); jitter is quantised Halton(2, 3) (x from base 2, y from base 3), 16 phases, grid 8.
- Motion points previous -> current: the surface at pixel centre `pos` was at `pos - mv` one frame earlier.
  Sky pixels get the motion of a direction at infinity, i.e. camera rotation only (no translation).
  The first frame of a capture and every frame flagged `camera_cut` have zero motion.
- Depth is D3D-style forward-Z, d = zFar/(zFar-zNear) * (1 - zNear/z) for view depth z > 0; hits beyond
  zFar are clipped to sky (d = 1). depth_params p = [-c, e, 1/a, 1/b] (FSR2 deviceToViewDepth) recovers the
  POSITIVE view depth as z = p1 / (d - p0) (p1 < 0 and d - p0 < 0); view x = p2 ndc.x z, y = p3 ndc.y z.
- viewProj is row-vector math: clip = [x, y, z, 1] @ viewProj[0] (world y up, camera looks along +z in view
  space), ndc = clip.xyz / clip.w with ndc.y up and ndc.z = device depth.
- exposure = ln(E) with E chosen per capture (auto-exposure from its first frame) so that E * radiance is
  mostly 0.2 - 1.5; radiance itself is linear HDR, highlights and the sun up to ~20.
- `Samples` is the jitter sequence length (16), as in Arm's files, not the ground truth's --spp.
- Capture i of `--seed S` is scene seed S * 100000 + i; `seq` is a stable nonzero id of that seed.
"""

import argparse
import datetime
import hashlib
import math
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np
import torch
import torch.nn.functional as F
from safetensors import safe_open
from safetensors.torch import save_file

from common.log import progress as progress_bar
from nss.raycast import (
    Z_FAR,
    Z_NEAR,
    Camera,
    Grid,
    depth_params,
    device_depth,
    motion,
    place,
    random_scene,
    render_gt,
    shade,
)
from nss.world import INF, Box, Sphere

JITTER_PHASES, JITTER_GRID = 16, 8  # Arm: Samples {"Sequence": "TiledHalton", "Count": 16, "Quantized": true}
FRAMERATE = 30.0
SCALE = 2  # high res = 2 x low res, as in Arm's x2 captures
CLEARANCE = 0.4  # the camera stays this far from every surface (zNear is 0.1)


# ----------------------------------------------------------------------------------------------------------
# Camera paths and jitter.


@dataclass
class CameraPath:
    """Smooth camera motion from frame `start`: the eye and the point it looks at each follow a drift plus a
    slow sway; a little handheld shake is added to yaw and pitch."""

    start: int
    eye: np.ndarray  # (3,) at the start
    eye_vel: np.ndarray
    eye_sway: np.ndarray
    target: np.ndarray
    target_vel: np.ndarray
    target_sway: np.ndarray
    omega: np.ndarray  # (2,) sway rates of eye and target, rad / frame
    shake: np.ndarray  # (2,) yaw and pitch shake amplitudes, radians

    def eye_at(self, frames):
        tau = np.asarray(frames, dtype=np.float64)[..., None] - self.start
        return self.eye + self.eye_vel * tau + self.eye_sway * np.sin(self.omega[0] * tau)

    def target_at(self, frames):
        tau = np.asarray(frames, dtype=np.float64)[..., None] - self.start
        return self.target + self.target_vel * tau + self.target_sway * np.sin(self.omega[1] * tau)

    def camera(self, frame, fov_y, aspect):
        tau = frame - self.start
        look = self.target_at(frame) - self.eye_at(frame)
        f = look / np.linalg.norm(look)
        yaw = math.atan2(f[0], f[2]) + self.shake[0] * math.sin(0.37 * tau + 1.3)
        pitch = np.clip(math.asin(f[1]), -1.0, 1.0) + self.shake[1] * math.sin(0.53 * tau)
        return Camera(self.eye_at(frame), yaw, pitch, fov_y, aspect)


def random_path(rng, scene, start, end, tries=60):
    """A camera path for frames [start, end) that keeps CLEARANCE from every (moving) surface; the best of
    `tries` random ones."""
    frames = np.arange(start, end)
    targets = [np.array(o.centre) for o in scene.objects if isinstance(o, (Sphere, Box))]
    best, best_clear = None, -INF
    for _ in range(tries):
        speed = float(np.exp(rng.uniform(np.log(0.003), np.log(0.12))))  # world units / frame
        heading = rng.normal(size=3) * [1, 0.2, 1]
        target = targets[rng.integers(len(targets))] + rng.normal(0, 0.7, 3) * [1, 0.4, 1]
        target[1] = max(target[1], 0.1)
        a, dist = rng.uniform(0, 2 * math.pi), rng.uniform(2.5, 9)
        eye = target + [dist * math.sin(a), 0, dist * math.cos(a)]
        eye[1] = rng.uniform(0.5, 2.5)
        path = CameraPath(
            start,
            eye,
            speed * heading / np.linalg.norm(heading),
            rng.normal(0, 0.3, 3) * [1, 0.3, 1],
            target,
            rng.normal(0, speed * 0.5, 3) * [1, 0.2, 1],
            rng.normal(0, 0.5, 3) * [1, 0.3, 1],
            rng.uniform(0.01, 0.08, 2),
            rng.uniform(0, 0.006, 2),
        )
        eyes = path.eye_at(frames)
        clear = min(
            scene.clearance(eyes, frames).min(), np.linalg.norm(eyes - path.target_at(frames), axis=-1).min() - 1.0
        )  # not on top of the target
        if clear >= CLEARANCE:
            return path
        if clear > best_clear:
            best, best_clear = path, clear
    return best


def cut_frames(rng, frames, cuts):
    """Frames where the camera jumps: ~one cut per 50 frames, each shot at least 6 frames long."""
    n = rng.binomial(frames // 12, 0.25) if cuts else 0
    n = min(n, frames // 6 - 1)
    if n <= 0:
        return []
    slack = frames - 6 * (n + 1)
    extra = np.sort(rng.integers(0, slack + 1, n))
    return [int(6 * (i + 1) + extra[i]) for i in range(n)]


def halton(index, base):
    f, r = 1.0, 0.0
    while index > 0:
        f /= base
        r += f * (index % base)
        index //= base
    return r


def jitter_px(frame):
    """Sub-pixel jitter (y, x) in low-res pixels for a frame: quantised Halton(2, 3), 16 phases, grid 8."""
    i = frame % JITTER_PHASES + 1
    quantise = lambda h: (math.floor(h * JITTER_GRID) + 0.5) / JITTER_GRID - 0.5
    return quantise(halton(i, 3)), quantise(halton(i, 2))


# ----------------------------------------------------------------------------------------------------------
# A capture and the dataset.


def stable_id(text):
    """Nonzero positive int64 from a string, the same on every run and machine (unlike hash())."""
    return int.from_bytes(hashlib.blake2b(text.encode(), digest_size=8).digest(), "little") & (2**63 - 1) or 1


def check_depth_params(depth, view_depth, params):
    """Self-check, run on every frame: FSR2's z = p1 / (d - p0) with the stored float32 depth_params must give
    back the ray-cast (positive) view depth from the stored device depth. float32 rounding of d near 1 costs a
    relative error of about 3e-7 per world unit of depth, hence the bound."""
    p0, p1 = torch.tensor(params[:2], dtype=torch.float32).double()
    hit = torch.isfinite(view_depth)
    z_true = view_depth[hit].double()
    z = p1 / (depth[hit].double() - p0)
    err = (z - z_true).abs() / z_true
    assert (err <= 1e-5 + 2e-6 * z_true).all(), f"depth_params do not invert the device depth (rel err {err.max():.2e})"


def render_sequence(seed, frames, size, spp=16, cuts=True, on_frame=None):
    """Render one capture of `frames` frames at high res `size` = (H, W) -> dict of tensors in Arm's NSS
    safetensors layout (every key Model Gym's safetensors_writer.py writes). `spp` must be a square (4x4 grid
    per pixel for 16). on_frame() is called after every frame."""
    H, W = size
    if H % SCALE or W % SCALE or H < 2 or W < 2:
        raise ValueError(f"size {H}x{W}: height and width must be even and positive")
    s = math.isqrt(spp)
    if s * s != spp:
        raise ValueError(f"spp={spp}: must be a square number (4, 9, 16, 25, ...) for the stratified grid")
    h, w = H // SCALE, W // SCALE
    rng = np.random.default_rng(seed)
    scene = random_scene(rng)
    fov_y = math.radians(rng.uniform(40, 75))
    aspect = W / H
    cut_at = cut_frames(rng, frames, cuts)
    starts = [0] + cut_at
    paths = [random_path(rng, scene, a, b) for a, b in zip(starts, starts[1:] + [frames])]

    out = {
        k: [] for k in ("colour_linear", "ground_truth_linear", "depth", "motion_lr", "motion", "jitter", "viewProj")
    }
    params = depth_params(fov_y, h, w)
    path = paths[0]
    for f in range(frames):
        if f in starts:
            path = paths[starts.index(f)]
        cam = path.camera(f, fov_y, aspect)
        jy, jx = jitter_px(f)
        placed = place(scene, cam, f)
        gt = render_gt(scene, cam, placed, size, s)
        colour, view_depth = shade(scene, cam, Grid((h, w), h, w, 0.5 + jy, 0.5 + jx), placed)
        depth = device_depth(view_depth)
        check_depth_params(depth, view_depth, params)
        if f in starts:  # first frame or a cut: no previous frame to point at
            mv_hr, mv_lr = torch.zeros(2, H, W), torch.zeros(2, h, w)
        else:
            prev = path.camera(f - 1, fov_y, aspect)
            mv_hr = motion(scene, cam, prev, f, Grid((H, W), H, W, 0.5, 0.5), placed)
            mv_lr = motion(scene, cam, prev, f, Grid((h, w), h, w, 0.5, 0.5), placed)
        out["ground_truth_linear"].append(gt.half())
        out["colour_linear"].append(colour.half())
        out["depth"].append(depth[None])
        out["motion"].append(mv_hr.half())
        out["motion_lr"].append(mv_lr.half())
        out["jitter"].append(torch.tensor([jy, jx]).view(2, 1, 1))
        out["viewProj"].append(torch.from_numpy(cam.view_proj()).float()[None])
        if on_frame:
            on_frame()

    return pack_capture(out, starts, (h, w), size, fov_y, params, f"nanoNG-synth/{seed}")


def pack_capture(out, starts, lr_size, size, fov_y, params, seq_name):
    """Per-frame lists (colour_linear, ground_truth_linear, depth, motion_lr, motion, jitter, viewProj) plus the
    cut frames `starts` -> every key of Arm's layout (F stacked on dim 0), with an auto-exposure that puts the
    first frame's median ground-truth luminance at 0.5. Shared with nss/layers.py (nss/scenes.py's captures)."""
    (h, w), (H, W) = lr_size, size
    t = {k: torch.stack(v).contiguous() for k, v in out.items()}
    frames = t["jitter"].shape[0]
    jit = t["jitter"].view(frames, 2)
    luma = (t["ground_truth_linear"][0].float() * torch.tensor([0.2126, 0.7152, 0.0722]).view(3, 1, 1)).sum(0)
    exposure = math.log(min(max(0.5 / max(luma.median().item(), 1e-4), 0.05), 50.0))

    def per_frame(value, dtype):  # the same value(s) on every frame -> (F, len(value))
        return torch.tensor(value, dtype=dtype).view(1, -1).repeat(frames, 1)

    cut = torch.zeros(frames, 1, dtype=torch.bool)
    cut[[st for st in starts if st < frames]] = True
    t.update(
        {
            "X": (jit[:, 1:2] / w).float(),
            "Y": (-jit[:, 0:1] / h).float(),
            "exposure": per_frame([exposure], torch.float32),
            "render_size": per_frame([h, w], torch.int32),
            "outDims": per_frame([H, W], torch.int32),
            "TargetResolution": per_frame([W, H], torch.int32),
            "EmulatedFramerate": per_frame([FRAMERATE], torch.float32),
            "Samples": per_frame([JITTER_PHASES], torch.int32),
            "zNear": per_frame([Z_NEAR], torch.float32),
            "zFar": per_frame([Z_FAR], torch.float32),
            "infinite_zFar": per_frame([False], torch.bool),
            "ReverseZ": per_frame([False], torch.bool),
            "FovX": per_frame([2 * math.atan(math.tan(fov_y / 2) * W / H)], torch.float32),
            "FovY": per_frame([fov_y], torch.float32),
            "scale": per_frame([float(SCALE)], torch.float32),
            "seq": per_frame([stable_id(seq_name)], torch.int64),
            "img": torch.arange(frames, dtype=torch.int64).view(frames, 1),
            "camera_cut": cut,
            "depth_params": per_frame(params, torch.float32),
        }
    )
    return t


def make_dataset(out_dir, sequences, frames, size=(256, 256), seed=0, spp=16, cuts=True, progress=True):
    """Write `sequences` captures OUT/seq_XXXX.safetensors of `frames` frames at high res `size` = (H, W).
    Capture i uses seed seed * 100000 + i, so other seeds give other scenes (held-out data). -> written paths."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    created = datetime.date.today().strftime("%d-%m-%Y")
    paths = []
    with progress_bar(
        total=sequences * frames, unit="frame", desc=f"synth {out_dir.name}", disable=not progress
    ) as bar:
        for i in range(sequences):
            tensors = render_sequence(seed * 100_000 + i, frames, size, spp, cuts, on_frame=bar.update)
            path = out_dir / f"seq_{i:04d}.safetensors"
            tmp = path.with_name(path.name + ".tmp")
            save_file(
                tensors, str(tmp), metadata={"Length": str(frames), "Created": created, "Version": "nanoNG-synth"}
            )
            os.replace(tmp, path)  # never leave a half-written capture behind
            paths.append(path)
    return paths


def preview(path, png, frames=4):
    """A strip of a few frames of one capture, one row each: low-res input (nearest x2) | ground truth | depth
    | motion, tonemapped (Reinhard after exposure, sRGB)."""
    from common.images import grid, srgb
    from nss.evaluate import reinhard

    with safe_open(str(path), "pt") as f:
        cap = {
            k: f.get_tensor(k)
            for k in ("colour_linear", "ground_truth_linear", "depth", "motion", "exposure", "depth_params")
        }
    n = cap["colour_linear"].shape[0]
    rows = []
    for t in np.linspace(0, n - 1, min(frames, n)).round().astype(int):
        e = cap["exposure"][t].exp()
        H, W = cap["ground_truth_linear"].shape[-2:]
        lr = F.interpolate(cap["colour_linear"][t : t + 1].float(), size=(H, W), mode="nearest")[0]
        p = cap["depth_params"][t]
        z = p[1] / (cap["depth"][t].float() - p[0])
        mv = cap["motion"][t].float()
        rows.append(
            [
                srgb(reinhard(lr * e)),
                srgb(reinhard(cap["ground_truth_linear"][t].float() * e)),
                (1 / (1 + z / 4)).expand(3, -1, -1),
                torch.stack([0.5 + mv[1] / 16, 0.5 + mv[0] / 16, torch.full_like(mv[0], 0.5)]).clamp(0, 1),
            ]
        )
    grid(rows, ["input (low res, x2 nearest)", "ground truth", "depth", "motion (x: red, y: green)"], path=png)


def main(argv=None):
    p = argparse.ArgumentParser(
        description=__doc__.split("\n")[0],
        epilog=__doc__.split("\n", 1)[1],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--out", required=True, help="folder for the seq_XXXX.safetensors captures (created)")
    p.add_argument("--sequences", type=int, default=4, help="number of captures (files); each is a new scene")
    p.add_argument("--frames", type=int, default=24, help="frames per capture")
    p.add_argument(
        "--size",
        type=int,
        nargs=2,
        default=(256, 256),
        metavar=("H", "W"),
        help="ground-truth (high) resolution, both even; the input is H/2 x W/2",
    )
    p.add_argument(
        "--seed", type=int, default=0, help="capture i renders scene seed*100000+i: use another seed for held-out data"
    )
    p.add_argument("--spp", type=int, default=16, help="ground-truth samples per pixel, a square (16 = 4x4 grid)")
    p.add_argument("--no-cuts", action="store_true", help="never cut the camera (one continuous shot per capture)")
    p.add_argument("--preview", metavar="PNG", help="also write a strip of a few frames of the first capture")
    args = p.parse_args(argv)
    H, W = args.size
    if H % 2 or W % 2 or H < 2 or W < 2 or args.sequences < 1 or args.frames < 1 or args.seed < 0:
        p.error("--size must be two even positive numbers; --sequences, --frames >= 1; --seed >= 0")
    if math.isqrt(args.spp) ** 2 != args.spp:
        p.error(f"--spp {args.spp}: must be a square number (4, 9, 16, 25, ...)")
    t0 = time.time()
    paths = make_dataset(args.out, args.sequences, args.frames, (H, W), args.seed, args.spp, not args.no_cuts)
    dt = time.time() - t0
    mb = sum(q.stat().st_size for q in paths) / 2**20
    print(
        f"wrote {len(paths)} captures to {args.out}: {dt / (args.sequences * args.frames):.3f} s/frame, "
        f"{mb / len(paths):.1f} MiB/capture"
    )
    if args.preview:
        preview(paths[0], args.preview)
        print(f"preview: {args.preview}")


if __name__ == "__main__":
    main()
