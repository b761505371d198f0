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
import colorsys
import datetime
import hashlib
import math
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np
import torch
import torch.nn.functional as F
from safetensors import safe_open
from safetensors.torch import save_file
from common.log import progress as progress_bar

Z_NEAR, Z_FAR = 0.1, 100.0
JITTER_PHASES, JITTER_GRID = 16, 8   # Arm: Samples {"Sequence": "TiledHalton", "Count": 16, "Quantized": true}
FRAMERATE = 30.0
SCALE = 2                            # high res = 2 x low res, as in Arm's x2 captures
SHADOW_EPS = 2e-3                    # shadow rays start this far off the surface (float32 positions ~1e-6)
CLEARANCE = 0.4                      # the camera stays this far from every surface (zNear is 0.1)
INF = float("inf")


# ----------------------------------------------------------------------------------------------------------
# 3-vectors as tuples (x, y, z) of floats or tensors: constants (camera origin, object parameters) stay Python
# floats, so their arithmetic is float64, while per-ray quantities are float32 tensors of any shape.

def dot(a, b):
    return a[0] * b[0] + a[1] * b[1] + a[2] * b[2]


def cross(a, b):
    return (a[1] * b[2] - a[2] * b[1], a[2] * b[0] - a[0] * b[2], a[0] * b[1] - a[1] * b[0])


def sub(a, b):
    return (a[0] - b[0], a[1] - b[1], a[2] - b[2])


def madd(a, b, s):
    """a + b * s"""
    return (a[0] + b[0] * s, a[1] + b[1] * s, a[2] + b[2] * s)


def normalize(a):
    n = torch.sqrt(dot(a, a)).clamp_min(1e-12)
    return (a[0] / n, a[1] / n, a[2] / n)


def floats(v):
    return tuple(float(x) for x in v)


def frac(x):
    return x - torch.floor(x)


# ----------------------------------------------------------------------------------------------------------
# Ray-primitive intersections. o, d: ray origin and direction (d need not be unit length); each returns the
# ray parameter t of the first hit beyond tmin, inf where the ray misses. Camera rays use d = forward +
# ndc_x tan_x right + ndc_y tan_y up, so t is directly the view depth z.

def hit_ground(o, d, tmin):
    t = -o[1] / d[1]
    return torch.where(t > tmin, t, INF)


def hit_sphere(o, d, centre, radius, tmin):
    oc = sub(o, centre)
    a, b = dot(d, d), dot(oc, d)
    # b^2 - a (|oc|^2 - r^2) written as a r^2 - |d x oc|^2: no cancellation for small, distant spheres
    disc = a * radius**2 - dot(cross(d, oc), cross(d, oc))
    t = (-b - disc.clamp_min(0).sqrt()) / a
    return torch.where((disc >= 0) & (t > tmin), t, INF)


def hit_cylinder(o, d, end, axis, length, radius, tmin):
    """Capless cylinder from `end` along unit `axis`; only the entry hit (poles and wires are thin)."""
    oe = sub(o, end)
    da, oa = dot(d, axis), dot(oe, axis)
    a = dot(d, d) - da * da
    b = dot(d, oe) - da * oa
    m = dot(d, cross(oe, axis))           # (d x oe).axis: the ray-axis distance times |d_perp|
    disc = a * radius**2 - m * m          # = b^2 - a c, stable for wires a few pixels thin
    t = (-b - disc.clamp_min(0).sqrt()) / a
    s = oa + t * da                       # where along the axis it hits
    ok = (disc >= 0) & (a > 1e-12) & (t > tmin) & (s >= 0) & (s <= length)
    return torch.where(ok, t, INF)


def hit_box(o, d, centre, half, axes, tmin):
    """Oriented box (slab test in its frame `axes`)."""
    oc = sub(o, centre)
    t_near = t_far = None
    for axis, h in zip(axes, half):
        od, inv = dot(oc, axis), 1.0 / dot(d, axis)
        t1, t2 = (-h - od) * inv, (h - od) * inv
        lo, hi = torch.minimum(t1, t2), torch.maximum(t1, t2)
        t_near = lo if t_near is None else torch.maximum(t_near, lo)
        t_far = hi if t_far is None else torch.minimum(t_far, hi)
    return torch.where((t_near <= t_far) & (t_near > tmin), t_near, INF)


# ----------------------------------------------------------------------------------------------------------
# Scene objects. Each is defined at rest; a Motion translates it over time, and rays are moved into its
# rest frame (origin - offset) so texture and shading travel with it. hull() gives spheres whose convex hull
# contains the object: it bounds the pixels (and shadow region) an object can touch, so a pole only costs the
# rays near it.

@dataclass
class Motion:
    amp: tuple = (0.0, 0.0, 0.0)      # sinusoidal sway in x and z, world units
    omega: tuple = (0.0, 0.0, 0.0)    # rad / frame
    phase: tuple = (0.0, 0.0, 0.0)
    bounce: float = 0.0               # height of |sin| hops (never below the rest position)
    bounce_omega: float = 0.0

    def offset(self, t):
        """Translation at frame time(s) t -> (..., 3) numpy."""
        t = np.asarray(t, dtype=np.float64)[..., None]
        off = np.array(self.amp) * np.sin(np.array(self.omega) * t + np.array(self.phase))
        off[..., 1] = self.bounce * np.abs(np.sin(self.bounce_omega * t[..., 0]))
        return off

    @property
    def moving(self):
        return any(self.amp) or self.bounce > 0


@dataclass
class Material:
    colour: tuple
    colour2: tuple = (0.0, 0.0, 0.0)  # second colour of checkers / stripes, grout of tiles
    pattern: str = "solid"            # solid | checker | stripes | tiles
    freq: float = 1.0                 # pattern cycles per world unit
    duty: float = 0.5                 # stripes: fraction in colour2
    direction: tuple = (1.0, 0.0, 0.0)  # stripes: direction across the stripes
    phase: tuple = (0.0, 0.0, 0.0)    # texture offset: keeps pattern edges off the faces of boxes
    noise: float = 0.0                # amount of smooth noise modulation of the albedo (0..1)
    noise_freq: float = 0.2
    ks: float = 0.0                   # Blinn-Phong specular weight (normalised lobe)
    shininess: float = 16.0
    kr: float = 0.0                   # mirror reflection of the sky (Schlick Fresnel, f0 = 0.04)
    emission: tuple = (0.0, 0.0, 0.0)


def albedo(mat, solid, flat, noise_tex):
    """Texture at local coordinates: `solid` (3 coords) for checkers/stripes, `flat` (2 coords) for tiles and
    noise. Returns a 3-tuple of tensors."""
    s = madd(solid, mat.phase, 1.0)
    if mat.pattern == "checker":
        cells = torch.floor(s[0] * mat.freq) + torch.floor(s[1] * mat.freq) + torch.floor(s[2] * mat.freq)
        w = torch.remainder(cells, 2.0)
    elif mat.pattern == "stripes":
        w = (frac(dot(s, mat.direction) * mat.freq) < mat.duty).float()
    elif mat.pattern == "tiles":
        u, v = flat[0] * mat.freq + mat.phase[0], flat[1] * mat.freq * 2 + mat.phase[1]
        u = u + 0.5 * torch.remainder(torch.floor(v), 2.0)          # brick bond: odd rows shifted
        tint = 0.55 + 0.45 * hash01(torch.floor(u), torch.floor(v))
        grout = (frac(u) < 0.06) | (frac(v) < 0.1)
        out = tuple(torch.where(grout, c2, c * tint) for c, c2 in zip(mat.colour, mat.colour2))
        return modulate(out, mat, flat, noise_tex)
    else:
        w = torch.zeros_like(s[0])
    out = tuple(c + (c2 - c) * w for c, c2 in zip(mat.colour, mat.colour2))
    return modulate(out, mat, flat, noise_tex)


def modulate(rgb, mat, flat, noise_tex):
    if mat.noise <= 0:
        return rgb
    k = 1 - mat.noise + 2 * mat.noise * sample_noise(noise_tex, flat[0] * mat.noise_freq, flat[1] * mat.noise_freq)
    return tuple(c * k for c in rgb)


def hash01(i, j):
    """Integer-lattice hash -> [0, 1], identical on every machine (int64 arithmetic, no sin() tricks)."""
    h = (i.long() * 374761393 + j.long() * 668265263) & 0xFFFFFFFF
    h = ((h ^ (h >> 13)) * 1274126177) & 0xFFFFFFFF
    return ((h ^ (h >> 16)) & 0xFFFF).float() / 65535.0


def tileable_noise(rng, size=64):
    """Smooth 1/f noise that wraps around, in [0, 1], padded by one wrapped texel for seamless bilinear lookups
    -> (1, 1, size + 1, size + 1)."""
    fy = np.fft.fftfreq(size)[:, None]
    fx = np.fft.rfftfreq(size)[None, :]
    amp = 1.0 / np.maximum(np.hypot(fx, fy) * size, 1.0) ** 1.6
    amp[0, 0] = 0
    spectrum = amp * np.exp(2j * np.pi * rng.uniform(size=amp.shape))
    n = np.fft.irfft2(spectrum, s=(size, size))
    n = (n - n.min()) / (n.max() - n.min())
    n = np.pad(n, ((0, 1), (0, 1)), mode="wrap")
    return torch.from_numpy(n).float()[None, None]


def sample_noise(tex, u, v):
    """Bilinear lookup of the tiling noise at texture coordinates (u, v) of any shape (1 = one tile)."""
    grid = torch.stack([frac(u) * 2 - 1, frac(v) * 2 - 1], -1).reshape(1, 1, -1, 2)
    return F.grid_sample(tex, grid, mode="bilinear", align_corners=True).reshape(u.shape)


@dataclass
class Ground:
    """The plane y = 0. It shadows nothing (everything stands on it) and can be seen anywhere on screen."""
    material: Material
    motion: Motion = field(default_factory=Motion)
    casts_shadow = False

    def intersect(self, o, d, tmin):
        return hit_ground(o, d, tmin)

    def normal(self, p, d):
        return (torch.zeros_like(p[0]), torch.ones_like(p[0]), torch.zeros_like(p[0]))

    def texcoords(self, p):
        return (p[0], torch.zeros_like(p[0]), p[2]), (p[0], p[2])

    def hull(self):
        return None

    def distance(self, p):
        return p[..., 1]


@dataclass
class Sphere:
    centre: tuple
    radius: float
    material: Material
    motion: Motion = field(default_factory=Motion)
    casts_shadow = True

    def intersect(self, o, d, tmin):
        return hit_sphere(o, d, self.centre, self.radius, tmin)

    def normal(self, p, d):
        return tuple(c / self.radius for c in sub(p, self.centre))

    def texcoords(self, p):
        q = sub(p, self.centre)
        return q, (q[0] + q[2], q[1])

    def hull(self):
        return [self.centre], [self.radius]

    def distance(self, p):
        return np.linalg.norm(p - np.array(self.centre), axis=-1) - self.radius


def yaw_axes(yaw):
    """Local frame of an object turned by `yaw` about +y: (x axis, y axis, z axis)."""
    c, s = math.cos(yaw), math.sin(yaw)
    return ((c, 0.0, -s), (0.0, 1.0, 0.0), (s, 0.0, c))


@dataclass
class Box:
    centre: tuple
    half: tuple                       # half extents along the local axes
    yaw: float
    material: Material
    motion: Motion = field(default_factory=Motion)
    casts_shadow = True

    def __post_init__(self):
        self.axes = yaw_axes(self.yaw)

    def local(self, p):
        q = sub(p, self.centre)
        return tuple(dot(q, a) for a in self.axes)

    def intersect(self, o, d, tmin):
        return hit_box(o, d, self.centre, self.half, self.axes, tmin)

    def normal(self, p, d):
        q = self.local(p)
        r = [qi.abs() / h for qi, h in zip(q, self.half)]
        on_x = (r[0] >= r[1]) & (r[0] >= r[2])
        on_y = ~on_x & (r[1] >= r[2])
        on_z = ~on_x & ~on_y
        w = [on_x * torch.sign(q[0]), on_y * torch.sign(q[1]), on_z * torch.sign(q[2])]
        return tuple(sum(wi * a[k] for wi, a in zip(w, self.axes)) for k in range(3))

    def texcoords(self, p):
        q = self.local(p)
        return q, (q[0] + q[2], q[1])

    def corners(self):
        c, (hx, hy, hz) = np.array(self.centre), self.half
        ax = np.array(self.axes)
        return [c + sx * hx * ax[0] + sy * hy * ax[1] + sz * hz * ax[2]
                for sx in (-1, 1) for sy in (-1, 1) for sz in (-1, 1)]

    def hull(self):
        return self.corners(), [0.0] * 8

    def distance(self, p):
        q = np.abs((p - np.array(self.centre)) @ np.array(self.axes).T) - np.array(self.half)
        return np.linalg.norm(np.maximum(q, 0), axis=-1) + np.minimum(q.max(-1), 0)


@dataclass
class Cylinder:
    """A pole, rail or wire: radius `radius` around the segment a -> b."""
    a: tuple
    b: tuple
    radius: float
    material: Material
    motion: Motion = field(default_factory=Motion)
    casts_shadow = True

    def __post_init__(self):
        v = np.array(self.b) - np.array(self.a)
        self.length = float(np.linalg.norm(v))
        self.axis = floats(v / self.length)

    def intersect(self, o, d, tmin):
        return hit_cylinder(o, d, self.a, self.axis, self.length, self.radius, tmin)

    def normal(self, p, d):
        q = sub(p, self.a)
        return normalize(madd(q, self.axis, -dot(q, self.axis)))

    def texcoords(self, p):
        q = sub(p, self.a)
        return q, (dot(q, self.axis), q[1])

    def hull(self):
        return [self.a, self.b], [self.radius] * 2

    def distance(self, p):
        a, v = np.array(self.a), np.array(self.axis)
        s = np.clip((p - a) @ v, 0, self.length)
        return np.linalg.norm(p - a - s[..., None] * v, axis=-1) - self.radius


@dataclass
class Fence:
    """A vertical panel with cut-outs: slats every `period` (fraction `duty` solid), optionally horizontal bars.
    Thin repeating geometry: moire, parallax and disocclusions of everything behind it."""
    centre: tuple
    half_w: float
    half_h: float
    yaw: float
    period: float
    duty: float
    bar_period: float                 # 0 = no bars
    material: Material
    motion: Motion = field(default_factory=Motion)
    casts_shadow = True

    def __post_init__(self):
        self.tangent, _, self.facing = yaw_axes(self.yaw)

    def intersect(self, o, d, tmin):
        oc = sub(o, self.centre)
        t = -dot(oc, self.facing) / dot(d, self.facing)
        u = dot(oc, self.tangent) + t * dot(d, self.tangent)
        v = oc[1] + t * d[1]
        solid = frac(u / self.period) < self.duty
        if self.bar_period > 0:
            solid = solid | (frac(v / self.bar_period) < 0.25)
        ok = (t > tmin) & (u.abs() <= self.half_w) & (v.abs() <= self.half_h) & solid
        return torch.where(ok, t, INF)

    def normal(self, p, d):
        s = -torch.sign(dot(d, self.facing))   # two-sided: face the viewer
        return tuple(s * n for n in self.facing)

    def texcoords(self, p):
        q = sub(p, self.centre)
        u, v = dot(q, self.tangent), q[1]
        return (u, v, torch.zeros_like(u)), (u, v)

    def hull(self):
        c, t = np.array(self.centre), np.array(self.tangent)
        pts = [c + sx * self.half_w * t + np.array([0, sy * self.half_h, 0]) for sx in (-1, 1) for sy in (-1, 1)]
        return pts, [0.0] * 4

    def distance(self, p):
        ax = np.array([self.tangent, (0, 1, 0), self.facing])
        q = np.abs((p - np.array(self.centre)) @ ax.T) - np.array([self.half_w, self.half_h, 0.0])
        return np.linalg.norm(np.maximum(q, 0), axis=-1) + np.minimum(q.max(-1), 0)


@dataclass
class Scene:
    objects: list
    sun_dir: tuple                    # unit vector towards the sun
    sun: tuple                        # sun radiance on a surface facing it (linear RGB)
    sun_disc: float                   # radiance of the visible sun disc
    zenith: tuple
    horizon: tuple
    bounce: tuple                     # ambient light from below (ground bounce)
    cloud_colour: tuple
    cloud_cover: float
    fog: float                        # aerial perspective distance (world units)
    noise: torch.Tensor               # (1, 1, 65, 65) tiling noise texture

    def __post_init__(self):
        # light space: two directions across the sun's rays and one along them (towards the sun)
        across = np.cross(self.sun_dir, (0.0, 1.0, 0.0))
        across /= np.linalg.norm(across)
        self.light_frame = (floats(across), floats(np.cross(self.sun_dir, across)), floats(self.sun_dir))
        # per-object constants gathered by object id (row 0 = sky): ks, shininess, kr, emission rgb
        rows = [[0.0, 1.0, 0.0, 0.0, 0.0, 0.0]]
        rows += [[o.material.ks, o.material.shininess, o.material.kr, *o.material.emission] for o in self.objects]
        self.table = torch.tensor(rows, dtype=torch.float32)

    def clearance(self, points, times):
        """Distance from camera positions (T, 3) to the nearest surface at frame times (T,)."""
        return np.min([o.distance(points - o.motion.offset(times)) for o in self.objects], axis=0)


# ----------------------------------------------------------------------------------------------------------
# Camera and sample grids.

class Camera:
    """Pinhole camera at `eye` turned by yaw (about +y, 0 = looking along +z) and pitch (up > 0). View space is
    left-handed: x right, y up, z forward."""

    def __init__(self, eye, yaw, pitch, fov_y, aspect):
        self.eye, self.yaw, self.pitch = floats(eye), float(yaw), float(pitch)
        cy, sy, cp, sp = math.cos(yaw), math.sin(yaw), math.cos(pitch), math.sin(pitch)
        self.forward = (sy * cp, sp, cy * cp)
        self.right = (cy, 0.0, -sy)
        self.up = (-sy * sp, cp, -cy * sp)          # forward x right
        self.tan_y = math.tan(fov_y / 2)
        self.tan_x = self.tan_y * aspect

    def basis(self):
        return np.array([self.right, self.up, self.forward])

    def rays(self, grid):
        """Directions with unit forward component through every sample of `grid` -> 3-tuple of (rows, cols)."""
        H, W = grid.image
        ys = grid.y0 + grid.step * torch.arange(grid.rows, dtype=torch.float64)
        xs = grid.x0 + grid.step * torch.arange(grid.cols, dtype=torch.float64)
        ay = ((1 - 2 * ys / H) * self.tan_y).float()[:, None]
        ax = ((2 * xs / W - 1) * self.tan_x).float()[None, :]
        return tuple(f + ax * r + ay * u for f, r, u in zip(self.forward, self.right, self.up))

    def project(self, p, image, direction=False):
        """World points (or, with direction=True, directions at infinity) -> pixel coords (y, x) in `image`."""
        H, W = image
        q = p if direction else sub(p, self.eye)
        x, y, z = dot(q, self.right), dot(q, self.up), dot(q, self.forward).clamp_min(1e-6)
        return (1 - y / (z * self.tan_y)) * H / 2, (x / (z * self.tan_x) + 1) * W / 2

    def view_proj(self):
        """Row-vector world -> clip matrix (clip = [x, y, z, 1] @ M), D3D forward-Z projection."""
        view = np.eye(4)
        view[:3, :3] = self.basis().T
        view[3, :3] = -self.basis() @ np.array(self.eye)
        q = Z_FAR / (Z_FAR - Z_NEAR)
        proj = np.array([[1 / self.tan_x, 0, 0, 0], [0, 1 / self.tan_y, 0, 0], [0, 0, q, 1], [0, 0, -q * Z_NEAR, 0]])
        return view @ proj


@dataclass
class Grid:
    """rows x cols samples at pixel coordinates (y0 + r * step, x0 + c * step) of an image of size `image`."""
    image: tuple
    rows: int
    cols: int
    y0: float
    x0: float
    step: float = 1.0


FULL = "full"   # bounds of something that reaches behind the camera: every sample may see it


def ndc_bounds(cam, centres, radii):
    """NDC box (x0, x1, y0, y1) holding the projection of the convex hull of the spheres (centres (M, 3),
    radii (M,)), from each sphere's exact tangent lines through the eye; None if all of it is behind the
    camera, FULL if it straddles the camera plane."""
    v = (centres - np.array(cam.eye)) @ cam.basis().T                # (M, 3) view space
    z = v[:, 2]
    if np.all(z + radii < Z_NEAR):
        return None
    if np.any(z - radii < 1e-3):
        return FULL

    def extent(xy, tan):
        den = z * z - radii * radii
        s = radii * np.sqrt(np.maximum(xy * xy + den, 0))
        return ((xy * z - s) / den).min() / tan, ((xy * z + s) / den).max() / tan

    return (*extent(v[:, 0], cam.tan_x), *extent(v[:, 1], cam.tan_y))


def grid_rect(bounds, grid):
    """(row slice, col slice) of the grid samples inside NDC `bounds` with a one-sample margin, or None."""
    if bounds is None:
        return None
    if bounds is FULL:
        return slice(0, grid.rows), slice(0, grid.cols)
    nx0, nx1, ny0, ny1 = bounds
    H, W = grid.image

    def span(p0, p1, start, n):
        a = max(math.floor((p0 - start) / grid.step) - 1, 0)
        b = min(math.ceil((p1 - start) / grid.step) + 2, n)
        return slice(a, b) if a < b else None

    rows = span((1 - ny1) * H / 2, (1 - ny0) * H / 2, grid.y0, grid.rows)
    cols = span((nx0 + 1) * W / 2, (nx1 + 1) * W / 2, grid.x0, grid.cols)
    return (rows, cols) if rows and cols else None


@dataclass
class Placed:
    """One object at one frame time, seen from one camera: where it is and which samples it can touch."""
    offset: tuple                     # its translation at this time
    screen: object                    # NDC bounds of the object (ndc_bounds)
    shadow: object                    # NDC bounds of the object and its shadow volume; None: casts none
    light_box: tuple = None           # (a0, a1, b0, b1, l_max): extent across and along the sun's rays


def place(scene, cam, frame):
    """Bounds of every object for one frame, shared by all the grids rendered from this camera. The shadow
    volume ends on the ground (every receiver has y >= 0), so the object's spheres plus their projections
    along the sun onto y = 0 hold it."""
    sun = np.array(scene.sun_dir)
    placed = []
    for ob in scene.objects:
        off = ob.motion.offset(frame)
        if ob.hull() is None:
            placed.append(Placed(floats(off), FULL, None))
            continue
        centres = np.array(ob.hull()[0], dtype=np.float64) + off
        radii = np.array(ob.hull()[1], dtype=np.float64)
        screen = ndc_bounds(cam, centres, radii)
        if not ob.casts_shadow:
            placed.append(Placed(floats(off), screen, None))
            continue
        on_ground = centres - sun * (centres[:, 1:2] / sun[1])
        shadow = ndc_bounds(cam, np.concatenate([centres, on_ground]), np.concatenate([radii, radii / sun[1]]))
        a, b, l = (centres @ np.array(scene.light_frame).T).T
        box = ((a - radii).min(), (a + radii).max(), (b - radii).min(), (b + radii).max(), (l + radii).max())
        placed.append(Placed(floats(off), screen, shadow, box))
    return placed


# ----------------------------------------------------------------------------------------------------------
# Rendering.

def trace(scene, cam, grid, placed):
    """Nearest hit of every grid sample -> (t = view depth (rows, cols), inf for sky; object id, -1 for sky;
    ray directions 3-tuple; per-object grid rects)."""
    d = cam.rays(grid)
    t = torch.full((grid.rows, grid.cols), INF)
    obj = torch.full((grid.rows, grid.cols), -1, dtype=torch.long)
    rects = []
    for k, (ob, pl) in enumerate(zip(scene.objects, placed)):
        rect = grid_rect(pl.screen, grid)
        rects.append(rect)
        if rect is None:
            continue
        tk = ob.intersect(sub(cam.eye, pl.offset), tuple(c[rect] for c in d), Z_NEAR)
        closer = tk < t[rect]
        t[rect] = torch.where(closer, tk, t[rect])
        obj[rect].masked_fill_(closer, k)
    beyond = t > Z_FAR                        # the far plane clips, as in a rasteriser
    t[beyond], obj[beyond] = INF, -1
    return t, obj, d, rects


def sky(scene, d):
    """Radiance of the sky in directions d (3-tuple of tensors): gradient, clouds and the sun."""
    n = normalize(d)
    g = n[1].clamp(0, 1).sqrt()
    rgb = [h + (z - h) * g for h, z in zip(scene.horizon, scene.zenith)]
    up = n[1].clamp_min(0.02)                     # clouds on a plane high above: (x, z) / y
    c = sample_noise(scene.noise, n[0] / up * 0.15, n[2] / up * 0.15)
    cover = ((c - 1 + scene.cloud_cover) / 0.25).clamp(0, 1) * (n[1] > 0) * (n[1] * 8).clamp(0, 1)
    rgb = [x + (cc - x) * cover for x, cc in zip(rgb, scene.cloud_colour)]
    cos_sun = dot(n, scene.sun_dir)
    disc = (cos_sun > math.cos(math.radians(0.9))) * (1 - cover) * scene.sun_disc
    glow = cos_sun.clamp_min(0) ** 64 * 0.3
    below = (n[1] < 0) * 0.25                     # only seen in reflections and past the far plane
    return tuple(x * (1 - below) + disc + glow * s for x, s in zip(rgb, scene.sun))


def shade(scene, cam, grid, placed):
    """Linear radiance of every grid sample -> ((3, rows, cols), view depth t (rows, cols))."""
    t, obj, d, rects = trace(scene, cam, grid, placed)
    hit = obj >= 0
    p = madd(cam.eye, d, torch.where(hit, t, 0.0))
    normal = [torch.zeros_like(t) for _ in range(3)]
    base = [torch.zeros_like(t) for _ in range(3)]
    for k, (ob, pl, rect) in enumerate(zip(scene.objects, placed, rects)):
        if rect is None:
            continue
        idx = flat_index(obj[rect] == k, rect, grid.cols)          # this object's samples
        if idx.numel() == 0:
            continue
        pk = tuple(gather(c, idx) - o for c, o in zip(p, pl.offset))  # rest-frame hit points (M,)
        for buf, val in zip(normal, ob.normal(pk, gather3(d, idx))):
            scatter(buf, idx, val)
        for buf, val in zip(base, albedo(ob.material, *ob.texcoords(pk), scene.noise)):
            scatter(buf, idx, val)

    # shadows: one ray towards the sun per lit sample, tested only against casters whose shadow volume covers
    # the sample on screen and whose extent across the sun's rays (light space) contains the ray
    n_dot_l = dot(normal, scene.sun_dir)
    lit = hit & (n_dot_l > 0)
    origin = madd(p, normal, SHADOW_EPS)
    across_a, across_b, along = (dot(origin, e) for e in scene.light_frame)
    to_sun = tuple(torch.tensor(c) for c in scene.sun_dir)
    for ob, pl in zip(scene.objects, placed):
        rect = grid_rect(pl.shadow, grid)
        if rect is None:
            continue
        a0, a1, b0, b1, l_max = pl.light_box
        a, b = across_a[rect], across_b[rect]
        maybe = lit[rect] & (a >= a0) & (a <= a1) & (b >= b0) & (b <= b1) & (along[rect] <= l_max)
        idx = flat_index(maybe, rect, grid.cols)
        if idx.numel() == 0:
            continue
        blocked = ob.intersect(tuple(gather(c, idx) - o for c, o in zip(origin, pl.offset)), to_sun, 0.0) < INF
        lit.view(-1).index_fill_(0, idx[blocked], False)

    ks, shininess, kr, *emission = scene.table.index_select(0, obj.view(-1) + 1).view(*obj.shape, 6).unbind(-1)
    n_dot_l = n_dot_l.clamp_min(0) * lit
    rgb = [a * (s * n_dot_l + b + (z - b) * (0.3 + 0.3 * normal[1])) + e
           for a, s, b, z, e in zip(base, scene.sun, scene.bounce, scene.zenith, emission)]
    glossy = flat_index(lit & (ks > 0))                              # Blinn-Phong, normalised lobe
    if glossy.numel():
        half = normalize(madd(normalize(tuple(-c for c in gather3(d, glossy))), scene.sun_dir, 1.0))
        e = gather(shininess, glossy)
        lobe = gather(ks, glossy) * (e + 8) / (8 * math.pi) * dot(gather3(normal, glossy), half).clamp_min(0) ** e
        lobe = lobe * gather(n_dot_l, glossy)
        for c, s in zip(rgb, scene.sun):
            c.view(-1).index_add_(0, glossy, s * lobe)
    shiny = flat_index(hit & (kr > 0))                               # mirror of the sky, Schlick Fresnel
    if shiny.numel():
        n_s = gather3(normal, shiny)
        v_s = normalize(tuple(-c for c in gather3(d, shiny)))
        n_dot_v = dot(n_s, v_s).clamp(0, 1)
        fresnel = gather(kr, shiny) * (0.04 + 0.96 * (1 - n_dot_v) ** 5)
        for c, m in zip(rgb, sky(scene, madd(tuple(-c for c in v_s), n_s, 2 * n_dot_v))):
            c.view(-1).index_add_(0, shiny, fresnel * m)
    haze = torch.exp(-torch.where(hit, t, 0.0) / scene.fog)          # aerial perspective towards the horizon
    rgb = [c * haze + h * (1 - haze) for c, h in zip(rgb, scene.horizon)]
    miss = flat_index(~hit)
    if miss.numel():
        for c, s in zip(rgb, sky(scene, gather3(d, miss))):
            scatter(c, miss, s)
    return torch.stack(rgb), t


def flat_index(mask, rect=None, cols=None):
    """Flat indices into a (rows, cols) buffer of the True entries of `mask`, which covers `rect` of it."""
    if rect is None:
        return mask.view(-1).nonzero().squeeze(1)
    r, c = mask.nonzero(as_tuple=True)
    return (r + rect[0].start) * cols + (c + rect[1].start)


def gather(x, idx):
    """x.view(-1)[idx] for a contiguous buffer (index_select: several times faster than x[idx] on CPU)."""
    return x.view(-1).index_select(0, idx)


def gather3(v, idx):
    return tuple(gather(c, idx) for c in v)


def scatter(x, idx, values):
    x.view(-1).index_copy_(0, idx, values)


def render_gt(scene, cam, placed, size, s, band_samples=1 << 17):
    """Ground truth (3, H, W): s x s samples per pixel on a regular grid, Karis-averaged. Rendered in bands of
    rows so that the working set of each band stays in the CPU cache."""
    H, W = size
    rows = max(1, band_samples // (s * s * W))
    bands = []
    for y in range(0, H, rows):
        n = min(rows, H - y)
        rgb, _ = shade(scene, cam, Grid((H, W), s * n, s * W, y + 0.5 / s, 0.5 / s, 1.0 / s), placed)
        bands.append(karis_mean(rgb, s))
    return torch.cat(bands, 1)


def motion(scene, cam, prev_cam, frame, grid, placed):
    """Motion (2, rows, cols) = pixel centre - where its surface point was in the previous frame, in pixels of
    grid.image, (y, x). Object points move back with their object; sky uses the direction at infinity."""
    t, obj, d, _ = trace(scene, cam, grid, placed)
    hit = obj >= 0
    p = madd(cam.eye, d, torch.where(hit, t, 0.0))
    step = np.array([[0.0, 0.0, 0.0]] + [o.motion.offset(frame) - o.motion.offset(frame - 1) for o in scene.objects])
    step = torch.from_numpy(step).float()[obj + 1]                   # (rows, cols, 3) world motion this frame
    p_prev = tuple(c - step[..., i] for i, c in enumerate(p))
    y_hit, x_hit = prev_cam.project(p_prev, grid.image)
    y_sky, x_sky = prev_cam.project(d, grid.image, direction=True)
    H, W = grid.image
    ys = grid.y0 + grid.step * torch.arange(grid.rows, dtype=torch.float32)[:, None]
    xs = grid.x0 + grid.step * torch.arange(grid.cols, dtype=torch.float32)[None, :]
    mv_y = (ys - torch.where(hit, y_hit, y_sky)).clamp(-H, H)     # Arm clamps UV motion to [-1, 1]
    mv_x = (xs - torch.where(hit, x_hit, x_sky)).clamp(-W, W)
    return torch.stack([mv_y, mv_x])


def karis_mean(rgb, s):
    """(3, s*H, s*W) samples -> (3, H, W): mean of s x s blocks in Karis-tonemapped space, then inverted, so a
    single bright sample cannot dominate a pixel (Arm's ground-truth filter)."""
    k = rgb / (1 + rgb.amax(0, keepdim=True))
    k = F.avg_pool2d(k[None], s)[0]
    return k / (1 - k.amax(0, keepdim=True)).clamp_min(1e-6)


def device_depth(t):
    """View depth -> forward-Z device depth in [0, 1] (sky = 1)."""
    q = Z_FAR / (Z_FAR - Z_NEAR)
    return torch.where(torch.isfinite(t), q * (1 - Z_NEAR / t), 1.0).clamp(0, 1)


def depth_params(fov_y, h, w):
    """FSR2 deviceToViewDepth constants for forward-Z (Arm's converter): view depth z = p1 / (d - p0)."""
    n, f = min(Z_NEAR, Z_FAR), max(Z_NEAR, Z_FAR)
    c = f / (n - f)
    e = c * n
    b = 1 / math.tan(fov_y / 2)
    a = b / (w / h)
    return [-c, e, 1 / a, 1 / b]


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
# Random scenes and camera paths.

def random_scene(rng, noise_size=64):
    hue = rng.uniform()

    def colour(sat=(0.15, 0.75), val=(0.15, 0.8)):
        h = (hue + rng.choice([0.0, 0.0, 0.5, 0.33, -0.33]) + rng.normal(0, 0.05)) % 1
        return colorsys.hsv_to_rgb(h, rng.uniform(*sat), rng.uniform(*val))

    def material(patterns, p, freq, **kw):
        c1, c2 = colour(), colour()
        if rng.uniform() < 0.5:                              # strong contrast pairs: the aliasing cases
            c2 = tuple(x * rng.uniform(0.1, 0.35) for x in c1)
        angle = rng.uniform(0, 2 * math.pi)
        return Material(colour=c1, colour2=c2, pattern=rng.choice(patterns, p=p),
                        freq=float(np.exp(rng.uniform(*np.log(freq)))), duty=rng.uniform(0.3, 0.7),
                        direction=(math.cos(angle), rng.uniform(-0.3, 0.3), math.sin(angle)),
                        phase=floats(rng.uniform(0.05, 0.95, 3)), noise=float(rng.choice([0.0, 0.2, 0.45])),
                        noise_freq=rng.uniform(0.05, 0.6), **kw)

    def stage_point(radius):
        r, a = radius * math.sqrt(rng.uniform()), rng.uniform(0, 2 * math.pi)
        return r * math.cos(a), r * math.sin(a)

    objects = [Ground(material(["checker", "tiles", "stripes", "solid"], [0.4, 0.3, 0.15, 0.15], (1.0, 8.0),
                               ks=float(rng.choice([0.0, 0.05, 0.2])), shininess=rng.uniform(20, 120)))]
    for i in range(rng.choice([0, 1, 1, 2])):                       # walls around the stage
        a = rng.uniform(0, 2 * math.pi) + i * math.pi / 2
        dist = rng.uniform(9, 14)
        h = rng.uniform(1.5, 4)
        objects.append(Box((dist * math.sin(a), h, dist * math.cos(a)), (rng.uniform(8, 16), h, 0.3), a,
                           material(["tiles", "stripes", "checker", "solid"], [0.45, 0.25, 0.15, 0.15], (0.7, 6.0))))
    for _ in range(rng.integers(2, 6)):                             # boxes
        x, z = stage_point(6.5)
        half = floats(rng.uniform(0.2, 1.1, 3))
        mot = Motion(amp=(rng.uniform(0.5, 2), 0.0, rng.uniform(0, 1)), omega=(rng.uniform(0.03, 0.08),) * 3,
                     phase=floats(rng.uniform(0, 6, 3))) if rng.uniform() < 0.15 else Motion()
        objects.append(Box((x, half[1], z), half, rng.uniform(0, math.pi),
                           material(["checker", "stripes", "solid", "tiles"], [0.35, 0.25, 0.2, 0.2], (1.5, 12.0)),
                           mot))
    n_spheres = rng.integers(3, 7)
    n_moving = rng.integers(1, 4)
    for i in range(n_spheres):                                      # spheres, the first few moving
        x, z = stage_point(6.0)
        r = rng.uniform(0.15, 0.9)
        y = r if rng.uniform() < 0.6 else r + rng.uniform(0.2, 1.5)
        glossy = rng.uniform() < 0.6
        shininess = float(np.exp(rng.uniform(np.log(20), np.log(600))))
        norm = (shininess + 8) / (8 * math.pi)
        mat = material(["solid", "checker", "stripes"], [0.5, 0.3, 0.2], (2.0, 14.0),
                       ks=rng.uniform(0.3, 1.0) * min(1.0, 6.0 / norm) if glossy else 0.0, shininess=shininess,
                       kr=rng.uniform(0.2, 0.9) if glossy and rng.uniform() < 0.5 else 0.0)
        mot = Motion()
        if i < n_moving:
            w = rng.uniform(0.03, 0.15)
            mot = Motion(amp=(rng.uniform(0.5, 3), 0.0, rng.uniform(0.3, 2.5)), omega=(w, 0.0, w * rng.uniform(0.5, 1.5)),
                         phase=floats(rng.uniform(0, 6, 3)), bounce=float(rng.choice([0.0, rng.uniform(0.3, 1.2)])),
                         bounce_omega=rng.uniform(0.05, 0.2))
        objects.append(Sphere((x, y, z), r, mat, mot))

    def wire_material():
        m = Material(colour=colour(val=(0.05, 0.5)), ks=0.3, shininess=60.0)
        if rng.uniform() < 0.4:                                      # glowing cable: high-contrast thin lines
            m.emission = tuple(c * rng.uniform(3, 12) for c in colorsys.hsv_to_rgb(rng.uniform(), 0.6, 1.0))
        return m

    if rng.uniform() < 0.8:                                         # a fence line: posts and rails
        (x0, z0), a = stage_point(6.0), rng.uniform(0, 2 * math.pi)
        length, n_posts = rng.uniform(3, 9), rng.integers(3, 11)
        height, post_r = rng.uniform(1.0, 2.2), rng.uniform(0.015, 0.06)
        post_mat = material(["solid", "stripes"], [0.7, 0.3], (4.0, 12.0))
        ends = [np.array([x0, 0.0, z0]), np.array([x0 + length * math.cos(a), 0.0, z0 + length * math.sin(a)])]
        for s in np.linspace(0, 1, n_posts):
            base = ends[0] + s * (ends[1] - ends[0])
            objects.append(Cylinder(floats(base), floats(base + [0, height, 0]), post_r, post_mat))
        for y in rng.uniform(0.3, 1.0, rng.integers(1, 4)) * height:
            objects.append(Cylinder(floats(ends[0] + [0, y, 0]), floats(ends[1] + [0, y, 0]),
                                    rng.uniform(0.006, 0.02), wire_material()))
    for _ in range(rng.integers(0, 3)):                             # slatted panels
        x, z = stage_point(6.0)
        hh = rng.uniform(0.4, 1.3)
        objects.append(Fence((x, hh, z), rng.uniform(0.8, 2.5), hh, rng.uniform(0, math.pi),
                             float(np.exp(rng.uniform(np.log(0.04), np.log(0.3)))), rng.uniform(0.3, 0.7),
                             float(rng.choice([0.0, rng.uniform(0.15, 0.5)])),
                             material(["solid", "stripes", "checker"], [0.6, 0.2, 0.2], (2.0, 10.0))))
    for _ in range(rng.integers(0, 4)):                             # lone thin posts
        x, z = stage_point(8.0)
        objects.append(Cylinder((x, 0.0, z), (x, rng.uniform(2, 5), z), rng.uniform(0.02, 0.08),
                                material(["solid", "stripes"], [0.6, 0.4], (2.0, 8.0))))
    if rng.uniform() < 0.5:                                         # overhead wires across the whole stage
        a = rng.uniform(0, 2 * math.pi)
        for _ in range(rng.integers(1, 4)):
            off, y0, y1 = rng.uniform(-6, 6), rng.uniform(2.8, 5), rng.uniform(2.8, 5)
            c, s = math.cos(a), math.sin(a)
            objects.append(Cylinder((-20 * c - off * s, y0, -20 * s + off * c), (20 * c - off * s, y1, 20 * s + off * c),
                                    rng.uniform(0.006, 0.018), wire_material()))

    elevation, azimuth = math.radians(rng.uniform(15, 65)), rng.uniform(0, 2 * math.pi)
    sun_dir = (math.cos(elevation) * math.sin(azimuth), math.sin(elevation), math.cos(elevation) * math.cos(azimuth))
    level = float(np.exp(rng.uniform(np.log(0.4), np.log(2.5))))  # overall brightness; exposure undoes it
    warm = rng.uniform(0, 0.3)
    sun = tuple(level * rng.uniform(2.0, 4.0) * c for c in (1.0, 1 - 0.4 * warm, 1 - warm))
    zenith = colorsys.hsv_to_rgb(rng.uniform(0.52, 0.66), rng.uniform(0.2, 0.7), rng.uniform(0.4, 1.0))
    horizon = colorsys.hsv_to_rgb(rng.uniform(0.0, 0.15) if rng.uniform() < 0.3 else rng.uniform(0.5, 0.6),
                                  rng.uniform(0.05, 0.4), rng.uniform(0.6, 1.2))
    ground_tint = objects[0].material.colour
    return Scene(objects=objects, sun_dir=sun_dir, sun=sun, sun_disc=level * rng.uniform(8, 20),
                 zenith=tuple(level * c * 0.6 for c in zenith), horizon=tuple(level * c * 0.6 for c in horizon),
                 bounce=tuple(level * 0.25 * c for c in ground_tint),
                 cloud_colour=tuple(level * rng.uniform(0.5, 1.0) for _ in range(3)),
                 cloud_cover=rng.uniform(0.0, 0.6), fog=rng.uniform(25, 90), noise=tileable_noise(rng, noise_size))


@dataclass
class CameraPath:
    """Smooth camera motion from frame `start`: the eye and the point it looks at each follow a drift plus a
    slow sway; a little handheld shake is added to yaw and pitch."""
    start: int
    eye: np.ndarray                   # (3,) at the start
    eye_vel: np.ndarray
    eye_sway: np.ndarray
    target: np.ndarray
    target_vel: np.ndarray
    target_sway: np.ndarray
    omega: np.ndarray                 # (2,) sway rates of eye and target, rad / frame
    shake: np.ndarray                 # (2,) yaw and pitch shake amplitudes, radians

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
        speed = float(np.exp(rng.uniform(np.log(0.003), np.log(0.12))))   # world units / frame
        heading = rng.normal(size=3) * [1, 0.2, 1]
        target = targets[rng.integers(len(targets))] + rng.normal(0, 0.7, 3) * [1, 0.4, 1]
        target[1] = max(target[1], 0.1)
        a, dist = rng.uniform(0, 2 * math.pi), rng.uniform(2.5, 9)
        eye = target + [dist * math.sin(a), 0, dist * math.cos(a)]
        eye[1] = rng.uniform(0.5, 2.5)
        path = CameraPath(start, eye, speed * heading / np.linalg.norm(heading), rng.normal(0, 0.3, 3) * [1, 0.3, 1],
                          target, rng.normal(0, speed * 0.5, 3) * [1, 0.2, 1], rng.normal(0, 0.5, 3) * [1, 0.3, 1],
                          rng.uniform(0.01, 0.08, 2), rng.uniform(0, 0.006, 2))
        eyes = path.eye_at(frames)
        clear = min(scene.clearance(eyes, frames).min(),
                    np.linalg.norm(eyes - path.target_at(frames), axis=-1).min() - 1.0)   # not on top of the target
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

    out = {k: [] for k in ("colour_linear", "ground_truth_linear", "depth", "motion_lr", "motion", "jitter", "viewProj")}
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
        if f in starts:                                   # first frame or a cut: no previous frame to point at
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
    first frame's median ground-truth luminance at 0.5. Shared with nss/scenes.py."""
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
    t.update({
        "X": (jit[:, 1:2] / w).float(), "Y": (-jit[:, 0:1] / h).float(),
        "exposure": per_frame([exposure], torch.float32),
        "render_size": per_frame([h, w], torch.int32), "outDims": per_frame([H, W], torch.int32),
        "TargetResolution": per_frame([W, H], torch.int32),
        "EmulatedFramerate": per_frame([FRAMERATE], torch.float32), "Samples": per_frame([JITTER_PHASES], torch.int32),
        "zNear": per_frame([Z_NEAR], torch.float32), "zFar": per_frame([Z_FAR], torch.float32),
        "infinite_zFar": per_frame([False], torch.bool), "ReverseZ": per_frame([False], torch.bool),
        "FovX": per_frame([2 * math.atan(math.tan(fov_y / 2) * W / H)], torch.float32),
        "FovY": per_frame([fov_y], torch.float32), "scale": per_frame([float(SCALE)], torch.float32),
        "seq": per_frame([stable_id(seq_name)], torch.int64),
        "img": torch.arange(frames, dtype=torch.int64).view(frames, 1),
        "camera_cut": cut, "depth_params": per_frame(params, torch.float32),
    })
    return t


def make_dataset(out_dir, sequences, frames, size=(256, 256), seed=0, spp=16, cuts=True, progress=True):
    """Write `sequences` captures OUT/seq_XXXX.safetensors of `frames` frames at high res `size` = (H, W).
    Capture i uses seed seed * 100000 + i, so other seeds give other scenes (held-out data). -> written paths."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    created = datetime.date.today().strftime("%d-%m-%Y")
    paths = []
    with progress_bar(total=sequences * frames, unit="frame", desc=f"synth {out_dir.name}", disable=not progress) as bar:
        for i in range(sequences):
            tensors = render_sequence(seed * 100_000 + i, frames, size, spp, cuts, on_frame=bar.update)
            path = out_dir / f"seq_{i:04d}.safetensors"
            tmp = path.with_name(path.name + ".tmp")
            save_file(tensors, str(tmp), metadata={"Length": str(frames), "Created": created, "Version": "nanoNG-synth"})
            os.replace(tmp, path)            # never leave a half-written capture behind
            paths.append(path)
    return paths


def preview(path, png, frames=4):
    """A strip of a few frames of one capture, one row each: low-res input (nearest x2) | ground truth | depth
    | motion, tonemapped (Reinhard after exposure, sRGB)."""
    from common.images import grid, reinhard, srgb
    with safe_open(str(path), "pt") as f:
        cap = {k: f.get_tensor(k) for k in ("colour_linear", "ground_truth_linear", "depth", "motion", "exposure",
                                            "depth_params")}
    n = cap["colour_linear"].shape[0]
    rows = []
    for t in np.linspace(0, n - 1, min(frames, n)).round().astype(int):
        e = cap["exposure"][t].exp()
        H, W = cap["ground_truth_linear"].shape[-2:]
        lr = F.interpolate(cap["colour_linear"][t:t + 1].float(), size=(H, W), mode="nearest")[0]
        p = cap["depth_params"][t]
        z = p[1] / (cap["depth"][t].float() - p[0])
        mv = cap["motion"][t].float()
        rows.append([srgb(reinhard(lr * e)), srgb(reinhard(cap["ground_truth_linear"][t].float() * e)),
                     (1 / (1 + z / 4)).expand(3, -1, -1),
                     torch.stack([0.5 + mv[1] / 16, 0.5 + mv[0] / 16, torch.full_like(mv[0], 0.5)]).clamp(0, 1)])
    grid(rows, ["input (low res, x2 nearest)", "ground truth", "depth", "motion (x: red, y: green)"], path=png)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0], epilog=__doc__.split("\n", 1)[1],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", required=True, help="folder for the seq_XXXX.safetensors captures (created)")
    p.add_argument("--sequences", type=int, default=4, help="number of captures (files); each is a new scene")
    p.add_argument("--frames", type=int, default=24, help="frames per capture")
    p.add_argument("--size", type=int, nargs=2, default=(256, 256), metavar=("H", "W"),
                   help="ground-truth (high) resolution, both even; the input is H/2 x W/2")
    p.add_argument("--seed", type=int, default=0,
                   help="capture i renders scene seed*100000+i: use another seed for held-out data")
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
    print(f"wrote {len(paths)} captures to {args.out}: {dt / (args.sequences * args.frames):.3f} s/frame, "
          f"{mb / len(paths):.1f} MiB/capture")
    if args.preview:
        preview(paths[0], args.preview)
        print(f"preview: {args.preview}")


if __name__ == "__main__":
    main()
