"""The ray caster of nss/synth.py's built-in data: one frame of a Scene (nss/world.py) seen by a pinhole camera.

For a grid of samples it traces the nearest hit (each object only over the screen rectangle its hull can
touch), shades it (sun with ray-traced shadows, ground bounce and sky light, Blinn-Phong highlights, mirror
reflections of the sky, aerial haze; sky with clouds and the sun where nothing is hit) and gives the exact
motion of the surface seen at each sample; render_gt() averages a stratified s x s grid per pixel in Karis
space. All on the CPU in batched float32 torch tensors. random_scene() draws the random worlds of the captures.
A library module, no CLI (nss/synth.py is the capture writer):

    scene = random_scene(np.random.default_rng(0))
    cam = Camera((0.0, 1.5, -6.0), 0.0, -0.1, math.radians(60), 1.0)
    rgb, view_depth = shade(scene, cam, Grid((64, 64), 64, 64, 0.5, 0.5), place(scene, cam, 0))
"""

import colorsys
import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from nss.world import (
    INF,
    Box,
    Cylinder,
    Fence,
    Ground,
    Material,
    Motion,
    Scene,
    Sphere,
    albedo,
    dot,
    floats,
    madd,
    normalize,
    sample_noise,
    sub,
    tileable_noise,
)

Z_NEAR, Z_FAR = 0.1, 100.0
SHADOW_EPS = 2e-3  # shadow rays start this far off the surface (float32 positions ~1e-6)


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
        self.up = (-sy * sp, cp, -cy * sp)  # forward x right
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


FULL = "full"  # bounds of something that reaches behind the camera: every sample may see it


def ndc_bounds(cam, centres, radii):
    """NDC box (x0, x1, y0, y1) holding the projection of the convex hull of the spheres (centres (M, 3),
    radii (M,)), from each sphere's exact tangent lines through the eye; None if all of it is behind the
    camera, FULL if it straddles the camera plane."""
    v = (centres - np.array(cam.eye)) @ cam.basis().T  # (M, 3) view space
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

    offset: tuple  # its translation at this time
    screen: object  # NDC bounds of the object (ndc_bounds)
    shadow: object  # NDC bounds of the object and its shadow volume; None: casts none
    light_box: tuple = None  # (a0, a1, b0, b1, l_max): extent across and along the sun's rays


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
    beyond = t > Z_FAR  # the far plane clips, as in a rasteriser
    t[beyond], obj[beyond] = INF, -1
    return t, obj, d, rects


def sky(scene, d):
    """Radiance of the sky in directions d (3-tuple of tensors): gradient, clouds and the sun."""
    n = normalize(d)
    g = n[1].clamp(0, 1).sqrt()
    rgb = [h + (z - h) * g for h, z in zip(scene.horizon, scene.zenith)]
    up = n[1].clamp_min(0.02)  # clouds on a plane high above: (x, z) / y
    c = sample_noise(scene.noise, n[0] / up * 0.15, n[2] / up * 0.15)
    cover = ((c - 1 + scene.cloud_cover) / 0.25).clamp(0, 1) * (n[1] > 0) * (n[1] * 8).clamp(0, 1)
    rgb = [x + (cc - x) * cover for x, cc in zip(rgb, scene.cloud_colour)]
    cos_sun = dot(n, scene.sun_dir)
    disc = (cos_sun > math.cos(math.radians(0.9))) * (1 - cover) * scene.sun_disc
    glow = cos_sun.clamp_min(0) ** 64 * 0.3
    below = (n[1] < 0) * 0.25  # only seen in reflections and past the far plane
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
        idx = flat_index(obj[rect] == k, rect, grid.cols)  # this object's samples
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
    rgb = [
        a * (s * n_dot_l + b + (z - b) * (0.3 + 0.3 * normal[1])) + e
        for a, s, b, z, e in zip(base, scene.sun, scene.bounce, scene.zenith, emission)
    ]
    glossy = flat_index(lit & (ks > 0))  # Blinn-Phong, normalised lobe
    if glossy.numel():
        half = normalize(madd(normalize(tuple(-c for c in gather3(d, glossy))), scene.sun_dir, 1.0))
        e = gather(shininess, glossy)
        lobe = gather(ks, glossy) * (e + 8) / (8 * math.pi) * dot(gather3(normal, glossy), half).clamp_min(0) ** e
        lobe = lobe * gather(n_dot_l, glossy)
        for c, s in zip(rgb, scene.sun):
            c.view(-1).index_add_(0, glossy, s * lobe)
    shiny = flat_index(hit & (kr > 0))  # mirror of the sky, Schlick Fresnel
    if shiny.numel():
        n_s = gather3(normal, shiny)
        v_s = normalize(tuple(-c for c in gather3(d, shiny)))
        n_dot_v = dot(n_s, v_s).clamp(0, 1)
        fresnel = gather(kr, shiny) * (0.04 + 0.96 * (1 - n_dot_v) ** 5)
        for c, m in zip(rgb, sky(scene, madd(tuple(-c for c in v_s), n_s, 2 * n_dot_v))):
            c.view(-1).index_add_(0, shiny, fresnel * m)
    haze = torch.exp(-torch.where(hit, t, 0.0) / scene.fog)  # aerial perspective towards the horizon
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
    step = torch.from_numpy(step).float()[obj + 1]  # (rows, cols, 3) world motion this frame
    p_prev = tuple(c - step[..., i] for i, c in enumerate(p))
    y_hit, x_hit = prev_cam.project(p_prev, grid.image)
    y_sky, x_sky = prev_cam.project(d, grid.image, direction=True)
    H, W = grid.image
    ys = grid.y0 + grid.step * torch.arange(grid.rows, dtype=torch.float32)[:, None]
    xs = grid.x0 + grid.step * torch.arange(grid.cols, dtype=torch.float32)[None, :]
    mv_y = (ys - torch.where(hit, y_hit, y_sky)).clamp(-H, H)  # Arm clamps UV motion to [-1, 1]
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


# ----------------------------------------------------------------------------------------------------------
# Random scenes.


def random_scene(rng, noise_size=64):
    hue = rng.uniform()

    def colour(sat=(0.15, 0.75), val=(0.15, 0.8)):
        h = (hue + rng.choice([0.0, 0.0, 0.5, 0.33, -0.33]) + rng.normal(0, 0.05)) % 1
        return colorsys.hsv_to_rgb(h, rng.uniform(*sat), rng.uniform(*val))

    def material(patterns, p, freq, **kw):
        c1, c2 = colour(), colour()
        if rng.uniform() < 0.5:  # strong contrast pairs: the aliasing cases
            c2 = tuple(x * rng.uniform(0.1, 0.35) for x in c1)
        angle = rng.uniform(0, 2 * math.pi)
        return Material(
            colour=c1,
            colour2=c2,
            pattern=rng.choice(patterns, p=p),
            freq=float(np.exp(rng.uniform(*np.log(freq)))),
            duty=rng.uniform(0.3, 0.7),
            direction=(math.cos(angle), rng.uniform(-0.3, 0.3), math.sin(angle)),
            phase=floats(rng.uniform(0.05, 0.95, 3)),
            noise=float(rng.choice([0.0, 0.2, 0.45])),
            noise_freq=rng.uniform(0.05, 0.6),
            **kw,
        )

    def stage_point(radius):
        r, a = radius * math.sqrt(rng.uniform()), rng.uniform(0, 2 * math.pi)
        return r * math.cos(a), r * math.sin(a)

    objects = [
        Ground(
            material(
                ["checker", "tiles", "stripes", "solid"],
                [0.4, 0.3, 0.15, 0.15],
                (1.0, 8.0),
                ks=float(rng.choice([0.0, 0.05, 0.2])),
                shininess=rng.uniform(20, 120),
            )
        )
    ]
    for i in range(rng.choice([0, 1, 1, 2])):  # walls around the stage
        a = rng.uniform(0, 2 * math.pi) + i * math.pi / 2
        dist = rng.uniform(9, 14)
        h = rng.uniform(1.5, 4)
        objects.append(
            Box(
                (dist * math.sin(a), h, dist * math.cos(a)),
                (rng.uniform(8, 16), h, 0.3),
                a,
                material(["tiles", "stripes", "checker", "solid"], [0.45, 0.25, 0.15, 0.15], (0.7, 6.0)),
            )
        )
    for _ in range(rng.integers(2, 6)):  # boxes
        x, z = stage_point(6.5)
        half = floats(rng.uniform(0.2, 1.1, 3))
        mot = (
            Motion(
                amp=(rng.uniform(0.5, 2), 0.0, rng.uniform(0, 1)),
                omega=(rng.uniform(0.03, 0.08),) * 3,
                phase=floats(rng.uniform(0, 6, 3)),
            )
            if rng.uniform() < 0.15
            else Motion()
        )
        objects.append(
            Box(
                (x, half[1], z),
                half,
                rng.uniform(0, math.pi),
                material(["checker", "stripes", "solid", "tiles"], [0.35, 0.25, 0.2, 0.2], (1.5, 12.0)),
                mot,
            )
        )
    n_spheres = rng.integers(3, 7)
    n_moving = rng.integers(1, 4)
    for i in range(n_spheres):  # spheres, the first few moving
        x, z = stage_point(6.0)
        r = rng.uniform(0.15, 0.9)
        y = r if rng.uniform() < 0.6 else r + rng.uniform(0.2, 1.5)
        glossy = rng.uniform() < 0.6
        shininess = float(np.exp(rng.uniform(np.log(20), np.log(600))))
        norm = (shininess + 8) / (8 * math.pi)
        mat = material(
            ["solid", "checker", "stripes"],
            [0.5, 0.3, 0.2],
            (2.0, 14.0),
            ks=rng.uniform(0.3, 1.0) * min(1.0, 6.0 / norm) if glossy else 0.0,
            shininess=shininess,
            kr=rng.uniform(0.2, 0.9) if glossy and rng.uniform() < 0.5 else 0.0,
        )
        mot = Motion()
        if i < n_moving:
            w = rng.uniform(0.03, 0.15)
            mot = Motion(
                amp=(rng.uniform(0.5, 3), 0.0, rng.uniform(0.3, 2.5)),
                omega=(w, 0.0, w * rng.uniform(0.5, 1.5)),
                phase=floats(rng.uniform(0, 6, 3)),
                bounce=float(rng.choice([0.0, rng.uniform(0.3, 1.2)])),
                bounce_omega=rng.uniform(0.05, 0.2),
            )
        objects.append(Sphere((x, y, z), r, mat, mot))

    def wire_material():
        m = Material(colour=colour(val=(0.05, 0.5)), ks=0.3, shininess=60.0)
        if rng.uniform() < 0.4:  # glowing cable: high-contrast thin lines
            m.emission = tuple(c * rng.uniform(3, 12) for c in colorsys.hsv_to_rgb(rng.uniform(), 0.6, 1.0))
        return m

    if rng.uniform() < 0.8:  # a fence line: posts and rails
        (x0, z0), a = stage_point(6.0), rng.uniform(0, 2 * math.pi)
        length, n_posts = rng.uniform(3, 9), rng.integers(3, 11)
        height, post_r = rng.uniform(1.0, 2.2), rng.uniform(0.015, 0.06)
        post_mat = material(["solid", "stripes"], [0.7, 0.3], (4.0, 12.0))
        ends = [np.array([x0, 0.0, z0]), np.array([x0 + length * math.cos(a), 0.0, z0 + length * math.sin(a)])]
        for s in np.linspace(0, 1, n_posts):
            base = ends[0] + s * (ends[1] - ends[0])
            objects.append(Cylinder(floats(base), floats(base + [0, height, 0]), post_r, post_mat))
        for y in rng.uniform(0.3, 1.0, rng.integers(1, 4)) * height:
            objects.append(
                Cylinder(
                    floats(ends[0] + [0, y, 0]), floats(ends[1] + [0, y, 0]), rng.uniform(0.006, 0.02), wire_material()
                )
            )
    for _ in range(rng.integers(0, 3)):  # slatted panels
        x, z = stage_point(6.0)
        hh = rng.uniform(0.4, 1.3)
        objects.append(
            Fence(
                (x, hh, z),
                rng.uniform(0.8, 2.5),
                hh,
                rng.uniform(0, math.pi),
                float(np.exp(rng.uniform(np.log(0.04), np.log(0.3)))),
                rng.uniform(0.3, 0.7),
                float(rng.choice([0.0, rng.uniform(0.15, 0.5)])),
                material(["solid", "stripes", "checker"], [0.6, 0.2, 0.2], (2.0, 10.0)),
            )
        )
    for _ in range(rng.integers(0, 4)):  # lone thin posts
        x, z = stage_point(8.0)
        objects.append(
            Cylinder(
                (x, 0.0, z),
                (x, rng.uniform(2, 5), z),
                rng.uniform(0.02, 0.08),
                material(["solid", "stripes"], [0.6, 0.4], (2.0, 8.0)),
            )
        )
    if rng.uniform() < 0.5:  # overhead wires across the whole stage
        a = rng.uniform(0, 2 * math.pi)
        for _ in range(rng.integers(1, 4)):
            off, y0, y1 = rng.uniform(-6, 6), rng.uniform(2.8, 5), rng.uniform(2.8, 5)
            c, s = math.cos(a), math.sin(a)
            objects.append(
                Cylinder(
                    (-20 * c - off * s, y0, -20 * s + off * c),
                    (20 * c - off * s, y1, 20 * s + off * c),
                    rng.uniform(0.006, 0.018),
                    wire_material(),
                )
            )

    elevation, azimuth = math.radians(rng.uniform(15, 65)), rng.uniform(0, 2 * math.pi)
    sun_dir = (math.cos(elevation) * math.sin(azimuth), math.sin(elevation), math.cos(elevation) * math.cos(azimuth))
    level = float(np.exp(rng.uniform(np.log(0.4), np.log(2.5))))  # overall brightness; exposure undoes it
    warm = rng.uniform(0, 0.3)
    sun = tuple(level * rng.uniform(2.0, 4.0) * c for c in (1.0, 1 - 0.4 * warm, 1 - warm))
    zenith = colorsys.hsv_to_rgb(rng.uniform(0.52, 0.66), rng.uniform(0.2, 0.7), rng.uniform(0.4, 1.0))
    horizon = colorsys.hsv_to_rgb(
        rng.uniform(0.0, 0.15) if rng.uniform() < 0.3 else rng.uniform(0.5, 0.6),
        rng.uniform(0.05, 0.4),
        rng.uniform(0.6, 1.2),
    )
    ground_tint = objects[0].material.colour
    return Scene(
        objects=objects,
        sun_dir=sun_dir,
        sun=sun,
        sun_disc=level * rng.uniform(8, 20),
        zenith=tuple(level * c * 0.6 for c in zenith),
        horizon=tuple(level * c * 0.6 for c in horizon),
        bounce=tuple(level * 0.25 * c for c in ground_tint),
        cloud_colour=tuple(level * rng.uniform(0.5, 1.0) for _ in range(3)),
        cloud_cover=rng.uniform(0.0, 0.6),
        fog=rng.uniform(25, 90),
        noise=tileable_noise(rng, noise_size),
    )
