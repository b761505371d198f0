"""Built-in Prism data: procedural 3D rooms ray-cast twice per frame, as a game frame and as a photoreal frame
2x or 3x larger, in the layout of prism/dataset.py.

A sequence is one random room: a ground plane, one or two finite walls, 4-6 spheres and axis-aligned boxes with
procedural textures (checker, bricks, veined stone, wood rings; colours and scales vary per object), a sky
gradient and a square area light, seen by a moving camera (dolly, truck, pan or orbit) while some objects slide
or bounce. Each frame is ray-cast analytically (vectorised in torch) twice from the same camera:

  input   h x w, one sample at each pixel centre (aliased): ambient + clamped N.L towards the light's centre with
          a hard shadow, coarse textures, no specular, no AO; clamped, sRGB, over-sharpened (unsharp mask) and
          banded to 5 bits per channel. Depth (view z / far) and motion vectors are EXACT: each hit point is moved
          back with its object and projected into the previous camera (the sky by the camera rotation alone).
  target  s*h x s*w (s = 2 or 3), 2x2 jittered samples per pixel: Lambert + GGX specular under the area light
          with soft shadows (stratified shadow rays), short-range ambient occlusion (cosine hemisphere rays),
          extra high-frequency texture octaves in albedo and roughness, ACES filmic curve, colour grading (tint,
          saturation), a slight vignette. The same view at s times the resolution: pixel-aligned with the input.

    python prism/synth.py --out data/prism/train --sequences 24 --frames 16 --size 128 --preview
    python prism/synth.py --out data/prism/val --sequences 4 --seed 1            # held-out rooms
    python prism/synth.py --out data/prism/gan --sequences 4 --as-real           # flagged is_real=1 (GAN path)

Writes DIR/seq_XXXX.safetensors (sequence i at scale scales[i % len(scales)]), DIR/index.json, and with
--preview DIR/preview/seq_XXXX.png (first frame: input nearest-upscaled | target); removes stale seq_XXXX of an
earlier run. Sequence i of --seed S is room S * 100003 + i: the same arguments give byte-identical files.
"""

import argparse
import math
import re
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch
import torch.nn.functional as F

from common.images import save_png, srgb
from common.log import progress as progress_bar
from prism.dataset import write_index, write_sequence

FOV_Y = math.radians(50.0)
FAR = 40.0  # depth = view z / FAR, clipped to [0, 1]
EPS = 2e-3  # secondary rays start this far off the surface (world units; a room is ~15 wide)
AO_RANGE = 1.2  # occluders further than this do not darken
SHADOW_RAYS = 2  # per subsample: x 2x2 subsamples = 8 stratified shadow rays per target pixel
AO_RAYS = 1  # 4 per target pixel: AO is smooth (distance-weighted), more barely lowers the noise
CAMERA_MOVES = ("dolly", "truck", "pan", "orbit")
Y_UP, X_RIGHT = torch.tensor([0.0, 1.0, 0.0]), torch.tensor([1.0, 0.0, 0.0])
# Points, directions and colours are channel-first: (3, H, W) over a frame's sample grid, (3, N) for a subset.


# ----------------------------------------------------------------------------------------------- small helpers
def U(g, lo=0.0, hi=1.0):
    """One uniform float in [lo, hi) from generator g."""
    return lo + (hi - lo) * torch.rand(1, generator=g).item()


def hsv(h, s, v):
    """One HSV colour -> linear RGB tensor (3,)."""
    k = (torch.tensor([5.0, 3.0, 1.0]) + h * 6) % 6
    return v - v * s * torch.clamp(torch.minimum(k, 4 - k), 0, 1)


def col(v, x):
    """A vector v (3,) shaped to broadcast against x (3, ...)."""
    return v.reshape(3, *[1] * (x.dim() - 1))


def dot(a, b):
    return (a * b).sum(0)


def normalize(x):
    return x * torch.rsqrt(dot(x, x).clamp_min(1e-12))


def cross(a, b):
    return torch.stack([a[1] * b[2] - a[2] * b[1], a[2] * b[0] - a[0] * b[2], a[0] * b[1] - a[1] * b[0]])


def major_axis(v):
    """Index 0, 1 or 2 of the largest |component| of every vector in v (3, ...) (argmax(0) is slow on CPU)."""
    a = v.abs()
    return torch.where((a[0] >= a[1]) & (a[0] >= a[2]), 0, torch.where(a[1] >= a[2], 1, 2))


def smoothstep(e0, e1, x):
    t = ((x - e0) / (e1 - e0)).clamp(0, 1)
    return t * t * (3 - 2 * t)


def fbm_volume(g, size=64, octaves=4):
    """Periodic fractal value noise baked into a (1, 1, size+1, size+1, size+1) volume (last slices repeat the
    first): octave k is a random lattice of 4 * 2^k cells per period, trilinearly upsampled, at half the amplitude."""
    vol = 0
    for k in range(octaves):
        cells = 4 * 2**k
        lattice = F.pad(torch.rand(1, 1, cells, cells, cells, generator=g), (0, 1) * 3, mode="circular")
        vol = vol + 0.5 ** (k + 1) * F.interpolate(lattice, size=(size + 1,) * 3, mode="trilinear", align_corners=True)
    return vol / (1 - 0.5**octaves)


def fbm(vol, q):
    """Fractal noise ~[0, 1] at points q (3, N); the coarsest octave has one cell per unit of q, the finest 1/8."""
    grid = ((q / 4 % 1) * 2 - 1).T.reshape(1, 1, 1, -1, 3)  # one period = 4 units
    return F.grid_sample(vol, grid, mode="bilinear", align_corners=True).reshape(-1)


def box_corners(lo, hi):
    """The 8 corners (3, 8) of the box [lo, hi]."""
    return torch.stack(torch.meshgrid(*[torch.stack([lo[i], hi[i]]) for i in range(3)], indexing="ij")).reshape(3, 8)


# --------------------------------------------------------------------------------------------------- the scene
def random_material(g, kinds):
    """A procedural material: pattern kind, two linear colours, pattern scale (world units), base roughness."""
    hue = U(g)
    return {
        "kind": kinds[int(U(g, 0, len(kinds)))],
        "a": hsv(hue, U(g, 0.2, 0.8), U(g, 0.3, 0.8)),
        "b": hsv((hue + U(g, -0.15, 0.15)) % 1.0, U(g, 0, 0.6), U(g, 0.05, 0.35)),
        "scale": U(g, 0.25, 0.7),
        "rough": U(g, 0.15, 0.8),
        "offset": torch.rand(3, generator=g) * 50,
    }


def make_scene(g):
    """A random room: planes, spheres and boxes with their motion, materials, light, sky, camera path, colour
    grade. Objects and camera oscillate (sin of time) within bounds that keep them in the room, off the camera."""
    planes = [(1, 0.0, 1.0, math.inf), (2, 0.0, 1.0, U(g, 2.5, 5.0))]  # ground, back wall: (axis, coord, facing, top)
    if U(g) < 0.6:  # a side wall at x = +-X, facing the room
        side = 1.0 if U(g) < 0.5 else -1.0
        planes.append((0, side * U(g, 6.5, 8.0), -side, U(g, 2.5, 5.0)))
    sphere_r = torch.tensor([U(g, 0.4, 1.1) for _ in range(int(U(g, 2, 4)))])
    box_half = torch.tensor([[U(g, 0.3, 1.0) for _ in range(3)] for _ in range(int(U(g, 2, 4)))])
    n_obj = len(sphere_r) + len(box_half)
    rest_y = torch.cat([sphere_r, box_half[:, 1]])  # resting on the ground
    base = torch.stack([torch.rand(n_obj, generator=g) * 8 - 4, rest_y, torch.rand(n_obj, generator=g) * 3.5 + 1.5])
    moving = torch.rand(n_obj, generator=g) < 0.4
    slide = normalize(torch.rand(3, n_obj, generator=g) * 2 - 1) * (torch.rand(n_obj, generator=g) * 0.9 + 0.3)
    slide = slide * torch.tensor([1.0, 0.0, 1.0])[:, None] * moving  # along the ground, or not at all
    bounce = (torch.rand(n_obj, generator=g) < 0.5) & moving
    bounce[len(sphere_r) :] = False  # only spheres bounce
    move = CAMERA_MOVES[int(U(g, 0, len(CAMERA_MOVES)))]
    amplitude = {
        "dolly": U(g, 1.5, 2.5),
        "truck": U(g, 1.5, 3.0),
        "pan": math.radians(U(g, 10, 20)),
        "orbit": math.radians(U(g, 15, 25)),
    }[move] * (1 if U(g) < 0.5 else -1)
    eye = torch.tensor([U(g, -1.5, 1.5), U(g, 1.2, 3.0), U(g, 11.0, 13.5)])
    target = torch.tensor([U(g, -1.5, 1.5), U(g, 0.3, 1.2), U(g, 3.0, 5.0)])
    return {
        "planes": planes,
        "sphere_r": sphere_r,
        "box_half": box_half,
        "base": base,
        "slide": slide,
        "bounce": bounce * (torch.rand(n_obj, generator=g) * 0.7 + 0.3),
        "omega": torch.rand(n_obj, generator=g) * 0.15 + 0.1,
        "phase": torch.rand(n_obj, generator=g) * 6.3,
        "materials": [random_material(g, ("checker", "wood", "stone"))]
        + [random_material(g, ("bricks", "stone", "checker")) for _ in planes[1:]]
        + [random_material(g, ("checker", "bricks", "stone", "wood")) for _ in range(n_obj)],
        "light": torch.tensor([U(g, -3, 3), U(g, 6, 9), U(g, 2, 9)]),
        "light_size": U(g, 1.5, 3.5),
        "sun": hsv(U(g, 0.05, 0.15), U(g, 0, 0.3), U(g, 1.6, 2.4)),
        "zenith": hsv(U(g, 0.55, 0.65), U(g, 0.3, 0.7), U(g, 0.4, 0.8)),
        "horizon": hsv(U(g, 0.05, 0.6), U(g, 0.05, 0.3), U(g, 0.6, 1.0)),
        "cam": (move, eye, target, amplitude, U(g, 2 * math.pi / 80, 2 * math.pi / 40), U(g, 0, 6.3)),
        "tint": hsv(U(g), U(g, 0.0, 0.15), 1.0) * U(g, 0.9, 1.2),
        "saturation": U(g, 0.95, 1.3),
        "noise": fbm_volume(g),
    }


def geometry(sc, t):
    """The primitives at frame t: object centres (3, n_obj) (sliding back and forth, spheres maybe bouncing) and
    bounding boxes lo, hi (n_obj, 3). Objects 0..S-1 are the spheres, the rest the boxes."""
    wave = sc["omega"] * t + sc["phase"]
    centre = sc["base"] + sc["slide"] * torch.sin(wave) + Y_UP[:, None] * sc["bounce"] * torch.sin(0.5 * wave).abs()
    extent = torch.cat([sc["sphere_r"][:, None].expand(-1, 3), sc["box_half"]])
    return {
        "planes": sc["planes"],
        "sphere_r": sc["sphere_r"],
        "box_half": sc["box_half"],
        "centre": centre,
        "lo": centre.T - extent,
        "hi": centre.T + extent,
    }


def look_at(eye, target):
    fwd = normalize(target - eye)
    right = normalize(cross(fwd, Y_UP))
    return eye, right, cross(right, fwd), fwd


def camera(sc, t):
    """(eye, right, up, forward) at frame t; the path's offset is amplitude * sin(omega t + phase)."""
    move, eye, target, amplitude, omega, phase = sc["cam"]
    a = amplitude * math.sin(omega * t + phase)
    yaw = torch.tensor([[math.cos(a), 0, math.sin(a)], [0, 1, 0], [-math.sin(a), 0, math.cos(a)]])  # about y
    if move in ("dolly", "truck"):  # along the view direction / sideways
        off = a * (normalize(target - eye) if move == "dolly" else look_at(eye, target)[1])
        return look_at(eye + off, target + off)
    if move == "pan":  # turn the head
        return look_at(eye, eye + yaw @ (target - eye))
    return look_at(target + yaw @ (eye - target), target)  # orbit around the target


# ------------------------------------------------------------------------------------------------- ray casting
def rays(cam, xy, h, w):
    """Pinhole ray directions (3, ...) through input-pixel coordinates xy (2, ...) (x right, y down, pixel
    centres at i + 0.5)."""
    _, right, up, fwd = (col(v, xy) for v in cam)
    tan = math.tan(FOV_Y / 2)
    return normalize(fwd + (2 * xy[0] / w - 1) * tan * w / h * right + (1 - 2 * xy[1] / h) * tan * up)


def project(cam, rel, h, w):
    """Camera-relative vectors rel (3, ...) -> input-pixel coordinates (2, ...) (the inverse of rays), view z."""
    _, right, up, fwd = (col(v, rel) for v in cam)
    tan, z = math.tan(FOV_Y / 2), dot(rel, fwd)
    sx, sy = dot(rel, right) / z.clamp_min(1e-4) / (tan * w / h), dot(rel, up) / z.clamp_min(1e-4) / tan
    return torch.stack([(sx + 1) * w / 2, (1 - sy) * h / 2]), z


def screen_rect(cam, lo, hi, h, w, k):
    """Conservative bounds (y0, y1, x0, x1), on a grid of k x k samples per input pixel, of the screen region
    where anything inside the box [lo, hi] can appear: its projected corners plus a 2-sample margin; the whole
    grid when the box reaches behind the eye."""
    xy, z = project(cam, box_corners(lo, hi) - cam[0][:, None], h, w)
    if z.min() < 1e-3:
        return 0, k * h, 0, k * w
    (x0, y0), (x1, y1) = (xy.amin(1) * k).floor().int() - 2, (xy.amax(1) * k).ceil().int() + 2
    return max(int(y0), 0), min(int(y1), k * h), max(int(x0), 0), min(int(x1), k * w)


def sphere_t(o, d, c, r):
    """Ray parameter of the first hit of rays o + t d (3, ...) with the sphere (c, r); inf if none. The rays
    start outside it, so the nearer root is the hit."""
    oc = o - col(c, o)
    b = dot(oc, d)
    disc = b * b - dot(oc, oc) + r * r
    t = -b - disc.clamp_min(0).sqrt()
    return torch.where((disc > 0) & (t > 0), t, math.inf)


def box_t(o, d, lo, hi):
    """Slab test: first hit of rays (3, ...) with the axis-aligned box [lo, hi]; inf if none."""
    inv = 1 / torch.where(d.abs() < 1e-9, 1e-9, d)
    t0, t1 = (col(lo, o) - o) * inv, (col(hi, o) - o) * inv
    near, far = torch.minimum(t0, t1), torch.maximum(t0, t1)
    near = torch.maximum(torch.maximum(near[0], near[1]), near[2])  # entered all three slabs
    far = torch.minimum(torch.minimum(far[0], far[1]), far[2])
    return torch.where((near <= far) & (near > 0), near, math.inf)


def plane_t(o, d, plane):
    """First hit with an axis-aligned plane (axis, coordinate, facing +-1, top height), seen from the room side."""
    axis, value, facing, top = plane
    t = (value - o[axis]) / d[axis]
    return torch.where((facing * d[axis] < 0) & (t > 0) & (o[1] + t * d[1] <= top), t, math.inf)


def trace(o, d, geo, rects, t_max=math.inf, planes=True):
    """Nearest hits of rays o + t d (3, H, W) with t < t_max -> t (H, W) (t_max where none) and primitive id
    (H, W): planes 0..P-1, then spheres, then boxes, -1 for none. Object k is tested only inside rects[k], the
    screen region of the rays that can reach it (a rasteriser's bounding-box test); planes everywhere, if at all."""
    t = torch.full(o.shape[1:], t_max) if isinstance(t_max, float) else t_max.clone()
    ids = torch.full(o.shape[1:], -1)
    P, S = len(geo["planes"]), len(geo["sphere_r"])
    for k, plane in enumerate(geo["planes"] if planes else ()):
        tk = plane_t(o, d, plane)
        ids = torch.where(tk < t, k, ids)
        t = torch.minimum(t, tk)
    for k, (y0, y1, x0, x1) in enumerate(rects):
        if y0 >= y1 or x0 >= x1:
            continue
        ok, dk, tr = o[:, y0:y1, x0:x1], d[:, y0:y1, x0:x1], t[y0:y1, x0:x1]
        tk = (
            sphere_t(ok, dk, geo["centre"][:, k], geo["sphere_r"][k])
            if k < S
            else box_t(ok, dk, geo["lo"][k], geo["hi"][k])
        )
        ids[y0:y1, x0:x1] = torch.where(tk < tr, P + k, ids[y0:y1, x0:x1])
        t[y0:y1, x0:x1] = torch.minimum(tr, tk)
    return t, ids


def surface(o, d, t, ids, geo):
    """-> hit points (3, H, W), unit normals and object-space points (texture coordinates that move with their
    object). Samples that hit nothing (ids -1) get junk, masked by the callers."""
    P, S = len(geo["planes"]), len(geo["sphere_r"])
    p = o + t.clamp_max(1e4) * d
    n, q = torch.zeros_like(p), p.clone()
    for k, (axis, _, facing, _) in enumerate(geo["planes"]):
        n[axis][ids == k] = facing
    obj, sphere, box = ids >= P, (ids >= P) & (ids < P + S), ids >= P + S
    q[:, obj] = p[:, obj] - geo["centre"][:, ids[obj] - P]
    n[:, sphere] = q[:, sphere] / geo["sphere_r"][ids[sphere] - P]
    rel = q[:, box] / geo["box_half"][ids[box] - P - S].T  # in [-1, 1]^3 on the box
    axis = major_axis(rel)[None]  # the face: largest coordinate
    n[:, box] = torch.zeros_like(rel).scatter_(0, axis, rel.gather(0, axis).sign())
    return p, n, q


# ---------------------------------------------------------------------------------------------------- textures
U_AXIS, V_AXIS = torch.tensor([2, 0, 0]), torch.tensor([1, 2, 1])  # face coordinates for a normal along x, y, z


def texture(m, q, n, vol, fine):
    """Linear albedo (3, N) and roughness (N,) of material m at object-space points q (3, N) with normals n.
    fine adds the high-frequency octaves (grain, pores) that only the photoreal target has."""
    s, q = m["scale"], q + m["offset"][:, None]
    axis = major_axis(n)  # 2D patterns: project on the face
    u, v = q.gather(0, U_AXIS[axis][None])[0] / s, q.gather(0, V_AXIS[axis][None])[0] / s
    if m["kind"] == "checker":
        mix = (torch.floor(u) + torch.floor(v)) % 2
    elif m["kind"] == "bricks":  # running bond of 2.2:1 bricks, per-brick shade, mortar b
        row, y = torch.floor(v * 2.2), v * 2.2 % 1
        x = u + 0.5 * (row % 2)
        gap = torch.minimum(torch.minimum(x % 1, 1 - x % 1), torch.minimum(y, 1 - y) / 2.2)
        shade = torch.sin(row * 12.9898 + torch.floor(x) * 78.233) * 43758.5453 % 1  # classic shader hash
        mix = 1 - smoothstep(0.03, 0.06, gap) * (0.6 + 0.4 * shade)
    elif m["kind"] == "stone":  # blotchy stone with thin veins: a sine warped by fbm
        f = fbm(vol, q / s)
        veins = 1 - smoothstep(0.0, 0.15, torch.sin(u * 2 + 12 * f).abs())
        mix = torch.maximum(0.6 * smoothstep(0.35, 0.7, f), veins)
    else:  # wood: rings around an axis along x, warped by fbm
        r = (q[1] ** 2 + q[2] ** 2).sqrt() / s * 3 + 1.5 * fbm(vol, q / s * 0.7)
        mix = smoothstep(0.4, 0.9, r % 1)
    albedo = torch.lerp(m["a"][:, None], m["b"][:, None], mix) * (0.8 + 0.4 * fbm(vol, q * 1.5))
    rough = m["rough"] + 0.2 * mix
    if fine:  # octaves at 8-64 cycles per unit: sub-pixel at input res
        detail = fbm(vol, q * 8)
        albedo = albedo * (0.75 + 0.5 * detail)
        rough = rough + 0.4 * (detail - 0.5)
    return albedo.clamp(0.01, 1), rough.clamp(0.05, 1)


def materials(sc, q, n, ids, fine):
    """Albedo (3, H, W), roughness (H, W) of every hit, each primitive's samples textured by its own material."""
    albedo, rough = torch.zeros(3, ids.numel()), torch.ones(ids.numel())
    for k, m in enumerate(sc["materials"]):
        i = (ids.reshape(-1) == k).nonzero()[:, 0]  # index lists: faster than boolean masks on CPU
        if len(i):
            a, r = texture(m, q.reshape(3, -1)[:, i], n.reshape(3, -1)[:, i], sc["noise"], fine)
            albedo.index_copy_(1, i, a)
            rough.index_copy_(0, i, r)
    return albedo.reshape(q.shape), rough.reshape(ids.shape)


def sky(sc, d):
    """Environment radiance (3, H, W) towards directions d: horizon to zenith gradient."""
    return torch.lerp(col(sc["horizon"], d), col(sc["zenith"], d), d[1].clamp(0, 1).sqrt())


# --------------------------------------------------------------------------------------------------- rendering
def sample_grid(h, w, k, g=None):
    """Input-pixel coordinates (2, k*h, k*w) of k x k samples per input pixel: cell centres, or uniformly
    jittered inside their cells with generator g."""
    y, x = torch.meshgrid(torch.arange(k * h), torch.arange(k * w), indexing="ij")
    jitter = torch.rand(2, k * h, k * w, generator=g) if g is not None else 0.5
    return (torch.stack([x, y]) + jitter) / k


def primary(sc, t, h, w, k, g=None):
    """Camera rays through a k x k sample grid per input pixel -> camera, geometry, sample coordinates (2, H, W),
    ray origins and directions (3, H, W), hit ids (H, W), hit points, normals and object-space points."""
    cam, geo, xy = camera(sc, t), geometry(sc, t), sample_grid(h, w, k, g)
    d = rays(cam, xy, h, w)
    o = col(cam[0], d).expand_as(d)
    dist, ids = trace(o, d, geo, [screen_rect(cam, lo, hi, h, w, k) for lo, hi in zip(geo["lo"], geo["hi"])])
    return (cam, geo, xy, o, d, ids, *surface(o, d, dist, ids, geo))


def shadow_box(lo, hi, light, size):
    """Box around everything that the object [lo, hi] can shadow: the object and its shadow on the ground y = 0
    cast from the 4 corners of the square light (all receivers are above the ground, the light above all)."""
    corners = box_corners(lo, hi)[:, None]  # (3, 1, 8)
    lights = (light[:, None] + size / 2 * torch.tensor([[1.0, 1, -1, -1], [0, 0, 0, 0], [1, -1, 1, -1]]))[..., None]
    ground = lights + (corners - lights) * lights[1] / (lights[1] - corners[1])  # (3, 4, 8)
    pts = torch.cat([corners[:, 0], ground.reshape(3, -1)], 1)
    return pts.amin(1), pts.amax(1)


def shadow_rays(sc, geo, cam, p, n, light_xyz, k):
    """Visibility (H, W) of light points light_xyz (3, H, W) from surface points p with normals n, on a grid of
    k x k samples per input pixel."""
    to_light = light_xyz - p
    dist = dot(to_light, to_light).sqrt()
    h, w = p.shape[1] // k, p.shape[2] // k
    rects = [
        screen_rect(cam, *shadow_box(lo, hi, sc["light"], sc["light_size"]), h, w, k)
        for lo, hi in zip(geo["lo"], geo["hi"])
    ]
    t, _ = trace(p + EPS * n, to_light / dist, geo, rects, dist, planes=False)  # walls and ground cannot shadow
    return (t >= dist).float()


def render_game(sc, t, h, w):
    """Game frame: -> color (3, h, w) display sRGB, depth (1, h, w), motion vectors (2, h, w) in input pixels."""
    cam, geo, xy, o, d, ids, p, n, q = primary(sc, t, h, w, 1)
    hit = ids >= 0
    albedo, _ = materials(sc, q, n, ids, fine=False)
    light = col(sc["light"], p).expand_as(p)
    lit = shadow_rays(sc, geo, cam, p, n, light, 1) * dot(n, normalize(light - p)).clamp_min(0)  # hard shadow
    ambient = 0.2 * (sc["horizon"] + sc["zenith"])
    rgb = torch.where(hit, albedo * (col(ambient, p) + 0.6 * lit * col(sc["sun"], p)), sky(sc, d))
    img = srgb(rgb.clamp(0, 1))
    blur = F.avg_pool2d(F.pad(img[None], (1, 1, 1, 1), mode="replicate"), 3, 1)[0]
    color = torch.round((img + 0.8 * (img - blur)).clamp(0, 1) * 31) / 31  # over-sharpened, 5-bit banding
    depth = torch.where(hit, dot(p - o, col(cam[3], p)) / FAR, 1.0).clamp(0, 1)[None]
    if t == 0:
        return color, depth, torch.zeros(2, h, w)
    prev_cam, prev_geo = camera(sc, t - 1), geometry(sc, t - 1)
    moved = torch.cat([torch.zeros(3, len(geo["planes"])), geo["centre"] - prev_geo["centre"]], 1)  # per primitive
    rel = torch.where(hit, p - moved[:, ids.clamp_min(0)] - col(prev_cam[0], p), d)  # the sky: direction only
    return color, depth, project(prev_cam, rel, h, w)[0] - xy


def stratified(g, stratum, count):
    """A jittered point in [0, 1)^2 per sample (2, H, W), in cell `stratum` (H, W) of a (count/2 x 2) grid."""
    r = torch.rand(2, *stratum.shape, generator=g)
    return torch.stack([(stratum % (count // 2) + r[0]) / (count // 2), (stratum // (count // 2) + r[1]) / 2])


def ggx_specular(n, v, l, rough):
    """Cook-Torrance GGX (D), Smith Schlick-GGX (G), Schlick Fresnel with F0 = 0.04 -> (specular BRDF, F)."""
    h = normalize(l + v)
    n_l, n_v = dot(n, l).clamp_min(1e-4), dot(n, v).clamp_min(1e-4)
    a2 = rough**4  # alpha = roughness^2
    D = a2 / (math.pi * (dot(n, h).clamp_min(0) ** 2 * (a2 - 1) + 1) ** 2)
    k = (rough + 1) ** 2 / 8
    G = n_l / (n_l * (1 - k) + k) * n_v / (n_v * (1 - k) + k)
    Fr = 0.04 + 0.96 * (1 - dot(v, h).clamp(0, 1)) ** 5
    return D * G * Fr / (4 * n_l * n_v), Fr


def render_photo(sc, t, h, w, s, g):
    """Photoreal target (3, s*h, s*w): 2x2 jittered subsamples per pixel, shaded, averaged, tonemapped, graded."""
    k = 2 * s  # samples per input pixel
    cam, geo, _, _, d, ids, p, n, q = primary(sc, t, h, w, k, g)
    albedo, rough = materials(sc, q, n, ids, fine=True)
    y, x = torch.meshgrid(torch.arange(k * h), torch.arange(k * w), indexing="ij")
    stratum = (y % 2) * 2 + x % 2  # which subsample of its pixel
    vis = 0
    for j in range(SHADOW_RAYS):  # soft shadow: stratified points on the square light
        uv = stratified(g, stratum * SHADOW_RAYS + j, 4 * SHADOW_RAYS) - 0.5
        light = col(sc["light"], p) + sc["light_size"] * torch.stack([uv[0], torch.zeros_like(uv[0]), uv[1]])
        vis = vis + shadow_rays(sc, geo, cam, p, n, light, k) / SHADOW_RAYS
    t1 = normalize(cross(torch.where(n[1].abs() < 0.9, col(Y_UP, n), col(X_RIGHT, n)), n))
    t2 = cross(n, t1)  # tangent frame around n
    rects = [screen_rect(cam, lo - AO_RANGE, hi + AO_RANGE, h, w, k) for lo, hi in zip(geo["lo"], geo["hi"])]
    ao = 0
    for j in range(AO_RAYS):  # cosine-weighted hemisphere rays, nearer occluders darker
        uv = stratified(g, stratum * AO_RAYS + j, 4 * AO_RAYS)
        r, phi = uv[0].sqrt(), 2 * math.pi * uv[1]
        ray = t1 * r * phi.cos() + t2 * r * phi.sin() + n * (1 - uv[0]).sqrt()
        ao = ao + trace(p + EPS * n, ray, geo, rects, AO_RANGE)[0] / AO_RANGE / AO_RAYS
    v, l = -d, normalize(col(sc["light"], p) - p)
    spec, fresnel = ggx_specular(n, v, l, rough)
    direct = (albedo * (1 - fresnel) + math.pi * spec) * dot(n, l).clamp_min(0) * vis * col(sc["sun"], p)
    ambient = albedo * torch.lerp(0.35 * col(sc["horizon"], p), col(sc["zenith"], p), n[1] * 0.5 + 0.5) * 0.6 * ao
    rgb = torch.where(ids >= 0, direct + ambient, sky(sc, d))
    rgb = F.avg_pool2d(rgb[None], 2)[0] * col(sc["tint"], p) * 0.75  # resolve, white balance, exposure
    luma = dot(rgb, col(torch.tensor([0.2126, 0.7152, 0.0722]), rgb))
    rgb = (luma + sc["saturation"] * (rgb - luma)).clamp_min(0)
    yy, xx = torch.meshgrid(torch.linspace(-1, 1, s * h), torch.linspace(-1, 1, s * w), indexing="ij")
    rgb = rgb * (1 - 0.15 * (xx**2 + yy**2))  # vignette
    return srgb(rgb * (2.51 * rgb + 0.03) / (rgb * (2.43 * rgb + 0.59) + 0.14))  # ACES filmic (Narkowicz fit)


# ---------------------------------------------------------------------------------------------------- dataset
def render_sequence(scene_seed, frames, h, w, scale):
    """-> dict of (T, C, ...) tensors for write_sequence (less is_real)."""
    g = torch.Generator().manual_seed(scene_seed)
    sc = make_scene(g)
    out = [(*render_game(sc, t, h, w), render_photo(sc, t, h, w, scale, g)) for t in range(frames)]
    return {key: torch.stack(v) for key, v in zip(("color", "depth", "motion_vectors", "ground_truth"), zip(*out))}


def make_dataset(
    root, sequences=12, frames=16, size=128, scales=(2, 3), seed=0, as_real=False, progress=True, preview=False
):
    """Write ROOT/seq_XXXX.safetensors for `sequences` rooms (sequence i: room seed * 100003 + i at scale
    scales[i % len(scales)], input size (h, w) = size or (size, size)) and ROOT/index.json. -> the index dict."""
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    h, w = (size, size) if isinstance(size, int) else size
    names, threads = set(), torch.get_num_threads()
    torch.set_num_threads(1)  # frame-sized elementwise ops gain little from threads, and one is immune to busy cores
    try:
        for i in progress_bar(range(sequences), unit="seq", desc=f"prism synth {root.name}", disable=not progress):
            s, name = scales[i % len(scales)], f"seq_{i:04d}.safetensors"
            seq = render_sequence(seed * 100_003 + i, frames, h, w, s)
            write_sequence(root / name, **seq, is_real=int(as_real))
            names.add(name)
            if preview:
                game = F.interpolate(seq["color"][:1], scale_factor=s, mode="nearest")[0]
                save_png(torch.cat([game, seq["ground_truth"][0]], 2), root / "preview" / f"seq_{i:04d}.png")
    finally:
        torch.set_num_threads(threads)
    for f in root.glob("seq_*.safetensors"):  # stale shards of a bigger earlier run
        if re.fullmatch(r"seq_\d{4,}\.safetensors", f.name) and f.name not in names:
            f.unlink()
    return write_index(root)


def main(argv=None):
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        epilog=__doc__.split("\n\n", 1)[1],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--out", required=True, help="dataset folder (created); gets seq_XXXX.safetensors and index.json")
    p.add_argument("--sequences", type=int, default=12, help="number of sequences (one random room each)")
    p.add_argument("--frames", type=int, default=16, help="frames per sequence")
    p.add_argument(
        "--size",
        type=int,
        nargs="+",
        default=[128],
        metavar="N",
        help="input (game) frame size: one number for a square H=W, or two for H W",
    )
    p.add_argument(
        "--scales",
        type=int,
        nargs="+",
        default=[2, 3],
        choices=(2, 3),
        help="upscaling factors; sequence i uses scales[i %% len(scales)]",
    )
    p.add_argument(
        "--seed", type=int, default=0, help="sequence i renders room seed*100003+i: another seed gives held-out rooms"
    )
    p.add_argument(
        "--as-real",
        action="store_true",
        help="flag the sequences is_real=1 (to exercise the GAN path without real video); default is_real=0",
    )
    p.add_argument(
        "--preview",
        action="store_true",
        help="also write DIR/preview/seq_XXXX.png: the first frame's input (nearest-upscaled) | target",
    )
    args = p.parse_args(argv)
    if len(args.size) > 2 or min(args.size) < 8 or args.sequences < 1 or args.frames < 1 or args.seed < 0:
        p.error("--size N or --size H W with N, H, W >= 8; --sequences, --frames >= 1; --seed >= 0")
    size, t0 = (args.size[0], args.size[-1]), time.time()
    index = make_dataset(
        args.out, args.sequences, args.frames, size, tuple(args.scales), args.seed, args.as_real, preview=args.preview
    )
    print(
        f"wrote {len(index['sequences'])} sequences x {args.frames} frames ({size[0]}x{size[1]}, scales "
        f"{args.scales}) to {args.out}: {time.time() - t0:.1f} s"
    )


if __name__ == "__main__":
    main()
