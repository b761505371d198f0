"""The 3D world of nss/synth.py's built-in data: vectors, ray-primitive intersections, materials and textures,
and the objects a Scene holds (ground, spheres, boxes, cylinders, slatted fences), each with its own Motion.

Every object answers what the ray caster (nss/raycast.py) asks of it: intersect() for a batch of rays, normal()
and texcoords() at the hit points, hull() (spheres whose convex hull holds it, to bound the pixels it can touch)
and distance() (to keep the camera clear of it). A library module, no CLI:

    from nss.world import Material, Scene, Sphere
    ball = Sphere((0.0, 1.0, 4.0), 1.0, Material(colour=(0.8, 0.2, 0.1), pattern="checker", freq=4.0))
    t = ball.intersect((0.0, 1.0, 0.0), (torch.zeros(8), torch.zeros(8), torch.ones(8)), 0.1)  # 3.0 each
"""

import math
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F

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
    m = dot(d, cross(oe, axis))  # (d x oe).axis: the ray-axis distance times |d_perp|
    disc = a * radius**2 - m * m  # = b^2 - a c, stable for wires a few pixels thin
    t = (-b - disc.clamp_min(0).sqrt()) / a
    s = oa + t * da  # where along the axis it hits
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
    amp: tuple = (0.0, 0.0, 0.0)  # sinusoidal sway in x and z, world units
    omega: tuple = (0.0, 0.0, 0.0)  # rad / frame
    phase: tuple = (0.0, 0.0, 0.0)
    bounce: float = 0.0  # height of |sin| hops (never below the rest position)
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
    pattern: str = "solid"  # solid | checker | stripes | tiles
    freq: float = 1.0  # pattern cycles per world unit
    duty: float = 0.5  # stripes: fraction in colour2
    direction: tuple = (1.0, 0.0, 0.0)  # stripes: direction across the stripes
    phase: tuple = (0.0, 0.0, 0.0)  # texture offset: keeps pattern edges off the faces of boxes
    noise: float = 0.0  # amount of smooth noise modulation of the albedo (0..1)
    noise_freq: float = 0.2
    ks: float = 0.0  # Blinn-Phong specular weight (normalised lobe)
    shininess: float = 16.0
    kr: float = 0.0  # mirror reflection of the sky (Schlick Fresnel, f0 = 0.04)
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
        u = u + 0.5 * torch.remainder(torch.floor(v), 2.0)  # brick bond: odd rows shifted
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
    half: tuple  # half extents along the local axes
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
        return [
            c + sx * hx * ax[0] + sy * hy * ax[1] + sz * hz * ax[2]
            for sx in (-1, 1)
            for sy in (-1, 1)
            for sz in (-1, 1)
        ]

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
    bar_period: float  # 0 = no bars
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
        s = -torch.sign(dot(d, self.facing))  # two-sided: face the viewer
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
    sun_dir: tuple  # unit vector towards the sun
    sun: tuple  # sun radiance on a surface facing it (linear RGB)
    sun_disc: float  # radiance of the visible sun disc
    zenith: tuple
    horizon: tuple
    bounce: tuple  # ambient light from below (ground bounce)
    cloud_colour: tuple
    cloud_cover: float
    fog: float  # aerial perspective distance (world units)
    noise: torch.Tensor  # (1, 1, 65, 65) tiling noise texture

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
